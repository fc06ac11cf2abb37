//! vitalsctl's client edge: connection settings (flags, environment,
//! profile file), the mTLS channel to the collector's `Specialist` service,
//! and the rendering of answers as tables or JSON. Wire types stop here;
//! rendering works on domain types.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use vitals_proto::config_file::{self, ConfigFileError};
use vitals_proto::domain::{EndpointDetail, EndpointSummary, FaultRecord, HistoryEntry};
use vitals_proto::tickets::Ticket;
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
    /// What was asked ran and failed; the message says why.
    #[error("{0}")]
    Failed(String),
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
#[derive(Clone)]
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
    /// Revokes an endpoint (admin).
    pub async fn revoke_endpoint(
        &mut self,
        id: &str,
        reason: &str,
    ) -> Result<EndpointDetail, CtlError> {
        let r = self
            .inner
            .revoke_endpoint(wire::RevokeEndpointRequest {
                endpoint_id: id.to_owned(),
                reason: reason.to_owned(),
            })
            .await?;
        Ok(r.into_inner().into())
    }

    /// Binds an endpoint to one machine, resolving a cloned-image flag.
    pub async fn bind_endpoint(
        &mut self,
        id: &str,
        machine: &str,
    ) -> Result<EndpointDetail, CtlError> {
        let r = self
            .inner
            .bind_endpoint(wire::BindEndpointRequest {
                endpoint_id: id.to_owned(),
                machine_id: machine.to_owned(),
            })
            .await?;
        Ok(r.into_inner().into())
    }

    /// A new certificate for a new key made here; the profile's certificate
    /// and key files are replaced (key first, each whole). Returns the new
    /// certificate's expiry.
    pub async fn renew_own(&mut self, p: &Profile) -> Result<i64, CtlError> {
        let (Some(cert), Some(key)) = (&p.cert, &p.key) else {
            return Err(CtlError::Settings(
                "no certificate and key files to renew".into(),
            ));
        };
        let key_pair = rcgen::KeyPair::generate().map_err(|e| CtlError::Failed(e.to_string()))?;
        let csr_pem = rcgen::CertificateParams::default()
            .serialize_request(&key_pair)
            .and_then(|c| c.pem())
            .map_err(|e| CtlError::Failed(e.to_string()))?;
        let issued = self
            .inner
            .renew_certificate(wire::RenewCertificate { csr_pem })
            .await?
            .into_inner();
        let write = |path: &Path, text: &str| {
            vitals_proto::files::replace(path, text.as_bytes(), true).map_err(|source| {
                CtlError::File {
                    what: "renewed file",
                    path: path.display().to_string(),
                    source,
                }
            })
        };
        write(key, &key_pair.serialize_pem())?;
        write(cert, &issued.certificate_pem)?;
        Ok(issued.not_after_ms)
    }

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

/// What `tickets list` may filter on.
#[derive(Debug, Clone, Default)]
pub struct TicketQuery {
    pub open_only: bool,
    pub endpoint: String,
    pub check: String,
    pub incident: Option<u64>,
    pub status: String,
    pub priority: String,
    pub assignee: String,
    pub limit: u32,
}

/// A change a specialist makes to a ticket.
pub enum TicketChange {
    Assign(String),
    Comment(String),
    Status(String),
    Resolve(String),
    Escalate,
    Reopen(String),
}

/// A ticket with its timeline, snapshot at fault time and knowledge.
pub type TicketView = vitals_proto::tickets::TicketDetail;

fn ticket_view(d: wire::TicketDetail) -> TicketView {
    d.into()
}

impl Client {
    pub async fn tickets(&mut self, q: TicketQuery) -> Result<Vec<Ticket>, CtlError> {
        let r = self
            .inner
            .list_tickets(wire::ListTicketsRequest {
                open_only: q.open_only,
                endpoint_id: q.endpoint,
                check_id: q.check,
                incident: q.incident,
                status: q.status,
                priority: q.priority,
                assignee: q.assignee,
                limit: q.limit,
            })
            .await?;
        Ok(r.into_inner().tickets.into_iter().map(Into::into).collect())
    }

    pub async fn ticket(&mut self, id: u64) -> Result<TicketView, CtlError> {
        let r = self.inner.get_ticket(wire::GetTicketRequest { id }).await?;
        Ok(ticket_view(r.into_inner()))
    }

    pub async fn change_ticket(
        &mut self,
        id: u64,
        change: TicketChange,
    ) -> Result<TicketView, CtlError> {
        use wire::update_ticket_request::Action as A;
        let action = match change {
            TicketChange::Assign(to) => A::Assign(to),
            TicketChange::Comment(text) => A::Comment(text),
            TicketChange::Status(s) => A::Status(s),
            TicketChange::Resolve(notes) => A::Resolve(notes),
            TicketChange::Escalate => A::Escalate(true),
            TicketChange::Reopen(reason) => A::Reopen(reason),
        };
        let r = self
            .inner
            .update_ticket(wire::UpdateTicketRequest {
                id,
                action: Some(action),
            })
            .await?;
        Ok(ticket_view(r.into_inner()))
    }

    pub async fn open_ticket(
        &mut self,
        endpoint: &str,
        title: &str,
        description: &str,
        severity: vitals_proto::domain::Severity,
    ) -> Result<TicketView, CtlError> {
        let r = self
            .inner
            .open_ticket(wire::OpenTicketRequest {
                endpoint_id: endpoint.to_owned(),
                title: title.to_owned(),
                description: description.to_owned(),
                severity: vitals_proto::convert::severity_to_wire_i32(severity),
            })
            .await?;
        Ok(ticket_view(r.into_inner()))
    }

    /// Ticket changes as they are committed, until the stream ends.
    pub async fn watch_tickets(&mut self) -> Result<tonic::Streaming<wire::TicketEntry>, CtlError> {
        Ok(self
            .inner
            .watch_tickets(wire::WatchTicketsRequest {})
            .await?
            .into_inner())
    }

    /// Runs a diagnostic; the stream carries progress, then the result.
    pub async fn run_diagnostic(
        &mut self,
        r: DiagQuery,
    ) -> Result<tonic::Streaming<wire::DiagnosticEvent>, CtlError> {
        Ok(self
            .inner
            .run_diagnostic(wire::RunDiagnosticRequest {
                endpoint_id: r.endpoint,
                kind: r.kind,
                params: r.params.into_iter().collect(),
                deadline_ms: r.deadline.as_millis() as u64,
                wait_offline_ms: r.wait_offline.as_millis() as u64,
                ticket: r.ticket,
            })
            .await?
            .into_inner())
    }

    /// The audit log, newest first.
    pub async fn audit(
        &mut self,
        endpoint: &str,
        who: &str,
        kind: &str,
        limit: u32,
    ) -> Result<Vec<vitals_proto::diag::AuditEntry>, CtlError> {
        let r = self
            .inner
            .list_audit(wire::ListAuditRequest {
                endpoint_id: endpoint.to_owned(),
                who: who.to_owned(),
                kind: kind.to_owned(),
                limit,
            })
            .await?;
        Ok(r.into_inner().entries.into_iter().map(Into::into).collect())
    }
}

/// A diagnostic to run.
#[derive(Debug, Clone, Default)]
pub struct DiagQuery {
    pub endpoint: String,
    pub kind: String,
    pub params: std::collections::BTreeMap<String, String>,
    /// Zero: the collector's default.
    pub deadline: std::time::Duration,
    pub wait_offline: std::time::Duration,
    pub ticket: Option<u64>,
}

/// The audit log as a table.
pub fn audit_table(entries: &[vitals_proto::diag::AuditEntry]) -> String {
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|e| {
            let params: Vec<String> = e.params.iter().map(|(k, v)| format!("{k}={v}")).collect();
            vec![
                e.id.to_string(),
                timestamp(e.at_ms),
                format!("{} ({})", e.who, e.role),
                e.endpoint_id.clone(),
                if params.is_empty() {
                    e.kind.clone()
                } else {
                    format!("{} {}", e.kind, params.join(" "))
                },
                e.outcome.clone(),
                format!("{} ms", e.duration_ms),
                e.detail.clone(),
            ]
        })
        .collect();
    table(
        &[
            "ID", "AT", "WHO", "ENDPOINT", "WHAT", "OUTCOME", "TOOK", "DETAIL",
        ],
        &rows,
    )
}

/// The ticket queue as a table.
pub fn tickets_table(tickets: &[Ticket], now_ms: i64) -> String {
    let rows: Vec<Vec<String>> = tickets
        .iter()
        .map(|t| {
            vec![
                t.id.to_string(),
                t.priority.as_str().to_uppercase(),
                t.status.as_str().to_owned(),
                t.endpoint.clone(),
                format!("{} ({})", t.title, t.subject),
                t.assignee.clone().unwrap_or_else(|| "-".into()),
                t.incident
                    .map(|i| i.to_string())
                    .unwrap_or_else(|| "-".into()),
                ago(t.last_raised_ms, now_ms),
            ]
        })
        .collect();
    table(
        &[
            "ID",
            "PRI",
            "STATUS",
            "ENDPOINT",
            "PROBLEM",
            "ASSIGNEE",
            "INCIDENT",
            "LAST RAISED",
        ],
        &rows,
    )
}

/// One ticket with its timeline, as text.
pub fn ticket_text(view: &TicketView, now_ms: i64) -> String {
    use std::fmt::Write;
    let (t, timeline) = (&view.ticket, &view.timeline);
    let mut out = String::new();
    let _ = writeln!(out, "Ticket     {} — {}", t.id, t.title);
    let _ = writeln!(
        out,
        "Endpoint   {} ({}: {})",
        t.endpoint, t.check_id, t.subject
    );
    let _ = writeln!(
        out,
        "Priority   {} ({} severity), tier {}",
        t.priority.as_str().to_uppercase(),
        t.severity.as_str(),
        t.tier
    );
    let flap = if t.flapping { ", FLAPPING" } else { "" };
    let _ = writeln!(out, "Status     {}{flap}", t.status.as_str());
    if let Some(a) = &t.assignee {
        let _ = writeln!(out, "Assignee   {a}");
    }
    if let Some(i) = t.incident {
        let _ = writeln!(out, "Incident   {i}");
    }
    let _ = writeln!(
        out,
        "Raised     {} time(s), first {}, last {}",
        t.raise_count,
        timestamp(t.opened_ms),
        ago(t.last_raised_ms, now_ms)
    );
    let _ = writeln!(
        out,
        "SLA        respond by {}, resolve by {}",
        timestamp(t.response_due_ms),
        timestamp(t.resolve_due_ms)
    );
    if !t.members.is_empty() {
        let names: Vec<&str> = t.members.keys().map(String::as_str).collect();
        let _ = writeln!(out, "Failing    {}", names.join(", "));
    }
    let _ = writeln!(out, "Evidence   {}", t.evidence);
    let rows: Vec<Vec<String>> = timeline
        .iter()
        .map(|e| {
            vec![
                timestamp(e.at_ms),
                e.who.clone(),
                e.kind.as_str().to_owned(),
                e.text.clone(),
            ]
        })
        .collect();
    let _ = write!(out, "\n{}", table(&["AT", "WHO", "WHAT", "DETAIL"], &rows));
    if let Some(kb) = &view.knowledge {
        let _ = write!(out, "\n{kb}");
    }
    if let Some(s) = &view.snapshot {
        let _ = writeln!(
            out,
            "\nSnapshot at fault time ({})",
            timestamp(s.taken_at_ms)
        );
        out.push_str(&vitals_proto::report::snapshot_text(s, now_ms));
    }
    out
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
    vitals_proto::rfc3339_seconds(ms)
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
                endpoint_state(e).to_owned(),
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
/// An endpoint's state in one word: revoked and a cloned image come first.
pub fn endpoint_state(e: &EndpointSummary) -> &'static str {
    if e.revoked_ms > 0 {
        "revoked"
    } else if !e.clone_machine_id.is_empty() {
        "cloned?"
    } else if e.online {
        "online"
    } else {
        "offline"
    }
}

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
    if s.revoked_ms > 0 {
        let _ = writeln!(
            out,
            "Revoked    {}: {} (it must enroll again)",
            timestamp(s.revoked_ms),
            s.revoke_reason
        );
    }
    if !s.machine_id.is_empty() {
        let _ = writeln!(out, "Machine    {}", s.machine_id);
    }
    if !s.clone_machine_id.is_empty() {
        let _ = writeln!(
            out,
            "Cloned?    machine {} presented this identity too and is refused",
            s.clone_machine_id
        );
    }
    if let Some(text) = s.enrollment_text() {
        let _ = writeln!(out, "Enrolled   {text}");
    }
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
