//! The integration tests: one binary, a fresh database and Redis key prefix per test,
//! the server served in-process on a free port with a clock the test moves.
mod audit;
mod auth;
mod award;
mod award_faults;
mod callers;
mod decoding;
mod events;
mod expiry;
mod fuzz;
mod graph;
mod helpers;
mod jobs;
mod liability;
mod limits;
mod members;
mod model;
mod plans;
mod programs;
mod referrals;
mod reversals;
mod server;
mod spend;
mod telemetry;
mod tiers;
mod tls;
mod traces;
