//! The agent's sequence counter: monotonic across restarts.
//!
//! Writing the counter on every message would cost a disk write per
//! message, so numbers are reserved in blocks: the state file holds the end
//! of the reserved block, written (atomically, by rename) before any number
//! of that block is used. After a crash the counter resumes at the end of
//! the last block, skipping at most one block of unused numbers; gaps are
//! harmless, going backwards is not.

use std::path::{Path, PathBuf};

use tracing::warn;

const BLOCK: u64 = 1024;

#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
pub struct SeqError {
    path: PathBuf,
    source: std::io::Error,
}

pub struct SeqCounter {
    path: PathBuf,
    next: u64,
    reserved_until: u64,
    /// The first number this process handed out.
    first: u64,
}

impl SeqCounter {
    /// Opens the counter in `state_dir`. A missing file starts at 1; an
    /// unreadable one is set aside (renamed `.corrupt`) and also starts at
    /// 1, and the collector's welcome moves the counter past what it has.
    pub fn open(state_dir: &Path) -> Result<Self, SeqError> {
        let path = state_dir.join("seq");
        let err = |source| SeqError {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(state_dir).map_err(err)?;
        let start = match std::fs::read_to_string(&path) {
            Ok(text) => match text.trim().parse::<u64>() {
                Ok(n) => n.max(1),
                Err(_) => {
                    let aside = path.with_extension("corrupt");
                    warn!(path = %path.display(), aside = %aside.display(), "sequence file unreadable; set aside");
                    let _ = std::fs::rename(&path, &aside);
                    1
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 1,
            Err(e) => return Err(err(e)),
        };
        let mut counter = SeqCounter {
            path,
            next: start,
            reserved_until: start,
            first: start,
        };
        counter.reserve(start)?;
        Ok(counter)
    }

    /// The next sequence number. A block that cannot be reserved on disk
    /// (a full disk) is reserved in memory only and logged: the numbers
    /// still rise, and the outbox file's own sequences keep a restarted
    /// agent above anything it wrote (see `Link::new`).
    pub fn assign(&mut self) -> Result<u64, SeqError> {
        if self.next >= self.reserved_until
            && let Err(e) = self.reserve(self.next)
        {
            warn!(error = %e, "cannot reserve sequence numbers on disk; going on in memory");
            self.reserved_until = self.next + BLOCK;
        }
        let n = self.next;
        self.next += 1;
        Ok(n)
    }

    /// The highest number handed out so far (0 if none).
    pub fn last(&self) -> u64 {
        self.next - 1
    }

    /// The first number this process handed out (or will).
    pub fn first(&self) -> u64 {
        self.first
    }

    /// Resumes past `seq`, a number an earlier process handed out and
    /// kept (the outbox file's highest): the next number is above it, and
    /// it counts as known, not as something only the collector has.
    pub fn resume_after(&mut self, seq: u64) -> Result<(), SeqError> {
        self.skip_past(seq)?;
        self.first = self.first.max(seq + 1);
        Ok(())
    }

    /// Moves the counter so the next number is above `seq`.
    pub fn skip_past(&mut self, seq: u64) -> Result<(), SeqError> {
        if seq >= self.next {
            self.next = seq + 1;
        }
        Ok(())
    }

    fn reserve(&mut self, from: u64) -> Result<(), SeqError> {
        let until = from + BLOCK;
        let tmp = self.path.with_extension("tmp");
        let err = |source| SeqError {
            path: self.path.clone(),
            source,
        };
        std::fs::write(&tmp, until.to_string()).map_err(err)?;
        std::fs::rename(&tmp, &self.path).map_err(err)?;
        self.reserved_until = until;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("vitals-seq-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn monotonic_across_restarts() {
        let d = dir("restart");
        let mut a = SeqCounter::open(&d).unwrap();
        let first: Vec<u64> = (0..3).map(|_| a.assign().unwrap()).collect();
        assert_eq!(first, vec![1, 2, 3]);
        drop(a);
        let mut b = SeqCounter::open(&d).unwrap();
        let n = b.assign().unwrap();
        assert!(n > 3, "{n}");
        // Crossing a block boundary reserves the next block.
        for _ in 0..(2 * BLOCK) {
            b.assign().unwrap();
        }
        let last = b.last();
        drop(b);
        let mut c = SeqCounter::open(&d).unwrap();
        assert!(c.assign().unwrap() > last);
    }

    #[test]
    fn resuming_past_the_outbox_file_counts_its_numbers_as_known() {
        let d = dir("resume");
        let mut c = SeqCounter::open(&d).unwrap();
        assert_eq!(c.first(), 1);
        // The outbox file holds 1,500: numbered past the file's block, as a
        // full disk leaves it.
        c.resume_after(1500).unwrap();
        assert_eq!(c.first(), 1501);
        assert_eq!(c.assign().unwrap(), 1501);
        // Below what is already known, nothing moves.
        c.resume_after(10).unwrap();
        assert_eq!(c.first(), 1501);
        assert_eq!(c.assign().unwrap(), 1502);
    }

    #[test]
    fn corrupt_file_is_set_aside() {
        let d = dir("corrupt");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("seq"), "garbage").unwrap();
        let mut c = SeqCounter::open(&d).unwrap();
        assert_eq!(c.assign().unwrap(), 1);
        assert!(d.join("seq.corrupt").exists());
        c.skip_past(500).unwrap();
        assert_eq!(c.assign().unwrap(), 501);
    }
}
