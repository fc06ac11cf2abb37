//! The Windows readers: the Win32 calls behind the Windows agent's probes
//! and service. This is the only module in the workspace allowed unsafe
//! code (the workspace lint denies it elsewhere); each call carries a
//! `// SAFETY:` note. What the calls return is decoded by plain code in
//! `probes` (`spooler`, `scm`, `os`), which is tested on every platform.

pub mod acl;
pub mod adapters;
pub mod disks;
pub mod eventlog;
pub mod service;
pub mod services;
pub mod sessions;
pub mod spooler;
pub mod wlan;

use std::io;

/// A string as the NUL-terminated UTF-16 the W functions take.
pub fn wide(s: &str) -> Vec<u16> {
    s.encode_utf16().chain(std::iter::once(0)).collect()
}

/// The NUL-terminated UTF-16 string at `p`; empty for a null pointer.
///
/// # Safety
/// `p` is null or points to a NUL-terminated UTF-16 string that stays
/// valid for the call.
pub unsafe fn string_at(p: *const u16) -> String {
    if p.is_null() {
        return String::new();
    }
    let mut n = 0;
    // SAFETY: the caller guarantees a terminator within the allocation.
    while unsafe { *p.add(n) } != 0 {
        n += 1;
    }
    // SAFETY: the `n` units before the terminator were just read.
    String::from_utf16_lossy(unsafe { std::slice::from_raw_parts(p, n) })
}

/// `n` records at `p`; empty when there are none (the calls may then
/// return a null pointer).
///
/// # Safety
/// When `n > 0`, `p` points to `n` initialised, aligned records that stay
/// valid for the lifetime chosen.
pub unsafe fn records<'a, T>(p: *const T, n: u32) -> &'a [T] {
    if p.is_null() || n == 0 {
        return &[];
    }
    // SAFETY: guaranteed by the caller.
    unsafe { std::slice::from_raw_parts(p, n as usize) }
}

/// A fixed UTF-16 array (a structure's inline name) up to its first NUL.
pub fn string_in(units: &[u16]) -> String {
    let end = units.iter().position(|u| *u == 0).unwrap_or(units.len());
    String::from_utf16_lossy(&units[..end])
}

/// A byte buffer aligned for the structures the spooler, the SCM and the
/// IP helper write into it (they hold pointers and 64-bit fields).
pub struct Buffer(Vec<u64>);

impl Buffer {
    pub fn with_bytes(bytes: u32) -> Self {
        Buffer(vec![0; (bytes as usize).div_ceil(8).max(1)])
    }

    pub fn ptr(&mut self) -> *mut u8 {
        self.0.as_mut_ptr().cast()
    }

    pub fn len(&self) -> u32 {
        u32::try_from(self.0.len() * 8).unwrap_or(u32::MAX)
    }
}

/// The calling thread's last Win32 error, as the text Windows gives it.
pub fn last_error() -> io::Error {
    io::Error::last_os_error()
}

/// A Win32 error code returned (not set) by a call.
pub fn error(code: u32) -> io::Error {
    io::Error::from_raw_os_error(code as i32)
}

/// The readers against the system they run on (under Wine in CI): each
/// call succeeds and returns what every Windows has.
#[cfg(test)]
mod tests {
    #[test]
    fn the_scm_lists_stopped_services_with_their_start_types() {
        let stopped = super::services::stopped().expect("the SCM is readable");
        assert!(!stopped.is_empty(), "some service is always stopped");
        assert!(
            stopped
                .iter()
                .all(|s| !s.name.is_empty() && s.state == crate::probes::scm::state::STOPPED),
            "{stopped:?}"
        );
    }

    #[test]
    fn the_system_drive_and_the_loopback_adapter_are_found() {
        let drives = super::disks::drives().expect("drives");
        assert!(
            drives
                .iter()
                .any(|d| d.mount_point.eq_ignore_ascii_case("C:\\") && d.total_bytes > 0),
            "{drives:?}"
        );
        let adapters = super::adapters::read().expect("adapters");
        assert!(
            adapters
                .interfaces
                .iter()
                .any(|i| i.addresses.iter().any(|a| a == "127.0.0.1/8")),
            "{:?}",
            adapters.interfaces
        );
    }

    #[test]
    fn spooler_and_sessions_answer() {
        super::spooler::printers(vitals_proto::now_ms()).expect("the spooler answers");
        super::sessions::users().expect("sessions are listed");
        // No WLAN service or adapter is an empty list, never a failure.
        let _ = super::wlan::signals();
    }

    #[test]
    fn a_file_is_restricted_to_system_and_administrators() {
        let path = std::env::temp_dir().join(format!("vitals-acl-{}.key", std::process::id()));
        std::fs::write(&path, "secret").expect("write");
        let r = super::acl::restrict_to_admins(&path);
        let _ = std::fs::remove_file(&path);
        r.expect("the DACL is set");
        let missing = std::env::temp_dir().join("vitals-acl-missing.key");
        let e = super::acl::restrict_to_admins(&missing).expect_err("no such file");
        assert!(e.contains("vitals-acl-missing.key"), "{e}");
    }

    #[test]
    fn the_event_log_shows_the_agents_text_as_written() {
        // The message table build.rs puts into every binary: "%1".
        assert_eq!(
            super::eventlog::own_message("link closed unacknowledged=0").as_deref(),
            Some("link closed unacknowledged=0\r\n")
        );
    }

    #[test]
    fn the_system_log_query_runs_or_says_why_not() {
        match super::eventlog::critical_entries(5) {
            Ok(entries) => {
                assert!(entries.len() <= 5 && entries.iter().all(|e| !e.provider.is_empty()))
            }
            Err(e) => assert!(e.starts_with("event log: EvtQuery:"), "{e}"),
        }
    }
}
