//! The writer thread of a [`SqliteStore`](super::SqliteStore): it owns the
//! connection and runs every call as a job in its transaction; the schema
//! and the SQL of each operation.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use minijinja::Value;
use rusqlite::{Connection, OptionalExtension, params};

use super::{Durability, SqliteOptions};
use crate::fragment::Delta;
use crate::id::SessionId;
use crate::store::{Append, SessionLog, SessionRecord};
use crate::{Error, ErrorKind, Result};

/// The schema this version writes and reads (`PRAGMA user_version`).
const SCHEMA: i64 = 1;

/// The page size of new files.
const PAGE_SIZE: i64 = 1024;

/// Jobs one transaction may hold.
const MAX_BATCH: usize = 512;

#[derive(Debug, Default)]
pub(super) struct Counters {
    pub(super) appends: AtomicU64,
    pub(super) snapshots: AtomicU64,
    pub(super) commits: AtomicU64,
    pub(super) bytes: AtomicU64,
}

/// What the writer runs: one job in the open transaction; it returns what
/// to do once the transaction committed (or failed to).
pub(super) type Job = Box<dyn FnOnce(&Writer) -> Done + Send>;
pub(super) type Done = Box<dyn FnOnce(Result<()>) + Send>;

pub(super) struct Writer {
    pub(super) conn: Connection,
    pub(super) opts: SqliteOptions,
    pub(super) stats: Arc<Counters>,
}

pub(super) fn sql_error(what: &str, e: rusqlite::Error) -> Error {
    Error::store(format!("sqlite: {what}: {e}"), e)
}

pub(super) fn i(v: u64) -> i64 {
    v as i64
}

pub(super) fn u(v: i64) -> u64 {
    v as u64
}

/// Opens the connection: checks the file (readable, undamaged, our schema
/// or none), switches to WAL, sets the sync level and the size cap, and
/// makes the schema in a new file. Every error names the file.
pub(super) fn open_connection(path: &Path, opts: &SqliteOptions) -> Result<Connection> {
    let shown = path.display().to_string();
    let err = |what: &str, e: rusqlite::Error| sql_error(&format!("{shown}: {what}"), e);
    // A new file is readable by its owner only (it holds the sessions'
    // data); SQLite gives the WAL files the same mode.
    let mut new_file = std::fs::OpenOptions::new();
    new_file.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut new_file, 0o600);
    match new_file.open(path) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(Error::store(format!("sqlite: {shown}: cannot create"), e)),
    }
    let conn = Connection::open(path).map_err(|e| err("cannot open", e))?;
    conn.busy_timeout(Duration::from_secs(5))
        .map_err(|e| err("busy timeout", e))?;
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(|e| err("not a readable SQLite database", e))?;
    if opts.check_on_open {
        let verdict: String = conn
            .query_row("PRAGMA quick_check", [], |r| r.get(0))
            .map_err(|e| err("the integrity check failed", e))?;
        if verdict != "ok" {
            return Err(Error::new(
                ErrorKind::Store,
                format!("sqlite: {shown}: the file is damaged ({verdict}); it was left as it is"),
            ));
        }
    }
    let ours: i64 = conn
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE name LIKE 'st\\_%' ESCAPE '\\'",
            [],
            |r| r.get(0),
        )
        .map_err(|e| err("reading the schema", e))?;
    match version {
        SCHEMA => {}
        0 if ours == 0 => {}
        0 => {
            return Err(Error::new(
                ErrorKind::Store,
                format!(
                    "sqlite: {shown}: holds st_ tables this store did not make (no schema version); refusing to touch them"
                ),
            ));
        }
        v if v < SCHEMA => {
            return Err(Error::new(
                ErrorKind::Store,
                format!(
                    "sqlite: {shown}: written with an older schema (version {v}); this version reads schema {SCHEMA}. The file was left as it is: migrate it, or point the store at a new file"
                ),
            ));
        }
        v => {
            return Err(Error::new(
                ErrorKind::Store,
                format!(
                    "sqlite: {shown}: written by a newer version (schema {v}; this one reads {SCHEMA}); the file was left as it is"
                ),
            ));
        }
    }
    if version == 0 && ours == 0 {
        // A new file: small pages, so a one-row change writes little (an
        // append touches about four pages; see docs/benchmarks.md).
        conn.pragma_update(None, "page_size", PAGE_SIZE)
            .map_err(|e| err("setting the page size", e))?;
    }
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .map_err(|e| err("cannot switch to WAL mode", e))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(Error::new(
            ErrorKind::Store,
            format!("sqlite: {shown}: cannot use WAL mode (got {mode})"),
        ));
    }
    let sync = match opts.durability {
        Durability::Async => "NORMAL",
        _ => "FULL",
    };
    conn.pragma_update(None, "synchronous", sync)
        .map_err(|e| err("setting synchronous", e))?;
    if opts.max_size > 0 {
        let page: i64 = conn
            .query_row("PRAGMA page_size", [], |r| r.get(0))
            .map_err(|e| err("reading the page size", e))?;
        let pages = (opts.max_size / page.max(512) as u64).max(1);
        conn.query_row(&format!("PRAGMA max_page_count = {pages}"), [], |_| Ok(()))
            .map_err(|e| err("capping the size", e))?;
    }
    if version == 0 {
        conn.execute_batch(&format!(
            "BEGIN;
             CREATE TABLE st_sessions (
               id BLOB PRIMARY KEY,
               template TEXT NOT NULL,
               version INTEGER NOT NULL,
               seq INTEGER NOT NULL,
               generation INTEGER NOT NULL,
               epoch INTEGER NOT NULL,
               created_ms INTEGER NOT NULL,
               last_access_ms INTEGER NOT NULL,
               expires_ms INTEGER NOT NULL,
               applied TEXT NOT NULL,
               snap_version INTEGER NOT NULL,
               snap_bytes INTEGER NOT NULL,
               log_bytes INTEGER NOT NULL
             ) WITHOUT ROWID;
             CREATE INDEX st_sessions_expiry ON st_sessions (expires_ms, id);
             CREATE TABLE st_snapshots (id BLOB PRIMARY KEY, data BLOB NOT NULL);
             CREATE TABLE st_deltas (
               id BLOB NOT NULL, version INTEGER NOT NULL, delta BLOB NOT NULL,
               PRIMARY KEY (id, version)
             ) WITHOUT ROWID;
             CREATE TABLE st_frames (
               id BLOB NOT NULL, seq INTEGER NOT NULL, frame TEXT NOT NULL,
               PRIMARY KEY (id, seq)
             ) WITHOUT ROWID;
             PRAGMA user_version = {SCHEMA};
             COMMIT;"
        ))
        .map_err(|e| err("creating the schema", e))?;
    }
    Ok(conn)
}

impl Writer {
    pub(super) fn run(self, rx: mpsc::Receiver<Job>) {
        // Whether the last batch had company, and how long its commit took:
        // only with company is waiting for more worth it, and then at most
        // as long as a commit (so waiting at most doubles a change's wait
        // while the sync is shared).
        let (mut busy, mut last_commit) = (false, Duration::ZERO);
        while let Ok(first) = rx.recv() {
            let mut batch = vec![first];
            match self.opts.durability {
                Durability::Full => {}
                Durability::Grouped { max_delay } => {
                    while batch.len() < MAX_BATCH {
                        match rx.try_recv() {
                            Ok(j) => batch.push(j),
                            Err(_) => break,
                        }
                    }
                    if busy || batch.len() > 1 {
                        let until = Instant::now() + max_delay.min(last_commit);
                        while batch.len() < MAX_BATCH {
                            let left = until.saturating_duration_since(Instant::now());
                            match rx.recv_timeout(left) {
                                Ok(j) => batch.push(j),
                                Err(_) => break,
                            }
                        }
                    }
                    busy = batch.len() > 1;
                }
                Durability::Async => {
                    while batch.len() < MAX_BATCH {
                        match rx.try_recv() {
                            Ok(j) => batch.push(j),
                            Err(_) => break,
                        }
                    }
                }
            }
            let t = Instant::now();
            self.run_batch(batch);
            last_commit = t.elapsed();
        }
    }

    pub(super) fn run_batch(&self, batch: Vec<Job>) {
        let mut dones: Vec<Done> = Vec::with_capacity(batch.len());
        let mut open = self.begin();
        for job in batch {
            if let Err(e) = &open {
                // No transaction: the job's step fails with this error.
                let done = job(self);
                done(Err(Error::new(ErrorKind::Store, e.to_string())));
                open = self.begin();
                continue;
            }
            dones.push(job(self));
            if self.conn.is_autocommit() {
                // SQLite rolled the whole transaction back (a full disk, an
                // I/O error): every job in it failed, not only the last.
                let e = Error::new(
                    ErrorKind::Store,
                    "sqlite: the transaction was rolled back (disk full or I/O error)",
                );
                for done in dones.drain(..) {
                    done(Err(Error::new(ErrorKind::Store, e.to_string())));
                }
                open = self.begin();
            }
        }
        if open.is_err() {
            return;
        }
        let commit = self
            .conn
            .execute_batch("COMMIT")
            .map_err(|e| sql_error("commit", e));
        if commit.is_err() {
            let _ = self.conn.execute_batch("ROLLBACK");
        } else {
            self.stats.commits.fetch_add(1, Ordering::Relaxed);
        }
        for done in dones {
            done(match &commit {
                Ok(()) => Ok(()),
                Err(e) => Err(Error::new(ErrorKind::Store, e.to_string())),
            });
        }
    }

    fn begin(&self) -> Result<()> {
        self.conn
            .execute_batch("BEGIN IMMEDIATE")
            .map_err(|e| sql_error("begin", e))
    }

    /// Runs `f` in a savepoint: if it fails, what it wrote is undone and the
    /// rest of the transaction goes on.
    pub(super) fn step<T>(&self, f: impl FnOnce(&Writer) -> Result<T>) -> Result<T> {
        if self.conn.is_autocommit() {
            return Err(Error::new(
                ErrorKind::Store,
                "sqlite: no transaction could be started",
            ));
        }
        self.conn
            .execute_batch("SAVEPOINT st_job")
            .map_err(|e| sql_error("savepoint", e))?;
        let r = f(self);
        if self.conn.is_autocommit() {
            // SQLite ended the transaction itself (see run_batch).
            return r;
        }
        let end = if r.is_ok() {
            "RELEASE st_job"
        } else {
            "ROLLBACK TO st_job; RELEASE st_job"
        };
        self.conn
            .execute_batch(end)
            .map_err(|e| sql_error("savepoint", e))?;
        r
    }

    fn add_bytes(&self, n: usize) {
        self.stats.bytes.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub(super) fn insert(&self, r: &SessionRecord, replace: bool) -> Result<()> {
        let data = serde_json::to_vec(&r.data).map_err(|e| Error::store("sqlite: data", e))?;
        let applied =
            serde_json::to_string(&r.applied).map_err(|e| Error::store("sqlite: applied", e))?;
        let id = &r.id.as_bytes()[..];
        if replace {
            let stored: Option<i64> = self
                .conn
                .prepare_cached("SELECT version FROM st_sessions WHERE id = ?1")
                .and_then(|mut s| s.query_row(params![id], |row| row.get(0)).optional())
                .map_err(|e| sql_error("reading a version", e))?;
            if let Some(v) = stored.map(u).filter(|v| *v > r.version) {
                return Err(Error::conflict(format!(
                    "save of version {} refused: the store holds version {v}",
                    r.version
                )));
            }
        }
        let verb = if replace {
            "INSERT OR REPLACE"
        } else {
            "INSERT"
        };
        let c = &self.conn;
        c.prepare_cached(&format!(
            "{verb} INTO st_sessions (id, template, version, seq, generation, epoch, created_ms,
             last_access_ms, expires_ms, applied, snap_version, snap_bytes, log_bytes)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?3, ?11, 0)"
        ))
        .and_then(|mut s| {
            s.execute(params![
                id,
                &*r.template,
                i(r.version),
                i(r.seq),
                r.generation,
                i(r.epoch),
                i(r.created_ms),
                i(r.last_access_ms),
                i(r.expires_ms),
                applied,
                data.len() as i64,
            ])
        })
        .map_err(|e| match e {
            rusqlite::Error::SqliteFailure(f, _)
                if f.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                Error::new(ErrorKind::Store, "a session with this id already exists")
            }
            e => sql_error("writing a session", e),
        })?;
        c.prepare_cached("INSERT OR REPLACE INTO st_snapshots (id, data) VALUES (?1, ?2)")
            .and_then(|mut s| s.execute(params![id, data]))
            .map_err(|e| sql_error("writing a snapshot", e))?;
        c.prepare_cached("DELETE FROM st_deltas WHERE id = ?1")
            .and_then(|mut s| s.execute(params![id]))
            .map_err(|e| sql_error("dropping deltas", e))?;
        c.prepare_cached("DELETE FROM st_frames WHERE id = ?1 AND seq > ?2")
            .and_then(|mut s| s.execute(params![id, i(r.seq)]))
            .map_err(|e| sql_error("dropping frames", e))?;
        self.add_bytes(data.len() + applied.len() + r.template.len() + 16 + 80);
        Ok(())
    }

    pub(super) fn append(
        &self,
        r: &SessionRecord,
        delta: &[u8],
        frame: Option<&str>,
    ) -> Result<()> {
        let id = &r.id.as_bytes()[..];
        let c = &self.conn;
        let applied =
            serde_json::to_string(&r.applied).map_err(|e| Error::store("sqlite: applied", e))?;
        let base = r.version.checked_sub(1);
        // The compare-and-set, returning where the log stands.
        let updated: Option<(i64, i64, i64)> = match base {
            None => None,
            Some(base) => c
                .prepare_cached(
                    "UPDATE st_sessions SET version = ?1, seq = ?2, generation = ?3, epoch = ?4,
                     last_access_ms = ?5, expires_ms = ?6, applied = ?7,
                     log_bytes = log_bytes + ?8
                     WHERE id = ?9 AND version = ?10
                     RETURNING snap_version, snap_bytes, log_bytes",
                )
                .and_then(|mut s| {
                    s.query_row(
                        params![
                            i(r.version),
                            i(r.seq),
                            r.generation,
                            i(r.epoch),
                            i(r.last_access_ms),
                            i(r.expires_ms),
                            applied,
                            delta.len() as i64,
                            id,
                            i(base),
                        ],
                        |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
                    )
                    .optional()
                })
                .map_err(|e| sql_error("appending", e))?,
        };
        let Some((snap_version, snap_bytes, log_bytes)) = updated else {
            let stored: Option<i64> = c
                .prepare_cached("SELECT version FROM st_sessions WHERE id = ?1")
                .and_then(|mut s| s.query_row(params![id], |row| row.get(0)).optional())
                .map_err(|e| sql_error("reading a version", e))?;
            Append::new(r, &Delta::default()).check(stored.map(u))?;
            return Err(Error::conflict("append refused"));
        };
        self.add_bytes(applied.len() + 64);
        let deltas = r.version - u(snap_version);
        let (k, b) = (self.opts.snapshot_deltas, self.opts.snapshot_bytes);
        let limit = if b > 0 { b } else { u(snap_bytes).max(4096) };
        if (k > 0 && deltas >= k) || u(log_bytes) >= limit {
            let data = serde_json::to_vec(&r.data).map_err(|e| Error::store("sqlite: data", e))?;
            c.prepare_cached("UPDATE st_snapshots SET data = ?2 WHERE id = ?1")
                .and_then(|mut s| s.execute(params![id, data]))
                .map_err(|e| sql_error("writing a snapshot", e))?;
            c.prepare_cached(
                "UPDATE st_sessions SET snap_version = version, snap_bytes = ?2, log_bytes = 0
                 WHERE id = ?1",
            )
            .and_then(|mut s| s.execute(params![id, data.len() as i64]))
            .map_err(|e| sql_error("writing a snapshot", e))?;
            c.prepare_cached("DELETE FROM st_deltas WHERE id = ?1")
                .and_then(|mut s| s.execute(params![id]))
                .map_err(|e| sql_error("dropping deltas", e))?;
            self.stats.snapshots.fetch_add(1, Ordering::Relaxed);
            self.add_bytes(data.len());
        } else {
            c.prepare_cached("INSERT INTO st_deltas (id, version, delta) VALUES (?1, ?2, ?3)")
                .and_then(|mut s| s.execute(params![id, i(r.version), delta]))
                .map_err(|e| sql_error("writing a delta", e))?;
            self.add_bytes(delta.len() + 24);
        }
        if let (Some(f), n) = (frame, self.opts.frames_kept) {
            if n > 0 {
                c.prepare_cached(
                    "INSERT OR REPLACE INTO st_frames (id, seq, frame) VALUES (?1, ?2, ?3)",
                )
                .and_then(|mut s| s.execute(params![id, i(r.seq), f]))
                .map_err(|e| sql_error("writing a frame", e))?;
                c.prepare_cached("DELETE FROM st_frames WHERE id = ?1 AND seq <= ?2")
                    .and_then(|mut s| s.execute(params![id, i(r.seq.saturating_sub(n))]))
                    .map_err(|e| sql_error("dropping old frames", e))?;
                self.add_bytes(f.len() + 24);
            }
        }
        self.stats.appends.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    pub(super) fn log(&self, id: &SessionId) -> Result<Option<SessionLog>> {
        let key = &id.as_bytes()[..];
        let c = &self.conn;
        let head: Option<i64> = c
            .prepare_cached("SELECT snap_version FROM st_sessions WHERE id = ?1")
            .and_then(|mut s| s.query_row(params![key], |row| row.get(0)).optional())
            .map_err(|e| sql_error("reading a session", e))?;
        let Some(snap_version) = head else {
            return Ok(None);
        };
        let raw: Vec<u8> = c
            .prepare_cached("SELECT data FROM st_snapshots WHERE id = ?1")
            .and_then(|mut s| s.query_row(params![key], |row| row.get(0)))
            .map_err(|e| sql_error("reading a snapshot", e))?;
        let snapshot: Value = serde_json::from_slice(&raw).map_err(|e| {
            Error::store(
                format!("sqlite: session {id}: the snapshot is not valid JSON"),
                e,
            )
        })?;
        let mut deltas = Vec::new();
        let mut s = c
            .prepare_cached(
                "SELECT version, delta FROM st_deltas WHERE id = ?1 AND version > ?2
                 ORDER BY version",
            )
            .map_err(|e| sql_error("reading deltas", e))?;
        let rows = s
            .query_map(params![key, snap_version], |row| {
                Ok((row.get::<_, i64>(0)?, row.get::<_, Vec<u8>>(1)?))
            })
            .map_err(|e| sql_error("reading deltas", e))?;
        for row in rows {
            let (v, raw) = row.map_err(|e| sql_error("reading deltas", e))?;
            let d: Delta = serde_json::from_slice(&raw).map_err(|e| {
                Error::store(format!("sqlite: session {id}: delta {v} is not valid"), e)
            })?;
            deltas.push((u(v), d));
        }
        Ok(Some(SessionLog {
            snapshot_version: u(snap_version),
            snapshot,
            deltas,
        }))
    }

    pub(super) fn load(&self, id: &SessionId) -> Result<Option<SessionRecord>> {
        let key = &id.as_bytes()[..];
        let row = self
            .conn
            .prepare_cached(
                "SELECT template, version, seq, generation, epoch, created_ms, last_access_ms,
                 expires_ms, applied FROM st_sessions WHERE id = ?1",
            )
            .and_then(|mut s| {
                s.query_row(params![key], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, i64>(2)?,
                        r.get::<_, u32>(3)?,
                        r.get::<_, i64>(4)?,
                        r.get::<_, i64>(5)?,
                        r.get::<_, i64>(6)?,
                        r.get::<_, i64>(7)?,
                        r.get::<_, String>(8)?,
                    ))
                })
                .optional()
            })
            .map_err(|e| sql_error("reading a session", e))?;
        let Some((template, version, seq, generation, epoch, created, last, expires, applied)) =
            row
        else {
            return Ok(None);
        };
        let log = self
            .log(id)?
            .ok_or_else(|| Error::new(ErrorKind::Store, "sqlite: a session vanished while read"))?;
        let last_version = log.deltas.last().map_or(log.snapshot_version, |d| d.0);
        if last_version != u(version) {
            return Err(Error::new(
                ErrorKind::Store,
                format!(
                    "sqlite: session {id}: its log ends at version {last_version}, its record says {version}"
                ),
            ));
        }
        let data = log.replay()?;
        let applied = serde_json::from_str(&applied)
            .map_err(|e| Error::store(format!("sqlite: session {id}: applied events"), e))?;
        Ok(Some(SessionRecord {
            id: *id,
            template: template.into(),
            data,
            seq: u(seq),
            version: u(version),
            generation,
            created_ms: u(created),
            last_access_ms: u(last),
            expires_ms: u(expires),
            epoch: u(epoch),
            applied,
        }))
    }

    pub(super) fn touch(
        &self,
        id: &SessionId,
        last_access_ms: u64,
        expires_ms: u64,
    ) -> Result<bool> {
        self.conn
            .prepare_cached(
                "UPDATE st_sessions SET last_access_ms = ?2, expires_ms = ?3 WHERE id = ?1",
            )
            .and_then(|mut s| {
                s.execute(params![
                    &id.as_bytes()[..],
                    i(last_access_ms),
                    i(expires_ms)
                ])
            })
            .map(|n| n > 0)
            .map_err(|e| sql_error("touching a session", e))
    }

    pub(super) fn delete(&self, id: &SessionId) -> Result<bool> {
        let key = &id.as_bytes()[..];
        let mut n = 0;
        for sql in [
            "DELETE FROM st_sessions WHERE id = ?1",
            "DELETE FROM st_snapshots WHERE id = ?1",
            "DELETE FROM st_deltas WHERE id = ?1",
            "DELETE FROM st_frames WHERE id = ?1",
        ] {
            let k = self
                .conn
                .prepare_cached(sql)
                .and_then(|mut s| s.execute(params![key]))
                .map_err(|e| sql_error("deleting a session", e))?;
            if n == 0 {
                n = k;
            }
        }
        Ok(n > 0)
    }

    pub(super) fn list_expired(&self, now_ms: u64, limit: usize) -> Result<Vec<SessionId>> {
        let mut s = self
            .conn
            .prepare_cached(
                "SELECT id FROM st_sessions WHERE expires_ms <= ?1
                 ORDER BY expires_ms LIMIT ?2",
            )
            .map_err(|e| sql_error("listing expired sessions", e))?;
        let rows = s
            .query_map(
                params![i(now_ms), limit.min(i64::MAX as usize) as i64],
                |r| r.get::<_, Vec<u8>>(0),
            )
            .map_err(|e| sql_error("listing expired sessions", e))?;
        let mut out = Vec::new();
        for row in rows {
            let raw = row.map_err(|e| sql_error("listing expired sessions", e))?;
            let b: [u8; 16] = raw.as_slice().try_into().map_err(|_| {
                Error::new(ErrorKind::Store, "sqlite: a session id is not 16 bytes")
            })?;
            out.push(SessionId::from_bytes(b));
        }
        Ok(out)
    }

    pub(super) fn count(&self) -> Result<usize> {
        self.conn
            .query_row("SELECT count(*) FROM st_sessions", [], |r| {
                r.get::<_, i64>(0)
            })
            .map(|n| n as usize)
            .map_err(|e| sql_error("counting sessions", e))
    }

    pub(super) fn frames(&self, id: &SessionId, after_seq: u64) -> Result<Vec<(u64, String)>> {
        let mut s = self
            .conn
            .prepare_cached(
                "SELECT seq, frame FROM st_frames WHERE id = ?1 AND seq > ?2 ORDER BY seq",
            )
            .map_err(|e| sql_error("reading frames", e))?;
        let rows = s
            .query_map(params![&id.as_bytes()[..], i(after_seq)], |r| {
                Ok((u(r.get::<_, i64>(0)?), r.get::<_, String>(1)?))
            })
            .map_err(|e| sql_error("reading frames", e))?;
        rows.collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| sql_error("reading frames", e))
    }
}
