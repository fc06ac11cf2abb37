//! Revocation in force, as every handshake checks it, and the client
//! certificate verifier that checks it.
//!
//! The set lives in memory (loaded from the store at start, updated by
//! every revocation and re-read periodically for changes other processes
//! made, such as `pki revoke-specialist`), so a handshake never waits on
//! the database. A certificate is refused when its serial is revoked, or
//! when it names a revoked endpoint and was issued before the revocation
//! (which covers certificates made by hand and never recorded).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};

use rustls::client::danger::HandshakeSignatureValid;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use rustls_pki_types::{CertificateDer, UnixTime};
use vitals_proto::identity::Identity;

use crate::pki::CertFacts;
use crate::store::Revocations;

#[derive(Default)]
struct Sets {
    serials: HashSet<String>,
    endpoints: HashMap<String, i64>,
    specialists: HashMap<String, i64>,
}

/// A handshake refused for revocation: who, and why.
#[derive(Debug, Clone)]
pub struct Refused {
    pub identity: String,
    pub endpoint: String,
    pub reason: &'static str,
}

/// The revocations every handshake is checked against.
#[derive(Default)]
pub struct Revoked {
    sets: RwLock<Sets>,
    /// Where refused handshakes are told, for the log and the audit.
    notices: std::sync::Mutex<Option<tokio::sync::mpsc::Sender<Refused>>>,
}

impl Revoked {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Sets> {
        self.sets.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Sets> {
        self.sets.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Replaces the set with what the store holds.
    pub fn load(&self, r: &Revocations) {
        let sets = Sets {
            serials: r.serials.iter().map(|(s, _, _)| s.clone()).collect(),
            endpoints: r.endpoints.iter().cloned().collect(),
            specialists: r.specialists.iter().cloned().collect(),
        };
        *self.write() = sets;
    }

    pub fn revoke_endpoint(&self, id: &str, at_ms: i64) {
        self.write().endpoints.insert(id.to_owned(), at_ms);
    }

    /// An endpoint enrolled anew: its new certificate stands; the old
    /// ones stay refused by serial.
    pub fn reinstate_endpoint(&self, id: &str) {
        self.write().endpoints.remove(id);
    }

    pub fn revoke_serial(&self, serial: &str) {
        self.write().serials.insert(serial.to_owned());
    }

    /// Why a certificate held by `identity` is refused, if it is.
    pub fn refusal(&self, identity: &Identity, facts: &CertFacts) -> Option<&'static str> {
        let sets = self.read();
        if sets.serials.contains(&facts.serial) {
            return Some("certificate revoked");
        }
        let (revoked_at, what) = match identity {
            Identity::Endpoint(id) => (sets.endpoints.get(id.as_str()), "endpoint revoked"),
            Identity::Specialist { name, .. } => (sets.specialists.get(name), "specialist revoked"),
        };
        // A certificate issued after the revocation stands (a specialist
        // given a new certificate; an endpoint enrolled anew).
        match revoked_at {
            Some(at) if facts.not_before_ms <= *at => Some(what),
            _ => None,
        }
    }

    /// Refused handshakes are sent here from now on.
    pub fn report_to(&self, tx: tokio::sync::mpsc::Sender<Refused>) {
        *self.notices.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx);
    }

    /// Whether a certificate (DER) is refused.
    pub fn refuses(&self, der: &[u8]) -> bool {
        let (Ok(identity), Some(facts)) = (Identity::from_cert_der(der), CertFacts::of(der)) else {
            // Not ours to judge: the handshake refuses it for what it is.
            return false;
        };
        let Some(reason) = self.refusal(&identity, &facts) else {
            return false;
        };
        if let Some(tx) = &*self.notices.lock().unwrap_or_else(|p| p.into_inner()) {
            let endpoint = match &identity {
                Identity::Endpoint(id) => id.to_string(),
                Identity::Specialist { .. } => String::new(),
            };
            let _ = tx.try_send(Refused {
                identity: identity.to_string(),
                endpoint,
                reason,
            });
        }
        true
    }
}

/// Client certificates chaining to the fleet's trusted CAs (replaceable
/// while running, for a CA rollover), checked against [`Revoked`]; a client
/// with no certificate is let through to enrollment only.
pub struct FleetVerifier {
    inner: RwLock<Arc<dyn ClientCertVerifier>>,
    revoked: Arc<Revoked>,
}

impl std::fmt::Debug for FleetVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FleetVerifier")
    }
}

impl FleetVerifier {
    pub fn new(inner: Arc<dyn ClientCertVerifier>, revoked: Arc<Revoked>) -> Self {
        FleetVerifier {
            inner: RwLock::new(inner),
            revoked,
        }
    }

    /// Trusts a new set of CAs from the next handshake on.
    pub fn replace(&self, inner: Arc<dyn ClientCertVerifier>) {
        *self.inner.write().unwrap_or_else(|p| p.into_inner()) = inner;
    }

    fn inner(&self) -> Arc<dyn ClientCertVerifier> {
        self.inner.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl ClientCertVerifier for FleetVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner()
            .verify_client_cert(end_entity, intermediates, now)?;
        if self.revoked.refuses(end_entity) {
            return Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::Revoked,
            ));
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner().supported_verify_schemes()
    }
}
