//! The outbox journal: the agent's unacknowledged messages on disk, so an
//! agent restart or a power cut loses none of them.
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
//!   tag 4: a message waiting for its number: key = a journal-local id
//!   tag 5: the waiting message key now has the sequence in body (u64 LE)
//!   tag 6: the waiting message key was dropped
//! ```
//!
//! Messages get their sequence number when they are about to be sent, not
//! when they are queued, so a fault event queued behind a backlog of
//! snapshots is numbered (and sent) before them while the wire order stays
//! the sequence order the collector expects.
//!
//! Each append is flushed to the device before it counts. Opening replays
//! the records; the first record that is cut short or fails its checksum
//! ends the journal: it and everything after it are moved to a quarantine
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
/// No message comes near this; a bigger length is corruption.
const MAX_RECORD: usize = 64 * 1024 * 1024;

pub struct Journal {
    path: PathBuf,
    file: File,
    /// Bytes in the file.
    bytes: u64,
    /// Bytes of records that still matter (live messages).
    live_bytes: u64,
}

/// What opening found.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Unacknowledged numbered messages, by sequence: their encoded bytes.
    pub messages: BTreeMap<u64, Vec<u8>>,
    /// Messages not numbered yet, by journal-local id (queue order).
    pub queued: BTreeMap<u64, Vec<u8>>,
    /// The next free journal-local id.
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

impl Journal {
    /// Opens (or creates) the journal in `dir` and replays it.
    pub fn open(dir: &Path) -> io::Result<(Journal, Recovered)> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("outbox.log");
        let mut data = Vec::new();
        if path.exists() {
            File::open(&path)?.read_to_end(&mut data)?;
        }
        let mut recovered = Recovered {
            next_local: 1,
            ..Recovered::default()
        };
        let mut at = 0usize;
        let good_end = loop {
            if at == data.len() {
                break at;
            }
            let Some(header) = data.get(at..at + HEADER) else {
                break at;
            };
            let len = u32::from_le_bytes(header[..4].try_into().unwrap_or_default()) as usize;
            let crc = u32::from_le_bytes(header[4..].try_into().unwrap_or_default());
            let Some(payload) = data.get(at + HEADER..at + HEADER + len) else {
                break at;
            };
            if !(9..=MAX_RECORD).contains(&len) || crc32fast::hash(payload) != crc {
                break at;
            }
            let key = u64::from_le_bytes(payload[1..9].try_into().unwrap_or_default());
            let body = &payload[9..];
            match payload[0] {
                MESSAGE => {
                    recovered.messages.insert(key, body.to_vec());
                }
                ACK => recovered.messages.retain(|s, _| *s > key),
                DROP => {
                    recovered.messages.remove(&key);
                }
                QUEUED | ASSIGN | DROP_QUEUED => {
                    recovered.next_local = recovered.next_local.max(key + 1);
                    match payload[0] {
                        QUEUED => {
                            recovered.queued.insert(key, body.to_vec());
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
        if good_end < data.len() {
            let quarantine = dir.join(format!("outbox.corrupt-{}", vitals_proto::now_ms()));
            std::fs::write(&quarantine, &data[good_end..])?;
            recovered.quarantined = Some((quarantine, (data.len() - good_end) as u64));
            let f = OpenOptions::new().write(true).open(&path)?;
            f.set_len(good_end as u64)?;
            f.sync_all()?;
        }
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let live_bytes = recovered
            .messages
            .values()
            .chain(recovered.queued.values())
            .map(|b| (HEADER + 9 + b.len()) as u64)
            .sum();
        Ok((
            Journal {
                path,
                file,
                bytes: good_end as u64,
                live_bytes,
            },
            recovered,
        ))
    }

    fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.file.write_all(bytes)?;
        self.file.sync_data()?;
        self.bytes += bytes.len() as u64;
        Ok(())
    }

    /// Records a message; durable when this returns.
    pub fn message(&mut self, seq: u64, body: &[u8]) -> io::Result<()> {
        let r = record(MESSAGE, seq, body);
        self.append(&r)?;
        self.live_bytes += r.len() as u64;
        Ok(())
    }

    /// Records a message that has no sequence yet under the journal-local
    /// id `local`; durable when this returns.
    pub fn queued(&mut self, local: u64, body: &[u8]) -> io::Result<()> {
        let r = record(QUEUED, local, body);
        self.append(&r)?;
        self.live_bytes += r.len() as u64;
        Ok(())
    }

    /// Records the sequences given to waiting messages (local id, seq), with
    /// one flush for all of them.
    pub fn assign(&mut self, numbers: &[(u64, u64)]) -> io::Result<()> {
        let mut out = Vec::with_capacity(numbers.len() * (HEADER + 17));
        for (local, seq) in numbers {
            out.extend_from_slice(&record(ASSIGN, *local, &seq.to_le_bytes()));
        }
        self.append(&out)
    }

    /// Records that the waiting message `local` (of `size` body bytes) was
    /// dropped.
    pub fn drop_queued(&mut self, local: u64, size: usize) -> io::Result<()> {
        self.append(&record(DROP_QUEUED, local, &[]))?;
        self.live_bytes = self.live_bytes.saturating_sub((HEADER + 9 + size) as u64);
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
        self.live_bytes = self.live_bytes.saturating_sub((HEADER + 9 + size) as u64);
        Ok(())
    }

    /// Whether rewriting would reclaim most of the file.
    pub fn wants_compaction(&self) -> bool {
        self.bytes > 1024 * 1024 && self.bytes > self.live_bytes * 2
    }

    /// The size on disk.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Replaces the file with just the live messages, atomically: the
    /// numbered ones (sequence, body) and the waiting ones (local id, body).
    pub fn rewrite<'a>(
        &mut self,
        numbered: impl Iterator<Item = (u64, &'a [u8])>,
        waiting: impl Iterator<Item = (u64, &'a [u8])>,
    ) -> io::Result<()> {
        let tmp = self.path.with_extension("log.new");
        let mut out = Vec::new();
        for (seq, body) in numbered {
            out.extend_from_slice(&record(MESSAGE, seq, body));
        }
        for (local, body) in waiting {
            out.extend_from_slice(&record(QUEUED, local, body));
        }
        let written = (|| {
            let mut f = File::create(&tmp)?;
            f.write_all(&out)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.path)
        })();
        if let Err(e) = written {
            // A full disk: leave no half-written copy taking room.
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        if let Some(dir) = self.path.parent()
            && let Ok(d) = File::open(dir)
        {
            let _ = d.sync_all();
        }
        self.file = OpenOptions::new().append(true).open(&self.path)?;
        self.bytes = out.len() as u64;
        self.live_bytes = self.bytes;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("vitals-journal-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn replays_what_was_not_acknowledged_or_dropped() {
        let d = dir("replay");
        {
            let (mut j, r) = Journal::open(&d).unwrap();
            assert!(r.messages.is_empty() && r.quarantined.is_none());
            for seq in 1..=5 {
                j.message(seq, format!("m{seq}").as_bytes()).unwrap();
            }
            j.ack(2, 0).unwrap();
            j.drop_message(4, 2).unwrap();
        }
        let (_, r) = Journal::open(&d).unwrap();
        let seqs: Vec<u64> = r.messages.keys().copied().collect();
        assert_eq!(seqs, vec![3, 5]);
        assert_eq!(r.messages[&5], b"m5");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_torn_or_corrupted_tail_is_quarantined_and_the_rest_kept() {
        let d = dir("torn");
        {
            let (mut j, _) = Journal::open(&d).unwrap();
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
        let (mut j, r) = Journal::open(&d).unwrap();
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
        let (_, r) = Journal::open(&d).unwrap();
        let seqs: Vec<u64> = r.messages.keys().copied().collect();
        assert_eq!(seqs, vec![1]);
        assert!(r.quarantined.is_some());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn rewriting_keeps_only_the_live_messages() {
        let d = dir("rewrite");
        let (mut j, _) = Journal::open(&d).unwrap();
        for seq in 1..=100 {
            j.message(seq, &[7u8; 100]).unwrap();
        }
        j.ack(90, 0).unwrap();
        let before = j.bytes();
        let live: Vec<(u64, Vec<u8>)> = (91..=100).map(|s| (s, vec![7u8; 100])).collect();
        j.rewrite(
            live.iter().map(|(s, b)| (*s, b.as_slice())),
            std::iter::once((7, &b"waiting"[..])),
        )
        .unwrap();
        assert!(j.bytes() < before / 5, "{} vs {before}", j.bytes());
        j.message(101, b"after").unwrap();
        drop(j);
        let (_, r) = Journal::open(&d).unwrap();
        assert_eq!(r.messages.len(), 11);
        assert_eq!(r.messages.keys().next(), Some(&91));
        assert_eq!(r.queued.keys().collect::<Vec<_>>(), vec![&7]);
        assert_eq!(r.next_local, 8);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn waiting_messages_keep_their_place_until_numbered() {
        let d = dir("assign");
        {
            let (mut j, _) = Journal::open(&d).unwrap();
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
        let (_, r) = Journal::open(&d).unwrap();
        assert_eq!(r.messages.keys().collect::<Vec<_>>(), vec![&3]);
        assert_eq!(r.messages[&3], b"w1");
        assert_eq!(r.queued.keys().collect::<Vec<_>>(), vec![&4]);
        assert_eq!(r.queued[&4], b"w4");
        assert_eq!(r.next_local, 5);
        let _ = std::fs::remove_dir_all(&d);
    }
}
