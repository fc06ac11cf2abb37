//! Where the agent's files live on each platform, and writing a desk's
//! configuration (`vitals-agent configure`, which the Windows installer
//! runs with the collector and CA it was given).

use std::path::{Path, PathBuf};

use crate::config::AgentConfig;

/// `%ProgramData%\Vitals\agent.toml` on Windows, `/etc/vitals/agent.toml`
/// elsewhere.
pub fn default_config() -> PathBuf {
    if cfg!(windows) {
        let base = std::env::var_os("ProgramData").unwrap_or_else(|| r"C:\ProgramData".into());
        PathBuf::from(base).join("Vitals").join("agent.toml")
    } else {
        PathBuf::from("/etc/vitals/agent.toml")
    }
}

/// The service's log file: `logs\agent.log` beside the configuration.
pub fn log_file(config: &Path) -> PathBuf {
    config
        .parent()
        .unwrap_or(Path::new("."))
        .join("logs")
        .join("agent.log")
}

/// Files to place beside the configuration; `None` or an empty path
/// leaves the one there.
#[derive(Debug, Default)]
pub struct DeskFiles {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

fn given(p: &Option<PathBuf>) -> Option<&Path> {
    p.as_deref().filter(|p| !p.as_os_str().is_empty())
}

/// Replaces the top-level `collector = …` line, keeping every other line
/// (and comment) as it is.
pub fn set_collector(text: &str, url: &str) -> Result<String, String> {
    let mut done = false;
    let mut in_table = false;
    let lines: Vec<String> = text
        .lines()
        .map(|line| {
            let t = line.trim_start();
            if t.starts_with('[') {
                in_table = true;
            }
            let key = t.split('=').next().unwrap_or("").trim();
            if !in_table && !done && key == "collector" && t.contains('=') {
                done = true;
                format!("collector = {}", toml_string(url))
            } else {
                line.to_owned()
            }
        })
        .collect();
    if !done {
        return Err("it has no top-level `collector = …` line to set".into());
    }
    let mut out = lines.join("\n");
    out.push('\n');
    Ok(out)
}

fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Writes the configuration at `config` (from `skeleton` when there is
/// none), sets the collector and copies the desk's files; returns what it
/// did, line by line. A file it replaces is replaced whole (written
/// beside, then renamed), so a failure leaves the old one.
pub fn configure(
    config: &Path,
    skeleton: &str,
    collector: Option<&str>,
    files: &DeskFiles,
) -> Result<Vec<String>, String> {
    let at = |e: std::io::Error, p: &Path| format!("{}: {e}", p.display());
    let dir = config.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| at(e, dir))?;
    let mut done = Vec::new();
    let (mut text, existing) = match std::fs::read_to_string(config) {
        Ok(t) => (t.clone(), Some(t)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            done.push(format!("{}: written from the skeleton", config.display()));
            (skeleton.to_owned(), None)
        }
        Err(e) => return Err(at(e, config)),
    };
    if let Some(url) = collector.filter(|u| !u.is_empty()) {
        if !url.starts_with("https://") {
            return Err(format!("--collector {url}: must be https://HOST:PORT"));
        }
        text = set_collector(&text, url).map_err(|e| format!("{}: {e}", config.display()))?;
        done.push(format!("{}: collector = {url}", config.display()));
    }
    // Unchanged: not rewritten (the agent's own account may not write it).
    if existing.as_deref() != Some(text.as_str()) {
        replace(config, text.as_bytes()).map_err(|e| at(e, config))?;
    }
    let agent = AgentConfig::load(config).map_err(|e| e.to_string())?;
    for (what, from, to) in [
        ("CA", given(&files.ca), &agent.tls.ca),
        ("certificate", given(&files.cert), &agent.tls.cert),
        ("key", given(&files.key), &agent.tls.key),
    ] {
        let Some(from) = from else { continue };
        let bytes = std::fs::read(from).map_err(|e| at(e, from))?;
        if !String::from_utf8_lossy(&bytes).contains("-----BEGIN ") {
            return Err(format!("{}: the {what} is not a PEM file", from.display()));
        }
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent).map_err(|e| at(e, parent))?;
        }
        replace(to, &bytes).map_err(|e| at(e, to))?;
        done.push(format!(
            "{}: the {what}, from {}",
            to.display(),
            from.display()
        ));
    }
    protect(&agent)?;
    let missing: Vec<String> = [
        ("tls.ca", &agent.tls.ca),
        ("tls.cert", &agent.tls.cert),
        ("tls.key", &agent.tls.key),
    ]
    .iter()
    .filter(|(_, p)| !p.exists())
    .map(|(what, p)| format!("{what} {}", p.display()))
    .collect();
    if !missing.is_empty() {
        done.push(format!(
            "not connected yet, missing: {} (vitals-agent configure --ca/--cert/--key)",
            missing.join(", ")
        ));
    }
    Ok(done)
}

fn replace(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".new");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

/// Creates the state folder and makes it and the private key readable by
/// the agent's account only: SYSTEM and Administrators on Windows, the
/// owner elsewhere.
pub fn protect(config: &AgentConfig) -> Result<(), String> {
    let dir = &config.state_dir;
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    restrict(dir)?;
    if config.tls.key.exists() {
        restrict(&config.tls.key)?;
    }
    Ok(())
}

/// Keeps an enrollment token beside the configuration, readable by the
/// agent's account only, for the service's first start.
pub fn keep_token(config: &Path, token: &str) -> Result<String, String> {
    let path = crate::enrollment::token_file(config);
    replace(&path, format!("{token}\n").as_bytes())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    restrict(&path)?;
    Ok(format!(
        "{}: the enrollment token, used at the service's first start",
        path.display()
    ))
}

/// Makes a private key readable by the agent's account only.
pub fn restrict_key(path: &Path) -> Result<(), String> {
    restrict(path)
}

#[cfg(windows)]
fn restrict(path: &Path) -> Result<(), String> {
    crate::win32::acl::restrict_to_admins(path)
}

#[cfg(unix)]
fn restrict(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = if path.is_dir() { 0o700 } else { 0o600 };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| format!("{}: cannot set permissions: {e}", path.display()))
}

#[cfg(not(any(unix, windows)))]
fn restrict(_path: &Path) -> Result<(), String> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SKELETON: &str = include_str!("../../deploy/windows/agent.toml");

    #[test]
    fn the_collector_line_is_set_and_the_rest_kept() {
        let text = "# comment\ncollector = \"https://old:1\"\nstate_dir = \"state\"\n[tls]\ncollector = \"not this\"\n";
        let out = set_collector(text, "https://ps01.city.example:7443").expect("set");
        assert_eq!(
            out,
            "# comment\ncollector = \"https://ps01.city.example:7443\"\nstate_dir = \"state\"\n[tls]\ncollector = \"not this\"\n"
        );
        assert!(set_collector("[tls]\ncollector = \"x\"\n", "https://a:1").is_err());
    }

    #[test]
    fn a_desk_is_configured_from_the_skeleton_and_reconfigured_in_place() {
        let dir = std::env::temp_dir().join(format!("vitals-configure-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let ca = dir.join("city-ca.pem");
        std::fs::write(
            &ca,
            "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
        )
        .expect("ca");
        let config = dir.join("Vitals").join("agent.toml");
        let files = DeskFiles {
            ca: Some(ca.clone()),
            cert: Some(PathBuf::new()),
            key: None,
        };
        let done = configure(
            &config,
            SKELETON,
            Some("https://collector.city.example:7443"),
            &files,
        )
        .expect("configure");
        assert!(done[0].ends_with("written from the skeleton"), "{done:?}");
        assert!(
            done.last()
                .is_some_and(|l| l.contains("missing: tls.cert") && !l.contains("tls.ca")),
            "{done:?}"
        );
        let agent = AgentConfig::load(&config).expect("a valid configuration");
        assert_eq!(agent.collector, "https://collector.city.example:7443");
        assert!(agent.tls.ca.exists() && agent.state_dir.is_dir());
        // Again with another collector and nothing else: the CA stays, a
        // hand edit elsewhere in the file stays.
        let edited = std::fs::read_to_string(&config)
            .expect("read")
            .replace("state_dir = \"state\"", "state_dir = \"state2\"");
        std::fs::write(&config, edited).expect("edit");
        configure(
            &config,
            SKELETON,
            Some("https://other.city.example:7443"),
            &DeskFiles::default(),
        )
        .expect("again");
        let agent = AgentConfig::load(&config).expect("valid");
        assert_eq!(agent.collector, "https://other.city.example:7443");
        assert!(agent.state_dir.ends_with("state2") && agent.tls.ca.exists());
        // Not a PEM, not https: refused, the file untouched.
        let before = std::fs::read_to_string(&config).expect("read");
        let bad = DeskFiles {
            key: Some(config.clone()),
            ..Default::default()
        };
        let e = configure(&config, SKELETON, None, &bad).expect_err("a key that is not PEM");
        assert!(e.contains("the key is not a PEM file"), "{e}");
        let e = configure(
            &config,
            SKELETON,
            Some("http://plain:80"),
            &DeskFiles::default(),
        )
        .expect_err("http");
        assert!(e.contains("must be https://"), "{e}");
        assert_eq!(std::fs::read_to_string(&config).expect("read"), before);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
