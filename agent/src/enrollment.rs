//! Enrolling this desk: `vitals-agent enroll`, and the token an installer
//! leaves beside the configuration (`enroll.token`), used at first start.

use std::path::{Path, PathBuf};
use std::time::Duration;

use vitals_proto::identity::EndpointId;

use crate::config::AgentConfig;
use crate::link::credentials::{self, write_pair};
use crate::link::enroll::{self, Token};
use crate::paths::{DeskFiles, configure};

/// What `vitals-agent enroll` was given.
#[derive(Debug, Clone, Default)]
pub struct EnrollOptions {
    pub config: PathBuf,
    /// https://HOST:PORT; the configuration's when absent.
    pub collector: Option<String>,
    pub token: String,
    pub id: Option<String>,
    /// `sha256:<hex>` when the token carries no fingerprint.
    pub ca_hash: Option<String>,
    /// A CA file, instead of a fingerprint.
    pub ca: Option<PathBuf>,
    /// Enroll even though a valid certificate is there.
    pub force: bool,
}

/// The token file an installer leaves: `enroll_token` in the
/// configuration, or `enroll.token` beside it.
pub fn token_file(config: &Path) -> PathBuf {
    AgentConfig::load(config)
        .ok()
        .and_then(|c| c.enroll_token)
        .unwrap_or_else(|| {
            config
                .parent()
                .unwrap_or(Path::new("."))
                .join("enroll.token")
        })
}

/// Why a desk did not enroll, and whether trying again later may help
/// (the collector unreachable or busy) or not (a refused token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnrollFailure {
    pub message: String,
    pub retry: bool,
}

impl std::fmt::Display for EnrollFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<String> for EnrollFailure {
    fn from(message: String) -> Self {
        EnrollFailure {
            message,
            retry: false,
        }
    }
}

impl From<enroll::EnrollError> for EnrollFailure {
    fn from(e: enroll::EnrollError) -> Self {
        let retry = match &e {
            enroll::EnrollError::Collector(_) => true,
            enroll::EnrollError::Refused(s) => matches!(
                s.code(),
                tonic::Code::Unavailable | tonic::Code::ResourceExhausted | tonic::Code::Unknown
            ),
            _ => false,
        };
        EnrollFailure {
            message: e.to_string(),
            retry,
        }
    }
}

/// Enrolls the desk: CA trusted by fingerprint (or file), key made here,
/// certificate fetched, files written. Returns what it did.
pub async fn enroll_desk(
    opts: &EnrollOptions,
    skeleton: &str,
) -> Result<Vec<String>, EnrollFailure> {
    let token = Token::parse(&opts.token)?;
    let mut done = configure(
        &opts.config,
        skeleton,
        opts.collector.as_deref(),
        &DeskFiles::default(),
    )?;
    done.retain(|l| !l.starts_with("not connected yet"));
    let config = AgentConfig::load(&opts.config).map_err(|e| e.to_string())?;
    if !opts.force
        && let Ok(id) = crate::check_tls_files(&config)
        && let Some(v) = std::fs::read(&config.tls.cert)
            .ok()
            .and_then(|p| credentials::Validity::of_pem(&p))
        && !v.expired(vitals_proto::now_ms())
    {
        return Err(EnrollFailure::from(format!(
            "this desk is enrolled already as {id} (certificate valid until {}); --force enrolls it anew",
            vitals_proto::rfc3339_seconds(v.not_after_ms)
        )));
    }
    let url = config.collector.clone();
    let ca_pem = match (&opts.ca, token.ca, &opts.ca_hash) {
        (Some(file), _, _) => {
            std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?
        }
        (None, Some(fp), _) => enroll::pinned_ca(&url, fp).await?,
        (None, None, Some(h)) => enroll::pinned_ca(&url, enroll::parse_ca_hash(h)?).await?,
        (None, None, None) => {
            return Err(EnrollFailure::from(
                "the token carries no CA fingerprint: give --ca-hash sha256:… or --ca FILE"
                    .to_owned(),
            ));
        }
    };
    let id: EndpointId = match &opts.id {
        Some(id) => id.parse().map_err(|e| format!("--id {id}: {e}"))?,
        None => credentials::default_endpoint_id()?,
    };
    let machine = credentials::machine_id(&config);
    let enrolled = enroll::enroll(
        &url,
        &config.server_name(),
        ca_pem.as_bytes(),
        &token,
        &id,
        &machine,
    )
    .await?;
    let bundle = if enrolled.trust_bundle_pem.is_empty() {
        ca_pem
    } else {
        enrolled.trust_bundle_pem.clone()
    };
    if let Some(dir) = config.tls.ca.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    std::fs::write(&config.tls.ca, bundle)
        .map_err(|e| format!("{}: {e}", config.tls.ca.display()))?;
    write_pair(
        &config.tls.cert,
        &config.tls.key,
        &enrolled.cert_pem,
        &enrolled.key_pem,
    )
    .map_err(|e| e.to_string())?;
    crate::paths::protect(&config)?;
    done.push(format!(
        "enrolled as {} (certificate valid until {}){}{}",
        enrolled.endpoint_id,
        vitals_proto::rfc3339_seconds(enrolled.not_after_ms),
        if enrolled.site.is_empty() {
            String::new()
        } else {
            format!(", site {}", enrolled.site)
        },
        if enrolled.tags.is_empty() {
            String::new()
        } else {
            format!(", tags {}", enrolled.tags.join(", "))
        },
    ));
    done.push(format!(
        "{}: the fleet CA; {}: this desk's certificate; {}: its key (made here, never sent)",
        config.tls.ca.display(),
        config.tls.cert.display(),
        config.tls.key.display()
    ));
    Ok(done)
}

/// At start: a desk with no certificate yet and a token left beside its
/// configuration enrolls with it (retrying while the collector cannot be
/// reached), then the token file goes. Returns whether it enrolled.
pub async fn enroll_pending(config_path: &Path, skeleton: &str) -> Result<bool, String> {
    let file = token_file(config_path);
    let Ok(text) = std::fs::read_to_string(&file) else {
        return Ok(false);
    };
    let config = AgentConfig::load(config_path).map_err(|e| e.to_string())?;
    if config.tls.cert.exists() {
        return Ok(false);
    }
    let opts = EnrollOptions {
        config: config_path.to_path_buf(),
        token: text.trim().to_owned(),
        ..Default::default()
    };
    let mut attempt = 0u32;
    loop {
        match enroll_desk(&opts, skeleton).await {
            Ok(done) => {
                for line in done {
                    tracing::info!("{line}");
                }
                if let Err(error) = std::fs::remove_file(&file) {
                    tracing::warn!(%error, path = %file.display(), "cannot remove the used token");
                }
                return Ok(true);
            }
            // The collector said no: waiting will not change it.
            Err(e) if !e.retry => {
                return Err(format!("{}: {e}", file.display()));
            }
            Err(e) => {
                let wait = crate::link::backoff(
                    attempt,
                    config.link.reconnect_min,
                    config.link.reconnect_max,
                );
                attempt = attempt.saturating_add(1);
                tracing::warn!(error = %e, retry_in = ?wait, "enrollment failed; retrying");
                tokio::time::sleep(wait.max(Duration::from_millis(200))).await;
            }
        }
    }
}
