//! Several instances of one app sharing sessions: [`Cluster`].
//!
//! With one instance, a session lives in that process and its frames go
//! straight to its sockets. Behind a load balancer, a browser's tabs (and
//! its reconnects) may land on any instance; a cluster makes that work:
//!
//! - **One owner per session.** A session is live (its page, its renders)
//!   in one instance at a time: its owner, named by a lease in the shared
//!   backend. An instance's leases hold while the instance beats (a key
//!   with an expiry, renewed every third of [`ClusterOptions::lease`]); the
//!   store refuses appends from an instance that is not the owner, so a
//!   stale owner cannot write (a fence, on top of the version check).
//! - **Sockets anywhere.** A socket that reaches an instance that does not
//!   own its session is served there as a *follower*: its catch-up comes
//!   from the frames the store keeps (or a join forwarded to the owner),
//!   its updates from the owner's frames, published with each append, and
//!   its events are forwarded to the owner, which runs the handler and
//!   answers. Nothing moves, so two tabs on two instances do not fight.
//! - **The lease moves** when the app asks for the session on another
//!   instance ([`StateTemplate::get_session`]: a page load there): the owner
//!   hands it over (its sockets reconnect and become followers), or, when
//!   the owner died, the lease runs out and the next instance to ask claims
//!   it and restores the session from the store. Appends are
//!   compare-and-set on the version, so no acknowledged update is lost.
//! - **Broadcasts** ([`StateTemplate::broadcast`]) reach every instance's
//!   [`StateTemplate::broadcasts`] receiver once; each renders the sessions
//!   it owns (cost: one message per instance plus one render per session).
//! - **Presence** ([`StateTemplate::presence`]): the open connections of a
//!   group's sessions over all instances, each instance publishing its own
//!   count; an instance that dies stops counting when its lease runs out.
//!
//! The backend is Redis: [`RedisStore::cluster`](crate::store::RedisStore)
//! (feature `redis`). See `docs/architecture.md` ("Scale-out").
//!
//! [`StateTemplate::get_session`]: crate::StateTemplate::get_session
//! [`StateTemplate::broadcast`]: crate::StateTemplate::broadcast
//! [`StateTemplate::broadcasts`]: crate::StateTemplate::broadcasts
//! [`StateTemplate::presence`]: crate::StateTemplate::presence

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use tokio::sync::{broadcast, mpsc};

use crate::Result;
use crate::id::SessionId;

/// How a [`Cluster`] times its leases and calls.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    pub(crate) lease: Duration,
    pub(crate) call_timeout: Duration,
    pub(crate) presence_every: Duration,
}

impl Default for ClusterOptions {
    /// A 5 s lease, 3 s for a forwarded call, presence published every
    /// 250 ms.
    fn default() -> ClusterOptions {
        ClusterOptions {
            lease: Duration::from_secs(5),
            call_timeout: Duration::from_secs(3),
            presence_every: Duration::from_millis(250),
        }
    }
}

impl ClusterOptions {
    /// How long an instance's leases outlive its last beat (default 5 s):
    /// the most a dead instance's sessions wait before another instance
    /// takes them. At least 300 ms.
    pub fn lease(mut self, lease: Duration) -> ClusterOptions {
        self.lease = lease.max(Duration::from_millis(300));
        self
    }

    /// How long a call forwarded to a session's owner (an event, a join, a
    /// hand-over) may take before the follower gives up (default 3 s): the
    /// socket is then closed with a code that makes the client reconnect.
    pub fn call_timeout(mut self, t: Duration) -> ClusterOptions {
        self.call_timeout = t.max(Duration::from_millis(50));
        self
    }

    /// How often this instance publishes its presence counts when they
    /// changed (default 250 ms).
    pub fn presence_every(mut self, every: Duration) -> ClusterOptions {
        self.presence_every = every.max(Duration::from_millis(10));
        self
    }
}

/// A message sent with [`StateTemplate::broadcast`](crate::StateTemplate::broadcast),
/// as every instance's [`StateTemplate::broadcasts`](crate::StateTemplate::broadcasts)
/// receives it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Broadcast {
    /// What the message is about (a group name, say).
    pub topic: String,
    /// Its content.
    pub message: Json,
}

/// This instance's link to the other instances of the app: hand it to
/// [`Builder::cluster`](crate::Builder::cluster), with the store it came
/// from as the engine's store. Made by
/// [`RedisStore::cluster`](crate::store::RedisStore) (feature `redis`).
/// See the module docs.
#[derive(Clone)]
pub struct Cluster {
    pub(crate) link: Arc<dyn Link>,
}

impl fmt::Debug for Cluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cluster")
            .field("instance", &self.link.instance())
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// This instance's name in the cluster (random, made when the cluster
    /// is opened).
    pub fn instance(&self) -> &str {
        self.link.instance()
    }
}

/// One frame of a followed session, as the owner published it; or word
/// that frames may have been missed (the backend's connection dropped).
#[derive(Debug, Clone)]
// Made only by a backend (Redis, behind its feature).
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) enum FeedItem {
    Frame(u64, Arc<str>),
    /// An event the owner pushed (`Session::push`): its wire frame.
    Push(Arc<str>),
    Lost,
}

/// A follower's view of a session's published frames (see [`Link::follow`]).
/// Dropping it stops following when no other follower here needs them.
pub(crate) struct Feed {
    pub(crate) rx: broadcast::Receiver<FeedItem>,
    pub(crate) _guard: Box<dyn Send + Sync>,
}

/// A request from another instance (or a broadcast), for the engine to
/// handle.
#[derive(Debug)]
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) enum Inbound {
    /// A call to answer with [`Link::answer`].
    Call {
        from: String,
        id: u64,
        sid: SessionId,
        op: Op,
    },
    /// A broadcast, for the engine's receivers.
    Broadcast(Broadcast),
    /// This instance was taken for gone (its beat lapsed: it stalled, or
    /// the backend was away longer than a lease), and now beats again:
    /// another instance may have claimed sessions still live here, so the
    /// engine checks the lease of each.
    Lapsed,
}

/// What a call asks of a session's owner.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub(crate) enum Op {
    /// The page as it is now (a join): answered with [`Joined`].
    Join,
    /// A client frame (an event) from a socket of client instance `c`:
    /// answered with the reply the socket sends, if any.
    Event { c: Option<u64>, t: String },
    /// Hand the session over to the caller: answered once it is no longer
    /// live here and its lease is released.
    Release,
}

/// The answer to [`Op::Join`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Joined {
    pub(crate) seq: u64,
    pub(crate) epoch: String,
    pub(crate) frame: String,
    pub(crate) groups: Vec<String>,
}

/// What the engine needs from the backend that links the instances. Its
/// one implementation is Redis (`store/redis/cluster.rs`).
#[async_trait]
pub(crate) trait Link: Send + Sync + fmt::Debug + 'static {
    /// This instance's name.
    fn instance(&self) -> &str;
    /// The options it was made with.
    fn options(&self) -> &ClusterOptions;
    /// Starts beating and listening; what arrives for this instance goes
    /// to `inbox`. Called once, by the engine's build.
    fn start(self: Arc<Self>, inbox: mpsc::UnboundedSender<Inbound>);
    /// Waits until the other instances can see this one (its first beat):
    /// before that, a session it made would look orphaned to them. An
    /// error when that does not happen in reasonable time.
    async fn ready(&self) -> Result<()> {
        Ok(())
    }
    /// Claims session `id` for this instance: `None` when it is now (or
    /// was) this instance's, else the live owner's name.
    async fn claim(&self, id: &SessionId) -> Result<Option<String>>;
    /// Gives up this instance's lease of `id` (if it holds it).
    async fn release(&self, id: &SessionId) -> Result<()>;
    /// The live owner of `id`, if any (`None`: nobody, or a dead instance).
    async fn owner(&self, id: &SessionId) -> Result<Option<String>>;
    /// For each of `ids`, whether its lease names this instance (whether
    /// or not any other named instance still beats).
    async fn holds(&self, ids: &[SessionId]) -> Result<Vec<bool>>;
    /// Whether instance `name` beats (cached for a fraction of the lease).
    async fn alive(&self, name: &str) -> bool;
    /// Calls instance `to` about session `sid`; its answer, or an error
    /// (no answer within the call timeout, or a refusal).
    async fn call(&self, to: &str, sid: &SessionId, op: &Op) -> Result<Json>;
    /// Answers call `id` from instance `to`.
    async fn answer(&self, to: &str, id: u64, answer: std::result::Result<Json, String>);
    /// Follows the frames published for session `id`: subscribed when this
    /// returns, so frames appended after it are received.
    async fn follow(&self, id: &SessionId) -> Result<Feed>;
    /// Sends a broadcast to every instance (this one too).
    async fn broadcast(&self, b: &Broadcast) -> Result<()>;
    /// Sends a pushed event's frame to the session's followers.
    async fn push(&self, id: &SessionId, frame: &str) -> Result<()>;
    /// Publishes this instance's count of connections in `group`.
    async fn set_presence(&self, group: &str, count: u64) -> Result<()>;
    /// The connection counts in `group` of the live instances, by name.
    async fn presence(&self, group: &str) -> Result<Vec<(String, u64)>>;
    /// The seq of session `id` as the store holds it (`None`: no record).
    async fn seq(&self, id: &SessionId) -> Result<Option<u64>>;
    /// Keeps the groups session `id` is in, for the instance that takes it
    /// over.
    async fn save_groups(&self, id: &SessionId, groups: &[String]) -> Result<()>;
    /// The groups kept for session `id`.
    async fn groups(&self, id: &SessionId) -> Result<Vec<String>>;
    /// Stops beating and drops this instance's leases' backing key, so
    /// other instances may take its sessions at once.
    async fn stop(&self);
}
