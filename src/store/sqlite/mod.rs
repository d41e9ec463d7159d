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
use std::sync::atomic::Ordering;
use std::sync::mpsc;

use async_trait::async_trait;
use tokio::sync::oneshot;

use super::{Append, SessionLog, SessionRecord, SessionStore};
use crate::id::SessionId;
use crate::{Error, ErrorKind, Result};

mod options;
mod writer;

pub use options::{Durability, SqliteOptions, SqliteStats};
use writer::{Counters, Job, Writer};

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
        let conn = writer::open_connection(&path, &opts)?;
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
        tracing::info!(path = %path.display(), "sqlite store open");
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
        self.call(move |w| w.touch(&id, last_access_ms, expires_ms))
            .await
    }

    async fn delete(&self, id: &SessionId) -> Result<bool> {
        let id = *id;
        self.call(move |w| w.delete(&id)).await
    }

    async fn list_expired(&self, now_ms: u64, limit: usize) -> Result<Vec<SessionId>> {
        self.call(move |w| w.list_expired(now_ms, limit)).await
    }

    async fn count(&self) -> Result<usize> {
        self.call(|w| w.count()).await
    }

    async fn frames(&self, id: &SessionId, after_seq: u64) -> Result<Vec<(u64, String)>> {
        let id = *id;
        self.call(move |w| w.frames(&id, after_seq)).await
    }
}

/// What the query planner does for `sql` (for tests).
#[cfg(test)]
fn plan(store_path: &Path, sql: &str) -> String {
    let c = rusqlite::Connection::open(store_path).expect("open");
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
    use std::time::Duration;

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
