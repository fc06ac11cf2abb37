//! Joining the fleet (`vitals-agent enroll`) and renewing a certificate
//! that expired while the desk was away: the collector's `Enrollment`
//! service, reached without a fleet certificate.
//!
//! On first contact the desk may know the fleet CA only by the SHA-256
//! fingerprint its token carries: it reads the chain the collector
//! presents, keeps the certificate with that fingerprint, and from then on
//! verifies the collector against it like any other connection.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use rcgen::SigningKey;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::{DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use sha2::Digest;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use vitals_proto::identity::{EndpointId, Identity};
use vitals_proto::wire;
use vitals_proto::wire::enrollment_client::EnrollmentClient;

use super::credentials::{CredentialError, Credentials, NewKey};
use vitals_proto::error_chain as chain;

/// What the proof of an expired key signs, before the new request's PEM.
pub const RENEW_PROOF_PREFIX: &[u8] = b"vitals-renew-v1\n";

#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    #[error("the token: {0}")]
    Token(String),
    #[error("{0}")]
    Collector(String),
    #[error("the collector refused: {}", .0.message())]
    Refused(tonic::Status),
    #[error(
        "the collector at {url} presents no CA certificate with the token's fingerprint {fingerprint}: \
         it is not this fleet's collector, or the token is not for it"
    )]
    NotPinned { url: String, fingerprint: String },
    #[error(transparent)]
    Credentials(#[from] CredentialError),
}

/// An enrollment token as a desk reads it: `<id>.<secret>[.<ca>]`.
#[derive(Debug, Clone)]
pub struct Token {
    /// What goes up: `<id>.<secret>`.
    pub credential: String,
    /// The fleet CA's SHA-256 fingerprint, if the token carries it.
    pub ca: Option<[u8; 32]>,
}

impl Token {
    pub fn parse(text: &str) -> Result<Token, EnrollError> {
        let parts: Vec<&str> = text.trim().split('.').collect();
        let ok = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        if !(2..=3).contains(&parts.len()) || !parts.iter().all(|p| ok(p)) {
            return Err(EnrollError::Token(
                "expected ID.SECRET or ID.SECRET.CA-FINGERPRINT, as `vitals-collector tokens create` prints it"
                    .into(),
            ));
        }
        let ca = match parts.get(2) {
            None => None,
            Some(f) => Some(
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(f)
                    .ok()
                    .and_then(|b| <[u8; 32]>::try_from(b).ok())
                    .ok_or_else(|| EnrollError::Token("its CA fingerprint is damaged".into()))?,
            ),
        };
        Ok(Token {
            credential: format!("{}.{}", parts[0], parts[1]),
            ca,
        })
    }
}

/// Reads a `sha256:<hex>` fingerprint.
pub fn parse_ca_hash(text: &str) -> Result<[u8; 32], EnrollError> {
    let hex = text.trim().strip_prefix("sha256:").unwrap_or(text.trim());
    let bytes: Option<Vec<u8>> = (0..hex.len())
        .step_by(2)
        .map(|i| {
            hex.get(i..i + 2)
                .and_then(|b| u8::from_str_radix(b, 16).ok())
        })
        .collect();
    bytes
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .ok_or_else(|| {
            EnrollError::Token(format!("--ca-hash {text}: expected sha256:<64 hex digits>"))
        })
}

/// Accepts whatever the collector presents: used only to read its chain
/// for the pinned CA, never to send anything.
#[derive(Debug)]
struct ReadChain(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for ReadChain {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn host_port(url: &str) -> Result<(String, u16), EnrollError> {
    let rest = url
        .strip_prefix("https://")
        .ok_or_else(|| EnrollError::Collector(format!("{url}: must be https://HOST:PORT")))?;
    let rest = rest.trim_end_matches('/');
    let (host, port) = rest
        .rsplit_once(':')
        .ok_or_else(|| EnrollError::Collector(format!("{url}: no port")))?;
    let port = port
        .parse()
        .map_err(|_| EnrollError::Collector(format!("{url}: bad port")))?;
    Ok((host.trim_matches(['[', ']']).to_owned(), port))
}

/// The CA certificate (PEM) the collector at `url` presents whose SHA-256
/// is `fingerprint`.
pub async fn pinned_ca(url: &str, fingerprint: [u8; 32]) -> Result<String, EnrollError> {
    let (host, port) = host_port(url)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| EnrollError::Collector(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ReadChain(provider)))
        .with_no_client_auth();
    let name = ServerName::try_from(host.clone())
        .map_err(|_| EnrollError::Collector(format!("{url}: bad host name")))?;
    let connect = async {
        let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
        tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
    };
    let tls = tokio::time::timeout(Duration::from_secs(15), connect)
        .await
        .map_err(|_| EnrollError::Collector(format!("{url}: no answer within 15 s")))?
        .map_err(|e| EnrollError::Collector(format!("{url}: {e}")))?;
    let chain = tls.get_ref().1.peer_certificates().unwrap_or(&[]).to_vec();
    chain
        .iter()
        .find(|c| sha2::Sha256::digest(c.as_ref()).as_slice() == fingerprint)
        .map(|c| pem("CERTIFICATE", c.as_ref()))
        .ok_or_else(|| EnrollError::NotPinned {
            url: url.to_owned(),
            fingerprint: format!("sha256:{}", hex(&fingerprint)),
        })
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// A channel to the collector trusting `ca_pem`, without a client
/// certificate: the collector serves it enrollment only.
async fn anonymous(url: &str, server_name: &str, ca_pem: &[u8]) -> Result<Channel, EnrollError> {
    let tls = ClientTlsConfig::new()
        .domain_name(server_name)
        .ca_certificate(Certificate::from_pem(ca_pem));
    Endpoint::from_shared(url.to_owned())
        .map_err(|e| EnrollError::Collector(format!("{url}: {}", chain(&e))))?
        .tls_config(tls)
        .map_err(|e| EnrollError::Collector(chain(&e)))?
        .connect_timeout(Duration::from_secs(15))
        .timeout(Duration::from_secs(30))
        .connect()
        .await
        .map_err(|e| EnrollError::Collector(format!("{url}: {}", chain(&e))))
}

/// What enrollment gave the desk.
#[derive(Debug, Clone)]
pub struct Enrolled {
    pub endpoint_id: String,
    pub cert_pem: String,
    pub key_pem: String,
    pub trust_bundle_pem: String,
    pub not_after_ms: i64,
    pub site: String,
    pub tags: Vec<String>,
}

/// Asks the collector for a certificate with a token; the key is made
/// here and only its signing request goes up.
pub async fn enroll(
    url: &str,
    server_name: &str,
    ca_pem: &[u8],
    token: &Token,
    id: &EndpointId,
    machine_id: &str,
) -> Result<Enrolled, EnrollError> {
    let channel = anonymous(url, server_name, ca_pem).await?;
    let new = NewKey::generate(&Identity::Endpoint(id.clone()))?;
    let issued = EnrollmentClient::new(channel)
        .enroll(wire::EnrollRequest {
            token: token.credential.clone(),
            csr_pem: new.csr_pem.clone(),
            endpoint_id: id.to_string(),
            hostname: sysinfo::System::host_name().unwrap_or_default(),
            machine_id: machine_id.to_owned(),
        })
        .await
        .map_err(EnrollError::Refused)?
        .into_inner();
    Ok(Enrolled {
        endpoint_id: issued.endpoint_id,
        cert_pem: issued.certificate_pem,
        key_pem: new.key.serialize_pem(),
        trust_bundle_pem: issued.trust_bundle_pem,
        not_after_ms: issued.not_after_ms,
        site: issued.site,
        tags: issued.tags,
    })
}

/// Renews a certificate that expired while the desk was away, proving it
/// holds the old key; on success the credentials hold the new pair.
pub async fn renew_expired(
    url: &str,
    server_name: &str,
    credentials: &mut Credentials,
    endpoint: &EndpointId,
    machine_id: &str,
) -> Result<i64, EnrollError> {
    let channel = anonymous(url, server_name, &credentials.ca_pem).await?;
    let old = credentials.key()?;
    let new = NewKey::generate(&Identity::Endpoint(endpoint.clone()))?;
    let mut message = RENEW_PROOF_PREFIX.to_vec();
    message.extend_from_slice(new.csr_pem.as_bytes());
    let signature = old.sign(&message).map_err(CredentialError::Key)?;
    let issued = EnrollmentClient::new(channel)
        .renew_expired(wire::RenewExpiredRequest {
            certificate_pem: String::from_utf8_lossy(&credentials.cert_pem).into_owned(),
            csr_pem: new.csr_pem.clone(),
            signature,
            machine_id: machine_id.to_owned(),
        })
        .await
        .map_err(EnrollError::Refused)?
        .into_inner();
    credentials.replace(&new.key, &issued.certificate_pem)?;
    if let Err(error) = credentials.trust(&issued.trust_bundle_pem) {
        tracing::warn!(%error, "trust bundle not taken");
    }
    Ok(issued.not_after_ms)
}
