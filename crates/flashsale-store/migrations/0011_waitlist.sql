-- The waitlist (issue 12 item 4, SPEC 9, CO-9..CO-11). PostgreSQL is its authority: joins,
-- leaves and offers each run in one transaction holding the sale row's lock, so they are
-- decided one at a time per sale, in the order they commit.

-- One row per join, kept forever (the summary counts joins ever): `waiting` until the buyer
-- leaves (`left`), is given a unit (`offered`, with the offer's order) or is met at their
-- limit by an offer (`passed`). `seq` is the join order.
CREATE TABLE IF NOT EXISTS waitlist (
    seq        bigserial   PRIMARY KEY,
    sale_id    bigint      NOT NULL,
    user_id    text        NOT NULL,
    joined_at  timestamptz NOT NULL,
    state      text        NOT NULL DEFAULT 'waiting'
               CHECK (state IN ('waiting', 'left', 'offered', 'passed')),
    decided_at timestamptz,
    order_id   uuid
);
-- A buyer waits at most once per sale.
CREATE UNIQUE INDEX IF NOT EXISTS waitlist_one_wait ON waitlist (sale_id, user_id)
    WHERE state = 'waiting';
-- Offers pop the head; positions count the waiters ahead.
CREATE INDEX IF NOT EXISTS waitlist_queue ON waitlist (sale_id, seq) WHERE state = 'waiting';
-- The summary's count of joins.
CREATE INDEX IF NOT EXISTS waitlist_by_sale ON waitlist (sale_id);

-- Buyers waiting now and a revision bumped by every change of the list, both written in the
-- transaction that changes it (under the sale row's lock): the revision orders the copies
-- published to Redis for status reads (`waitlist.lua`), so an older one never overwrites a
-- newer one.
ALTER TABLE sales ADD COLUMN IF NOT EXISTS waitlist_len integer NOT NULL DEFAULT 0
    CHECK (waitlist_len >= 0);
ALTER TABLE sales ADD COLUMN IF NOT EXISTS waitlist_rev bigint NOT NULL DEFAULT 0;

-- A reservation made by a waitlist offer, and the order whose release made it (the unit move
-- Redis owes for that release names the offered buyers through it).
ALTER TABLE orders ADD COLUMN IF NOT EXISTS offered boolean NOT NULL DEFAULT false;
ALTER TABLE orders ADD COLUMN IF NOT EXISTS offered_from uuid;
CREATE INDEX IF NOT EXISTS orders_offered_from ON orders (offered_from)
    WHERE offered_from IS NOT NULL;

-- A join reads the units held in a sale (live reservations) under the sale row's lock: a
-- partial index keeps that to the live reservations, however many orders the sale has (instant
-- orders are never in it, so the instant path writes nothing more).
CREATE INDEX IF NOT EXISTS orders_reserved_by_sale ON orders (sale_id)
    WHERE status = 'reserved';
