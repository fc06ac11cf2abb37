//! The outbox: every message the collector has not acknowledged, in the
//! order it goes out, within its bounds.
//!
//! It lives in the outbox file ([`super::outbox_file`]) with only an index
//! in memory; if the disk fails it is held in memory (within
//! [`MEMORY_ONLY_BYTES`]) until the file can be written again.

use std::collections::VecDeque;

use tracing::{error, info, warn};
use vitals_proto::wire::{self, agent_message};

use super::Outgoing;
use super::outbox_file::{
    FileOp, Live, OutboxFile, OutboxFileError, RECORD_OVERHEAD, Source, Stored,
};
use crate::seq::{SeqCounter, SeqError};

/// How many waiting messages are numbered at once (one flush of the file).
const NUMBER_BATCH: usize = 16;
/// The outbox's bound while the disk cannot be used and everything is held
/// in memory.
pub const MEMORY_ONLY_BYTES: u64 = 8 * 1024 * 1024;

/// Where a queued message's encoded bytes are: in the outbox file (the
/// usual case: memory holds only this index) or in memory (no file).
enum Body {
    Memory(Vec<u8>),
    Disk(Stored),
}

struct Entry {
    fault: bool,
    size: u64,
    body: Body,
}

impl Entry {
    fn source(&self) -> Source<'_> {
        match &self.body {
            Body::Memory(b) => Source::Memory(b),
            Body::Disk(s) => Source::File(*s),
        }
    }
}

/// Messages waiting for the collector's acknowledgement: in the outbox
/// file with an index in memory or, if the disk failed, in
/// memory.
///
/// A message gets its sequence number when it is about to go out, so the
/// queue has two parts: numbered messages (sent, or next to be sent, in
/// sequence order) and waiting ones (not numbered yet: fault events ahead
/// of snapshots, each oldest first). On a new session every numbered
/// message is resent first, in order; only then are waiting ones numbered,
/// so the wire always carries rising sequences.
pub struct Outbox {
    numbered: VecDeque<(u64, Entry)>,
    /// How many of `numbered` went out on the current session.
    sent: usize,
    faults: VecDeque<(u64, Entry)>,
    snapshots: VecDeque<(u64, Entry)>,
    /// The next outbox-local id for a waiting message.
    next_local: u64,
    max: usize,
    max_bytes: u64,
    /// Encoded bytes of what is queued.
    bytes: u64,
    /// Snapshots dropped because the queue was full.
    pub dropped: u64,
    file: Option<OutboxFile>,
    /// Why the file stopped being written, once it did: the agent goes on
    /// in memory.
    file_error: Option<OutboxFileError>,
}

impl Outbox {
    /// A queue in memory only.
    pub fn new(max: usize) -> Self {
        Outbox {
            numbered: VecDeque::new(),
            sent: 0,
            faults: VecDeque::new(),
            snapshots: VecDeque::new(),
            next_local: 1,
            max: max.max(1),
            max_bytes: u64::MAX,
            bytes: 0,
            dropped: 0,
            file: None,
            file_error: None,
        }
    }

    /// The outbox backed by its file in `dir`, with what it held before
    /// (a restart, a power cut). A file that cannot be opened is logged
    /// and the agent goes on in memory.
    pub fn open(dir: &std::path::Path, max: usize, max_bytes: u64) -> Self {
        let mut p = Outbox::new(max);
        p.max_bytes = max_bytes.max(1);
        // Whether a body is a fault event (true) or a snapshot (false).
        let classify = |body: &[u8]| {
            let m: wire::AgentMessage = prost::Message::decode(body).ok()?;
            match m.body? {
                agent_message::Body::Fault(_) => Some(true),
                agent_message::Body::Snapshot(_) => Some(false),
                _ => None,
            }
        };
        match OutboxFile::open(dir, classify) {
            Ok((file, recovered)) => {
                if let Some((path, bytes)) = &recovered.quarantined {
                    warn!(
                        quarantine = %path.display(),
                        bytes,
                        "outbox file had a damaged tail; moved aside, the rest kept"
                    );
                }
                let entry = |fault, stored: Stored| Entry {
                    fault,
                    size: u64::from(stored.len),
                    body: Body::Disk(stored),
                };
                for (seq, (stored, kind)) in recovered.messages {
                    match kind {
                        Some(fault) => p.numbered.push_back((seq, entry(fault, stored))),
                        None => warn!(seq, "outbox record not readable; skipped"),
                    }
                }
                for (local, (stored, kind)) in recovered.queued {
                    match kind {
                        Some(true) => p.faults.push_back((local, entry(true, stored))),
                        Some(false) => p.snapshots.push_back((local, entry(false, stored))),
                        None => warn!(local, "outbox record not readable; skipped"),
                    }
                }
                p.bytes = p.entries().map(|e| e.size).sum();
                p.next_local = recovered.next_local;
                if !p.is_empty() {
                    info!(
                        messages = p.len(),
                        bytes = p.bytes,
                        "outbox restored from disk"
                    );
                }
                p.file = Some(file);
            }
            Err(e) => p.file_failed(FileOp::Open, e),
        }
        p
    }

    fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.numbered
            .iter()
            .chain(&self.faults)
            .chain(&self.snapshots)
            .map(|(_, e)| e)
    }

    /// Everything queued, for a rewrite of the file.
    fn live(&self) -> Vec<Live<'_>> {
        self.numbered
            .iter()
            .map(|(s, e)| Live::Numbered(*s, e.source()))
            .chain(
                self.faults
                    .iter()
                    .chain(&self.snapshots)
                    .map(|(l, e)| Live::Waiting(*l, e.source())),
            )
            .collect()
    }

    /// After a rewrite: each entry's body now sits at `placed` (in
    /// [`Self::live`]'s order).
    fn placed(&mut self, placed: Vec<Stored>) {
        let entries = self
            .numbered
            .iter_mut()
            .chain(&mut self.faults)
            .chain(&mut self.snapshots);
        for ((_, e), stored) in entries.zip(placed) {
            e.body = Body::Disk(stored);
        }
    }

    /// Brings the file back after it failed (a full disk with room
    /// again): a fresh file holding everything queued now. False, with the
    /// reason in `file_error`, if the disk still refuses.
    pub fn reopen(&mut self, dir: &std::path::Path) -> bool {
        if self.file.is_some() {
            return true;
        }
        let opened = OutboxFile::open(dir, |_| None::<()>).and_then(|(mut j, _stale)| {
            let placed = j.rewrite(&self.live())?;
            Ok((j, placed))
        });
        match opened {
            Ok((j, placed)) => {
                info!(messages = self.len(), "outbox on disk usable again");
                self.placed(placed);
                self.file = Some(j);
                self.file_error = None;
                true
            }
            Err(e) => {
                self.file_error = Some(OutboxFileError::new(FileOp::Reopen, e));
                false
            }
        }
    }

    /// The highest sequence number queued (0 if none).
    pub fn max_seq(&self) -> u64 {
        self.numbered.back().map_or(0, |(s, _)| *s)
    }

    /// Why the outbox file stopped being written, if it did and is not
    /// back: the outbox is then held in memory only.
    pub fn file_error(&self) -> Option<&OutboxFileError> {
        self.file_error.as_ref()
    }

    /// The file failed: bring what is on disk into memory (what cannot be
    /// read back is lost, and said so) and go on without it, within the
    /// memory-only bound.
    fn file_failed(&mut self, op: FileOp, e: std::io::Error) {
        let why = OutboxFileError::new(op, e);
        error!(error = %why, "outbox on disk unusable; keeping messages in memory only");
        self.file_error = Some(why);
        let Some(file) = self.file.take() else {
            return;
        };
        let mut lost = 0u64;
        for queue in [&mut self.numbered, &mut self.faults, &mut self.snapshots] {
            queue.retain_mut(|(_, e)| {
                if let Body::Disk(s) = e.body {
                    match file.read(s) {
                        Ok(b) => e.body = Body::Memory(b),
                        Err(_) => {
                            lost += 1;
                            return false;
                        }
                    }
                }
                true
            });
        }
        if lost > 0 {
            error!(lost, "outbox messages could not be read back from disk");
            self.sent = self.sent.min(self.numbered.len());
        }
        self.bytes = self.entries().map(|e| e.size).sum();
        self.make_room(0);
    }

    /// Whether everything numbered went out and nothing waits: a new
    /// message can be numbered at once without passing anything.
    pub fn idle(&self) -> bool {
        self.sent == self.numbered.len() && self.faults.is_empty() && self.snapshots.is_empty()
    }

    fn max_bytes(&self) -> u64 {
        if self.file.is_some() {
            self.max_bytes
        } else {
            self.max_bytes.min(MEMORY_ONLY_BYTES)
        }
    }

    /// Makes room for `size` more bytes: when full (count or bytes), the
    /// oldest snapshots go, waiting ones before numbered ones; if only fault
    /// events are queued, the queue grows rather than lose one.
    fn make_room(&mut self, size: u64) {
        while self.len() >= self.max || self.bytes + size > self.max_bytes() {
            if let Some((local, e)) = self.snapshots.pop_front() {
                self.bytes -= e.size;
                self.file_write(|j| j.drop_queued(local, e.size as usize));
            } else if let Some(i) = self.numbered.iter().position(|(_, e)| !e.fault) {
                let (seq, e) = self.numbered.remove(i).expect("position is in range");
                if i < self.sent {
                    self.sent -= 1;
                }
                self.bytes -= e.size;
                self.file_write(|j| j.drop_message(seq, e.size as usize));
            } else {
                break;
            }
            self.dropped += 1;
            if self.dropped == 1 || self.dropped.is_multiple_of(100) {
                warn!(
                    dropped = self.dropped,
                    queued = self.len(),
                    bytes = self.bytes,
                    "outbox full: dropping the oldest snapshots (fault events are kept)"
                );
            }
        }
    }

    fn file_write(&mut self, write: impl FnOnce(&mut OutboxFile) -> std::io::Result<()>) {
        if let Some(j) = &mut self.file
            && let Err(e) = write(j)
        {
            self.file_failed(FileOp::Write, e);
        }
    }

    /// Writes a new message's record (through `write`) or keeps it in
    /// memory if there is no file.
    fn store(
        &mut self,
        message: &Outgoing,
        write: impl FnOnce(&mut OutboxFile, &[u8]) -> std::io::Result<Stored>,
    ) -> Entry {
        let bytes = prost::Message::encode_to_vec(&wire_message(0, message.clone()));
        let fault = matches!(message, Outgoing::Fault(_));
        let size = bytes.len() as u64;
        self.make_room(size);
        let body = match &mut self.file {
            Some(j) => match write(j, &bytes) {
                Ok(stored) => Body::Disk(stored),
                Err(e) => {
                    self.file_failed(FileOp::Write, e);
                    Body::Memory(bytes)
                }
            },
            None => Body::Memory(bytes),
        };
        self.bytes += size;
        Entry { fault, size, body }
    }

    /// Queues a message to be numbered when its turn to go out comes.
    pub fn push(&mut self, message: Outgoing) {
        let local = self.next_local;
        self.next_local += 1;
        let e = self.store(&message, |j, b| j.queued(local, b));
        if e.fault {
            self.faults.push_back((local, e));
        } else {
            self.snapshots.push_back((local, e));
        }
    }

    /// Queues a message already numbered `seq` (higher than anything queued).
    pub fn push_numbered(&mut self, seq: u64, message: Outgoing) {
        let e = self.store(&message, |j, b| j.message(seq, b));
        self.numbered.push_back((seq, e));
    }

    /// Whether something is left to send on this session.
    pub fn has_next(&self) -> bool {
        self.sent < self.numbered.len() || !self.faults.is_empty() || !self.snapshots.is_empty()
    }

    /// The next message to send on this session: numbered ones not yet
    /// sent, then waiting ones (fault events first), numbered now.
    pub fn next(&mut self, seq: &mut SeqCounter) -> Result<Option<wire::AgentMessage>, SeqError> {
        loop {
            if self.sent == self.numbered.len() {
                let mut numbers = Vec::new();
                while numbers.len() < NUMBER_BATCH {
                    let Some((local, e)) = self
                        .faults
                        .pop_front()
                        .or_else(|| self.snapshots.pop_front())
                    else {
                        break;
                    };
                    let s = seq.assign()?;
                    numbers.push((local, s));
                    self.numbered.push_back((s, e));
                }
                if !numbers.is_empty() {
                    self.file_write(|j| j.assign(&numbers));
                }
            }
            let Some((s, e)) = self.numbered.get(self.sent) else {
                return Ok(None);
            };
            let s = *s;
            let read = match &e.body {
                Body::Memory(b) => Ok(b.clone()),
                Body::Disk(stored) => match &self.file {
                    Some(j) => j.read(*stored),
                    None => Err(std::io::ErrorKind::NotFound.into()),
                },
            };
            let decoded = read.map_err(|e| e.to_string()).and_then(|b| {
                <wire::AgentMessage as prost::Message>::decode(b.as_slice())
                    .map_err(|e| e.to_string())
            });
            match decoded {
                Ok(mut m) => {
                    self.sent += 1;
                    m.seq = s;
                    return Ok(Some(m));
                }
                Err(why) => {
                    // Unreadable: it cannot be sent; say so and go on.
                    error!(seq = s, error = %why, "outbox message unreadable; dropped");
                    if let Some((_, e)) = self.numbered.remove(self.sent) {
                        self.bytes -= e.size;
                    }
                    self.file_write(|j| j.drop_message(s, 0));
                }
            }
        }
    }

    /// A new session: every numbered message goes out again.
    pub fn resend_all(&mut self) {
        self.sent = 0;
    }

    /// Forgets every numbered message at or below `seq`.
    pub fn ack(&mut self, seq: u64) {
        let mut freed = 0u64;
        while self.numbered.front().is_some_and(|(s, _)| *s <= seq) {
            if let Some((_, e)) = self.numbered.pop_front() {
                freed += e.size + RECORD_OVERHEAD;
                self.bytes -= e.size;
                self.sent = self.sent.saturating_sub(1);
            }
        }
        if freed == 0 {
            return;
        }
        self.file_write(|j| j.ack(seq, freed));
        if self.file.as_ref().is_some_and(OutboxFile::wants_compaction) {
            self.rewrite(FileOp::Compaction);
        }
    }

    /// Rewrites the file with what is queued now.
    fn rewrite(&mut self, op: FileOp) {
        let Some(mut j) = self.file.take() else {
            return;
        };
        let done = j.rewrite(&self.live());
        self.file = Some(j);
        match done {
            Ok(placed) => self.placed(placed),
            Err(e) => self.file_failed(op, e),
        }
    }

    pub fn len(&self) -> usize {
        self.numbered.len() + self.faults.len() + self.snapshots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The numbered messages' sequences, oldest first.
    #[cfg(test)]
    fn numbered_seqs(&self) -> Vec<u64> {
        self.numbered.iter().map(|(s, _)| *s).collect()
    }

    pub(super) fn renumber(&mut self, seq: &mut SeqCounter) -> Result<(), SeqError> {
        for (s, _) in &mut self.numbered {
            *s = seq.assign()?;
        }
        self.rewrite(FileOp::Rewrite);
        Ok(())
    }
}

fn wire_message(seq: u64, message: Outgoing) -> wire::AgentMessage {
    wire::AgentMessage {
        seq,
        body: Some(match message {
            Outgoing::Snapshot(s) => agent_message::Body::Snapshot((*s).into()),
            Outgoing::Fault(e) => agent_message::Body::Fault(e.into()),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vitals_proto::domain::FaultEvent;

    /// A snapshot of about a kilobyte encoded.
    fn big() -> Outgoing {
        let mut s = vitals_proto::domain::Snapshot::default();
        s.host.hostname = "x".repeat(1000);
        Outgoing::Snapshot(Box::new(s))
    }

    fn snap() -> Outgoing {
        Outgoing::Snapshot(Box::default())
    }

    fn fault(n: u64) -> Outgoing {
        Outgoing::Fault(FaultEvent {
            check_id: "disk_nearly_full".into(),
            subject: "/".into(),
            state: vitals_proto::domain::FaultState::Raised,
            severity: vitals_proto::domain::Severity::Warning,
            value: n as f64,
            evidence: format!("event {n}"),
            at_ms: 0,
            via: String::new(),
        })
    }

    fn temp(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("vitals-outbox-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    /// Sends everything the queue has for this session: (seq, what).
    fn drain(p: &mut Outbox, seq: &mut SeqCounter) -> Vec<(u64, String)> {
        let mut out = Vec::new();
        while p.has_next() {
            let m = p.next(seq).unwrap().unwrap();
            let what = match m.body {
                Some(agent_message::Body::Fault(f)) => f.evidence,
                Some(agent_message::Body::Snapshot(_)) => "snapshot".into(),
                other => panic!("{other:?}"),
            };
            out.push((m.seq, what));
        }
        out
    }

    #[test]
    fn the_outbox_is_bounded_and_acks_are_cumulative() {
        let dir = temp("bounded");
        let mut seq = SeqCounter::open(&dir).unwrap();
        let mut p = Outbox::new(3);
        for _ in 1..=5 {
            p.push(snap());
        }
        assert_eq!(p.len(), 3);
        assert_eq!(p.dropped, 2);
        let sent = drain(&mut p, &mut seq);
        assert_eq!(sent.iter().map(|x| x.0).collect::<Vec<_>>(), vec![1, 2, 3]);
        p.ack(2);
        assert_eq!(p.numbered_seqs(), vec![3]);
        p.ack(100);
        assert!(p.is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn fault_events_are_never_dropped() {
        let mut p = Outbox::new(2);
        p.push(snap());
        p.push(fault(2));
        p.push(fault(3)); // the snapshot makes room
        p.push(fault(4)); // only events left: the queue grows
        assert_eq!(p.len(), 3);
        assert_eq!(p.dropped, 1);
    }

    #[test]
    fn fault_events_pass_the_snapshot_backlog_and_sequences_still_rise() {
        let dir = temp("priority");
        let mut seq = SeqCounter::open(&dir).unwrap();
        let mut p = Outbox::open(&dir, 100, 1 << 20);
        // A session: two go out numbered, the collector acknowledges one.
        p.push_numbered(seq.assign().unwrap(), snap());
        p.push_numbered(seq.assign().unwrap(), fault(1));
        assert_eq!(drain(&mut p, &mut seq).len(), 2);
        p.ack(1);
        // The link goes down; snapshots and a fault wait.
        for _ in 0..3 {
            p.push(snap());
        }
        p.push(fault(2));
        p.push(snap());
        p.push(fault(3));
        // Next session: the unacknowledged message first, then the faults,
        // then the snapshots, all in rising sequence.
        p.resend_all();
        let sent = drain(&mut p, &mut seq);
        let what: Vec<&str> = sent.iter().map(|x| x.1.as_str()).collect();
        assert_eq!(
            what,
            vec![
                "event 1", "event 2", "event 3", "snapshot", "snapshot", "snapshot", "snapshot"
            ]
        );
        assert!(sent.windows(2).all(|w| w[0].0 < w[1].0), "{sent:?}");
        // A restart keeps the numbering it was given.
        let seqs = p.numbered_seqs();
        drop(p);
        let mut p = Outbox::open(&dir, 100, 1 << 20);
        assert_eq!(p.numbered_seqs(), seqs);
        assert_eq!(drain(&mut p, &mut seq), sent);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_outbox_survives_a_restart_and_forgets_what_was_acknowledged() {
        let dir = temp("restart");
        let mut seq = SeqCounter::open(&dir).unwrap();
        {
            let mut p = Outbox::open(&dir, 100, 1 << 20);
            for n in 1..=4 {
                p.push_numbered(seq.assign().unwrap(), fault(n));
            }
            p.push_numbered(seq.assign().unwrap(), snap());
            p.push(fault(6)); // never numbered
            p.ack(2);
            assert!(p.file_error().is_none());
        }
        // A new process: 3, 4 and 5 are still owed, and the waiting fault.
        let mut p = Outbox::open(&dir, 100, 1 << 20);
        assert_eq!(p.numbered_seqs(), vec![3, 4, 5]);
        let sent = drain(&mut p, &mut seq);
        let what: Vec<&str> = sent.iter().map(|x| x.1.as_str()).collect();
        assert_eq!(what, vec!["event 3", "event 4", "snapshot", "event 6"]);
        assert!(sent[3].0 > 5);
        p.ack(sent[3].0);
        drop(p);
        assert!(Outbox::open(&dir, 100, 1 << 20).is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_byte_bound_drops_old_snapshots_never_events() {
        let dir = temp("bytes");
        let mut p = Outbox::open(&dir, 1000, 2000);
        p.push(big());
        p.push(fault(2));
        p.push(big()); // over 2,000 bytes: the first snapshot goes
        p.push(big()); // and the second
        assert_eq!(p.len(), 2);
        assert_eq!(p.dropped, 2);
        drop(p);
        let mut p = Outbox::open(&dir, 1000, 2000);
        assert_eq!(p.len(), 2, "the drops are in the file too");
        let mut seq = SeqCounter::open(&dir).unwrap();
        let what: Vec<String> = drain(&mut p, &mut seq).into_iter().map(|x| x.1).collect();
        assert_eq!(what, vec!["event 2", "snapshot"]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn bodies_stay_on_disk_and_memory_holds_only_the_index() {
        let dir = temp("index");
        let mut seq = SeqCounter::open(&dir).unwrap();
        let mut p = Outbox::open(&dir, 10_000, 64 << 20);
        for n in 1..=200 {
            if n % 50 == 0 {
                p.push(fault(n));
            } else {
                p.push(snap());
            }
        }
        assert!(p.entries().all(|e| matches!(e.body, Body::Disk(_))));
        // Sent from the file: the faults first, each read back whole.
        let sent = drain(&mut p, &mut seq);
        assert_eq!(sent.len(), 200);
        let what: Vec<&str> = sent[..5].iter().map(|x| x.1.as_str()).collect();
        assert_eq!(
            what,
            vec![
                "event 50",
                "event 100",
                "event 150",
                "event 200",
                "snapshot"
            ]
        );
        // Acknowledging most of it compacts the file past 1 MiB of dead
        // records; the rest is still readable at its new place.
        for _ in 0..1500 {
            p.push_numbered(seq.assign().unwrap(), big());
        }
        let last = seq.last();
        p.ack(last - 10);
        assert_eq!(p.len(), 10);
        let file = std::fs::metadata(dir.join("outbox.log")).unwrap().len();
        assert!(file < 20_000, "compacted to {file} bytes");
        p.resend_all();
        let again = drain(&mut p, &mut seq);
        assert_eq!(again.len(), 10);
        assert_eq!(again[0].0, last - 9);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_unusable_disk_leaves_the_outbox_in_memory() {
        // A file where the state folder should be: nothing can be created.
        let blocker =
            std::env::temp_dir().join(format!("vitals-outbox-file-{}", std::process::id()));
        std::fs::write(&blocker, b"not a folder").unwrap();
        let mut p = Outbox::open(&blocker.join("state"), 10, 1 << 20);
        assert!(
            p.file_error().is_some_and(|e| e.op == FileOp::Open),
            "{:?}",
            p.file_error()
        );
        p.push(fault(1));
        assert_eq!(p.len(), 1, "still queued, in memory");
        let _ = std::fs::remove_file(&blocker);
    }
}
