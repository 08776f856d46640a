//! PostgreSQL migrations (under `crates/flashsale-store/migrations/`), applied at start.
//!
//! They run in one transaction under an advisory lock, so several instances starting at once
//! apply each version exactly once; every statement is idempotent besides.

use super::connections::Postgres;
use crate::StoreError;
use std::time::Duration;
use tokio_postgres::Client;

/// Bound on applying the migrations at start: they may wait for another instance's (advisory
/// lock) and take longer than one purchase's bound.
const MIGRATION_TIMEOUT: Duration = Duration::from_secs(60);

/// The migrations, in order: (version, SQL).
pub(crate) const MIGRATIONS: &[(i32, &str)] = &[
    (1, include_str!("../../migrations/0001_scale_out.sql")),
    (2, include_str!("../../migrations/0002_counter_flushes.sql")),
    (
        3,
        include_str!("../../migrations/0003_sale_creation_key.sql"),
    ),
    (4, include_str!("../../migrations/0004_last_sold_at.sql")),
    (5, include_str!("../../migrations/0005_accounts.sql")),
    (6, include_str!("../../migrations/0006_sale_changes.sql")),
    (
        7,
        include_str!("../../migrations/0007_orders_by_sale_time.sql"),
    ),
    (8, include_str!("../../migrations/0008_stock_ledger.sql")),
    (9, include_str!("../../migrations/0009_products.sql")),
    (10, include_str!("../../migrations/0010_holds.sql")),
    (11, include_str!("../../migrations/0011_waitlist.sql")),
    (
        12,
        include_str!("../../migrations/0012_hold_orders_by_sale.sql"),
    ),
    (
        13,
        include_str!("../../migrations/0013_idempotency_keys_only.sql"),
    ),
];

/// An arbitrary, fixed advisory-lock key for migrations.
const MIGRATION_LOCK: i64 = 0x666c_6173_6873;

/// Whether `schema` is a plain identifier we can put in SQL unquoted-safe (quoted anyway).
pub(crate) fn valid_schema(schema: &str) -> bool {
    !schema.is_empty()
        && schema.len() <= 63
        && schema
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !schema.as_bytes()[0].is_ascii_digit()
}

/// [`migrate`] on a connection of `pg`, within [`MIGRATION_TIMEOUT`].
pub(crate) async fn apply(pg: &Postgres, schema: &str) -> Result<(), StoreError> {
    let mut client = pg.client().await?;
    tokio::time::timeout(MIGRATION_TIMEOUT, migrate(&mut client, schema))
        .await
        .map_err(|_| StoreError::timeout("postgres migrations"))?
        .map_err(|e| StoreError::unavailable_from("postgres migrations", e))
}

/// Creates the schema if needed and applies the migrations not yet applied.
pub(crate) async fn migrate(
    client: &mut Client,
    schema: &str,
) -> Result<(), tokio_postgres::Error> {
    let tx = client.transaction().await?;
    // The session's timeouts are sized for purchases, not for schema changes.
    tx.batch_execute("SET LOCAL statement_timeout = 0; SET LOCAL lock_timeout = 0")
        .await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    tx.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS \"{schema}\"; SET LOCAL search_path TO \"{schema}\";
         CREATE TABLE IF NOT EXISTS schema_migrations (
             version    integer     PRIMARY KEY,
             applied_at timestamptz NOT NULL DEFAULT now()
         );"
    ))
    .await?;
    for (version, sql) in MIGRATIONS {
        let done = tx
            .query_opt(
                "SELECT 1 FROM schema_migrations WHERE version = $1",
                &[version],
            )
            .await?
            .is_some();
        if !done {
            tx.batch_execute(sql).await?;
            tx.execute(
                "INSERT INTO schema_migrations (version) VALUES ($1)",
                &[version],
            )
            .await?;
        }
    }
    tx.commit().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names_are_plain_identifiers() {
        assert!(valid_schema("public"));
        assert!(valid_schema("t_123"));
        for bad in ["", "1abc", "a-b", "A", "x\"y", &"s".repeat(64)] {
            assert!(!valid_schema(bad), "{bad:?}");
        }
    }
}
