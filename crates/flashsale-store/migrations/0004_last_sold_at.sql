-- The sold-out instant is the instant Redis took the last unit: the latest `created_at` of the
-- sale's orders. Groups of one sale commit concurrently, so the group that makes sold = stock
-- need not hold that order; `last_sold_at` keeps the running latest on the row every group
-- updates anyway (under its row lock), and `sold_out_at` is taken from it.
ALTER TABLE sales ADD COLUMN IF NOT EXISTS last_sold_at timestamptz;
UPDATE sales s SET last_sold_at = o.last
FROM (SELECT sale_id, max(created_at) AS last FROM orders GROUP BY sale_id) o
WHERE s.id = o.sale_id;
-- Sales sold out before this migration may hold the latest order of the wrong group.
UPDATE sales SET sold_out_at = last_sold_at WHERE sold_out_at IS NOT NULL;
