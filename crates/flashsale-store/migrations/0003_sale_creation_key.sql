-- The admin's Idempotency-Key of each sale: creating a sale again with the same key gives back
-- the sale first created with it (a retry after a lost answer creates no second sale).
ALTER TABLE sales ADD COLUMN IF NOT EXISTS creation_key text;
CREATE UNIQUE INDEX IF NOT EXISTS sales_creation_key ON sales (creation_key);
