//! The engine's builder: [`Builder`], its `Config`, and the `Clock`
//! session time follows.

use std::fmt;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use dashmap::DashMap;
use minijinja::Environment;
use tokio::sync::oneshot;

use super::StateTemplate;
use super::engine::{EngineInner, sweeper};
use super::pool::Pools;
#[cfg(doc)]
use super::{Session, SessionEvent};
use crate::fragment::FragmentEngine;
use crate::store::{MemoryStore, SessionRecord, SessionStore};
use crate::token::{KeyRing, unix_ms};
use crate::{Error, ErrorKind, Result};

/// Called with a session's last record when it is evicted or expires.
pub(super) type EvictFn = dyn Fn(&SessionRecord, EvictReason) + Send + Sync;

/// Why a session was removed without being closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum EvictReason {
    /// A cap was reached (`max_sessions`, or `max_unjoined` for sessions no
    /// client has joined) and this session was the first to go: the least
    /// recently active of the first pool in line (unjoined, then joined
    /// without a connection, then connected).
    Capacity,
    /// The session saw no client activity for longer than its timeout
    /// (`expiration`, or `unjoined_expiration` while no client has joined).
    Expired,
}

#[derive(Debug, Clone)]
pub(super) struct Config {
    pub(super) expiration: Duration,
    pub(super) unjoined_expiration: Duration,
    pub(super) cleanup_interval: Duration,
    pub(super) max_sessions: usize,
    pub(super) max_unjoined: usize,
    pub(super) token_ttl: Duration,
    pub(super) subscriber_capacity: usize,
    pub(super) replay_frames: usize,
    pub(super) rest_unjoined_after: Option<Duration>,
}

/// Wall-clock milliseconds that follow tokio's clock, so that tests with a
/// paused clock (`tokio::time::advance`) move session time too.
#[derive(Debug, Clone, Copy)]
pub(super) struct Clock {
    base_ms: u64,
    base: tokio::time::Instant,
}

impl Clock {
    fn new() -> Clock {
        Clock {
            base_ms: unix_ms(SystemTime::now()),
            base: tokio::time::Instant::now(),
        }
    }

    pub(super) fn now_ms(&self) -> u64 {
        self.base_ms + self.base.elapsed().as_millis() as u64
    }
}

/// Configures a [`StateTemplate`]. Every option has a default.
pub struct Builder {
    env: Environment<'static>,
    config: Config,
    keys: Option<KeyRing>,
    store: Option<Arc<dyn SessionStore>>,
    on_evict: Option<Arc<EvictFn>>,
    cluster: Option<crate::cluster::Cluster>,
}

impl fmt::Debug for Builder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Builder {
    /// How long a session that a client has joined may go without client
    /// activity before it expires. Activity is what a client does: a socket
    /// joins, a client frame arrives (event, ack, ping), or the app calls
    /// [`Session::touch`] or [`StateTemplate::get_session`]. A render the
    /// server makes is not activity, so a ticker does not keep abandoned
    /// sessions alive. Default: 24 hours.
    pub fn expiration(mut self, idle: Duration) -> Builder {
        self.config.expiration = idle;
        self
    }

    /// How long a session that no client has joined yet (a page load whose
    /// socket never connected) may go without activity. Page loads are
    /// anonymous and cheap to make, so they get a short leash. At most the
    /// `expiration`. Default: 5 minutes.
    pub fn unjoined_expiration(mut self, idle: Duration) -> Builder {
        self.config.unjoined_expiration = idle;
        self
    }

    /// The most live sessions that no client has joined; creating one more
    /// evicts the least recently active of them (never a joined session).
    /// At most `max_sessions`. Default: 10,000.
    pub fn max_unjoined(mut self, n: usize) -> Builder {
        self.config.max_unjoined = n;
        self
    }

    /// How long a session that no client has joined keeps its rendered
    /// page tree (what the next render diffs against) after its last
    /// activity. After that, the background task drops it (at its next
    /// round, see [`Builder::cleanup_interval`]), and the session holds
    /// little more than its data: for the page loads whose socket never
    /// connects (an abandoned tab, a crawler, a flood of anonymous loads).
    /// A client that joins later, a render and a stream operation render
    /// the tree again first, from the session's data, with the same
    /// template: what they send does not change, and a render's errors
    /// are still reported by that render. `Some(Duration::ZERO)` drops it
    /// as soon as the page is made; `None` never. Default: 10 seconds.
    pub fn rest_unjoined_after(mut self, after: Option<Duration>) -> Builder {
        self.config.rest_unjoined_after = after;
        self
    }

    /// How often the background task looks for expired sessions.
    /// Default: 60 seconds.
    pub fn cleanup_interval(mut self, every: Duration) -> Builder {
        self.config.cleanup_interval = every;
        self
    }

    /// The most live sessions kept. Making room evicts the least recently
    /// active session of the first pool in line: sessions no client joined,
    /// then joined sessions without an open connection, and sessions with
    /// an open connection last. A new session (a page load) only ever
    /// evicts sessions no client joined; when none is left it is refused
    /// with [`ErrorKind::Capacity`]. A returning client (a session restored
    /// from the store) may evict from every pool. See [`Builder::on_evict`].
    /// Default: 100,000.
    pub fn max_sessions(mut self, n: usize) -> Builder {
        self.config.max_sessions = n;
        self
    }

    /// The keys tokens are sealed with. Default: one random key, with a
    /// warning, since tokens then do not survive a restart.
    pub fn keys(mut self, keys: KeyRing) -> Builder {
        self.keys = Some(keys);
        self
    }

    /// Where session records are kept. Default: a [`MemoryStore`].
    /// Accepts any store, including an `Arc<dyn SessionStore>`.
    pub fn store(mut self, store: impl SessionStore) -> Builder {
        self.store = Some(Arc::new(store));
        self
    }

    /// Joins this instance to a cluster of instances sharing the store
    /// (see [`crate::cluster`]): one owner per session, sockets served on
    /// any instance, broadcasts and presence across them. The store must be
    /// the one the cluster was made from.
    pub fn cluster(mut self, cluster: crate::cluster::Cluster) -> Builder {
        self.cluster = Some(cluster);
        self
    }

    /// How long a token stays valid after it is issued. Default: the
    /// expiration. [`Session::token`] mints a fresh one.
    pub fn token_ttl(mut self, ttl: Duration) -> Builder {
        self.config.token_ttl = ttl;
        self
    }

    /// How many updates a subscriber may fall behind before it is sent a
    /// [`SessionEvent::Resync`] instead. Default: 32 (each frame slot costs memory per session with subscribers).
    pub fn subscriber_capacity(mut self, n: usize) -> Builder {
        self.config.subscriber_capacity = n;
        self
    }

    /// How many recent frames a session keeps (once a client has joined it)
    /// so that a client that reconnects can catch up without a resync
    /// (see [`Session::resume`]). Default: 64; 0 turns replay off.
    pub fn replay_frames(mut self, n: usize) -> Builder {
        self.config.replay_frames = n;
        self
    }

    /// Called with the session's last record when a session is evicted
    /// (over `max_sessions`) or expires. Not called for [`Session::close`].
    /// Runs on the task that evicts: keep it short.
    pub fn on_evict(
        mut self,
        f: impl Fn(&SessionRecord, EvictReason) + Send + Sync + 'static,
    ) -> Builder {
        self.on_evict = Some(Arc::new(f));
        self
    }

    /// Builds the engine and starts its expiry task on the current tokio
    /// runtime. The task ends when the last clone of the engine is dropped
    /// or [`StateTemplate::shutdown`] is called.
    pub fn build(self) -> Result<StateTemplate> {
        let c = &self.config;
        let bad = |m: &str| Err(Error::new(ErrorKind::Config, m));
        if c.expiration.is_zero() {
            return bad("expiration must be positive");
        }
        if c.cleanup_interval.is_zero() {
            return bad("cleanup_interval must be positive");
        }
        if c.max_sessions == 0 {
            return bad("max_sessions must be at least 1");
        }
        if c.max_unjoined == 0 {
            return bad("max_unjoined must be at least 1");
        }
        if c.unjoined_expiration.is_zero() {
            return bad("unjoined_expiration must be positive");
        }
        if c.token_ttl.is_zero() {
            return bad("token_ttl must be positive");
        }
        if c.subscriber_capacity == 0 {
            return bad("subscriber_capacity must be at least 1");
        }
        let handle = tokio::runtime::Handle::try_current().map_err(|_| {
            Error::new(
                ErrorKind::Config,
                "StateTemplate::build must run inside a tokio runtime (it starts the expiry task)",
            )
        })?;
        let keys = match self.keys {
            Some(k) => k,
            None => {
                tracing::warn!(
                    "no keys configured: using a random key; tokens will not survive a restart \
                     (set keys with KeyRing::from_env)"
                );
                KeyRing::generate()?
            }
        };
        let (stop_tx, stop_rx) = oneshot::channel();
        let inner = Arc::new(EngineInner {
            fragments: FragmentEngine::new(self.env),
            keys,
            store: self
                .store
                .unwrap_or_else(|| Arc::new(MemoryStore::default())),
            live: DashMap::new(),
            groups: DashMap::new(),
            templates: Mutex::default(),
            pools: Mutex::new(Pools::default()),
            config: Config {
                max_unjoined: self.config.max_unjoined.min(self.config.max_sessions),
                unjoined_expiration: self.config.unjoined_expiration.min(self.config.expiration),
                ..self.config
            },
            clock: Clock::new(),
            on_evict: self.on_evict,
            shut: AtomicBool::new(false),
            stop_sweeper: Mutex::new(Some(stop_tx)),
            cluster: self.cluster.map(|c| c.link),
            bcast: tokio::sync::broadcast::channel(1024).0,
            remote_events: std::sync::RwLock::new(None),
            followed_groups: Mutex::default(),
        });
        if let Some(link) = inner.cluster.clone() {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            link.clone().start(tx);
            handle.spawn(super::cluster::serve(Arc::downgrade(&inner), rx));
            handle.spawn(super::cluster::presence_task(
                Arc::downgrade(&inner),
                link.options().presence_every,
            ));
        }
        handle.spawn(sweeper(
            Arc::downgrade(&inner),
            inner.config.cleanup_interval,
            stop_rx,
        ));
        Ok(StateTemplate { inner })
    }
}

impl StateTemplate {
    /// Starts configuring an engine over the user's environment (loaders,
    /// filters, globals and autoescape all apply).
    pub fn builder(env: Environment<'static>) -> Builder {
        let day = Duration::from_secs(24 * 3600);
        Builder {
            env,
            config: Config {
                expiration: day,
                unjoined_expiration: Duration::from_secs(5 * 60),
                cleanup_interval: Duration::from_secs(60),
                max_sessions: 100_000,
                max_unjoined: 10_000,
                token_ttl: day,
                subscriber_capacity: 32,
                replay_frames: 64,
                rest_unjoined_after: Some(Duration::from_secs(10)),
            },
            keys: None,
            store: None,
            on_evict: None,
            cluster: None,
        }
    }
}
