//! The operating system's own health: a pending reboot, failed system
//! services, who is logged in, and how far the clock is from the
//! collector's. Name, version, kernel and boot time are in the system probe.

use std::path::{Path, PathBuf};

#[cfg(not(windows))]
use tokio::process::Command;
use tokio::sync::watch;
use vitals_proto::domain::{OsHealth, ProbeError, ProbeKind, UserSession};

use super::{Probe, Reading, Section, probe_error};

const KIND: ProbeKind = ProbeKind::Os;

pub struct OsProbe {
    clock_offset: watch::Receiver<Option<i64>>,
    /// Where the markers and session records live; tests point it elsewhere.
    run_dir: PathBuf,
}

impl OsProbe {
    pub fn new(clock_offset: watch::Receiver<Option<i64>>) -> Self {
        OsProbe {
            clock_offset,
            run_dir: PathBuf::from("/run"),
        }
    }
}

#[async_trait::async_trait]
impl Probe for OsProbe {
    fn kind(&self) -> ProbeKind {
        KIND
    }

    async fn run(&mut self) -> Reading {
        let mut errors = Vec::new();
        let mut os = OsHealth {
            clock_offset_ms: *self.clock_offset.borrow(),
            ..Default::default()
        };
        pending_reboot(&self.run_dir, &mut os);
        #[cfg(windows)]
        apply_reboot_markers(&windows::reboot_markers(), &mut os);
        match failed_services().await {
            Ok(list) => {
                os.services_checked = true;
                os.failed_services = list;
            }
            Err(e) => errors.push(probe_error(KIND, format!("services: {e}"))),
        }
        os.users = users(&self.run_dir, &mut errors);
        Reading {
            section: Some(Section::Os(os)),
            errors,
        }
    }
}

/// Debian and Ubuntu mark a pending reboot with `reboot-required` (its
/// modification time is when it became pending) and list the packages
/// that asked for it in `reboot-required.pkgs`.
fn pending_reboot(run_dir: &Path, os: &mut OsHealth) {
    let marker = run_dir.join("reboot-required");
    let Ok(meta) = std::fs::metadata(&marker) else {
        return;
    };
    os.reboot_required = true;
    os.reboot_required_since_secs = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_secs());
    let pkgs = std::fs::read_to_string(run_dir.join("reboot-required.pkgs")).unwrap_or_default();
    let mut reasons: Vec<String> = pkgs
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
    reasons.dedup();
    if reasons.is_empty() {
        reasons.push("reboot-required marker present".into());
    }
    os.reboot_reasons = reasons;
}

/// A reason a reboot is pending, and since when where that is known
/// (seconds since the Unix epoch).
#[derive(Debug, Clone, PartialEq)]
pub struct RebootMarker {
    pub reason: String,
    pub since_secs: Option<u64>,
}

/// Markers found (Windows keeps several) join what is already known: the
/// reboot is pending since the earliest of them.
pub fn apply_reboot_markers(markers: &[RebootMarker], os: &mut OsHealth) {
    if markers.is_empty() {
        return;
    }
    os.reboot_required = true;
    os.reboot_required_since_secs = os
        .reboot_required_since_secs
        .into_iter()
        .chain(markers.iter().filter_map(|m| m.since_secs))
        .min();
    for m in markers {
        if !os.reboot_reasons.contains(&m.reason) {
            os.reboot_reasons.push(m.reason.clone());
        }
    }
}

/// A Windows `FILETIME` (100 ns steps since 1601) as seconds since the
/// Unix epoch; `None` before 1970.
pub fn filetime_secs(low: u32, high: u32) -> Option<u64> {
    const EPOCH_DIFF_SECS: u64 = 11_644_473_600;
    let ticks = (u64::from(high) << 32) | u64::from(low);
    (ticks / 10_000_000).checked_sub(EPOCH_DIFF_SECS)
}

/// A Windows terminal-services session as a [`UserSession`]: the console
/// or a remote one (its client's name as the host); `None` for a session
/// with nobody logged in (the services session, an idle listener).
pub fn wts_session(
    station: &str,
    user: &str,
    domain: &str,
    client: &str,
    logon: i64,
) -> Option<UserSession> {
    if user.is_empty() {
        return None;
    }
    let console = station.eq_ignore_ascii_case("console");
    Some(UserSession {
        user: if domain.is_empty() {
            user.to_owned()
        } else {
            format!("{domain}\\{user}")
        },
        terminal: if console {
            "console".into()
        } else {
            station.to_owned()
        },
        host: if console {
            String::new()
        } else {
            client.to_owned()
        },
        login_secs: u64::try_from(logon)
            .ok()
            .and_then(|t| filetime_secs(t as u32, (t >> 32) as u32))
            .unwrap_or(0),
    })
}

/// The registry's pending-reboot markers.
#[cfg(windows)]
mod windows {
    use super::{RebootMarker, filetime_secs};
    use winreg::RegKey;
    use winreg::enums::HKEY_LOCAL_MACHINE;

    const KEYS: &[(&str, &str)] = &[
        (
            r"SOFTWARE\Microsoft\Windows\CurrentVersion\Component Based Servicing\RebootPending",
            "Component Based Servicing: an update is waiting for a restart",
        ),
        (
            r"SOFTWARE\Microsoft\Windows\CurrentVersion\WindowsUpdate\Auto Update\RebootRequired",
            "Windows Update: a restart is required",
        ),
    ];
    const SESSION_MANAGER: &str = r"SYSTEM\CurrentControlSet\Control\Session Manager";

    /// Each marker key present, since its last write; and files the
    /// session manager is to replace at the next start.
    pub fn reboot_markers() -> Vec<RebootMarker> {
        let hklm = RegKey::predef(HKEY_LOCAL_MACHINE);
        let mut out = Vec::new();
        for (path, reason) in KEYS {
            if let Ok(key) = hklm.open_subkey(path) {
                let since_secs = key.query_info().ok().and_then(|i| {
                    filetime_secs(
                        i.last_write_time.dwLowDateTime,
                        i.last_write_time.dwHighDateTime,
                    )
                });
                out.push(RebootMarker {
                    reason: (*reason).to_owned(),
                    since_secs,
                });
            }
        }
        if let Ok(key) = hklm.open_subkey(SESSION_MANAGER)
            && let Ok(v) = key.get_raw_value("PendingFileRenameOperations")
            && v.bytes.iter().any(|b| *b != 0)
        {
            out.push(RebootMarker {
                reason: "files waiting to be replaced at the next start \
                         (PendingFileRenameOperations)"
                    .into(),
                since_secs: None,
            });
        }
        out
    }
}

/// Failed units, from `systemctl list-units --state=failed --output=json`.
#[cfg(not(windows))]
async fn failed_services() -> Result<Vec<String>, String> {
    let out = Command::new("systemctl")
        .args([
            "list-units",
            "--state=failed",
            "--output=json",
            "--no-pager",
            "--all",
        ])
        .kill_on_drop(true)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|e| format!("cannot run systemctl: {e}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let err: Vec<&str> = err
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        return Err(format!("systemctl: {}", err.join(" ")));
    }
    parse_failed_units(&String::from_utf8_lossy(&out.stdout))
}

/// Automatic-start services that are stopped with an error, from the
/// Service Control Manager (see `scm::failed` for what counts).
#[cfg(windows)]
async fn failed_services() -> Result<Vec<String>, String> {
    let stopped = tokio::task::spawn_blocking(crate::win32::services::stopped)
        .await
        .map_err(|e| format!("the SCM reader stopped: {e}"))??;
    Ok(super::scm::failed(&stopped))
}

/// The unit names in systemctl's JSON unit list.
pub fn parse_failed_units(text: &str) -> Result<Vec<String>, String> {
    let v: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("systemctl output is not JSON: {e}"))?;
    let list = v
        .as_array()
        .ok_or("systemctl output is not a list of units")?;
    let mut units: Vec<String> = list
        .iter()
        .filter(|u| u.get("active").and_then(|a| a.as_str()) == Some("failed"))
        .filter_map(|u| u.get("unit")?.as_str().map(str::to_owned))
        .collect();
    units.sort();
    Ok(units)
}

#[cfg(windows)]
fn users(_run_dir: &Path, errors: &mut Vec<ProbeError>) -> Vec<UserSession> {
    crate::win32::sessions::users().unwrap_or_else(|e| {
        errors.push(probe_error(KIND, e));
        Vec::new()
    })
}

#[cfg(not(windows))]
fn users(run_dir: &Path, errors: &mut Vec<ProbeError>) -> Vec<UserSession> {
    let path = run_dir.join("utmp");
    match std::fs::read(&path) {
        Ok(bytes) => parse_utmp(&bytes),
        // No session records at all (a container, a minimal system): nobody.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => {
            errors.push(probe_error(KIND, format!("{}: {e}", path.display())));
            Vec::new()
        }
    }
}

/// glibc's `struct utmp` on Linux: 384 bytes per record.
const UTMP_RECORD: usize = 384;
const USER_PROCESS: i32 = 7;

/// Logged-in users from utmp records. A torn last record is ignored.
pub fn parse_utmp(bytes: &[u8]) -> Vec<UserSession> {
    let text = |b: &[u8]| {
        let end = b.iter().position(|c| *c == 0).unwrap_or(b.len());
        String::from_utf8_lossy(&b[..end]).into_owned()
    };
    let i32_at = |r: &[u8], at: usize| {
        let mut b = [0u8; 4];
        b.copy_from_slice(&r[at..at + 4]);
        i32::from_ne_bytes(b)
    };
    bytes
        .chunks_exact(UTMP_RECORD)
        .filter(|r| i32_at(r, 0) == USER_PROCESS)
        .map(|r| UserSession {
            // ut_line at 8 (32 bytes), ut_user at 44 (32), ut_host at 76 (256),
            // ut_tv.tv_sec at 340.
            terminal: text(&r[8..40]),
            user: text(&r[44..76]),
            host: text(&r[76..332]),
            login_secs: u64::try_from(i32_at(r, 340)).unwrap_or_default(),
        })
        .filter(|u| !u.user.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utmp_record(kind: i32, line: &str, user: &str, host: &str, secs: i32) -> Vec<u8> {
        let mut r = vec![0u8; UTMP_RECORD];
        r[0..4].copy_from_slice(&kind.to_ne_bytes());
        r[8..8 + line.len()].copy_from_slice(line.as_bytes());
        r[44..44 + user.len()].copy_from_slice(user.as_bytes());
        r[76..76 + host.len()].copy_from_slice(host.as_bytes());
        r[340..344].copy_from_slice(&secs.to_ne_bytes());
        r
    }

    #[test]
    fn utmp_lists_user_sessions_only() {
        let mut file = utmp_record(2, "~", "reboot", "6.1.0", 1_700_000_000); // BOOT_TIME
        file.extend(utmp_record(USER_PROCESS, "tty1", "ana", "", 1_700_000_100));
        file.extend(utmp_record(6, "tty2", "LOGIN", "", 1_700_000_000)); // LOGIN_PROCESS
        file.extend(utmp_record(
            USER_PROCESS,
            "pts/0",
            "it-admin",
            "10.0.0.5",
            1_700_000_200,
        ));
        file.extend(&[1, 2, 3]); // a torn record at the end
        let users = parse_utmp(&file);
        assert_eq!(
            users,
            vec![
                UserSession {
                    user: "ana".into(),
                    terminal: "tty1".into(),
                    host: String::new(),
                    login_secs: 1_700_000_100,
                },
                UserSession {
                    user: "it-admin".into(),
                    terminal: "pts/0".into(),
                    host: "10.0.0.5".into(),
                    login_secs: 1_700_000_200,
                },
            ]
        );
        assert!(parse_utmp(&[0u8; 100]).is_empty());
    }

    #[test]
    fn failed_units_from_systemctl_json() {
        let text = include_str!("../../tests/fixtures/systemctl-failed.json");
        assert_eq!(
            parse_failed_units(text).unwrap(),
            vec!["cups.service".to_owned(), "smbd.service".to_owned()]
        );
        assert_eq!(parse_failed_units("[]").unwrap(), Vec::<String>::new());
        assert!(parse_failed_units("UNIT LOAD ACTIVE").is_err());
        assert!(parse_failed_units("{}").is_err());
    }

    #[test]
    fn terminal_services_sessions_console_and_remote() {
        // 2026-12-01T08:00:00Z as a FILETIME.
        let logon = (1_796_112_000i64 + 11_644_473_600) * 10_000_000;
        let console = wts_session("Console", "ana", "CITY", "", logon).expect("a user");
        assert_eq!(
            (
                console.user.as_str(),
                console.terminal.as_str(),
                console.host.as_str()
            ),
            ("CITY\\ana", "console", "")
        );
        assert_eq!(console.login_secs, 1_796_112_000);
        let remote =
            wts_session("RDP-Tcp#3", "helpdesk", "", "HD-LAPTOP-07", logon).expect("a user");
        assert_eq!(
            (
                remote.user.as_str(),
                remote.terminal.as_str(),
                remote.host.as_str()
            ),
            ("helpdesk", "RDP-Tcp#3", "HD-LAPTOP-07")
        );
        assert_eq!(
            wts_session("Services", "", "", "", 0),
            None,
            "nobody logged in"
        );
    }

    #[test]
    fn windows_markers_join_and_the_earliest_counts() {
        // 2026-11-30T12:00:00Z as a FILETIME.
        let ft: u64 = (1_796_040_000 + 11_644_473_600) * 10_000_000;
        assert_eq!(
            filetime_secs(ft as u32, (ft >> 32) as u32),
            Some(1_796_040_000)
        );
        assert_eq!(filetime_secs(0, 0), None, "1601 is before the epoch");
        let mut os = OsHealth::default();
        apply_reboot_markers(&[], &mut os);
        assert!(!os.reboot_required);
        let wu = RebootMarker {
            reason: "Windows Update: a restart is required".into(),
            since_secs: Some(1_796_040_000),
        };
        let renames = RebootMarker {
            reason: "files waiting to be replaced at the next start".into(),
            since_secs: None,
        };
        let cbs = RebootMarker {
            reason: "Component Based Servicing".into(),
            since_secs: Some(1_795_000_000),
        };
        apply_reboot_markers(&[wu.clone(), renames.clone()], &mut os);
        assert!(os.reboot_required);
        assert_eq!(os.reboot_required_since_secs, Some(1_796_040_000));
        apply_reboot_markers(&[cbs, wu], &mut os);
        assert_eq!(os.reboot_required_since_secs, Some(1_795_000_000));
        assert_eq!(os.reboot_reasons.len(), 3, "{:?}", os.reboot_reasons);
    }

    #[tokio::test]
    async fn pending_reboot_from_markers() {
        let dir = std::env::temp_dir().join(format!("vitals-os-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (_tx, rx) = watch::channel(Some(-2500));
        let mut probe = OsProbe::new(rx);
        probe.run_dir = dir.clone();
        let os = |r: Reading| match r.section {
            Some(Section::Os(o)) => o,
            _ => panic!("no os section"),
        };
        let before = os(probe.run().await);
        assert!(!before.reboot_required);
        assert_eq!(before.clock_offset_ms, Some(-2500));
        std::fs::write(
            dir.join("reboot-required"),
            "*** System restart required ***\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("reboot-required.pkgs"),
            "linux-image-6.1.0-28-amd64\nlibc6\n",
        )
        .unwrap();
        let after = os(probe.run().await);
        assert!(after.reboot_required);
        assert_eq!(
            after.reboot_reasons,
            vec!["linux-image-6.1.0-28-amd64", "libc6"]
        );
        let since = after.reboot_required_since_secs.unwrap();
        assert!(since.abs_diff(vitals_proto::now_ms() as u64 / 1000) < 60);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
