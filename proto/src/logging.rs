//! How both binaries write their log: plain text (the default, coloured
//! only on a terminal) or JSON lines for a city's log pipeline, with the
//! same fields either way.

use tracing_subscriber::Layer;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::registry::LookupSpan;

/// The form of each log line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`,
    /// `fields` (the message among them) and the enclosing `spans`.
    Json,
}

crate::text_enum!(LogFormat {
    Text => "text",
    Json => "json",
});

/// The `[log]` section both configuration files share.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    pub format: LogFormat,
}

/// The formatting layer for `writer` in `format`. `ansi` applies to text
/// only (JSON never carries colour codes).
pub fn layer<S, W>(format: LogFormat, writer: W, ansi: bool) -> Box<dyn Layer<S> + Send + Sync>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let fmt = tracing_subscriber::fmt::layer().with_writer(writer);
    match format {
        LogFormat::Text => fmt.with_ansi(ansi).boxed(),
        LogFormat::Json => fmt
            .json()
            .with_current_span(false)
            .with_span_list(true)
            .boxed(),
    }
}

/// `RUST_LOG` when set (and valid), else `info`.
pub fn env_filter() -> tracing_subscriber::EnvFilter {
    tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
}

/// The log on standard error in `format`: what both binaries use when
/// run from a shell, a service manager or a container.
pub fn init_stderr(format: LogFormat) {
    use tracing_subscriber::layer::SubscriberExt;
    let subscriber = tracing_subscriber::registry()
        .with(env_filter())
        .with(layer(format, std::io::stderr, crate::colour_on_stderr()));
    let _ = tracing::subscriber::set_global_default(subscriber);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::layer::SubscriberExt;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("buffer").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buffer {
        type Writer = Buffer;
        fn make_writer(&'a self) -> Self::Writer {
            self.clone()
        }
    }

    fn logged(format: LogFormat) -> String {
        let out = Buffer::default();
        let subscriber = tracing_subscriber::registry().with(layer(format, out.clone(), false));
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("session", endpoint = "desk-7");
            let _in = span.enter();
            tracing::warn!(peer = "10.1.2.3:5000", count = 3, "refused");
        });
        let bytes = out.0.lock().expect("buffer").clone();
        String::from_utf8(bytes).expect("utf-8")
    }

    #[test]
    fn json_lines_carry_the_same_fields_as_text() {
        let text = logged(LogFormat::Text);
        assert!(text.contains("WARN"), "{text}");
        assert!(text.contains("session{endpoint=\"desk-7\"}"), "{text}");
        assert!(
            text.contains("refused peer=\"10.1.2.3:5000\" count=3"),
            "{text}"
        );

        let json = logged(LogFormat::Json);
        assert_eq!(json.lines().count(), 1, "{json}");
        let line: serde_json::Value = serde_json::from_str(json.trim()).expect("one JSON object");
        assert_eq!(line["level"], "WARN");
        assert_eq!(line["fields"]["message"], "refused");
        assert_eq!(line["fields"]["peer"], "10.1.2.3:5000");
        assert_eq!(line["fields"]["count"], 3);
        assert_eq!(line["spans"][0]["name"], "session");
        assert_eq!(line["spans"][0]["endpoint"], "desk-7");
        assert!(line["timestamp"].is_string(), "{line}");
        assert!(!json.contains('\u{1b}'), "no colour codes in JSON: {json}");
    }

    #[test]
    fn the_log_section_is_strict() {
        let s: LogSettings = toml::from_str("format = \"json\"").expect("json");
        assert_eq!(s.format, LogFormat::Json);
        let e = toml::from_str::<LogSettings>("format = \"xml\"").expect_err("xml");
        assert!(
            e.to_string().contains("text, json") || e.to_string().contains("text"),
            "{e}"
        );
        assert!(toml::from_str::<LogSettings>("fromat = \"json\"").is_err());
    }
}
