-- An order's idempotency key is unique within its sale, but most orders have none: the
-- `UNIQUE (sale_id, idempotency_key)` constraint of migration 0001 still kept an index entry
-- for every keyless order (a NULL is never a duplicate, yet is stored), one more B-tree insert
-- per purchase in the commit (issue 15). A partial unique index enforces exactly the same rule
-- and holds only the keyed orders; it is built before the constraint goes, so the rule never
-- lapses.
CREATE UNIQUE INDEX IF NOT EXISTS orders_idempotency_key ON orders (sale_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
ALTER TABLE orders DROP CONSTRAINT IF EXISTS orders_sale_id_idempotency_key_key;
