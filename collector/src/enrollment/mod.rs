//! Joining and leaving the fleet: enrollment tokens, certificates signed
//! for keys made on the desks, renewal, revocation and the CRL.
//!
//! The collector never sees a desk's private key: a desk sends a signing
//! request, and the certificate it gets names the endpoint ID the
//! collector chose (from the request and the token's pattern), whatever
//! else the request asked for. Every attempt, accepted or refused, is in
//! the audit log with its reason.

pub mod token;

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{info, warn};
use vitals_proto::identity::{EndpointId, Identity};

use crate::config::CertificateSettings;
use crate::pki::{Ca, CertFacts, CsrError, PkiPaths};
use crate::relay::Relay;
use crate::revocation::{self, Revoked};
use crate::store::{EnrollToken, IssuedCert, NewEnrollment, Store, StoreError, TokenRefusal};
use token::Token;

/// The domain text renewal proofs are made over, before the CSR's PEM.
pub const RENEW_PROOF_PREFIX: &[u8] = b"vitals-renew-v1\n";

/// How often revocations are read again from the store, for changes made
/// by another process (`pki revoke-specialist`).
const REFRESH: Duration = Duration::from_secs(5);

/// The trusted CA files' contents, one after the other.
fn read_bundle(files: &[PathBuf]) -> String {
    files
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .collect()
}

/// A collector certificate expiring within this raises a ticket.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(30 * 86_400);
/// How often the collector's own certificates are looked at.
const EXPIRY_CHECK: Duration = Duration::from_secs(6 * 3600);
/// The first wait before a look that could not be said is tried again.
const EXPIRY_RETRY: Duration = Duration::from_secs(2);
/// The endpoint the collector's own tickets are filed under.
pub const COLLECTOR_ENDPOINT: &str = "collector";

/// Raises `collector_certificate_expiring` (one ticket per file) while a
/// collector-side certificate has less than [`EXPIRY_WARNING`] left, and
/// clears it once a replacement is there. Checked at start and every six
/// hours.
pub fn watch_expiry(
    files: Vec<PathBuf>,
    desk: crate::tickets::TicketDesk,
    mut stop: vitals_proto::shutdown::Shutdown,
) {
    use vitals_proto::domain::{FaultEvent, FaultState, Severity};
    tokio::spawn(async move {
        let mut raised: HashMap<PathBuf, bool> = HashMap::new();
        // After a refusal or an error the look is tried again soon (a
        // standby may lead by then, a busy store may have room), backing
        // off to the usual period.
        let mut retry = EXPIRY_RETRY;
        loop {
            let now = vitals_proto::now_ms();
            let mut unsaid = false;
            for file in &files {
                let Some(not_after) = std::fs::read(file).ok().and_then(|pem| {
                    x509_parser::pem::Pem::iter_from_buffer(&pem)
                        .filter_map(Result::ok)
                        .filter_map(|p| {
                            p.parse_x509()
                                .ok()
                                .map(|c| c.validity().not_after.timestamp() * 1000)
                        })
                        .min()
                }) else {
                    continue;
                };
                let left_ms = not_after - now;
                let due = left_ms < EXPIRY_WARNING.as_millis() as i64;
                // The first look always says (a clear after a restart
                // resolves a ticket raised before it), then only changes.
                if raised.get(file) == Some(&due) {
                    continue;
                }
                let name = file
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let event = FaultEvent {
                    check_id: "collector_certificate_expiring".into(),
                    subject: name.clone(),
                    state: if due {
                        FaultState::Raised
                    } else {
                        FaultState::Cleared
                    },
                    severity: Severity::Warning,
                    value: (left_ms / 86_400_000) as f64,
                    evidence: if due {
                        format!(
                            "{} expires on {} ({} days left)",
                            file.display(),
                            vitals_proto::rfc3339_seconds(not_after),
                            left_ms / 86_400_000
                        )
                    } else {
                        format!(
                            "{} is valid until {}",
                            file.display(),
                            vitals_proto::rfc3339_seconds(not_after)
                        )
                    },
                    at_ms: now,
                    via: String::new(),
                };
                match desk.raise(COLLECTOR_ENDPOINT, event).await {
                    Ok(()) if due => {
                        warn!(file = %file.display(), days_left = left_ms / 86_400_000, "collector certificate expires soon");
                    }
                    Ok(()) => {}
                    // The leading replica watches the same files.
                    Err(crate::tickets::DeskError::NotLeader) => {
                        unsaid = true;
                        continue;
                    }
                    Err(error) => {
                        warn!(%error, "cannot raise the certificate expiry ticket; trying again");
                        unsaid = true;
                        continue;
                    }
                }
                raised.insert(file.clone(), due);
            }
            let wait = if unsaid {
                let wait = retry;
                retry = (retry * 2).min(EXPIRY_CHECK);
                wait
            } else {
                retry = EXPIRY_RETRY;
                EXPIRY_CHECK
            };
            tokio::select! {
                () = stop.requested() => return,
                () = tokio::time::sleep(wait) => {}
            }
        }
    });
}

/// A certificate handed to a desk or a specialist.
#[derive(Debug, Clone, PartialEq)]
pub struct Issued {
    pub endpoint_id: String,
    pub cert_pem: String,
    pub trust_bundle_pem: String,
    pub not_after_ms: i64,
    pub site: String,
    pub tags: Vec<String>,
}

/// A desk's enrollment request.
#[derive(Debug, Clone, Default)]
pub struct EnrollRequest {
    pub token: String,
    pub csr_pem: String,
    pub endpoint_id: String,
    pub hostname: String,
    pub machine_id: String,
}

/// A renewal of an expired certificate.
#[derive(Debug, Clone, Default)]
pub struct RenewExpiredRequest {
    pub cert_pem: String,
    pub csr_pem: String,
    pub signature: Vec<u8>,
    pub machine_id: String,
}

#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    #[error("{0}")]
    Token(#[from] TokenRefusal),
    #[error("{0}")]
    BadToken(#[from] token::TokenError),
    #[error("{0}")]
    Csr(#[from] CsrError),
    #[error("endpoint ID {id:?} is not allowed by this token (it enrolls {pattern:?})")]
    Pattern { id: String, pattern: String },
    #[error("{0}")]
    BadId(#[from] vitals_proto::identity::IdentityError),
    #[error("too many enrollment attempts from this address; wait and try again")]
    RateLimited,
    #[error("{0}")]
    Refused(String),
    #[error("this collector holds no CA key, so it cannot sign certificates")]
    NoCa,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl EnrollError {
    /// The audit log's outcome word.
    fn outcome(&self) -> &'static str {
        match self {
            EnrollError::Store(_) | EnrollError::NoCa => "failed",
            _ => "refused",
        }
    }
}

/// The fleet's certificate authority at work.
pub struct Enrollment {
    store: Arc<dyn Store>,
    /// The signing CA; replaced when a CA rollover finishes.
    ca: std::sync::RwLock<Option<Arc<Ca>>>,
    pki: PkiPaths,
    /// The files of the CA certificates clients are told to trust.
    trust: Vec<PathBuf>,
    /// Their contents, read at start and again when the TLS files change
    /// (not on every welcome).
    bundle: std::sync::RwLock<Arc<str>>,
    crl_path: PathBuf,
    settings: CertificateSettings,
    pub revoked: Arc<Revoked>,
    /// Cuts a revoked desk's live session, on whichever replica holds it.
    relay: Arc<Relay>,
    /// Calls allowed per source address: a token bucket each.
    limiter: crate::limits::PerKey<IpAddr>,
}

impl Enrollment {
    /// Loads the CA (if this collector holds its key) and the revocations
    /// in force, and writes the CRL.
    pub async fn open(
        store: Arc<dyn Store>,
        paths: &PkiPaths,
        trust: Vec<PathBuf>,
        settings: CertificateSettings,
        relay: Arc<Relay>,
        revoked: Arc<Revoked>,
    ) -> Result<Self, crate::CollectorError> {
        let ca = if paths.ca_key().exists() {
            Some(Arc::new(Ca::load(paths)?))
        } else {
            None
        };
        revoked.load(&store.revocations().await?);
        let limiter =
            crate::limits::PerKey::new(settings.enroll_rate, f64::from(settings.enroll_burst));
        let enrollment = Enrollment {
            store,
            ca: std::sync::RwLock::new(ca),
            pki: paths.clone(),
            bundle: std::sync::RwLock::new(read_bundle(&trust).into()),
            trust,
            crl_path: paths.dir.join("crl.pem"),
            settings,
            revoked,
            relay,
            limiter,
        };
        enrollment.write_crl().await;
        Ok(enrollment)
    }

    /// Logs and audits handshakes refused for revocation, at most once a
    /// minute per identity (a revoked desk retries forever).
    pub fn audit_refused_handshakes(self: &Arc<Self>, mut stop: vitals_proto::shutdown::Shutdown) {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<revocation::Refused>(256);
        self.revoked.report_to(tx);
        let me = self.clone();
        tokio::spawn(async move {
            let mut last: HashMap<String, Instant> = HashMap::new();
            loop {
                let r = tokio::select! {
                    () = stop.requested() => return,
                    r = rx.recv() => match r { Some(r) => r, None => return },
                };
                let now = Instant::now();
                if last
                    .get(&r.identity)
                    .is_some_and(|t| now.duration_since(*t) < Duration::from_secs(60))
                {
                    continue;
                }
                last.insert(r.identity.clone(), now);
                if last.len() > 10_000 {
                    last.retain(|_, t| now.duration_since(*t) < Duration::from_secs(60));
                }
                warn!(identity = %r.identity, reason = r.reason, "handshake refused");
                me.audit(
                    r.identity,
                    "handshake",
                    &r.endpoint,
                    BTreeMap::new(),
                    "refused",
                    r.reason,
                )
                .await;
            }
        });
    }

    /// Audits a session the collector refused (revoked, a cloned image).
    pub async fn audit_session_refused(&self, endpoint: &EndpointId, machine: &str, detail: &str) {
        let params = if machine.is_empty() {
            BTreeMap::new()
        } else {
            BTreeMap::from([("machine".to_owned(), machine.to_owned())])
        };
        self.audit(
            endpoint.to_string(),
            "session",
            endpoint.as_str(),
            params,
            "refused",
            detail,
        )
        .await;
    }

    /// Every CA certificate a client should trust for the collector, PEM.
    pub fn trust_bundle(&self) -> String {
        self.bundle
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .to_string()
    }

    fn ca(&self) -> Result<Arc<Ca>, EnrollError> {
        self.ca
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or(EnrollError::NoCa)
    }

    /// Reads the trust bundle and the signing CA again (the TLS files
    /// changed: a rollover step); on an error the CA in use stays.
    pub fn reload(&self) {
        *self.bundle.write().unwrap_or_else(|p| p.into_inner()) = read_bundle(&self.trust).into();
        if !self.pki.ca_key().exists() {
            return;
        }
        match Ca::load(&self.pki) {
            Ok(ca) => {
                let fresh = Arc::new(ca);
                let mut current = self.ca.write().unwrap_or_else(|p| p.into_inner());
                if current.as_ref().map(|c| c.cert_pem()) != Some(fresh.cert_pem()) {
                    info!("the signing CA changed");
                    *current = Some(fresh);
                }
            }
            Err(error) => warn!(%error, "signing CA not reloaded"),
        }
    }

    async fn audit(
        &self,
        who: String,
        kind: &str,
        endpoint: &str,
        params: BTreeMap<String, String>,
        outcome: &str,
        detail: &str,
    ) {
        let entry = vitals_proto::diag::AuditEntry {
            at_ms: vitals_proto::now_ms(),
            who,
            role: String::new(),
            endpoint_id: endpoint.to_owned(),
            kind: kind.to_owned(),
            params,
            outcome: outcome.to_owned(),
            detail: detail.to_owned(),
            ..Default::default()
        };
        if let Err(error) = self.store.audit_append(entry).await {
            tracing::error!(%error, "cannot write the audit log");
        }
    }

    /// A desk joins with a token. Audited whatever the outcome.
    pub async fn enroll(&self, req: EnrollRequest, source: IpAddr) -> Result<Issued, EnrollError> {
        let token_id = req
            .token
            .split('.')
            .next()
            .unwrap_or("")
            .chars()
            .take(16)
            .collect::<String>();
        let mut params = BTreeMap::from([("token".to_owned(), token_id)]);
        if !req.hostname.is_empty() {
            params.insert("hostname".into(), req.hostname.chars().take(64).collect());
        }
        if !req.machine_id.is_empty() {
            params.insert("machine".into(), req.machine_id.chars().take(64).collect());
        }
        let asked = if req.endpoint_id.is_empty() {
            req.hostname.clone()
        } else {
            req.endpoint_id.clone()
        };
        let outcome = if self.limiter.allow(&source.to_canonical()) {
            self.try_enroll(req).await
        } else {
            Err(EnrollError::RateLimited)
        };
        let endpoint = match &outcome {
            Ok(issued) => issued.endpoint_id.clone(),
            Err(_) => asked.chars().take(64).collect(),
        };
        let who = format!("enroll@{}", source.to_canonical());
        match &outcome {
            Ok(issued) => {
                info!(endpoint = %issued.endpoint_id, %source, "desk enrolled");
                self.audit(who, "enroll", &endpoint, params, "ok", "").await;
            }
            Err(e) => {
                warn!(%source, asked = %endpoint, reason = %e, "enrollment refused");
                self.audit(
                    who,
                    "enroll",
                    &endpoint,
                    params,
                    e.outcome(),
                    &e.to_string(),
                )
                .await;
            }
        }
        outcome
    }

    async fn try_enroll(&self, req: EnrollRequest) -> Result<Issued, EnrollError> {
        let token = Token::parse(&req.token)?;
        let stored = self
            .store
            .token(&token.id)
            .await?
            .filter(|t| token::same_hash(&t.secret_hash, &token.secret_hash()))
            .ok_or(TokenRefusal::Unknown)?;
        let endpoint = if req.endpoint_id.is_empty() {
            EndpointId::from_hostname(&req.hostname)?
        } else {
            req.endpoint_id.parse()?
        };
        if !stored.id_pattern.is_empty()
            && !vitals_proto::ticket_rules::wildcard(&stored.id_pattern, endpoint.as_str())
        {
            return Err(EnrollError::Pattern {
                id: endpoint.to_string(),
                pattern: stored.id_pattern,
            });
        }
        let identity = Identity::Endpoint(endpoint.clone());
        let signed = self
            .ca()?
            .sign_csr(&req.csr_pem, &identity, self.settings.agent_lifetime)?;
        let now = vitals_proto::now_ms();
        self.store
            .enroll(NewEnrollment {
                token_id: stored.id.clone(),
                endpoint: endpoint.clone(),
                hostname: req.hostname.chars().take(255).collect(),
                machine_id: req.machine_id.chars().take(128).collect(),
                certificate: IssuedCert {
                    serial: signed.serial.clone(),
                    kind: "endpoint".into(),
                    subject: endpoint.to_string(),
                    issued_ms: now,
                    not_after_ms: signed.not_after_ms,
                    via: "enroll".into(),
                    ..Default::default()
                },
                at_ms: now,
            })
            .await??;
        self.revoked.reinstate_endpoint(endpoint.as_str());
        Ok(Issued {
            endpoint_id: endpoint.to_string(),
            cert_pem: signed.cert_pem,
            trust_bundle_pem: self.trust_bundle(),
            not_after_ms: signed.not_after_ms,
            site: stored.site,
            tags: stored.tags,
        })
    }

    /// A new certificate for a client that holds a valid one (an agent on
    /// its stream, a specialist): same identity, fresh key. Audited.
    pub async fn renew(
        &self,
        identity: &Identity,
        current: &CertFacts,
        csr_pem: &str,
    ) -> Result<Issued, EnrollError> {
        let outcome = self.try_renew(identity, current, csr_pem, "renew").await;
        self.audit_renewal(identity, "renew", &outcome, BTreeMap::new())
            .await;
        outcome
    }

    async fn try_renew(
        &self,
        identity: &Identity,
        current: &CertFacts,
        csr_pem: &str,
        via: &str,
    ) -> Result<Issued, EnrollError> {
        if let Some(why) = self.revoked.refusal(identity, current) {
            return Err(EnrollError::Refused(format!("{why}: enroll again")));
        }
        let (kind, subject, lifetime) = match identity {
            Identity::Endpoint(id) => ("endpoint", id.to_string(), self.settings.agent_lifetime),
            Identity::Specialist { name, .. } => (
                "specialist",
                name.clone(),
                self.settings.specialist_lifetime,
            ),
        };
        let signed = self.ca()?.sign_csr(csr_pem, identity, lifetime)?;
        self.store
            .record_certificate(IssuedCert {
                serial: signed.serial.clone(),
                kind: kind.into(),
                subject: subject.clone(),
                issued_ms: vitals_proto::now_ms(),
                not_after_ms: signed.not_after_ms,
                via: via.into(),
                ..Default::default()
            })
            .await?;
        Ok(Issued {
            endpoint_id: match identity {
                Identity::Endpoint(_) => subject,
                Identity::Specialist { .. } => String::new(),
            },
            cert_pem: signed.cert_pem,
            trust_bundle_pem: self.trust_bundle(),
            not_after_ms: signed.not_after_ms,
            site: String::new(),
            tags: Vec::new(),
        })
    }

    async fn audit_renewal(
        &self,
        identity: &Identity,
        kind: &str,
        outcome: &Result<Issued, EnrollError>,
        params: BTreeMap<String, String>,
    ) {
        let (who, endpoint) = match identity {
            Identity::Endpoint(id) => (id.to_string(), id.to_string()),
            Identity::Specialist { name, .. } => (name.clone(), String::new()),
        };
        match outcome {
            Ok(_) => self.audit(who, kind, &endpoint, params, "ok", "").await,
            Err(e) => {
                warn!(%identity, reason = %e, "certificate renewal refused");
                self.audit(who, kind, &endpoint, params, e.outcome(), &e.to_string())
                    .await;
            }
        }
    }

    /// A desk whose certificate expired while it was away: it proves it
    /// holds the old key, and the old certificate must be one of ours,
    /// never revoked, and expired less than the grace window ago.
    pub async fn renew_expired(
        &self,
        req: RenewExpiredRequest,
        source: IpAddr,
    ) -> Result<Issued, EnrollError> {
        let params = BTreeMap::from([("from".to_owned(), source.to_canonical().to_string())]);
        if !self.limiter.allow(&source.to_canonical()) {
            let e = EnrollError::RateLimited;
            self.audit(
                format!("enroll@{}", source.to_canonical()),
                "renew_expired",
                "",
                params,
                e.outcome(),
                &e.to_string(),
            )
            .await;
            return Err(e);
        }
        let (identity, facts) = match self.check_expired(&req) {
            Ok(checked) => checked,
            Err(e) => {
                warn!(%source, reason = %e, "renewal of an expired certificate refused");
                self.audit(
                    format!("enroll@{}", source.to_canonical()),
                    "renew_expired",
                    "",
                    params,
                    "refused",
                    &e,
                )
                .await;
                return Err(EnrollError::Refused(e));
            }
        };
        let outcome = match self.store.certificate(&facts.serial).await {
            Err(e) => Err(e.into()),
            Ok(Some(c)) if c.revoked_ms > 0 => Err(EnrollError::Refused(
                "certificate revoked: enroll again".into(),
            )),
            Ok(_) => {
                let grace_end = facts.not_after_ms + self.settings.renewal_grace.as_millis() as i64;
                if vitals_proto::now_ms() > grace_end {
                    Err(EnrollError::Refused(format!(
                        "the certificate expired on {}, past the {} grace window: enroll again",
                        vitals_proto::rfc3339_seconds(facts.not_after_ms),
                        humantime::format_duration(self.settings.renewal_grace)
                    )))
                } else {
                    self.try_renew(&identity, &facts, &req.csr_pem, "renew_expired")
                        .await
                }
            }
        };
        self.audit_renewal(&identity, "renew_expired", &outcome, params)
            .await;
        outcome
    }

    /// The expired certificate is ours (signed by the CA, whatever its
    /// dates), names an endpoint, and the proof is its key's signature.
    fn check_expired(&self, req: &RenewExpiredRequest) -> Result<(Identity, CertFacts), String> {
        let (_, pem) = x509_parser::pem::parse_x509_pem(req.cert_pem.as_bytes())
            .map_err(|_| "the old certificate is not PEM".to_owned())?;
        let der = pem.contents;
        let (_, cert) = x509_parser::parse_x509_certificate(&der)
            .map_err(|_| "the old certificate does not parse".to_owned())?;
        // The signing CA is the first of the bundle.
        let bundle = self.trust_bundle();
        let trusted = x509_parser::pem::Pem::iter_from_buffer(bundle.as_bytes())
            .filter_map(Result::ok)
            .any(|p| {
                p.parse_x509()
                    .is_ok_and(|ca| cert.verify_signature(Some(ca.public_key())).is_ok())
            });
        if !trusted {
            return Err("the old certificate was not signed by this fleet's CA".into());
        }
        let identity = Identity::from_cert_der(&der).map_err(|e| e.to_string())?;
        if !matches!(identity, Identity::Endpoint(_)) {
            return Err("only desk certificates renew this way".into());
        }
        let facts = CertFacts::of(&der).ok_or("the old certificate does not parse")?;
        let spki = cert.public_key();
        let key = spki.subject_public_key.data.as_ref();
        let mut message = RENEW_PROOF_PREFIX.to_vec();
        message.extend_from_slice(req.csr_pem.as_bytes());
        let alg: &dyn ring::signature::VerificationAlgorithm =
            match spki.algorithm.algorithm.to_id_string().as_str() {
                "1.2.840.10045.2.1" => &ring::signature::ECDSA_P256_SHA256_ASN1,
                "1.3.101.112" => &ring::signature::ED25519,
                other => return Err(format!("the old key's type {other} is not accepted")),
            };
        ring::signature::UnparsedPublicKey::new(alg, key)
            .verify(&message, &req.signature)
            .map_err(|_| "the proof is not the old key's signature".to_owned())?;
        Ok((identity, facts))
    }

    /// Revokes an endpoint: refused at every later handshake, its live
    /// stream cut now, the CRL rewritten. False if it was never seen.
    pub async fn revoke_endpoint(&self, id: &EndpointId, reason: &str) -> Result<bool, StoreError> {
        let now = vitals_proto::now_ms();
        if !self.store.revoke_endpoint(id.as_str(), reason, now).await? {
            return Ok(false);
        }
        self.revoked.revoke_endpoint(id.as_str(), now);
        for (serial, _, _) in self.store.revocations().await?.serials {
            self.revoked.revoke_serial(&serial);
        }
        self.relay
            .cut(id, &format!("endpoint revoked: {reason}"))
            .await;
        self.write_crl().await;
        Ok(true)
    }

    /// Creates a token; returns it whole (the only time its secret is
    /// seen) with what was stored.
    pub async fn create_token(
        store: &dyn Store,
        ca_fingerprint: [u8; 32],
        mut stored: EnrollToken,
    ) -> Result<Token, crate::CollectorError> {
        let token = Token::generate(ca_fingerprint)?;
        stored.id = token.id.clone();
        stored.secret_hash = token.secret_hash();
        store.create_token(stored).await?;
        Ok(token)
    }

    /// Rewrites `pki/crl.pem` from the revocations in the store.
    pub async fn write_crl(&self) {
        let Ok(ca) = self.ca() else { return };
        let revocations = match self.store.revocations().await {
            Ok(r) => r,
            Err(error) => {
                warn!(%error, "cannot read revocations for the CRL");
                return;
            }
        };
        let serials: Vec<(String, i64)> = revocations
            .serials
            .iter()
            .map(|(s, at, _)| (s.clone(), *at))
            .collect();
        let number = vitals_proto::now_ms().max(1) as u64;
        match ca.crl_pem(&serials, number) {
            Ok(pem) => {
                let tmp = self.crl_path.with_extension("pem.tmp");
                if let Err(error) =
                    std::fs::write(&tmp, pem).and_then(|()| std::fs::rename(&tmp, &self.crl_path))
                {
                    warn!(%error, path = %self.crl_path.display(), "cannot write the CRL");
                }
            }
            Err(error) => warn!(%error, "cannot sign the CRL"),
        }
    }

    /// Reads revocations again now and then (another process may have
    /// revoked), cutting live streams of newly revoked endpoints.
    pub fn refresh(self: Arc<Self>, mut stop: vitals_proto::shutdown::Shutdown) {
        tokio::spawn(async move {
            let mut known = self.store.revocations().await.unwrap_or_default();
            loop {
                tokio::select! {
                    () = stop.requested() => return,
                    () = tokio::time::sleep(REFRESH) => {}
                }
                let Ok(now) = self.store.revocations().await else {
                    continue;
                };
                if now == known {
                    continue;
                }
                self.revoked.load(&now);
                for (id, _) in &now.endpoints {
                    if !known.endpoints.iter().any(|(k, _)| k == id)
                        && let Ok(id) = id.parse::<EndpointId>()
                    {
                        self.relay.cut(&id, "endpoint revoked").await;
                    }
                }
                self.write_crl().await;
                known = now;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_source_gets_its_burst_then_its_rate() {
        let limit = crate::limits::PerKey::new(2.0, 3.0);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        assert!((0..3).all(|_| limit.allow(&a)), "the burst");
        assert!(!limit.allow(&a), "past the burst");
        assert!(limit.allow(&b), "another address has its own bucket");
        std::thread::sleep(Duration::from_millis(600));
        assert!(limit.allow(&a), "refilled at the rate");
        assert!(!limit.allow(&a));
    }
}
