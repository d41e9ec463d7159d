//! The engine: [`StateTemplate`], what it shares with every session
//! (`EngineInner`: open, restore, make room, remove, sweep), and the
//! expiry task.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use dashmap::DashMap;
use serde::Serialize;
use tokio::sync::oneshot;
use tracing::Instrument;

#[cfg(doc)]
use super::Builder;
use super::builder::{Clock, Config, EvictFn, EvictReason};
use super::cluster::RemoteEventFn;
use super::events::InitialRender;
use super::follower::{Attached, Follower};
use super::pool::{Pool, Pools};
use super::state::{SessionInner, page_epoch};
use super::{Renderer, Session};
use crate::cluster::{Broadcast, Link};
use crate::fragment::{FragmentEngine, LivePage};
use crate::id::SessionId;
use crate::store::{SessionRecord, SessionStore};
use crate::token::{Claims, KeyRing};
use crate::{Error, ErrorKind, Result};

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
    pub(super) inner: Arc<EngineInner>,
}

impl fmt::Debug for StateTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StateTemplate")
            .field("live_sessions", &self.inner.live.len())
            .field("store", &self.inner.store)
            .finish_non_exhaustive()
    }
}

pub(super) struct EngineInner {
    pub(super) fragments: FragmentEngine,
    pub(super) keys: KeyRing,
    pub(super) store: Arc<dyn SessionStore>,
    pub(super) live: DashMap<SessionId, Arc<SessionInner>>,
    pub(super) groups: DashMap<Arc<str>, std::collections::HashSet<SessionId>>,
    /// Template names, one allocation each, shared by every session (and
    /// its record) that renders the template.
    pub(super) templates: Mutex<std::collections::HashSet<Arc<str>>>,
    pub(super) pools: Mutex<Pools>,
    pub(super) config: Config,
    pub(super) clock: Clock,
    pub(super) on_evict: Option<Arc<EvictFn>>,
    pub(super) shut: AtomicBool,
    pub(super) stop_sweeper: Mutex<Option<oneshot::Sender<()>>>,
    /// The link to the other instances (see [`crate::cluster`]).
    pub(super) cluster: Option<Arc<dyn Link>>,
    /// Broadcasts received (from every instance, this one included).
    pub(super) bcast: tokio::sync::broadcast::Sender<Broadcast>,
    /// How forwarded client frames run (set by `Live`).
    pub(super) remote_events: std::sync::RwLock<Option<Arc<RemoteEventFn>>>,
    /// For presence: per group, the sockets this instance serves as a
    /// follower of sessions owned elsewhere.
    pub(super) followed_groups: Mutex<std::collections::HashMap<String, u64>>,
}

pub(super) async fn sweeper(
    engine: Weak<EngineInner>,
    every: Duration,
    mut stop: oneshot::Receiver<()>,
) {
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

impl StateTemplate {
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
        let mut page = e.fragments.render(template, data)?;
        let html = page.html();
        let seq = page.seq();
        if e.config.rest_unjoined_after == Some(Duration::ZERO) {
            page.rest();
        }
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
            let created = async {
                // In a cluster, the record names this instance as its
                // owner: the others must be able to see it first.
                if let Some(link) = &e.cluster {
                    link.ready().await?;
                }
                e.store.create(&record).await
            };
            if let Err(err) = created.await {
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
                seq,
                epoch: format!("{:016x}", s.page_epoch),
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

    /// Opens a session for a socket: as [`StateTemplate::get_session`],
    /// but a session another live instance owns is not moved here: the
    /// socket follows it ([`Attached::Remote`]).
    pub(crate) async fn attach(&self, session_id: &str, token: &str) -> Result<Attached> {
        let e = &self.inner;
        let Some(link) = e.cluster.clone() else {
            return self
                .get_session(session_id, token)
                .await
                .map(Attached::Local);
        };
        e.check_running()?;
        let now = e.clock.now_ms();
        let (id, claims) = e.named(session_id, token, now)?;
        if !e.live.contains_key(&id) {
            if let Some(owner) = link.claim(&id).await? {
                let rec = e.stored_record(&id, &claims, now).await?;
                let layout = e.fragments.layout(&rec.template).unwrap_or(0);
                let epoch = format!("{:016x}", page_epoch(rec.epoch, layout));
                tracing::debug!(sid = %id.short(), owner, "socket follows a session owned elsewhere");
                return Ok(Attached::Remote(Follower::new(
                    e.clone(),
                    link,
                    id,
                    owner,
                    rec.generation,
                    epoch,
                    rec.expires_ms,
                )));
            }
        }
        self.get_session(session_id, token)
            .await
            .map(Attached::Local)
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
        if let Some(l) = &e.cluster {
            // Handed over: their clients reconnect, and another instance
            // takes each session at once (not after the lease).
            for s in &all {
                e.hand_over(s).await;
            }
            l.stop().await;
        }
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
    pub(super) fn template_name(&self, template: &str) -> Arc<str> {
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
    pub(super) fn timeout_ms(&self, s: &SessionInner) -> u64 {
        let t = if s.joined.load(Ordering::Relaxed) {
            self.config.expiration
        } else {
            self.config.unjoined_expiration
        };
        t.as_millis() as u64
    }

    pub(super) fn mint(&self, id: SessionId, generation: u32, now: u64) -> Result<String> {
        self.keys.seal(&Claims {
            session: id,
            issued_ms: now,
            expires_ms: now + self.config.token_ttl.as_millis() as u64,
            generation,
        })
    }

    pub(super) fn record(&self, s: &SessionInner, page: &LivePage) -> SessionRecord {
        let last = s.last_access.load(Ordering::Relaxed);
        SessionRecord {
            id: s.id,
            template: s.template(),
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
        // In a cluster, the session becomes this instance's first (a live
        // owner hands it over): one owner renders it.
        self.take_lease(id).await?;
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
        let groups = match &self.cluster {
            Some(l) => l.groups(id).await.unwrap_or_default(),
            None => Vec::new(),
        };
        // Two openers may race to restore: the first one in wins.
        let s = match self.live.entry(*id) {
            dashmap::mapref::entry::Entry::Occupied(o) => return Ok(o.get().clone()),
            dashmap::mapref::entry::Entry::Vacant(v) => v.insert(s).clone(),
        };
        if !groups.is_empty() {
            let mut mine = s.groups.lock().expect("lock");
            for g in groups {
                let g: Arc<str> = Arc::from(g);
                self.groups.entry(g.clone()).or_default().insert(*id);
                mine.get_or_insert_with(Default::default).push(g);
            }
        }
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
    pub(super) async fn remove(&self, s: &Arc<SessionInner>, reason: Option<EvictReason>) -> bool {
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
        self.leave_groups(s);
        if let Err(e) = self.store.delete(&s.id).await {
            tracing::warn!(sid = %s.id.short(), error = %e, "store delete failed");
        }
        if let (Some(r), Some(cb), Some(why)) = (record, &self.on_evict, reason) {
            cb(&r, why);
        }
        true
    }

    /// Takes a session that stops here out of the groups it is in.
    pub(super) fn leave_groups(&self, s: &SessionInner) {
        let mine = s.groups.lock().expect("lock").take();
        for g in mine.map(|b| *b).unwrap_or_default() {
            self.groups.remove_if_mut(&g, |_, members| {
                members.remove(&s.id);
                members.is_empty()
            });
        }
    }

    /// Whether `s` is a session no client joined whose page may rest:
    /// idle for `rest_unjoined_after` (see `LivePage::rest`).
    fn may_rest(&self, s: &SessionInner, now: u64) -> bool {
        let Some(after) = self.config.rest_unjoined_after else {
            return false;
        };
        let after = u64::try_from(after.as_millis()).unwrap_or(u64::MAX);
        !s.joined.load(Ordering::SeqCst)
            && s.connections.load(Ordering::SeqCst) == 0
            && now.saturating_sub(s.last_access.load(Ordering::Relaxed)) >= after
    }

    /// Lets these pages rest. A page that is busy now is left for the
    /// next round.
    fn rest(sessions: Vec<Arc<SessionInner>>) -> usize {
        let mut rested = 0;
        for s in sessions {
            if let Ok(mut page) = s.state.try_lock() {
                // Checked again under the page lock, which a join holds
                // while it takes the page.
                if !page.is_resting() && !s.joined.load(Ordering::SeqCst) {
                    page.rest();
                    rested += 1;
                }
            }
        }
        rested
    }

    async fn sweep(&self) -> Result<usize> {
        let now = self.clock.now_ms();
        // One pass picks the expired sessions and the pages to rest; both
        // are handled after it, so that neither a store call nor dropping
        // a tree (a big page's takes a while) holds a shard of the map.
        let (mut idle, mut resting) = (Vec::new(), Vec::new());
        for s in self.live.iter() {
            if self.is_idle(&s, now) {
                idle.push(s.value().clone());
            } else if self.may_rest(&s, now) {
                resting.push(s.value().clone());
            }
        }
        let rested = Self::rest(resting);
        if rested > 0 {
            tracing::debug!(rested, "pages of unjoined sessions rest");
        }
        let mut removed = 0;
        for s in idle {
            if self.cluster.is_some() {
                // Followers on other instances touch the store, not this
                // process: it decides.
                if let Ok(Some(rec)) = self.store.load(&s.id).await {
                    if rec.expires_ms > now {
                        s.last_access
                            .fetch_max(rec.last_access_ms, Ordering::SeqCst);
                        s.stored_expiry.store(rec.expires_ms, Ordering::Relaxed);
                        continue;
                    }
                }
            }
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
                        // In a cluster, only a record nobody owns (or whose
                        // owner is gone) is this instance's to delete.
                        if let Some(l) = &self.cluster {
                            if l.claim(&id).await?.is_some() {
                                continue;
                            }
                        }
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

fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    // A failed OS random source leaves a zero epoch: resumes then fall back
    // to a resync, which is always correct.
    let _ = getrandom::fill(&mut b);
    u64::from_le_bytes(b)
}

#[cfg(test)]
mod tests {
    use minijinja::Environment;

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
        assert!(Arc::ptr_eq(&a.inner.template(), &b.inner.template()));
        let rec = engine.store().load(&b.id()).await.unwrap().unwrap();
        assert!(Arc::ptr_eq(&rec.template, &a.inner.template()));
    }

    /// A session nobody joined drops its tree once idle for
    /// `rest_unjoined_after` (at the sweep), renders it again for a render
    /// or a join, and gives what a session that never rested gives. A
    /// joined session and one with a connection keep theirs.
    #[tokio::test(start_paused = true)]
    async fn unjoined_sessions_rest_and_wake_to_the_same_frames() {
        let engine = |rest| {
            let mut env = Environment::new();
            env.add_template(
                "p.html",
                "<p class=\"{{ 'on' if a > 1 }}\">{{ a }} {{ 12 // a }}</p>{% for r in rows %}<i>{{ loop.index }} {{ r.t }}</i>{% endfor %}",
            )
            .unwrap();
            StateTemplate::builder(env)
                .keys(KeyRing::generate().unwrap())
                .rest_unjoined_after(rest)
                .cleanup_interval(Duration::from_secs(3600))
                .build()
                .unwrap()
        };
        let (kept, rests) = (engine(None), engine(Some(Duration::from_secs(10))));
        let d = |a: i64, ts: &[&str]| {
            let rows: Vec<_> = ts
                .iter()
                .map(|t| serde_json::json!({"id": t, "t": t}))
                .collect();
            serde_json::json!({"a": a, "rows": rows})
        };
        let open = |e: StateTemplate| async move {
            let init = e.new_session("p.html", &d(1, &["x", "y"])).await.unwrap();
            e.session_unchecked(&init.session_id).unwrap()
        };
        let (k, r, joined, connected) = (
            open(kept.clone()).await,
            open(rests.clone()).await,
            open(rests.clone()).await,
            open(rests.clone()).await,
        );
        let (_resync, _sub) = joined.join().await.unwrap();
        let conn = connected.connection();
        let resting = |s: &Session| s.inner.state.try_lock().unwrap().is_resting();
        tokio::time::advance(Duration::from_secs(9)).await;
        rests.cleanup().await.unwrap();
        assert!(!resting(&r), "rested before its time");
        tokio::time::advance(Duration::from_secs(2)).await;
        kept.cleanup().await.unwrap();
        rests.cleanup().await.unwrap();
        assert!(resting(&r), "an idle unjoined session keeps its tree");
        assert!(!resting(&k), "rested without rest_unjoined_after");
        assert!(
            !resting(&joined) && !resting(&connected),
            "a joined session rested"
        );
        drop(conn);

        // A render of a resting page: the same seq and, once joined, the
        // same page and frames.
        for (a, ts) in [
            (2, vec!["x", "z", "y"]),
            (2, vec!["x", "z", "y"]),
            (3, vec!["z"]),
        ] {
            assert_eq!(
                k.render(&d(a, &ts)).await.unwrap(),
                r.render(&d(a, &ts)).await.unwrap()
            );
            r.inner.state.try_lock().unwrap().rest();
        }
        // A failed render of a resting page reports its error and leaves
        // the page as it was (with its tree rendered again).
        let before = k.html().await;
        assert!(r.render(&d(0, &["x"])).await.is_err());
        assert_eq!(r.html().await, before);
        r.inner.state.try_lock().unwrap().rest();
        let ((kj, mut ks), (rj, mut rs)) = (k.join().await.unwrap(), r.join().await.unwrap());
        assert_eq!(
            (kj.seq(), kj.html(), kj.frame()),
            (rj.seq(), rj.html(), rj.frame())
        );
        assert!(!resting(&r), "a joined page rests");
        k.render(&d(4, &["y", "z"])).await.unwrap();
        r.render(&d(4, &["y", "z"])).await.unwrap();
        match (ks.recv().await, rs.recv().await) {
            (Some(crate::SessionEvent::Patch(a)), Some(crate::SessionEvent::Patch(b))) => {
                assert_eq!(a.frame(), b.frame())
            }
            other => panic!("expected two patches, got {other:?}"),
        }
    }
}
