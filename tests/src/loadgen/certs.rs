//! Client certificates for simulated agents: one fleet CA, one leaf per
//! agent, cached on disk so a second run starts at once.

use std::path::{Path, PathBuf};
use std::time::Instant;

use tonic::transport::Identity as TlsIdentity;
use vitals_collector::pki::{self, Ca, PkiPaths};
use vitals_proto::identity::Identity;

/// Leaves with fewer days left are minted again.
const MIN_DAYS: i64 = 2;

/// `(endpoint id, TLS identity)` for agents `<prefix>-00000` onwards.
pub fn agent_identities(
    data_dir: &Path,
    prefix: &str,
    n: usize,
) -> anyhow::Result<Vec<(String, TlsIdentity)>> {
    agent_files(data_dir, prefix, n)?
        .into_iter()
        .map(|(id, cert, key)| {
            Ok((
                id,
                TlsIdentity::from_pem(std::fs::read(&cert)?, std::fs::read(&key)?),
            ))
        })
        .collect()
}

/// `(endpoint id, certificate file, key file)` for agents `<prefix>-00000`
/// onwards, minted where missing or about to expire.
pub fn agent_files(
    data_dir: &Path,
    prefix: &str,
    n: usize,
) -> anyhow::Result<Vec<(String, PathBuf, PathBuf)>> {
    agent_files_in(data_dir, prefix, 0..n)
}

/// As [`agent_files`], for agents `<prefix>-<first>` up to the range's end.
pub fn agent_files_in(
    data_dir: &Path,
    prefix: &str,
    range: std::ops::Range<usize>,
) -> anyhow::Result<Vec<(String, PathBuf, PathBuf)>> {
    let paths = PkiPaths::new(data_dir);
    let mut ca: Option<Ca> = None;
    let started = Instant::now();
    let mut minted = 0;
    let n = range.len();
    let mut out = Vec::with_capacity(n);
    for i in range {
        let id = format!("{prefix}-{i:05}");
        let identity = Identity::Endpoint(id.parse()?);
        let (cert, key) = paths.client(&identity);
        if pki::days_left(&cert).is_none_or(|d| d < MIN_DAYS) || !key.exists() {
            if ca.is_none() {
                ca = Some(Ca::load(&paths)?);
            }
            if let Some(ca) = &ca {
                ca.issue_client(&identity, 30)?.write(&cert, &key)?;
            }
            minted += 1;
        }
        out.push((id, cert, key));
    }
    eprintln!(
        "certificates: {n} agents, {minted} minted, {} from cache, in {:.1}s",
        n - minted,
        started.elapsed().as_secs_f64()
    );
    Ok(out)
}
