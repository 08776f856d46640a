-- Operators' changes (issue 14): a sale may be edited (SPEC 11) and cancelled. `revision`
-- counts its changes; Redis's `meta` carries the revision it applied, and every instance
-- reloads the row when the two differ (that is how an edit reaches the other instances).
ALTER TABLE sales ADD COLUMN IF NOT EXISTS cancelled_at timestamptz;
ALTER TABLE sales ADD COLUMN IF NOT EXISTS revision bigint NOT NULL DEFAULT 0;

-- One row per field each change altered, written in the same transaction as the change: the
-- start of the stock ledger (issue 14, item 1). Values are text (instants in RFC 3339).
CREATE TABLE IF NOT EXISTS sale_changes (
    id        bigserial   PRIMARY KEY,
    sale_id   bigint      NOT NULL REFERENCES sales(id),
    at        timestamptz NOT NULL,
    kind      text        NOT NULL CHECK (kind IN ('edit', 'cancel')),
    field     text        NOT NULL,
    old_value text,
    new_value text
);
CREATE INDEX IF NOT EXISTS sale_changes_by_sale ON sale_changes (sale_id, id);
