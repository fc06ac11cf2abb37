//! Probes: read-only samplers of the workstation's state.
//!
//! Each probe fills its part of a [`Snapshot`]. A probe that fails records a
//! [`ProbeError`] in the snapshot and the rest stands: partial failure is
//! data, never an `Err` for the whole snapshot.

pub mod system;

use std::time::Duration;

use vitals_proto::domain::{ProbeError, Snapshot};

/// Takes snapshots, keeping the state some measurements need between
/// samples (CPU use is a difference of two readings).
pub struct Sampler {
    system: system::SystemProbe,
}

impl Sampler {
    pub fn new() -> Self {
        Sampler {
            system: system::SystemProbe::new(),
        }
    }

    /// Takes the first CPU reading, so the next sample's CPU use covers a
    /// real window.
    pub fn prime(&mut self) {
        self.system.prime();
    }

    /// Takes a snapshot. CPU use covers the time since the previous call.
    pub fn sample(&mut self) -> Snapshot {
        let mut snapshot = Snapshot {
            taken_at_ms: vitals_proto::now_ms(),
            ..Default::default()
        };
        let mut errors = Vec::new();
        self.system.fill(&mut snapshot, &mut errors);
        snapshot.probe_errors = errors;
        snapshot
    }

    /// Takes a snapshot on its own, for one-shot use: a first reading, a
    /// short wait so CPU use means something, then the snapshot.
    pub fn sample_once(window: Duration) -> Snapshot {
        let mut sampler = Sampler::new();
        sampler.prime();
        std::thread::sleep(window);
        sampler.sample()
    }
}

impl Default for Sampler {
    fn default() -> Self {
        Self::new()
    }
}

pub(crate) fn probe_error(probe: &str, message: impl std::fmt::Display) -> ProbeError {
    ProbeError {
        probe: probe.to_owned(),
        message: message.to_string(),
    }
}
