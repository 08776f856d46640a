//! The fence: each reservation is resolved exactly once, in PostgreSQL, by whoever inserts its
//! `reservations` row first. The group commit claims it as `committed` (in `orders.rs`); anyone
//! giving up on a reservation (a failed commit, the reconciler after the lease, a shutdown)
//! claims it as `released` here and reads who won. A late commit cannot land after a release.

use super::connections::Postgres;
use crate::StoreError;
use flashsale_core::SaleId;
use std::collections::HashMap;
use std::sync::Arc;
use uuid::Uuid;

/// How a reservation was resolved in PostgreSQL (by whoever claimed its fence row first), and
/// so what settling it in Redis does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Resolution {
    /// Committed: the order is durable; Redis keeps the stock taken and confirms the key.
    Committed,
    /// Released: no commit of it can land; Redis gives the stock back.
    Released,
}

/// One reservation, as the fence names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Reservation {
    /// The order the reservation was made for (its fence row's key).
    pub order_id: Uuid,
    /// Its sale.
    pub sale_id: SaleId,
}

/// Claims and reads fence rows.
pub(crate) struct Fence {
    pg: Arc<Postgres>,
}

impl Fence {
    /// A fence over the `reservations` table.
    pub(crate) fn new(pg: Arc<Postgres>) -> Self {
        Self { pg }
    }

    /// Claims each reservation not yet resolved as `released`, then reads how every one of
    /// them was resolved. Whoever inserted the row first (a commit or a release) won.
    pub(crate) async fn resolve(
        &self,
        reservations: &[Reservation],
    ) -> Result<HashMap<Uuid, Resolution>, StoreError> {
        let mut sorted = reservations.to_vec();
        // One lock order for every writer of `reservations`, so fences and commits never
        // deadlock.
        sorted.sort();
        let order_ids: Vec<Uuid> = sorted.iter().map(|r| r.order_id).collect();
        let sale_ids: Vec<i64> = sorted.iter().map(|r| r.sale_id.0).collect();
        let client = self.pg.client().await?;
        self.pg
            .call(
                "fence reservations",
                client.execute(
                    "INSERT INTO reservations (order_id, sale_id, resolution)
                     SELECT o, s, 'released' FROM UNNEST($1::uuid[], $2::int8[]) AS t(o, s)
                     ON CONFLICT (order_id) DO NOTHING",
                    &[&order_ids, &sale_ids],
                ),
            )
            .await?;
        let rows = self
            .pg
            .call(
                "read reservations",
                client.query(
                    "SELECT order_id, resolution FROM reservations WHERE order_id = ANY($1)",
                    &[&order_ids],
                ),
            )
            .await?;
        Ok(rows
            .iter()
            .map(|row| {
                let r = if row.get::<_, &str>(1) == "committed" {
                    Resolution::Committed
                } else {
                    Resolution::Released
                };
                (row.get(0), r)
            })
            .collect())
    }
}
