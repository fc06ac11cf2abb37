//! The specialists' web console, served by the collector on its own
//! listener over the same specialist service layer as the gRPC edge: every
//! role check and query is the service's, the console only renders.
//!
//! - [`accounts`]: local accounts (argon2id passwords, one-time passwords)
//!   and the operator's `vitals-collector users` commands.
//! - [`sessions`]: sign-in state, CSRF tokens and login throttling.
//! - `auth`: the login, logout and password pages, and the extractor that
//!   turns a request's cookie into a signed-in [`Caller`].
//! - `pages`: queue, ticket, fleet, endpoint, audit and admin pages.
//! - `live`: Server-Sent Events (ticket changes, a diagnostic's progress).
//! - `charts`: history charts drawn on the server as SVG.
//!
//! Pages are askama templates (`collector/templates`), compiled into the
//! binary; the only script is the vendored htmx and our own `console.js`,
//! both served from `/static`, so the Content-Security-Policy allows no
//! inline script at all. Every page reads without JavaScript.

pub mod accounts;
mod auth;
mod charts;
mod live;
pub mod oidc;
mod pages;
pub mod sessions;
pub mod totp;
mod view;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::connect_info::Connected;
use axum::http::{HeaderValue, header};
use axum::response::Response;
use axum::routing::{get, post};
use axum::serve::{IncomingStream, Listener};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, warn};

use crate::config::ConsoleConfig;
use crate::service::SpecialistService;
use accounts::Accounts;
use sessions::{Sessions, Throttle};

/// Browser TLS handshakes in flight at once.
const MAX_HANDSHAKES: usize = 256;

/// Everything the console's handlers share.
pub struct Console {
    service: SpecialistService,
    accounts: Accounts,
    sessions: Sessions,
    throttle: Throttle,
    runs: live::Runs,
    /// Browsers reach it over TLS: cookies are `Secure`, HSTS is sent.
    tls: bool,
    /// Live streams end when the collector stops.
    stop: vitals_proto::shutdown::Shutdown,
    /// Every account needs a second factor.
    require_totp: bool,
    /// The last TOTP step each account used.
    replays: totp::Replays,
    /// Single sign-on, when configured.
    oidc: Option<Arc<oidc::Oidc>>,
}

type AppState = Arc<Console>;

impl Console {
    pub fn new(
        service: SpecialistService,
        accounts: Accounts,
        config: &ConsoleConfig,
        oidc: Option<Arc<oidc::Oidc>>,
        stop: vitals_proto::shutdown::Shutdown,
    ) -> Self {
        Console {
            service,
            accounts,
            sessions: Sessions::new(config.idle_timeout),
            throttle: Throttle::new(config.login_attempts, config.login_lockout),
            runs: live::Runs::default(),
            tls: config.tls(),
            stop,
            require_totp: config.require_totp,
            replays: totp::Replays::default(),
            oidc,
        }
    }

    pub fn router(self: Arc<Self>) -> Router {
        let tls = self.tls;
        Router::new()
            .route("/", get(pages::queue))
            .route("/queue/rows", get(pages::queue_rows))
            .route("/tickets/{id}", get(pages::ticket))
            .route("/tickets/{id}/act", post(pages::ticket_act))
            .route("/fleet", get(pages::fleet))
            .route("/endpoints/{id}", get(pages::endpoint))
            .route("/endpoints/{id}/diagnose", post(live::diagnose))
            .route(
                "/endpoints/{id}/credentials",
                post(pages::endpoint_credentials),
            )
            .route("/runs/{token}", get(live::run_events))
            .route("/events/tickets", get(live::ticket_events))
            .route("/audit", get(pages::audit))
            .route("/admin", get(pages::admin))
            .route("/admin/users", post(pages::admin_add))
            .route("/admin/users/{name}", post(pages::admin_change))
            .route("/login", get(auth::login_page).post(auth::login))
            .route("/logout", post(auth::logout))
            .route("/login/totp", get(auth::totp_page).post(auth::totp_login))
            .route("/oidc/start", get(auth::oidc_start))
            .route("/oidc/callback", get(auth::oidc_callback))
            .route("/account/totp", get(auth::enroll_page).post(auth::enroll))
            .route(
                "/account/password",
                get(auth::password_page).post(auth::change_password),
            )
            .route("/static/{file}", get(static_file))
            .fallback(pages::not_found)
            .layer(axum::middleware::map_response(move |r: Response| {
                security_headers(r, tls)
            }))
            .layer(tower_http::compression::CompressionLayer::new())
            .with_state(self)
    }
}

/// Headers on every response: a Content-Security-Policy with no inline
/// script or style, no framing, no sniffing, no caching of pages (they
/// carry a specialist's view of the fleet), HSTS over TLS.
async fn security_headers(mut r: Response, tls: bool) -> Response {
    let h = r.headers_mut();
    let set = |h: &mut axum::http::HeaderMap, k: header::HeaderName, v: &'static str| {
        h.entry(k).or_insert(HeaderValue::from_static(v));
    };
    set(
        h,
        header::CONTENT_SECURITY_POLICY,
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
         connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    );
    set(h, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(h, header::X_FRAME_OPTIONS, "DENY");
    set(h, header::REFERRER_POLICY, "same-origin");
    set(h, header::CACHE_CONTROL, "no-store");
    if tls {
        set(h, header::STRICT_TRANSPORT_SECURITY, "max-age=31536000");
    }
    r
}

/// The vendored htmx, our script and our style sheet, compiled in.
async fn static_file(axum::extract::Path(file): axum::extract::Path<String>) -> Response {
    let (body, kind): (&'static str, &'static str) = match file.as_str() {
        "htmx.min.js" => (
            include_str!("../../assets/htmx.min.js"),
            "text/javascript; charset=utf-8",
        ),
        "console.js" => (
            include_str!("../../assets/console.js"),
            "text/javascript; charset=utf-8",
        ),
        "console.css" => (
            include_str!("../../assets/console.css"),
            "text/css; charset=utf-8",
        ),
        _ => return pages::not_found().await,
    };
    let mut r = Response::new(body.into());
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=3600"),
    );
    r
}

/// A browser connection, plain or TLS.
trait Conn: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Conn for T {}

/// The console's listener as axum sees it: connections arrive ready (TLS
/// handshakes done in their own tasks, so a slow browser holds up no one).
struct Browsers {
    local: SocketAddr,
    rx: mpsc::Receiver<(Box<dyn Conn>, SocketAddr)>,
}

impl Listener for Browsers {
    type Io = Box<dyn Conn>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(c) => c,
            // The accept loop has stopped: no more connections, ever.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

/// The browser's address, for login throttling and the log.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

impl Connected<IncomingStream<'_, Browsers>> for Peer {
    fn connect_info(s: IncomingStream<'_, Browsers>) -> Self {
        Peer(*s.remote_addr())
    }
}

/// Serves the console on `listener` until `shutdown` completes; over TLS
/// when `tls` is given.
pub async fn serve(
    console: Arc<Console>,
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let local = listener.local_addr()?;
    let (tx, rx) = mpsc::channel(MAX_HANDSHAKES);
    let acceptor = tls.map(TlsAcceptor::from);
    let accept = tokio::spawn(async move {
        let permits = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
        loop {
            let (tcp, remote) = match listener.accept().await {
                Ok(x) => x,
                Err(error) => {
                    warn!(%error, "console accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let Some(acceptor) = acceptor.clone() else {
                if tx
                    .send((Box::new(tcp) as Box<dyn Conn>, remote))
                    .await
                    .is_err()
                {
                    break;
                }
                continue;
            };
            let Ok(permit) = permits.clone().acquire_owned().await else {
                break;
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                let _permit = permit;
                match tokio::time::timeout(crate::tls::HANDSHAKE_TIMEOUT, acceptor.accept(tcp))
                    .await
                {
                    Ok(Ok(s)) => {
                        let _ = tx.send((Box::new(s) as Box<dyn Conn>, remote)).await;
                    }
                    Ok(Err(error)) => debug!(%remote, %error, "console TLS handshake failed"),
                    Err(_) => debug!(%remote, "console TLS handshake timed out"),
                }
            });
        }
    });
    let app = console
        .router()
        .into_make_service_with_connect_info::<Peer>();
    let served = axum::serve(Browsers { local, rx }, app)
        .with_graceful_shutdown(shutdown)
        .await;
    accept.abort();
    served
}
