//! [`SqliteStore`]: sessions in one SQLite file, as a snapshot plus a log
//! of deltas, with the recent frames for resume.
//!
//! One writer thread owns the connection; every call is a job on its queue,
//! so reads see every write made before them (in call order) and the async
//! side never blocks on SQLite. The file is in WAL mode.
//!
//! # Layout (schema 1)
//!
//! - `st_sessions`: one row per session with the record's small fields
//!   (version, seq, times, epoch, applied events) and where its log starts.
//!   Indexed by expiry, so [`SessionStore::list_expired`] reads the index.
//! - `st_snapshots`: the data of each session at its snapshot version, as
//!   JSON. A separate table, so an append does not rewrite it.
//! - `st_deltas`: the [`Delta`] of every version after the snapshot, as
//!   JSON. [`SessionStore::load`] applies them to the snapshot in order.
//! - `st_frames`: the newest wire frames of each session, for clients that
//!   reconnect after a restart ([`SessionStore::frames`]).
//!
//! An append writes the row's small fields, the delta and the frame, so the
//! bytes written follow the change. A new snapshot is taken (and the deltas
//! before it dropped) when the log since the last one reaches
//! [`SqliteOptions::snapshot_every_deltas`] deltas or
//! [`SqliteOptions::snapshot_every_bytes`] bytes (by default: as many bytes
//! as the snapshot itself, so snapshots cost at most as much as the deltas
//! they replace, and a load reads at most twice the snapshot).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use minijinja::Value;
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::oneshot;

use super::{Append, SessionRecord, SessionStore};
use crate::fragment::Delta;
use crate::id::SessionId;
use crate::{Error, ErrorKind, Result};

/// The schema this version writes and reads (`PRAGMA user_version`).
const SCHEMA: i64 = 1;

/// Jobs one transaction may hold.
const MAX_BATCH: usize = 512;

/// When an acknowledged change is on disk. A render (and the answer to the
/// event that made it) returns only after [`SessionStore::append`] returned,
/// so this decides what "acknowledged" means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Every change is its own transaction, synced to disk (`synchronous =
    /// FULL`) before the call returns. Survives a crash of the process and
    /// of the machine. The slowest: one sync per change.
    Full,
    /// Changes that arrive together share one transaction and one sync;
    /// each call returns once its transaction is synced. As durable as
    /// [`Durability::Full`]. While changes come from several writers at
    /// once, the writer waits up to `max_delay` for more before it commits,
    /// so they share the sync; a lone writer's change commits at once.
    Grouped {
        /// How long the writer waits for more changes before it commits.
        max_delay: Duration,
    },
    /// The call returns as soon as the change ran in the writer's open
    /// transaction (its version check included), before that transaction
    /// commits, which it does right after, with no sync (`synchronous =
    /// NORMAL`). A crash of the process loses the changes not yet committed
    /// (the last batch: at most a few milliseconds of renders); what was
    /// committed survives a process crash, and a power failure may lose
    /// the last commits. A failed commit is logged.
    Async,
}

/// How a [`SqliteStore`] writes. Build with [`SqliteOptions::default`] and
/// the setters.
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    durability: Durability,
    snapshot_deltas: u64,
    snapshot_bytes: u64,
    frames_kept: u64,
    check_on_open: bool,
    max_size: u64,
}

impl Default for SqliteOptions {
    /// Grouped commits within 2 ms, snapshots by size, 64 frames kept per
    /// session, an integrity check on open.
    fn default() -> SqliteOptions {
        SqliteOptions {
            durability: Durability::Grouped {
                max_delay: Duration::from_millis(2),
            },
            snapshot_deltas: 0,
            snapshot_bytes: 0,
            frames_kept: 64,
            check_on_open: true,
            max_size: 0,
        }
    }
}

impl SqliteOptions {
    /// When a change counts as written (see [`Durability`]).
    pub fn durability(mut self, d: Durability) -> SqliteOptions {
        self.durability = d;
        self
    }

    /// Takes a new snapshot once this many deltas were appended since the
    /// last one (0, the default: no limit by count).
    pub fn snapshot_every_deltas(mut self, k: u64) -> SqliteOptions {
        self.snapshot_deltas = k;
        self
    }

    /// Takes a new snapshot once the deltas since the last one hold this
    /// many bytes (0, the default: as many bytes as the snapshot, at least
    /// 4 KiB).
    pub fn snapshot_every_bytes(mut self, b: u64) -> SqliteOptions {
        self.snapshot_bytes = b;
        self
    }

    /// How many recent frames to keep per session for clients that
    /// reconnect after a restart (default 64, like the engine's
    /// `replay_frames`; 0 keeps none).
    pub fn frames_kept(mut self, n: u64) -> SqliteOptions {
        self.frames_kept = n;
        self
    }

    /// Caps the database file at about `bytes` (0, the default: no cap
    /// beyond the disk's). A change that would grow the file past it fails
    /// with a "database or disk is full" [`ErrorKind::Store`] error, like a
    /// full disk: the render is undone and the session goes on.
    pub fn max_size(mut self, bytes: u64) -> SqliteOptions {
        self.max_size = bytes;
        self
    }

    /// Whether [`SqliteStore::open_with`] runs SQLite's `quick_check` over
    /// the whole file, so a damaged file is refused at start rather than
    /// when some session is read (default true; its cost grows with the
    /// file: see `docs/benchmarks.md`).
    pub fn check_on_open(mut self, yes: bool) -> SqliteOptions {
        self.check_on_open = yes;
        self
    }
}

/// What a [`SqliteStore`] wrote since it was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SqliteStats {
    /// Appends written.
    pub appends: u64,
    /// Snapshots taken by appends (each replaces a session's deltas).
    pub snapshots: u64,
    /// Transactions committed.
    pub commits: u64,
    /// Bytes of payload handed to SQLite: deltas, frames, snapshots and the
    /// small fields of each row written (SQLite itself writes whole pages;
    /// `docs/benchmarks.md` measures the file growth too).
    pub bytes: u64,
}

/// One session's log as the store keeps it: the snapshot and the deltas
/// after it. [`SessionLog::replay`] rebuilds the session's data; that is
/// what [`SessionStore::load`] returns as the record's data.
#[derive(Debug, Clone)]
pub struct SessionLog {
    /// The version of the snapshot.
    pub snapshot_version: u64,
    /// The data at [`SessionLog::snapshot_version`].
    pub snapshot: Value,
    /// The deltas after the snapshot, as (version, delta), in order.
    pub deltas: Vec<(u64, Delta)>,
}

impl SessionLog {
    /// The data after every delta: the snapshot with each delta applied in
    /// version order. Fails if the versions have a gap or a delta does not
    /// apply (a damaged log).
    pub fn replay(&self) -> Result<Value> {
        let mut data = self.snapshot.clone();
        for (want, (v, d)) in (self.snapshot_version + 1..).zip(&self.deltas) {
            if *v != want {
                return Err(Error::new(
                    ErrorKind::Store,
                    format!("the session log has a gap: version {v} where {want} was expected"),
                ));
            }
            data = d.apply(&data).map_err(|e| {
                Error::new(
                    ErrorKind::Store,
                    format!("the session log's delta of version {v} does not apply: {e}"),
                )
            })?;
        }
        Ok(data)
    }
}

/// Sessions in an SQLite file: they survive a restart and a crash of the
/// process (and of the machine, in the synced [`Durability`] modes).
///
/// Each render appends its delta and its frame, not the whole data; see
/// the module docs of [`crate::store`] for the contract and this type's
/// source for the layout. A damaged file, a file of another schema version
/// or an unwritable location are refused by [`SqliteStore::open`] with an
/// error naming the file, and the file is left as it was.
///
/// ```no_run
/// # async fn f(env: minijinja::Environment<'static>) -> statetemplate::Result<()> {
/// use statetemplate::StateTemplate;
/// use statetemplate::store::SqliteStore;
/// let store = SqliteStore::open("sessions.db")?;
/// let engine = StateTemplate::builder(env).store(store).build()?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    durability: Durability,
    jobs: mpsc::Sender<Job>,
    stats: Arc<Counters>,
}

#[derive(Debug, Default)]
struct Counters {
    appends: AtomicU64,
    snapshots: AtomicU64,
    commits: AtomicU64,
    bytes: AtomicU64,
}

/// What the writer runs: one job in the open transaction; it returns what
/// to do once the transaction committed (or failed to).
type Job = Box<dyn FnOnce(&Writer) -> Done + Send>;
type Done = Box<dyn FnOnce(Result<()>) + Send>;

struct Writer {
    conn: Connection,
    opts: SqliteOptions,
    stats: Arc<Counters>,
}

fn sql_error(what: &str, e: rusqlite::Error) -> Error {
    Error::store(format!("sqlite: {what}: {e}"), e)
}

fn i(v: u64) -> i64 {
    v as i64
}

fn u(v: i64) -> u64 {
    v as u64
}

impl SqliteStore {
    /// Opens (or creates) the store in the file at `path` with the default
    /// [`SqliteOptions`].
    pub fn open(path: impl AsRef<Path>) -> Result<SqliteStore> {
        SqliteStore::open_with(path, SqliteOptions::default())
    }

    /// Opens (or creates) the store in the file at `path`. Fails, leaving
    /// the file as it is, when it is not an SQLite database, is damaged
    /// (with [`SqliteOptions::check_on_open`]), holds another schema version
    /// or tables of the same names not made by this store, or cannot be
    /// written.
    pub fn open_with(path: impl AsRef<Path>, opts: SqliteOptions) -> Result<SqliteStore> {
        let path = path.as_ref().to_path_buf();
        let shown = path.display().to_string();
        let err = |what: &str, e: rusqlite::Error| sql_error(&format!("{shown}: {what}"), e);
        let conn = Connection::open(&path).map_err(|e| err("cannot open", e))?;
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
                    format!(
                        "sqlite: {shown}: the file is damaged ({verdict}); it was left as it is"
                    ),
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
        let stats = Arc::new(Counters::default());
        let (jobs, rx) = mpsc::channel::<Job>();
        let writer = Writer {
            conn,
            opts: opts.clone(),
            stats: stats.clone(),
        };
        std::thread::Builder::new()
            .name("statetemplate-sqlite".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| Error::store("cannot start the SQLite writer thread", e))?;
        tracing::info!(path = %shown, "sqlite store open");
        Ok(SqliteStore {
            inner: Arc::new(Inner {
                path,
                durability: opts.durability,
                jobs,
                stats,
            }),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// What was written since the store was opened.
    pub fn stats(&self) -> SqliteStats {
        let c = &self.inner.stats;
        SqliteStats {
            appends: c.appends.load(Ordering::Relaxed),
            snapshots: c.snapshots.load(Ordering::Relaxed),
            commits: c.commits.load(Ordering::Relaxed),
            bytes: c.bytes.load(Ordering::Relaxed),
        }
    }

    /// Waits until every change handed to the store before is committed
    /// (useful with [`Durability::Async`]).
    pub async fn flush(&self) -> Result<()> {
        self.call(|_| Ok(())).await
    }

    /// The log of session `id`: its snapshot and the deltas after it (the
    /// event log; [`SessionLog::replay`] is the recovery).
    pub async fn log(&self, id: &SessionId) -> Result<Option<SessionLog>> {
        let id = *id;
        self.call(move |w| w.log(&id)).await
    }

    /// Runs `f` on the writer thread inside its transaction and returns its
    /// result once that transaction committed.
    async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Writer) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        self.send(Box::new(move |w: &Writer| {
            let r = w.step(f);
            Box::new(move |commit: Result<()>| {
                let _ = tx.send(commit.and(r));
            })
        }))?;
        rx.await
            .map_err(|_| Error::new(ErrorKind::Store, "sqlite: the writer thread stopped"))?
    }

    fn send(&self, job: Job) -> Result<()> {
        self.inner
            .jobs
            .send(job)
            .map_err(|_| Error::new(ErrorKind::Store, "sqlite: the writer thread stopped"))
    }
}

impl Writer {
    fn run(self, rx: mpsc::Receiver<Job>) {
        // Whether the last batch had company: only then is waiting for more
        // worth its delay (a lone writer commits at once).
        let mut busy = false;
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
                        let until = Instant::now() + max_delay;
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
            self.run_batch(batch);
        }
    }

    fn run_batch(&self, batch: Vec<Job>) {
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
    fn step<T>(&self, f: impl FnOnce(&Writer) -> Result<T>) -> Result<T> {
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

    fn insert(&self, r: &SessionRecord, replace: bool) -> Result<()> {
        let data = serde_json::to_vec(&r.data).map_err(|e| Error::store("sqlite: data", e))?;
        let applied =
            serde_json::to_string(&r.applied).map_err(|e| Error::store("sqlite: applied", e))?;
        let id = &r.id.as_bytes()[..];
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

    fn append(&self, r: &SessionRecord, delta: &[u8], frame: Option<&str>) -> Result<()> {
        let id = &r.id.as_bytes()[..];
        let c = &self.conn;
        let applied =
            serde_json::to_string(&r.applied).map_err(|e| Error::store("sqlite: applied", e))?;
        let base = r.version.checked_sub(1);
        let changed = match base {
            None => 0,
            Some(base) => c
                .prepare_cached(
                    "UPDATE st_sessions SET version = ?1, seq = ?2, generation = ?3, epoch = ?4,
                     last_access_ms = ?5, expires_ms = ?6, applied = ?7,
                     log_bytes = log_bytes + ?8
                     WHERE id = ?9 AND version = ?10",
                )
                .and_then(|mut s| {
                    s.execute(params![
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
                    ])
                })
                .map_err(|e| sql_error("appending", e))?,
        };
        if changed == 0 {
            let stored: Option<i64> = c
                .prepare_cached("SELECT version FROM st_sessions WHERE id = ?1")
                .and_then(|mut s| s.query_row(params![id], |row| row.get(0)).optional())
                .map_err(|e| sql_error("reading a version", e))?;
            Append::new(r, &Delta::default()).check(stored.map(u))?;
            return Err(Error::conflict("append refused"));
        }
        self.add_bytes(applied.len() + 64);
        let (snap_version, snap_bytes, log_bytes): (i64, i64, i64) = c
            .prepare_cached(
                "SELECT snap_version, snap_bytes, log_bytes FROM st_sessions WHERE id = ?1",
            )
            .and_then(|mut s| {
                s.query_row(params![id], |row| {
                    Ok((row.get(0)?, row.get(1)?, row.get(2)?))
                })
            })
            .map_err(|e| sql_error("reading the log state", e))?;
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

    fn log(&self, id: &SessionId) -> Result<Option<SessionLog>> {
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

    fn load(&self, id: &SessionId) -> Result<Option<SessionRecord>> {
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
}

#[async_trait]
impl SessionStore for SqliteStore {
    async fn create(&self, record: &SessionRecord) -> Result<()> {
        let r = record.clone();
        self.call(move |w| w.insert(&r, false)).await
    }

    async fn save(&self, record: &SessionRecord) -> Result<()> {
        let r = record.clone();
        self.call(move |w| w.insert(&r, true)).await
    }

    async fn append(&self, change: Append<'_>) -> Result<()> {
        let r = change.record().clone();
        let delta =
            serde_json::to_vec(change.delta()).map_err(|e| Error::store("sqlite: delta", e))?;
        let frame = change.frame().map(str::to_owned);
        if self.inner.durability == Durability::Async {
            // Answered as soon as the change ran in the open transaction
            // (its version check included), before the commit.
            let (tx, rx) = oneshot::channel();
            self.send(Box::new(move |w: &Writer| {
                let _ = tx.send(w.step(|w| w.append(&r, &delta, frame.as_deref())));
                let id = r.id;
                Box::new(move |commit: Result<()>| {
                    if let Err(e) = commit {
                        tracing::error!(sid = %id.short(), error = %e, "sqlite: an acknowledged asynchronous append was lost");
                    }
                })
            }))?;
            return rx
                .await
                .map_err(|_| Error::new(ErrorKind::Store, "sqlite: the writer thread stopped"))?;
        }
        self.call(move |w| w.append(&r, &delta, frame.as_deref()))
            .await
    }

    async fn load(&self, id: &SessionId) -> Result<Option<SessionRecord>> {
        let id = *id;
        self.call(move |w| w.load(&id)).await
    }

    async fn touch(&self, id: &SessionId, last_access_ms: u64, expires_ms: u64) -> Result<bool> {
        let id = *id;
        self.call(move |w| {
            w.conn
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
        })
        .await
    }

    async fn delete(&self, id: &SessionId) -> Result<bool> {
        let id = *id;
        self.call(move |w| {
            let key = &id.as_bytes()[..];
            let mut n = 0;
            for sql in [
                "DELETE FROM st_sessions WHERE id = ?1",
                "DELETE FROM st_snapshots WHERE id = ?1",
                "DELETE FROM st_deltas WHERE id = ?1",
                "DELETE FROM st_frames WHERE id = ?1",
            ] {
                let k = w
                    .conn
                    .prepare_cached(sql)
                    .and_then(|mut s| s.execute(params![key]))
                    .map_err(|e| sql_error("deleting a session", e))?;
                if n == 0 {
                    n = k;
                }
            }
            Ok(n > 0)
        })
        .await
    }

    async fn list_expired(&self, now_ms: u64, limit: usize) -> Result<Vec<SessionId>> {
        self.call(move |w| {
            let mut s = w
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
        })
        .await
    }

    async fn count(&self) -> Result<usize> {
        self.call(|w| {
            w.conn
                .query_row("SELECT count(*) FROM st_sessions", [], |r| {
                    r.get::<_, i64>(0)
                })
                .map(|n| n as usize)
                .map_err(|e| sql_error("counting sessions", e))
        })
        .await
    }

    async fn frames(&self, id: &SessionId, after_seq: u64) -> Result<Vec<(u64, String)>> {
        let id = *id;
        self.call(move |w| {
            let mut s = w
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
        })
        .await
    }
}

/// What the query planner does for `sql` (for tests).
#[cfg(test)]
fn plan(store_path: &Path, sql: &str) -> String {
    let c = Connection::open(store_path).expect("open");
    let mut s = c
        .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
        .expect("plan");
    let rows = s
        .query_map([], |r| r.get::<_, String>(3))
        .expect("plan rows");
    rows.map(|r| r.expect("row")).collect::<Vec<_>>().join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::conformance;

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "st-sqlite-{}-{name}-{}",
            std::process::id(),
            crate::id::SessionId::generate().expect("rng")
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir.join("sessions.db")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn passes_the_conformance_suite_in_every_durability_mode() {
        for (i, d) in [
            Durability::Full,
            Durability::Grouped {
                max_delay: Duration::from_millis(1),
            },
            Durability::Async,
        ]
        .into_iter()
        .enumerate()
        {
            let path = temp(&format!("conf{i}"));
            let store = SqliteStore::open_with(&path, SqliteOptions::default().durability(d))
                .expect("open");
            conformance::run(Arc::new(store)).await;
        }
    }

    #[tokio::test]
    async fn small_snapshot_limits_take_snapshots_and_keep_the_data() {
        let path = temp("snap");
        let store =
            SqliteStore::open_with(&path, SqliteOptions::default().snapshot_every_deltas(2))
                .expect("open");
        conformance::run(Arc::new(store.clone())).await;
        assert!(store.stats().snapshots > 0, "{:?}", store.stats());
    }

    #[test]
    fn expiry_listing_reads_the_index() {
        let path = temp("plan");
        drop(SqliteStore::open(&path).expect("open"));
        let p = plan(
            &path,
            "SELECT id FROM st_sessions WHERE expires_ms <= 5 ORDER BY expires_ms LIMIT 10",
        );
        assert!(p.contains("st_sessions_expiry"), "{p}");
        assert!(!p.contains("SCAN st_sessions"), "{p}");
    }
}
