//! Drives through the plain Win32 calls, for when sysinfo finds none:
//! `GetLogicalDriveStringsW`, `GetDriveTypeW`, `GetVolumeInformationW`,
//! `GetDiskFreeSpaceExW`. Fixed and removable drives only (not network
//! shares, optical drives or RAM disks).

use vitals_proto::domain::DiskInfo;
use windows_sys::Win32::Storage::FileSystem::{
    GetDiskFreeSpaceExW, GetDriveTypeW, GetLogicalDriveStringsW, GetVolumeInformationW,
};

use super::{last_error, string_in};

const DRIVE_REMOVABLE: u32 = 2;
const DRIVE_FIXED: u32 = 3;

pub fn drives() -> Result<Vec<DiskInfo>, String> {
    let mut buf = [0u16; 512];
    // SAFETY: `buf` is writable for its length in UTF-16 units.
    let n = unsafe { GetLogicalDriveStringsW(buf.len() as u32, buf.as_mut_ptr()) } as usize;
    if n == 0 || n > buf.len() {
        return Err(format!("drives: GetLogicalDriveStrings: {}", last_error()));
    }
    let mut out = Vec::new();
    // "C:\\\0D:\\\0\0": each root NUL-terminated.
    for root in buf[..n].split(|u| *u == 0).filter(|r| !r.is_empty()) {
        let mut wroot = root.to_vec();
        wroot.push(0);
        // SAFETY: `wroot` is a NUL-terminated root path.
        let kind = unsafe { GetDriveTypeW(wroot.as_ptr()) };
        if kind != DRIVE_FIXED && kind != DRIVE_REMOVABLE {
            continue;
        }
        let (mut free_to_caller, mut total, mut free) = (0u64, 0u64, 0u64);
        // SAFETY: the root is NUL-terminated; the outputs are valid u64s.
        if unsafe {
            GetDiskFreeSpaceExW(wroot.as_ptr(), &mut free_to_caller, &mut total, &mut free)
        } == 0
        {
            // An empty card reader or a locked volume: not a disk to judge.
            continue;
        }
        let mut label = [0u16; 261];
        let mut fs = [0u16; 261];
        // SAFETY: the buffers are writable for the lengths given; the
        // serial, component length and flags outputs are not asked for.
        let named = unsafe {
            GetVolumeInformationW(
                wroot.as_ptr(),
                label.as_mut_ptr(),
                label.len() as u32,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                fs.as_mut_ptr(),
                fs.len() as u32,
            )
        } != 0;
        let mount = String::from_utf16_lossy(root);
        out.push(DiskInfo {
            name: if named && label[0] != 0 {
                string_in(&label)
            } else {
                mount.trim_end_matches('\\').to_owned()
            },
            mount_point: mount,
            file_system: if named { string_in(&fs) } else { String::new() },
            total_bytes: total,
            available_bytes: free_to_caller,
            removable: kind == DRIVE_REMOVABLE,
            kind: "unknown".into(),
            inodes_total: 0,
            inodes_free: 0,
        });
    }
    Ok(out)
}
