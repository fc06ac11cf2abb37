//! `vitals-collector backup` and `restore`: one file holding everything a
//! lost server needs to come back.
//!
//! The file is a gzip-compressed tar: the database copied while the
//! collector runs (SQLite's online backup API, one read transaction, so
//! the copy is one consistent moment), every other file of the data
//! directory (the fleet PKI with its CA key, the knowledge base, audit
//! archives), and last `MANIFEST.json` with each file's size and SHA-256.
//! Restore unpacks into a new directory beside the target, checks every
//! file against the manifest and the database's integrity, and only then
//! moves it into place. It marks every endpoint for a resync, so each
//! agent, at its next welcome, sends again the faults it holds raised and
//! clears those the restored database still believes raised: what was
//! acknowledged after the backup is not lost, and nothing is counted twice
//! (the sequence numbers the copy holds are still refused as replays).
//!
//! On PostgreSQL the database is not in the file: back it up with
//! `pg_dump` (or continuous archiving); the file then holds the data
//! directory alone.

use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::config::CollectorConfig;
use crate::store::Backend;

/// The database's name inside the file and in a restored data directory.
pub const DATABASE: &str = "vitals.db";
const MANIFEST: &str = "MANIFEST.json";
const FORMAT: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("database {path}: {source}")]
    Sqlite {
        path: String,
        source: rusqlite::Error,
    },
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("{0}")]
    Refused(String),
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> BackupError + '_ {
    move |source| BackupError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// What a backup file holds.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: u32,
    pub created_ms: i64,
    pub collector_version: String,
    /// `sqlite` (the database is in the file) or `postgres` (it is not).
    pub storage: String,
    /// The schema version of the copied database (SQLite).
    pub schema_version: Option<u32>,
    /// Every file but the manifest, by its path inside the file.
    pub files: Vec<FileEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    pub path: String,
    pub bytes: u64,
    pub sha256: String,
}

/// What `backup` did, to print.
#[derive(Debug)]
pub struct BackupReport {
    pub manifest: Manifest,
    pub bytes: u64,
    /// Files the configuration names outside the data directory, not in
    /// the file (back them up with the configuration).
    pub outside: Vec<PathBuf>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn sha256_of(path: &Path) -> Result<(u64, String), BackupError> {
    let mut f = std::fs::File::open(path).map_err(io(path))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut n = 0u64;
    loop {
        let k = f.read(&mut buf).map_err(io(path))?;
        if k == 0 {
            return Ok((n, hex(&h.finalize())));
        }
        n += k as u64;
        h.update(&buf[..k]);
    }
}

/// Copies a live SQLite database to `to` in one step of the online
/// backup API (one read transaction: writers go on beside it).
fn copy_database(from: &Path, to: &Path) -> Result<u32, BackupError> {
    let sqlite = |path: &Path| {
        let path = path.display().to_string();
        move |source| BackupError::Sqlite {
            path: path.clone(),
            source,
        }
    };
    let src = rusqlite::Connection::open_with_flags(
        from,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(sqlite(from))?;
    src.busy_timeout(std::time::Duration::from_secs(30))
        .map_err(sqlite(from))?;
    let mut dst = rusqlite::Connection::open(to).map_err(sqlite(to))?;
    {
        let b = rusqlite::backup::Backup::new(&src, &mut dst).map_err(sqlite(to))?;
        loop {
            match b.step(-1).map_err(sqlite(from))? {
                rusqlite::backup::StepResult::Done => break,
                rusqlite::backup::StepResult::More => {}
                _ => std::thread::sleep(std::time::Duration::from_millis(50)),
            }
        }
    }
    let check: String = dst
        .query_row("PRAGMA quick_check", [], |r| r.get(0))
        .map_err(sqlite(to))?;
    if check != "ok" {
        return Err(BackupError::Refused(format!(
            "the copy of {} does not check out: {check}",
            from.display()
        )));
    }
    let version = dst
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(sqlite(to))?;
    // One file, no WAL beside it.
    dst.pragma_update(None, "journal_mode", "DELETE")
        .map_err(sqlite(to))?;
    Ok(version)
}

/// The data directory's files to keep, by path inside it: everything but
/// the live database and files being written.
fn data_files(dir: &Path, skip: &[PathBuf]) -> Result<Vec<(String, PathBuf)>, BackupError> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let entries = std::fs::read_dir(&d).map_err(io(&d))?;
        for e in entries {
            let e = e.map_err(io(&d))?;
            let path = e.path();
            let kind = e.file_type().map_err(io(&path))?;
            if kind.is_dir() {
                todo.push(path);
                continue;
            }
            if !kind.is_file() || skip.contains(&path) {
                continue;
            }
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let live_db = [
                DATABASE,
                "vitals.db-wal",
                "vitals.db-shm",
                "vitals.db-journal",
            ];
            if (d == dir && live_db.contains(&name)) || name.ends_with(".new") {
                continue;
            }
            let Ok(rel) = path.strip_prefix(dir) else {
                continue;
            };
            let rel: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            out.push((rel.join("/"), path));
        }
    }
    out.sort();
    Ok(out)
}

/// Writes a backup of the collector `config` describes to `to`, while it
/// runs. The file is private (it holds the CA key) and appears whole or
/// not at all.
pub fn backup(config: &CollectorConfig, to: &Path) -> Result<BackupReport, BackupError> {
    let url = config.storage_url();
    let backend = Backend::of(&url)?;
    let partial = {
        let mut p = to.as_os_str().to_owned();
        p.push(".partial");
        PathBuf::from(p)
    };
    let staging = {
        let mut p = to.as_os_str().to_owned();
        p.push(".db");
        PathBuf::from(p)
    };
    let _ = std::fs::remove_file(&staging);
    let mut files: Vec<(String, PathBuf)> = Vec::new();
    let (storage, schema_version) = match backend {
        Backend::Sqlite(path) => {
            let version = copy_database(Path::new(path), &staging)?;
            files.push((DATABASE.to_owned(), staging.clone()));
            ("sqlite", Some(version))
        }
        Backend::Postgres(_) => ("postgres", None),
    };
    let skip = [
        to.to_path_buf(),
        partial.clone(),
        staging.clone(),
        PathBuf::from(match backend {
            Backend::Sqlite(p) => p,
            Backend::Postgres(_) => "",
        }),
    ];
    files.extend(data_files(&config.data_dir, &skip)?);
    let mut outside: Vec<PathBuf> = [
        config.tls.ca.clone(),
        config.tls.cert.clone(),
        config.tls.key.clone(),
        Some(config.audit_archive_dir()),
    ]
    .into_iter()
    .flatten()
    .filter(|p| !p.starts_with(&config.data_dir))
    .collect();
    outside.dedup();

    let result = (|| {
        let file = open_private(&partial)?;
        let gz = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
        let mut tar = tar::Builder::new(gz);
        let mut entries = Vec::new();
        for (name, path) in &files {
            // Read once: the checksum and the archive hold the same bytes
            // even if the file changes meanwhile (a desk's files beside
            // the data, a certificate renewed).
            let data = std::fs::read(path).map_err(io(path))?;
            let meta = std::fs::metadata(path).map_err(io(path))?;
            let mut header = tar::Header::new_gnu();
            header.set_metadata(&meta);
            header.set_size(data.len() as u64);
            header.set_cksum();
            tar.append_data(&mut header, name, data.as_slice())
                .map_err(io(path))?;
            entries.push(FileEntry {
                path: name.clone(),
                bytes: data.len() as u64,
                sha256: hex(&Sha256::digest(&data)),
            });
        }
        let manifest = Manifest {
            format: FORMAT,
            created_ms: vitals_proto::now_ms(),
            collector_version: env!("CARGO_PKG_VERSION").to_owned(),
            storage: storage.to_owned(),
            schema_version,
            files: entries,
        };
        let json = serde_json::to_vec_pretty(&manifest).map_err(|e| io(&partial)(e.into()))?;
        let mut header = tar::Header::new_gnu();
        header.set_size(json.len() as u64);
        header.set_mode(0o600);
        header.set_mtime((manifest.created_ms / 1000).max(0) as u64);
        header.set_cksum();
        tar.append_data(&mut header, MANIFEST, json.as_slice())
            .map_err(io(&partial))?;
        let gz = tar.into_inner().map_err(io(&partial))?;
        let file = gz.finish().map_err(io(&partial))?;
        file.sync_all().map_err(io(&partial))?;
        std::fs::rename(&partial, to).map_err(io(to))?;
        let bytes = std::fs::metadata(to).map_err(io(to))?.len();
        Ok(BackupReport {
            manifest,
            bytes,
            outside,
        })
    })();
    let _ = std::fs::remove_file(&staging);
    if result.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    result
}

fn open_private(path: &Path) -> Result<std::fs::File, BackupError> {
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    o.open(path).map_err(io(path))
}

/// Restores a backup file into `data_dir`, which must not exist yet or be
/// empty. Returns the manifest.
pub fn restore(from: &Path, data_dir: &Path) -> Result<Manifest, BackupError> {
    if std::fs::read_dir(data_dir).is_ok_and(|mut d| d.next().is_some()) {
        return Err(BackupError::Refused(format!(
            "{} is not empty: restore into a new directory",
            data_dir.display()
        )));
    }
    let staging = {
        let mut p = data_dir.as_os_str().to_owned();
        p.push(".restoring");
        PathBuf::from(p)
    };
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging).map_err(io(&staging))?;
    let result = unpack_and_check(from, &staging);
    let manifest = match result {
        Ok(m) => m,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e);
        }
    };
    if data_dir.exists() {
        std::fs::remove_dir(data_dir).map_err(io(data_dir))?;
    }
    std::fs::rename(&staging, data_dir).map_err(io(data_dir))?;
    Ok(manifest)
}

fn unpack_and_check(from: &Path, dir: &Path) -> Result<Manifest, BackupError> {
    let file = std::fs::File::open(from).map_err(io(from))?;
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(file));
    tar.set_preserve_permissions(true);
    // `unpack` refuses paths leaving the directory (`..`, absolute).
    tar.unpack(dir).map_err(|e| {
        BackupError::Refused(format!(
            "{}: not a readable backup file: {e}",
            from.display()
        ))
    })?;
    let manifest_path = dir.join(MANIFEST);
    let text = std::fs::read(&manifest_path)
        .map_err(|_| BackupError::Refused(format!("{}: no {MANIFEST} in it", from.display())))?;
    let manifest: Manifest = serde_json::from_slice(&text)
        .map_err(|e| BackupError::Refused(format!("{}: {MANIFEST}: {e}", from.display())))?;
    if manifest.format != FORMAT {
        return Err(BackupError::Refused(format!(
            "{}: backup format {} is not the one this collector reads ({FORMAT})",
            from.display(),
            manifest.format
        )));
    }
    std::fs::remove_file(&manifest_path).map_err(io(&manifest_path))?;
    let mut found = data_files(dir, &[])?;
    // The database is skipped by `data_files` (it is the live name).
    if dir.join(DATABASE).exists() {
        found.push((DATABASE.to_owned(), dir.join(DATABASE)));
    }
    found.sort();
    let listed: Vec<&str> = {
        let mut v: Vec<&str> = manifest.files.iter().map(|f| f.path.as_str()).collect();
        v.sort_unstable();
        v
    };
    let present: Vec<&str> = found.iter().map(|(n, _)| n.as_str()).collect();
    if listed != present {
        return Err(BackupError::Refused(format!(
            "{}: its files ({}) are not the ones its manifest lists ({})",
            from.display(),
            present.join(", "),
            listed.join(", ")
        )));
    }
    for f in &manifest.files {
        let path = dir.join(&f.path);
        let (bytes, sha256) = sha256_of(&path)?;
        if bytes != f.bytes || sha256 != f.sha256 {
            return Err(BackupError::Refused(format!(
                "{}: {} is damaged (SHA-256 {sha256}, {bytes} bytes; the manifest says {}, {} bytes)",
                from.display(),
                f.path,
                f.sha256,
                f.bytes
            )));
        }
    }
    if manifest.storage == "sqlite" {
        let db = dir.join(DATABASE);
        let sqlite = |source| BackupError::Sqlite {
            path: db.display().to_string(),
            source,
        };
        let c = rusqlite::Connection::open(&db).map_err(sqlite)?;
        let check: String = c
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .map_err(sqlite)?;
        if check != "ok" {
            return Err(BackupError::Refused(format!(
                "{}: the database does not check out: {check}",
                from.display()
            )));
        }
        // Every agent tells the restored collector again what it holds
        // raised at its next welcome.
        c.execute("UPDATE endpoints SET resync = 1, online = 0", [])
            .map_err(sqlite)?;
    }
    for (_, path) in &found {
        std::fs::File::open(path)
            .and_then(|f| f.sync_all())
            .map_err(io(path))?;
    }
    Ok(manifest)
}
