//! A socket's session served by another instance ([`Follower`]): what the
//! transport needs to catch a client up, stream it the owner's frames and
//! forward its events, without owning the session here.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::Session;
use super::engine::EngineInner;
use super::handle::stored_run;
use crate::cluster::{Feed, FeedItem, Joined, Link, Op};
use crate::id::SessionId;
use crate::{Error, ErrorKind, Result};

/// A session as [`StateTemplate::attach`](super::StateTemplate) found it:
/// live here, or owned by another instance.
pub(crate) enum Attached {
    Local(Session),
    Remote(Follower),
}

/// What a client is sent to catch up: the epoch for its hello, the frames
/// in order (the kept frames it missed, or one join frame), and the seq
/// they bring it to.
pub(crate) struct Start {
    pub(crate) epoch: String,
    pub(crate) frames: Vec<String>,
    pub(crate) seq: u64,
    /// The frames are a join (the client drops what it held).
    pub(crate) joined: bool,
}

/// One socket's view of a session another instance owns.
pub(crate) struct Follower {
    engine: Arc<EngineInner>,
    link: Arc<dyn Link>,
    id: SessionId,
    owner: Mutex<String>,
    generation: u32,
    /// The page epoch clients see (the record's, mixed with the layout).
    epoch: String,
    stored_expiry: AtomicU64,
    /// The groups counted in this instance's presence for this socket.
    groups: Mutex<Vec<String>>,
}

impl Follower {
    pub(super) fn new(
        engine: Arc<EngineInner>,
        link: Arc<dyn Link>,
        id: SessionId,
        owner: String,
        generation: u32,
        epoch: String,
        stored_expiry: u64,
    ) -> Follower {
        Follower {
            engine,
            link,
            id,
            owner: Mutex::new(owner),
            generation,
            epoch,
            stored_expiry: AtomicU64::new(stored_expiry),
            groups: Mutex::default(),
        }
    }

    /// The session's id.
    pub(crate) fn id(&self) -> SessionId {
        self.id
    }

    /// The instance that owns the session (as last seen).
    pub(crate) fn owner(&self) -> String {
        self.owner.lock().expect("lock").clone()
    }

    /// A fresh token for the session.
    pub(crate) fn token(&self) -> Result<String> {
        let e = &self.engine;
        e.mint(self.id, self.generation, e.clock.now_ms())
    }

    /// Subscribes to the owner's frames, then works out what a client that
    /// holds `seq` of `epoch` (both `None`: nothing) needs.
    pub(crate) async fn start(&self, held: Option<(u64, &str)>) -> Result<(Start, Feed)> {
        let feed = self.link.follow(&self.id).await?;
        let start = match held {
            Some((seq, epoch)) if epoch == self.epoch => self.catch_up(seq).await?,
            _ => self.join().await?,
        };
        Ok((start, feed))
    }

    /// What a client at `seq` missed: the kept frames up to the store's
    /// seq when they run complete, else a join.
    pub(crate) async fn catch_up(&self, seq: u64) -> Result<Start> {
        let now = self
            .link
            .seq(&self.id)
            .await?
            .ok_or_else(|| Error::new(ErrorKind::SessionClosed, "the session is gone"))?;
        if seq <= now {
            if let Some(run) = stored_run(&*self.engine.store, &self.id, seq, now).await {
                return Ok(Start {
                    epoch: self.epoch.clone(),
                    frames: run.iter().map(|f| f.frame().to_owned()).collect(),
                    seq: now,
                    joined: false,
                });
            }
        }
        self.join().await
    }

    /// The whole page, from the owner.
    pub(crate) async fn join(&self) -> Result<Start> {
        let v = self.call(&Op::Join).await?;
        let j: Joined = serde_json::from_value(v)
            .map_err(|e| Error::new(ErrorKind::Store, format!("cluster: a join answer: {e}")))?;
        self.count_groups(j.groups);
        Ok(Start {
            epoch: j.epoch,
            frames: vec![j.frame],
            seq: j.seq,
            joined: true,
        })
    }

    /// Forwards a client frame (an event) of client instance `c` to the
    /// owner; the reply the socket sends.
    pub(crate) async fn event(&self, c: Option<u64>, text: &str) -> Result<Option<String>> {
        let v = self
            .call(&Op::Event {
                c,
                t: text.to_owned(),
            })
            .await?;
        Ok(v.as_str().map(str::to_owned))
    }

    /// Calls the owner; when it no longer holds the session, asks who does
    /// and tries once more. An error means the socket should reconnect
    /// (the owner is gone, or the session is now this instance's).
    async fn call(&self, op: &Op) -> Result<serde_json::Value> {
        for _ in 0..2 {
            let owner = self.owner();
            match self.link.call(&owner, &self.id, op).await {
                Ok(v) => return Ok(v),
                Err(e) if e.kind() == ErrorKind::Conflict => {
                    match self.link.owner(&self.id).await? {
                        Some(o) if o != owner && o != self.link.instance() => {
                            *self.owner.lock().expect("lock") = o;
                        }
                        _ => return Err(moved()),
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Err(moved())
    }

    /// Whether the owner still beats.
    pub(crate) async fn owner_alive(&self) -> bool {
        self.link.alive(&self.owner()).await
    }

    /// Client activity: the store's expiry moves (written when it lags by
    /// 1/64 of the expiration, as for a live session).
    pub(crate) async fn touch(&self) -> Result<()> {
        let e = &self.engine;
        let now = e.clock.now_ms();
        let timeout = e.config.expiration.as_millis() as u64;
        let exp = now + timeout;
        if exp.saturating_sub(self.stored_expiry.load(Ordering::Relaxed))
            >= (timeout / 64).max(1000)
        {
            e.store.touch(&self.id, now, exp).await?;
            self.stored_expiry.store(exp, Ordering::Relaxed);
        }
        Ok(())
    }

    fn count_groups(&self, groups: Vec<String>) {
        let mut mine = self.groups.lock().expect("lock");
        let mut all = self.engine.followed_groups.lock().expect("lock");
        for g in mine.drain(..) {
            if let Some(n) = all.get_mut(&g) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    all.remove(&g);
                }
            }
        }
        for g in &groups {
            *all.entry(g.clone()).or_default() += 1;
        }
        *mine = groups;
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.count_groups(Vec::new());
    }
}

/// The error a follower's call gives when the socket should reconnect.
pub(crate) fn moved() -> Error {
    Error::new(
        ErrorKind::SessionClosed,
        "the session moved: reconnect to reach it",
    )
}

/// Whether a feed item continues a client at `seq` directly (`Some(frame)`),
/// is old (`None`), or shows a gap (`Err`: catch up from the store).
pub(crate) fn next_frame(
    item: &FeedItem,
    seq: u64,
) -> std::result::Result<Option<(u64, Arc<str>)>, ()> {
    match item {
        FeedItem::Frame(q, f) if *q == seq + 1 => Ok(Some((*q, f.clone()))),
        FeedItem::Frame(q, _) if *q <= seq => Ok(None),
        FeedItem::Push(_) => Ok(None),
        _ => Err(()),
    }
}
