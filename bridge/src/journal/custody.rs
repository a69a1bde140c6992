//! The custody log: a round that only queues envelopes and moves link positions is made
//! durable by one append to this file instead of a SQLite commit, and reaches SQLite moments
//! later, when the dispatcher has nothing waiting (or at the start of its next round).
//!
//! Why: a SQLite commit is the dearest step of a hop. At 1,000 commands/s a middle node's
//! commit wrote four to six 2 KiB pages (the queue's leaf and index, `link_in`, and whenever a
//! leaf fills, page 1, the free-list trunk and the parent page) with two `pwrite`s each, after
//! four `fcntl` locks: about 40 µs of a 77 µs hop. A chain of the leanest relays that commit to
//! SQLite before passing a frame on stays above four mosquitto brokers' p99 (0.37 against
//! 0.31-0.33 ms); the same relays appending to a log stay far below it (0.16 ms;
//! BENCHMARKS.md, eighth stop). The custody rule is unchanged: a node passes an envelope on,
//! and acknowledges it to whoever sent it, only once it is on disk (here, in the log).
//!
//! The file: a 32-byte header (magic, generation), then records, each `[len u32][generation
//! u64][checksum u64][payload]`. Records are appended after the last one; once everything in
//! the log has reached SQLite (with the generation it belongs to, `meta.custody_applied`, in
//! the same transaction), the log is rewound: a new generation in the header, the next record
//! at the start. A record of another generation, or one whose checksum fails (a write cut short
//! by a power loss), ends the log. At start, the records of a generation newer than the one
//! SQLite holds are applied before the node takes anything. The space is written once (zeros,
//! synced), so appends never allocate blocks; the writes stay in the first pages, which are
//! written every round and so are never evicted.

use std::fs::File;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::record::Record;
use super::Durability;

/// Logged rounds reach SQLite at the dispatcher's idle moments once [`WRITE_DUE`] wait, or
/// the oldest has waited this long (since the last write, if it left some) ...
pub(super) const WRITE_AFTER: std::time::Duration = std::time::Duration::from_millis(50);
/// ... (and a round that finds this many waiting commits to SQLite, carrying them) ...
pub(super) const WRITE_AT: usize = 256;
/// ... this many at a time. Acknowledgements drop what they cover from the rounds still
/// waiting, so a write carries mostly link positions, points and audit rows, and its cost is
/// SQLite's commit more than the rounds in it: at 1,000 commands/s a write of 8 took a middle
/// node 48 µs and the root 63 µs, one of 32 took 73 and 130 µs (so 5.6 and 14 µs per command
/// became 2.1 and 7.2). Before acknowledgements dropped their rows, fifty at once held the
/// dispatcher 200-550 µs. Any round that writes to SQLite anyway carries them all.
pub(crate) const WRITE_CHUNK: usize = 32;
/// ... and they are due once twice that many wait, so the chunk written is the older half:
/// rounds the next hop acknowledged long ago, whose segments are gone (`Txn::forget_logged`).
/// Due at one chunk, the write took every waiting round, the newest not yet acknowledged, and
/// inserted queue rows that the next write deleted; a third to a half of the hops slower than
/// 60 µs overlapped some node's write (BENCHMARKS.md, tenth and eleventh stops).
pub(super) const WRITE_DUE: usize = 2 * WRITE_CHUNK;

/// The largest record the log takes. A bigger round (hundreds of commands, under a burst)
/// commits to SQLite as before: its commit is shared by all of them already, and the log
/// would only write them twice (the chain's throughput fell from 2.2 to 2.0 times mosquitto's
/// with every round logged).
const RECORD_MAX: usize = 64 * 1024;

/// What the file starts with.
const MAGIC: &[u8; 16] = b"medlink-custody1";
/// Header size: magic, generation, padding.
const HEADER: u64 = 32;
/// Record header: length, generation, checksum.
const RECORD_HEADER: usize = 4 + 8 + 8;
/// Space written up front: the log holds the rounds of [`WRITE_AFTER`] or [`WRITE_AT`], and a
/// busy node's rounds mostly write to SQLite anyway (acknowledgements), carrying the logged
/// ones. A record that would pass the end is refused, and its round commits to SQLite.
const SPACE: u64 = 4 << 20;

/// FNV-1a over the generation and the payload: finds a record cut short or left over from an
/// older generation (not an adversary's: the file is the service user's alone). Two plain
/// loops, not one over `iter().chain(..)`, which checked at every byte which half it was in:
/// a middle node's dispatcher ran about 5,000 more instructions per command with it
/// (`bench/hop_instructions.sh`: 66,900-69,200 against 63,400-63,800).
fn checksum(generation: u64, payload: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in [&generation.to_le_bytes()[..], payload] {
        for &b in part {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// The open log of one journal.
pub(super) struct CustodyLog {
    file: File,
    path: PathBuf,
    generation: u64,
    /// Where the next record goes.
    at: u64,
    sync: bool,
    buf: Vec<u8>,
}

impl CustodyLog {
    /// Opens (creating, 0600) the log beside the journal at `db`, and returns it with the
    /// records SQLite does not hold yet, each with the offset where it ends. `applied` is how
    /// far SQLite holds the log: a generation, and the offset in it up to which its records
    /// were written (`meta.custody_applied`, `meta.custody_applied_at`). The caller writes the
    /// records returned into SQLite, storing how far, then calls [`CustodyLog::rewind`] before
    /// appending: new records must not fall where SQLite counts them applied.
    pub fn open(
        db: &Path,
        durability: Durability,
        applied: (u64, u64),
    ) -> std::io::Result<(CustodyLog, Vec<(Record, u64)>)> {
        let path = log_path(db);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)?;
        let len = file.metadata()?.len();
        let (generation, records) = unapplied(&file, &path, applied)?;
        let applied_generation = applied.0;
        if len < SPACE {
            crate::datadir::write_zeros(&file, len, SPACE)?;
            if len < HEADER {
                file.write_all_at(&header(0), 0)?;
            }
            file.sync_all()?;
        }
        let log = CustodyLog {
            file,
            path,
            generation: generation.max(applied_generation),
            at: records.last().map_or(HEADER, |(_, end)| *end),
            sync: durability == Durability::Power,
            buf: Vec::new(),
        };
        Ok((log, records))
    }

    /// The generation the records appended now belong to.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Appends `record` in one write (synced too under `durability = "power"`), and returns
    /// the offset where it ends. `Ok(None)`: it is larger than [`RECORD_MAX`] or does not fit,
    /// and the round must commit to SQLite instead.
    pub fn append(&mut self, record: &Record) -> std::io::Result<Option<u64>> {
        self.buf.clear();
        self.buf.resize(RECORD_HEADER, 0);
        record.encode(&mut self.buf);
        let payload_len = self.buf.len() - RECORD_HEADER;
        if self.buf.len() > RECORD_MAX || self.at + self.buf.len() as u64 > SPACE {
            return Ok(None);
        }
        let sum = checksum(self.generation, &self.buf[RECORD_HEADER..]);
        self.buf[..4].copy_from_slice(&(payload_len as u32).to_le_bytes());
        self.buf[4..12].copy_from_slice(&self.generation.to_le_bytes());
        self.buf[12..20].copy_from_slice(&sum.to_le_bytes());
        self.file.write_all_at(&self.buf, self.at)?;
        if self.sync {
            self.file.sync_data()?;
        }
        self.at += self.buf.len() as u64;
        Ok(Some(self.at))
    }

    /// Starts a new generation at the file's start: call once SQLite holds everything of the
    /// current one (`meta.custody_applied` committed with it).
    pub fn rewind(&mut self) -> std::io::Result<()> {
        self.file.write_all_at(&header(self.generation + 1), 0)?;
        if self.sync {
            self.file.sync_data()?;
        }
        self.generation += 1;
        self.at = HEADER;
        Ok(())
    }

    /// [`CustodyLog::rewind`] the log in `slot`. If the file cannot be written, the node stops
    /// using it (`slot` emptied, a WARN): a record appended after the applied ones, where SQLite
    /// counts the log applied, would not be replayed after a crash.
    pub fn rewind_or_stop(slot: &mut Option<CustodyLog>) {
        let Some(log) = slot.as_mut() else {
            return;
        };
        if let Err(e) = log.rewind() {
            tracing::warn!(
                error = %e,
                path = %log.path().display(),
                "cannot rewind the custody log; every round now commits to SQLite"
            );
            *slot = None;
        }
    }

    /// The file's path, for messages.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The custody log's path beside the journal at `db`.
fn log_path(db: &Path) -> PathBuf {
    let mut path = db.as_os_str().to_owned();
    path.push(crate::datadir::CUSTODY_SUFFIX);
    PathBuf::from(path)
}

/// The log's generation, and its records SQLite does not hold (`applied`: how far it does),
/// each with the offset where it ends.
fn unapplied(
    file: &File,
    path: &Path,
    (applied_generation, applied_at): (u64, u64),
) -> std::io::Result<(u64, Vec<(Record, u64)>)> {
    let len = file.metadata()?.len();
    let mut head = [0u8; HEADER as usize];
    let generation = if len >= HEADER {
        file.read_exact_at(&mut head, 0)?;
        if &head[..16] != MAGIC {
            return Err(std::io::Error::other(format!(
                "{}: not a medlink custody log",
                path.display()
            )));
        }
        u64::from_le_bytes(head[16..24].try_into().expect("8 bytes"))
    } else {
        0
    };
    let mut records = Vec::new();
    let from = match generation.cmp(&applied_generation) {
        std::cmp::Ordering::Greater => Some(HEADER),
        std::cmp::Ordering::Equal => Some(applied_at.max(HEADER)),
        std::cmp::Ordering::Less => None,
    };
    if let Some(mut at) = from.filter(|&f| f < len) {
        let mut body = vec![0u8; (len - at) as usize];
        file.read_exact_at(&mut body, at)?;
        let mut rest = &body[..];
        while let Some((record, used)) = read_record(rest, generation) {
            rest = &rest[used..];
            at += used as u64;
            records.push((record, at));
        }
    }
    Ok((generation, records))
}

/// What the custody log beside the journal at `db` holds beyond `applied` (how far SQLite
/// holds it), read without changing anything, for tools reading a journal while its node runs
/// or after it died: the log's generation, and the records in order. No log: none.
pub(super) fn peek(db: &Path, applied: (u64, u64)) -> std::io::Result<(u64, Vec<Record>)> {
    let path = log_path(db);
    let file = match File::open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((applied.0, Vec::new())),
        Err(e) => return Err(e),
    };
    let (generation, records) = unapplied(&file, &path, applied)?;
    Ok((generation, records.into_iter().map(|(r, _)| r).collect()))
}

/// The file's header for `generation`.
fn header(generation: u64) -> [u8; HEADER as usize] {
    let mut head = [0u8; HEADER as usize];
    head[..16].copy_from_slice(MAGIC);
    head[16..24].copy_from_slice(&generation.to_le_bytes());
    head
}

/// The record at the start of `b` if it belongs to `generation` and is whole, with the bytes
/// it takes.
fn read_record(b: &[u8], generation: u64) -> Option<(Record, usize)> {
    let len = u32::from_le_bytes(b.get(..4)?.try_into().ok()?) as usize;
    let g = u64::from_le_bytes(b.get(4..12)?.try_into().ok()?);
    let sum = u64::from_le_bytes(b.get(12..20)?.try_into().ok()?);
    let payload = b.get(RECORD_HEADER..RECORD_HEADER.checked_add(len)?)?;
    if g != generation || len == 0 || checksum(g, payload) != sum {
        return None;
    }
    Some((Record::decode(payload)?, RECORD_HEADER + len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_checksum_is_fnv_1a_over_the_generation_then_the_payload() {
        // Logs written by earlier builds must still read: a value computed outside Rust
        // (Python, from the FNV-1a definition) pins the function.
        assert_eq!(checksum(5, b"medlink"), 0x8a6a_7c9e_ce41_f0ce);
        assert_eq!(checksum(0, b""), {
            let mut h: u64 = 0xcbf2_9ce4_8422_2325;
            for _ in 0..8 {
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
            h
        });
    }

    fn record(n: u64) -> Record {
        Record {
            segments: vec![("up".into(), n, n, Some(7), vec![n as u8; 40])],
            link_in: vec![("b.c".into(), n, 3)],
            reservations: if n == 1 {
                vec![("up".into(), 65_537)]
            } else {
                vec![]
            },
            acks: vec![("stream/a/normal".into(), n)],
            ..Record::default()
        }
    }

    /// A new log beside `j.db` in a new folder, rewound and ready for appends.
    fn new_log(durability: Durability) -> (tempfile::TempDir, PathBuf, CustodyLog) {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("j.db");
        let (mut log, old) = CustodyLog::open(&db, durability, (0, 0)).unwrap();
        assert!(old.is_empty());
        log.rewind().unwrap();
        (dir, db, log)
    }

    #[test]
    fn records_come_back_in_order_until_a_rewind() {
        let (dir, db, mut log) = new_log(Durability::Process);
        let g = log.generation();
        assert_eq!(g, 1);
        let ends: Vec<u64> = (1..=3)
            .map(|n| log.append(&record(n)).unwrap().unwrap())
            .collect();
        drop(log);
        let records =
            |back: Vec<(Record, u64)>| back.into_iter().map(|(r, _)| r).collect::<Vec<_>>();
        // Nothing applied yet: all three come back, in order, with where each ends.
        let (_, back) = CustodyLog::open(&db, Durability::Process, (0, 0)).unwrap();
        assert_eq!(back.iter().map(|(_, e)| *e).collect::<Vec<_>>(), ends);
        assert_eq!(records(back), vec![record(1), record(2), record(3)]);
        // The first applied: the other two come back, and appends go on after them.
        let (mut log, back) = CustodyLog::open(&db, Durability::Process, (g, ends[0])).unwrap();
        assert_eq!(records(back), vec![record(2), record(3)]);
        assert_eq!(
            log.append(&record(4)).unwrap().unwrap(),
            ends[2] + (ends[2] - ends[1])
        );
        drop(log);
        // All applied: nothing comes back.
        let (mut log, back) = CustodyLog::open(&db, Durability::Process, (g, u64::MAX)).unwrap();
        assert!(back.is_empty());
        log.rewind().unwrap();
        assert!(log.append(&record(9)).unwrap().is_some());
        drop(log);
        // After the rewind only the new generation's record counts; the old ones after it in
        // the file are another generation's and end the log.
        let (_, back) = CustodyLog::open(&db, Durability::Process, (g, u64::MAX)).unwrap();
        assert_eq!(records(back), vec![record(9)]);
        let mode = std::fs::metadata(dir.path().join("j.db-custody"))
            .unwrap()
            .permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
    }

    #[test]
    fn under_durability_power_appends_and_rewinds_are_synced_and_read_back() {
        let (_dir, db, mut log) = new_log(Durability::Power);
        assert!(log.sync);
        log.append(&record(1)).unwrap().unwrap();
        drop(log);
        let (_, back) = CustodyLog::open(&db, Durability::Power, (0, 0)).unwrap();
        assert_eq!(back.len(), 1);
        assert_eq!(back[0].0, record(1));
    }

    #[test]
    fn a_reader_sees_the_records_while_the_log_is_open() {
        let (_dir, db, mut log) = new_log(Durability::Process);
        log.append(&record(1)).unwrap().unwrap();
        log.append(&record(2)).unwrap().unwrap();
        // A reader (`medlink trace`, the console) reads the file while the node runs.
        let (generation, seen) = peek(&db, (0, 0)).unwrap();
        assert_eq!(generation, log.generation());
        assert_eq!(seen, vec![record(1), record(2)]);
        log.rewind().unwrap();
        let (generation, seen) = peek(&db, (0, 0)).unwrap();
        assert_eq!(generation, log.generation());
        assert!(seen.is_empty(), "a new generation starts empty");
    }

    #[test]
    fn a_record_cut_short_ends_the_log() {
        let (_dir, db, mut log) = new_log(Durability::Process);
        let second = log.append(&record(1)).unwrap().unwrap();
        log.append(&record(2)).unwrap();
        // A power loss kept only part of the second record.
        log.file.write_all_at(&[0xff; 8], second + 30).unwrap();
        drop(log);
        let (_, back) = CustodyLog::open(&db, Durability::Process, (0, 0)).unwrap();
        assert_eq!(back.len(), 1);
        assert_eq!(back[0].0, record(1));
    }

    #[test]
    fn a_record_that_does_not_fit_is_refused() {
        let (_dir, _, mut log) = new_log(Durability::Process);
        let big = Record {
            segments: vec![("up".into(), 1, 1, None, vec![0; RECORD_MAX])],
            ..Record::default()
        };
        assert_eq!(log.append(&big).unwrap(), None);
        assert!(log.append(&record(1)).unwrap().is_some());
        // Records that fit one by one, until the space is used up.
        let some = Record {
            segments: vec![("up".into(), 1, 1, None, vec![0; RECORD_MAX / 2])],
            ..Record::default()
        };
        let taken = std::iter::from_fn(|| log.append(&some).unwrap()).count();
        assert_eq!(taken, (SPACE / (RECORD_MAX as u64 / 2)) as usize - 1);
        assert_eq!(log.append(&some).unwrap(), None);
    }

    #[test]
    fn a_file_that_is_not_a_log_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("j.db");
        std::fs::write(dir.path().join("j.db-custody"), [7u8; 64]).unwrap();
        let err = CustodyLog::open(&db, Durability::Process, (0, 0))
            .err()
            .unwrap();
        assert!(
            err.to_string().contains("not a medlink custody log"),
            "{err}"
        );
    }
}
