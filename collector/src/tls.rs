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
use tracing::{debug, warn};
use vitals_proto::identity::Identity;

use crate::metrics::Metrics;

/// How long a client has to finish the TLS handshake. A peer that connects
/// and sends nothing (or garbage) is dropped after this.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Handshakes in progress at once; more wait in the kernel's backlog. High
/// enough that idle or garbage connections cannot take every slot (each
/// costs a socket and a few KiB), low enough to bound memory under a flood.
const MAX_HANDSHAKES: usize = 4096;

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

/// The server configuration: TLS 1.3 only, HTTP/2 only, and a client
/// certificate chaining to the fleet CA required on every connection.
pub fn server_config(
    ca: &Path,
    cert: &Path,
    key: &Path,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = provider();
    let mut roots = RootCertStore::empty();
    for c in read_certs(ca)? {
        roots.add(c).map_err(|e| TlsError::File {
            path: ca.to_path_buf(),
            message: format!("not a usable CA certificate: {e}"),
        })?;
    }
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone()).build()?;
    let mut config = with_cert(
        rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier),
        cert,
        key,
    )?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

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
}

/// A verified TLS connection carrying its peer's identity.
pub struct VerifiedConn {
    stream: TlsStream<TcpStream>,
    info: ConnInfo,
}

impl Connected for VerifiedConn {
    type ConnectInfo = ConnInfo;
    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

impl AsyncRead for VerifiedConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for VerifiedConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
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

/// Accepts TCP connections, runs each handshake in its own task under a
/// deadline, and sends verified connections to the returned channel. Stops
/// accepting once shutdown is requested.
pub fn accept_loop(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    metrics: Arc<Metrics>,
    mut stop: vitals_proto::shutdown::Shutdown,
) -> mpsc::Receiver<Result<VerifiedConn, std::io::Error>> {
    let (tx, rx) = mpsc::channel(MAX_HANDSHAKES);
    let acceptor = TlsAcceptor::from(config);
    let permits = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    tokio::spawn(async move {
        loop {
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
            let _ = tcp.set_nodelay(true);
            let Ok(permit) = permits.clone().acquire_owned().await else {
                break;
            };
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            let metrics = metrics.clone();
            tokio::spawn(async move {
                let _permit = permit;
                match handshake(&acceptor, tcp, remote).await {
                    Ok(conn) => {
                        metrics.handshakes.inc();
                        let _ = tx.send(Ok(conn)).await;
                    }
                    Err(reason) => {
                        metrics.handshake_failed(reason.kind());
                        debug!(%remote, error = %reason, "connection refused");
                    }
                }
            });
        }
    });
    rx
}

#[derive(Debug, thiserror::Error)]
enum HandshakeError {
    #[error("handshake timed out")]
    Timeout,
    #[error("tls: {0}")]
    Tls(std::io::Error),
    #[error("no client certificate")]
    NoCertificate,
    #[error("certificate identity: {0}")]
    Identity(vitals_proto::identity::IdentityError),
}

impl HandshakeError {
    fn kind(&self) -> &'static str {
        match self {
            HandshakeError::Timeout => "timeout",
            HandshakeError::Tls(_) => "tls",
            HandshakeError::NoCertificate => "no_certificate",
            HandshakeError::Identity(_) => "identity",
        }
    }
}

async fn handshake(
    acceptor: &TlsAcceptor,
    tcp: TcpStream,
    remote: SocketAddr,
) -> Result<VerifiedConn, HandshakeError> {
    let stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp))
        .await
        .map_err(|_| HandshakeError::Timeout)?
        .map_err(HandshakeError::Tls)?;
    let leaf = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or(HandshakeError::NoCertificate)?;
    let identity = Identity::from_cert_der(leaf).map_err(HandshakeError::Identity)?;
    Ok(VerifiedConn {
        stream,
        info: ConnInfo { identity, remote },
    })
}
