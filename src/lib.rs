//! Flash Loyalty: a brand's loyalty program as a gRPC service — a points ledger with
//! capped, idempotent awards, member tiers and referrals.
//!
//! # Layout
//! Layers point one way: `grpc` → `service` → `store`, with `domain` shared by all.
//! - [`config`]: settings from flags and `FLASH_*` environment variables.
//! - [`telemetry`]: the tracing subscriber, the OpenTelemetry exporter, and every Prometheus
//!   metric's name (`telemetry::metrics`).
//! - [`app`]: wiring — builds the pool, the Redis client and the services, and serves.
//! - [`commands`]: the command-line subcommands besides `serve`.
//! - [`clock`]: the injectable clock; nothing else reads the time.
//! - [`domain`]: ids, rules and points arithmetic; pure, no IO.
//! - [`grpc`]: proto ↔ domain conversion and the one error → status mapping. No SQL.
//! - [`http`]: the HTTP port beside gRPC (the referral graph page and its JSON, `/metrics`,
//!   `/ready`). No SQL.
//! - [`service`]: use cases; each owns its transaction, member lock and cap reservation.
//! - [`store`]: SQL only; PostgreSQL errors are classified in one place.
//! - [`cap`]: the Redis daily-cap counters; every Redis failure is a refusal.
//!
//! Beside the crate: `src/main.rs` (the `flash` binary), `proto/` (the contract),
//! `migrations/`, `tests/it/` (the integration tests: one binary, a database per test,
//! dropped when the test ends), `tests/chaos.rs` (three chaos seeds through `flash-chaos`),
//! `scripts/` (the bootstrap), `docs/`, and the testing workspace: `testing/support`
//! (the fault proxy, private Redis, free ports, timestamps and the RPC dispatch the tests
//! and the chaos driver share), `testing/chaos` (the `flash-chaos` driver) and
//! `testing/bench` (the `flash-bench` benchmark).
pub mod app;
pub mod cap;
pub mod clock;
pub mod commands;
pub mod config;
pub mod domain;
pub mod grpc;
pub mod http;
pub mod service;
pub mod store;
pub mod telemetry;
