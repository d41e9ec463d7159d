//! Where sessions are kept: the [`SessionStore`] trait, its record, and the
//! default [`MemoryStore`].
//!
//! The engine keeps each live session's rendered page in memory and writes
//! a [`SessionRecord`] to the store on creation and after every render, so a
//! store that persists (SQLite, Redis) can bring a session back after a
//! restart or on another instance: [`StateTemplate::get_session`] loads the
//! record and re-renders the page when the session is not live here.
//!
//! [`StateTemplate::get_session`]: crate::StateTemplate::get_session

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use minijinja::Value;
use serde::{Deserialize, Serialize};

use crate::Result;
use crate::session::SessionId;

pub mod conformance;
mod memory;

pub use memory::MemoryStore;

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
    /// Token generation: tokens minted for an older generation are refused.
    pub generation: u32,
    /// When the session was created.
    pub created_ms: u64,
    /// When the session last saw activity (a render, a client frame).
    pub last_access_ms: u64,
    /// When the session expires unless there is activity before.
    pub expires_ms: u64,
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

    /// Stores `record`, replacing any record with its id.
    async fn save(&self, record: &SessionRecord) -> Result<()>;

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
}

#[async_trait]
impl<T: SessionStore + ?Sized> SessionStore for Arc<T> {
    async fn create(&self, record: &SessionRecord) -> Result<()> {
        (**self).create(record).await
    }
    async fn save(&self, record: &SessionRecord) -> Result<()> {
        (**self).save(record).await
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
}
