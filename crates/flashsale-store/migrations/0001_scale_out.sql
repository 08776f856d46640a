-- Scale-out store (Redis + PostgreSQL): the durable record.
-- Applied at start under an advisory lock; every statement is idempotent.

-- One row per sale. `sold` is updated in the same transaction as the orders it counts and
-- CHECK (sold <= stock) makes PostgreSQL refuse an oversell on its own. `epoch` fences
-- reservations made before Redis lost its data: a commit carries the epoch it was admitted
-- under and is refused once a rebuild has moved the epoch on.
CREATE TABLE IF NOT EXISTS sales (
    id             bigserial   PRIMARY KEY,
    name           text        NOT NULL,
    starts_at      timestamptz NOT NULL,
    ends_at        timestamptz NOT NULL CHECK (ends_at > starts_at),
    stock          integer     NOT NULL CHECK (stock > 0),
    per_user_limit integer     NOT NULL CHECK (per_user_limit > 0),
    sold           integer     NOT NULL DEFAULT 0 CHECK (sold >= 0 AND sold <= stock),
    sold_out_at    timestamptz,
    epoch          bigint      NOT NULL DEFAULT 1
);

-- The fence: one row per reservation that was ever resolved, by whoever got there first.
-- The committing instance inserts 'committed', the reconciler inserts 'released'; the primary
-- key lets exactly one of them win, so a late commit cannot land after a release.
CREATE TABLE IF NOT EXISTS reservations (
    order_id    uuid        PRIMARY KEY,
    sale_id     bigint      NOT NULL,
    resolution  text        NOT NULL CHECK (resolution IN ('committed', 'released')),
    resolved_at timestamptz NOT NULL DEFAULT now()
);

-- Committed orders only.
CREATE TABLE IF NOT EXISTS orders (
    order_id        uuid        PRIMARY KEY,
    sale_id         bigint      NOT NULL,
    user_id         text        NOT NULL,
    quantity        integer     NOT NULL CHECK (quantity > 0),
    created_at      timestamptz NOT NULL,
    idempotency_key text,
    UNIQUE (sale_id, idempotency_key)
);
CREATE INDEX IF NOT EXISTS orders_by_buyer ON orders (sale_id, user_id);

-- Units each buyer holds, with the sale's limit copied in so a plain CHECK guards it.
CREATE TABLE IF NOT EXISTS buyers (
    sale_id        bigint  NOT NULL,
    user_id        text    NOT NULL,
    held           integer NOT NULL CHECK (held > 0),
    per_user_limit integer NOT NULL,
    PRIMARY KEY (sale_id, user_id),
    CHECK (held <= per_user_limit)
);

-- Operator statistics, flushed by every instance as deltas.
CREATE TABLE IF NOT EXISTS sale_counters (
    sale_id            bigint PRIMARY KEY,
    attempts           bigint NOT NULL DEFAULT 0,
    sale_not_active    bigint NOT NULL DEFAULT 0,
    sold_out           bigint NOT NULL DEFAULT 0,
    already_purchased  bigint NOT NULL DEFAULT 0,
    limit_exceeded     bigint NOT NULL DEFAULT 0,
    insufficient_stock bigint NOT NULL DEFAULT 0,
    unavailable        bigint NOT NULL DEFAULT 0
);
