//! Who is logged in: the terminal-services sessions (`WTSEnumerateSessionsW`),
//! the console and remote ones, decoded by `probes::os::wts_session`.

use std::ptr::null_mut;

use vitals_proto::domain::UserSession;
use windows_sys::Win32::System::RemoteDesktop::{
    WTS_CURRENT_SERVER_HANDLE, WTS_INFO_CLASS, WTS_SESSION_INFOW, WTSActive, WTSClientName,
    WTSDisconnected, WTSDomainName, WTSEnumerateSessionsW, WTSFreeMemory, WTSINFOW,
    WTSQuerySessionInformationW, WTSSessionInfo, WTSUserName,
};

use super::{last_error, string_at};
use crate::probes::os::wts_session;

/// One WTS_INFO_CLASS value of a session, read from the buffer the call
/// allocates (`read` gets its pointer and length) and freed after; `None`
/// where the call fails.
fn query<T>(
    session: u32,
    class: WTS_INFO_CLASS,
    read: impl FnOnce(*const u8, usize) -> T,
) -> Option<T> {
    let mut p = null_mut();
    let mut bytes = 0;
    // SAFETY: the server handle is the local one; on success `p` is a
    // buffer of `bytes` bytes the call allocated, freed below.
    if unsafe {
        WTSQuerySessionInformationW(
            WTS_CURRENT_SERVER_HANDLE,
            session,
            class,
            &mut p,
            &mut bytes,
        )
    } == 0
    {
        return None;
    }
    let value = read(p.cast_const().cast(), bytes as usize);
    // SAFETY: `p` came from WTSQuerySessionInformationW.
    unsafe { WTSFreeMemory(p.cast()) };
    Some(value)
}

/// A text-valued class (user, domain, client name); empty where unknown.
fn text(session: u32, class: WTS_INFO_CLASS) -> String {
    // SAFETY: text classes return a NUL-terminated UTF-16 string.
    query(session, class, |p, _| unsafe { string_at(p.cast()) }).unwrap_or_default()
}

/// The logon time of a session (a FILETIME), 0 where unknown.
fn logon_time(session: u32) -> i64 {
    query(session, WTSSessionInfo, |p, bytes| {
        if bytes >= std::mem::size_of::<WTSINFOW>() {
            // SAFETY: the buffer holds at least one WTSINFOW.
            unsafe { (*(p as *const WTSINFOW)).LogonTime }
        } else {
            0
        }
    })
    .unwrap_or(0)
}

/// Everyone with an active or disconnected session.
pub fn users() -> Result<Vec<UserSession>, String> {
    let mut list: *mut WTS_SESSION_INFOW = null_mut();
    let mut count = 0;
    // SAFETY: the local server; on success `list` holds `count` records
    // the call allocated, freed below.
    if unsafe { WTSEnumerateSessionsW(WTS_CURRENT_SERVER_HANDLE, 0, 1, &mut list, &mut count) } == 0
    {
        return Err(format!("sessions: WTSEnumerateSessions: {}", last_error()));
    }
    // SAFETY: `list` points to `count` records.
    let sessions = unsafe { super::records(list, count) };
    let mut out = Vec::new();
    for s in sessions {
        if s.State != WTSActive && s.State != WTSDisconnected {
            continue;
        }
        // SAFETY: the station name points into `list`.
        let station = unsafe { string_at(s.pWinStationName) };
        let user = text(s.SessionId, WTSUserName);
        let domain = text(s.SessionId, WTSDomainName);
        let client = text(s.SessionId, WTSClientName);
        if let Some(u) = wts_session(&station, &user, &domain, &client, logon_time(s.SessionId)) {
            out.push(u);
        }
    }
    if !list.is_null() {
        // SAFETY: `list` came from WTSEnumerateSessionsW.
        unsafe { WTSFreeMemory(list.cast()) };
    }
    Ok(out)
}
