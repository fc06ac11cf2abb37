//! The Windows print spooler's words for a printer, in the words the
//! checks read: `PRINTER_INFO_2`'s status and attribute bits and its jobs
//! become the same [`PrinterInfo`] a CUPS queue gives (state, IPP reason
//! keywords with severity suffixes, job counts), so one policy judges both.
//!
//! The decoding is plain code that compiles everywhere, so it is tested on
//! every platform with recorded status words; the calls that read the
//! spooler (`EnumPrintersW` level 2, `EnumJobsW`) are in `win32::spooler`,
//! and `SpoolerProbe` is the Windows printers probe.

use vitals_proto::domain::PrinterInfo;

/// `PRINTER_STATUS_*` bits (winspool.h).
pub mod status {
    pub const PAUSED: u32 = 0x0000_0001;
    pub const ERROR: u32 = 0x0000_0002;
    pub const PENDING_DELETION: u32 = 0x0000_0004;
    pub const PAPER_JAM: u32 = 0x0000_0008;
    pub const PAPER_OUT: u32 = 0x0000_0010;
    pub const MANUAL_FEED: u32 = 0x0000_0020;
    pub const PAPER_PROBLEM: u32 = 0x0000_0040;
    pub const OFFLINE: u32 = 0x0000_0080;
    pub const IO_ACTIVE: u32 = 0x0000_0100;
    pub const BUSY: u32 = 0x0000_0200;
    pub const PRINTING: u32 = 0x0000_0400;
    pub const OUTPUT_BIN_FULL: u32 = 0x0000_0800;
    pub const NOT_AVAILABLE: u32 = 0x0000_1000;
    pub const WAITING: u32 = 0x0000_2000;
    pub const PROCESSING: u32 = 0x0000_4000;
    pub const INITIALIZING: u32 = 0x0000_8000;
    pub const WARMING_UP: u32 = 0x0001_0000;
    pub const TONER_LOW: u32 = 0x0002_0000;
    pub const NO_TONER: u32 = 0x0004_0000;
    pub const PAGE_PUNT: u32 = 0x0008_0000;
    pub const USER_INTERVENTION: u32 = 0x0010_0000;
    pub const OUT_OF_MEMORY: u32 = 0x0020_0000;
    pub const DOOR_OPEN: u32 = 0x0040_0000;
    pub const SERVER_UNKNOWN: u32 = 0x0080_0000;
    pub const POWER_SAVE: u32 = 0x0100_0000;
}

/// `PRINTER_ATTRIBUTE_*` bits (winspool.h) that matter here.
pub mod attribute {
    pub const SHARED: u32 = 0x0000_0008;
    pub const NETWORK: u32 = 0x0000_0010;
    pub const WORK_OFFLINE: u32 = 0x0000_0400;
}

/// `JOB_STATUS_*` bits (winspool.h) that mean a job is stuck.
pub mod job {
    pub const PAUSED: u32 = 0x0000_0001;
    pub const ERROR: u32 = 0x0000_0002;
    pub const OFFLINE: u32 = 0x0000_0020;
    pub const PAPEROUT: u32 = 0x0000_0040;
    pub const PRINTED: u32 = 0x0000_0080;
    pub const DELETED: u32 = 0x0000_0100;
    pub const BLOCKED_DEVQ: u32 = 0x0000_0200;
    pub const USER_INTERVENTION: u32 = 0x0000_0400;
    pub const COMPLETE: u32 = 0x0000_1000;
}

/// Which status bits are which reason, and how bad.
const REASONS: &[(u32, &str)] = &[
    (status::PAUSED, "paused"),
    (status::PAPER_JAM, "media-jam-error"),
    (status::PAPER_OUT, "media-empty-error"),
    (status::MANUAL_FEED, "media-needed-report"),
    (status::PAPER_PROBLEM, "media-jam-warning"),
    (status::OFFLINE, "offline-report"),
    (status::OUTPUT_BIN_FULL, "output-area-full-warning"),
    (status::TONER_LOW, "toner-low-warning"),
    (status::NO_TONER, "toner-empty-error"),
    (status::USER_INTERVENTION, "service-requested-warning"),
    (status::OUT_OF_MEMORY, "other-warning"),
    (status::DOOR_OPEN, "door-open-error"),
    (status::PAGE_PUNT, "other-warning"),
    (status::ERROR, "other-error"),
];

/// One job as `JOB_INFO_1` gives it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Job {
    pub status: u32,
    /// When it was submitted, ms since the Unix epoch.
    pub submitted_ms: i64,
}

impl Job {
    /// Still waiting to print (not printed, completed or being deleted).
    fn pending(&self) -> bool {
        self.status & (job::PRINTED | job::COMPLETE | job::DELETED) == 0
    }
}

/// What `PRINTER_INFO_2` and the printer's jobs say, as a [`PrinterInfo`].
/// `port` is the port name (`IP_10.20.5.31`, `USB001`), `server` the print
/// server of a connected printer (`\\ps01`), empty for a local one.
pub fn printer_info(
    name: &str,
    status: u32,
    attributes: u32,
    port: &str,
    server: &str,
    jobs: &[Job],
    now_ms: i64,
) -> PrinterInfo {
    let mut reasons: Vec<String> = REASONS
        .iter()
        .filter(|(bit, _)| status & bit != 0)
        .map(|(_, r)| (*r).to_owned())
        .collect();
    reasons.dedup();
    if attributes & attribute::WORK_OFFLINE != 0 && status & status::OFFLINE == 0 {
        // "Use printer offline", set by a user: the printer may be fine.
        reasons.push("offline-report".into());
    }
    let pending: Vec<&Job> = jobs.iter().filter(|j| j.pending()).collect();
    let stuck = pending.iter().any(|j| {
        j.status
            & (job::ERROR
                | job::OFFLINE
                | job::PAPEROUT
                | job::BLOCKED_DEVQ
                | job::USER_INTERVENTION)
            != 0
    });
    if stuck && !reasons.iter().any(|r| r.starts_with("other")) {
        reasons.push("other-warning".into());
    }
    let state = if status & (status::NOT_AVAILABLE | status::SERVER_UNKNOWN) != 0 {
        "unreachable"
    } else if status & status::PAUSED != 0 {
        "stopped"
    } else if status & (status::PRINTING | status::PROCESSING | status::BUSY | status::IO_ACTIVE)
        != 0
        || !pending.is_empty()
    {
        "processing"
    } else {
        "idle"
    };
    let address = if server.is_empty() {
        port.to_owned()
    } else {
        format!("{server}\\{port}")
    };
    PrinterInfo {
        name: name.to_owned(),
        source: "spooler".into(),
        address,
        state: state.into(),
        reasons,
        accepting_jobs: status & (status::PENDING_DELETION | status::NOT_AVAILABLE) == 0,
        queued_jobs: pending.len() as u32,
        oldest_job_age_secs: pending
            .iter()
            .map(|j| j.submitted_ms)
            .min()
            .map(|t| ((now_ms - t).max(0) / 1000) as u64),
        ..Default::default()
    }
}

/// A `SYSTEMTIME` in UTC (how `JOB_INFO_1` gives a job's submission) as
/// ms since the Unix epoch.
pub fn systemtime_ms(
    year: u16,
    month: u16,
    day: u16,
    hour: u16,
    minute: u16,
    second: u16,
    ms: u16,
) -> i64 {
    // Days from 1970-01-01 to the date (Howard Hinnant's civil calendar).
    let (y, m) = if month <= 2 {
        (i64::from(year) - 1, i64::from(month) + 9)
    } else {
        (i64::from(year), i64::from(month) - 3)
    };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    ((days * 24 + i64::from(hour)) * 60 + i64::from(minute)) * 60_000
        + i64::from(second) * 1000
        + i64::from(ms)
}

/// The local printers on Windows: the spooler's, read through
/// `EnumPrintersW` (in place of CUPS, which Windows does not have).
#[cfg(windows)]
pub struct SpoolerProbe;

#[cfg(windows)]
#[async_trait::async_trait]
impl super::Probe for SpoolerProbe {
    fn kind(&self) -> vitals_proto::domain::ProbeKind {
        vitals_proto::domain::ProbeKind::Printers
    }

    async fn run(&mut self) -> super::Reading {
        let now = vitals_proto::now_ms();
        match tokio::task::spawn_blocking(move || crate::win32::spooler::printers(now)).await {
            Ok(Ok(list)) => super::Reading::ok(super::Section::Queues(list)),
            Ok(Err(e)) => super::Reading {
                section: None,
                errors: vec![super::probe_error(self.kind(), e)],
            },
            Err(e) => super::Reading {
                section: None,
                errors: vec![super::probe_error(
                    self.kind(),
                    format!("the spooler reader stopped: {e}"),
                )],
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000_000;

    #[test]
    fn status_words_as_the_spooler_reports_them() {
        // Recorded PRINTER_INFO_2.Status values and what the checks read.
        type Row<'a> = (u32, &'a str, &'a [&'a str]);
        let rows: &[Row] = &[
            (0, "idle", &[]),
            (status::PRINTING, "processing", &[]),
            (status::PAUSED, "stopped", &["paused"]),
            (
                status::PAPER_JAM | status::ERROR,
                "idle",
                &["media-jam-error", "other-error"],
            ),
            (status::PAPER_OUT, "idle", &["media-empty-error"]),
            (status::TONER_LOW, "idle", &["toner-low-warning"]),
            (
                status::NO_TONER | status::ERROR,
                "idle",
                &["toner-empty-error", "other-error"],
            ),
            (status::DOOR_OPEN, "idle", &["door-open-error"]),
            (status::OFFLINE, "idle", &["offline-report"]),
            (
                status::USER_INTERVENTION,
                "idle",
                &["service-requested-warning"],
            ),
            (status::NOT_AVAILABLE, "unreachable", &[]),
            // Power save and warming up are no fault.
            (status::POWER_SAVE | status::WARMING_UP, "idle", &[]),
        ];
        for (word, state, reasons) in rows {
            let p = printer_info("Frontdesk", *word, 0, "IP_10.20.5.31", "", &[], NOW);
            assert_eq!(
                (p.state.as_str(), p.reasons.clone()),
                (*state, reasons.iter().map(|r| (*r).to_owned()).collect()),
                "status {word:#x}"
            );
            assert_eq!(p.source, "spooler");
        }
    }

    #[test]
    fn job_submission_times() {
        assert_eq!(systemtime_ms(1970, 1, 1, 0, 0, 0, 0), 0);
        assert_eq!(systemtime_ms(2026, 12, 1, 8, 0, 0, 0), 1_796_112_000_000);
        assert_eq!(
            systemtime_ms(2024, 2, 29, 23, 59, 59, 999),
            1_709_251_199_999
        );
    }

    #[test]
    fn jobs_offline_use_and_the_server_behind() {
        let jobs = [
            Job {
                status: 0,
                submitted_ms: NOW - 45 * 60_000,
            },
            Job {
                status: job::ERROR,
                submitted_ms: NOW - 60_000,
            },
            Job {
                status: job::PRINTED | job::COMPLETE,
                submitted_ms: NOW - 3 * 3_600_000,
            },
        ];
        let p = printer_info(
            "Dispatch",
            0,
            attribute::NETWORK | attribute::WORK_OFFLINE,
            "IP_10.20.5.31",
            "\\\\ps01",
            &jobs,
            NOW,
        );
        assert_eq!(p.state, "processing");
        assert_eq!(p.queued_jobs, 2, "the printed one is not waiting");
        assert_eq!(p.oldest_job_age_secs, Some(45 * 60));
        assert_eq!(p.reasons, vec!["offline-report", "other-warning"]);
        assert_eq!(p.address, "\\\\ps01\\IP_10.20.5.31");
        // The print server behind it, as the collector's storm grouping
        // reads it from the address.
        let host = |port: &str, server: &str| {
            PrinterInfo::spooler_host(&printer_info("P", 0, 0, port, server, &[], NOW).address)
        };
        assert_eq!(host("IP_10.20.5.31", "\\\\PS01").as_deref(), Some("ps01"));
        assert_eq!(host("IP_10.20.5.31", "").as_deref(), Some("10.20.5.31"));
        assert_eq!(host("10.20.5.32_1", "").as_deref(), Some("10.20.5.32"));
        assert_eq!(host("USB001", ""), None);
        assert_eq!(host("LPT1:", ""), None);
    }

    #[test]
    fn the_shipped_checks_read_the_spooler_as_they_read_cups() {
        use vitals_proto::policy::Policy;
        let p = printer_info(
            "Frontdesk",
            status::PAPER_OUT | status::NO_TONER | status::DOOR_OPEN | status::PAUSED,
            0,
            "USB001",
            "",
            &[],
            NOW,
        );
        let snapshot = vitals_proto::domain::Snapshot {
            printers: vec![p],
            ..Default::default()
        };
        let mut raised: Vec<String> =
            crate::checks::Checks::evaluate_once(Policy::default_policy(), &snapshot)
                .into_iter()
                .map(|e| e.check_id)
                .collect();
        raised.sort();
        assert_eq!(
            raised,
            vec![
                "printer_door_open",
                "printer_out_of_paper",
                "printer_stopped",
                "printer_toner_empty"
            ]
        );
    }
}
