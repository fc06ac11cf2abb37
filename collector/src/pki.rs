//! The fleet's certificate authority: one CA, the collector's server
//! certificate, and client certificates for agents and specialists.
//!
//! Everything is made in Rust (rcgen, ECDSA P-256), never by shelling out.
//! Private keys are written readable by their owner only. The layout under a
//! data directory is:
//!
//! ```text
//! pki/ca.pem  pki/ca.key                 fleet CA
//! pki/collector.pem  pki/collector.key   collector server certificate
//! pki/agents/<id>.pem|.key               agent client certificates
//! pki/specialists/<name>.pem|.key        specialist client certificates
//! ```

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams,
    CertificateSigningRequestParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose, RevokedCertParams, SanType, SerialNumber,
};
use time::{Duration, OffsetDateTime};
use vitals_proto::identity::Identity;

/// Validity of a new fleet CA.
pub const CA_DAYS: i64 = 3650;
/// Validity of a new collector server certificate.
pub const SERVER_DAYS: i64 = 397;
/// Validity of a new agent certificate.
pub const AGENT_DAYS: i64 = 365;
/// Validity of a new specialist certificate.
pub const SPECIALIST_DAYS: i64 = 90;

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{0} already exists; refusing to overwrite an existing fleet CA")]
    AlreadyExists(PathBuf),
    #[error("invalid identity: {0}")]
    Identity(#[from] vitals_proto::identity::IdentityError),
    #[error("the system's random source failed")]
    Random,
}

/// Where the PKI files of a data directory live.
#[derive(Debug, Clone)]
pub struct PkiPaths {
    pub dir: PathBuf,
}

impl PkiPaths {
    pub fn new(data_dir: &Path) -> Self {
        PkiPaths {
            dir: data_dir.join("pki"),
        }
    }
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }
    pub fn ca_key(&self) -> PathBuf {
        self.dir.join("ca.key")
    }
    /// During a CA rollover, the next CA (trusted, not yet signing).
    pub fn ca_next_cert(&self) -> PathBuf {
        self.dir.join("ca-next.pem")
    }
    pub fn ca_next_key(&self) -> PathBuf {
        self.dir.join("ca-next.key")
    }
    pub fn server_cert(&self) -> PathBuf {
        self.dir.join("collector.pem")
    }
    pub fn server_key(&self) -> PathBuf {
        self.dir.join("collector.key")
    }
    /// Certificate and key paths for a client identity.
    pub fn client(&self, identity: &Identity) -> (PathBuf, PathBuf) {
        let (folder, name) = match identity {
            Identity::Endpoint(id) => ("agents", id.as_str()),
            Identity::Specialist { name, .. } => ("specialists", name.as_str()),
        };
        let base = self.dir.join(folder);
        (
            base.join(format!("{name}.pem")),
            base.join(format!("{name}.key")),
        )
    }
}

/// A certificate and its private key, both PEM.
#[derive(Debug, Clone)]
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    /// The certificate's serial, hex, as the CRL lists it.
    pub serial: String,
    pub not_after_ms: i64,
}

/// A certificate signed for a key the collector never saw.
#[derive(Debug, Clone)]
pub struct Signed {
    pub cert_pem: String,
    pub serial: String,
    pub not_after_ms: i64,
}

/// Why a certificate signing request was not signed.
#[derive(Debug, thiserror::Error)]
pub enum CsrError {
    #[error("not a valid certificate signing request: {0}")]
    Invalid(String),
    #[error("key type {0} is not accepted: use ECDSA P-256 or Ed25519")]
    KeyType(String),
    #[error("the request asks for {asked} but the certificate would be for {issued}")]
    OtherIdentity { asked: String, issued: String },
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
}

/// What revocation and renewal read from a client certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFacts {
    pub serial: String,
    pub not_before_ms: i64,
    pub not_after_ms: i64,
}

impl CertFacts {
    /// Reads a certificate (DER); `None` if it does not parse.
    pub fn of(der: &[u8]) -> Option<CertFacts> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        let validity = cert.validity();
        Some(CertFacts {
            serial: hex(trim_zeros(cert.raw_serial())),
            not_before_ms: validity.not_before.timestamp() * 1000,
            not_after_ms: validity.not_after.timestamp() * 1000,
        })
    }
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn trim_zeros(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    &bytes[start..]
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// SHA-256 of a certificate's DER: the CA fingerprint an enrollment token
/// carries.
pub fn fingerprint(der: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(der).into()
}

/// A fresh random serial: 16 bytes, positive, no leading zero byte, so its
/// hex reads the same in the certificate, the CRL and the database.
fn new_serial() -> Result<(SerialNumber, String), PkiError> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| PkiError::Random)?;
    bytes[0] = (bytes[0] & 0x7f).max(1);
    Ok((SerialNumber::from_slice(&bytes), hex(&bytes)))
}

fn ms(t: OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

impl Leaf {
    /// Writes the certificate (0644) and the key (0600), making folders.
    pub fn write(&self, cert: &Path, key: &Path) -> Result<(), PkiError> {
        write_file(cert, self.cert_pem.as_bytes(), false)?;
        write_file(key, self.key_pem.as_bytes(), true)
    }
}

/// The fleet CA, able to sign.
pub struct Ca {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    /// Makes a new CA valid for `days`.
    pub fn generate(days: i64) -> Result<Self, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = name("Vitals fleet CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::minutes(5);
        params.not_after = now + Duration::days(days);
        let cert = params.self_signed(&key)?;
        Ok(Ca {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// Loads the CA of a data directory.
    pub fn load(paths: &PkiPaths) -> Result<Self, PkiError> {
        let cert_pem = read(&paths.ca_cert())?;
        let key_path = paths.ca_key();
        let key = KeyPair::from_pem(&read(&key_path)?).map_err(|e| PkiError::Parse {
            path: key_path.clone(),
            message: format!("not a usable private key: {e}"),
        })?;
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key).map_err(|e| PkiError::Parse {
            path: paths.ca_cert(),
            message: format!("not a usable CA certificate: {e}"),
        })?;
        Ok(Ca { cert_pem, issuer })
    }

    /// Writes the CA to a data directory; refuses to replace an existing one,
    /// since every certificate in the fleet chains to it.
    pub fn save(&self, paths: &PkiPaths) -> Result<(), PkiError> {
        if paths.ca_key().exists() {
            return Err(PkiError::AlreadyExists(paths.ca_key()));
        }
        write_file(&paths.ca_cert(), self.cert_pem.as_bytes(), false)?;
        write_file(
            &paths.ca_key(),
            self.issuer.key().serialize_pem().as_bytes(),
            true,
        )
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate's SHA-256 fingerprint.
    pub fn fingerprint(&self) -> [u8; 32] {
        let der = x509_parser::pem::parse_x509_pem(self.cert_pem.as_bytes())
            .map(|(_, p)| p.contents)
            .unwrap_or_default();
        fingerprint(&der)
    }

    /// Signs a request for a key made elsewhere (a desk, a specialist's
    /// laptop) as a client certificate for `identity`, whatever else the
    /// request asks for: only the key is taken from it. The request's
    /// signature must hold, its key must be ECDSA P-256 or Ed25519, and any
    /// identity it names must be `identity`.
    pub fn sign_csr(
        &self,
        csr_pem: &str,
        identity: &Identity,
        lifetime: std::time::Duration,
    ) -> Result<Signed, CsrError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| CsrError::Invalid(e.to_string()))?;
        let alg = csr.public_key.algorithm();
        if alg != &rcgen::PKCS_ECDSA_P256_SHA256 && alg != &rcgen::PKCS_ED25519 {
            return Err(CsrError::KeyType(format!("{alg:?}")));
        }
        let asked: Vec<&str> = csr
            .params
            .subject_alt_names
            .iter()
            .filter_map(|s| match s {
                SanType::URI(u) => Some(u.as_str()),
                _ => None,
            })
            .collect();
        if !asked.is_empty() {
            let wanted = identity.san_uris();
            if asked.iter().any(|u| !wanted.iter().any(|w| w == u)) {
                return Err(CsrError::OtherIdentity {
                    asked: asked.join(", "),
                    issued: identity.to_string(),
                });
            }
        }
        let now = OffsetDateTime::now_utc();
        let lifetime = Duration::try_from(lifetime).unwrap_or(Duration::days(7));
        let mut params = client_params(identity)?;
        let (serial, serial_hex) = new_serial().map_err(|_| CsrError::Invalid("random".into()))?;
        params.serial_number = Some(serial);
        // Back-dated for clocks a little behind ours, by at most a tenth
        // of the lifetime, so "two thirds in" stays two thirds of it.
        params.not_before = now - (lifetime / 10i32).min(Duration::minutes(5));
        params.not_after = now + lifetime;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        let signed = CertificateSigningRequestParams {
            params,
            public_key: csr.public_key,
        }
        .signed_by(&self.issuer)?;
        Ok(Signed {
            cert_pem: signed.pem(),
            serial: serial_hex,
            not_after_ms: ms(now + lifetime),
        })
    }

    /// The revocation list of these serials (hex) with when they were
    /// revoked, valid for a day.
    pub fn crl_pem(&self, revoked: &[(String, i64)], number: u64) -> Result<String, PkiError> {
        let now = OffsetDateTime::now_utc();
        let revoked_certs = revoked
            .iter()
            .filter_map(|(serial, at_ms)| {
                Some(RevokedCertParams {
                    serial_number: SerialNumber::from_slice(&unhex(serial)?),
                    revocation_time: OffsetDateTime::from_unix_timestamp(at_ms / 1000).ok()?,
                    reason_code: None,
                    invalidity_date: None,
                })
            })
            .collect();
        let crl = CertificateRevocationListParams {
            this_update: now,
            next_update: now + Duration::days(1),
            crl_number: SerialNumber::from(number),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: KeyIdMethod::Sha256,
        }
        .signed_by(&self.issuer)?;
        Ok(crl.pem()?)
    }

    /// A server certificate for the collector, naming each host (DNS name or
    /// IP address).
    pub fn issue_server(&self, hosts: &[String], days: i64) -> Result<Leaf, PkiError> {
        let mut params = CertificateParams::new(hosts.to_vec())?;
        params.distinguished_name = name("vitals-collector");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(params, days_from_now(days))
    }

    /// A client certificate for an agent or a specialist.
    pub fn issue_client(&self, identity: &Identity, days: i64) -> Result<Leaf, PkiError> {
        self.issue_client_valid(identity, days_from_now(days))
    }

    /// A client certificate valid over exactly `validity` (tests use this for
    /// expired certificates).
    pub fn issue_client_valid(
        &self,
        identity: &Identity,
        validity: (OffsetDateTime, OffsetDateTime),
    ) -> Result<Leaf, PkiError> {
        self.sign(client_params(identity)?, validity)
    }

    fn sign(
        &self,
        mut params: CertificateParams,
        (not_before, not_after): (OffsetDateTime, OffsetDateTime),
    ) -> Result<Leaf, PkiError> {
        let (serial, serial_hex) = new_serial()?;
        params.serial_number = Some(serial);
        params.not_before = not_before;
        params.not_after = not_after;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            serial: serial_hex,
            not_after_ms: ms(not_after),
        })
    }
}

/// A client certificate's names: its identity as common name and URI SANs.
fn client_params(identity: &Identity) -> Result<CertificateParams, rcgen::Error> {
    let mut params = CertificateParams::default();
    let common_name = match identity {
        Identity::Endpoint(id) => id.to_string(),
        Identity::Specialist { name, .. } => name.clone(),
    };
    params.distinguished_name = name(&common_name);
    for uri in identity.san_uris() {
        params.subject_alt_names.push(SanType::URI(uri.try_into()?));
    }
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    Ok(params)
}

/// Creates the fleet CA and the collector's server certificate in a data
/// directory. Fails if a CA is already there.
pub fn init(data_dir: &Path, hosts: &[String]) -> Result<Ca, PkiError> {
    let paths = PkiPaths::new(data_dir);
    if paths.ca_key().exists() {
        return Err(PkiError::AlreadyExists(paths.ca_key()));
    }
    let ca = Ca::generate(CA_DAYS)?;
    ca.save(&paths)?;
    ca.issue_server(hosts, SERVER_DAYS)?
        .write(&paths.server_cert(), &paths.server_key())?;
    Ok(ca)
}

/// The DNS names and IP addresses a server certificate is for.
pub fn server_hosts(cert: &Path) -> Result<Vec<String>, PkiError> {
    let pem = read(cert)?;
    let parse_err = |message: String| PkiError::Parse {
        path: cert.to_path_buf(),
        message,
    };
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .map_err(|e| parse_err(format!("not PEM: {e}")))?;
    let cert = pem
        .parse_x509()
        .map_err(|e| parse_err(format!("not a certificate: {e}")))?;
    let mut hosts = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                x509_parser::extensions::GeneralName::DNSName(d) => hosts.push((*d).to_owned()),
                x509_parser::extensions::GeneralName::IPAddress(ip) => match ip.len() {
                    4 => {
                        hosts.push(std::net::Ipv4Addr::new(ip[0], ip[1], ip[2], ip[3]).to_string())
                    }
                    16 => {
                        let b: [u8; 16] = (*ip).try_into().unwrap_or([0; 16]);
                        hosts.push(std::net::Ipv6Addr::from(b).to_string())
                    }
                    _ => {}
                },
                _ => {}
            }
        }
    }
    Ok(hosts)
}

/// Replaces the collector's server certificate and key, signed by the
/// fleet CA, for `hosts` (the current certificate's names when empty).
/// The key is written first, then the certificate, each whole.
pub fn rotate_server(
    paths: &PkiPaths,
    hosts: &[String],
    days: i64,
) -> Result<Vec<String>, PkiError> {
    let ca = Ca::load(paths)?;
    let hosts = if hosts.is_empty() {
        server_hosts(&paths.server_cert())?
    } else {
        hosts.to_vec()
    };
    let leaf = ca.issue_server(&hosts, days)?;
    replace_file(&paths.server_key(), leaf.key_pem.as_bytes(), true)?;
    replace_file(&paths.server_cert(), leaf.cert_pem.as_bytes(), false)?;
    Ok(hosts)
}

/// Writes a file whole: beside it first, then renamed over it, so a reader
/// (the running collector) never sees half of it.
fn replace_file(path: &Path, bytes: &[u8], private: bool) -> Result<(), PkiError> {
    vitals_proto::files::replace(path, bytes, private).map_err(|source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// The first PEM block of a text (the signing CA of `ca.pem`).
fn first_pem(text: &str) -> &str {
    const END: &str = "-----END CERTIFICATE-----";
    match text.find(END) {
        Some(i) => &text[..i + END.len()],
        None => text,
    }
}

/// Where a CA rollover stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RolloverStep {
    /// A next CA exists and is trusted beside the current one; agents
    /// receive both in their welcome and renewals. Nothing is signed by it.
    Started,
    /// The next CA signs (the server certificate and every new client
    /// certificate); the old one is still trusted.
    Finished,
    /// Only the new CA is trusted.
    Retired,
}

/// Step one of a CA rollover: a next CA, trusted from now on.
pub fn rollover_start(paths: &PkiPaths) -> Result<(), PkiError> {
    if paths.ca_next_key().exists() {
        return Err(PkiError::Parse {
            path: paths.ca_next_key(),
            message: "a rollover is already under way: finish it first".into(),
        });
    }
    let next = Ca::generate(CA_DAYS)?;
    replace_file(
        &paths.ca_next_key(),
        next.issuer.key().serialize_pem().as_bytes(),
        true,
    )?;
    replace_file(&paths.ca_next_cert(), next.cert_pem.as_bytes(), false)
}

/// Step two: the next CA signs from now on (the server certificate is
/// re-issued by it); the old one stays trusted for the certificates it
/// signed, until `rollover_retire`. The old key is kept aside.
pub fn rollover_finish(paths: &PkiPaths) -> Result<(), PkiError> {
    let next_cert = read(&paths.ca_next_cert())?;
    let next_key = read(&paths.ca_next_key())?;
    let old_cert = read(&paths.ca_cert())?;
    let old_key = read(&paths.ca_key())?;
    let stamp = OffsetDateTime::now_utc().unix_timestamp();
    replace_file(
        &paths.dir.join(format!("ca-retired-{stamp}.key")),
        old_key.as_bytes(),
        true,
    )?;
    let bundle = format!(
        "{}
{}
",
        first_pem(&next_cert).trim(),
        first_pem(&old_cert).trim()
    );
    replace_file(&paths.ca_key(), next_key.as_bytes(), true)?;
    replace_file(&paths.ca_cert(), bundle.as_bytes(), false)?;
    for p in [paths.ca_next_cert(), paths.ca_next_key()] {
        std::fs::remove_file(&p).map_err(|source| PkiError::Io { path: p, source })?;
    }
    rotate_server(paths, &[], SERVER_DAYS)?;
    Ok(())
}

/// Step three: only the new CA is trusted; certificates the old one signed
/// are refused from the next handshake on.
pub fn rollover_retire(paths: &PkiPaths) -> Result<(), PkiError> {
    let bundle = read(&paths.ca_cert())?;
    let first = format!(
        "{}
",
        first_pem(&bundle).trim()
    );
    if first.trim() == bundle.trim() {
        return Err(PkiError::Parse {
            path: paths.ca_cert(),
            message: "only one CA is trusted: nothing to retire".into(),
        });
    }
    replace_file(&paths.ca_cert(), first.as_bytes(), false)
}

/// Days of validity left on the first certificate of a PEM file, or `None`
/// if it cannot be read.
pub fn days_left(cert: &Path) -> Option<i64> {
    let pem = std::fs::read(cert).ok()?;
    let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).ok()?;
    let cert = pem.parse_x509().ok()?;
    let not_after = cert.validity().not_after.timestamp();
    Some((not_after - OffsetDateTime::now_utc().unix_timestamp()) / 86_400)
}

fn days_from_now(days: i64) -> (OffsetDateTime, OffsetDateTime) {
    let now = OffsetDateTime::now_utc();
    (now - Duration::minutes(5), now + Duration::days(days))
}

fn name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Vitals");
    dn.push(DnType::CommonName, common_name);
    dn
}

fn read(path: &Path) -> Result<String, PkiError> {
    std::fs::read_to_string(path).map_err(|source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes a file, creating its folder; private files get mode 0600 from
/// the moment they exist, so a key is never readable by others even briefly.
fn write_file(path: &Path, bytes: &[u8], private: bool) -> Result<(), PkiError> {
    vitals_proto::files::write_synced(path, bytes, private).map_err(|source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_certificates_carry_their_identity() {
        let ca = Ca::generate(1).unwrap();
        let id = Identity::Endpoint("ws-42".parse().unwrap());
        let leaf = ca.issue_client(&id, 1).unwrap();
        let (_, pem) = x509_parser::pem::parse_x509_pem(leaf.cert_pem.as_bytes()).unwrap();
        assert_eq!(Identity::from_cert_der(&pem.contents).unwrap(), id);
    }

    fn csr(uri: Option<&str>, alg: &'static rcgen::SignatureAlgorithm) -> String {
        let key = KeyPair::generate_for(alg).unwrap();
        let mut p = CertificateParams::default();
        if let Some(u) = uri {
            p.subject_alt_names
                .push(SanType::URI(u.try_into().unwrap()));
        }
        p.serialize_request(&key).unwrap().pem().unwrap()
    }

    #[test]
    fn a_request_is_signed_for_the_identity_the_collector_chose_and_only_that() {
        let ca = Ca::generate(1).unwrap();
        let id = Identity::Endpoint("disp-014".parse().unwrap());
        let life = std::time::Duration::from_secs(7 * 86_400);
        // No name asked for, or the same one: signed, the identity ours.
        for uri in [None, Some("urn:vitals:endpoint:disp-014")] {
            let s = ca
                .sign_csr(&csr(uri, &rcgen::PKCS_ECDSA_P256_SHA256), &id, life)
                .unwrap();
            let (_, pem) = x509_parser::pem::parse_x509_pem(s.cert_pem.as_bytes()).unwrap();
            assert_eq!(Identity::from_cert_der(&pem.contents).unwrap(), id);
            let facts = CertFacts::of(&pem.contents).unwrap();
            assert_eq!(facts.serial, s.serial);
            assert_eq!(facts.not_after_ms / 1000, s.not_after_ms / 1000);
            // Back-dated by at most five minutes.
            assert!(s.not_after_ms - facts.not_before_ms <= life.as_millis() as i64 + 301_000);
        }
        // Ed25519 keys are fine too.
        assert!(
            ca.sign_csr(&csr(None, &rcgen::PKCS_ED25519), &id, life)
                .is_ok()
        );
        // Another identity, a specialist role, another key type, junk: refused.
        let other = csr(
            Some("urn:vitals:endpoint:boss"),
            &rcgen::PKCS_ECDSA_P256_SHA256,
        );
        assert!(matches!(
            ca.sign_csr(&other, &id, life),
            Err(CsrError::OtherIdentity { .. })
        ));
        let role = csr(
            Some("urn:vitals:role:admin"),
            &rcgen::PKCS_ECDSA_P256_SHA256,
        );
        assert!(matches!(
            ca.sign_csr(&role, &id, life),
            Err(CsrError::OtherIdentity { .. })
        ));
        let p384 = csr(None, &rcgen::PKCS_ECDSA_P384_SHA384);
        assert!(matches!(
            ca.sign_csr(&p384, &id, life),
            Err(CsrError::KeyType(_))
        ));
        assert!(matches!(
            ca.sign_csr("junk", &id, life),
            Err(CsrError::Invalid(_))
        ));
        // A short lifetime is back-dated by a tenth of it.
        let s = ca
            .sign_csr(
                &csr(None, &rcgen::PKCS_ECDSA_P256_SHA256),
                &id,
                std::time::Duration::from_secs(10),
            )
            .unwrap();
        let (_, pem) = x509_parser::pem::parse_x509_pem(s.cert_pem.as_bytes()).unwrap();
        let f = CertFacts::of(&pem.contents).unwrap();
        assert!(f.not_after_ms - f.not_before_ms <= 12_000, "{f:?}");
    }

    #[test]
    fn the_crl_lists_revoked_serials_and_a_rollover_keeps_both_cas_until_retired() {
        let ca = Ca::generate(1).unwrap();
        let leaf = ca
            .issue_client(&Identity::Endpoint("ws-1".parse().unwrap()), 1)
            .unwrap();
        let crl = ca
            .crl_pem(&[(leaf.serial.clone(), 1_700_000_000_000)], 7)
            .unwrap();
        let (_, der) = x509_parser::pem::parse_x509_pem(crl.as_bytes()).unwrap();
        let (_, list) = x509_parser::parse_x509_crl(&der.contents).unwrap();
        let serials: Vec<String> = list
            .iter_revoked_certificates()
            .map(|r| hex(trim_zeros(r.raw_serial())))
            .collect();
        assert_eq!(serials, vec![leaf.serial]);

        let dir = std::env::temp_dir().join(format!("vitals-rollover-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        init(&dir, &["localhost".into()]).unwrap();
        let paths = PkiPaths::new(&dir);
        let old = read(&paths.ca_cert()).unwrap();
        rollover_start(&paths).unwrap();
        assert!(rollover_start(&paths).is_err(), "two rollovers at once");
        let next = read(&paths.ca_next_cert()).unwrap();
        rollover_finish(&paths).unwrap();
        let bundle = read(&paths.ca_cert()).unwrap();
        assert!(bundle.starts_with(next.trim()) && bundle.contains(old.trim()));
        assert!(!paths.ca_next_cert().exists() && !paths.ca_next_key().exists());
        // The new CA signs: the server certificate chains to it.
        let signer = Ca::load(&paths).unwrap();
        assert_eq!(signer.fingerprint(), {
            let (_, p) = x509_parser::pem::parse_x509_pem(next.as_bytes()).unwrap();
            fingerprint(&p.contents)
        });
        rollover_retire(&paths).unwrap();
        assert_eq!(read(&paths.ca_cert()).unwrap().trim(), next.trim());
        assert!(rollover_retire(&paths).is_err(), "nothing left to retire");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn init_refuses_to_replace_a_ca_and_keys_are_private() {
        let dir = std::env::temp_dir().join(format!("vitals-pki-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        init(&dir, &["localhost".into()]).unwrap();
        assert!(matches!(
            init(&dir, &["localhost".into()]),
            Err(PkiError::AlreadyExists(_))
        ));
        let paths = PkiPaths::new(&dir);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for key in [paths.ca_key(), paths.server_key()] {
                let mode = std::fs::metadata(&key).unwrap().permissions().mode();
                assert_eq!(mode & 0o777, 0o600, "{}", key.display());
            }
        }
        // The saved CA loads and can still sign.
        let ca = Ca::load(&paths).unwrap();
        let leaf = ca
            .issue_client(
                &Identity::specialist("ana", vitals_proto::identity::Role::Viewer).unwrap(),
                1,
            )
            .unwrap();
        assert!(leaf.cert_pem.contains("BEGIN CERTIFICATE"));
        assert!(days_left(&paths.server_cert()).unwrap() >= SERVER_DAYS - 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
