//! `agent.toml`: typed, strict, validated before the agent connects.
//!
//! Relative paths are resolved against the folder holding the file.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};
use vitals_proto::config_file::{self, ConfigFileError};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// The collector's address, `https://HOST:PORT`.
    #[serde(deserialize_with = "collector_url")]
    pub collector: String,
    /// TLS name to verify on the collector's certificate; defaults to the
    /// URL's host.
    pub server_name: Option<String>,
    /// Folder for the agent's own state (sequence counter; later the outbox).
    pub state_dir: PathBuf,
    pub tls: TlsFiles,
    #[serde(default)]
    pub link: LinkSettings,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// The fleet CA the collector's certificate must chain to.
    pub ca: PathBuf,
    /// This agent's certificate; its endpoint ID is read from it.
    pub cert: PathBuf,
    /// This agent's private key.
    pub key: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkSettings {
    /// Snapshot interval until the collector's welcome sets its own.
    #[serde(default = "default_snapshot_interval", with = "humantime_serde")]
    pub snapshot_interval: Duration,
    /// First reconnect delay; doubles on each failure, with full jitter.
    #[serde(default = "default_reconnect_min", with = "humantime_serde")]
    pub reconnect_min: Duration,
    /// Longest reconnect delay.
    #[serde(default = "default_reconnect_max", with = "humantime_serde")]
    pub reconnect_max: Duration,
    /// Messages held while the collector is unreachable; past this the
    /// oldest snapshots are dropped.
    #[serde(default = "default_max_pending")]
    pub max_pending: usize,
}

impl Default for LinkSettings {
    fn default() -> Self {
        LinkSettings {
            snapshot_interval: default_snapshot_interval(),
            reconnect_min: default_reconnect_min(),
            reconnect_max: default_reconnect_max(),
            max_pending: default_max_pending(),
        }
    }
}

fn default_snapshot_interval() -> Duration {
    Duration::from_secs(60)
}
fn default_reconnect_min() -> Duration {
    Duration::from_secs(1)
}
fn default_reconnect_max() -> Duration {
    Duration::from_secs(60)
}
fn default_max_pending() -> usize {
    1000
}

fn collector_url<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    check_collector_url(&s).map_err(serde::de::Error::custom)?;
    Ok(s)
}

fn check_collector_url(s: &str) -> Result<(), String> {
    let uri: tonic::transport::Uri = s
        .parse()
        .map_err(|e| format!("collector \"{s}\" is not a URL: {e}"))?;
    if uri.scheme_str() != Some("https") {
        return Err(format!(
            "collector \"{s}\" must use https:// (the link is always mTLS)"
        ));
    }
    if uri.host().is_none_or(str::is_empty) || uri.port_u16().is_none() {
        return Err(format!(
            "collector \"{s}\" must name a host and a port, like https://collector:7443"
        ));
    }
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    File(#[from] ConfigFileError),
    #[error("{file}: {message}")]
    Invalid { file: String, message: String },
}

impl AgentConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let mut c: AgentConfig = config_file::load(path)?;
        c.state_dir = config_file::resolve(path, &c.state_dir);
        for p in [&mut c.tls.ca, &mut c.tls.cert, &mut c.tls.key] {
            *p = config_file::resolve(path, p);
        }
        let invalid = |message: &str| ConfigError::Invalid {
            file: path.display().to_string(),
            message: message.to_owned(),
        };
        let l = &c.link;
        if l.snapshot_interval < Duration::from_secs(1) {
            return Err(invalid("link.snapshot_interval must be at least 1s"));
        }
        if l.reconnect_min.is_zero() || l.reconnect_max < l.reconnect_min {
            return Err(invalid(
                "link.reconnect_min must be above 0 and at most link.reconnect_max",
            ));
        }
        if l.max_pending == 0 {
            return Err(invalid("link.max_pending must be at least 1"));
        }
        Ok(c)
    }

    /// The TLS name the collector's certificate must carry.
    pub fn server_name(&self) -> String {
        self.server_name.clone().unwrap_or_else(|| {
            self.collector
                .parse::<tonic::transport::Uri>()
                .ok()
                .and_then(|u| u.host().map(|h| h.trim_matches(['[', ']']).to_owned()))
                .unwrap_or_default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"collector = "https://collector.example:7443"
state_dir = "state"

[tls]
ca = "pki/ca.pem"
cert = "pki/agent.pem"
key = "pki/agent.key"
"#;

    fn write(name: &str, text: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("vitals-acfg-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("agent.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn good_file_resolves_paths() {
        let path = write("good", GOOD);
        let c = AgentConfig::load(&path).unwrap();
        let dir = path.parent().unwrap();
        assert_eq!(c.tls.ca, dir.join("pki/ca.pem"));
        assert_eq!(c.state_dir, dir.join("state"));
        assert_eq!(c.server_name(), "collector.example");
        assert_eq!(c.link.snapshot_interval, Duration::from_secs(60));
    }

    #[test]
    fn unknown_field_names_file_and_line() {
        let path = write("typo", &format!("{GOOD}\n[link]\nintrval = \"5s\"\n"));
        let err = AgentConfig::load(&path).unwrap_err().to_string();
        assert!(
            err.contains("agent.toml:10: unknown field \"intrval\""),
            "{err}"
        );
    }

    #[test]
    fn plain_http_collector_is_refused_with_line() {
        let text = GOOD.replace("https://collector.example:7443", "http://collector:7443");
        let path = write("http", &text);
        let err = AgentConfig::load(&path).unwrap_err().to_string();
        assert!(
            err.contains("agent.toml:1: collector \"http://collector:7443\" must use https://"),
            "{err}"
        );
    }

    #[test]
    fn url_checks() {
        assert!(check_collector_url("https://[::1]:7443").is_ok());
        assert!(check_collector_url("https://collector").is_err());
        assert!(check_collector_url("not a url").is_err());
    }
}
