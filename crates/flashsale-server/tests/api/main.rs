//! Integration tests over real HTTP (T-4..T-6, NF-1, NF-4 in docs/requirements.md): each test
//! starts the service on port 0 with a fresh data directory and a manual clock (see [`helpers`]).

#![allow(clippy::unwrap_used)]

mod abuse;
mod accounts;
mod admin;
mod checkout;
mod concurrency;
mod crash;
mod events;
mod export;
mod fuzz_http;
mod helpers;
mod identity;
mod ledger;
mod lifecycle;
mod limits;
mod live;
mod load_balancer;
mod modes;
mod monitoring;
mod operating;
mod operations;
mod orders;
mod overload;
mod product;
mod restart;
mod sales;
mod scale_out;
mod security;
mod startup;
mod tls;
mod waitlist;
