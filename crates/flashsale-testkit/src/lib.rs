//! Test support for flashsale stores, as a crate so that a store anywhere can run it:
//!
//! - [`StoreUnderTest`]: how a case gets a store on data of its own, opens it again on the
//!   same data (a restart), and has another process open it (a crash);
//! - [`conformance`]: what every store answers on fresh data;
//! - [`checkout`]: hold mode: reservations, payments, cancels and expiry;
//! - [`durability`]: what every store keeps across a restart and a crash;
//! - [`crash_child`]: the child process a crash case kills;
//! - [`export`]: the operator's export of a sale's orders, page by page;
//! - [`growth`]: what the map growth examples share (their argument, their size bands);
//! - [`ledger`]: the stock ledger of a sale, page by page, and replayed after a herd;
//! - [`product`]: the product's description, price and image, kept and changed by the rules;
//! - [`conformance_suite!`]: one `#[tokio::test]` per case of both, for one store;
//! - [`stores`]: the embedded and scale-out stores as [`StoreUnderTest`]s;
//! - [`isolation`]: each test's own schema and key prefix on the shared Redis and
//!   PostgreSQL, removed however the test ends.
//!
//! Cases are plain `async fn`s generic over [`StoreUnderTest`]; a failed check panics, as in
//! any test.

// Test support: a setup that cannot be done is a failed test, said where it happened.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::missing_panics_doc)]

pub mod checkout;
pub mod conformance;
pub mod crash_child;
pub mod durability;
pub mod export;
pub mod growth;
pub mod isolation;
pub mod ledger;
pub mod product;
pub mod stores;
pub mod waitlist;

use async_trait::async_trait;
use flashsale_store::SaleStore;
use std::sync::Arc;

/// A store the suite can run against, with data of one case's own.
#[async_trait]
pub trait StoreUnderTest: Send + Sync + Sized + 'static {
    /// Fresh, empty data for one case (a directory, a schema and key prefix), removed when
    /// this is dropped.
    async fn isolated() -> Self;

    /// Opens a store on this case's data: empty the first time; after the previous store
    /// shut down (or its process was killed), the same data again (embedded: the same
    /// directory; scale-out: a new instance on the same schema and prefix). A case drops every
    /// handle of the previous store first.
    async fn open(&self) -> Arc<dyn SaleStore>;

    /// One line another process gives to [`StoreUnderTest::open_described`] to open this
    /// case's data (the crash case's child).
    fn describe(&self) -> String;

    /// In another process: opens the data [`StoreUnderTest::describe`] named, never removing
    /// it (the case that described it owns it).
    async fn open_described(description: &str) -> Arc<dyn SaleStore>;
}

/// Generates, in a module named `$backend`, one `#[tokio::test]` per case of
/// [`conformance`], [`checkout`], [`durability`], [`export`], [`ledger`] and [`product`] for the [`StoreUnderTest`] `$sut`, plus the (ignored)
/// test the crash case runs as its child process. The invoking crate needs `tokio` with the
/// `macros` and `rt-multi-thread` features.
#[macro_export]
macro_rules! conformance_suite {
    ($backend:ident, $sut:ty) => {
        mod $backend {
            $crate::conformance_suite!(@cases $sut; conformance;
                new_sale_has_full_stock_and_is_listed,
                confirmed_purchase_takes_one_unit_and_is_readable,
                buyer_at_the_limit_is_already_purchased_with_their_order,
                per_user_limit_above_one_is_enforced_across_attempts,
                quantity_above_the_sales_limit_is_refused,
                last_unit_sells_then_every_attempt_is_sold_out,
                quantity_above_the_remaining_stock_is_insufficient_stock,
                attempts_outside_the_window_are_not_active,
                unknown_sale_is_not_found_everywhere,
                idempotency_key_replays_the_first_outcome,
                racing_buyers_and_duplicates_never_oversell,
                summary_counts_attempts_and_rejections_by_reason,
                creating_a_sale_again_with_its_key_returns_the_same_sale,
            );
            $crate::conformance_suite!(@cases $sut; durability;
                confirmed_orders_stock_keys_and_counters_survive_a_restart,
                a_key_replays_its_order_after_a_restart,
            );
            $crate::conformance_suite!(@cases $sut; export;
                orders_are_paged_once_each_while_purchases_continue,
            );
            $crate::conformance_suite!(@cases $sut; ledger;
                ledger_records_each_cause_once_while_purchases_continue,
                ledger_replays_to_the_final_figures_after_a_concurrent_herd,
            );
            $crate::conformance_suite!(@cases $sut; checkout;
                a_purchase_in_hold_mode_reserves_units_until_a_deadline,
                a_payment_sells_the_held_units_once,
                a_cancel_frees_the_units_and_the_allowance,
                every_unit_held_is_active_and_every_unit_paid_is_sold_out,
                instant_orders_are_confirmed_and_take_no_event,
                racing_payments_and_cancels_have_one_winner,
                a_reservation_expires_once_without_a_request,
            );
            $crate::conformance_suite!(@cases $sut; waitlist;
                buyers_join_in_order_once_nothing_is_available,
                a_released_unit_is_offered_to_the_earliest_waiter,
                an_offer_passes_over_a_waiter_at_the_limit,
                the_waitlist_lapses_at_the_end,
                racing_joins_and_releases_offer_each_unit_once_in_join_order,
                a_cancelled_sales_waitlist_lapses,
            );
            $crate::conformance_suite!(@cases $sut; product;
                a_product_and_its_image_are_kept_changed_by_the_rules_and_survive_a_restart,
            );

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn confirmed_orders_survive_a_crash_mid_batch() {
                let sut = <$sut as $crate::StoreUnderTest>::isolated().await;
                let child = concat!(module_path!(), "::crash_child");
                $crate::durability::confirmed_orders_survive_a_crash_mid_batch(sut, child).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            #[ignore = "the child process of confirmed_orders_survive_a_crash_mid_batch"]
            async fn crash_child() {
                $crate::durability::crash_child::<$sut>().await;
            }
        }
    };
    (@cases $sut:ty; $module:ident; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $case() {
                let sut = <$sut as $crate::StoreUnderTest>::isolated().await;
                $crate::$module::$case(sut).await;
            }
        )*
    };
}
