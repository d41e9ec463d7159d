//! Where sessions are kept: the [`SessionStore`] trait, its record, and the
//! default [`MemoryStore`].
//!
//! The engine keeps each live session's rendered page in memory and writes
//! a [`SessionRecord`] to the store on creation ([`SessionStore::create`])
//! and after every render that changed the data ([`SessionStore::append`],
//! which hands over the render's [`Delta`] too), so a store that persists
//! (SQLite, Redis) can bring a session back after a restart or on another
//! instance: [`StateTemplate::get_session`] loads the record and re-renders
//! the page when the session is not live here.
//!
//! # Writing a store: the delta log
//!
//! Each render that changes a session's data calls
//! [`SessionStore::append`] with an [`Append`]: the record as it is after
//! the render, and the [`Delta`] that turns the data of the record the store
//! holds into the new data. A store may persist either:
//!
//! - **the whole record** (what the default implementation does: it loads
//!   the stored record, checks the version and calls [`SessionStore::save`]),
//!   simple but the bytes written per render grow with the data; or
//! - **the delta** (an event log): write the delta with the record's small
//!   fields (`version`, `seq`, `generation`, times), keep a snapshot, and
//!   rebuild on [`SessionStore::load`] by applying the deltas after the
//!   snapshot in version order ([`Delta::apply`]). Bytes written per render
//!   then follow the change. Take a new snapshot (from
//!   [`Append::record`]'s data) every K deltas and drop the deltas before it.
//!
//! Either way, what [`SessionStore::load`] returns after an append must be
//! [`Append::record`]: the data equal to the previous data with the delta
//! applied, and the other fields as given. The contract:
//!
//! - **Versions.** [`SessionRecord::version`] counts the data changes: 0 at
//!   [`create`](SessionStore::create), one more with each append. An append
//!   of version `v` applies only if the store holds the record at version
//!   `v - 1`; otherwise (a stale writer, a gap, a replay, a record that is
//!   gone) the store changes nothing and returns
//!   [`ErrorKind::Conflict`](crate::ErrorKind::Conflict). The check and the
//!   write are one atomic step for that id (compare-and-set: a SQL
//!   `UPDATE … WHERE id = ? AND version = ?`, a Redis script): two writers
//!   racing with the same version must not both succeed.
//! - **Order.** The engine has one writer per session: it hands a
//!   session's appends one at a time, in version order, the next only after
//!   the previous returned `Ok`. `seq` never goes down; it stays the same
//!   when a render changed data the page does not show (such a render
//!   sends no frame, but its delta is appended all the same).
//! - **Failure.** An error from `append` (any kind) undoes the render in
//!   the engine: the page goes back to its previous data and nothing is
//!   sent. So return `Ok` only once the change is as durable as the store
//!   promises.
//! - **Format.** A [`Delta`] is a list of operations (`set`, `unset`,
//!   `insert`, `remove`) by path, applied in order; it is `serde`
//!   serializable, as a JSON array such as
//!   `[{"op":"set","path":["rows",3,"done"],"value":true}]` (see [`Delta`]
//!   for the semantics of paths and positions). Values go through serde as
//!   plain data, as the record's `data` does.
//! - [`save`](SessionStore::save) replaces the whole record, unless the
//!   store holds a higher version (then
//!   [`ErrorKind::Conflict`](crate::ErrorKind::Conflict): a stale writer
//!   cannot overwrite a newer state); the engine calls it for changes that
//!   are not renders (a token revocation) with the current version. A log
//!   store may take it as a snapshot.
//!
//! [`StateTemplate::get_session`]: crate::StateTemplate::get_session

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use minijinja::Value;
use serde::{Deserialize, Serialize};

use crate::fragment::Delta;
use crate::id::SessionId;
use crate::{Error, Result};

pub mod conformance;
mod log;
mod memory;
#[cfg(feature = "redis")]
mod redis;
#[cfg(feature = "sqlite")]
mod sqlite;

#[cfg(feature = "redis")]
pub use self::redis::{RedisOptions, RedisStats, RedisStore};
pub use log::SessionLog;
pub use memory::MemoryStore;
#[cfg(feature = "sqlite")]
pub use sqlite::{Durability, SqliteOptions, SqliteStats, SqliteStore};

/// One session as a store keeps it. Serializable (times are unix
/// milliseconds), so any backend can write it as JSON or columns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionRecord {
    /// The session's id.
    pub id: SessionId,
    /// The template the session renders.
    pub template: Arc<str>,
    /// The data of the last render (the snapshot the next render is diffed
    /// against).
    pub data: Value,
    /// The sequence number of the last render that changed the page.
    pub seq: u64,
    /// How many data changes this record has seen: 0 when created, one more
    /// with each [`SessionStore::append`]. Stores compare it to refuse stale
    /// or out-of-order writes (see the module docs). Records written before
    /// versions existed read as 0.
    #[serde(default)]
    pub version: u64,
    /// Token generation: tokens minted for an older generation are refused.
    pub generation: u32,
    /// When the session was created.
    pub created_ms: u64,
    /// When the session last saw activity (a render, a client frame).
    pub last_access_ms: u64,
    /// When the session expires unless there is activity before.
    pub expires_ms: u64,
    /// Names this session's history: set once when the session is created
    /// and kept by the store, so a client that reconnects after a restart
    /// can tell that the session it held is the one the store brought back
    /// (its kept frames still apply). A store that loses a session's history
    /// loses the record with it; a new record gets a new epoch. Records
    /// written before epochs existed read as 0 (the engine then picks one).
    #[serde(default)]
    pub epoch: u64,
    /// The client events already applied to this session: for each client
    /// instance that numbers its events (the most recent few), the highest
    /// event number applied. Kept with the data it produced, so an event a
    /// client resends after a restart is not applied twice.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub applied: Vec<(u64, u64)>,
}

/// One render's change to a session's record, as the engine hands it to
/// [`SessionStore::append`]: the record after the render and the delta from
/// the stored record's data to the new data. See the module docs for the
/// contract.
#[derive(Debug, Clone, Copy)]
pub struct Append<'a> {
    record: &'a SessionRecord,
    delta: &'a Delta,
    frame: Option<&'a str>,
}

impl<'a> Append<'a> {
    /// A change: `record` at version `n + 1` and the delta that turns the
    /// data of version `n` into `record.data`.
    pub fn new(record: &'a SessionRecord, delta: &'a Delta) -> Append<'a> {
        Append {
            record,
            delta,
            frame: None,
        }
    }

    /// The same change with the wire frame the render sends as
    /// `record.seq` (a render that changed the page). A store that keeps
    /// frames ([`SessionStore::frames`]) stores it with the change, so a
    /// client that reconnects after a restart gets the frames it missed.
    pub fn with_frame(self, frame: &'a str) -> Append<'a> {
        Append {
            frame: Some(frame),
            ..self
        }
    }

    /// The frame sent as [`SessionRecord::seq`] of [`Append::record`], when
    /// the render changed the page (`None`: it changed only data the page
    /// does not show, and no frame is sent).
    pub fn frame(&self) -> Option<&'a str> {
        self.frame
    }

    /// The record as it is after the render (its `data` is the new
    /// snapshot, its `version` one more than the stored record's).
    pub fn record(&self) -> &'a SessionRecord {
        self.record
    }

    /// What the render changed: applied to the stored record's data, it
    /// gives [`Append::record`]'s data.
    pub fn delta(&self) -> &'a Delta {
        self.delta
    }

    /// The version the stored record must have for this append to apply.
    pub fn base_version(&self) -> Option<u64> {
        self.record.version.checked_sub(1)
    }

    /// Checks the compare-and-set condition against the version of the
    /// record the store holds for this id (`None`: no record): `Ok` if it is
    /// [`Append::base_version`], else an
    /// [`ErrorKind::Conflict`](crate::ErrorKind::Conflict) error.
    pub fn check(&self, stored_version: Option<u64>) -> Result<()> {
        match (stored_version, self.base_version()) {
            (Some(v), Some(base)) if v == base => Ok(()),
            (None, _) => Err(Error::conflict(
                "no record to append to (deleted or never created)",
            )),
            (Some(v), _) => Err(Error::conflict(format!(
                "append of version {} refused: the store holds version {v}",
                self.record.version
            ))),
        }
    }
}

/// Storage for session records, in the shape of tower-sessions' store:
/// async and object safe, so the engine holds an `Arc<dyn SessionStore>`.
///
/// Implementations must be safe to call from many tasks at once. Every
/// method returns [`ErrorKind::Store`](crate::ErrorKind::Store) on a backend
/// failure. Run [`conformance::run`] in your store's tests.
#[async_trait]
pub trait SessionStore: fmt::Debug + Send + Sync + 'static {
    /// Stores a new record. Fails if a record with this id exists.
    async fn create(&self, record: &SessionRecord) -> Result<()>;

    /// Stores `record`, replacing any record with its id, unless the stored
    /// record has a higher version (a stale writer: refused with
    /// [`ErrorKind::Conflict`](crate::ErrorKind::Conflict), nothing
    /// changed). The check and the write are one atomic step for that id.
    async fn save(&self, record: &SessionRecord) -> Result<()>;

    /// Records one render's change: the record at version `n + 1` and the
    /// delta from version `n`'s data (see [`Append`] and the module docs for
    /// the contract: compare-and-set on the version, atomic; in order;
    /// [`ErrorKind::Conflict`](crate::ErrorKind::Conflict) when the stored
    /// record is not at version `n`).
    ///
    /// The default loads the stored record, checks its version and
    /// [`save`](SessionStore::save)s the whole new record, ignoring the
    /// delta: correct with one writer per session (what one engine
    /// guarantees), but the check and the write are two steps, and each
    /// render costs a load and a full write. A store shared by several
    /// processes must override it with an atomic compare-and-set (the
    /// conformance suite races appends to check it); a store that logs
    /// deltas overrides it anyway.
    async fn append(&self, change: Append<'_>) -> Result<()> {
        let stored = self.load(&change.record().id).await?;
        change.check(stored.map(|r| r.version))?;
        self.save(change.record()).await
    }

    /// The record with this id, if any (expired records included until
    /// they are deleted; the engine checks `expires_ms`).
    async fn load(&self, id: &SessionId) -> Result<Option<SessionRecord>>;

    /// Records activity: sets `last_access_ms` and `expires_ms`. Returns
    /// whether the record exists.
    async fn touch(&self, id: &SessionId, last_access_ms: u64, expires_ms: u64) -> Result<bool>;

    /// Deletes the record. Returns whether it existed.
    async fn delete(&self, id: &SessionId) -> Result<bool>;

    /// Ids of up to `limit` records with `expires_ms <= now_ms` (the seed's
    /// `GetExpired`), oldest expiry first.
    async fn list_expired(&self, now_ms: u64, limit: usize) -> Result<Vec<SessionId>>;

    /// How many records the store holds.
    async fn count(&self) -> Result<usize>;

    /// The frames kept for session `id` with a seq above `after_seq`, in
    /// seq order, as `(seq, frame)`: what a client that reconnects holding
    /// the page at `after_seq` missed, when the session is not live in this
    /// process (a restart). A store that keeps the frames handed to it by
    /// [`Append::frame`] returns the newest it kept (a run may start above
    /// `after_seq + 1` when older ones were dropped: the engine then sends a
    /// resync). The default keeps none and returns an empty list.
    async fn frames(&self, id: &SessionId, after_seq: u64) -> Result<Vec<(u64, String)>> {
        let _ = (id, after_seq);
        Ok(Vec::new())
    }
}

#[async_trait]
impl<T: SessionStore + ?Sized> SessionStore for Arc<T> {
    async fn create(&self, record: &SessionRecord) -> Result<()> {
        (**self).create(record).await
    }
    async fn save(&self, record: &SessionRecord) -> Result<()> {
        (**self).save(record).await
    }
    async fn append(&self, change: Append<'_>) -> Result<()> {
        (**self).append(change).await
    }
    async fn load(&self, id: &SessionId) -> Result<Option<SessionRecord>> {
        (**self).load(id).await
    }
    async fn touch(&self, id: &SessionId, last_access_ms: u64, expires_ms: u64) -> Result<bool> {
        (**self).touch(id, last_access_ms, expires_ms).await
    }
    async fn delete(&self, id: &SessionId) -> Result<bool> {
        (**self).delete(id).await
    }
    async fn list_expired(&self, now_ms: u64, limit: usize) -> Result<Vec<SessionId>> {
        (**self).list_expired(now_ms, limit).await
    }
    async fn count(&self) -> Result<usize> {
        (**self).count().await
    }
    async fn frames(&self, id: &SessionId, after_seq: u64) -> Result<Vec<(u64, String)>> {
        (**self).frames(id, after_seq).await
    }
}
