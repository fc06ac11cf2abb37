//! Writing the files keys and certificates live in, the one way both
//! sides do it: synced before they count, private ones readable by their
//! owner from the moment they exist, replacements written beside and
//! renamed over so a reader never sees half a file.

use std::io::Write;
use std::path::{Path, PathBuf};

/// Writes a file whole and syncs it, making its folder. A private file is
/// created mode 0600 on Unix (on Windows the folder's ACL applies).
pub fn write_synced(path: &Path, bytes: &[u8], private: bool) -> std::io::Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if private { 0o600 } else { 0o644 });
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// `path` with `.new` appended: where a replacement is written first.
pub fn beside(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".new");
    PathBuf::from(p)
}

/// Replaces a file: written and synced beside it, then renamed over it.
pub fn replace(path: &Path, bytes: &[u8], private: bool) -> std::io::Result<()> {
    let tmp = beside(path);
    write_synced(&tmp, bytes, private)?;
    std::fs::rename(&tmp, path)
}
