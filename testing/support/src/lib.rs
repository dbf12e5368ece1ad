//! What the integration tests (`tests/it`) and the chaos driver (`testing/chaos`) share, so
//! each exists once: a fault is injected the same way, a port is found the same way and an
//! RPC is sent the same way whichever harness finds the bug.
//!
//! # Layout
//! - [`proxy`]: the TCP fault proxy — forward, cut, freeze or black-hole a connection.
//! - [`redis`]: a private `redis-server` on a free port, for faults that must never touch
//!   the shared Redis (FLUSHALL, restarts).
//! - [`process`]: the workspace's binaries beside `flash`, one `flash serve` waited for and
//!   killed when dropped, a scratch database dropped and created again (bench, demo).
//! - [`dispatch`]: one [`dispatch::Call`] per RPC of `flash.loyalty.v1` and the one place
//!   that sends it, with an optional deadline.
//! - [`free_port`] and [`timestamp`]: the small helpers every harness needs.
pub mod dispatch;
pub mod process;
pub mod proxy;
pub mod redis;

use chrono::{DateTime, Utc};

/// A port nothing listens on (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free port")
}

/// An instant as the wire carries it.
pub fn timestamp(instant: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: instant.timestamp(),
        nanos: instant.timestamp_subsec_nanos() as i32,
    }
}
