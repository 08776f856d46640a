-- The summary's checkout counts (CO-12) read a sale's hold-mode orders only: a partial index
-- holds exactly those (every order with a deadline), so the operator's summary and the live
-- page's sample each second no longer visit every instant order of the sale, and the instant
-- path writes nothing more (its orders are never in it).
CREATE INDEX IF NOT EXISTS orders_holds_by_sale ON orders (sale_id)
    WHERE expires_at IS NOT NULL;
