//! The collector's TLS: TLS 1.3 only, client certificates required and
//! verified against the fleet CA, and the TCP accept loop that hands verified
//! connections, with the peer's identity attached, to the gRPC server.
//!
//! Identity is read once per connection, at the handshake, and travels with
//! the connection as [`ConnInfo`]; services read it from the request
//! extensions. A certificate that chains to the CA but names no Vitals
//! identity is dropped here, before any RPC can run.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tonic::transport::server::Connected;
use tracing::warn;
use vitals_proto::identity::Identity;

use crate::metrics::Metrics;

/// How long a client has to finish the TLS handshake. A peer that connects
/// and sends nothing (or garbage) is dropped after this.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Handshakes in progress at once; more connections wait, not yet
/// accepted, in the kernel's accept queue. High enough that idle or garbage
/// connections cannot take every slot for long (each is dropped after
/// [`HANDSHAKE_TIMEOUT`]); low enough that under a reconnect storm each
/// handshake gets the CPU to finish well inside that timeout. With 4096,
/// 19,000 agents ramping at 1,000/s on two cores had 2,391 handshakes time
/// out: thousands of half-done handshakes shared the CPU and all finished
/// late.
const MAX_HANDSHAKES: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("tls setup: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

/// The ring provider, named explicitly so no other crate's choice of
/// provider can change ours.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads every certificate of a PEM file; an empty file is an error.
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let file_err = |message: String| TlsError::File {
        path: path.to_path_buf(),
        message,
    };
    if !path.exists() {
        return Err(file_err("certificate file not found".into()));
    }
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_err(format!("cannot read certificates: {e}")))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_err(format!("bad PEM: {e}")))?;
    if certs.is_empty() {
        return Err(file_err("no certificate in file".into()));
    }
    Ok(certs)
}

/// Reads the private key of a PEM file.
pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    if !path.exists() {
        return Err(TlsError::File {
            path: path.to_path_buf(),
            message: "key file not found".into(),
        });
    }
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError::File {
        path: path.to_path_buf(),
        message: format!("no usable private key: {e}"),
    })
}

/// The files the gRPC port's TLS is made of.
#[derive(Debug, Clone)]
pub struct ServerFiles {
    /// The CAs client certificates may chain to (the signing CA first).
    pub ca: PathBuf,
    /// During a CA rollover: the next CA, trusted beside the current one.
    pub ca_next: Option<PathBuf>,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl ServerFiles {
    /// Every CA certificate trusted for clients, the signing CA first.
    pub fn trusted(&self) -> Result<Vec<CertificateDer<'static>>, TlsError> {
        let mut certs = read_certs(&self.ca)?;
        if let Some(next) = self.ca_next.as_ref().filter(|p| p.exists()) {
            certs.extend(read_certs(next)?);
        }
        Ok(certs)
    }

    fn verifier(
        &self,
        provider: &Arc<rustls::crypto::CryptoProvider>,
    ) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, TlsError> {
        let mut roots = RootCertStore::empty();
        for c in self.trusted()? {
            roots.add(c).map_err(|e| TlsError::File {
                path: self.ca.clone(),
                message: format!("not a usable CA certificate: {e}"),
            })?;
        }
        Ok(
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .allow_unauthenticated()
                .build()?,
        )
    }

    /// The server's certificate chain with every trusted CA appended, so a
    /// desk enrolling with a CA fingerprint (of the current CA, or of the
    /// old or next one during a rollover) finds the CA it pins; and its key.
    fn certified(
        &self,
        provider: &rustls::crypto::CryptoProvider,
    ) -> Result<Arc<rustls::sign::CertifiedKey>, TlsError> {
        let mut chain = read_certs(&self.cert)?;
        for ca in self.trusted()? {
            if !chain.contains(&ca) {
                chain.push(ca);
            }
        }
        let key = rustls::sign::CertifiedKey::from_der(chain, read_key(&self.key)?, provider)
            .map_err(|e| TlsError::File {
                path: self.key.clone(),
                message: format!("key does not match {}: {e}", self.cert.display()),
            })?;
        Ok(Arc::new(key))
    }

    /// The files holding the CAs clients are told to trust.
    pub fn trust_files(&self) -> Vec<PathBuf> {
        std::iter::once(self.ca.clone())
            .chain(self.ca_next.clone())
            .collect()
    }

    /// Modification times of the files, to notice a rotation.
    fn stamp(&self) -> Vec<Option<std::time::SystemTime>> {
        [
            Some(&self.ca),
            self.ca_next.as_ref(),
            Some(&self.cert),
            Some(&self.key),
        ]
        .into_iter()
        .map(|p| {
            p.and_then(|p| std::fs::metadata(p).ok())
                .and_then(|m| m.modified().ok())
        })
        .collect()
    }
}

/// The server certificate, replaceable while serving.
#[derive(Debug)]
pub struct ServerCert {
    current: std::sync::RwLock<Arc<rustls::sign::CertifiedKey>>,
}

impl ServerCert {
    /// The certificate in use (its chain's leaf first).
    pub fn current(&self) -> Arc<rustls::sign::CertifiedKey> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl rustls::server::ResolvesServerCert for ServerCert {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.current())
    }
}

/// The gRPC port's TLS, with the parts that change while it serves: the
/// server certificate (`pki rotate-server`) and the trusted CAs (a CA
/// rollover). Revocation is checked on every client certificate.
pub struct ServerTls {
    pub config: Arc<rustls::ServerConfig>,
    pub cert: Arc<ServerCert>,
    pub verifier: Arc<crate::revocation::FleetVerifier>,
    pub files: ServerFiles,
}

impl ServerTls {
    /// TLS 1.3 only, HTTP/2 only; a client certificate chaining to the
    /// fleet's CAs, or none (such a client reaches enrollment only).
    pub fn new(
        files: ServerFiles,
        revoked: Arc<crate::revocation::Revoked>,
    ) -> Result<Self, TlsError> {
        let provider = provider();
        let verifier = Arc::new(crate::revocation::FleetVerifier::new(
            files.verifier(&provider)?,
            revoked,
        ));
        let cert = Arc::new(ServerCert {
            current: std::sync::RwLock::new(files.certified(&provider)?),
        });
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier.clone())
            .with_cert_resolver(cert.clone());
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(ServerTls {
            config: Arc::new(config),
            cert,
            verifier,
            files,
        })
    }

    /// Reads the files again: a new server certificate is used from the
    /// next handshake on, new trusted CAs likewise. On an error nothing
    /// changes.
    pub fn reload(&self) -> Result<(), TlsError> {
        let provider = provider();
        let certified = self.files.certified(&provider)?;
        let verifier = self.files.verifier(&provider)?;
        *self.cert.current.write().unwrap_or_else(|p| p.into_inner()) = certified;
        self.verifier.replace(verifier);
        Ok(())
    }

    /// Watches the files and reloads when they change, until shutdown;
    /// `then` runs after each reload.
    pub fn watch(
        self: Arc<Self>,
        mut stop: vitals_proto::shutdown::Shutdown,
        then: impl Fn() + Send + 'static,
    ) {
        tokio::spawn(async move {
            let mut seen = self.files.stamp();
            loop {
                tokio::select! {
                    () = stop.requested() => return,
                    () = tokio::time::sleep(RELOAD_CHECK) => {}
                }
                let now = self.files.stamp();
                if now == seen {
                    continue;
                }
                // Let a writer finish the pair (certificate, key).
                tokio::time::sleep(Duration::from_millis(200)).await;
                seen = self.files.stamp();
                match self.reload() {
                    Ok(()) => {
                        tracing::info!(
                            cert = %self.files.cert.display(),
                            "server certificate and trusted CAs reloaded"
                        );
                        then();
                    }
                    Err(error) => warn!(%error, "not reloaded; the previous certificate stays"),
                }
            }
        });
    }
}

/// How often the TLS files are looked at for a change.
const RELOAD_CHECK: Duration = Duration::from_secs(2);

/// Finishes a server configuration with the certificate chain and key in
/// these files; a key that does not belong to the certificate is named.
fn with_cert(
    builder: rustls::ConfigBuilder<rustls::ServerConfig, rustls::server::WantsServerCert>,
    cert: &Path,
    key: &Path,
) -> Result<rustls::ServerConfig, TlsError> {
    builder
        .with_single_cert(read_certs(cert)?, read_key(key)?)
        .map_err(|e| TlsError::File {
            path: key.to_path_buf(),
            message: format!("key does not match {}: {e}", cert.display()),
        })
}

/// The web console's configuration for browsers: the city's own
/// certificate, no client certificate asked, TLS 1.2 or 1.3, HTTP/1.1.
pub fn browser_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let mut config = with_cert(
        rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth(),
        cert,
        key,
    )?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// What the gRPC services know about the peer of a connection.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub identity: Identity,
    pub remote: SocketAddr,
    /// The client certificate's serial and validity.
    pub cert: crate::pki::CertFacts,
}

/// A TLS connection carrying its peer's identity, or none for a client
/// that presented no certificate (served enrollment only).
pub struct VerifiedConn {
    stream: TlsStream<TcpStream>,
    info: ConnInfo,
    /// One of its address's connections, given back when it closes.
    _source: Option<crate::limits::Slot<std::net::IpAddr>>,
}

/// A client without a fleet certificate: it reaches only enrollment.
pub struct AnonymousConn {
    stream: TlsStream<TcpStream>,
    remote: SocketAddr,
    _slot: tokio::sync::OwnedSemaphorePermit,
    _source: crate::limits::Slot<std::net::IpAddr>,
}

/// What the enrollment service knows about its caller.
#[derive(Debug, Clone, Copy)]
pub struct AnonymousInfo {
    pub remote: SocketAddr,
}

impl Connected for AnonymousConn {
    type ConnectInfo = AnonymousInfo;
    fn connect_info(&self) -> AnonymousInfo {
        AnonymousInfo {
            remote: self.remote,
        }
    }
}

macro_rules! tls_stream_io {
    ($t:ty) => {
        impl AsyncRead for $t {
            fn poll_read(
                mut self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &mut ReadBuf<'_>,
            ) -> Poll<std::io::Result<()>> {
                Pin::new(&mut self.stream).poll_read(cx, buf)
            }
        }

        impl AsyncWrite for $t {
            fn poll_write(
                mut self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &[u8],
            ) -> Poll<std::io::Result<usize>> {
                Pin::new(&mut self.stream).poll_write(cx, buf)
            }
            fn poll_flush(
                mut self: Pin<&mut Self>,
                cx: &mut Context<'_>,
            ) -> Poll<std::io::Result<()>> {
                Pin::new(&mut self.stream).poll_flush(cx)
            }
            fn poll_shutdown(
                mut self: Pin<&mut Self>,
                cx: &mut Context<'_>,
            ) -> Poll<std::io::Result<()>> {
                Pin::new(&mut self.stream).poll_shutdown(cx)
            }
            fn poll_write_vectored(
                mut self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                bufs: &[std::io::IoSlice<'_>],
            ) -> Poll<std::io::Result<usize>> {
                Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
            }
            fn is_write_vectored(&self) -> bool {
                self.stream.is_write_vectored()
            }
        }
    };
}

tls_stream_io!(VerifiedConn);
tls_stream_io!(AnonymousConn);

/// Clients without a certificate connected at once (enrolling desks).
const MAX_ANONYMOUS: usize = 1024;

/// The two kinds of connection the accept loop hands on.
pub struct Incoming {
    pub verified: mpsc::Receiver<Result<VerifiedConn, std::io::Error>>,
    pub anonymous: mpsc::Receiver<Result<AnonymousConn, std::io::Error>>,
}

impl Connected for VerifiedConn {
    type ConnectInfo = ConnInfo;
    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

/// Accepts TCP connections, runs each handshake in its own task under a
/// deadline, and sends verified connections, and those of clients without
/// a certificate, to their channels. Stops accepting once shutdown is
/// requested.
/// What one source address may hold of the accept loop.
#[derive(Debug, Clone, Copy)]
pub struct SourceLimits {
    /// Handshakes in flight.
    pub handshakes: usize,
    /// Connections, from accept to close.
    pub connections: usize,
}

impl From<&crate::config::LimitsConfig> for SourceLimits {
    fn from(l: &crate::config::LimitsConfig) -> Self {
        SourceLimits {
            handshakes: l.handshakes_per_source,
            connections: l.connections_per_source,
        }
    }
}

pub fn accept_loop(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    metrics: Arc<Metrics>,
    mut stop: vitals_proto::shutdown::Shutdown,
    limits: SourceLimits,
    refusals: Arc<crate::gateway::refusals::Refusals>,
) -> Incoming {
    let handshaking = crate::limits::Slots::new(limits.handshakes);
    let connected = crate::limits::Slots::new(limits.connections);
    let (tx, rx) = mpsc::channel(MAX_HANDSHAKES);
    let (anon_tx, anon_rx) = mpsc::channel(64);
    let anonymous_slots = Arc::new(Semaphore::new(MAX_ANONYMOUS));
    let acceptor = TlsAcceptor::from(config);
    let permits = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    tokio::spawn(async move {
        loop {
            // A slot first, then the connection: what cannot be served yet
            // stays in the accept queue, and its handshake clock has not
            // started.
            let permit = tokio::select! {
                () = stop.requested() => break,
                p = permits.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break,
                },
            };
            let accepted = tokio::select! {
                () = stop.requested() => break,
                r = listener.accept() => r,
            };
            let (tcp, remote) = match accepted {
                Ok(x) => x,
                Err(error) => {
                    // Out of file descriptors and the like: back off briefly
                    // rather than spin.
                    warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            // One address cannot hold every handshake slot (a slow or
            // silent client opening hundreds) nor every connection.
            let ip = remote.ip().to_canonical();
            let (Some(handshake_slot), Some(source)) =
                (handshaking.try_hold(&ip), connected.try_hold(&ip))
            else {
                let (why, detail) = if handshaking.held(&ip) >= limits.handshakes {
                    (
                        "handshakes_per_source",
                        format!(
                            "more than {} handshakes at once from {ip}",
                            limits.handshakes
                        ),
                    )
                } else {
                    (
                        "connections_per_source",
                        format!("more than {} connections from {ip}", limits.connections),
                    )
                };
                metrics.handshake_failed(why);
                refusals.refused(&metrics, why, &ip.to_string(), remote, &detail);
                drop(tcp);
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            let anon_tx = anon_tx.clone();
            let anonymous_slots = anonymous_slots.clone();
            let metrics = metrics.clone();
            let refusals = refusals.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let done = handshake(&acceptor, tcp, remote).await;
                drop(handshake_slot);
                match done {
                    Ok(Handshaken::Verified(mut conn)) => {
                        metrics.handshakes.inc();
                        conn._source = Some(source);
                        let _ = tx.send(Ok(conn)).await;
                    }
                    Ok(Handshaken::Anonymous(stream)) => {
                        let Ok(slot) = anonymous_slots.try_acquire_owned() else {
                            metrics.handshake_failed("anonymous_full");
                            refusals.said(
                                "anonymous_full",
                                &ip.to_string(),
                                remote,
                                &"too many clients without a certificate at once",
                            );
                            return;
                        };
                        metrics.handshakes.inc();
                        let conn = AnonymousConn {
                            stream,
                            remote,
                            _slot: slot,
                            _source: source,
                        };
                        let _ = anon_tx.send(Ok(conn)).await;
                    }
                    Err(reason) => {
                        metrics.handshake_failed(reason.kind());
                        let why = match reason {
                            HandshakeError::Timeout => "handshake_timeout",
                            HandshakeError::Tls(_) => "tls",
                            HandshakeError::Identity(_) => "certificate_identity",
                        };
                        refusals.said(why, &ip.to_string(), remote, &reason);
                    }
                }
            });
        }
    });
    Incoming {
        verified: rx,
        anonymous: anon_rx,
    }
}

enum Handshaken {
    Verified(VerifiedConn),
    Anonymous(TlsStream<TcpStream>),
}

#[derive(Debug, thiserror::Error)]
enum HandshakeError {
    #[error("handshake timed out")]
    Timeout,
    #[error("tls: {0}")]
    Tls(std::io::Error),
    #[error("certificate identity: {0}")]
    Identity(vitals_proto::identity::IdentityError),
}

impl HandshakeError {
    fn kind(&self) -> &'static str {
        match self {
            HandshakeError::Timeout => "timeout",
            HandshakeError::Tls(_) => "tls",
            HandshakeError::Identity(_) => "identity",
        }
    }
}

async fn handshake(
    acceptor: &TlsAcceptor,
    tcp: TcpStream,
    remote: SocketAddr,
) -> Result<Handshaken, HandshakeError> {
    let stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp))
        .await
        .map_err(|_| HandshakeError::Timeout)?
        .map_err(HandshakeError::Tls)?;
    let Some(leaf) = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
    else {
        return Ok(Handshaken::Anonymous(stream));
    };
    let identity = Identity::from_cert_der(leaf).map_err(HandshakeError::Identity)?;
    // The verifier parsed it already; a certificate it accepted parses.
    let cert = crate::pki::CertFacts::of(leaf).ok_or(HandshakeError::Identity(
        vitals_proto::identity::IdentityError::NoIdentity,
    ))?;
    Ok(Handshaken::Verified(VerifiedConn {
        stream,
        info: ConnInfo {
            identity,
            remote,
            cert,
        },
        _source: None,
    }))
}
