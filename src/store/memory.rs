//! The default store: records in a concurrent hash map, in this process.

use std::sync::Arc;

use async_trait::async_trait;
use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use minijinja::Value;

use super::{Append, SessionRecord, SessionStore};
use crate::id::SessionId;
use crate::{Error, ErrorKind, Result};

/// Keeps records in memory (a sharded concurrent map). Nothing survives the
/// process; use it for development, tests and single-instance apps that
/// accept losing sessions on restart.
///
/// The record's data snapshot is shared with the live page (reference
/// counted), so keeping it here costs no copy of the data. For the same
/// reason [`SessionStore::append`] ignores the delta: the new record's data
/// already is the old data with the delta applied, and taking it costs a
/// reference count. The version check and the write happen under the map
/// shard's write lock, so racing appends cannot both succeed.
#[derive(Debug, Default)]
pub struct MemoryStore {
    records: DashMap<SessionId, Kept>,
}

/// A record as the map keeps it: without its id, which is the key.
#[derive(Debug, Clone)]
struct Kept {
    template: Arc<str>,
    data: Value,
    seq: u64,
    version: u64,
    created_ms: u64,
    last_access_ms: u64,
    expires_ms: u64,
    epoch: u64,
    applied: Box<[(u64, u64)]>,
    generation: u32,
}

impl Kept {
    fn of(r: &SessionRecord) -> Kept {
        Kept {
            template: r.template.clone(),
            data: r.data.clone(),
            seq: r.seq,
            version: r.version,
            created_ms: r.created_ms,
            last_access_ms: r.last_access_ms,
            expires_ms: r.expires_ms,
            epoch: r.epoch,
            applied: r.applied.as_slice().into(),
            generation: r.generation,
        }
    }

    fn record(&self, id: SessionId) -> SessionRecord {
        SessionRecord {
            id,
            template: self.template.clone(),
            data: self.data.clone(),
            seq: self.seq,
            version: self.version,
            generation: self.generation,
            created_ms: self.created_ms,
            last_access_ms: self.last_access_ms,
            expires_ms: self.expires_ms,
            epoch: self.epoch,
            applied: self.applied.to_vec(),
        }
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }
}

#[async_trait]
impl SessionStore for MemoryStore {
    async fn create(&self, record: &SessionRecord) -> Result<()> {
        match self.records.entry(record.id) {
            Entry::Occupied(_) => Err(Error::new(
                ErrorKind::Store,
                "a session with this id already exists",
            )),
            Entry::Vacant(v) => {
                v.insert(Kept::of(record));
                Ok(())
            }
        }
    }

    async fn save(&self, record: &SessionRecord) -> Result<()> {
        match self.records.entry(record.id) {
            Entry::Occupied(o) if o.get().version > record.version => {
                Err(Error::conflict(format!(
                    "save of version {} refused: the store holds version {}",
                    record.version,
                    o.get().version
                )))
            }
            Entry::Occupied(mut o) => {
                o.insert(Kept::of(record));
                Ok(())
            }
            Entry::Vacant(v) => {
                v.insert(Kept::of(record));
                Ok(())
            }
        }
    }

    async fn append(&self, change: Append<'_>) -> Result<()> {
        let next = change.record();
        match self.records.get_mut(&next.id) {
            Some(mut stored) => {
                change.check(Some(stored.version))?;
                *stored = Kept::of(next);
                Ok(())
            }
            None => change.check(None),
        }
    }

    async fn load(&self, id: &SessionId) -> Result<Option<SessionRecord>> {
        Ok(self.records.get(id).map(|r| r.record(*id)))
    }

    async fn touch(&self, id: &SessionId, last_access_ms: u64, expires_ms: u64) -> Result<bool> {
        Ok(match self.records.get_mut(id) {
            Some(mut r) => {
                r.last_access_ms = last_access_ms;
                r.expires_ms = expires_ms;
                true
            }
            None => false,
        })
    }

    async fn delete(&self, id: &SessionId) -> Result<bool> {
        Ok(self.records.remove(id).is_some())
    }

    async fn list_expired(&self, now_ms: u64, limit: usize) -> Result<Vec<SessionId>> {
        let mut out: Vec<(u64, SessionId)> = self
            .records
            .iter()
            .filter(|r| r.expires_ms <= now_ms)
            .map(|r| (r.expires_ms, *r.key()))
            .collect();
        out.sort_unstable();
        out.truncate(limit);
        Ok(out.into_iter().map(|(_, id)| id).collect())
    }

    async fn count(&self) -> Result<usize> {
        Ok(self.records.len())
    }
}
