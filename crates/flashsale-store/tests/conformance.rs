//! One conformance and durability suite (`flashsale-testkit`), run unchanged against every
//! `SaleStore` backend. To add a backend: implement `flashsale_testkit::StoreUnderTest` for it
//! and add a line below.

flashsale_testkit::conformance_suite!(embedded_store, flashsale_testkit::stores::Embedded);
flashsale_testkit::conformance_suite!(redis_pg_store, flashsale_testkit::stores::RedisPg);
