//! End-to-end: collectors and agents in one process, over real mTLS on
//! loopback, storing into real SQLite files. One file per concern; the
//! scripted-agent helpers and the real components are in the harness
//! crate (`vitals_tests::scripted`, `vitals_tests::components`).

mod backup;
mod console;
mod desk;
mod diagnostics;
mod enrollment;
mod hostile;
mod ingest;
mod nothing_lost;
mod notifications;
mod policy;
mod probes;
mod replicas;
mod store;
mod tickets;
mod transport;
