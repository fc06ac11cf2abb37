//! A console session as a browser has it, over plain HTTP/1.1 on loopback:
//! sign in through the login form (its double-submit token), then pages
//! and forms with the session cookie. For tests and the console benchmark.

use std::time::{Duration, Instant};

use reqwest::header;

pub struct ConsoleClient {
    pub http: reqwest::Client,
    pub base: String,
    pub cookie: String,
}

fn set_cookie(r: &reqwest::Response, name: &str) -> Option<String> {
    r.headers()
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
        .and_then(|v| v.split(';').next())
        .map(str::to_owned)
}

/// The value of a hidden form field in a page.
pub fn field<'a>(html: &'a str, name: &str) -> Option<&'a str> {
    let at = html.find(&format!("name=\"{name}\" value=\""))?;
    let rest = &html[at + name.len() + 15..];
    rest.split('"').next()
}

fn form(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| {
            let enc: String = v
                .bytes()
                .map(|b| match b {
                    b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => {
                        (b as char).to_string()
                    }
                    _ => format!("%{b:02X}"),
                })
                .collect();
            format!("{k}={enc}")
        })
        .collect::<Vec<_>>()
        .join("&")
}

impl ConsoleClient {
    /// Signs in as `name`; an error if the console refuses.
    pub async fn sign_in(base: &str, name: &str, password: &str) -> anyhow::Result<Self> {
        // The client wants a TLS provider even for plain HTTP.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        let page = http.get(format!("{base}/login")).send().await?;
        let login =
            set_cookie(&page, "vitals_login").ok_or_else(|| anyhow::anyhow!("no login cookie"))?;
        let html = page.text().await?;
        let token = field(&html, "token").ok_or_else(|| anyhow::anyhow!("no token"))?;
        let r = http
            .post(format!("{base}/login"))
            .header(header::COOKIE, &login)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(form(&[
                ("name", name),
                ("password", password),
                ("token", token),
                ("next", "/"),
            ]))
            .send()
            .await?;
        let cookie = set_cookie(&r, "vitals_session")
            .ok_or_else(|| anyhow::anyhow!("sign-in refused: {}", r.status()))?;
        Ok(ConsoleClient {
            http,
            base: base.to_owned(),
            cookie,
        })
    }

    /// A page that must answer 2xx: time, size and text.
    pub async fn get(&self, path: &str) -> anyhow::Result<(Duration, usize, String)> {
        self.fetch(path, false).await
    }

    /// With `gzip`, asks for a compressed answer as browsers do; the size
    /// is then what travels.
    pub async fn fetch(&self, path: &str, gzip: bool) -> anyhow::Result<(Duration, usize, String)> {
        let t = Instant::now();
        let mut req = self
            .http
            .get(format!("{}{path}", self.base))
            .header(header::COOKIE, &self.cookie);
        if gzip {
            req = req.header(header::ACCEPT_ENCODING, "gzip");
        }
        let r = req.send().await?;
        anyhow::ensure!(r.status().is_success(), "{path}: {}", r.status());
        let body = r.bytes().await?;
        Ok((
            t.elapsed(),
            body.len(),
            String::from_utf8_lossy(&body).into_owned(),
        ))
    }

    /// Any answer: status and text.
    pub async fn status_of(&self, path: &str) -> anyhow::Result<(u16, String)> {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .header(header::COOKIE, &self.cookie)
            .send()
            .await?;
        Ok((r.status().as_u16(), r.text().await?))
    }

    /// Posts a form: status and text.
    pub async fn post(&self, path: &str, pairs: &[(&str, &str)]) -> anyhow::Result<(u16, String)> {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .header(header::COOKIE, &self.cookie)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(form(pairs))
            .send()
            .await?;
        Ok((r.status().as_u16(), r.text().await?))
    }
}
