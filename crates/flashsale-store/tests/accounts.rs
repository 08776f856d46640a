//! The account stores (`--identity accounts`) on both backends: exactly one account per email
//! under a signup race, case-insensitive uniqueness in PostgreSQL, durability across a reopen,
//! and logouts seen by a second reader.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use flashsale_store::StoreConfig;
use flashsale_store::accounts::{self, AccountStore, Revocation, RevocationCursor, SignUp};
use flashsale_testkit::isolation::{Cleanup, database_url, isolated, redis_url};
use std::sync::Arc;
use time::macros::datetime;
use time::{Duration, OffsetDateTime};
use uuid::Uuid;

const NOW: OffsetDateTime = datetime!(2026-11-22 12:00 UTC);

/// Sixteen sign-ups for one email at once: exactly one account.
async fn a_signup_race_makes_exactly_one_account(store: Arc<dyn AccountStore>) {
    let attempts: Vec<_> = (0..16)
        .map(|i| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                store
                    .create_account("race@example.com", &format!("hash{i}"), NOW)
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut created = 0;
    for attempt in attempts {
        if matches!(attempt.await.unwrap(), SignUp::Created(_)) {
            created += 1;
        }
    }
    assert_eq!(created, 1);
    assert!(
        store
            .account_by_email("race@example.com")
            .await
            .unwrap()
            .is_some()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn embedded_a_signup_race_makes_exactly_one_account() {
    let dir = tempfile::tempdir().unwrap();
    let config = StoreConfig::Embedded {
        data_dir: dir.path().to_path_buf(),
    };
    a_signup_race_makes_exactly_one_account(accounts::open(&config).await.unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_a_signup_race_makes_exactly_one_account() {
    let cfg = isolated(&redis_url(), &database_url());
    let _cleanup = Cleanup { cfg: cfg.clone() };
    let store = accounts::open(&StoreConfig::RedisPg(cfg)).await.unwrap();
    a_signup_race_makes_exactly_one_account(store).await;
}

#[tokio::test]
async fn postgres_emails_are_unique_whatever_their_case_and_accounts_are_shared() {
    let cfg = isolated(&redis_url(), &database_url());
    let _cleanup = Cleanup { cfg: cfg.clone() };
    let first = accounts::open(&StoreConfig::RedisPg(cfg.clone()))
        .await
        .unwrap();
    let SignUp::Created(account) = first
        .create_account("Ann@Example.com", "h", NOW)
        .await
        .unwrap()
    else {
        panic!("not created")
    };
    assert_eq!(
        first
            .create_account("ann@example.COM", "h2", NOW)
            .await
            .unwrap(),
        SignUp::EmailTaken
    );
    // A second instance (another pool) sees the account and a logout made on the first.
    let second = accounts::open(&StoreConfig::RedisPg(cfg)).await.unwrap();
    assert_eq!(
        second.account_by_email("ann@example.com").await.unwrap(),
        Some(account)
    );
    let start = second
        .revocations_since(RevocationCursor::default(), NOW)
        .await
        .unwrap();
    assert!(start.revoked.is_empty());
    let revocation = Revocation {
        session: Uuid::now_v7(),
        expires_at: NOW + Duration::hours(1),
    };
    first.revoke_session(revocation).await.unwrap();
    first.revoke_session(revocation).await.unwrap();
    let seen = second.revocations_since(start.next, NOW).await.unwrap();
    assert_eq!(seen.revoked, [revocation]);
    let expired = second
        .revocations_since(seen.next, NOW + Duration::hours(2))
        .await
        .unwrap();
    assert!(expired.revoked.is_empty());
}
