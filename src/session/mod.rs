//! Sessions: one live page per browser, kept on the server, rendered
//! incrementally, streamed to every subscriber, expired when idle.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use dashmap::DashMap;
use minijinja::Environment;
use serde::Serialize;
use tokio::sync::{broadcast, oneshot};
use tracing::Instrument;

use crate::fragment::{Edit, FragmentEngine, LivePage, Patch};
use crate::rate::Bucket;
use crate::store::{Append, MemoryStore, SessionRecord, SessionStore};
use crate::token::{Claims, KeyRing, unix_ms};
use crate::{Error, ErrorKind, Result, Update};

mod compat;
mod id;
mod lru;
mod pool;
mod stream;

pub use compat::{Renderer, UpdateReceiver};
pub use id::SessionId;
use pool::{Pool, Pools};

/// Called with a session's last record when it is evicted or expires.
type EvictFn = dyn Fn(&SessionRecord, EvictReason) + Send + Sync;

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

/// The session engine: creates sessions, opens them from tokens, expires
/// and bounds them. Cheap to clone; clones share everything.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> statetemplate::Result<()> {
/// use minijinja::Environment;
/// use serde_json::json;
/// use statetemplate::{SessionEvent, StateTemplate};
///
/// let mut env = Environment::new();
/// env.add_template("hello.html", "<p>Hello {{ name }}!</p>").unwrap();
/// let engine = StateTemplate::builder(env).build()?;
///
/// // In the page handler: the full HTML, and what the socket needs.
/// let initial = engine.new_session("hello.html", &json!({"name": "Ada"})).await?;
///
/// // In the socket handler: open the session with its token, subscribe.
/// let session = engine
///     .get_session(&initial.session_id.to_string(), &initial.token)
///     .await?;
/// let mut updates = session.updates();
///
/// session.render(&json!({"name": "Grace"})).await?;
/// match updates.recv().await {
///     Some(SessionEvent::Patch(p)) => assert_eq!(p.updates()[0].html, "Grace"),
///     other => panic!("{other:?}"),
/// }
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct StateTemplate {
    inner: Arc<EngineInner>,
}

impl fmt::Debug for StateTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StateTemplate")
            .field("live_sessions", &self.inner.live.len())
            .field("store", &self.inner.store)
            .finish_non_exhaustive()
    }
}

struct EngineInner {
    fragments: FragmentEngine,
    keys: KeyRing,
    store: Arc<dyn SessionStore>,
    live: DashMap<SessionId, Arc<SessionInner>>,
    groups: DashMap<Arc<str>, std::collections::HashSet<SessionId>>,
    /// Template names, one allocation each, shared by every session (and
    /// its record) that renders the template.
    templates: Mutex<std::collections::HashSet<Arc<str>>>,
    pools: Mutex<Pools>,
    config: Config,
    clock: Clock,
    on_evict: Option<Arc<EvictFn>>,
    shut: AtomicBool,
    stop_sweeper: Mutex<Option<oneshot::Sender<()>>>,
}

#[derive(Debug, Clone)]
struct Config {
    expiration: Duration,
    unjoined_expiration: Duration,
    cleanup_interval: Duration,
    max_sessions: usize,
    max_unjoined: usize,
    token_ttl: Duration,
    subscriber_capacity: usize,
    replay_frames: usize,
}

/// Wall-clock milliseconds that follow tokio's clock, so that tests with a
/// paused clock (`tokio::time::advance`) move session time too.
#[derive(Debug, Clone, Copy)]
struct Clock {
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

    fn now_ms(&self) -> u64 {
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
        });
        handle.spawn(sweeper(
            Arc::downgrade(&inner),
            inner.config.cleanup_interval,
            stop_rx,
        ));
        Ok(StateTemplate { inner })
    }
}

async fn sweeper(engine: Weak<EngineInner>, every: Duration, mut stop: oneshot::Receiver<()>) {
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = &mut stop => break,
        }
        let Some(engine) = engine.upgrade() else {
            break;
        };
        match engine.sweep().await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(removed = n, "expired sessions removed"),
            Err(e) => tracing::warn!(error = %e, "session sweep failed"),
        }
    }
    tracing::debug!("expiry task stopped");
}

/// What [`StateTemplate::new_session`] returns: everything the page handler
/// needs. `Debug` hides the token.
#[derive(Clone, Serialize)]
pub struct InitialRender {
    /// The full annotated HTML of the page.
    pub html: String,
    /// The session's id (public; it names the session, it does not open it).
    pub session_id: SessionId,
    /// The sealed token that opens the session. Give it only to the browser
    /// the page is for.
    pub token: String,
}

impl fmt::Debug for InitialRender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InitialRender")
            .field("html_len", &self.html.len())
            .field("session_id", &self.session_id)
            .field("token", &"<redacted>")
            .finish()
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
            },
            keys: None,
            store: None,
            on_evict: None,
        }
    }

    /// The fragment engine underneath (for rendering without a session).
    pub fn fragments(&self) -> &FragmentEngine {
        &self.inner.fragments
    }

    /// The store sessions are kept in.
    pub fn store(&self) -> &Arc<dyn SessionStore> {
        &self.inner.store
    }

    /// How many sessions are live in this process.
    pub fn live_sessions(&self) -> usize {
        self.inner.live.len()
    }

    /// How many live sessions no client has joined yet (see
    /// [`Builder::max_unjoined`]).
    pub fn unjoined_sessions(&self) -> usize {
        self.inner.pools.lock().expect("lock").unjoined()
    }

    /// Renders `template` with `data` for a new session, stores it, and
    /// returns the HTML, the session id and a token. The session starts
    /// unjoined: it may evict the least recently active unjoined session,
    /// and is refused with [`ErrorKind::Capacity`] when only joined
    /// sessions could make room (see [`Builder::max_sessions`]).
    pub async fn new_session<S: Serialize + ?Sized>(
        &self,
        template: &str,
        data: &S,
    ) -> Result<InitialRender> {
        let e = &self.inner;
        e.check_running()?;
        let page = e.fragments.render(template, data)?;
        let html = page.html();
        let id = SessionId::generate()?;
        let now = e.clock.now_ms();
        let s = Arc::new(
            SessionInner::new(
                id,
                e.template_name(template),
                page,
                now,
                now,
                0,
                random_u64(),
            )
            .with_layout(e.fragments.layout(template).unwrap_or(0)),
        );
        let span = tracing::debug_span!("session", sid = %id.short());
        async {
            // Room first: a page load may only push out unjoined sessions.
            e.live.insert(s.id, s.clone());
            if !e.make_room(&s, &[Pool::Unjoined]).await {
                e.live.remove(&s.id);
                tracing::debug!("session refused: at capacity");
                return Err(Error::new(
                    ErrorKind::Capacity,
                    "at capacity: every session slot is held by a joined session",
                ));
            }
            let record = e.record(&s, &*s.state.lock().await);
            if let Err(err) = e.store.create(&record).await {
                e.pools.lock().expect("lock").remove(&s.id);
                e.live.remove(&s.id);
                return Err(err);
            }
            s.stored_expiry.store(record.expires_ms, Ordering::Relaxed);
            let token = e.mint(id, 0, now)?;
            tracing::debug!(template, "session created");
            Ok(InitialRender {
                html,
                session_id: id,
                token,
            })
        }
        .instrument(span)
        .await
    }

    /// Opens a session from its id and token (as the browser sends them).
    /// The token must be authentic, unexpired, of a current key and
    /// generation, and name this id; the session must be live or in the
    /// store and not expired. Every failure is the same
    /// [`ErrorKind::InvalidSession`] error. Counts as activity.
    pub async fn get_session(&self, session_id: &str, token: &str) -> Result<Session> {
        let e = &self.inner;
        e.check_running()?;
        let now = e.clock.now_ms();
        let claims = e.keys.open(token, now).inspect_err(|_| {
            // Neither the token nor the id it was offered with is logged.
            tracing::debug!("session refused: the token did not open");
        })?;
        let id: SessionId = session_id.parse().map_err(|_| Error::invalid_session())?;
        let span = tracing::debug_span!("session", sid = %id.short());
        async {
            let s = e.open(&id, &claims, now).await.inspect_err(|_| {
                tracing::debug!("session refused");
            })?;
            let session = self.handle(s);
            session.touch().await?;
            Ok(session)
        }
        .instrument(span)
        .await
    }

    /// Every session live in this process.
    pub fn sessions(&self) -> Vec<Session> {
        self.inner
            .live
            .iter()
            .map(|s| self.handle(s.value().clone()))
            .collect()
    }

    /// The live sessions with a client connected now (see
    /// [`Session::connection`]): the ones a server push reaches. Costs what
    /// they number, not what all live sessions do.
    pub fn connected_sessions(&self) -> Vec<Session> {
        let ids = self.inner.pools.lock().expect("lock").connected();
        ids.iter()
            .filter_map(|id| self.session_unchecked(id))
            .collect()
    }

    /// The live sessions of a group (see [`Session::join_group`]): render to
    /// them all to broadcast, e.g. `for s in engine.group("chat") { s.update(…) }`.
    pub fn group(&self, group: &str) -> Vec<Session> {
        let ids: Vec<SessionId> = self
            .inner
            .groups
            .get(group)
            .map(|m| m.iter().copied().collect())
            .unwrap_or_default();
        ids.iter()
            .filter_map(|id| self.session_unchecked(id))
            .collect()
    }

    /// A seed-compatible renderer over one default session of `template`
    /// (see [`Renderer`]).
    pub fn renderer(&self, template: &str) -> Renderer {
        Renderer::new(self.clone(), template)
    }

    /// Removes expired sessions now (the background task does this every
    /// `cleanup_interval`). Returns how many were removed.
    pub async fn cleanup(&self) -> Result<usize> {
        self.inner.sweep().await
    }

    /// Stops the expiry task and ends every subscriber. Sessions stay in the
    /// store (a persistent store brings them back after a restart); this
    /// engine refuses new work afterwards.
    pub async fn shutdown(&self) {
        let e = &self.inner;
        e.shut.store(true, Ordering::SeqCst);
        if let Some(tx) = e.stop_sweeper.lock().expect("lock").take() {
            let _ = tx.send(());
        }
        let all: Vec<Arc<SessionInner>> = e.live.iter().map(|s| s.value().clone()).collect();
        for s in all {
            s.closed.store(true, Ordering::SeqCst);
            let _guard = s.state.lock().await;
            s.end_subscribers();
        }
        e.live.clear();
        *e.pools.lock().expect("lock") = Pools::default();
    }

    /// A session handle without a token check, for in-crate layers that
    /// created the session themselves.
    pub(crate) fn session_unchecked(&self, id: &SessionId) -> Option<Session> {
        let s = self.inner.live.get(id)?.clone();
        Some(self.handle(s))
    }

    fn handle(&self, inner: Arc<SessionInner>) -> Session {
        Session {
            inner,
            engine: self.inner.clone(),
        }
    }
}

impl EngineInner {
    fn check_running(&self) -> Result<()> {
        if self.shut.load(Ordering::SeqCst) {
            return Err(Error::new(
                ErrorKind::Config,
                "the engine has been shut down",
            ));
        }
        Ok(())
    }

    /// The shared name of `template`.
    fn template_name(&self, template: &str) -> Arc<str> {
        let mut names = self.templates.lock().expect("lock");
        if let Some(n) = names.get(template) {
            return n.clone();
        }
        let n: Arc<str> = Arc::from(template);
        names.insert(n.clone());
        n
    }

    /// How long `s` may go without client activity: `expiration` once a
    /// client joined it, `unjoined_expiration` before.
    fn timeout_ms(&self, s: &SessionInner) -> u64 {
        let t = if s.joined.load(Ordering::Relaxed) {
            self.config.expiration
        } else {
            self.config.unjoined_expiration
        };
        t.as_millis() as u64
    }

    fn mint(&self, id: SessionId, generation: u32, now: u64) -> Result<String> {
        self.keys.seal(&Claims {
            session: id,
            issued_ms: now,
            expires_ms: now + self.config.token_ttl.as_millis() as u64,
            generation,
        })
    }

    fn record(&self, s: &SessionInner, page: &LivePage) -> SessionRecord {
        let last = s.last_access.load(Ordering::Relaxed);
        SessionRecord {
            id: s.id,
            template: s.template.clone(),
            data: page.data().clone(),
            seq: page.seq(),
            version: s.version.load(Ordering::Relaxed),
            generation: s.generation.load(Ordering::Relaxed),
            created_ms: s.created_ms,
            last_access_ms: last,
            expires_ms: last + self.timeout_ms(s),
            epoch: s.epoch,
            applied: s
                .applied
                .lock()
                .expect("lock")
                .as_deref()
                .cloned()
                .unwrap_or_default(),
        }
    }

    fn is_idle(&self, s: &SessionInner, now: u64) -> bool {
        now.saturating_sub(s.last_access.load(Ordering::Relaxed)) >= self.timeout_ms(s)
    }

    /// Finds (or restores from the store) the session a token names.
    async fn open(&self, id: &SessionId, claims: &Claims, now: u64) -> Result<Arc<SessionInner>> {
        if !claims.names(id) {
            return Err(Error::invalid_session());
        }
        let live = self.live.get(id).map(|s| s.clone());
        let s = match live {
            Some(s) => s,
            None => self.restore(id, now).await?,
        };
        if s.closed.load(Ordering::SeqCst)
            || claims.generation != s.generation.load(Ordering::SeqCst)
        {
            return Err(Error::invalid_session());
        }
        if self.is_idle(&s, now) {
            self.remove(&s, Some(EvictReason::Expired)).await;
            return Err(Error::invalid_session());
        }
        Ok(s)
    }

    /// Brings a session that is in the store but not live here back to
    /// life by rendering its snapshot.
    async fn restore(&self, id: &SessionId, now: u64) -> Result<Arc<SessionInner>> {
        let Some(rec) = self.store.load(id).await? else {
            return Err(Error::invalid_session());
        };
        if rec.expires_ms <= now {
            let _ = self.store.delete(id).await;
            return Err(Error::invalid_session());
        }
        let mut page = self.fragments.render(&rec.template, &rec.data)?;
        page.set_seq(rec.seq);
        let s = Arc::new(
            SessionInner::new(
                rec.id,
                self.template_name(&rec.template),
                page,
                rec.created_ms,
                rec.last_access_ms,
                rec.generation,
                // The record's epoch names its history: kept, so a client that
                // held this session before a restart can resume it.
                if rec.epoch == 0 {
                    random_u64()
                } else {
                    rec.epoch
                },
            )
            .with_layout(self.fragments.layout(&rec.template).unwrap_or(0)),
        );
        s.stored_expiry.store(rec.expires_ms, Ordering::Relaxed);
        s.version.store(rec.version, Ordering::Relaxed);
        if !rec.applied.is_empty() {
            *s.applied.lock().expect("lock") = Some(Box::new(rec.applied.clone()));
        }
        // A restore is a client coming back: keep frames from now on, so a
        // render before it resumes does not cost it a resync.
        if self.config.replay_frames > 0 {
            s.outlet.lock().expect("lock").replay = Some(Default::default());
        }
        // Two openers may race to restore: the first one in wins.
        let s = match self.live.entry(*id) {
            dashmap::mapref::entry::Entry::Occupied(o) => return Ok(o.get().clone()),
            dashmap::mapref::entry::Entry::Vacant(v) => v.insert(s).clone(),
        };
        tracing::debug!(seq = rec.seq, "session restored from the store");
        // A returning client: room may come from every pool, connected
        // sessions last.
        self.make_room(&s, &[Pool::Unjoined, Pool::Detached, Pool::Connected])
            .await;
        Ok(s)
    }

    /// Adds `newest` to the pools and evicts what the caps require, taking
    /// victims from `order`. False when the caps cannot hold with it (it is
    /// then taken out of the pools again; the caller undoes the rest).
    async fn make_room(&self, newest: &Arc<SessionInner>, order: &[Pool]) -> bool {
        let room = {
            let mut pools = self.pools.lock().expect("lock");
            pools.add(newest.id);
            let room = pools.make_room(
                newest.id,
                self.config.max_sessions,
                self.config.max_unjoined,
                order,
            );
            if !room.fits {
                pools.remove(&newest.id);
            }
            room
        };
        for id in room.victims {
            let s = self.live.get(&id).map(|s| s.clone());
            if let Some(s) = s {
                tracing::debug!(sid = %id.short(), "session evicted (capacity)");
                self.remove(&s, Some(EvictReason::Capacity)).await;
            }
        }
        room.fits
    }

    /// Ends a session: no more renders, subscribers end, the store forgets
    /// it. `reason` is set for evictions and expiry (the callback runs).
    async fn remove(&self, s: &Arc<SessionInner>, reason: Option<EvictReason>) -> bool {
        if s.closed.swap(true, Ordering::SeqCst) {
            return false;
        }
        // Wait for a render in flight; none can start after `closed`.
        let page = s.state.lock().await;
        let record = reason
            .and(self.on_evict.as_ref())
            .map(|_| self.record(s, &page));
        s.end_subscribers();
        self.pools.lock().expect("lock").remove(&s.id);
        drop(page);
        self.live.remove_if(&s.id, |_, v| Arc::ptr_eq(v, s));
        let mine = s.groups.lock().expect("lock").take();
        for g in mine.map(|b| *b).unwrap_or_default() {
            self.groups.remove_if_mut(&g, |_, members| {
                members.remove(&s.id);
                members.is_empty()
            });
        }
        if let Err(e) = self.store.delete(&s.id).await {
            tracing::warn!(sid = %s.id.short(), error = %e, "store delete failed");
        }
        if let (Some(r), Some(cb), Some(why)) = (record, &self.on_evict, reason) {
            cb(&r, why);
        }
        true
    }

    async fn sweep(&self) -> Result<usize> {
        let now = self.clock.now_ms();
        let idle: Vec<Arc<SessionInner>> = self
            .live
            .iter()
            .filter(|s| self.is_idle(s, now))
            .map(|s| s.value().clone())
            .collect();
        let mut removed = 0;
        for s in idle {
            if self.remove(&s, Some(EvictReason::Expired)).await {
                removed += 1;
            }
        }
        // Records the store holds but this process does not serve (left by
        // a restart, or live here with a store expiry that lags activity).
        const BATCH: usize = 1000;
        for _ in 0..1000 {
            let ids = self.store.list_expired(now, BATCH).await?;
            let n = ids.len();
            for id in ids {
                let live = self.live.get(&id).map(|s| s.clone());
                match live {
                    Some(s) if !self.is_idle(&s, now) => {
                        let last = s.last_access.load(Ordering::Relaxed);
                        let exp = last + self.timeout_ms(&s);
                        self.store.touch(&id, last, exp).await?;
                        s.stored_expiry.store(exp, Ordering::Relaxed);
                    }
                    Some(s) => {
                        if self.remove(&s, Some(EvictReason::Expired)).await {
                            removed += 1;
                        }
                    }
                    None => {
                        if self.store.delete(&id).await? {
                            removed += 1;
                        }
                    }
                }
            }
            if n < BATCH {
                break;
            }
        }
        Ok(removed)
    }
}

/// (client instance, highest event ref applied), oldest first.
type Applied = Vec<(u64, u64)>;

/// How many client instances per session [`Session::first_delivery`]
/// remembers (the most recent; an older one's resends would apply again).
const APPLIED_CLIENTS: usize = 16;

struct SessionInner {
    id: SessionId,
    template: Arc<str>,
    created_ms: u64,
    state: tokio::sync::Mutex<LivePage>,
    outlet: Mutex<Outlet>,
    /// Names the session's history (kept in the store's record: the same
    /// after a restart with a persistent store).
    epoch: u64,
    /// What clients see as the epoch: the history's mixed with the layout
    /// of the template's compiled program, so frames are replayed only to
    /// a client that holds the same history *and* the same page layout (a
    /// deploy that changed the template gives a resync instead).
    page_epoch: u64,
    /// The groups the session is in. Boxed so that a session in none (most
    /// are) pays 8 bytes for it, not 24.
    #[allow(clippy::box_collection)]
    groups: Mutex<Option<Box<Vec<Arc<str>>>>>,
    closed: AtomicBool,
    /// A client has joined (a socket, or [`Session::join`] /
    /// [`Session::resume`]): the session left the unjoined pool for good.
    joined: AtomicBool,
    /// Open client connections (see [`Session::connection`]).
    connections: AtomicU32,
    /// The events budget of all the session's connections together (made
    /// by the transport on the first event).
    event_budget: Mutex<Option<Box<Bucket>>>,
    /// Per client instance that numbers its events, the highest ref applied
    /// (the most recent [`APPLIED_CLIENTS`] clients).
    applied: Mutex<Option<Box<Applied>>>,
    /// The time of the last client activity (not of the last render).
    last_access: AtomicU64,
    /// The expiry last written to the store (store writes on activity are
    /// skipped while it is recent enough).
    stored_expiry: AtomicU64,
    /// The version of the record in the store: how many data changes were
    /// appended (changed only under the page lock).
    version: AtomicU64,
    generation: AtomicU32,
}

/// Where a session's frames go: its subscribers and its recent-frame buffer.
#[derive(Default)]
struct Outlet {
    tx: Tx,
    /// Recent frames for clients that reconnect (`None` until a client
    /// joins: sessions nobody connects to keep and encode nothing). Only
    /// the seq and the wire frame are kept, not the patch (which holds the
    /// render trees of its version).
    /// Boxed so that a session nobody joined pays 8 bytes for it, not 32.
    #[allow(clippy::box_collection)]
    replay: Option<Box<std::collections::VecDeque<KeptFrame>>>,
}

#[derive(Default)]
enum Tx {
    /// Nobody subscribes (no channel allocated).
    #[default]
    Idle,
    Open(broadcast::Sender<SessionEvent>),
    Closed,
}

impl Outlet {
    /// Whether a render's frame has anywhere to go. A channel nobody listens
    /// to any more is released.
    fn wanted(&mut self) -> bool {
        if let Tx::Open(s) = &self.tx {
            if s.receiver_count() == 0 {
                self.tx = Tx::Idle;
            }
        }
        matches!(self.tx, Tx::Open(_)) || self.replay.is_some()
    }

    /// Sends a frame to the subscribers and keeps it (the newest `keep`).
    fn publish(&mut self, frame: Arc<Rendered>, keep: usize) {
        if let Some(buf) = &mut self.replay {
            if buf.len() >= keep {
                buf.pop_front();
            }
            buf.push_back(KeptFrame {
                seq: frame.seq,
                frame: frame.frame.clone(),
            });
        }
        if let Tx::Open(s) = &self.tx {
            let _ = s.send(SessionEvent::Patch(frame));
        }
    }

    fn subscribe(&mut self, capacity: usize) -> Option<broadcast::Receiver<SessionEvent>> {
        match &self.tx {
            Tx::Closed => None,
            Tx::Open(s) => Some(s.subscribe()),
            Tx::Idle => {
                let (s, r) = broadcast::channel(capacity);
                self.tx = Tx::Open(s);
                Some(r)
            }
        }
    }
}

impl SessionInner {
    fn new(
        id: SessionId,
        template: Arc<str>,
        page: LivePage,
        created_ms: u64,
        last_access_ms: u64,
        generation: u32,
        epoch: u64,
    ) -> SessionInner {
        SessionInner {
            id,
            template,
            created_ms,
            state: tokio::sync::Mutex::new(page),
            outlet: Mutex::new(Outlet::default()),
            epoch,
            page_epoch: epoch,
            groups: Mutex::new(None),
            closed: AtomicBool::new(false),
            joined: AtomicBool::new(false),
            connections: AtomicU32::new(0),
            event_budget: Mutex::new(None),
            applied: Mutex::new(None),
            last_access: AtomicU64::new(last_access_ms),
            stored_expiry: AtomicU64::new(0),
            version: AtomicU64::new(0),
            generation: AtomicU32::new(generation),
        }
    }

    /// Mixes the layout of the session's compiled program into the epoch
    /// clients see (see `page_epoch`).
    fn with_layout(mut self, layout: u64) -> SessionInner {
        self.page_epoch = self.epoch ^ layout.rotate_left(17);
        self
    }

    fn end_subscribers(&self) {
        *self.outlet.lock().expect("lock") = Outlet {
            tx: Tx::Closed,
            replay: None,
        };
    }
}

/// A handle on one session. Cheap to clone; all clones act on the same
/// session, and renders from any of them are applied one at a time.
#[derive(Clone)]
pub struct Session {
    inner: Arc<SessionInner>,
    engine: Arc<EngineInner>,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("id", &self.inner.id)
            .field("closed", &self.inner.closed.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Session {
    /// The session's id.
    pub fn id(&self) -> SessionId {
        self.inner.id
    }

    /// The template the session renders.
    pub fn template(&self) -> &str {
        &self.inner.template
    }

    /// The session's seq and a *fresh* full render of its current data
    /// (not the incrementally maintained page): the oracle a test compares
    /// a client's DOM with.
    pub async fn fresh_render(&self) -> Result<(u64, String)> {
        let page = self.inner.state.lock().await;
        let (seq, data) = (page.seq(), page.data().clone());
        drop(page);
        let html = self
            .engine
            .fragments
            .render_html(&self.inner.template, &data)?;
        Ok((seq, html))
    }

    /// The page incarnation (see [`Resync::epoch`]).
    pub fn epoch(&self) -> String {
        format!("{:016x}", self.inner.page_epoch)
    }

    /// Whether the session was closed, expired or evicted.
    pub fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::SeqCst)
    }

    fn closed_error() -> Error {
        Error::new(
            ErrorKind::SessionClosed,
            "the session was closed, expired or evicted",
        )
    }

    /// Diffs `data` against the session's last data and sends what changed
    /// to every subscriber. Renders are applied one at a time in the order
    /// they are called; none is lost. Returns the session's `seq` after this
    /// render (unchanged when the data changed nothing).
    ///
    /// When the data changed, the store is handed the render's delta
    /// ([`SessionStore::append`]), also when the page shows none of the
    /// change (the seq then stays). On error (a template error, data that
    /// cannot be rendered, a store failure or a refused append) nothing
    /// changes: not the page, not the store, and nothing is sent.
    pub async fn render<S: Serialize + ?Sized>(&self, data: &S) -> Result<u64> {
        Ok(self.render_patch(data).await?.0)
    }

    pub(crate) async fn render_patch<S: Serialize + ?Sized>(
        &self,
        data: &S,
    ) -> Result<(u64, Option<Patch>)> {
        let span = tracing::debug_span!("session", sid = %self.inner.id.short());
        async {
            let page = self.inner.state.lock().await;
            self.render_locked(page, |p| p.update(data)).await
        }
        .instrument(span)
        .await
    }

    /// Applies what the app says changed (see [`Edit`]) and
    /// renders it: the same frames as [`Session::render`] of the whole data
    /// would send, at a cost that follows the change. Ordered with the
    /// session's other renders; on error nothing changes. Returns the seq.
    pub async fn edit(&self, edit: impl FnOnce(&mut Edit)) -> Result<u64> {
        let mut e = Edit::default();
        edit(&mut e);
        let span = tracing::debug_span!("session", sid = %self.inner.id.short());
        async {
            let page = self.inner.state.lock().await;
            Ok(self.render_locked(page, |p| p.edit(&e)).await?.0)
        }
        .instrument(span)
        .await
    }

    /// Renders with the page lock already held (and releases it): `change`
    /// updates the page.
    async fn render_locked(
        &self,
        mut page: tokio::sync::MutexGuard<'_, LivePage>,
        change: impl FnOnce(&mut LivePage) -> Result<Patch>,
    ) -> Result<(u64, Option<Patch>)> {
        let changed = self.change_page(&mut page, change)?;
        self.commit(page, changed).await
    }

    /// The synchronous half of a render: changes the page, keeping what
    /// undoes it.
    fn change_page(
        &self,
        page: &mut LivePage,
        change: impl FnOnce(&mut LivePage) -> Result<Patch>,
    ) -> Result<(Patch, crate::fragment::Checkpoint)> {
        if self.inner.closed.load(Ordering::SeqCst) {
            return Err(Session::closed_error());
        }
        let checkpoint = page.checkpoint();
        match change(page) {
            Ok(p) => Ok((p, checkpoint)),
            Err(err) => {
                tracing::debug!(error = %err, "render failed; session unchanged");
                Err(err)
            }
        }
    }

    /// The second half: saves and publishes a changed page (or undoes the
    /// change when the store fails).
    async fn commit(
        &self,
        mut page: tokio::sync::MutexGuard<'_, LivePage>,
        (patch, checkpoint): (Patch, crate::fragment::Checkpoint),
    ) -> Result<(u64, Option<Patch>)> {
        let (s, e) = (&self.inner, &self.engine);
        let now = e.clock.now_ms();
        // A render is not client activity: it moves neither the idle clock
        // nor the session's place in the eviction order.
        if patch.is_empty() && patch.delta().is_empty() {
            return Ok((patch.seq(), None));
        }
        // The data changed (even if the page shows none of it): the store
        // gets the delta, as the next version of the record.
        let mut record = e.record(s, &page);
        record.version += 1;
        // The frame is made before the store write, so a store that keeps
        // frames has it with the change (a client that reconnects after a
        // restart gets it). Only a page somebody joined encodes frames.
        let wanted = !patch.is_empty() && s.outlet.lock().expect("lock").wanted();
        let (frame, first_sent): (Option<Arc<str>>, Vec<u32>) = match wanted {
            true => match page.encode_sent(&patch) {
                Some((f, first)) => (Some(f.into()), first),
                None => (None, Vec::new()),
            },
            false => (None, Vec::new()),
        };
        let mut change = Append::new(&record, patch.delta());
        if let Some(f) = &frame {
            change = change.with_frame(f);
        }
        if let Err(err) = e.store.append(change).await {
            page.restore(checkpoint);
            page.unsend(&first_sent);
            tracing::warn!(error = %err, "store append failed; render undone");
            return Err(err);
        }
        s.version.store(record.version, Ordering::Relaxed);
        s.stored_expiry.store(record.expires_ms, Ordering::Relaxed);
        if patch.is_empty() {
            return Ok((patch.seq(), None));
        }
        let seq = patch.seq();
        if let Some(frame) = frame {
            let rendered = Arc::new(Rendered {
                seq,
                timestamp_ms: now,
                patch: patch.clone(),
                frame,
            });
            let mut outlet = s.outlet.lock().expect("lock");
            outlet.publish(rendered, e.config.replay_frames);
        }
        tracing::trace!(seq, ops = patch.len(), "rendered");
        Ok((seq, Some(patch)))
    }

    /// A new subscriber: it receives every render from now on (each tab of
    /// a browser takes its own). A subscriber that falls more than
    /// `subscriber_capacity` updates behind gets one
    /// [`SessionEvent::Resync`] with the whole page instead of what it
    /// missed; it never slows the renderer or other subscribers. It ends
    /// (`recv` gives `None`) when the session closes, expires or is evicted.
    pub fn updates(&self) -> Subscriber {
        Subscriber {
            rx: self
                .inner
                .outlet
                .lock()
                .expect("lock")
                .subscribe(self.engine.config.subscriber_capacity),
            session: Arc::downgrade(&self.inner),
            floor: 0,
            lagged: false,
        }
    }

    /// The page as it is now, and a subscriber that continues exactly after
    /// it (no update missed, none twice). What a client that holds nothing
    /// (a new tab, a reconnect) needs; [`Resync::frame`] gives the wire form.
    pub async fn join(&self) -> Result<(Resync, Subscriber)> {
        let mut page = self.inner.state.lock().await;
        if self.is_closed() {
            return Err(Session::closed_error());
        }
        let mut sub = self.updates();
        let resync = snapshot(&mut page, self.inner.page_epoch);
        sub.floor = resync.seq;
        if self.engine.config.replay_frames > 0 {
            let mut outlet = self.inner.outlet.lock().expect("lock");
            outlet.replay.get_or_insert_with(Default::default);
        }
        drop(page);
        self.mark_joined();
        Ok((resync, sub))
    }

    /// Whether a client that acks `seq` with `hash` (of the frame it applied
    /// as `seq`) is in step: `false` when `seq` is beyond the page's, or the
    /// frame kept as `seq` hashes otherwise. A frame no longer kept, or an
    /// ack without a hash, is taken as in step.
    pub(crate) fn holds(&self, seq: u64, hash: Option<u32>) -> bool {
        let outlet = self.inner.outlet.lock().expect("lock");
        let Some(buf) = &outlet.replay else {
            return true;
        };
        if buf.back().is_some_and(|f| seq > f.seq) {
            return false;
        }
        match (hash, buf.iter().find(|f| f.seq == seq)) {
            (Some(h), Some(f)) => crate::transport::frame_hash(&f.frame) == h,
            _ => true,
        }
    }

    /// Reconnects a client that holds the page at `seq` of page incarnation
    /// `epoch` (both from its last join): it gets the frames it missed from
    /// the session's recent-frame buffer, or a resync when they are gone (or
    /// the page is another incarnation: a restart, a restore). The
    /// subscriber continues exactly after what is returned.
    pub async fn resume(&self, seq: u64, epoch: &str) -> Result<(Catchup, Subscriber)> {
        let page = self.inner.state.lock().await;
        if self.is_closed() {
            return Err(Session::closed_error());
        }
        let now = page.seq();
        let same_page = epoch == format!("{:016x}", self.inner.page_epoch);
        if same_page && seq <= now {
            let frames: Vec<KeptFrame> = {
                let outlet = self.inner.outlet.lock().expect("lock");
                outlet
                    .replay
                    .iter()
                    .flat_map(|b| b.iter())
                    .filter(|r| r.seq > seq)
                    .cloned()
                    .collect()
            };
            // Complete only if it runs from right after `seq` to now, with
            // no gap (frames carry no seq: each is one more).
            let complete = frames
                .iter()
                .enumerate()
                .all(|(i, f)| f.seq == seq + 1 + i as u64)
                && frames.last().map_or(seq == now, |f| f.seq == now);
            let mut missed = complete.then_some(frames);
            if missed.is_none() {
                // Not all in memory (this process restored the session after
                // a restart): the frames the store kept, if it keeps them.
                missed = self.stored_frames(seq, now).await;
            }
            if let Some(frames) = missed {
                let mut sub = self.updates();
                sub.floor = now;
                self.mark_joined();
                return Ok((Catchup::Frames(frames), sub));
            }
        }
        drop(page);
        let (r, sub) = self.join().await?; // marks the session joined
        Ok((Catchup::Resync(r), sub))
    }

    /// The frames after `seq` up to `now` that the store kept, if they run
    /// complete (a store error counts as none: the client gets a resync).
    async fn stored_frames(&self, seq: u64, now: u64) -> Option<Vec<KeptFrame>> {
        let kept = match self.engine.store.frames(&self.inner.id, seq).await {
            Ok(k) => k,
            Err(e) => {
                tracing::warn!(error = %e, "reading kept frames failed; resyncing");
                return None;
            }
        };
        let frames: Vec<KeptFrame> = kept
            .into_iter()
            .filter(|(q, _)| *q <= now)
            .map(|(seq, frame)| KeptFrame {
                seq,
                frame: frame.into(),
            })
            .collect();
        let complete = frames
            .iter()
            .enumerate()
            .all(|(i, f)| f.seq == seq + 1 + i as u64)
            && frames.last().map_or(seq == now, |f| f.seq == now);
        complete.then_some(frames)
    }

    /// Reads the session's data as `T`, lets `f` change it, and renders the
    /// result, all under the session's lock: concurrent `update`s (two tabs
    /// clicking at once) never lose each other's changes. If `f` or the
    /// render fails, nothing changes.
    ///
    /// The first `update` reads the data as `T` from the snapshot; the `T`
    /// it leaves is kept with the page, so the next `update` with the same
    /// type starts from it instead of reading the whole snapshot again (any
    /// other change to the data, a failure, or a restore drops it). So the
    /// cost of an update is `f` plus one comparing pass over the data. One
    /// consequence: a field that `T` does not serialize keeps its value from
    /// one `update` to the next while the session stays in this process.
    pub async fn update<T, F>(&self, f: F) -> Result<u64>
    where
        T: serde::de::DeserializeOwned + Serialize + Send + 'static,
        F: FnOnce(&mut T) -> Result<()>,
    {
        let mut page = self.inner.state.lock().await;
        if self.is_closed() {
            return Err(Session::closed_error());
        }
        let mut data = match page.take_typed::<T>() {
            Some(t) => t,
            None => Box::new(T::deserialize(page.data().clone()).map_err(Error::data)?),
        };
        f(&mut data)?;
        let changed = self.change_page(&mut page, |p| p.update(&*data));
        if changed.is_ok() {
            // Kept until the data changes another way; a failed store
            // write below restores the page and drops it.
            page.keep_typed(data);
        }
        let span = tracing::debug_span!("session", sid = %self.inner.id.short());
        Ok(self.commit(page, changed?).instrument(span).await?.0)
    }

    /// The session's data (the snapshot of its last render) as `T`.
    pub async fn data<T: serde::de::DeserializeOwned>(&self) -> Result<T> {
        let page = self.inner.state.lock().await;
        T::deserialize(page.data().clone()).map_err(Error::data)
    }

    /// Adds the session to a named group (see [`StateTemplate::group`]).
    pub fn join_group(&self, group: &str) {
        let g: Arc<str> = Arc::from(group);
        let mut mine = self.inner.groups.lock().expect("lock");
        if self.is_closed() || mine.iter().flat_map(|v| v.iter()).any(|x| **x == *group) {
            return;
        }
        mine.get_or_insert_with(Default::default).push(g.clone());
        self.engine
            .groups
            .entry(g)
            .or_default()
            .insert(self.inner.id);
    }

    /// Removes the session from a group.
    pub fn leave_group(&self, group: &str) {
        let mut mine = self.inner.groups.lock().expect("lock");
        if let Some(v) = mine.as_mut() {
            v.retain(|g| **g != *group);
            if v.is_empty() {
                *mine = None;
            }
        }
        drop(mine);
        self.engine.groups.remove_if_mut(group, |_, members| {
            members.remove(&self.inner.id);
            members.is_empty()
        });
    }

    /// The annotated HTML of the page as it is now.
    pub async fn html(&self) -> String {
        self.inner.state.lock().await.html()
    }

    /// The sequence number of the last render that changed the page.
    pub async fn seq(&self) -> u64 {
        self.inner.state.lock().await.seq()
    }

    /// Records client activity (a transport calls this on every client
    /// frame): the idle clock restarts and the session becomes the most
    /// recent of its pool. Renders do not do this.
    pub async fn touch(&self) -> Result<()> {
        let (s, e) = (&self.inner, &self.engine);
        if s.closed.load(Ordering::SeqCst) {
            return Err(Session::closed_error());
        }
        let now = e.clock.now_ms();
        s.last_access.fetch_max(now, Ordering::SeqCst);
        e.pools.lock().expect("lock").bump(s.id);
        if s.closed.load(Ordering::SeqCst) {
            e.pools.lock().expect("lock").remove(&s.id);
            return Err(Session::closed_error());
        }
        // Store writes are skipped while the stored expiry is within 1/64 of
        // the timeout (at least a second) of the true one; the sweep checks
        // live sessions before removing them.
        let timeout = e.timeout_ms(s);
        let exp = now + timeout;
        let slack = (timeout / 64).max(1000);
        if exp.saturating_sub(s.stored_expiry.load(Ordering::Relaxed)) >= slack {
            e.store.touch(&s.id, now, exp).await?;
            s.stored_expiry.store(exp, Ordering::Relaxed);
        }
        Ok(())
    }

    /// A client joined: the session leaves the unjoined pool for good.
    fn mark_joined(&self) {
        let s = &self.inner;
        if s.joined.load(Ordering::SeqCst) {
            return;
        }
        let mut pools = self.engine.pools.lock().expect("lock");
        if !s.joined.swap(true, Ordering::SeqCst) {
            let to = if s.connections.load(Ordering::SeqCst) > 0 {
                Pool::Connected
            } else {
                Pool::Detached
            };
            pools.set(s.id, to);
        }
    }

    /// Whether a client has joined this session (a socket, or
    /// [`Session::join`] / [`Session::resume`]).
    pub fn is_joined(&self) -> bool {
        self.inner.joined.load(Ordering::SeqCst)
    }

    /// Counts an open client connection for as long as the guard lives. A
    /// session with an open connection is evicted last (see
    /// [`Builder::max_sessions`]). The WebSocket transport holds one per
    /// socket; a transport of your own should too.
    pub fn connection(&self) -> Connection {
        let s = &self.inner;
        let mut pools = self.engine.pools.lock().expect("lock");
        s.joined.store(true, Ordering::SeqCst);
        if s.connections.fetch_add(1, Ordering::SeqCst) == 0 {
            pools.set(s.id, Pool::Connected);
        }
        drop(pools);
        Connection {
            session: self.clone(),
        }
    }

    /// Reserves one event from the session's budget (`rate` a second,
    /// `burst` at once, shared by all its connections); how long the caller
    /// must wait before handling it.
    /// Whether event `r` of client instance `client` is new: its refs only
    /// grow, so one at or below the highest applied is a resend (after a
    /// reconnect) and is not applied again. Records `r` as applied.
    pub(crate) fn first_delivery(&self, client: u64, r: u64) -> bool {
        let mut g = self.inner.applied.lock().expect("lock");
        let v = g.get_or_insert_with(Default::default);
        match v.iter().position(|(c, _)| *c == client) {
            Some(i) => {
                let (_, last) = v.remove(i);
                v.push((client, last.max(r)));
                r > last
            }
            None => {
                if v.len() >= APPLIED_CLIENTS {
                    v.remove(0);
                }
                v.push((client, r));
                true
            }
        }
    }

    pub(crate) fn reserve_event(&self, rate: f64, burst: f64) -> Duration {
        self.inner
            .event_budget
            .lock()
            .expect("lock")
            .get_or_insert_with(|| Box::new(Bucket::new(rate, burst)))
            .reserve()
    }

    /// How many client connections are open (see [`Session::connection`]).
    pub fn connections(&self) -> usize {
        self.inner.connections.load(Ordering::SeqCst) as usize
    }

    /// A fresh token for this session (for example, to hand a long-lived
    /// tab a token that outlives the first one).
    pub fn token(&self) -> Result<String> {
        let e = &self.engine;
        e.mint(
            self.inner.id,
            self.inner.generation.load(Ordering::SeqCst),
            e.clock.now_ms(),
        )
    }

    /// Revokes every token issued so far for this session and returns a new
    /// one. Connected subscribers are not affected.
    pub async fn revoke_tokens(&self) -> Result<String> {
        let (s, e) = (&self.inner, &self.engine);
        let page = s.state.lock().await;
        if s.closed.load(Ordering::SeqCst) {
            return Err(Session::closed_error());
        }
        let old = s.generation.fetch_add(1, Ordering::SeqCst);
        if let Err(err) = e.store.save(&e.record(s, &page)).await {
            s.generation.store(old, Ordering::SeqCst);
            return Err(err);
        }
        drop(page);
        self.token()
    }

    /// Closes the session: subscribers end, the store forgets it, and its
    /// tokens open nothing. Closing twice is not an error.
    pub async fn close(&self) -> Result<()> {
        let span = tracing::debug_span!("session", sid = %self.inner.id.short());
        async {
            if self.engine.remove(&self.inner, None).await {
                tracing::debug!("session closed");
            }
            Ok(())
        }
        .instrument(span)
        .await
    }
}

/// An open client connection of a session; see [`Session::connection`].
pub struct Connection {
    session: Session,
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("session", &self.session.inner.id.short())
            .finish()
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        let (s, e) = (&self.session.inner, &self.session.engine);
        let mut pools = e.pools.lock().expect("lock");
        if s.connections.fetch_sub(1, Ordering::SeqCst) == 1 && !s.closed.load(Ordering::SeqCst) {
            pools.set(s.id, Pool::Detached);
        }
    }
}

fn snapshot(page: &mut LivePage, epoch: u64) -> Resync {
    Resync {
        seq: page.seq(),
        html: page.html(),
        frame: page.join_frame(),
        epoch: format!("{epoch:016x}"),
    }
}

fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    // A failed OS random source leaves a zero epoch: resumes then fall back
    // to a resync, which is always correct.
    let _ = getrandom::fill(&mut b);
    u64::from_le_bytes(b)
}

/// What a reconnecting client is sent first (see [`Session::resume`]).
#[derive(Debug)]
#[non_exhaustive]
pub enum Catchup {
    /// The frames it missed, in order (possibly none).
    Frames(Vec<KeptFrame>),
    /// The whole page: what it missed is no longer available.
    Resync(Resync),
}

/// What a subscriber receives.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum SessionEvent {
    /// One render's changes, in order.
    Patch(Arc<Rendered>),
    /// The whole page: the subscriber fell too far behind and updates it
    /// missed are gone. Replace what the client holds with it; patches that
    /// follow continue from its `seq`.
    Resync(Arc<Resync>),
}

impl SessionEvent {
    /// The session `seq` the event brings the client to.
    pub fn seq(&self) -> u64 {
        match self {
            SessionEvent::Patch(p) => p.seq,
            SessionEvent::Resync(r) => r.seq,
        }
    }
}

/// A frame a session keeps for clients that reconnect (see
/// [`Session::resume`]): its seq and wire form, shared with the
/// [`Rendered`] it came from.
#[derive(Debug, Clone)]
pub struct KeptFrame {
    seq: u64,
    frame: Arc<str>,
}

impl KeptFrame {
    /// The render's sequence number.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The wire frame (`docs/protocol.md`).
    pub fn frame(&self) -> &str {
        &self.frame
    }
}

/// One render's changes, ready to send.
#[derive(Debug)]
pub struct Rendered {
    seq: u64,
    timestamp_ms: u64,
    patch: Patch,
    frame: Arc<str>,
}

impl Rendered {
    /// The render's sequence number.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// When the render happened (unix milliseconds).
    pub fn timestamp_ms(&self) -> u64 {
        self.timestamp_ms
    }

    /// The changes as seed-compatible [`Update`]s (HTML per fragment).
    pub fn updates(&self) -> Vec<Update> {
        self.patch.updates()
    }

    /// The changes as one compact wire frame (`docs/protocol.md`), for a
    /// client that started from [`Session::join`].
    pub fn frame(&self) -> &str {
        &self.frame
    }

    /// The patch itself.
    pub fn patch(&self) -> &Patch {
        &self.patch
    }
}

/// The whole page at one `seq`.
#[derive(Debug)]
pub struct Resync {
    seq: u64,
    html: String,
    frame: String,
    epoch: String,
}

impl Resync {
    /// The sequence number the page is at.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The annotated HTML of the whole page.
    pub fn html(&self) -> &str {
        &self.html
    }

    /// The whole page as a wire frame: statics and values.
    pub fn frame(&self) -> &str {
        &self.frame
    }

    /// The page incarnation this state belongs to; a client passes it back
    /// to [`Session::resume`] with its seq when it reconnects.
    pub fn epoch(&self) -> &str {
        &self.epoch
    }
}

/// Receives a session's updates; see [`Session::updates`].
pub struct Subscriber {
    rx: Option<broadcast::Receiver<SessionEvent>>,
    session: Weak<SessionInner>,
    /// Events at or below this seq are already reflected in what the
    /// subscriber was given.
    floor: u64,
    /// The receiver lagged and the resync is not yet handed out. Kept here,
    /// not in the future's state, so that `recv` is cancel safe: a `recv`
    /// dropped while it waits for the page lock resyncs on the next call.
    lagged: bool,
}

impl fmt::Debug for Subscriber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscriber")
            .field("open", &self.rx.is_some())
            .field("seq", &self.floor)
            .finish()
    }
}

impl Subscriber {
    /// Makes the next [`recv`](Self::recv) a resync (a client was found out
    /// of step).
    pub(crate) fn resync(&mut self) {
        if self.rx.is_some() {
            self.lagged = true;
        }
    }

    /// The next event, or `None` once the session has ended. Cancel safe:
    /// dropping the future loses no event (as in `tokio::select!`).
    pub async fn recv(&mut self) -> Option<SessionEvent> {
        loop {
            let rx = self.rx.as_mut()?;
            if self.lagged {
                let Some(s) = self.session.upgrade() else {
                    self.rx = None;
                    return None;
                };
                let mut page = s.state.lock().await;
                if s.closed.load(Ordering::SeqCst) {
                    self.rx = None;
                    return None;
                }
                let r = snapshot(&mut page, s.page_epoch);
                // Renders send while holding the page lock: a receiver
                // made now starts exactly after `r`, and the missed
                // backlog is dropped (it would lag again).
                *rx = rx.resubscribe();
                drop(page);
                tracing::debug!(sid = %s.id.short(), seq = r.seq, "subscriber lagged; resync");
                self.lagged = false;
                self.floor = r.seq;
                return Some(SessionEvent::Resync(Arc::new(r)));
            }
            match rx.recv().await {
                Ok(ev) if ev.seq() <= self.floor => continue,
                Ok(ev) => {
                    self.floor = ev.seq();
                    return Some(ev);
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::trace!(missed, "subscriber lagged");
                    self.lagged = true;
                }
                Err(broadcast::error::RecvError::Closed) => {
                    self.rx = None;
                    return None;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fragment::ingest::identical;

    /// A session keeps one snapshot, the memory store included: after
    /// renders and edits, the record's data is the page's own value.
    #[tokio::test]
    async fn the_memory_store_shares_the_page_snapshot() {
        let mut env = Environment::new();
        env.add_template(
            "p.html",
            "<p>{{ a }}</p>{% for r in rows %}<i>{{ r.t }}</i>{% endfor %}",
        )
        .unwrap();
        let engine = StateTemplate::builder(env)
            .keys(KeyRing::generate().unwrap())
            .build()
            .unwrap();
        let d = serde_json::json!({"a": 1, "rows": [{"id": 1, "t": "x"}], "hidden": {"h": 1}});
        let init = engine.new_session("p.html", &d).await.unwrap();
        let s = engine.session_unchecked(&init.session_id).unwrap();
        let shared = |s: Session| async move {
            let rec = s.engine.store.load(&s.inner.id).await.unwrap().unwrap();
            let page = s.inner.state.lock().await;
            identical(&rec.data, page.data())
        };
        assert!(shared(s.clone()).await, "after creation");
        s.render(&serde_json::json!({"a": 2, "rows": [{"id": 1, "t": "y"}], "hidden": {"h": 1}}))
            .await
            .unwrap();
        assert!(shared(s.clone()).await, "after a render");
        s.edit(|e| {
            e.set("hidden.h", &2);
        })
        .await
        .unwrap();
        assert!(
            shared(s.clone()).await,
            "after a change the page does not show"
        );
    }

    /// Sessions of one template share one allocation of its name, with
    /// their records.
    #[tokio::test]
    async fn sessions_share_their_template_name() {
        let mut env = Environment::new();
        env.add_template("p.html", "<p>{{ a }}</p>").unwrap();
        let engine = StateTemplate::builder(env)
            .keys(KeyRing::generate().unwrap())
            .build()
            .unwrap();
        let d = serde_json::json!({"a": 1});
        let a = engine.new_session("p.html", &d).await.unwrap();
        let b = engine.new_session("p.html", &d).await.unwrap();
        let a = engine.session_unchecked(&a.session_id).unwrap();
        let b = engine.session_unchecked(&b.session_id).unwrap();
        assert!(Arc::ptr_eq(&a.inner.template, &b.inner.template));
        let rec = engine.store().load(&b.id()).await.unwrap().unwrap();
        assert!(Arc::ptr_eq(&rec.template, &a.inner.template));
    }
}
