//! The print spooler: every local and connected printer (`EnumPrintersW`
//! level 2) and its jobs (`EnumJobsW` level 1), decoded by
//! `probes::spooler` into the same `PrinterInfo` a CUPS queue gives.

use std::ptr::{null, null_mut};

use vitals_proto::domain::PrinterInfo;
use windows_sys::Win32::Foundation::{ERROR_INSUFFICIENT_BUFFER, GetLastError};
use windows_sys::Win32::Graphics::Printing::{
    ClosePrinter, EnumJobsW, EnumPrintersW, JOB_INFO_1W, OpenPrinterW, PRINTER_ENUM_CONNECTIONS,
    PRINTER_ENUM_LOCAL, PRINTER_HANDLE, PRINTER_INFO_2W,
};

use super::{Buffer, last_error, string_at, wide};
use crate::probes::spooler::{Job, printer_info, systemtime_ms};

/// Calls an enumerator twice (size, then data), again if the list grew in
/// between; `Ok(None)` when there is nothing to list.
fn enumerate(
    mut call: impl FnMut(*mut u8, u32, &mut u32, &mut u32) -> bool,
) -> std::io::Result<Option<(Buffer, u32)>> {
    let mut needed = 0;
    let mut count = 0;
    if call(null_mut(), 0, &mut needed, &mut count) {
        return Ok(None);
    }
    for _ in 0..4 {
        // SAFETY: reads the calling thread's last-error value only.
        let code = unsafe { GetLastError() };
        if code != ERROR_INSUFFICIENT_BUFFER {
            return Err(super::error(code));
        }
        let mut buf = Buffer::with_bytes(needed);
        if call(buf.ptr(), buf.len(), &mut needed, &mut count) {
            return Ok(Some((buf, count)));
        }
    }
    Err(last_error())
}

/// Every printer the spooler knows, local and connected, with its jobs.
pub fn printers(now_ms: i64) -> Result<Vec<PrinterInfo>, String> {
    let flags = PRINTER_ENUM_LOCAL | PRINTER_ENUM_CONNECTIONS;
    let listed = enumerate(|buf, len, needed, count| {
        // SAFETY: `buf` is null with length 0 (a size query) or a writable
        // aligned buffer of `len` bytes; the counters are valid u32s.
        unsafe { EnumPrintersW(flags, null(), 2, buf, len, needed, count) != 0 }
    })
    .map_err(|e| format!("print spooler: EnumPrinters: {e}"))?;
    let Some((mut buf, count)) = listed else {
        return Ok(Vec::new());
    };
    // SAFETY: on success the buffer starts with `count` PRINTER_INFO_2W
    // records, their strings stored later in the same buffer.
    let infos = unsafe { super::records(buf.ptr() as *const PRINTER_INFO_2W, count) };
    let mut out = Vec::with_capacity(infos.len());
    for info in infos {
        // SAFETY: the string pointers are null or point into `buf`.
        let (name, port, server) = unsafe {
            (
                string_at(info.pPrinterName),
                string_at(info.pPortName),
                string_at(info.pServerName),
            )
        };
        let mut printer = match jobs(&name, info.cJobs) {
            Ok(jobs) => printer_info(
                &name,
                info.Status,
                info.Attributes,
                &port,
                &server,
                &jobs,
                now_ms,
            ),
            Err(e) => {
                let mut p = printer_info(
                    &name,
                    info.Status,
                    info.Attributes,
                    &port,
                    &server,
                    &[],
                    now_ms,
                );
                p.queued_jobs = info.cJobs;
                p.error = format!("jobs: {e}");
                p
            }
        };
        printer.name = name;
        out.push(printer);
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

struct Printer(PRINTER_HANDLE);

impl Drop for Printer {
    fn drop(&mut self) {
        // SAFETY: the handle came from OpenPrinterW and is closed once.
        unsafe { ClosePrinter(self.0) };
    }
}

/// The printer's jobs, oldest submission first.
fn jobs(name: &str, count: u32) -> std::io::Result<Vec<Job>> {
    if count == 0 {
        return Ok(Vec::new());
    }
    let wname = wide(name);
    let mut handle = PRINTER_HANDLE::default();
    // SAFETY: `wname` is NUL-terminated; the handle is written on success.
    if unsafe { OpenPrinterW(wname.as_ptr(), &mut handle, null()) } == 0 {
        return Err(last_error());
    }
    let printer = Printer(handle);
    let listed = enumerate(|buf, len, needed, returned| {
        // SAFETY: as for EnumPrintersW; the handle is open.
        unsafe {
            EnumJobsW(
                printer.0,
                0,
                count.max(1) * 2,
                1,
                buf,
                len,
                needed,
                returned,
            ) != 0
        }
    })?;
    let Some((mut buf, returned)) = listed else {
        return Ok(Vec::new());
    };
    // SAFETY: on success the buffer starts with `returned` JOB_INFO_1W.
    let list = unsafe { super::records(buf.ptr() as *const JOB_INFO_1W, returned) };
    Ok(list
        .iter()
        .map(|j| {
            let t = j.Submitted;
            Job {
                status: j.Status,
                submitted_ms: systemtime_ms(
                    t.wYear,
                    t.wMonth,
                    t.wDay,
                    t.wHour,
                    t.wMinute,
                    t.wSecond,
                    t.wMilliseconds,
                ),
            }
        })
        .collect())
}
