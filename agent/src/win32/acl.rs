//! File permissions on Windows: the agent's private key and state readable
//! by SYSTEM and the Administrators group only (a protected DACL, nothing
//! inherited from the folder above).

use std::path::Path;
use std::ptr::null_mut;

use windows_sys::Win32::Foundation::{HLOCAL, LocalFree};
use windows_sys::Win32::Security::Authorization::{
    ConvertStringSecurityDescriptorToSecurityDescriptorW, SDDL_REVISION_1, SE_FILE_OBJECT,
    SetNamedSecurityInfoW,
};
use windows_sys::Win32::Security::{
    ACL, DACL_SECURITY_INFORMATION, GetSecurityDescriptorDacl, PROTECTED_DACL_SECURITY_INFORMATION,
    PSECURITY_DESCRIPTOR,
};

use super::{error, last_error, wide};

/// Full control for SYSTEM and Administrators, inherited by what a folder
/// holds; nobody else.
const ADMINS_ONLY: &str = "D:P(A;OICI;FA;;;SY)(A;OICI;FA;;;BA)";

/// Replaces the file's or folder's DACL with SYSTEM and Administrators only.
pub fn restrict_to_admins(path: &Path) -> Result<(), String> {
    let what = |e: std::io::Error| format!("{}: cannot set permissions: {e}", path.display());
    let sddl = wide(ADMINS_ONLY);
    let mut sd: PSECURITY_DESCRIPTOR = null_mut();
    // SAFETY: a NUL-terminated SDDL string; `sd` receives a LocalAlloc'd
    // descriptor, freed below.
    if unsafe {
        ConvertStringSecurityDescriptorToSecurityDescriptorW(
            sddl.as_ptr(),
            SDDL_REVISION_1,
            &mut sd,
            null_mut(),
        )
    } == 0
    {
        return Err(what(last_error()));
    }
    let mut present = 0;
    let mut defaulted = 0;
    let mut dacl: *mut ACL = null_mut();
    // SAFETY: `sd` is the valid descriptor just built; the DACL pointer
    // points into it.
    let ok = unsafe { GetSecurityDescriptorDacl(sd, &mut present, &mut dacl, &mut defaulted) };
    let result = if ok == 0 || present == 0 {
        Err(what(last_error()))
    } else {
        let name = wide(&path.to_string_lossy());
        // SAFETY: a NUL-terminated path; the DACL is valid while `sd` lives.
        let code = unsafe {
            SetNamedSecurityInfoW(
                name.as_ptr(),
                SE_FILE_OBJECT,
                DACL_SECURITY_INFORMATION | PROTECTED_DACL_SECURITY_INFORMATION,
                null_mut(),
                null_mut(),
                dacl,
                null_mut(),
            )
        };
        if code == 0 {
            Ok(())
        } else {
            Err(what(error(code)))
        }
    };
    // SAFETY: `sd` came from the SDDL conversion, which LocalAlloc'd it.
    unsafe { LocalFree(sd as HLOCAL) };
    result
}
