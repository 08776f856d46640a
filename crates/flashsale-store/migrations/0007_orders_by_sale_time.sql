-- The operator's export of a sale's orders (issue 14, SPEC 11) reads them in pages by
-- (created_at, order_id) after a keyset cursor: this index makes each page a range scan.
CREATE INDEX IF NOT EXISTS orders_by_sale_time ON orders (sale_id, created_at, order_id);
