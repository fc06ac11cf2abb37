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

pub mod codec;
pub mod config_file;
pub mod convert;
pub mod diag;
pub mod domain;
pub mod files;
pub mod identity;
pub mod logging;
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

/// Gives an enum its one text form: `as_str`, `FromStr`, `Display` and
/// serde all use the same table, so the wire, TOML, JSON and SQL spellings
/// cannot drift apart. An unknown name is refused the way serde refuses
/// an unknown variant.
#[macro_export]
macro_rules! text_enum {
    ($name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        impl $name {
            /// Every variant, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            const NAMES: &'static [&'static str] = &[$($text),+];

            pub fn as_str(&self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }
        }

        impl ::std::str::FromStr for $name {
            type Err = $crate::UnknownName;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok($name::$variant),)+
                    other => Err($crate::UnknownName {
                        name: other.to_owned(),
                        expected: Self::NAMES,
                    }),
                }
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl ::serde::Serialize for $name {
            fn serialize<S: ::serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> ::serde::Deserialize<'de> for $name {
            fn deserialize<D: ::serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <::std::borrow::Cow<'de, str> as ::serde::Deserialize>::deserialize(d)?;
                s.parse()
                    .map_err(|_| <D::Error as ::serde::de::Error>::unknown_variant(&s, Self::NAMES))
            }
        }
    };
}

/// A name that is not one of an enum's (see [`text_enum!`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown name \"{name}\", expected one of {}", expected.join(", "))]
pub struct UnknownName {
    pub name: String,
    pub expected: &'static [&'static str],
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

/// A wall-clock time in epoch milliseconds as RFC 3339 in UTC, to the
/// second: `2026-12-01T08:00:00Z`. The one way times are written for
/// people and in evidence; times before the epoch read as the epoch, and
/// times past 9999 as its end.
pub fn rfc3339_seconds(ms: i64) -> String {
    humantime::format_rfc3339_seconds(system_time(ms)).to_string()
}

/// As [`rfc3339_seconds`], to the millisecond (webhook payloads).
pub fn rfc3339_millis(ms: i64) -> String {
    humantime::format_rfc3339_millis(system_time(ms)).to_string()
}

/// The last instant RFC 3339 can write: 9999-12-31T23:59:59.999Z.
const LAST_WRITABLE_MS: i64 = 253_402_300_799_999;

/// Times past the year 9999 (a desk's clock, or a hostile agent's) read as
/// its last instant: the formatter would panic on them.
fn system_time(ms: i64) -> std::time::SystemTime {
    std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.clamp(0, LAST_WRITABLE_MS) as u64)
}

/// Whether log lines on stderr may carry colour: only on a terminal (a log
/// file or a pipe gets plain text), and never with `NO_COLOR` set.
pub fn colour_on_stderr() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
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

#[cfg(test)]
mod tests {
    use crate::domain::{FaultState, Severity};
    use crate::tickets::Status;

    #[test]
    fn times_are_rfc3339_in_utc() {
        assert_eq!(
            crate::rfc3339_seconds(1_764_576_000_123),
            "2025-12-01T08:00:00Z"
        );
        assert_eq!(
            crate::rfc3339_millis(1_764_576_000_123),
            "2025-12-01T08:00:00.123Z"
        );
        assert_eq!(crate::rfc3339_seconds(-5), "1970-01-01T00:00:00Z");
        // Past what RFC 3339 can write (the formatter panicked: found by
        // fuzzing agent messages).
        assert_eq!(crate::rfc3339_seconds(i64::MAX), "9999-12-31T23:59:59Z");
        assert_eq!(crate::rfc3339_millis(i64::MAX), "9999-12-31T23:59:59.999Z");
    }

    #[test]
    fn one_text_form_for_parse_display_and_serde() {
        for s in Status::ALL {
            assert_eq!(s.as_str().parse::<Status>(), Ok(*s));
            assert_eq!(serde_json::to_string(s).unwrap(), format!("\"{s}\""));
        }
        assert_eq!(
            serde_json::from_str::<Status>("\"waiting_on_vendor\"").unwrap(),
            Status::WaitingOnVendor
        );
        let err = serde_json::from_str::<Severity>("\"dire\"").unwrap_err();
        assert!(err.to_string().contains("unknown variant `dire`"), "{err}");
        let err = "lowered".parse::<FaultState>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown name \"lowered\", expected one of raised, cleared"
        );
    }
}
