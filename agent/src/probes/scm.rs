//! The Service Control Manager's words for a service, and which stopped
//! services count as failed: the Windows meaning of `os.failed_services`.
//!
//! Plain decoding that compiles everywhere, tested on recorded values; the
//! calls that read the SCM are in the Windows build (`win32::services`).

/// `SERVICE_*_START` (winsvc.h).
pub mod start {
    pub const BOOT: u32 = 0;
    pub const SYSTEM: u32 = 1;
    pub const AUTO: u32 = 2;
    pub const DEMAND: u32 = 3;
    pub const DISABLED: u32 = 4;
}

/// `SERVICE_STOPPED` … `SERVICE_PAUSED` (winsvc.h).
pub mod state {
    pub const STOPPED: u32 = 1;
    pub const START_PENDING: u32 = 2;
    pub const STOP_PENDING: u32 = 3;
    pub const RUNNING: u32 = 4;
}

/// The exit code saying "look at the service's own code".
pub const ERROR_SERVICE_SPECIFIC_ERROR: u32 = 1066;
/// The exit code of a service the SCM has not tried to start since the
/// machine started: a delayed-start service still waiting, one whose
/// dependency failed (the dependency is the one reported), or a boot still
/// in progress.
pub const ERROR_SERVICE_NEVER_STARTED: u32 = 1077;

/// One Win32 service as the SCM describes it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServiceRecord {
    pub name: String,
    pub display_name: String,
    pub start_type: u32,
    /// Automatic start, delayed (`SERVICE_DELAYED_AUTO_START_INFO`).
    pub delayed: bool,
    /// Started by a trigger (device arrival, network, group policy), not
    /// at boot: stopped is its normal state.
    pub triggered: bool,
    pub state: u32,
    pub exit_code: u32,
    pub service_exit_code: u32,
}

/// The automatic-start services that ran and stopped with an error, each
/// as "Name (Display name, why)". A clean stop (exit code 0) is someone's
/// decision, not a failure; a trigger-started service is stopped by
/// design; one the SCM has not started yet (a delayed start still
/// waiting, a boot in progress) has not failed. A service that fails to
/// start carries the error it failed with, so it is reported.
pub fn failed(services: &[ServiceRecord]) -> Vec<String> {
    let mut out: Vec<String> = services
        .iter()
        .filter(|s| s.start_type == start::AUTO && s.state == state::STOPPED && !s.triggered)
        .filter(|s| s.exit_code != 0 && s.exit_code != ERROR_SERVICE_NEVER_STARTED)
        .map(|s| {
            let why = match s.exit_code {
                ERROR_SERVICE_SPECIFIC_ERROR => format!("service error {}", s.service_exit_code),
                code => format!("exit code {code}"),
            };
            if s.display_name.is_empty() || s.display_name == s.name {
                format!("{} ({why})", s.name)
            } else {
                format!("{} ({}, {why})", s.name, s.display_name)
            }
        })
        .collect();
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(name: &str, start_type: u32, st: u32, exit_code: u32) -> ServiceRecord {
        ServiceRecord {
            name: name.into(),
            display_name: format!("{name} service"),
            start_type,
            state: st,
            exit_code,
            ..Default::default()
        }
    }

    #[test]
    fn stopped_automatic_services_with_an_exit_code_are_failed() {
        // Recorded from a workstation: the spooler crashed (1067, "the
        // process terminated unexpectedly"), a vendor agent returned its
        // own code, an update service stopped cleanly, a manual one is
        // stopped, a disabled one too, the time service runs.
        let mut vendor = svc("AcmeAgent", start::AUTO, state::STOPPED, 1066);
        vendor.service_exit_code = 42;
        let services = [
            svc("Spooler", start::AUTO, state::STOPPED, 1067),
            vendor,
            svc("gupdate", start::AUTO, state::STOPPED, 0),
            svc("wuauserv", start::DEMAND, state::STOPPED, 1067),
            svc("RemoteRegistry", start::DISABLED, state::STOPPED, 1077),
            svc("W32Time", start::AUTO, state::RUNNING, 0),
        ];
        assert_eq!(
            failed(&services),
            vec![
                "AcmeAgent (AcmeAgent service, service error 42)",
                "Spooler (Spooler service, exit code 1067)",
            ]
        );
    }

    #[test]
    fn delayed_triggered_and_not_yet_started_services_have_not_failed() {
        // Recorded from Wine's SCM and a workstation just after start-up.
        let mut delayed = svc("MapsBroker", start::AUTO, state::STOPPED, 1077);
        delayed.delayed = true;
        let mut delayed_crashed = svc("sppsvc", start::AUTO, state::STOPPED, 1067);
        delayed_crashed.delayed = true;
        let mut triggered = svc("TabletInputService", start::AUTO, state::STOPPED, 1067);
        triggered.triggered = true;
        let services = [
            delayed,
            delayed_crashed,
            triggered,
            svc("Eventlog", start::AUTO, state::STOPPED, 1077),
            svc("PlugPlay", start::AUTO, state::START_PENDING, 0),
        ];
        assert_eq!(
            failed(&services),
            vec!["sppsvc (sppsvc service, exit code 1067)"],
            "a delayed service that ran and crashed has failed; the others have not"
        );
    }
}
