//! vitalsctl's client edge: connection settings (flags, environment,
//! profile file), the mTLS channel to the collector's `Specialist` service,
//! and the rendering of answers as tables or JSON. Wire types stop here;
//! rendering works on domain types.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use vitals_proto::config_file::{self, ConfigFileError};
use vitals_proto::domain::{EndpointDetail, EndpointSummary, FaultRecord, HistoryEntry};
use vitals_proto::wire;
use vitals_proto::wire::specialist_client::SpecialistClient;

/// A saved set of connection settings, `vitalsctl.toml`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// The collector, `https://HOST:PORT`.
    pub collector: Option<String>,
    /// TLS name on the collector's certificate (default: the URL's host).
    pub server_name: Option<String>,
    /// The fleet CA.
    pub ca: Option<PathBuf>,
    /// This specialist's certificate.
    pub cert: Option<PathBuf>,
    /// This specialist's private key.
    pub key: Option<PathBuf>,
}

impl Profile {
    pub fn load(path: &Path) -> Result<Self, ConfigFileError> {
        let mut p: Profile = config_file::load(path)?;
        for f in [&mut p.ca, &mut p.cert, &mut p.key].into_iter().flatten() {
            *f = config_file::resolve(path, f);
        }
        Ok(p)
    }

    /// Fills what `self` lacks from `other`.
    pub fn or(self, other: Profile) -> Profile {
        Profile {
            collector: self.collector.or(other.collector),
            server_name: self.server_name.or(other.server_name),
            ca: self.ca.or(other.ca),
            cert: self.cert.or(other.cert),
            key: self.key.or(other.key),
        }
    }
}

/// Where vitalsctl looks for a profile when none is named: the quickstart's
/// data directory under the current folder, then the user's config folder.
pub fn default_profile_paths() -> Vec<PathBuf> {
    let mut paths = vec![PathBuf::from("vitals-data/vitalsctl.toml")];
    if let Some(dir) = std::env::var_os("XDG_CONFIG_HOME") {
        paths.push(PathBuf::from(dir).join("vitals/vitalsctl.toml"));
    } else if let Some(home) = std::env::var_os("HOME").or_else(|| std::env::var_os("APPDATA")) {
        paths.push(PathBuf::from(home).join(".config/vitals/vitalsctl.toml"));
    }
    paths
}

#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error("{0}")]
    Settings(String),
    #[error(transparent)]
    Profile(#[from] ConfigFileError),
    #[error("cannot read {what} {path}: {source}")]
    File {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("cannot reach the collector at {url}: {detail}")]
    Connect { url: String, detail: String },
    #[error("{}", status_message(.0))]
    Status(#[from] tonic::Status),
}

fn status_message(s: &tonic::Status) -> String {
    use tonic::Code;
    match s.code() {
        Code::PermissionDenied => format!("permission denied: {}", s.message()),
        Code::NotFound => format!("not found: {}", s.message()),
        Code::Unauthenticated => format!("not authenticated: {}", s.message()),
        Code::Unavailable | Code::Unknown => {
            format!("collector unavailable: {}", vitals_proto::error_chain(s))
        }
        _ => format!("{:?}: {}", s.code(), s.message()),
    }
}

/// A connected specialist client.
pub struct Client {
    inner: SpecialistClient<Channel>,
}

impl Client {
    /// Connects with complete settings; every missing one is named.
    pub async fn connect(p: &Profile) -> Result<Self, CtlError> {
        let need = |v: &Option<PathBuf>, what: &str, env: &str| {
            v.clone().ok_or_else(|| {
                CtlError::Settings(format!(
                    "no {what}: pass --{what}, set {env}, or use a profile (--profile)"
                ))
            })
        };
        let url = p.collector.clone().ok_or_else(|| {
            CtlError::Settings(
                "no collector address: pass --collector, set VITALS_COLLECTOR, or use a profile (--profile)"
                    .into(),
            )
        })?;
        let ca = need(&p.ca, "ca", "VITALS_CA")?;
        let cert = need(&p.cert, "cert", "VITALS_CERT")?;
        let key = need(&p.key, "key", "VITALS_KEY")?;
        let read = |what, path: &Path| {
            std::fs::read(path).map_err(|source| CtlError::File {
                what,
                path: path.display().to_string(),
                source,
            })
        };
        let endpoint = Endpoint::from_shared(url.clone()).map_err(|e| CtlError::Connect {
            url: url.clone(),
            detail: e.to_string(),
        })?;
        let server_name = p.server_name.clone().unwrap_or_else(|| {
            endpoint
                .uri()
                .host()
                .unwrap_or_default()
                .trim_matches(['[', ']'])
                .to_owned()
        });
        let tls = ClientTlsConfig::new()
            .domain_name(server_name)
            .ca_certificate(Certificate::from_pem(read("CA certificate", &ca)?))
            .identity(Identity::from_pem(
                read("certificate", &cert)?,
                read("key", &key)?,
            ));
        let channel = endpoint
            .tls_config(tls)
            .map(|e| {
                e.connect_timeout(std::time::Duration::from_secs(5))
                    .timeout(std::time::Duration::from_secs(30))
            })
            .map_err(|e| CtlError::Connect {
                url: url.clone(),
                detail: vitals_proto::error_chain(&e),
            })?
            .connect()
            .await
            .map_err(|e| CtlError::Connect {
                url,
                detail: vitals_proto::error_chain(&e),
            })?;
        Ok(Client {
            inner: SpecialistClient::new(channel),
        })
    }

    pub async fn list_endpoints(
        &mut self,
        online_only: bool,
    ) -> Result<Vec<EndpointSummary>, CtlError> {
        let r = self
            .inner
            .list_endpoints(wire::ListEndpointsRequest { online_only })
            .await?;
        Ok(r.into_inner()
            .endpoints
            .into_iter()
            .map(Into::into)
            .collect())
    }

    pub async fn endpoint(&mut self, id: &str) -> Result<EndpointDetail, CtlError> {
        let r = self
            .inner
            .get_endpoint(wire::GetEndpointRequest {
                endpoint_id: id.to_owned(),
            })
            .await?;
        Ok(r.into_inner().into())
    }

    pub async fn history(&mut self, id: &str, limit: u32) -> Result<Vec<HistoryEntry>, CtlError> {
        let r = self
            .inner
            .endpoint_history(wire::EndpointHistoryRequest {
                endpoint_id: id.to_owned(),
                limit,
            })
            .await?;
        Ok(r.into_inner().entries.into_iter().map(Into::into).collect())
    }
}

impl Client {
    pub async fn faults(&mut self, id: &str, limit: u32) -> Result<Vec<FaultRecord>, CtlError> {
        let r = self
            .inner
            .endpoint_faults(wire::EndpointFaultsRequest {
                endpoint_id: id.to_owned(),
                limit,
            })
            .await?;
        r.into_inner()
            .faults
            .into_iter()
            .map(|f| {
                f.try_into()
                    .map_err(|why: String| CtlError::Status(tonic::Status::internal(why)))
            })
            .collect()
    }
}

/// Fault events as a table.
pub fn faults_table(faults: &[FaultRecord]) -> String {
    let rows: Vec<Vec<String>> = faults
        .iter()
        .map(|f| {
            vec![
                f.seq.to_string(),
                timestamp(f.event.at_ms),
                f.event.state.as_str().to_owned(),
                f.event.severity.as_str().to_owned(),
                f.event.check_id.clone(),
                f.event.subject.clone(),
                format!("{}", f.event.value),
                f.event.evidence.clone(),
            ]
        })
        .collect();
    table(
        &[
            "SEQ", "AT", "STATE", "SEVERITY", "CHECK", "SUBJECT", "VALUE", "EVIDENCE",
        ],
        &rows,
    )
}

/// An RFC 3339 time in UTC, to the second.
pub fn timestamp(ms: i64) -> String {
    if ms <= 0 {
        return "-".into();
    }
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

pub use vitals_proto::report::{ago, table};

/// The endpoint list as a table.
pub fn endpoints_table(list: &[EndpointSummary], now_ms: i64) -> String {
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|e| {
            vec![
                e.endpoint_id.clone(),
                e.hostname.clone(),
                if e.online { "online" } else { "offline" }.to_owned(),
                e.os.clone(),
                format!("{:.0}%", e.cpu_usage_percent),
                format!("{:.0}%", e.memory_used_percent),
                format!("{:.0}%", e.fullest_disk_percent),
                ago(e.last_seen_ms, now_ms),
            ]
        })
        .collect();
    table(
        &[
            "ENDPOINT",
            "HOST",
            "STATE",
            "OS",
            "CPU",
            "MEM",
            "DISK",
            "LAST SEEN",
        ],
        &rows,
    )
}

/// One endpoint, in sections a specialist reads top to bottom.
pub fn endpoint_text(d: &EndpointDetail, now_ms: i64) -> String {
    use std::fmt::Write;
    let s = &d.summary;
    let mut out = String::new();
    let state = if s.online { "online" } else { "offline" };
    let _ = writeln!(out, "Endpoint   {}", s.endpoint_id);
    let _ = writeln!(
        out,
        "State      {state} since {} ({})",
        timestamp(d.state_since_ms),
        ago(d.state_since_ms, now_ms)
    );
    let _ = writeln!(out, "Agent      {} on {}", s.agent_version, s.platform);
    let _ = writeln!(
        out,
        "Seen       first {}, last {}",
        timestamp(s.first_seen_ms),
        timestamp(s.last_seen_ms)
    );
    let _ = writeln!(
        out,
        "History    {} snapshots, up to seq {}",
        d.history_len, d.committed_seq
    );
    let Some(snap) = &d.latest else {
        let _ = writeln!(out, "\nNo snapshot received yet.");
        return out;
    };
    let _ = writeln!(
        out,
        "\nSnapshot   taken {} ({})",
        timestamp(snap.taken_at_ms),
        ago(snap.taken_at_ms, now_ms)
    );
    out.push_str(&vitals_proto::report::snapshot_text(snap, now_ms));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_fills_gaps_and_resolves_paths() {
        let dir = std::env::temp_dir().join(format!("vitals-ctl-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("vitalsctl.toml");
        std::fs::write(&path, "collector = \"https://c:1\"\nca = \"pki/ca.pem\"\n").unwrap();
        let from_file = Profile::load(&path).unwrap();
        let flags = Profile {
            collector: Some("https://flag:2".into()),
            ..Default::default()
        };
        let p = flags.or(from_file);
        assert_eq!(p.collector.as_deref(), Some("https://flag:2"));
        assert_eq!(p.ca, Some(dir.join("pki/ca.pem")));
        std::fs::write(&path, "colector = \"x\"\n").unwrap();
        let err = Profile::load(&path).unwrap_err().to_string();
        assert!(
            err.contains("vitalsctl.toml:1: unknown field \"colector\""),
            "{err}"
        );
    }
}
