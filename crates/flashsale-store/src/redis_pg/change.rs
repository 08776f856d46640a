//! An operator's change to a sale (edit, cancel) in the scale-out store, decided in the same
//! atomic step as purchases:
//!
//! 1. `change.lua` `freeze`: at one instant of Redis's clock, admissions of the sale stop (they
//!    answer "wait" and are asked again) and the figures the change is decided against are
//!    read: units taken = stock - free units (sold or reserved);
//! 2. in one PostgreSQL transaction, under the sale row's lock: the rules
//!    (`flashsale_core::change::apply`) decide against that row, that instant and those units;
//!    if allowed, the row is updated (its `revision` moves on), each altered field recorded
//!    in `sale_changes`, and a stock move or a cancellation in `stock_ledger`; PostgreSQL's own `CHECK (sold <= stock)` still refuses an oversell;
//! 3. `change.lua` `apply` writes the new values (and revision) into `meta` and lets
//!    admissions in again; `thaw` instead if nothing changed.
//!
//! The freeze has a lease ([`FREEZE_LEASE_MS`]): an instance that dies in between does not stop
//! a sale's admissions for longer. The whole change runs on the store's tracker, so a caller
//! that stops waiting does not stop it half-way. Other instances see the change at their next
//! refresh (the revision in `meta`; see `snapshot.rs`).

use super::connections::Postgres;
use super::keys::Keys;
use super::rebuild::Rebuilder;
use super::sale_row::{SALE, sale_at};
use super::scripts::{Applied, Freeze, Scripts};
use super::snapshot::Snapshot;
use crate::instants::from_micros;
use crate::ledger::change_entry;
use crate::product_columns::ProductRow;
use crate::{ChangeOutcome, StoreError};
use flashsale_core::change::{apply, changed_fields};
use flashsale_core::{ChangeRefusal, Sale, SaleChange, SaleId};
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;
use tokio::time::Instant;
use uuid::Uuid;

/// How long a freeze stops admissions at most, if its change never ends it.
const FREEZE_LEASE_MS: u64 = 2_000;
/// How long to wait before asking again while another change (or a rebuild) holds the sale.
const BUSY_POLL: Duration = Duration::from_millis(10);

/// Makes operators' changes.
pub(crate) struct Changes {
    pub pg: Arc<Postgres>,
    pub keys: Arc<Keys>,
    pub scripts: Arc<Scripts>,
    pub snapshot: Arc<Snapshot>,
    pub rebuilder: Arc<Rebuilder>,
    /// How long a change waits, in all, for another change or a rebuild.
    pub patience: Duration,
}

impl Changes {
    /// Steps 1 to 3 (see the module docs).
    pub(crate) async fn change(
        self: Arc<Self>,
        id: SaleId,
        change: SaleChange,
    ) -> Result<ChangeOutcome, StoreError> {
        let Some(sale) = self.snapshot.sale(id).await? else {
            return Ok(ChangeOutcome::SaleNotFound);
        };
        let keys = self.keys.sale(id);
        let token = Uuid::now_v7().to_string();
        let deadline = Instant::now() + self.patience;
        let (now_us, taken) = loop {
            match self
                .scripts
                .change_freeze(&keys, &token, FREEZE_LEASE_MS)
                .await?
            {
                // Units on hold are not sold: a hold sale whose units are all reserved is
                // active, not sold out, and its stock may still be raised (the rules only
                // read `taken` for the state and for a lowered stock, which is refused
                // anyway once the sale is active).
                Freeze::Frozen {
                    now_us,
                    stock,
                    remaining,
                    on_hold,
                    ..
                } => break (now_us, (stock - remaining - on_hold).max(0) as u32),
                Freeze::Missing if Instant::now() < deadline => {
                    if !self.rebuilder.rebuild(&sale).await? {
                        tokio::time::sleep(BUSY_POLL).await;
                    }
                }
                Freeze::Busy if Instant::now() < deadline => tokio::time::sleep(BUSY_POLL).await,
                Freeze::Missing | Freeze::Busy => {
                    return Err(StoreError::unavailable(
                        "another change or a rebuild holds the sale; nothing changed",
                    ));
                }
            }
        };
        let at = from_micros(now_us);
        let written = match self.write(id, at, taken, &change).await {
            Ok(written) => written,
            Err(e) => {
                self.thaw(&keys, &token).await;
                return Err(e);
            }
        };
        let (new, revision) = match written {
            Ok(written) => written,
            Err(refusal) => {
                self.thaw(&keys, &token).await;
                return Ok(ChangeOutcome::Refused(refusal));
            }
        };
        let unconfirmed = self
            .scripts
            .change_apply(
                &keys,
                &token,
                &Applied {
                    sale: &new,
                    revision,
                },
            )
            .await;
        let unconfirmed = match unconfirmed {
            Ok(Some(unconfirmed)) => unconfirmed,
            Ok(None) => {
                return Err(StoreError::unavailable(
                    "the change is durable but its freeze ran out before Redis took it",
                ));
            }
            Err(e) => {
                tracing::error!(sale = %id, error = %e.report(), "a durable change could not be applied in Redis");
                return Err(StoreError::unavailable_from(
                    "the change is durable but Redis could not take it",
                    e,
                ));
            }
        };
        self.snapshot
            .replace(Arc::new(new), revision, Some(unconfirmed));
        let status = self
            .snapshot
            .get(id)
            .ok_or_else(|| StoreError::internal(format!("sale {id} left the view")))?
            .status();
        Ok(ChangeOutcome::Changed(status))
    }

    /// Step 2: decides and, if allowed, writes the change and its record; the sale as changed
    /// and its revision, or the refusal.
    async fn write(
        &self,
        id: SaleId,
        at: OffsetDateTime,
        taken: u32,
        change: &SaleChange,
    ) -> Result<Result<(Sale, i64), ChangeRefusal>, StoreError> {
        let mut client = self.pg.client().await?;
        self.pg
            .call(
                "change sale",
                write_change(&mut client, id, at, taken, change),
            )
            .await
    }

    async fn thaw(&self, keys: &super::keys::SaleKeys, token: &str) {
        if let Err(e) = self.scripts.change_thaw(keys, token).await {
            tracing::warn!(error = %e.report(), "could not thaw a sale; its freeze runs out by itself");
        }
    }
}

async fn write_change(
    client: &mut deadpool_postgres::Object,
    id: SaleId,
    at: OffsetDateTime,
    taken: u32,
    change: &SaleChange,
) -> Result<Result<(Sale, i64), ChangeRefusal>, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    let row = tx
        .query_one(
            &format!("SELECT {SALE} FROM sales WHERE id = $1 FOR UPDATE"),
            &[&id.0],
        )
        .await?;
    let old = sale_at(&row, 0);
    let new = match apply(&old, at, taken, change) {
        Ok(new) => new,
        Err(refusal) => return Ok(Err(refusal)),
    };
    let product = ProductRow::of(&new.product);
    let revision: i64 = tx
        .query_one(
            "UPDATE sales SET name = $2, starts_at = $3, ends_at = $4, stock = $5,
                              per_user_limit = $6, cancelled_at = $7, description = $8,
                              price_minor = $9, currency = $10, image_kind = $11,
                              image_sha256 = $12, revision = revision + 1
             WHERE id = $1 RETURNING revision",
            &[
                &id.0,
                &new.name,
                &new.starts_at,
                &new.ends_at,
                &(new.stock as i32),
                &(new.per_user_limit as i32),
                &new.cancelled_at,
                &product.description,
                &product.price_minor,
                &product.currency,
                &product.image_kind,
                &product.image_sha256,
            ],
        )
        .await?
        .get(0);
    let record = tx
        .prepare(
            "INSERT INTO sale_changes (sale_id, at, kind, field, old_value, new_value)
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
        )
        .await?;
    let ledger = change_entry(&old, &new);
    let mut referred: Option<i64> = None;
    for f in changed_fields(&old, &new) {
        let row = tx
            .query_one(
                &record,
                &[&id.0, &at, &change.kind(), &f.field, &f.old, &f.new],
            )
            .await?;
        if ledger.is_some_and(|(_, _, field)| field == f.field) {
            referred = Some(row.get(0));
        }
    }
    if let Some((cause, available_delta, _)) = ledger {
        tx.execute(
            "INSERT INTO stock_ledger
                 (sale_id, at, cause, available_delta, held_delta, sold_delta, sale_change_id)
             VALUES ($1, $2, $3, $4, 0, 0, $5)",
            &[&id.0, &at, &cause.code(), &available_delta, &referred],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(Ok((new, revision)))
}
