//! Strict TOML configuration files with errors that say where.
//!
//! Both the agent and the collector load their files through [`load`], so a
//! mistake reads the same everywhere: `agent.toml:12: unknown field
//! "intrval"`. Relative paths inside a file are resolved against the file's
//! own folder by [`resolve`], so a config works wherever it is started from.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}:{line}: {message}")]
    Invalid {
        path: String,
        line: usize,
        message: String,
    },
}

/// Reads and parses a TOML file into `T`.
pub fn load<T: DeserializeOwned>(path: &Path) -> Result<T, ConfigFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigFileError::Read {
        path: path.display().to_string(),
        source,
    })?;
    parse(&text, &path.display().to_string())
}

/// Parses TOML text; `name` is what errors call the file.
pub fn parse<T: DeserializeOwned>(text: &str, name: &str) -> Result<T, ConfigFileError> {
    toml::from_str(text).map_err(|e| {
        let line = e
            .span()
            .map(|span| text[..span.start.min(text.len())].matches('\n').count() + 1)
            .unwrap_or(1);
        ConfigFileError::Invalid {
            path: name.to_owned(),
            line,
            message: tidy(e.message()),
        }
    })
}

/// serde quotes names with backticks; people read double quotes more easily.
fn tidy(message: &str) -> String {
    message.trim().replace('`', "\"")
}

/// Resolves `p` against the folder holding the config file `file`.
pub fn resolve(file: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        file.parent().unwrap_or(Path::new(".")).join(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Sample {
        interval: u32,
        #[serde(default)]
        name: String,
    }

    #[test]
    fn unknown_field_names_file_and_line() {
        let err = parse::<Sample>("interval = 3\n\nintrval = 4\n", "agent.toml").unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("agent.toml:3: unknown field \"intrval\""),
            "{text}"
        );
    }

    #[test]
    fn wrong_type_names_line() {
        let err = parse::<Sample>("name = \"x\"\ninterval = \"soon\"\n", "a.toml").unwrap_err();
        assert!(err.to_string().starts_with("a.toml:2: "), "{err}");
    }

    #[test]
    fn missing_field_is_reported() {
        let err = parse::<Sample>("name = \"x\"\n", "a.toml").unwrap_err();
        assert!(
            err.to_string().contains("missing field \"interval\""),
            "{err}"
        );
    }

    #[test]
    fn unreadable_file_names_path() {
        let err = load::<Sample>(Path::new("/nonexistent/vitals/agent.toml")).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("/nonexistent/vitals/agent.toml: cannot read"),
            "{err}"
        );
    }

    #[test]
    fn relative_paths_follow_the_file() {
        assert_eq!(
            resolve(Path::new("/etc/vitals/agent.toml"), Path::new("pki/ca.pem")),
            PathBuf::from("/etc/vitals/pki/ca.pem")
        );
        assert_eq!(
            resolve(Path::new("agent.toml"), Path::new("/abs.pem")),
            PathBuf::from("/abs.pem")
        );
    }
}
