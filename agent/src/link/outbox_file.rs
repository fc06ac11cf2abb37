//! The outbox file: the agent's outbox (its unacknowledged messages) on
//! disk, so an agent restart or a power cut loses none of them.
//!
//! One append-only file, `<state_dir>/outbox.log`, of records:
//!
//! ```text
//! [u32 LE payload length][u32 LE CRC-32 of payload][payload]
//! payload = [u8 tag][u64 LE key][body]
//!   tag 1: a numbered message: key = its sequence, body = the encoded
//!          `AgentMessage` (whose own seq field is not used)
//!   tag 2: everything numbered at or below key is acknowledged
//!   tag 3: the numbered message key was dropped (an old snapshot, for room)
//!   tag 4: a message waiting for its number: key = a outbox-local id
//!   tag 5: the waiting message key now has the sequence in body (u64 LE)
//!   tag 6: the waiting message key was dropped
//! ```
//!
//! Messages get their sequence number when they are about to be sent, not
//! when they are queued, so a fault event queued behind a backlog of
//! snapshots is numbered (and sent) before them while the wire order stays
//! the sequence order the collector expects.
//!
//! Only an index (where each live message's body sits in the file) is kept
//! in memory; bodies are read back from the file when they are sent, so the
//! outbox's bound is the file's size, not the agent's memory.
//!
//! Each append is flushed to the device before it counts. Opening replays
//! the records; the first record that is cut short or fails its checksum
//! ends the outbox file: it and everything after it are moved to a quarantine
//! file beside it, logged, and the file is cut back to the good part. When
//! dead records (acknowledged or dropped) outweigh the live ones, the live
//! ones are rewritten to a new file that atomically replaces the old.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

const MESSAGE: u8 = 1;
const ACK: u8 = 2;
const DROP: u8 = 3;
const QUEUED: u8 = 4;
const ASSIGN: u8 = 5;
const DROP_QUEUED: u8 = 6;
const HEADER: usize = 8;
/// Bytes a record takes besides its body: the header, the tag and the key.
pub const RECORD_OVERHEAD: u64 = (HEADER + 9) as u64;
/// No message comes near this; a bigger length is corruption.
const MAX_RECORD: usize = 64 * 1024 * 1024;

/// What the outbox was doing with its file when the disk failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileOp {
    Open,
    Write,
    Reopen,
    Compaction,
    Rewrite,
}

impl std::fmt::Display for FileOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FileOp::Open => "open",
            FileOp::Write => "write",
            FileOp::Reopen => "reopen",
            FileOp::Compaction => "compaction",
            FileOp::Rewrite => "rewrite",
        })
    }
}

/// Why the outbox file stopped being used: the step and the disk's error.
#[derive(Debug, Clone, thiserror::Error)]
#[error("outbox file {op}: {source}")]
pub struct OutboxFileError {
    pub op: FileOp,
    /// Shared, so the error can be cloned into the link's status.
    #[source]
    pub source: std::sync::Arc<io::Error>,
}

impl OutboxFileError {
    pub fn new(op: FileOp, source: io::Error) -> Self {
        OutboxFileError {
            op,
            source: std::sync::Arc::new(source),
        }
    }
}

/// One append-only file of checksummed records (see the module doc).
pub struct OutboxFile {
    path: PathBuf,
    file: File,
    /// A second handle for reading bodies back.
    reader: File,
    /// Bytes in the file.
    bytes: u64,
    /// Bytes of records that still matter (live messages).
    live_bytes: u64,
}

/// Where a message's body sits in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    pub at: u64,
    pub len: u32,
}

/// A live message for [`OutboxFile::rewrite`]: its key, and its body in
/// memory or in the current file.
pub enum Live<'a> {
    Numbered(u64, Source<'a>),
    Waiting(u64, Source<'a>),
}

pub enum Source<'a> {
    Memory(&'a [u8]),
    File(Stored),
}

/// What opening found. Each message comes with what the caller's
/// `classify` said of its body while it was read (`None`: unreadable).
#[derive(Debug)]
pub struct Recovered<K> {
    /// Unacknowledged numbered messages, by sequence: where their encoded
    /// bytes are.
    pub messages: BTreeMap<u64, (Stored, Option<K>)>,
    /// Messages not numbered yet, by outbox-local id (queue order).
    pub queued: BTreeMap<u64, (Stored, Option<K>)>,
    /// The next free outbox-local id.
    pub next_local: u64,
    /// Where a damaged tail was moved, and how many bytes it had.
    pub quarantined: Option<(PathBuf, u64)>,
}

fn record(tag: u8, seq: u64, body: &[u8]) -> Vec<u8> {
    let mut payload = Vec::with_capacity(9 + body.len());
    payload.push(tag);
    payload.extend_from_slice(&seq.to_le_bytes());
    payload.extend_from_slice(body);
    let mut out = Vec::with_capacity(HEADER + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    out
}

impl OutboxFile {
    /// Opens (or creates) the outbox file in `dir` and replays it, reading
    /// each record once; `classify` looks at every message body on the way.
    pub fn open<K>(
        dir: &Path,
        classify: impl Fn(&[u8]) -> Option<K>,
    ) -> io::Result<(OutboxFile, Recovered<K>)> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("outbox.log");
        // Read record by record: a long outage's outbox file is not loaded
        // into memory whole.
        let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        let mut data = match File::open(&path) {
            Ok(f) => Some(io::BufReader::with_capacity(64 * 1024, f)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        let mut recovered = Recovered {
            messages: BTreeMap::new(),
            queued: BTreeMap::new(),
            next_local: 1,
            quarantined: None,
        };
        let mut at = 0usize;
        let mut header = [0u8; HEADER];
        let mut payload = Vec::new();
        let good_end = loop {
            let Some(reader) = &mut data else {
                break 0;
            };
            if at as u64 >= size || reader.read_exact(&mut header).is_err() {
                break at;
            }
            let len = u32::from_le_bytes(header[..4].try_into().unwrap_or_default()) as usize;
            let crc = u32::from_le_bytes(header[4..].try_into().unwrap_or_default());
            if !(9..=MAX_RECORD).contains(&len) || (at + HEADER + len) as u64 > size {
                break at;
            }
            payload.resize(len, 0);
            if reader.read_exact(&mut payload).is_err() || crc32fast::hash(&payload) != crc {
                break at;
            }
            let key = u64::from_le_bytes(payload[1..9].try_into().unwrap_or_default());
            let body = &payload[9..];
            let stored = Stored {
                at: (at + HEADER + 9) as u64,
                len: body.len() as u32,
            };
            match payload[0] {
                MESSAGE => {
                    recovered.messages.insert(key, (stored, classify(body)));
                }
                ACK => recovered.messages.retain(|s, _| *s > key),
                DROP => {
                    recovered.messages.remove(&key);
                }
                QUEUED | ASSIGN | DROP_QUEUED => {
                    recovered.next_local = recovered.next_local.max(key + 1);
                    match payload[0] {
                        QUEUED => {
                            recovered.queued.insert(key, (stored, classify(body)));
                        }
                        DROP_QUEUED => {
                            recovered.queued.remove(&key);
                        }
                        _ => {
                            let Ok(seq) = <[u8; 8]>::try_from(body) else {
                                break at;
                            };
                            if let Some(m) = recovered.queued.remove(&key) {
                                recovered.messages.insert(u64::from_le_bytes(seq), m);
                            }
                        }
                    }
                }
                _ => break at,
            }
            at += HEADER + len;
        };
        drop(data);
        if (good_end as u64) < size {
            let quarantine = dir.join(format!("outbox.corrupt-{}", vitals_proto::now_ms()));
            let mut damaged = File::open(&path)?;
            io::Seek::seek(&mut damaged, io::SeekFrom::Start(good_end as u64))?;
            io::copy(&mut damaged, &mut File::create(&quarantine)?)?;
            recovered.quarantined = Some((quarantine, size - good_end as u64));
            let f = OpenOptions::new().write(true).open(&path)?;
            f.set_len(good_end as u64)?;
            f.sync_all()?;
        }
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let reader = File::open(&path)?;
        let live_bytes = recovered
            .messages
            .values()
            .chain(recovered.queued.values())
            .map(|(b, _)| RECORD_OVERHEAD + u64::from(b.len))
            .sum();
        Ok((
            OutboxFile {
                path,
                file,
                reader,
                bytes: good_end as u64,
                live_bytes,
            },
            recovered,
        ))
    }

    fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        let written = self
            .file
            .write_all(bytes)
            .and_then(|()| self.file.sync_data());
        if let Err(e) = written {
            // A partial record would end the outbox file at the next replay:
            // cut the file back to the last whole record.
            let _ = self.file.set_len(self.bytes);
            return Err(e);
        }
        self.bytes += bytes.len() as u64;
        Ok(())
    }

    fn append_body(&mut self, tag: u8, key: u64, body: &[u8]) -> io::Result<Stored> {
        let r = record(tag, key, body);
        let at = self.bytes + RECORD_OVERHEAD;
        self.append(&r)?;
        self.live_bytes += r.len() as u64;
        Ok(Stored {
            at,
            len: body.len() as u32,
        })
    }

    /// Records a message; durable when this returns.
    pub fn message(&mut self, seq: u64, body: &[u8]) -> io::Result<Stored> {
        self.append_body(MESSAGE, seq, body)
    }

    /// Records a message that has no sequence yet under the outbox-local
    /// id `local`; durable when this returns.
    pub fn queued(&mut self, local: u64, body: &[u8]) -> io::Result<Stored> {
        self.append_body(QUEUED, local, body)
    }

    /// Reads a stored body back.
    pub fn read(&self, s: Stored) -> io::Result<Vec<u8>> {
        let mut buf = vec![0u8; s.len as usize];
        read_at(&self.reader, &mut buf, s.at)?;
        Ok(buf)
    }

    /// Records the sequences given to waiting messages (local id, seq), with
    /// one flush for all of them.
    pub fn assign(&mut self, numbers: &[(u64, u64)]) -> io::Result<()> {
        let mut out = Vec::with_capacity(numbers.len() * (RECORD_OVERHEAD as usize + 8));
        for (local, seq) in numbers {
            out.extend_from_slice(&record(ASSIGN, *local, &seq.to_le_bytes()));
        }
        self.append(&out)
    }

    /// Records that the waiting message `local` (of `size` body bytes) was
    /// dropped.
    pub fn drop_queued(&mut self, local: u64, size: usize) -> io::Result<()> {
        self.append(&record(DROP_QUEUED, local, &[]))?;
        self.live_bytes = self
            .live_bytes
            .saturating_sub(RECORD_OVERHEAD + size as u64);
        Ok(())
    }

    /// Records that everything at or below `seq` is acknowledged, having
    /// freed `freed` bytes of messages.
    pub fn ack(&mut self, seq: u64, freed: u64) -> io::Result<()> {
        self.append(&record(ACK, seq, &[]))?;
        self.live_bytes = self.live_bytes.saturating_sub(freed);
        Ok(())
    }

    /// Records that message `seq` (of `size` body bytes) was dropped.
    pub fn drop_message(&mut self, seq: u64, size: usize) -> io::Result<()> {
        self.append(&record(DROP, seq, &[]))?;
        self.live_bytes = self
            .live_bytes
            .saturating_sub(RECORD_OVERHEAD + size as u64);
        Ok(())
    }

    /// Whether rewriting would reclaim most of the file.
    pub fn wants_compaction(&self) -> bool {
        self.bytes > 1024 * 1024 && self.bytes > self.live_bytes * 2
    }

    /// The size on disk.
    #[cfg(test)]
    fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Replaces the file with just the live messages, atomically, and
    /// returns where each body now sits (in the order given).
    pub fn rewrite(&mut self, live: &[Live<'_>]) -> io::Result<Vec<Stored>> {
        let tmp = self.path.with_extension("log.new");
        let mut placed = Vec::with_capacity(live.len());
        let written = (|| {
            let mut out = io::BufWriter::new(File::create(&tmp)?);
            let mut at = 0u64;
            for l in live {
                let (tag, key, source) = match l {
                    Live::Numbered(k, s) => (MESSAGE, *k, s),
                    Live::Waiting(k, s) => (QUEUED, *k, s),
                };
                let body = match source {
                    Source::Memory(b) => std::borrow::Cow::Borrowed(*b),
                    Source::File(s) => std::borrow::Cow::Owned(self.read(*s)?),
                };
                let r = record(tag, key, &body);
                out.write_all(&r)?;
                placed.push(Stored {
                    at: at + RECORD_OVERHEAD,
                    len: body.len() as u32,
                });
                at += r.len() as u64;
            }
            let f = out.into_inner().map_err(|e| e.into_error())?;
            f.sync_all()?;
            drop(f);
            // Windows refuses to replace a file that is open: our handles
            // move to the new copy first (Rust opens files with delete
            // sharing, so the copy may be renamed while open), and the
            // rename makes that copy the outbox file under them.
            let (file, reader) = (
                OpenOptions::new().append(true).open(&tmp)?,
                File::open(&tmp)?,
            );
            self.file = file;
            self.reader = reader;
            if let Err(e) = std::fs::rename(&tmp, &self.path) {
                self.file = OpenOptions::new().append(true).open(&self.path)?;
                self.reader = File::open(&self.path)?;
                return Err(e);
            }
            Ok(at)
        })();
        let size = match written {
            Ok(size) => size,
            Err(e) => {
                // A full disk: leave no half-written copy taking room.
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
        };
        if let Some(dir) = self.path.parent()
            && let Ok(d) = File::open(dir)
        {
            let _ = d.sync_all();
        }
        self.file = OpenOptions::new().append(true).open(&self.path)?;
        self.reader = File::open(&self.path)?;
        self.bytes = size;
        self.live_bytes = size;
        Ok(placed)
    }
}

#[cfg(unix)]
fn read_at(f: &File, buf: &mut [u8], at: u64) -> io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(f, buf, at)
}

#[cfg(windows)]
fn read_at(f: &File, buf: &mut [u8], at: u64) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match std::os::windows::fs::FileExt::seek_read(f, &mut buf[done..], at + done as u64)? {
            0 => return Err(io::ErrorKind::UnexpectedEof.into()),
            n => done += n,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(d: &Path) -> io::Result<(OutboxFile, Recovered<()>)> {
        OutboxFile::open(d, |_| Some(()))
    }

    fn dir(name: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("vitals-outbox-file-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn replays_what_was_not_acknowledged_or_dropped() {
        let d = dir("replay");
        {
            let (mut j, r) = open(&d).unwrap();
            assert!(r.messages.is_empty() && r.quarantined.is_none());
            for seq in 1..=5 {
                j.message(seq, format!("m{seq}").as_bytes()).unwrap();
            }
            j.ack(2, 0).unwrap();
            j.drop_message(4, 2).unwrap();
        }
        let (j, r) = open(&d).unwrap();
        let seqs: Vec<u64> = r.messages.keys().copied().collect();
        assert_eq!(seqs, vec![3, 5]);
        assert_eq!(j.read(r.messages[&5].0).unwrap(), b"m5");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_torn_or_corrupted_tail_is_quarantined_and_the_rest_kept() {
        let d = dir("torn");
        {
            let (mut j, _) = open(&d).unwrap();
            for seq in 1..=3 {
                j.message(seq, b"payload").unwrap();
            }
        }
        let path = d.join("outbox.log");
        let mut bytes = std::fs::read(&path).unwrap();
        let good = bytes.len();
        // A half-written record (power cut mid-append).
        bytes.extend_from_slice(&record(MESSAGE, 4, b"payload")[..10]);
        std::fs::write(&path, &bytes).unwrap();
        let (mut j, r) = open(&d).unwrap();
        assert_eq!(r.messages.len(), 3);
        let (q, n) = r.quarantined.expect("quarantined");
        assert_eq!(n, 10);
        assert!(q.exists());
        assert_eq!(std::fs::metadata(&path).unwrap().len() as usize, good);
        // Appending goes on after the good part.
        j.message(4, b"again").unwrap();
        drop(j);
        // A flipped bit in the middle: that record and all after it go.
        let mut bytes = std::fs::read(&path).unwrap();
        let second = record(MESSAGE, 1, b"payload").len() + 12;
        bytes[second] ^= 0x40;
        std::fs::write(&path, &bytes).unwrap();
        let (_, r) = open(&d).unwrap();
        let seqs: Vec<u64> = r.messages.keys().copied().collect();
        assert_eq!(seqs, vec![1]);
        assert!(r.quarantined.is_some());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn rewriting_keeps_only_the_live_messages() {
        let d = dir("rewrite");
        let (mut j, _) = open(&d).unwrap();
        let mut stored = Vec::new();
        for seq in 1..=100u64 {
            stored.push(j.message(seq, &[seq as u8; 100]).unwrap());
        }
        j.ack(90, 0).unwrap();
        let before = j.bytes();
        // Numbered 91..=100 from the file, one waiting message from memory.
        let mut live: Vec<Live<'_>> = (91..=100u64)
            .map(|s| Live::Numbered(s, Source::File(stored[s as usize - 1])))
            .collect();
        live.push(Live::Waiting(7, Source::Memory(b"waiting")));
        let placed = j.rewrite(&live).unwrap();
        assert!(j.bytes() < before / 5, "{} vs {before}", j.bytes());
        assert_eq!(j.read(placed[0]).unwrap(), vec![91u8; 100]);
        assert_eq!(j.read(placed[10]).unwrap(), b"waiting");
        j.message(101, b"after").unwrap();
        drop(j);
        let (j, r) = open(&d).unwrap();
        assert_eq!(r.messages.len(), 11);
        assert_eq!(r.messages.keys().next(), Some(&91));
        assert_eq!(j.read(r.messages[&100].0).unwrap(), vec![100u8; 100]);
        assert_eq!(j.read(r.messages[&101].0).unwrap(), b"after");
        assert_eq!(r.queued.keys().collect::<Vec<_>>(), vec![&7]);
        assert_eq!(r.next_local, 8);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn waiting_messages_keep_their_place_until_numbered() {
        let d = dir("assign");
        {
            let (mut j, _) = open(&d).unwrap();
            j.message(1, b"sent").unwrap();
            for local in 1..=4 {
                j.queued(local, format!("w{local}").as_bytes()).unwrap();
            }
            // The third waiting message goes first (a fault event), then
            // the first; the second is dropped for room.
            j.assign(&[(3, 2), (1, 3)]).unwrap();
            j.drop_queued(2, 2).unwrap();
            j.ack(2, 0).unwrap();
        }
        let (j, r) = open(&d).unwrap();
        assert_eq!(r.messages.keys().collect::<Vec<_>>(), vec![&3]);
        assert_eq!(j.read(r.messages[&3].0).unwrap(), b"w1");
        assert_eq!(r.queued.keys().collect::<Vec<_>>(), vec![&4]);
        assert_eq!(j.read(r.queued[&4].0).unwrap(), b"w4");
        assert_eq!(r.next_local, 5);
        let _ = std::fs::remove_dir_all(&d);
    }
}
