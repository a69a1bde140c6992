//! Journal unit tests: numbering, segments, hot tails, formats, acknowledgement.

use super::*;
use crate::envelope::{Envelope, Priority};

#[test]
fn hot_tail_matches_the_database() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("j.db");
    let mut j = Journal::open(&path, Durability::Process).unwrap();
    let mut t = j.begin().unwrap();
    for i in 0..10 {
        t.enqueue(&up(), &env(&i.to_string()).head(), format!("b{i}").into())
            .unwrap();
    }
    t.commit().unwrap();
    // rolled back work never shows in the hot tail
    let mut t = j.begin().unwrap();
    t.enqueue(&up(), &env("x").head(), "rolled back".into())
        .unwrap();
    t.remove_through(&up(), 9).unwrap();
    drop(t);
    assert_eq!(j.read(&up(), 0, 100).unwrap().len(), 10);
    let mut t = j.begin().unwrap();
    t.remove_through(&up(), 3).unwrap();
    assert!(t.remove(&up(), 6).unwrap());
    t.commit().unwrap();
    // Readers always start above the acknowledged point (3 here); a segment that is only
    // partly acknowledged keeps its acknowledged entries on disk until the rest goes.
    let hot = lseqs(&j, &up(), 3);
    drop(j);
    let cold = Journal::open(&path, Durability::Process).unwrap();
    let db = lseqs(&cold, &up(), 3);
    assert_eq!(hot, db);
    assert_eq!(db, vec![4, 5, 7, 8, 9, 10]);
}

#[test]
fn a_journal_of_another_format_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.db");
    let old = Connection::open(&path).unwrap();
    old.execute_batch("CREATE TABLE queue(dest TEXT, lseq INTEGER, body BLOB);")
        .unwrap();
    drop(old);
    let err = Journal::open(&path, Durability::Process)
        .err()
        .expect("refused");
    assert!(err.to_string().contains("format"), "{err}");
    // a fresh journal opens, and opens again
    let fresh = dir.path().join("new.db");
    drop(Journal::open(&fresh, Durability::Process).unwrap());
    Journal::open(&fresh, Durability::Process).unwrap();
}

/// The normal lane up, the destination most tests queue for.
pub(crate) fn up() -> Dest {
    Dest::new(Target::Up, Priority::Normal)
}

fn env(id: &str) -> Envelope {
    crate::envelope::test_envelope(id, "a", "c")
}

/// The sequence numbers `j` would send for `dest` after `after` (at most 100).
pub(crate) fn lseqs(j: &Journal, dest: &Dest, after: u64) -> Vec<u64> {
    j.read(dest, after, 100)
        .unwrap()
        .iter()
        .map(|q| q.lseq)
        .collect()
}

#[test]
fn sequences_survive_reopen_and_are_never_reused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("j.db");
    {
        let mut j = Journal::open(&path, Durability::Process).unwrap();
        let mut t = j.begin().unwrap();
        assert_eq!(t.enqueue(&up(), &env("1").head(), "one".into()).unwrap(), 1);
        assert_eq!(t.enqueue(&up(), &env("2").head(), "two".into()).unwrap(), 2);
        t.commit().unwrap();
        let mut t = j.begin().unwrap();
        t.remove_through(&up(), 2).unwrap();
        t.commit().unwrap();
        // an uncommitted transaction leaves nothing behind
        let mut t = j.begin().unwrap();
        t.enqueue(&up(), &env("3").head(), "lost".into()).unwrap();
        drop(t);
    }
    let mut j = Journal::open(&path, Durability::Process).unwrap();
    // numbering resumes past the reserved block: nothing below 3 comes back
    let floor = j.floor(&up()).unwrap();
    assert!(floor >= 3, "{floor}");
    let mut t = j.begin().unwrap();
    let lseq = t.enqueue(&up(), &env("3").head(), "three".into()).unwrap();
    assert!(lseq >= 3 && lseq == floor, "{lseq} {floor}");
    t.commit().unwrap();
    let rows = j.read(&up(), 0, 10).unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(&rows[0].body[..], b"three");
}

#[test]
fn idempotency_records_expire_oldest_first_without_reading_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let mut j = Journal::open(&dir.path().join("j.db"), Durability::Process).unwrap();
    let mut t = j.begin().unwrap();
    // Accepted at 10, 20, 30, then 15 (the clock was set back), then 40.
    for (id, at) in [("a", 10), ("b", 20), ("c", 30), ("d", 15), ("e", 40)] {
        assert!(t.first_acceptance(id, at).unwrap());
    }
    t.commit().unwrap();
    let remaining = |j: &mut Journal| {
        let t = j.begin().unwrap();
        let ids: Vec<String> =
            t.tx.conn()
                .unwrap()
                .prepare("SELECT id FROM accepted ORDER BY rowid")
                .unwrap()
                .query_map([], |r| r.get(0))
                .unwrap()
                .map(|r| r.unwrap())
                .collect();
        ids
    };
    let prune = |j: &mut Journal, before: u64| {
        let mut t = j.begin().unwrap();
        let n = t.prune_accepted(before, 0).unwrap();
        t.commit().unwrap();
        n
    };
    assert_eq!(prune(&mut j, 5), 0);
    assert_eq!(prune(&mut j, 25), 2);
    assert_eq!(remaining(&mut j), ["c", "d", "e"]);
    // "d" (15) is past its time but comes after "c" (30), which is not: it waits for "c".
    assert_eq!(prune(&mut j, 20), 0);
    assert_eq!(remaining(&mut j), ["c", "d", "e"]);
    // Everything past its time: the table empties, and a resent id is new again.
    assert_eq!(prune(&mut j, 100), 3);
    assert!(remaining(&mut j).is_empty());
    let mut t = j.begin().unwrap();
    assert!(t.first_acceptance("a", 200).unwrap());
    assert!(!t.first_acceptance("a", 201).unwrap());
}

#[test]
fn reads_of_destinations_never_numbered_or_read_to_the_end_are_empty() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("j.db");
    let other = Dest::new(Target::Commands("c1".into()), Priority::Urgent);
    let mut j = Journal::open(&path, Durability::Process).unwrap();
    assert!(j.read(&up(), 0, 10).unwrap().is_empty());
    // Numbered in a transaction that rolled back: still nothing to read.
    let mut t = j.begin().unwrap();
    t.enqueue(&other, &env("gone").head(), "gone".into())
        .unwrap();
    drop(t);
    assert!(j.read(&other, 0, 10).unwrap().is_empty());
    let mut t = j.begin().unwrap();
    for i in 0..3 {
        t.enqueue(&up(), &env(&i.to_string()).head(), format!("b{i}").into())
            .unwrap();
    }
    t.commit().unwrap();
    assert_eq!(lseqs(&j, &up(), 0), [1, 2, 3]);
    assert_eq!(lseqs(&j, &up(), 2), [3]);
    assert!(lseqs(&j, &up(), 3).is_empty());
    // After a restart numbering resumes at the end of the reserved block; what is queued is
    // read from SQLite, and the other destination still has nothing.
    drop(j);
    let j = Journal::open(&path, Durability::Process).unwrap();
    assert_eq!(lseqs(&j, &up(), 0), [1, 2, 3]);
    assert!(lseqs(&j, &up(), 3).is_empty());
    assert!(lseqs(&j, &other, 0).is_empty());
}

#[test]
fn a_snapshot_reads_what_was_committed_and_ends_even_when_a_read_fails() {
    let dir = tempfile::tempdir().unwrap();
    let mut j = Journal::open(&dir.path().join("j.db"), Durability::Process).unwrap();
    let mut t = j.begin().unwrap();
    t.enqueue(&up(), &env("a").head(), "a".into()).unwrap();
    t.commit().unwrap();
    let read = j.snapshot(|j| j.read(&up(), 0, 10)).unwrap();
    assert_eq!(read.len(), 1);
    // A failed read ends the transaction too: the next round can begin its own.
    let failed: Result<()> = j.snapshot(|_| Err(rusqlite::Error::InvalidQuery));
    assert!(failed.is_err());
    let mut t = j.begin().expect("no read transaction left open");
    t.enqueue(&up(), &env("b").head(), "b".into()).unwrap();
    t.commit().unwrap();
    assert_eq!(j.snapshot(|j| j.read(&up(), 0, 10)).unwrap().len(), 2);
}

/// A new folder with a journal and its custody log in it: the folder, the journal's path, the
/// journal.
fn new_with_log() -> (tempfile::TempDir, std::path::PathBuf, Journal) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("j.db");
    let j = with_log(&path);
    (dir, path, j)
}

/// A journal with its custody log, at `path`.
fn with_log(path: &Path) -> Journal {
    let mut j = Journal::open(path, Durability::Process).unwrap();
    j.keep_custody_log(path, Durability::Process).unwrap();
    j
}

/// How many queue rows SQLite itself holds (not the custody log, not the hot tails).
fn stored_rows(path: &Path) -> i64 {
    Connection::open(path)
        .unwrap()
        .query_row("SELECT count(*) FROM queue", [], |r| r.get(0))
        .unwrap()
}

/// A round that only queues envelopes and moves a link position: the custody log takes it.
fn pass_on(j: &mut Journal, ids: &[&str], last: u64) {
    let mut t = j.begin().unwrap();
    for id in ids {
        t.enqueue(&up(), &env(id).head(), format!("body {id}").into())
            .unwrap();
    }
    t.set_link_in((&Peer::Child("c".into()), Priority::Normal), last, 7)
        .unwrap();
    t.commit().unwrap();
}

#[test]
fn a_round_the_custody_log_took_survives_a_crash_before_it_reached_sqlite() {
    let (_dir, path, mut j) = new_with_log();
    pass_on(&mut j, &["a", "b", "c"], 3);
    assert!(j.has_logged());
    assert_eq!(
        stored_rows(&path),
        0,
        "the round went to the log, not to SQLite"
    );
    // Sending reads it from the hot tail meanwhile, and a new lane starts below it.
    assert_eq!(lseqs(&j, &up(), 0), vec![1, 2, 3]);
    assert_eq!(j.floor(&up()).unwrap(), 1);
    drop(j); // a crash: nothing wrote the log's round into SQLite

    let mut j = with_log(&path);
    assert!(!j.has_logged());
    assert_eq!(stored_rows(&path), 1, "replayed as the round's one segment");
    let rows = j.read(&up(), 0, 10).unwrap();
    let bodies: Vec<&[u8]> = rows.iter().map(|q| &q.body[..]).collect();
    assert_eq!(bodies, [&b"body a"[..], b"body b", b"body c"]);
    let mut t = j.begin().unwrap();
    assert_eq!(
        t.link_in(&Peer::Child("c".into()), Priority::Normal)
            .unwrap(),
        (3, 7)
    );
    // Numbering goes on after the replayed round: no number is given twice.
    let next = t.enqueue(&up(), &env("d").head(), "body d".into()).unwrap();
    assert!(next > 3, "{next}");
    t.commit().unwrap();
}

#[test]
fn the_custody_logs_rounds_reach_sqlite_once_however_the_node_stops() {
    let (_dir, path, mut j) = new_with_log();
    pass_on(&mut j, &["a", "b"], 2);
    // The dispatcher's idle moment.
    j.write_logged().unwrap();
    assert!(!j.has_logged());
    assert_eq!(stored_rows(&path), 1);
    pass_on(&mut j, &["c"], 3);
    pass_on(&mut j, &["d", "e"], 5);
    drop(j);
    // Reopened twice: the written round is not replayed again, the other two are replayed
    // once (a second replay would break the queue's unique index or double the rows).
    drop(with_log(&path));
    let j = with_log(&path);
    assert_eq!(stored_rows(&path), 3);
    assert_eq!(lseqs(&j, &up(), 0), vec![1, 2, 3, 4, 5]);
}

#[test]
fn a_round_that_writes_to_sqlite_carries_the_logged_rounds_before_its_own() {
    let (_dir, path, mut j) = new_with_log();
    pass_on(&mut j, &["a", "b", "c"], 3);
    // An acknowledgement is a statement: this round commits to SQLite, the logged one first.
    let mut t = j.begin().unwrap();
    assert_eq!(
        t.remove_through(&up(), 2).unwrap(),
        0,
        "a segment goes whole"
    );
    t.enqueue(&up(), &env("d").head(), "body d".into()).unwrap();
    t.commit().unwrap();
    assert!(!j.has_logged());
    assert_eq!(stored_rows(&path), 2);
    drop(j);
    let j = with_log(&path);
    assert_eq!(lseqs(&j, &up(), 2), vec![3, 4]);
}

#[test]
fn the_custody_logs_rounds_reach_sqlite_a_few_at_a_time_and_a_crash_between_loses_none() {
    let (_dir, path, mut j) = new_with_log();
    let chunk = super::custody::WRITE_CHUNK;
    let due = super::custody::WRITE_DUE;
    let n = due + 2;
    for i in 0..n {
        if i == due - 1 {
            assert!(!j.logged_due(), "one round short of two chunks");
        }
        pass_on(&mut j, &[&format!("m{i}")], i as u64 + 1);
    }
    assert!(j.logged_due(), "two chunks wait");
    // One idle moment writes the oldest chunk; the rest wait in the log, not due yet.
    j.write_some_logged().unwrap();
    assert!(j.has_logged() && !j.logged_due());
    assert_eq!(stored_rows(&path), chunk as i64);
    // The next idle moment writes the next chunk.
    j.write_some_logged().unwrap();
    assert!(j.has_logged() && !j.logged_due());
    assert_eq!(stored_rows(&path), 2 * chunk as i64);
    drop(j);
    // After a crash the rest are replayed, and none of the first few again.
    let mut j = with_log(&path);
    let n = n as u64;
    assert_eq!(stored_rows(&path), n as i64);
    assert_eq!(lseqs(&j, &up(), 0), (1..=n).collect::<Vec<_>>());
    let t = j.begin().unwrap();
    assert_eq!(
        t.link_in(&Peer::Child("c".into()), Priority::Normal)
            .unwrap(),
        (n, 7)
    );
    drop(t);
    // And the log goes on from there.
    pass_on(&mut j, &["last"], n + 1);
    drop(j);
    let j = with_log(&path);
    assert_eq!(stored_rows(&path), n as i64 + 1);
    // Numbering after a restart resumes at the end of the reserved block.
    let seqs = lseqs(&j, &up(), 0);
    assert_eq!(seqs[..n as usize], (1..=n).collect::<Vec<_>>());
    assert!(seqs[n as usize] > n, "{seqs:?}");
}

#[test]
fn a_node_busy_without_a_pause_writes_the_logged_rounds_every_so_often() {
    let (_dir, path, mut j) = new_with_log();
    let at = super::custody::WRITE_AT;
    for i in 0..at {
        pass_on(&mut j, &[&format!("m{i}")], i as u64 + 1);
    }
    assert_eq!(stored_rows(&path), 0);
    assert!(j.logged_due());
    // The next round commits to SQLite, carrying every logged one before its own.
    pass_on(&mut j, &["last"], at as u64 + 1);
    assert!(!j.has_logged());
    assert_eq!(stored_rows(&path), at as i64 + 1);
    let at = at as u64;
    assert_eq!(lseqs(&j, &up(), at - 3), vec![at - 2, at - 1, at, at + 1]);
}

#[test]
fn rounds_the_next_hop_acknowledged_while_logged_never_reach_sqlite_and_a_crash_replays_them() {
    let acknowledge_through_4 = |j: &mut Journal| {
        pass_on(j, &["a", "b"], 2); // segment 1-2
        pass_on(j, &["c"], 3); // 3
        pass_on(j, &["d", "e"], 5); // 4-5: half acknowledged below, so it stays whole
        let t = j.begin().unwrap();
        t.forget_logged([(up().as_str(), 4)]);
        t.commit().unwrap();
        assert_eq!(j.floor(&up()).unwrap(), 4);
    };

    // Written at an idle moment: SQLite gets the one segment still unacknowledged, and the
    // last link position.
    let (_dir, path, mut j) = new_with_log();
    acknowledge_through_4(&mut j);
    j.write_logged().unwrap();
    assert!(!j.has_logged());
    assert_eq!(stored_rows(&path), 1);
    drop(j);
    let mut j = with_log(&path);
    assert_eq!(
        stored_rows(&path),
        1,
        "nothing replayed: SQLite held the log"
    );
    assert_eq!(lseqs(&j, &up(), 0), vec![4, 5]);
    let t = j.begin().unwrap();
    assert_eq!(
        t.link_in(&Peer::Child("c".into()), Priority::Normal)
            .unwrap(),
        (5, 7)
    );
    drop(t);

    // A crash before SQLite had them: the log's file still holds every round, and all come
    // back, to be sent again (the next hop skips what it holds by link sequence).
    let (_dir, path, mut j) = new_with_log();
    acknowledge_through_4(&mut j);
    drop(j);
    let j = with_log(&path);
    assert_eq!(stored_rows(&path), 3);
    assert_eq!(lseqs(&j, &up(), 0), vec![1, 2, 3, 4, 5]);
}

/// How many audit rows SQLite itself holds.
fn stored_audits(path: &Path) -> i64 {
    Connection::open(path)
        .unwrap()
        .query_row("SELECT count(*) FROM audit", [], |r| r.get(0))
        .unwrap()
}

/// The root's two rounds per command: one queues it for the client and audits it, the next
/// takes the client's acknowledgement. Both go to the custody log, and whether SQLite gets
/// them at an idle moment or from the log after a crash, it ends with the audit rows, the
/// point, and no row of what the client holds.
#[test]
fn audited_and_acknowledging_rounds_go_to_the_custody_log_and_survive_a_crash() {
    for crash in [false, true] {
        let (_dir, path, mut j) = new_with_log();
        let mut t = j.begin().unwrap();
        for id in ["a", "b"] {
            let e = env(id);
            t.enqueue(&up(), &e.head(), "body".into()).unwrap();
            t.audit(&e.head(), 5, "local:c");
        }
        t.commit().unwrap();
        let mut t = j.begin().unwrap();
        t.acknowledge(&up(), 2, crate::stats::DeliveredBy::Mqtt)
            .unwrap();
        t.commit().unwrap();
        assert!(j.has_logged());
        assert_eq!(
            (stored_rows(&path), stored_audits(&path)),
            (0, 0),
            "both rounds went to the log"
        );
        let stored_points: i64 = Connection::open(&path)
            .unwrap()
            .query_row("SELECT count(*) FROM acked", [], |r| r.get(0))
            .unwrap();
        assert_eq!(stored_points, 0, "the point is in the log");
        assert_eq!(j.acked(&up()).unwrap(), 2, "and the node counts it");
        if crash {
            drop(j);
            j = with_log(&path);
        } else {
            j.write_logged().unwrap();
        }
        assert!(!j.has_logged());
        assert_eq!(
            (stored_rows(&path), stored_audits(&path)),
            (0, 2),
            "crash: {crash}"
        );
        assert_eq!(j.acked(&up()).unwrap(), 2, "crash: {crash}");
        assert!(lseqs(&j, &up(), 0).is_empty(), "crash: {crash}");
    }
}

/// A round that acknowledges and reads in SQLite (the expiry sweep) sees the rows gone, and a
/// round with only points still writes every logged round once 256 wait.
#[test]
fn a_statement_sees_the_points_of_its_round_and_a_busy_node_still_writes_the_log() {
    let (_dir, path, mut j) = new_with_log();
    let mut t = j.begin().unwrap();
    for id in ["a", "b", "c"] {
        t.enqueue(&up(), &env(id).head(), "body".into()).unwrap();
    }
    t.commit().unwrap();
    j.write_logged().unwrap();
    let mut t = j.begin().unwrap();
    t.acknowledge(&up(), 3, crate::stats::DeliveredBy::Link)
        .unwrap();
    assert_eq!(t.acked(&up()).unwrap(), 3);
    assert_eq!(
        t.floor(&up()).unwrap(),
        4,
        "the statement saw the segment gone"
    );
    t.commit().unwrap();
    assert_eq!(stored_rows(&path), 0);

    let at = super::custody::WRITE_AT;
    for i in 0..at {
        pass_on(&mut j, &[&format!("m{i}")], i as u64 + 1);
    }
    let mut t = j.begin().unwrap();
    t.acknowledge(&up(), 4, crate::stats::DeliveredBy::Link)
        .unwrap();
    t.commit().unwrap();
    assert!(!j.has_logged(), "the 257th round wrote them all");
    assert_eq!(
        stored_rows(&path),
        at as i64 - 1,
        "and none it acknowledged"
    );
}

/// Tools reading a journal (`medlink audit`, `medlink trace`) see the rounds the custody log
/// holds beyond SQLite, whether the node runs or died, each row once, and in order.
#[test]
fn readers_see_the_custody_logs_rounds_once_as_if_written() {
    let (_dir, path, mut j) = new_with_log();
    let audited = |j: &mut Journal, ids: &[&str]| {
        let mut t = j.begin().unwrap();
        for id in ids {
            let e = env(id);
            t.enqueue(&up(), &e.head(), "body".into()).unwrap();
            t.audit(&e.head(), 5, "up");
        }
        t.commit().unwrap();
    };
    let read = |path: &Path| {
        let conn = open_reader(path).unwrap();
        let ids: Vec<String> = conn
            .prepare("SELECT id FROM audit ORDER BY at, rowid")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        let segments: Vec<(i64, i64)> = conn
            .prepare("SELECT first_lseq, last_lseq FROM queue ORDER BY first_lseq")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        (ids, segments)
    };
    audited(&mut j, &["a"]);
    j.write_logged().unwrap();
    audited(&mut j, &["b", "c"]);
    assert_eq!(stored_audits(&path), 1);
    let want = (
        vec!["a".to_string(), "b".into(), "c".into()],
        vec![(1, 1), (2, 3)],
    );
    assert_eq!(read(&path), want, "the node runs");
    // Acknowledged through 2: SQLite's row and the logged segment it covers wholly are gone
    // for readers too; the half-covered one stays.
    let mut t = j.begin().unwrap();
    t.acknowledge(&up(), 2, crate::stats::DeliveredBy::Link)
        .unwrap();
    t.commit().unwrap();
    assert_eq!(read(&path).1, vec![(2, 3)]);
    drop(j); // the node dies
    assert_eq!(read(&path).0, want.0, "the node died");
    assert_eq!(read(&path).1, vec![(2, 3)]);
    let j = with_log(&path);
    assert_eq!(read(&path).0, want.0, "replayed: the same, once");
    assert_eq!(read(&path).1, vec![(2, 3)]);
    drop(j);
}

/// After a restart the hot tail starts at the first new row; a reader from further back gets
/// SQLite's rows and then the custody log's, which SQLite does not hold yet.
#[test]
fn a_read_from_below_the_hot_tail_includes_the_rows_still_in_the_custody_log() {
    let (_dir, path, mut j) = new_with_log();
    pass_on(&mut j, &["a", "b"], 2);
    drop(j);
    let mut j = with_log(&path); // replayed into SQLite; the hot tail is empty
    pass_on(&mut j, &["c"], 3);
    assert!(j.has_logged());
    let seqs = lseqs(&j, &up(), 0);
    assert_eq!(seqs.len(), 3, "{seqs:?}");
    assert_eq!(seqs[..2], [1, 2]);
    assert_eq!(lseqs(&j, &up(), 1).len(), 2);
}
