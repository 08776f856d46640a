-- The stock ledger (issue 14, SPEC 11): every change of a sale's available / held / sold units
-- that is not an order (a committed order is its own entry, read from `orders`), written in
-- the same transaction as the change it records: `created` with the sale's row, `edit` and
-- `cancel` with their `sale_changes` rows. Later causes (the holds of SPEC 9) add rows with an
-- `order_id`; the shape stays.
CREATE TABLE IF NOT EXISTS stock_ledger (
    id              bigserial   PRIMARY KEY,
    sale_id         bigint      NOT NULL REFERENCES sales(id),
    at              timestamptz NOT NULL,
    cause           text        NOT NULL,
    order_id        uuid,
    available_delta bigint      NOT NULL,
    held_delta      bigint      NOT NULL,
    sold_delta      bigint      NOT NULL,
    sale_change_id  bigint      REFERENCES sale_changes(id)
);
-- A page of the ledger is a range scan on this and on orders_by_sale_time (0007), merged.
CREATE INDEX IF NOT EXISTS stock_ledger_by_sale ON stock_ledger (sale_id, at, id);

-- Sales from before the ledger get the entries their rows and `sale_changes` imply: the stock
-- a sale was created with is its first stock change's old value, if any; it was created no
-- later than its start (orders come after it) or its first change.
INSERT INTO stock_ledger (sale_id, at, cause, available_delta, held_delta, sold_delta)
SELECT s.id,
       LEAST(s.starts_at, (SELECT min(c.at) FROM sale_changes c WHERE c.sale_id = s.id)),
       'created',
       COALESCE((SELECT c.old_value::bigint FROM sale_changes c
                 WHERE c.sale_id = s.id AND c.field = 'stock' ORDER BY c.id LIMIT 1),
                s.stock),
       0, 0
FROM sales s
WHERE NOT EXISTS (SELECT 1 FROM stock_ledger l WHERE l.sale_id = s.id)
ORDER BY s.id;
INSERT INTO stock_ledger
    (sale_id, at, cause, available_delta, held_delta, sold_delta, sale_change_id)
SELECT c.sale_id, c.at, c.kind,
       CASE c.kind WHEN 'edit' THEN c.new_value::bigint - c.old_value::bigint ELSE 0 END,
       0, 0, c.id
FROM sale_changes c
WHERE ((c.kind = 'edit' AND c.field = 'stock') OR (c.kind = 'cancel' AND c.field = 'cancelled_at'))
  AND NOT EXISTS (SELECT 1 FROM stock_ledger l WHERE l.sale_change_id = c.id)
ORDER BY c.id;
