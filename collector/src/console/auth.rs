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

/// Where to go after signing in: only a path on this site.
fn safe_next(next: &str) -> &str {
    if next.starts_with('/') && !next.starts_with("//") && !next.contains('\\') {
        next
    } else {
        "/"
    }
}

fn percent(s: &str) -> String {
    askama::filters::urlencode_strict(s)
        .map(|e| e.to_string())
        .unwrap_or_default()
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
        if let Ok(v) = HeaderValue::from_str(&format!("/login?next={}", percent(back))) {
            r.headers_mut().insert("hx-redirect", v);
        }
        return r;
    }
    let next = if parts.method == axum::http::Method::GET {
        path
    } else {
        "/"
    };
    Redirect::to(&format!("/login?next={}", percent(next))).into_response()
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
        let path = parts.uri.path();
        if session.must_change_password && path != "/account/password" && path != "/logout" {
            return Err(Redirect::to("/account/password").into_response());
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
                ServiceError::InvalidArgument(_) => {
                    (StatusCode::BAD_REQUEST, "Cannot do that", e.to_string())
                }
                ServiceError::Offline(_) => {
                    (StatusCode::CONFLICT, "Endpoint offline", e.to_string())
                }
                ServiceError::DeadlineExceeded(_) | ServiceError::Aborted(_) => {
                    (StatusCode::GATEWAY_TIMEOUT, "No result", e.to_string())
                }
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
    let who = Caller {
        name: name.clone(),
        role: Role::Viewer,
    };
    let from: BTreeMap<String, String> = [("from".to_owned(), peer.ip().to_string())].into();
    if let Some(wait) = c.throttle.wait(&name, peer.ip(), now) {
        let minutes = wait.as_secs().div_ceil(60);
        c.audit(&who, "console.login", from, "refused", "throttled")
            .await;
        return login_form(
            &c,
            &f.next,
            &name,
            format!(
                "Too many failed sign-ins. Try again in {minutes} minute{}.",
                if minutes == 1 { "" } else { "s" }
            ),
            StatusCode::TOO_MANY_REQUESTS,
        );
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
    let session = Session {
        account: account.name.clone(),
        role: account.role,
        sites: account.sites.clone(),
        csrf: sessions::token(),
        must_change_password: account.must_change_password,
    };
    let previous = cookie(&headers, c.session_cookie());
    let id = c.sessions.start(previous, session, now);
    let caller = Caller {
        name: account.name.clone(),
        role: account.role,
    };
    info!(account = %account.name, %peer, "console sign-in");
    c.audit(&caller, "console.login", from, "ok", "").await;
    let to = if account.must_change_password {
        format!("/account/password?next={}", percent(safe_next(&f.next)))
    } else {
        safe_next(&f.next).to_owned()
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

pub async fn password_page(user: User, Query(q): Query<NextQuery>) -> Response {
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
    if let Err(e) = user.check_csrf(&f.csrf) {
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
            account: account.name,
            role: account.role,
            sites: account.sites,
            csrf: sessions::token(),
            must_change_password: false,
        },
        Instant::now(),
    );
    let mut r = Redirect::to(safe_next(&f.next)).into_response();
    r.headers_mut()
        .append(header::SET_COOKIE, c.cookie(c.session_cookie(), &id, None));
    r
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
