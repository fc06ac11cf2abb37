//! Where the agent's own log goes when no terminal is watching: a file
//! that rotates by size (so a desk's disk never fills with it), and on
//! Windows the Application event log for warnings and errors, where the
//! help desk's tools already look.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tracing_subscriber::Layer;
use tracing_subscriber::registry::LookupSpan;
use vitals_proto::logging::LogFormat;

use crate::config::LogSettings;

/// The agent's log layer: to `file` (rotated as `settings` say) when one
/// is given and can be opened, else to standard error. A file that cannot
/// be opened is said on standard error, and the log goes there instead.
pub fn layer<S>(
    settings: &LogSettings,
    format: LogFormat,
    file: Option<&Path>,
) -> Box<dyn Layer<S> + Send + Sync>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    if let Some(path) = file {
        match RotatingFile::open(path, settings.max_size_mib << 20, settings.keep) {
            Ok(f) => return vitals_proto::logging::layer(format, Arc::new(f), false),
            Err(e) => eprintln!(
                "warning: cannot open log file {}: {e}; logging to standard error",
                path.display()
            ),
        }
    }
    vitals_proto::logging::layer(format, io::stderr, vitals_proto::colour_on_stderr())
}

/// A log file that moves itself aside at `max_bytes`: `agent.log` becomes
/// `agent.log.1`, the older ones shift up, and only `keep` old ones stay.
pub struct RotatingFile {
    path: PathBuf,
    max_bytes: u64,
    keep: u32,
    state: Mutex<Open>,
}

struct Open {
    file: Option<File>,
    size: u64,
}

impl RotatingFile {
    pub fn open(path: &Path, max_bytes: u64, keep: u32) -> io::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let size = file.metadata()?.len();
        Ok(RotatingFile {
            path: path.to_owned(),
            max_bytes: max_bytes.max(1024),
            keep: keep.max(1),
            state: Mutex::new(Open {
                file: Some(file),
                size,
            }),
        })
    }

    fn aside(&self, n: u32) -> PathBuf {
        let mut name = self.path.as_os_str().to_owned();
        name.push(format!(".{n}"));
        PathBuf::from(name)
    }

    /// Closes the file first: Windows refuses to rename an open file.
    fn rotate(&self, open: &mut Open) -> io::Result<()> {
        open.file = None;
        let _ = std::fs::remove_file(self.aside(self.keep));
        for n in (1..self.keep).rev() {
            let _ = std::fs::rename(self.aside(n), self.aside(n + 1));
        }
        std::fs::rename(&self.path, self.aside(1))?;
        open.file = Some(
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)?,
        );
        open.size = 0;
        Ok(())
    }
}

impl Write for &RotatingFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut open = self
            .state
            .lock()
            .map_err(|_| io::Error::other("log file lock poisoned"))?;
        if open.size > 0 && open.size + buf.len() as u64 > self.max_bytes {
            // A failed rotation keeps writing to the same file, or to a
            // fresh one if it was closed.
            if self.rotate(&mut open).is_err() && open.file.is_none() {
                open.file = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.path)
                    .ok();
            }
        }
        let file = open
            .file
            .as_mut()
            .ok_or_else(|| io::Error::other("log file closed"))?;
        let n = file.write(buf)?;
        open.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        match self.state.lock() {
            Ok(mut open) => open.file.as_mut().map_or(Ok(()), |f| f.flush()),
            Err(_) => Ok(()),
        }
    }
}

/// Warnings and errors to the Application event log, as source
/// "Vitals Agent".
#[cfg(windows)]
pub struct EventLogLayer(crate::win32::eventlog::EventSource);

#[cfg(windows)]
impl EventLogLayer {
    pub fn open() -> Option<Self> {
        crate::win32::eventlog::EventSource::open(crate::win32::eventlog::SOURCE).map(EventLogLayer)
    }
}

#[cfg(windows)]
impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for EventLogLayer {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        use crate::win32::eventlog::Level;
        let level = match *event.metadata().level() {
            tracing::Level::ERROR => Level::Error,
            tracing::Level::WARN => Level::Warning,
            _ => return,
        };
        let mut text = Fields(String::new());
        event.record(&mut text);
        self.0.report(level, &text.0);
    }
}

/// An event's message, then its fields as `name=value`.
#[cfg(windows)]
struct Fields(String);

#[cfg(windows)]
impl tracing::field::Visit for Fields {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        use std::fmt::Write as _;
        if !self.0.is_empty() {
            self.0.push(' ');
        }
        if field.name() == "message" {
            let _ = write!(self.0, "{value:?}");
        } else {
            let _ = write!(self.0, "{}={value:?}", field.name());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_moves_aside_at_its_size_and_keeps_only_so_many() {
        let dir = std::env::temp_dir().join(format!("vitals-log-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("logs").join("agent.log");
        let log = RotatingFile::open(&path, 1024, 2).expect("open");
        let line = [b'x'; 299];
        for i in 0..12u8 {
            let mut l = line.to_vec();
            l[0] = b'a' + i;
            l.push(b'\n');
            (&log).write_all(&l).expect("write");
        }
        let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        let first = |p: &Path| std::fs::read(p).ok().and_then(|b| b.first().copied());
        // 300-byte lines, 1024 bytes a file: three lines each.
        assert_eq!(size(&path), 900);
        assert_eq!(
            first(&path),
            Some(b'j'),
            "the newest lines are in the live file"
        );
        assert_eq!(first(&log.aside(1)), Some(b'g'));
        assert_eq!(first(&log.aside(2)), Some(b'd'));
        assert!(!log.aside(3).exists(), "only two old files are kept");
        // Reopened, it carries on from the size it finds.
        drop(log);
        let log = RotatingFile::open(&path, 1024, 2).expect("reopen");
        (&log).write_all(&[b'z'; 200]).expect("write");
        assert_eq!(first(&log.aside(1)), Some(b'j'));
        assert_eq!(size(&path), 200);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
