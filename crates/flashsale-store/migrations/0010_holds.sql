-- Checkout with holds (issue 12, SPEC 9, CO-1..CO-11). PostgreSQL is the authority for an
-- order's status; Redis keeps the figures admission decides with.

-- A sale's checkout mode, fixed at creation: NULL is instant, a window (seconds) is hold.
ALTER TABLE sales ADD COLUMN IF NOT EXISTS payment_window_secs integer
    CHECK (payment_window_secs > 0);

-- An order's status (`flashsale_core::OrderStatus::as_str`): instant orders are `confirmed`;
-- a hold order is committed `reserved` with its `expires_at` (the admission instant, Redis's
-- clock, plus the window) and leaves `reserved` once, by the transition step (`checkout.rs`).
-- For a hold sale `sales.sold` counts the units taken (held or paid), so its CHECK still
-- refuses an oversell whatever Redis says; a release gives them back. `buyers.held` counts a
-- buyer's reserved + paid units (their allowance), a release gives them back too.
ALTER TABLE orders ADD COLUMN IF NOT EXISTS status text NOT NULL DEFAULT 'confirmed'
    CHECK (status IN ('confirmed', 'reserved', 'paid', 'expired', 'cancelled'));
ALTER TABLE orders ADD COLUMN IF NOT EXISTS expires_at timestamptz;
ALTER TABLE orders ADD COLUMN IF NOT EXISTS payment_ref text;
-- Set by a transition to the sale's epoch it committed under while its unit move is not yet
-- applied to Redis; cleared once it is (or once a rebuild at a later epoch has reflected it).
ALTER TABLE orders ADD COLUMN IF NOT EXISTS move_epoch bigint;

-- The expiry sweep: live reservations by deadline.
CREATE INDEX IF NOT EXISTS orders_reserved_by_expiry ON orders (expires_at)
    WHERE status = 'reserved';
-- The reconciler: moves committed but not yet applied to Redis.
CREATE INDEX IF NOT EXISTS orders_unapplied_moves ON orders (sale_id)
    WHERE move_epoch IS NOT NULL;
