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
