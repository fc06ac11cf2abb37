//! The contract between a Vitals agent and a Vitals collector.
//!
//! - [`wire`]: the generated `vitals.v1` protobuf and gRPC code. Only this
//!   crate and the gRPC edge modules of the agent and the collector use it.
//! - [`domain`]: the types both sides work on inside (snapshot and friends).
//! - [`identity`]: who a peer is, read from its certificate.
//! - [`convert`]: wire <-> domain, in one place.
//! - [`shutdown`]: the one shutdown signal every task of both sides waits on.
//! - [`policy`], [`ticket_rules`]: `policy.toml`; [`diag`]: the diagnostic
//!   catalog; [`tickets`]: ticket types; [`report`]: a snapshot as text;
//!   [`config_file`]: strict TOML with `file:line` errors.

pub mod config_file;
pub mod convert;
pub mod diag;
pub mod domain;
pub mod identity;
pub mod policy;
pub mod report;
pub mod shutdown;
pub mod ticket_rules;
pub mod tickets;

/// Generated `vitals.v1` code (prost messages, tonic clients and servers).
#[allow(clippy::all, missing_docs)]
pub mod wire {
    tonic::include_proto!("vitals.v1");

    /// The encoded descriptor set of every `vitals.v1` file, for gRPC server
    /// reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/vitals_descriptor.bin"));
}

/// Version of this build, reported in hello and welcome messages.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Milliseconds since the Unix epoch, by the wall clock.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Renders an error with each of its causes, `outer: inner: root`. tonic's
/// top-level message for a refused certificate is only "transport error";
/// the reason is further down the chain.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let next = c.to_string();
        if !s.contains(&next) {
            s.push_str(": ");
            s.push_str(&next);
        }
        cur = c.source();
    }
    s
}
