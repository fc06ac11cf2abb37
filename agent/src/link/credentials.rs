//! The desk's credentials: the fleet CA it trusts, its certificate and its
//! private key, as files and in memory; new keys and signing requests;
//! replacing them safely when a renewal comes back.
//!
//! A replacement writes the new certificate and key beside the old ones
//! (`.new`), then renames the key, then the certificate. A crash between
//! the two renames leaves a key that matches `agent.pem.new`, which the
//! next load finishes; before the first rename the old pair stands.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{CertificateParams, KeyPair, SanType};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tonic::transport::{Certificate, ClientTlsConfig, Identity as TlsIdentity};
use vitals_proto::identity::{EndpointId, Identity};

use crate::config::AgentConfig;
use vitals_proto::files::beside;

#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("cannot make a key: {0}")]
    Key(#[from] rcgen::Error),
    #[error("the collector's certificate does not match the key this desk made")]
    Mismatch,
}

fn file_err(path: &Path, message: impl std::fmt::Display) -> CredentialError {
    CredentialError::File {
        path: path.display().to_string(),
        message: message.to_string(),
    }
}

/// A fresh key and its signing request naming `identity`.
pub struct NewKey {
    pub key: KeyPair,
    pub csr_pem: String,
}

impl NewKey {
    /// ECDSA P-256, like every key the fleet CA signs.
    pub fn generate(identity: &Identity) -> Result<NewKey, CredentialError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        for uri in identity.san_uris() {
            params
                .subject_alt_names
                .push(SanType::URI(uri.as_str().try_into()?));
        }
        let csr_pem = params.serialize_request(&key)?.pem()?;
        Ok(NewKey { key, csr_pem })
    }
}

/// The validity of a certificate, in ms since the epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    pub not_before_ms: i64,
    pub not_after_ms: i64,
}

impl Validity {
    pub fn of_pem(pem: &[u8]) -> Option<Validity> {
        let (_, pem) = x509_parser::pem::parse_x509_pem(pem).ok()?;
        let cert = pem.parse_x509().ok()?;
        Some(Validity {
            not_before_ms: cert.validity().not_before.timestamp() * 1000,
            not_after_ms: cert.validity().not_after.timestamp() * 1000,
        })
    }

    /// When to renew: two thirds into the lifetime.
    pub fn renew_at_ms(&self) -> i64 {
        self.not_before_ms + (self.not_after_ms - self.not_before_ms) * 2 / 3
    }

    pub fn lifetime(&self) -> Duration {
        Duration::from_millis((self.not_after_ms - self.not_before_ms).max(0) as u64)
    }

    pub fn expired(&self, now_ms: i64) -> bool {
        now_ms >= self.not_after_ms
    }
}

/// What the link connects with.
#[derive(Clone)]
pub struct Credentials {
    pub ca_pem: Vec<u8>,
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
    ca_path: PathBuf,
    cert_path: PathBuf,
    key_path: PathBuf,
}

impl Credentials {
    /// Reads the files a configuration names, finishing an interrupted
    /// replacement first.
    pub fn load(config: &AgentConfig) -> Result<Credentials, CredentialError> {
        let (ca_path, cert_path, key_path) = (
            config.tls.ca.clone(),
            config.tls.cert.clone(),
            config.tls.key.clone(),
        );
        finish_replacement(&cert_path, &key_path);
        let read =
            |p: &Path| std::fs::read(p).map_err(|e| file_err(p, format!("cannot read: {e}")));
        Ok(Credentials {
            ca_pem: read(&ca_path)?,
            cert_pem: read(&cert_path)?,
            key_pem: read(&key_path)?,
            ca_path,
            cert_path,
            key_path,
        })
    }

    pub fn tls(&self, server_name: &str) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .domain_name(server_name)
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .identity(TlsIdentity::from_pem(&self.cert_pem, &self.key_pem))
    }

    pub fn validity(&self) -> Option<Validity> {
        Validity::of_pem(&self.cert_pem)
    }

    /// Takes a renewed certificate for `key`: checked against the key,
    /// written safely, used from the next connection on.
    pub fn replace(&mut self, key: &KeyPair, cert_pem: &str) -> Result<(), CredentialError> {
        check_pair(cert_pem.as_bytes(), key.serialize_pem().as_bytes())?;
        let key_pem = key.serialize_pem();
        write_pair(&self.cert_path, &self.key_path, cert_pem, &key_pem)?;
        self.cert_pem = cert_pem.as_bytes().to_vec();
        self.key_pem = key_pem.into_bytes();
        Ok(())
    }

    /// Takes the collector's trust bundle when it differs from the CA
    /// file. Returns whether it changed.
    pub fn trust(&mut self, bundle: &str) -> Result<bool, CredentialError> {
        if bundle.is_empty() || bundle.as_bytes() == self.ca_pem.as_slice() {
            return Ok(false);
        }
        if CertificateDer::pem_slice_iter(bundle.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_or(true, |c| c.is_empty())
        {
            return Err(file_err(
                &self.ca_path,
                "the collector sent an unreadable trust bundle",
            ));
        }
        replace_file(&self.ca_path, bundle.as_bytes(), false)?;
        self.ca_pem = bundle.as_bytes().to_vec();
        Ok(true)
    }

    pub fn key(&self) -> Result<KeyPair, CredentialError> {
        let text = String::from_utf8_lossy(&self.key_pem).into_owned();
        KeyPair::from_pem(&text)
            .map_err(|e| file_err(&self.key_path, format!("not a usable key: {e}")))
    }
}

/// The certificate's public key is the key's.
fn check_pair(cert_pem: &[u8], key_pem: &[u8]) -> Result<(), CredentialError> {
    let cert = CertificateDer::from_pem_slice(cert_pem).map_err(|_| CredentialError::Mismatch)?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|_| CredentialError::Mismatch)?;
    let provider = rustls::crypto::ring::default_provider();
    rustls::sign::CertifiedKey::from_der(vec![cert], key, &provider)
        .map(|_| ())
        .map_err(|_| CredentialError::Mismatch)
}

/// Writes a certificate and its key: both beside, then the key, then the
/// certificate renamed into place.
pub fn write_pair(
    cert: &Path,
    key: &Path,
    cert_pem: &str,
    key_pem: &str,
) -> Result<(), CredentialError> {
    for p in [cert, key] {
        if let Some(dir) = p.parent() {
            std::fs::create_dir_all(dir).map_err(|e| file_err(dir, e))?;
        }
    }
    let (cert_new, key_new) = (beside(cert), beside(key));
    write_synced(&key_new, key_pem.as_bytes(), true)?;
    write_synced(&cert_new, cert_pem.as_bytes(), false)?;
    std::fs::rename(&key_new, key).map_err(|e| file_err(key, e))?;
    std::fs::rename(&cert_new, cert).map_err(|e| file_err(cert, e))?;
    crate::paths::restrict_key(key).map_err(|e| file_err(key, e))?;
    Ok(())
}

/// A crash between the two renames: the key is new, its certificate still
/// beside. Finish; or drop a half-written pair that never got renamed.
fn finish_replacement(cert: &Path, key: &Path) {
    let (cert_new, key_new) = (beside(cert), beside(key));
    if !cert_new.exists() {
        let _ = std::fs::remove_file(&key_new);
        return;
    }
    if key_new.exists() {
        // Neither was renamed: the old pair stands.
        let _ = std::fs::remove_file(&key_new);
        let _ = std::fs::remove_file(&cert_new);
        return;
    }
    match (std::fs::read(&cert_new), std::fs::read(key)) {
        (Ok(c), Ok(k)) if check_pair(&c, &k).is_ok() => {
            if let Err(error) = std::fs::rename(&cert_new, cert) {
                tracing::warn!(%error, "cannot finish the certificate replacement");
            } else {
                tracing::info!("finished a certificate replacement cut short");
            }
        }
        _ => {
            let _ = std::fs::remove_file(&cert_new);
        }
    }
}

fn replace_file(path: &Path, bytes: &[u8], private: bool) -> Result<(), CredentialError> {
    vitals_proto::files::replace(path, bytes, private).map_err(|e| file_err(path, e))
}

fn write_synced(path: &Path, bytes: &[u8], private: bool) -> Result<(), CredentialError> {
    vitals_proto::files::write_synced(path, bytes, private).map_err(|e| file_err(path, e))
}

/// This machine's fingerprint for clone detection: the OS install's own
/// ID (`/etc/machine-id`, Windows' MachineGuid), unless the configuration
/// names one.
pub fn machine_id(config: &AgentConfig) -> String {
    if let Some(id) = config.machine_id.as_ref().filter(|s| !s.is_empty()) {
        return id.clone();
    }
    os_machine_id().unwrap_or_default()
}

#[cfg(windows)]
fn os_machine_id() -> Option<String> {
    let key = winreg::RegKey::predef(winreg::enums::HKEY_LOCAL_MACHINE)
        .open_subkey(r"SOFTWARE\Microsoft\Cryptography")
        .ok()?;
    key.get_value::<String, _>("MachineGuid")
        .ok()
        .map(|s| s.trim().to_owned())
}

#[cfg(not(windows))]
fn os_machine_id() -> Option<String> {
    ["/etc/machine-id", "/var/lib/dbus/machine-id"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .map(|s| s.trim().to_owned())
        .find(|s| !s.is_empty())
}

/// The endpoint ID a desk enrolls as when none is given: its host name.
pub fn default_endpoint_id() -> Result<EndpointId, String> {
    let host = sysinfo::System::host_name().unwrap_or_default();
    EndpointId::from_hostname(&host).map_err(|e| format!("the host name {host:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_falls_two_thirds_into_the_lifetime() {
        let v = Validity {
            not_before_ms: 0,
            not_after_ms: 3_000,
        };
        assert_eq!(v.renew_at_ms(), 2_000);
        assert!(!v.expired(2_999) && v.expired(3_000));
    }

    #[test]
    fn a_replacement_cut_short_is_finished_or_undone() {
        let dir = std::env::temp_dir().join(format!("vitals-cred-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, key) = (dir.join("agent.pem"), dir.join("agent.key"));
        let id = Identity::Endpoint("ws-1".parse().unwrap());
        let pair = |k: &KeyPair| {
            let mut p = CertificateParams::new(vec!["x".into()]).unwrap();
            p.subject_alt_names
                .push(SanType::URI(id.san_uris()[0].as_str().try_into().unwrap()));
            p.self_signed(k).unwrap().pem()
        };
        let old = KeyPair::generate().unwrap();
        write_pair(&cert, &key, &pair(&old), &old.serialize_pem()).unwrap();
        // The key renamed, the certificate not yet: finished at load.
        let new = KeyPair::generate().unwrap();
        let new_cert = pair(&new);
        std::fs::write(&key, new.serialize_pem()).unwrap();
        std::fs::write(beside(&cert), &new_cert).unwrap();
        finish_replacement(&cert, &key);
        assert_eq!(std::fs::read_to_string(&cert).unwrap(), new_cert);
        assert!(check_pair(new_cert.as_bytes(), new.serialize_pem().as_bytes()).is_ok());
        // Neither renamed: both leftovers go, the pair stands.
        std::fs::write(beside(&cert), pair(&old)).unwrap();
        std::fs::write(beside(&key), old.serialize_pem()).unwrap();
        finish_replacement(&cert, &key);
        assert!(!beside(&cert).exists() && !beside(&key).exists());
        assert_eq!(std::fs::read_to_string(&cert).unwrap(), new_cert);
        // A mismatched pair is refused.
        assert!(check_pair(new_cert.as_bytes(), old.serialize_pem().as_bytes()).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
