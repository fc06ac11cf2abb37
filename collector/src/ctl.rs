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

/// "12s ago", "3h ago", or "never".
pub fn ago(ms: i64, now_ms: i64) -> String {
    if ms <= 0 {
        return "never".into();
    }
    let s = ((now_ms - ms).max(0) / 1000) as u64;
    match s {
        0..60 => format!("{s}s ago"),
        60..3600 => format!("{}m ago", s / 60),
        3600..86_400 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86_400),
    }
}

/// An RFC 3339 time in UTC, to the second.
pub fn timestamp(ms: i64) -> String {
    if ms <= 0 {
        return "-".into();
    }
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Lays rows out in columns padded to the widest cell.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  "));
            }
        }
        out.trim_end().to_owned()
    };
    let mut out = line(header.iter().map(|h| h.to_string()).collect());
    out.push('\n');
    for row in rows {
        out.push_str(&line(row.clone()));
        out.push('\n');
    }
    out
}

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
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
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
    let h = &snap.host;
    let _ = writeln!(
        out,
        "\nSnapshot   taken {} ({})",
        timestamp(snap.taken_at_ms),
        ago(snap.taken_at_ms, now_ms)
    );
    let _ = writeln!(out, "Host       {}", h.hostname);
    let _ = writeln!(
        out,
        "OS         {} {} (kernel {}, {})",
        h.os_name, h.os_version, h.kernel_version, h.arch
    );
    let _ = writeln!(
        out,
        "Uptime     {}d {}h {}m",
        h.uptime_secs / 86_400,
        h.uptime_secs % 86_400 / 3600,
        h.uptime_secs % 3600 / 60
    );
    let c = &snap.cpu;
    let load = c
        .load_average
        .map(|l| format!(", load {:.2} {:.2} {:.2}", l.one, l.five, l.fifteen))
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "CPU        {:.1}% of {} cores{load}  {}",
        c.usage_percent, c.logical_cores, c.brand
    );
    let m = &snap.memory;
    let _ = writeln!(
        out,
        "Memory     {:.1} of {:.1} GiB used ({:.0}%), swap {:.1} of {:.1} GiB",
        gib(m.used_bytes),
        gib(m.total_bytes),
        m.used_percent(),
        gib(m.swap_used_bytes),
        gib(m.swap_total_bytes)
    );
    if !snap.disks.is_empty() {
        let rows: Vec<Vec<String>> = snap
            .disks
            .iter()
            .map(|x| {
                vec![
                    x.mount_point.clone(),
                    x.file_system.clone(),
                    format!("{:.1} GiB", gib(x.total_bytes)),
                    format!("{:.1} GiB", gib(x.available_bytes)),
                    format!("{:.0}%", x.used_percent()),
                ]
            })
            .collect();
        let _ = write!(
            out,
            "\n{}",
            table(&["MOUNT", "FS", "SIZE", "FREE", "USED"], &rows)
        );
    }
    if !snap.interfaces.is_empty() {
        let rows: Vec<Vec<String>> = snap
            .interfaces
            .iter()
            .map(|i| {
                vec![
                    i.name.clone(),
                    i.addresses.join(" "),
                    format!("{}/{}", i.rx_errors, i.tx_errors),
                    format!("{}/{}", i.rx_bytes, i.tx_bytes),
                ]
            })
            .collect();
        let _ = write!(
            out,
            "\n{}",
            table(
                &["INTERFACE", "ADDRESSES", "ERRORS RX/TX", "BYTES RX/TX"],
                &rows
            )
        );
    }
    for e in &snap.probe_errors {
        let _ = writeln!(out, "Problem    {}: {}", e.probe, e.message);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ago_reads_naturally() {
        assert_eq!(ago(0, 10), "never");
        assert_eq!(ago(1_000, 6_000), "5s ago");
        assert_eq!(ago(1_000, 1_000 + 7_200_000), "2h ago");
    }

    #[test]
    fn table_aligns_columns() {
        let t = table(
            &["A", "LONG"],
            &[
                vec!["xyz".into(), "1".into()],
                vec!["q".into(), "22".into()],
            ],
        );
        assert_eq!(t, "A    LONG\nxyz  1\nq    22\n");
    }

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
