//! A store whose saves can be made to fail (shared by the session tests).
#![allow(dead_code, unreachable_pub)]

use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use statetemplate::store::{MemoryStore, SessionRecord, SessionStore};
use statetemplate::{Result, SessionId};

/// A store whose saves can be made to fail.
#[derive(Debug, Default)]
pub struct FlakyStore {
    pub inner: MemoryStore,
    /// Set: every save fails.
    pub fail: AtomicBool,
}

#[async_trait]
impl SessionStore for FlakyStore {
    async fn create(&self, r: &SessionRecord) -> Result<()> {
        self.inner.create(r).await
    }
    async fn save(&self, r: &SessionRecord) -> Result<()> {
        if self.fail.load(Ordering::SeqCst) {
            return Err(statetemplate::Error::store(
                "disk full",
                std::io::Error::other("disk full"),
            ));
        }
        self.inner.save(r).await
    }
    async fn load(&self, id: &SessionId) -> Result<Option<SessionRecord>> {
        self.inner.load(id).await
    }
    async fn touch(&self, id: &SessionId, a: u64, e: u64) -> Result<bool> {
        self.inner.touch(id, a, e).await
    }
    async fn delete(&self, id: &SessionId) -> Result<bool> {
        self.inner.delete(id).await
    }
    async fn list_expired(&self, now: u64, limit: usize) -> Result<Vec<SessionId>> {
        self.inner.list_expired(now, limit).await
    }
    async fn count(&self) -> Result<usize> {
        self.inner.count().await
    }
}
