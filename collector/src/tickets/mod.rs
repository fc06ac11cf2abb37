//! Tickets: the help desk's queue, filled from fault events.
//!
//! `engine` holds the rules (dedup, auto-resolve, reopen, flapping, storms,
//! priority and SLA, maintenance) as a pure state machine. Persisting its
//! timeline, the `Specialist` API and notifications attach to it.

pub mod engine;
