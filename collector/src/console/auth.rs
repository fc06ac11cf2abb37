//! Signing in and out, changing a password, and the extractor every other
//! page uses to find who is asking.
//!
//! A session is a random id in an `HttpOnly`, `SameSite=Strict` cookie
//! (`Secure` and `__Host-` prefixed over TLS), replaced at every login.
//! The login form itself is protected by a double-submit token: a short-
//! lived cookie whose value the form must repeat.

use std::collections::BTreeMap;
use std::time::Instant;

use askama::Template;
use axum::Form;
use axum::extract::{ConnectInfo, FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;
use tracing::info;
use vitals_proto::identity::Role;

use super::accounts::{AccountError, Check};
use super::sessions::{self, Session};
use super::view::query_value;
use super::{AppState, Console, Peer};
use crate::service::{Caller, ServiceError};

const LOGIN_COOKIE: &str = "vitals_login";

impl Console {
    fn session_cookie(&self) -> &'static str {
        if self.tls {
            "__Host-vitals_session"
        } else {
            "vitals_session"
        }
    }

    fn cookie(&self, name: &str, value: &str, max_age: Option<u64>) -> HeaderValue {
        let mut c = format!("{name}={value}; Path=/; HttpOnly; SameSite=Strict");
        if self.tls {
            c.push_str("; Secure");
        }
        if let Some(s) = max_age {
            c.push_str(&format!("; Max-Age={s}"));
        }
        HeaderValue::from_str(&c).expect("cookie text is ASCII")
    }

    /// If sign-ins for `name` from `peer` are paused (too many failures),
    /// audits the refusal and says for how long.
    async fn paused(&self, who: &Caller, name: &str, peer: std::net::SocketAddr) -> Option<String> {
        let wait = self.throttle.wait(name, peer.ip(), Instant::now())?;
        let minutes = wait.as_secs().div_ceil(60);
        self.audit(who, "console.login", origin(peer), "refused", "throttled")
            .await;
        Some(format!(
            "Too many failed sign-ins. Try again in {minutes} minute{}.",
            if minutes == 1 { "" } else { "s" }
        ))
    }

    /// Appends an audit line for a console action of `who`.
    pub(super) async fn audit(
        &self,
        who: &Caller,
        kind: &str,
        params: BTreeMap<String, String>,
        outcome: &str,
        detail: &str,
    ) {
        self.service
            .record(who, kind, "", params, None, outcome, detail)
            .await;
    }
}

/// A cookie's value from the request's headers.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// The audit parameters of a sign-in attempt: where it came from.
fn origin(peer: std::net::SocketAddr) -> BTreeMap<String, String> {
    [("from".to_owned(), peer.ip().to_string())].into()
}

/// Where to go after signing in: only a path on this site.
fn safe_next(next: &str) -> &str {
    if next.starts_with('/') && !next.starts_with("//") && !next.contains('\\') {
        next
    } else {
        "/"
    }
}

/// A signed-in person, with their session.
#[derive(Clone)]
pub struct User {
    pub id: String,
    pub session: Session,
}

impl User {
    pub fn caller(&self) -> Caller {
        Caller {
            name: self.session.account.clone(),
            role: self.session.role,
            sites: self.session.sites.clone(),
        }
    }

    /// Refuses a state-changing request whose form lacks the session's
    /// CSRF token.
    pub fn check_csrf(&self, token: &str) -> Result<(), PageError> {
        if sessions::same_token(token, &self.session.csrf) {
            Ok(())
        } else {
            Err(PageError::Csrf)
        }
    }
}

/// Not signed in (or the session ended): to the login page, then back.
/// An htmx or event-stream request gets 401 and, for htmx, a redirect the
/// page follows as a whole.
fn to_login(parts: &Parts) -> Response {
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let htmx = parts.headers.contains_key("hx-request");
    let stream = parts
        .headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"));
    if htmx || stream {
        let back = parts
            .headers
            .get("hx-current-url")
            .and_then(|v| v.to_str().ok())
            .and_then(|u| {
                u.find("://")
                    .and_then(|i| u[i + 3..].find('/').map(|j| &u[i + 3 + j..]))
            })
            .unwrap_or("/");
        let mut r = (StatusCode::UNAUTHORIZED, "signed out").into_response();
        if let Ok(v) = HeaderValue::from_str(&format!("/login?next={}", query_value(back))) {
            r.headers_mut().insert("hx-redirect", v);
        }
        return r;
    }
    let next = if parts.method == axum::http::Method::GET {
        path
    } else {
        "/"
    };
    Redirect::to(&format!("/login?next={}", query_value(next))).into_response()
}

impl FromRequestParts<AppState> for User {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, c: &AppState) -> Result<Self, Response> {
        let Some(id) = cookie(&parts.headers, c.session_cookie()) else {
            return Err(to_login(parts));
        };
        let Some(session) = c.sessions.get(id, Instant::now()) else {
            return Err(to_login(parts));
        };
        // A session part-way through signing in reaches only the page of
        // its next step (and sign-out).
        let path = parts.uri.path();
        let next_step = if session.second_factor_due {
            Some("/login/totp")
        } else if session.must_change_password {
            Some("/account/password")
        } else if session.enroll_due {
            Some("/account/totp")
        } else {
            None
        };
        if let Some(step) = next_step
            && path != step
            && path != "/logout"
        {
            let back = parts
                .uri
                .path_and_query()
                .map(|p| p.as_str())
                .unwrap_or("/");
            let back = if parts.method == axum::http::Method::GET {
                back
            } else {
                "/"
            };
            return Err(Redirect::to(&format!("{step}?next={}", query_value(back))).into_response());
        }
        Ok(User {
            id: id.to_owned(),
            session,
        })
    }
}

/// Something a person can act on, shown as a page with the right status.
#[derive(Debug)]
pub enum PageError {
    Service(ServiceError),
    Account(AccountError),
    Oidc(super::oidc::OidcError),
    Csrf,
    BadRequest(String),
}

impl From<ServiceError> for PageError {
    fn from(e: ServiceError) -> Self {
        PageError::Service(e)
    }
}

impl From<AccountError> for PageError {
    fn from(e: AccountError) -> Self {
        PageError::Account(e)
    }
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage {
    status: u16,
    heading: &'static str,
    message: String,
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let (status, heading, message) = match self {
            PageError::Service(e) => match &e {
                ServiceError::Forbidden { .. } => {
                    (StatusCode::FORBIDDEN, "Not allowed", e.to_string())
                }
                ServiceError::NotFound(_) => (StatusCode::NOT_FOUND, "Not found", e.to_string()),
                ServiceError::OutOfScope(_) => {
                    (StatusCode::FORBIDDEN, "Not in your sites", e.to_string())
                }
                ServiceError::InvalidArgument(_) => {
                    (StatusCode::BAD_REQUEST, "Cannot do that", e.to_string())
                }
                ServiceError::Offline(_) => {
                    (StatusCode::CONFLICT, "Endpoint offline", e.to_string())
                }
                ServiceError::DeadlineExceeded(_) | ServiceError::Aborted(_) => {
                    (StatusCode::GATEWAY_TIMEOUT, "No result", e.to_string())
                }
                ServiceError::Busy(_) => (
                    StatusCode::TOO_MANY_REQUESTS,
                    "Too many running",
                    e.to_string(),
                ),
                ServiceError::Unavailable(_) | ServiceError::Store(_) => {
                    tracing::error!(error = %e, "console request failed");
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "The collector cannot answer",
                        e.to_string(),
                    )
                }
            },
            PageError::Account(e) => match &e {
                AccountError::NoSuchAccount(_) => {
                    (StatusCode::NOT_FOUND, "Not found", e.to_string())
                }
                AccountError::Store(_) | AccountError::Hash(_) => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "The collector cannot answer",
                    e.to_string(),
                ),
                _ => (StatusCode::BAD_REQUEST, "Cannot do that", e.to_string()),
            },
            PageError::Oidc(e) => {
                use super::oidc::OidcError as O;
                let status = match &e {
                    O::Unreachable(_) => StatusCode::BAD_GATEWAY,
                    O::NoRole(_) => StatusCode::FORBIDDEN,
                    O::Config(_) => StatusCode::INTERNAL_SERVER_ERROR,
                    O::Invalid(_) | O::State => StatusCode::BAD_REQUEST,
                };
                (status, "Sign-in failed", e.to_string())
            }
            PageError::Csrf => (
                StatusCode::FORBIDDEN,
                "Request refused",
                "The form was not sent from this console (its security token is missing or \
                 stale). Reload the page and try again."
                    .into(),
            ),
            PageError::BadRequest(m) => (StatusCode::BAD_REQUEST, "Cannot do that", m),
        };
        let page = ErrorPage {
            status: status.as_u16(),
            heading,
            message,
        };
        (status, super::pages::html(page)).into_response()
    }
}

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage {
    token: String,
    next: String,
    name: String,
    error: String,
    /// The single sign-on button's words; empty without it.
    sso: String,
    /// Local sign-in is only for the break-glass accounts.
    break_glass: bool,
}

#[derive(Deserialize)]
pub struct NextQuery {
    #[serde(default)]
    next: String,
}

fn login_form(c: &Console, next: &str, name: &str, error: String, status: StatusCode) -> Response {
    let token = sessions::token();
    let page = LoginPage {
        token: token.clone(),
        next: safe_next(next).to_owned(),
        name: name.to_owned(),
        error,
        sso: c
            .oidc
            .as_ref()
            .map(|o| o.label().to_owned())
            .unwrap_or_default(),
        break_glass: c.oidc.as_ref().is_some_and(|o| !o.allows_local("")),
    };
    let mut r = (status, super::pages::html(page)).into_response();
    r.headers_mut().append(
        header::SET_COOKIE,
        c.cookie(LOGIN_COOKIE, &token, Some(3600)),
    );
    r
}

pub async fn login_page(
    State(c): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<NextQuery>,
) -> Response {
    if let Some(id) = cookie(&headers, c.session_cookie())
        && c.sessions.get(id, Instant::now()).is_some()
    {
        return Redirect::to(safe_next(&q.next)).into_response();
    }
    login_form(&c, &q.next, "", String::new(), StatusCode::OK)
}

#[derive(Deserialize)]
pub struct LoginForm {
    #[serde(default)]
    name: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    token: String,
    #[serde(default)]
    next: String,
}

pub async fn login(
    State(c): State<AppState>,
    ConnectInfo(Peer(peer)): ConnectInfo<Peer>,
    headers: HeaderMap,
    Form(f): Form<LoginForm>,
) -> Response {
    let expected = cookie(&headers, LOGIN_COOKIE).unwrap_or("");
    if expected.is_empty() || !sessions::same_token(expected, &f.token) {
        return login_form(
            &c,
            &f.next,
            &f.name,
            "The sign-in form had expired. Please sign in again.".into(),
            StatusCode::FORBIDDEN,
        );
    }
    let name = f.name.trim().to_owned();
    let now = Instant::now();
    let who = Caller::everywhere(name.clone(), Role::Viewer);
    let from = origin(peer);
    if let Some(why) = c.paused(&who, &name, peer).await {
        return login_form(&c, &f.next, &name, why, StatusCode::TOO_MANY_REQUESTS);
    }
    if let Some(o) = &c.oidc
        && !o.allows_local(&name)
    {
        c.audit(
            &who,
            "console.login",
            from,
            "refused",
            "local sign-in is for break-glass accounts",
        )
        .await;
        let text = format!("Sign in with \"{}\" instead.", o.label());
        return login_form(&c, &f.next, &name, text, StatusCode::FORBIDDEN);
    }
    let checked = match c.accounts.check(&name, &f.password).await {
        Ok(x) => x,
        Err(e) => return PageError::from(e).into_response(),
    };
    let account = match checked {
        Check::Ok(a) => a,
        Check::Disabled | Check::Wrong => {
            let (why, text) = if checked == Check::Disabled {
                (
                    "disabled",
                    "This account is disabled. Ask an administrator.",
                )
            } else {
                ("wrong name or password", "Wrong name or password.")
            };
            c.throttle.failed(&name, peer.ip(), now);
            info!(account = %name, %peer, why, "console sign-in refused");
            c.audit(&who, "console.login", from, "refused", why).await;
            return login_form(&c, &f.next, &name, text.into(), StatusCode::UNAUTHORIZED);
        }
    };
    c.throttle.succeeded(&name);
    let second = account.totp_secret.is_some();
    let session = Session {
        account: account.name.clone(),
        role: account.role,
        sites: account.sites.clone(),
        csrf: sessions::token(),
        must_change_password: account.must_change_password,
        second_factor_due: second,
        enroll_due: c.require_totp && !second,
        pending_totp: None,
        sso: false,
    };
    let previous = cookie(&headers, c.session_cookie());
    let id = c.sessions.start(previous, session, now);
    let caller = Caller {
        name: account.name.clone(),
        role: account.role,
        sites: account.sites.clone(),
    };
    let next = query_value(safe_next(&f.next));
    let to = if second {
        // Signed in only once the code is right; audited then.
        format!("/login/totp?next={next}")
    } else {
        info!(account = %account.name, %peer, "console sign-in");
        c.audit(&caller, "console.login", from, "ok", "").await;
        if account.must_change_password {
            format!("/account/password?next={next}")
        } else if c.require_totp {
            format!("/account/totp?next={next}")
        } else {
            safe_next(&f.next).to_owned()
        }
    };
    let mut r = Redirect::to(&to).into_response();
    let h = r.headers_mut();
    h.append(header::SET_COOKIE, c.cookie(c.session_cookie(), &id, None));
    h.append(header::SET_COOKIE, c.cookie(LOGIN_COOKIE, "", Some(0)));
    r
}

#[derive(Deserialize)]
pub struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

pub async fn logout(State(c): State<AppState>, user: User, Form(f): Form<CsrfForm>) -> Response {
    if let Err(e) = user.check_csrf(&f.csrf) {
        return e.into_response();
    }
    c.sessions.end(&user.id);
    let mut r = Redirect::to("/login").into_response();
    r.headers_mut().append(
        header::SET_COOKIE,
        c.cookie(c.session_cookie(), "", Some(0)),
    );
    r
}

#[derive(Template)]
#[template(path = "password.html")]
struct PasswordPage {
    chrome: super::view::Chrome,
    forced: bool,
    next: String,
    error: String,
    min: usize,
}

fn password_form(user: &User, next: &str, error: String, status: StatusCode) -> Response {
    let page = PasswordPage {
        chrome: super::view::Chrome::new(&user.session, "account"),
        forced: user.session.must_change_password,
        next: safe_next(next).to_owned(),
        error,
        min: super::accounts::MIN_PASSWORD_CHARS,
    };
    (status, super::pages::html(page)).into_response()
}

/// Refuses the local password and second-factor pages to a person signed
/// in through the city's service.
fn local_only(user: &User) -> Result<(), PageError> {
    if user.session.sso {
        Err(PageError::BadRequest(
            "You signed in with the city's sign-in service; your password and second factor \
             are managed there."
                .into(),
        ))
    } else {
        Ok(())
    }
}

pub async fn password_page(user: User, Query(q): Query<NextQuery>) -> Response {
    if let Err(e) = local_only(&user) {
        return e.into_response();
    }
    password_form(&user, &q.next, String::new(), StatusCode::OK)
}

#[derive(Deserialize)]
pub struct PasswordForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    current: String,
    #[serde(default)]
    new: String,
    #[serde(default)]
    repeat: String,
    #[serde(default)]
    next: String,
}

pub async fn change_password(
    State(c): State<AppState>,
    user: User,
    Form(f): Form<PasswordForm>,
) -> Response {
    if let Err(e) = user.check_csrf(&f.csrf).and_then(|()| local_only(&user)) {
        return e.into_response();
    }
    let name = user.session.account.clone();
    let refuse = |msg: String| password_form(&user, &f.next, msg, StatusCode::BAD_REQUEST);
    match c.accounts.check(&name, &f.current).await {
        Ok(Check::Ok(_)) => {}
        Ok(_) => return refuse("The current password is not right.".into()),
        Err(e) => return PageError::from(e).into_response(),
    }
    if f.new != f.repeat {
        return refuse("The two new passwords differ.".into());
    }
    if f.new == f.current {
        return refuse("The new password must differ from the current one.".into());
    }
    let account = match c.accounts.set_password(&name, &f.new).await {
        Ok(a) => a,
        Err(AccountError::WeakPassword(m)) => return refuse(format!("{m}.")),
        Err(e) => return PageError::from(e).into_response(),
    };
    c.audit(
        &user.caller(),
        "account.password",
        BTreeMap::new(),
        "ok",
        "",
    )
    .await;
    // Every other session of the account ends; this browser gets a new one.
    c.sessions.end_account(&name);
    let id = c.sessions.start(
        None,
        Session {
            enroll_due: c.require_totp && account.totp_secret.is_none(),
            account: account.name,
            role: account.role,
            sites: account.sites,
            csrf: sessions::token(),
            must_change_password: false,
            second_factor_due: false,
            pending_totp: None,
            sso: false,
        },
        Instant::now(),
    );
    let mut r = Redirect::to(safe_next(&f.next)).into_response();
    r.headers_mut()
        .append(header::SET_COOKIE, c.cookie(c.session_cookie(), &id, None));
    r
}

fn no_sso() -> Response {
    PageError::Service(ServiceError::NotFound(
        "single sign-on is not set up".into(),
    ))
    .into_response()
}

/// The cookie that binds a single sign-on to the browser that started it.
/// `Lax`, since the provider's answer arrives as a cross-site navigation.
const OIDC_COOKIE: &str = "vitals_oidc";

pub async fn oidc_start(State(c): State<AppState>, Query(q): Query<NextQuery>) -> Response {
    let Some(oidc) = &c.oidc else {
        return no_sso();
    };
    match oidc.start(safe_next(&q.next)).await {
        Ok((url, state)) => {
            let mut r = Redirect::to(&url).into_response();
            let mut cookie =
                format!("{OIDC_COOKIE}={state}; Path=/oidc; HttpOnly; SameSite=Lax; Max-Age=600");
            if c.tls {
                cookie.push_str("; Secure");
            }
            if let Ok(v) = HeaderValue::from_str(&cookie) {
                r.headers_mut().append(header::SET_COOKIE, v);
            }
            r
        }
        Err(e) => PageError::Oidc(e).into_response(),
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct CallbackQuery {
    code: String,
    state: String,
    error: String,
    error_description: String,
}

#[derive(Template)]
#[template(path = "signed_in.html")]
struct SignedIn {
    next: String,
}

pub async fn oidc_callback(
    State(c): State<AppState>,
    ConnectInfo(Peer(peer)): ConnectInfo<Peer>,
    headers: HeaderMap,
    Query(q): Query<CallbackQuery>,
) -> Response {
    let Some(oidc) = &c.oidc else {
        return no_sso();
    };
    let mut from = origin(peer);
    from.insert("factor".to_owned(), "oidc".to_owned());
    let unknown = Caller::everywhere("(single sign-on)", Role::Viewer);
    if !q.error.is_empty() {
        let why = format!(
            "the sign-in service said {}: {}",
            q.error, q.error_description
        );
        c.audit(&unknown, "console.login", from, "refused", &why)
            .await;
        return PageError::BadRequest(why).into_response();
    }
    let bound = cookie(&headers, OIDC_COOKIE).unwrap_or("");
    let (person, next) = match oidc.finish(&q.state, bound, &q.code).await {
        Ok(x) => x,
        Err(e) => {
            let who = match &e {
                super::oidc::OidcError::NoRole(m) => {
                    Caller::everywhere(m.split(' ').next().unwrap_or(""), Role::Viewer)
                }
                _ => unknown,
            };
            info!(%peer, error = %e, "single sign-on refused");
            c.audit(&who, "console.login", from, "refused", &e.to_string())
                .await;
            return PageError::Oidc(e).into_response();
        }
    };
    let session = Session {
        account: person.name.clone(),
        role: person.role,
        sites: person.sites.clone(),
        csrf: sessions::token(),
        must_change_password: false,
        second_factor_due: false,
        enroll_due: false,
        pending_totp: None,
        sso: true,
    };
    let id = c.sessions.start(
        cookie(&headers, c.session_cookie()),
        session,
        Instant::now(),
    );
    let caller = Caller {
        name: person.name.clone(),
        role: person.role,
        sites: person.sites.clone(),
    };
    info!(account = %person.name, role = %person.role, %peer, "console sign-in (single sign-on)");
    c.audit(&caller, "console.login", from, "ok", "").await;
    // A page that moves on by itself: the redirect from the provider is a
    // cross-site navigation, which would not carry the new SameSite=Strict
    // cookie; the next one, from this page, does.
    let mut r = super::pages::html(SignedIn {
        next: safe_next(&next).to_owned(),
    });
    let h = r.headers_mut();
    h.append(header::SET_COOKIE, c.cookie(c.session_cookie(), &id, None));
    if let Ok(v) = HeaderValue::from_str(&format!("{OIDC_COOKIE}=; Path=/oidc; Max-Age=0")) {
        h.append(header::SET_COOKIE, v);
    }
    r
}

#[derive(Template)]
#[template(path = "totp_login.html")]
struct TotpLoginPage {
    csrf: String,
    next: String,
    error: String,
}

fn totp_form(user: &User, next: &str, error: String, status: StatusCode) -> Response {
    let page = TotpLoginPage {
        csrf: user.session.csrf.clone(),
        next: safe_next(next).to_owned(),
        error,
    };
    (status, super::pages::html(page)).into_response()
}

pub async fn totp_page(user: User, Query(q): Query<NextQuery>) -> Response {
    if !user.session.second_factor_due {
        return Redirect::to(safe_next(&q.next)).into_response();
    }
    totp_form(&user, &q.next, String::new(), StatusCode::OK)
}

#[derive(Deserialize)]
pub struct CodeForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    code: String,
    #[serde(default)]
    next: String,
    /// For the enrollment page: start, confirm, disable.
    #[serde(default)]
    op: String,
}

fn now_secs() -> u64 {
    (vitals_proto::now_ms() / 1000).max(0) as u64
}

impl Console {
    /// Checks a second factor for `name`: a current TOTP code not used
    /// before, or one of its recovery codes (used up). Returns how, or why not.
    async fn second_factor(&self, name: &str, code: &str) -> Result<&'static str, &'static str> {
        let account = self
            .accounts
            .get(name)
            .await
            .map_err(|_| "no such account")?;
        let Some(secret) = &account.totp_secret else {
            return Err("no second factor enrolled");
        };
        let digits = code.chars().filter(|c| !c.is_whitespace()).count() == 6
            && code
                .chars()
                .all(|c| c.is_ascii_digit() || c.is_whitespace());
        if digits {
            return match super::totp::check(secret, name, code, now_secs()) {
                Some(step) if self.replays.fresh(name, step) => Ok("totp"),
                Some(_) => Err("that code was used already; wait for the next one"),
                None => Err("wrong code"),
            };
        }
        match self.accounts.use_recovery_code(name, code).await {
            Ok(true) => Ok("recovery code"),
            _ => Err("wrong code"),
        }
    }
}

pub async fn totp_login(
    State(c): State<AppState>,
    ConnectInfo(Peer(peer)): ConnectInfo<Peer>,
    user: User,
    Form(f): Form<CodeForm>,
) -> Response {
    if let Err(e) = user.check_csrf(&f.csrf) {
        return e.into_response();
    }
    if !user.session.second_factor_due {
        return Redirect::to(safe_next(&f.next)).into_response();
    }
    let name = user.session.account.clone();
    let now = Instant::now();
    let caller = user.caller();
    let from = origin(peer);
    if let Some(why) = c.paused(&caller, &name, peer).await {
        return totp_form(&user, &f.next, why, StatusCode::TOO_MANY_REQUESTS);
    }
    match c.second_factor(&name, &f.code).await {
        Ok(how) => {
            c.throttle.succeeded(&name);
            let mut session = user.session.clone();
            session.second_factor_due = false;
            session.csrf = sessions::token();
            // A new id once fully signed in, as at every sign-in.
            let id = c.sessions.start(Some(&user.id), session.clone(), now);
            let mut params = from;
            params.insert("factor".into(), how.into());
            info!(account = %name, %peer, factor = how, "console sign-in");
            c.audit(&caller, "console.login", params, "ok", "").await;
            let to = if session.must_change_password {
                format!("/account/password?next={}", query_value(safe_next(&f.next)))
            } else {
                safe_next(&f.next).to_owned()
            };
            let mut r = Redirect::to(&to).into_response();
            r.headers_mut()
                .append(header::SET_COOKIE, c.cookie(c.session_cookie(), &id, None));
            r
        }
        Err(why) => {
            c.throttle.failed(&name, peer.ip(), now);
            info!(account = %name, %peer, why, "console second factor refused");
            c.audit(&caller, "console.login", from, "refused", why)
                .await;
            let text = if why.starts_with("that code") {
                "That code was used already. Wait for the next one."
            } else {
                "Wrong code."
            };
            totp_form(&user, &f.next, text.into(), StatusCode::UNAUTHORIZED)
        }
    }
}

#[derive(Template)]
#[template(path = "account_totp.html")]
struct EnrollPage {
    chrome: super::view::Chrome,
    enrolled: bool,
    required: bool,
    /// Being enrolled: the secret as text and as a QR code.
    secret: String,
    qr: String,
    /// Shown once, right after enrollment.
    recovery: Vec<String>,
    left: usize,
    next: String,
    error: String,
}

async fn enroll_form(
    c: &Console,
    user: &User,
    next: &str,
    recovery: Vec<String>,
    error: String,
    status: StatusCode,
) -> Response {
    let name = &user.session.account;
    let account = match c.accounts.get(name).await {
        Ok(a) => a,
        Err(e) => return PageError::from(e).into_response(),
    };
    let secret = c
        .sessions
        .get(&user.id, Instant::now())
        .and_then(|s| s.pending_totp)
        .unwrap_or_default();
    let qr = if secret.is_empty() {
        String::new()
    } else {
        super::totp::qr_svg(&super::totp::url(&secret, name))
    };
    let page = EnrollPage {
        chrome: super::view::Chrome::new(&user.session, "account"),
        enrolled: account.totp_secret.is_some(),
        required: c.require_totp,
        secret,
        qr,
        recovery,
        left: account.recovery_codes.len(),
        next: safe_next(next).to_owned(),
        error,
    };
    let mut r = (status, super::pages::html(page)).into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

pub async fn enroll_page(
    State(c): State<AppState>,
    user: User,
    Query(q): Query<NextQuery>,
) -> Response {
    if let Err(e) = local_only(&user) {
        return e.into_response();
    }
    enroll_form(&c, &user, &q.next, vec![], String::new(), StatusCode::OK).await
}

pub async fn enroll(State(c): State<AppState>, user: User, Form(f): Form<CodeForm>) -> Response {
    if let Err(e) = user.check_csrf(&f.csrf).and_then(|()| local_only(&user)) {
        return e.into_response();
    }
    let name = user.session.account.clone();
    let caller = user.caller();
    let refuse = |msg: &str| msg.to_owned();
    let op: BTreeMap<String, String> = [("op".to_owned(), f.op.clone())].into();
    match f.op.as_str() {
        "start" => {
            let secret = super::totp::new_secret();
            c.sessions
                .update(&user.id, |s| s.pending_totp = Some(secret));
            Redirect::to(&format!(
                "/account/totp?next={}",
                query_value(safe_next(&f.next))
            ))
            .into_response()
        }
        "confirm" => {
            let Some(secret) = c
                .sessions
                .get(&user.id, Instant::now())
                .and_then(|s| s.pending_totp)
            else {
                return Redirect::to("/account/totp").into_response();
            };
            let step = super::totp::check(&secret, &name, &f.code, now_secs());
            if !step.is_some_and(|s| c.replays.fresh(&name, s)) {
                let msg =
                    refuse("That code is not right. Check the app's clock and try the next code.");
                return enroll_form(&c, &user, &f.next, vec![], msg, StatusCode::BAD_REQUEST).await;
            }
            let (codes, hashes) = super::totp::recovery_codes();
            if let Err(e) = c.accounts.set_totp(&name, Some((secret, hashes))).await {
                return PageError::from(e).into_response();
            }
            c.sessions.update(&user.id, |s| {
                s.pending_totp = None;
                s.enroll_due = false;
            });
            c.audit(&caller, "account.totp", op, "ok", "enrolled").await;
            enroll_form(&c, &user, &f.next, codes, String::new(), StatusCode::OK).await
        }
        "disable" => {
            if c.require_totp {
                let msg =
                    refuse("A second factor is required here; it can be replaced, not removed.");
                return enroll_form(&c, &user, &f.next, vec![], msg, StatusCode::BAD_REQUEST).await;
            }
            if let Err(why) = c.second_factor(&name, &f.code).await {
                c.audit(&caller, "account.totp", op, "refused", why).await;
                let msg = refuse("That code is not right.");
                return enroll_form(&c, &user, &f.next, vec![], msg, StatusCode::BAD_REQUEST).await;
            }
            if let Err(e) = c.accounts.set_totp(&name, None).await {
                return PageError::from(e).into_response();
            }
            c.audit(&caller, "account.totp", op, "ok", "removed").await;
            Redirect::to("/account/totp").into_response()
        }
        other => PageError::BadRequest(format!("unknown change \"{other}\"")).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_stays_on_this_site() {
        assert_eq!(safe_next("/tickets/4"), "/tickets/4");
        assert_eq!(safe_next("//evil.example/x"), "/");
        assert_eq!(safe_next("https://evil.example/"), "/");
        assert_eq!(safe_next("/\\evil.example"), "/");
        assert_eq!(safe_next(""), "/");
    }

    #[test]
    fn cookies_are_found_among_others() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; vitals_session=abc; b=2"),
        );
        assert_eq!(cookie(&h, "vitals_session"), Some("abc"));
        assert_eq!(cookie(&h, "vitals"), None);
    }
}
