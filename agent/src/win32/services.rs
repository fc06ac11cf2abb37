//! The Service Control Manager: the stopped Win32 services with their
//! start type, delayed start, triggers and exit codes, for
//! `probes::scm::failed`.

use std::ptr::{null, null_mut};

use windows_sys::Win32::Foundation::{ERROR_INSUFFICIENT_BUFFER, ERROR_MORE_DATA, GetLastError};
use windows_sys::Win32::System::Services::{
    CloseServiceHandle, ENUM_SERVICE_STATUS_PROCESSW, EnumServicesStatusExW, OpenSCManagerW,
    OpenServiceW, QUERY_SERVICE_CONFIGW, QueryServiceConfig2W, QueryServiceConfigW,
    SC_ENUM_PROCESS_INFO, SC_HANDLE, SC_MANAGER_CONNECT, SC_MANAGER_ENUMERATE_SERVICE,
    SERVICE_CONFIG_DELAYED_AUTO_START_INFO, SERVICE_CONFIG_TRIGGER_INFO,
    SERVICE_DELAYED_AUTO_START_INFO, SERVICE_INACTIVE, SERVICE_QUERY_CONFIG, SERVICE_TRIGGER_INFO,
    SERVICE_WIN32,
};

use super::{Buffer, last_error, string_at};
use crate::probes::scm::{ServiceRecord, start};

struct Handle(SC_HANDLE);

impl Drop for Handle {
    fn drop(&mut self) {
        // SAFETY: a handle from OpenSCManagerW/OpenServiceW, closed once.
        unsafe { CloseServiceHandle(self.0) };
    }
}

/// Every stopped Win32 service, with its configuration.
pub fn stopped() -> Result<Vec<ServiceRecord>, String> {
    // SAFETY: null machine and database mean the local active database.
    let scm = unsafe {
        OpenSCManagerW(
            null(),
            null(),
            SC_MANAGER_CONNECT | SC_MANAGER_ENUMERATE_SERVICE,
        )
    };
    if scm.is_null() {
        return Err(format!(
            "cannot open the Service Control Manager: {}",
            last_error()
        ));
    }
    let scm = Handle(scm);
    let mut out = Vec::new();
    let mut resume = 0u32;
    let mut buf = Buffer::with_bytes(64 * 1024);
    loop {
        let mut needed = 0;
        let mut count = 0;
        // SAFETY: `buf` is writable for `buf.len()` bytes; the counters
        // and the resume handle are valid u32s.
        let ok = unsafe {
            EnumServicesStatusExW(
                scm.0,
                SC_ENUM_PROCESS_INFO,
                SERVICE_WIN32,
                SERVICE_INACTIVE,
                buf.ptr(),
                buf.len(),
                &mut needed,
                &mut count,
                &mut resume,
                null(),
            )
        };
        // SAFETY: reads the thread's last-error value.
        let code = if ok != 0 {
            0
        } else {
            unsafe { GetLastError() }
        };
        if code != 0 && code != ERROR_MORE_DATA {
            return Err(format!("EnumServicesStatusEx: {}", super::error(code)));
        }
        // SAFETY: the buffer starts with `count` records, strings after.
        let list =
            unsafe { super::records(buf.ptr() as *const ENUM_SERVICE_STATUS_PROCESSW, count) };
        for e in list {
            // SAFETY: the names point into `buf`.
            let (name, display_name) =
                unsafe { (string_at(e.lpServiceName), string_at(e.lpDisplayName)) };
            let status = e.ServiceStatusProcess;
            let mut record = ServiceRecord {
                display_name,
                state: status.dwCurrentState,
                exit_code: status.dwWin32ExitCode,
                service_exit_code: status.dwServiceSpecificExitCode,
                ..Default::default()
            };
            configure(&scm, e.lpServiceName, &mut record);
            record.name = name;
            out.push(record);
        }
        if code != ERROR_MORE_DATA {
            break;
        }
        if count == 0 {
            buf = Buffer::with_bytes(needed.max(buf.len() * 2));
        }
    }
    Ok(out)
}

/// Start type, delayed start and triggers; left at "unknown" (0 = boot,
/// which `failed` ignores) when the service cannot be opened.
fn configure(scm: &Handle, name: *const u16, record: &mut ServiceRecord) {
    // SAFETY: `name` is the service's NUL-terminated name from the SCM.
    let service = unsafe { OpenServiceW(scm.0, name, SERVICE_QUERY_CONFIG) };
    if service.is_null() {
        record.start_type = start::BOOT;
        return;
    }
    let service = Handle(service);
    let mut needed = 0;
    // SAFETY: a size query with a null buffer.
    unsafe { QueryServiceConfigW(service.0, null_mut(), 0, &mut needed) };
    let mut buf = Buffer::with_bytes(needed.max(256));
    // SAFETY: `buf` is aligned and writable for `buf.len()` bytes.
    if unsafe { QueryServiceConfigW(service.0, buf.ptr().cast(), buf.len(), &mut needed) } == 0 {
        record.start_type = start::BOOT;
        return;
    }
    // SAFETY: on success the buffer holds a QUERY_SERVICE_CONFIGW.
    record.start_type = unsafe { (*(buf.ptr() as *const QUERY_SERVICE_CONFIGW)).dwStartType };
    if record.start_type != start::AUTO {
        return;
    }
    if let Some(mut b) = config2(&service, SERVICE_CONFIG_DELAYED_AUTO_START_INFO) {
        // SAFETY: the buffer holds a SERVICE_DELAYED_AUTO_START_INFO.
        record.delayed =
            unsafe { (*(b.ptr() as *const SERVICE_DELAYED_AUTO_START_INFO)).fDelayedAutostart }
                != 0;
    }
    if let Some(mut b) = config2(&service, SERVICE_CONFIG_TRIGGER_INFO) {
        // SAFETY: the buffer holds a SERVICE_TRIGGER_INFO.
        record.triggered = unsafe { (*(b.ptr() as *const SERVICE_TRIGGER_INFO)).cTriggers } > 0;
    }
}

fn config2(service: &Handle, level: u32) -> Option<Buffer> {
    let mut needed = 0;
    // SAFETY: a size query with a null buffer.
    let ok = unsafe { QueryServiceConfig2W(service.0, level, null_mut(), 0, &mut needed) };
    // SAFETY: reads the thread's last-error value.
    if ok == 0 && unsafe { GetLastError() } != ERROR_INSUFFICIENT_BUFFER {
        return None;
    }
    let mut buf = Buffer::with_bytes(needed.max(64));
    // SAFETY: `buf` is aligned and writable for `buf.len()` bytes.
    let ok = unsafe { QueryServiceConfig2W(service.0, level, buf.ptr(), buf.len(), &mut needed) };
    (ok != 0).then_some(buf)
}
