//! The Windows event log: the System log's recent critical and error
//! entries for the `os` diagnostic (`EvtQuery`), and the agent's own
//! warnings and errors written to the Application log (`ReportEventW`).

use std::ptr::{null, null_mut};

use windows_sys::Win32::Foundation::{ERROR_INSUFFICIENT_BUFFER, GetLastError, HANDLE};
use windows_sys::Win32::System::EventLog::{
    DeregisterEventSource, EVENTLOG_ERROR_TYPE, EVENTLOG_INFORMATION_TYPE, EVENTLOG_WARNING_TYPE,
    EVT_HANDLE, EvtClose, EvtFormatMessage, EvtFormatMessageEvent, EvtNext,
    EvtOpenPublisherMetadata, EvtQuery, EvtQueryChannelPath, EvtQueryReverseDirection, EvtRender,
    EvtRenderEventXml, RegisterEventSourceW, ReportEventW,
};

use super::{last_error, wide};
use crate::diag::{EventEntry, parse_event_xml};

struct Evt(EVT_HANDLE);

impl Drop for Evt {
    fn drop(&mut self) {
        if self.0 != 0 {
            // SAFETY: a handle from EvtQuery/EvtNext/EvtOpenPublisherMetadata.
            unsafe { EvtClose(self.0) };
        }
    }
}

/// Renders an event as XML (UTF-16 in, text out).
fn xml(event: &Evt) -> Option<String> {
    let mut used = 0;
    let mut count = 0;
    // SAFETY: a size query with a null buffer.
    unsafe {
        EvtRender(
            0,
            event.0,
            EvtRenderEventXml,
            0,
            null_mut(),
            &mut used,
            &mut count,
        )
    };
    // SAFETY: reads the thread's last-error value.
    if unsafe { GetLastError() } != ERROR_INSUFFICIENT_BUFFER {
        return None;
    }
    let mut buf = vec![0u16; (used as usize).div_ceil(2) + 1];
    // SAFETY: `buf` is writable for `buf.len() * 2` bytes.
    let ok = unsafe {
        EvtRender(
            0,
            event.0,
            EvtRenderEventXml,
            (buf.len() * 2) as u32,
            buf.as_mut_ptr().cast(),
            &mut used,
            &mut count,
        )
    };
    (ok != 0).then(|| super::string_in(&buf))
}

/// The event's message in the publisher's words, where it has them.
fn message(provider: &str, event: &Evt) -> String {
    let name = wide(provider);
    // SAFETY: the local session; `name` is NUL-terminated.
    let meta = Evt(unsafe { EvtOpenPublisherMetadata(0, name.as_ptr(), null(), 0, 0) });
    if meta.0 == 0 {
        return String::new();
    }
    let mut used = 0;
    // SAFETY: a size query with a null buffer.
    unsafe {
        EvtFormatMessage(
            meta.0,
            event.0,
            0,
            0,
            null(),
            EvtFormatMessageEvent,
            0,
            null_mut(),
            &mut used,
        )
    };
    if used == 0 {
        return String::new();
    }
    let mut buf = vec![0u16; used as usize + 1];
    // SAFETY: `buf` is writable for `buf.len()` UTF-16 units.
    let ok = unsafe {
        EvtFormatMessage(
            meta.0,
            event.0,
            0,
            0,
            null(),
            EvtFormatMessageEvent,
            buf.len() as u32,
            buf.as_mut_ptr(),
            &mut used,
        )
    };
    if ok == 0 {
        return String::new();
    }
    super::string_in(&buf)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// The last `n` critical and error entries of the System log, newest first.
pub fn critical_entries(n: usize) -> Result<Vec<EventEntry>, String> {
    let channel = wide("System");
    let query = wide("*[System[(Level=1 or Level=2)]]");
    // SAFETY: the local session; both strings are NUL-terminated.
    let results = Evt(unsafe {
        EvtQuery(
            0,
            channel.as_ptr(),
            query.as_ptr(),
            EvtQueryChannelPath | EvtQueryReverseDirection,
        )
    });
    if results.0 == 0 {
        return Err(format!("event log: EvtQuery: {}", last_error()));
    }
    let mut out = Vec::new();
    while out.len() < n {
        let mut handles = [0isize; 16];
        let mut returned = 0;
        // SAFETY: `handles` has room for the count asked; 1 s timeout.
        if unsafe {
            EvtNext(
                results.0,
                handles.len() as u32,
                handles.as_mut_ptr(),
                1000,
                0,
                &mut returned,
            )
        } == 0
        {
            break;
        }
        for h in &handles[..returned as usize] {
            let event = Evt(*h);
            if out.len() >= n {
                continue;
            }
            if let Some(mut entry) = xml(&event).as_deref().and_then(parse_event_xml) {
                entry.message = message(&entry.provider, &event);
                out.push(entry);
            }
        }
    }
    Ok(out)
}

/// The event source's name in the Application log.
pub const SOURCE: &str = "Vitals Agent";
/// Where Windows looks up an event source's message file.
const SOURCE_KEY: &str = r"SYSTEM\CurrentControlSet\Services\EventLog\Application\Vitals Agent";
/// The one message in the program's message table: "%1".
const MESSAGE_ID: u32 = 1;

/// Registers the event source with this program as its message file, so
/// the event log shows the agent's entries as written.
pub fn register_source(exe: &std::path::Path) -> Result<(), String> {
    use winreg::RegKey;
    use winreg::enums::HKEY_LOCAL_MACHINE;
    let (key, _) = RegKey::predef(HKEY_LOCAL_MACHINE)
        .create_subkey(SOURCE_KEY)
        .map_err(|e| format!("cannot register the event source: {e}"))?;
    key.set_value("EventMessageFile", &exe.display().to_string())
        .and_then(|()| key.set_value("TypesSupported", &7u32))
        .map_err(|e| format!("cannot register the event source: {e}"))
}

/// Removes the event source's registration; absent is fine.
pub fn unregister_source() {
    use winreg::RegKey;
    use winreg::enums::HKEY_LOCAL_MACHINE;
    let _ = RegKey::predef(HKEY_LOCAL_MACHINE).delete_subkey_all(SOURCE_KEY);
}

/// This program's message `MESSAGE_ID` formatted with `text`: what the
/// event viewer shows for an entry the agent wrote.
pub fn own_message(text: &str) -> Option<String> {
    use windows_sys::Win32::System::Diagnostics::Debug::{
        FORMAT_MESSAGE_ARGUMENT_ARRAY, FORMAT_MESSAGE_FROM_HMODULE, FormatMessageW,
    };
    use windows_sys::Win32::System::LibraryLoader::GetModuleHandleW;
    // SAFETY: a null name asks for the calling process's own module.
    let module = unsafe { GetModuleHandleW(null()) };
    let arg = wide(text);
    let args = [arg.as_ptr() as usize];
    let mut buf = vec![0u16; text.len() + 64];
    // SAFETY: the module is ours; `args` holds one pointer to a
    // NUL-terminated string for %1; `buf` is writable for its length.
    let n = unsafe {
        FormatMessageW(
            FORMAT_MESSAGE_FROM_HMODULE | FORMAT_MESSAGE_ARGUMENT_ARRAY,
            module.cast_const().cast(),
            MESSAGE_ID,
            0,
            buf.as_mut_ptr(),
            buf.len() as u32,
            args.as_ptr().cast(),
        )
    };
    (n > 0).then(|| String::from_utf16_lossy(&buf[..n as usize]))
}

/// The agent's event source in the Application log.
pub struct EventSource(HANDLE);

// SAFETY: an event source handle may be used from any thread.
unsafe impl Send for EventSource {}
// SAFETY: ReportEventW is safe to call concurrently on one handle.
unsafe impl Sync for EventSource {}

/// How bad an entry is.
#[derive(Debug, Clone, Copy)]
pub enum Level {
    Error,
    Warning,
    Information,
}

impl EventSource {
    pub fn open(name: &str) -> Option<Self> {
        let name = wide(name);
        // SAFETY: the local machine; `name` is NUL-terminated.
        let h = unsafe { RegisterEventSourceW(null(), name.as_ptr()) };
        (!h.is_null()).then_some(EventSource(h))
    }

    pub fn report(&self, level: Level, text: &str) {
        let kind = match level {
            Level::Error => EVENTLOG_ERROR_TYPE,
            Level::Warning => EVENTLOG_WARNING_TYPE,
            Level::Information => EVENTLOG_INFORMATION_TYPE,
        };
        let text = wide(text);
        let strings = [text.as_ptr()];
        // SAFETY: one NUL-terminated string, no raw data, no user SID.
        unsafe {
            ReportEventW(
                self.0,
                kind,
                0,
                1,
                null_mut(),
                1,
                0,
                strings.as_ptr(),
                null(),
            )
        };
    }
}

impl Drop for EventSource {
    fn drop(&mut self) {
        // SAFETY: a handle from RegisterEventSourceW, closed once.
        unsafe { DeregisterEventSource(self.0) };
    }
}
