//! The journal's tables, and the format number an existing journal must carry.
//!
//! Additive changes (a new table or index) keep the format: `CREATE ... IF NOT EXISTS` adds
//! them to older journals. Anything that changes how existing rows are read bumps `FORMAT`.

/// On-disk format of the journal (`meta.format`).
pub(super) const FORMAT: i64 = 3;

pub(super) const SCHEMA: &str = "
-- One row per segment: consecutive envelopes for one destination (see segment.rs).
CREATE TABLE IF NOT EXISTS queue(
    rid INTEGER PRIMARY KEY,
    dest TEXT NOT NULL,
    first_lseq INTEGER NOT NULL,
    last_lseq INTEGER NOT NULL,
    min_expiry INTEGER,
    entries BLOB NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS queue_dest ON queue(dest, first_lseq);
CREATE INDEX IF NOT EXISTS queue_expiry ON queue(min_expiry) WHERE min_expiry IS NOT NULL;
CREATE TABLE IF NOT EXISTS seq(dest TEXT PRIMARY KEY, next INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS link_in(
    peer TEXT PRIMARY KEY,
    last INTEGER NOT NULL,
    epoch INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value INTEGER NOT NULL);
-- How far each destination is acknowledged by its next hop or client.
CREATE TABLE IF NOT EXISTS acked(dest TEXT PRIMARY KEY, upto INTEGER NOT NULL);
-- Client-chosen ids accepted in the last week (idempotency). Rows are appended in `at` order;
-- the prune relies on it instead of an index (txn.rs, `prune_accepted`).
CREATE TABLE IF NOT EXISTS accepted(id TEXT PRIMARY KEY, at INTEGER NOT NULL);
-- Commands delivered here whose sender wants a `replied` receipt: `<client>/<id>` → the
-- command (without params), until its expiry or 7 days.
CREATE TABLE IF NOT EXISTS awaiting_reply(
    key TEXT PRIMARY KEY,
    origin BLOB NOT NULL,
    until INTEGER NOT NULL
);
-- The minute's prune deletes by `until`; without this it read every row to find them.
CREATE INDEX IF NOT EXISTS awaiting_reply_until ON awaiting_reply(until);
CREATE TABLE IF NOT EXISTS audit(
    at INTEGER NOT NULL,
    id TEXT NOT NULL,
    kind TEXT NOT NULL,
    from_node TEXT NOT NULL,
    from_client TEXT NOT NULL,
    to_node TEXT NOT NULL,
    to_client TEXT NOT NULL,
    cmd TEXT NOT NULL,
    hops INTEGER NOT NULL,
    decision TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_at ON audit(at);
-- No query looks audit rows up by id (`medlink trace` also matches receipt ids with LIKE, a
-- scan in `at` order), and the root writes one row per command: an index on `id` cost it a
-- B-tree insert per command for nothing. Journals that have it lose it.
DROP INDEX IF EXISTS audit_id;
-- Commands that ended here failed, expired or rejected, kept for operators to look at and
-- re-send (dead letters), until `deadletter_retention_s` after they ended. `envelope` is the
-- envelope JSON, or for a rejected submission the bytes the client sent.
CREATE TABLE IF NOT EXISTS deadletter(
    id TEXT PRIMARY KEY,
    at INTEGER NOT NULL,
    reason TEXT NOT NULL,
    detail TEXT NOT NULL,
    from_node TEXT NOT NULL,
    from_client TEXT NOT NULL,
    to_node TEXT NOT NULL,
    to_client TEXT NOT NULL,
    cmd TEXT NOT NULL,
    envelope BLOB NOT NULL,
    resent_as TEXT,
    resent_by TEXT
);
CREATE INDEX IF NOT EXISTS deadletter_at ON deadletter(at);
-- What operators did (reveal, re-send, purge), newest last; kept like the audit table.
CREATE TABLE IF NOT EXISTS operator_log(
    at INTEGER NOT NULL,
    operator TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS operator_log_at ON operator_log(at);
-- The node this journal belongs to (for tools reading it, like `medlink trace`).
CREATE TABLE IF NOT EXISTS owner(node TEXT NOT NULL);
";
