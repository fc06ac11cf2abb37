//! The diagnostic catalog: the only things a specialist can make an agent
//! run, each read-only, with typed and bounded parameters.
//!
//! Both sides parse a request here: the collector to refuse a bad one at
//! once, the agent again before it runs anything (it trusts no one with
//! what runs on the desk).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A run's deadline when the specialist gives none.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(30);
/// The longest deadline a specialist may ask for.
pub const MAX_DEADLINE: Duration = Duration::from_secs(300);
/// The most a result may weigh (text and JSON together).
pub const MAX_OUTPUT_BYTES: usize = 512 * 1024;

const MAX_NAMES: usize = 10;
const MAX_COUNT: u32 = 20;
const MAX_TOP: u32 = 50;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Network,
    Printer,
    Disk,
    Os,
    Snapshot,
    Full,
}

crate::text_enum!(Kind {
    Network => "network",
    Printer => "printer",
    Disk => "disk",
    Os => "os",
    Snapshot => "snapshot",
    Full => "full",
});

impl Kind {
    /// The parameters it takes.
    pub fn params(self) -> &'static [&'static str] {
        match self {
            Kind::Network => &["names", "targets", "count"],
            Kind::Printer => &["name"],
            Kind::Disk => &["root", "top"],
            Kind::Os | Kind::Snapshot => &[],
            Kind::Full => &["names", "targets"],
        }
    }
}

/// `network`: the gateway's echo series, lookups of `names`, TCP connects to
/// `targets`, and the path to the collector.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkParams {
    pub names: Vec<String>,
    /// `HOST:PORT`.
    pub targets: Vec<String>,
    /// Echo probes to the gateway.
    pub count: u32,
}

/// A request checked against the catalog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Diagnostic {
    Network(NetworkParams),
    /// One CUPS queue or configured network printer, in full.
    Printer {
        name: String,
    },
    /// Usage and SMART of the disk holding `root`, and the biggest
    /// directories under it (`top` of them).
    Disk {
        root: String,
        top: u32,
    },
    /// Services, pending reboot, recent critical log entries.
    Os,
    /// Every probe, now.
    Snapshot,
    /// All of the above (printers: every one).
    Full(NetworkParams),
}

impl Diagnostic {
    pub fn kind(&self) -> Kind {
        match self {
            Diagnostic::Network(_) => Kind::Network,
            Diagnostic::Printer { .. } => Kind::Printer,
            Diagnostic::Disk { .. } => Kind::Disk,
            Diagnostic::Os => Kind::Os,
            Diagnostic::Snapshot => Kind::Snapshot,
            Diagnostic::Full(_) => Kind::Full,
        }
    }

    /// Checks `kind` and `params` against the catalog; the message says
    /// what is wrong and what would be right.
    pub fn parse(kind: &str, params: &BTreeMap<String, String>) -> Result<Diagnostic, String> {
        let k: Kind = kind.parse().map_err(|e: crate::UnknownName| {
            format!(
                "unknown diagnostic \"{kind}\" (the catalog: {})",
                e.expected.join(", ")
            )
        })?;
        if let Some(p) = params.keys().find(|p| !k.params().contains(&p.as_str())) {
            return Err(if k.params().is_empty() {
                format!("{k}: takes no parameters, got \"{p}\"")
            } else {
                format!(
                    "{k}: unknown parameter \"{p}\" (takes {})",
                    k.params().join(", ")
                )
            });
        }
        let get = |p: &str| params.get(p).map(|v| v.trim()).filter(|v| !v.is_empty());
        let network = || -> Result<NetworkParams, String> {
            let names = list(k, "names", get("names"))?;
            for n in &names {
                host_name(n).map_err(|e| format!("{k}: names: {e}"))?;
            }
            let targets = list(k, "targets", get("targets"))?;
            for t in &targets {
                host_port(t).map_err(|e| format!("{k}: targets: {e}"))?;
            }
            let count = number(k, "count", get("count"), 4, 1, MAX_COUNT)?;
            Ok(NetworkParams {
                names,
                targets,
                count,
            })
        };
        Ok(match k {
            Kind::Network => Diagnostic::Network(network()?),
            Kind::Full => Diagnostic::Full(network()?),
            Kind::Printer => {
                let name = get("name").ok_or_else(|| {
                    "printer: parameter \"name\" is required (a CUPS queue or a configured network printer)"
                        .to_owned()
                })?;
                if name.len() > 127 || name.chars().any(char::is_control) {
                    return Err("printer: name must be up to 127 printable characters".into());
                }
                Diagnostic::Printer {
                    name: name.to_owned(),
                }
            }
            Kind::Disk => {
                let root = get("root").unwrap_or("/").to_owned();
                let absolute = root.starts_with('/')
                    || root.get(1..3).is_some_and(|s| s == ":\\" || s == ":/");
                if !absolute || root.split(['/', '\\']).any(|c| c == "..") {
                    return Err(format!(
                        "disk: root \"{root}\" must be an absolute path without \"..\""
                    ));
                }
                let top = number(k, "top", get("top"), 10, 1, MAX_TOP)?;
                Diagnostic::Disk { root, top }
            }
            Kind::Os => Diagnostic::Os,
            Kind::Snapshot => Diagnostic::Snapshot,
        })
    }
}

fn list(k: Kind, param: &str, value: Option<&str>) -> Result<Vec<String>, String> {
    let items: Vec<String> = value
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    if items.len() > MAX_NAMES {
        return Err(format!("{k}: {param}: at most {MAX_NAMES}"));
    }
    Ok(items)
}

fn number(
    k: Kind,
    param: &str,
    value: Option<&str>,
    default: u32,
    min: u32,
    max: u32,
) -> Result<u32, String> {
    let Some(v) = value else {
        return Ok(default);
    };
    match v.parse::<u32>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(format!(
            "{k}: {param} must be a number from {min} to {max}, got \"{v}\""
        )),
    }
}

/// A DNS name or an IP address.
fn host_name(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 253
        && (s.parse::<std::net::IpAddr>().is_ok()
            || s.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            }));
    if ok {
        Ok(())
    } else {
        Err(format!("\"{s}\" is not a host name"))
    }
}

/// `HOST:PORT` (IPv6 in brackets).
fn host_port(s: &str) -> Result<(), String> {
    let bad = || format!("\"{s}\" is not HOST:PORT");
    let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
    port.parse::<u16>()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(bad)?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    host_name(host).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_catalog_takes_typed_bounded_parameters() {
        assert_eq!(
            Diagnostic::parse(
                "network",
                &params(&[
                    ("names", "erp.city.example, 10.0.0.5"),
                    ("targets", "erp:443,[fd00::1]:53")
                ])
            ),
            Ok(Diagnostic::Network(NetworkParams {
                names: vec!["erp.city.example".into(), "10.0.0.5".into()],
                targets: vec!["erp:443".into(), "[fd00::1]:53".into()],
                count: 4,
            }))
        );
        assert_eq!(
            Diagnostic::parse("disk", &params(&[])),
            Ok(Diagnostic::Disk {
                root: "/".into(),
                top: 10
            })
        );
        assert_eq!(Diagnostic::parse("os", &params(&[])), Ok(Diagnostic::Os));
        for (kind, p, expect) in [
            (
                "shell",
                vec![],
                "unknown diagnostic \"shell\" (the catalog: network, printer",
            ),
            (
                "os",
                vec![("cmd", "rm")],
                "os: takes no parameters, got \"cmd\"",
            ),
            (
                "network",
                vec![("host", "x")],
                "network: unknown parameter \"host\" (takes names, targets, count)",
            ),
            (
                "network",
                vec![("count", "500")],
                "network: count must be a number from 1 to 20",
            ),
            (
                "network",
                vec![("names", "a;rm -rf /")],
                "is not a host name",
            ),
            (
                "network",
                vec![("targets", "erp")],
                "\"erp\" is not HOST:PORT",
            ),
            ("printer", vec![], "parameter \"name\" is required"),
            ("disk", vec![("root", "etc")], "must be an absolute path"),
            ("disk", vec![("root", "/home/../etc")], "without \"..\""),
            (
                "disk",
                vec![("top", "0")],
                "top must be a number from 1 to 50",
            ),
        ] {
            let err = Diagnostic::parse(kind, &params(&p)).unwrap_err();
            assert!(err.contains(expect), "{kind} {p:?}: {err}");
        }
    }
}

/// The end of a diagnostic run (see `DiagnosticResult` on the wire).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DiagnosticResult {
    pub ok: bool,
    pub error: String,
    pub text: String,
    pub json: String,
    pub run_ms: u64,
}

/// One line of the audit log: who asked which endpoint for what, and how
/// it went. Written once, never changed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub id: u64,
    pub at_ms: i64,
    /// The certificate identity of the caller.
    pub who: String,
    pub role: String,
    #[serde(rename = "endpoint")]
    pub endpoint_id: String,
    pub kind: String,
    pub params: BTreeMap<String, String>,
    /// ok, failed, refused, offline, timed_out, cancelled, disconnected.
    pub outcome: String,
    pub detail: String,
    pub duration_ms: u64,
    pub ticket: Option<u64>,
}

/// A diagnostic run sent down an agent's stream: which kind, with what,
/// and how long the agent may take.
#[derive(Debug, Clone, PartialEq)]
pub struct DiagnosticRequest {
    /// The collector's id for the run; updates come back under it.
    pub id: u64,
    pub kind: String,
    pub params: BTreeMap<String, String>,
    pub timeout: std::time::Duration,
}

/// What an agent sends back for a run: progress lines, then one result.
#[derive(Debug, Clone, PartialEq)]
pub struct DiagnosticUpdate {
    pub id: u64,
    /// `None` for an update kind from a newer agent.
    pub body: Option<UpdateBody>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum UpdateBody {
    Progress(String),
    Result(DiagnosticResult),
}
