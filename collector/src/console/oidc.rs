//! Single sign-on with OpenID Connect: the authorization code flow with
//! PKCE, the provider found by discovery, the ID token's signature, issuer,
//! audience, expiry and nonce checked by the `openidconnect` crate; then
//! one claim mapped to a role (and one, optionally, to sites).
//!
//! A sign-in started here is remembered (state, nonce, PKCE verifier) for
//! ten minutes and bound to the browser that started it by a cookie; the
//! provider's answer is taken only with both.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use openidconnect::core::{CoreAuthenticationFlow, CoreClient, CoreProviderMetadata};
use openidconnect::{
    AuthorizationCode, ClientId, ClientSecret, CsrfToken, EndpointMaybeSet, EndpointNotSet,
    EndpointSet, IssuerUrl, Nonce, PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, Scope,
    TokenResponse,
};
use vitals_proto::identity::Role;

use crate::config::OidcConfig;

/// How long a started sign-in may take at the provider.
const PENDING_FOR: Duration = Duration::from_secs(600);
/// At most this many sign-ins in flight (a flood of starts cannot grow
/// memory without end).
const MAX_PENDING: usize = 10_000;
/// Discovery (and the provider's keys) is fetched again after this long,
/// and at once after a token fails to verify.
const REDISCOVER: Duration = Duration::from_secs(3600);
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

type Client = CoreClient<
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointMaybeSet,
    EndpointMaybeSet,
>;

#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    #[error("[console.oidc] {0}")]
    Config(String),
    #[error("the city's sign-in service cannot be reached ({0})")]
    Unreachable(String),
    #[error("the sign-in service's answer was not accepted: {0}")]
    Invalid(String),
    #[error("{0}")]
    NoRole(String),
    #[error("this sign-in was not started in this browser, or took too long; start again")]
    State,
}

/// Who the provider says signed in, and what the console makes of it.
#[derive(Debug, Clone, PartialEq)]
pub struct Person {
    pub name: String,
    pub role: Role,
    pub sites: Vec<String>,
}

struct Pending {
    nonce: Nonce,
    verifier: PkceCodeVerifier,
    next: String,
    at: Instant,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct HttpError(String);

/// The provider's endpoints asked over our reqwest (the crate brings no
/// HTTP client of its own here). Owned, so its futures borrow nothing.
struct Http(reqwest::Client);

type HttpFuture<'c> = std::pin::Pin<
    Box<
        dyn std::future::Future<Output = Result<openidconnect::HttpResponse, HttpError>>
            + Send
            + 'c,
    >,
>;

impl<'c> openidconnect::AsyncHttpClient<'c> for Http {
    type Error = HttpError;
    type Future = HttpFuture<'c>;

    fn call(&'c self, req: openidconnect::HttpRequest) -> Self::Future {
        let client = self.0.clone();
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            let r = client
                .request(parts.method, parts.uri.to_string())
                .headers(parts.headers)
                .body(body)
                .send()
                .await
                .map_err(|e| HttpError(vitals_proto::error_chain(&e)))?;
            let status = r.status();
            let headers = r.headers().clone();
            let body = r.bytes().await.map_err(|e| HttpError(e.to_string()))?;
            let mut out = http::Response::new(body.to_vec());
            *out.status_mut() = status;
            *out.headers_mut() = headers;
            Ok(out)
        })
    }
}

pub struct Oidc {
    config: OidcConfig,
    secret: Option<String>,
    http: reqwest::Client,
    client: tokio::sync::Mutex<Option<(Arc<Client>, Instant)>>,
    pending: Mutex<HashMap<String, Pending>>,
}

impl Oidc {
    /// Checks the configuration and reads the client secret; the provider
    /// itself is asked only at the first sign-in (a provider that is down
    /// when the collector starts does not stop local sign-in).
    pub fn new(config: &OidcConfig) -> Result<Self, OidcError> {
        IssuerUrl::new(config.issuer.clone())
            .map_err(|e| OidcError::Config(format!("issuer {:?}: {e}", config.issuer)))?;
        RedirectUrl::new(config.redirect_url.clone()).map_err(|e| {
            OidcError::Config(format!("redirect_url {:?}: {e}", config.redirect_url))
        })?;
        let secret = match &config.client_secret_file {
            Some(p) => Some(
                std::fs::read_to_string(p)
                    .map_err(|e| {
                        OidcError::Config(format!("client_secret_file {}: {e}", p.display()))
                    })?
                    .trim()
                    .to_owned(),
            ),
            None => None,
        };
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut http = reqwest::Client::builder()
            .timeout(HTTP_TIMEOUT)
            // Following redirects would let a provider's answer send the
            // collector anywhere.
            .redirect(reqwest::redirect::Policy::none());
        if let Some(ca) = &config.ca {
            let pem = std::fs::read(ca)
                .map_err(|e| OidcError::Config(format!("ca {}: {e}", ca.display())))?;
            let cert = reqwest::Certificate::from_pem(&pem)
                .map_err(|e| OidcError::Config(format!("ca {}: {e}", ca.display())))?;
            http = http.add_root_certificate(cert);
        }
        let http = http
            .build()
            .map_err(|e| OidcError::Config(format!("HTTP client: {e}")))?;
        Ok(Oidc {
            config: config.clone(),
            secret,
            http,
            client: tokio::sync::Mutex::new(None),
            pending: Mutex::new(HashMap::new()),
        })
    }

    /// The sign-in button's words.
    pub fn label(&self) -> &str {
        &self.config.label
    }

    /// Whether `name` may still sign in with a local password.
    pub fn allows_local(&self, name: &str) -> bool {
        self.config.break_glass.is_empty() || self.config.break_glass.iter().any(|b| b == name)
    }

    /// The client for the provider, discovered (again when stale).
    async fn client(&self) -> Result<Arc<Client>, OidcError> {
        let mut cached = self.client.lock().await;
        if let Some((c, at)) = cached.as_ref()
            && at.elapsed() < REDISCOVER
        {
            return Ok(c.clone());
        }
        let issuer = IssuerUrl::new(self.config.issuer.clone())
            .map_err(|e| OidcError::Config(e.to_string()))?;
        let meta = CoreProviderMetadata::discover_async(issuer, &Http(self.http.clone()))
            .await
            .map_err(|e| OidcError::Unreachable(vitals_proto::error_chain(&e)))?;
        let client = CoreClient::from_provider_metadata(
            meta,
            ClientId::new(self.config.client_id.clone()),
            self.secret.clone().map(ClientSecret::new),
        )
        .set_redirect_uri(
            RedirectUrl::new(self.config.redirect_url.clone())
                .map_err(|e| OidcError::Config(e.to_string()))?,
        );
        let client = Arc::new(client);
        *cached = Some((client.clone(), Instant::now()));
        Ok(client)
    }

    /// Starts a sign-in: the provider's URL to send the browser to, and the
    /// state that binds the answer to this browser.
    pub async fn start(&self, next: &str) -> Result<(String, String), OidcError> {
        let client = self.client().await?;
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let mut req = client.authorize_url(
            CoreAuthenticationFlow::AuthorizationCode,
            CsrfToken::new_random,
            Nonce::new_random,
        );
        for s in &self.config.scopes {
            if s != "openid" {
                req = req.add_scope(Scope::new(s.clone()));
            }
        }
        let (url, state, nonce) = req.set_pkce_challenge(challenge).url();
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        pending.retain(|_, p| p.at.elapsed() < PENDING_FOR);
        if pending.len() >= MAX_PENDING {
            return Err(OidcError::Unreachable(
                "too many sign-ins in progress; try again in a few minutes".into(),
            ));
        }
        pending.insert(
            state.secret().clone(),
            Pending {
                nonce,
                verifier,
                next: next.to_owned(),
                at: Instant::now(),
            },
        );
        Ok((url.to_string(), state.secret().clone()))
    }

    /// Finishes a sign-in from the provider's answer: the code exchanged,
    /// the ID token verified, the person's role mapped. Returns the person
    /// and where the browser was going.
    pub async fn finish(
        &self,
        state: &str,
        bound: &str,
        code: &str,
    ) -> Result<(Person, String), OidcError> {
        if state.is_empty() || !super::sessions::same_token(state, bound) {
            return Err(OidcError::State);
        }
        let pending = self
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(state)
            .filter(|p| p.at.elapsed() < PENDING_FOR)
            .ok_or(OidcError::State)?;
        let client = self.client().await?;
        let http = Http(self.http.clone());
        let tokens = client
            .exchange_code(AuthorizationCode::new(code.to_owned()))
            .map_err(|e| OidcError::Invalid(e.to_string()))?
            .set_pkce_verifier(pending.verifier)
            .request_async(&http)
            .await
            .map_err(|e| {
                OidcError::Invalid(format!("code exchange: {}", vitals_proto::error_chain(&e)))
            })?;
        let id_token = tokens
            .id_token()
            .ok_or_else(|| OidcError::Invalid("no ID token in the answer".into()))?;
        let verified = id_token.claims(&client.id_token_verifier(), &pending.nonce);
        let subject = match verified {
            Ok(c) => c.subject().as_str().to_owned(),
            Err(e) => {
                // The provider may have rotated its keys: discover afresh
                // next time.
                *self.client.lock().await = None;
                return Err(OidcError::Invalid(format!("ID token: {e}")));
            }
        };
        // The token is verified; its payload holds the claims to map.
        let claims = payload(&id_token.to_string())?;
        let person = self.person(&subject, &claims)?;
        Ok((person, pending.next))
    }

    /// Maps a verified token's claims to a console person.
    fn person(
        &self,
        subject: &str,
        claims: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<Person, OidcError> {
        let c = &self.config;
        let name = claims
            .get(&c.name_claim)
            .and_then(|v| v.as_str())
            .filter(|n| !n.is_empty())
            .unwrap_or(subject)
            .to_owned();
        let values = strings(claims.get(&c.role_claim));
        let role = values
            .iter()
            .filter_map(|v| c.roles.get(v))
            .copied()
            .max()
            .ok_or_else(|| {
                OidcError::NoRole(format!(
                    "{name} has no role in Vitals: the sign-in service's claim \"{}\" is {} \
                     and none of that is given a role here",
                    c.role_claim,
                    if values.is_empty() {
                        "missing".to_owned()
                    } else {
                        format!("{values:?}")
                    }
                ))
            })?;
        let sites = c
            .site_claim
            .as_ref()
            .map(|s| strings(claims.get(s)))
            .unwrap_or_default();
        Ok(Person { name, role, sites })
    }
}

/// A claim as a list of strings: a string, or an array of them.
fn strings(v: Option<&serde_json::Value>) -> Vec<String> {
    match v {
        Some(serde_json::Value::String(s)) => vec![s.clone()],
        Some(serde_json::Value::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_str().map(str::to_owned))
            .collect(),
        _ => vec![],
    }
}

/// The claims of a compact JWT (already verified by the caller).
fn payload(jwt: &str) -> Result<serde_json::Map<String, serde_json::Value>, OidcError> {
    let part = jwt
        .split('.')
        .nth(1)
        .ok_or_else(|| OidcError::Invalid("ID token is not a JWT".into()))?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part.trim_end_matches('='))
        .map_err(|e| OidcError::Invalid(format!("ID token payload: {e}")))?;
    serde_json::from_slice(&bytes).map_err(|e| OidcError::Invalid(format!("ID token payload: {e}")))
}

/// For the tests: the role map of a config, as the console reads it.
pub fn role_map(pairs: &[(&str, Role)]) -> BTreeMap<String, Role> {
    pairs.iter().map(|(k, r)| ((*k).to_owned(), *r)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn oidc() -> Oidc {
        Oidc::new(&OidcConfig {
            issuer: "https://sso.city.example".into(),
            client_id: "vitals".into(),
            client_secret_file: None,
            redirect_url: "https://vitals.city.example/oidc/callback".into(),
            label: "City sign-in".into(),
            scopes: vec!["openid".into(), "profile".into()],
            name_claim: "preferred_username".into(),
            role_claim: "groups".into(),
            roles: role_map(&[("helpdesk", Role::Specialist), ("it-admins", Role::Admin)]),
            site_claim: Some("sites".into()),
            break_glass: vec!["admin".into()],
            ca: None,
        })
        .expect("config")
    }

    #[test]
    fn claims_map_to_the_highest_role_and_sites() {
        let o = oidc();
        let claims = |v: serde_json::Value| v.as_object().cloned().expect("object");
        let p = o
            .person(
                "s-1",
                &claims(serde_json::json!({
                    "preferred_username": "dana",
                    "groups": ["staff", "helpdesk", "it-admins"],
                    "sites": "dispatch"
                })),
            )
            .expect("person");
        assert_eq!(
            p,
            Person {
                name: "dana".into(),
                role: Role::Admin,
                sites: vec!["dispatch".into()]
            }
        );
        let err = o
            .person(
                "s-2",
                &claims(serde_json::json!({ "groups": ["cafeteria"] })),
            )
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("s-2 has no role") && err.contains("cafeteria"),
            "{err}"
        );
        assert!(o.allows_local("admin") && !o.allows_local("dana"));
    }

    #[test]
    fn a_token_payload_is_read_and_junk_refused() {
        let body = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(br#"{"sub":"x"}"#);
        assert_eq!(payload(&format!("h.{body}.s")).expect("claims")["sub"], "x");
        assert!(payload("nodots").is_err());
        assert!(payload("h.!!!.s").is_err());
    }
}
