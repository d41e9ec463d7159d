//! The engine in a [`Cluster`](crate::cluster::Cluster): answering other
//! instances (joins, forwarded events, hand-overs), taking leases, handing
//! sessions over, broadcasts and presence.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde::Serialize;
use serde_json::{Value as Json, json};
use tokio::sync::{broadcast, mpsc};

use super::engine::EngineInner;
use super::events::{InitialRender, snapshot};
use super::state::SessionInner;
use super::{Session, StateTemplate};
use crate::cluster::{Broadcast, Inbound, Joined, Link, Op};
use crate::id::SessionId;
use crate::store::SessionRecord;
use crate::token::Claims;
use crate::{Error, ErrorKind, Result};

/// What an owner answers for a session it does not hold (any more).
pub(crate) const NOT_HERE: &str = "not_here";

/// Runs a forwarded client frame on a session owned here: the transport's
/// handlers, registered by `Live` (`Some` reply: what the socket sends).
pub(crate) type RemoteEventFn =
    dyn Fn(Session, Option<u64>, String) -> BoxFuture<'static, Option<String>> + Send + Sync;

/// Handles what other instances send this one, until the engine is gone.
pub(super) async fn serve(engine: Weak<EngineInner>, mut inbox: mpsc::UnboundedReceiver<Inbound>) {
    while let Some(m) = inbox.recv().await {
        let Some(e) = engine.upgrade() else { break };
        match m {
            Inbound::Broadcast(b) => {
                let _ = e.bcast.send(b);
            }
            Inbound::Lapsed => {
                tokio::spawn(async move { e.check_leases().await });
            }
            Inbound::Call { from, id, sid, op } => {
                tokio::spawn(async move {
                    let answer = answer(&e, &sid, op).await;
                    if let Some(l) = &e.cluster {
                        l.answer(&from, id, answer).await;
                    }
                });
            }
        }
    }
}

async fn answer(
    e: &Arc<EngineInner>,
    sid: &SessionId,
    op: Op,
) -> std::result::Result<Json, String> {
    let s = e.live.get(sid).map(|s| s.clone());
    let Some(s) = s.filter(|s| !s.closed.load(Ordering::SeqCst)) else {
        return Err(NOT_HERE.to_owned());
    };
    let session = Session {
        inner: s,
        engine: e.clone(),
    };
    match op {
        Op::Join => {
            let j = session
                .remote_join()
                .await
                .map_err(|_| NOT_HERE.to_owned())?;
            serde_json::to_value(j).map_err(|e| e.to_string())
        }
        Op::Event { c, t } => {
            let _ = session.touch().await;
            let f = e.remote_events.read().expect("lock").clone();
            let Some(f) = f else {
                return Err("no event handlers on this instance".to_owned());
            };
            let reply = f(session.clone(), c, t).await;
            if session.inner.moved.load(Ordering::SeqCst) {
                // Handed over while the event ran: the follower asks the
                // new owner (the event's ref makes a second run a no-op).
                return Err(NOT_HERE.to_owned());
            }
            Ok(json!(reply))
        }
        Op::Release => {
            e.hand_over(&session.inner).await;
            Ok(Json::Null)
        }
    }
}

impl Session {
    /// The page for a follower's join (on another instance): as
    /// [`Session::join`], without a subscriber here (the follower gets the
    /// frames that follow from the store's channel).
    async fn remote_join(&self) -> Result<Joined> {
        let mut page = self.inner.state.lock().await;
        if self.is_closed() {
            return Err(Error::new(ErrorKind::SessionClosed, "closed"));
        }
        page.wake()?;
        let r = snapshot(&mut page, self.inner.page_epoch);
        if self.engine.config.replay_frames > 0 {
            let mut outlet = self.inner.outlet.lock().expect("lock");
            outlet.replay.get_or_insert_with(Default::default);
        }
        drop(page);
        self.inner.joined.store(true, Ordering::SeqCst);
        Ok(Joined {
            seq: r.seq,
            epoch: r.epoch().to_owned(),
            frame: r.frame().to_owned(),
            groups: self.groups(),
        })
    }

    /// The groups the session is in.
    pub(crate) fn groups(&self) -> Vec<String> {
        self.inner
            .groups
            .lock()
            .expect("lock")
            .iter()
            .flat_map(|v| v.iter().map(|g| g.to_string()))
            .collect()
    }

    /// The engine this session belongs to.
    pub(crate) fn engine_handle(&self) -> StateTemplate {
        StateTemplate {
            inner: self.engine.clone(),
        }
    }

    /// Whether the session was handed over to another instance (its
    /// sockets reconnect rather than reload).
    pub(crate) fn is_moved(&self) -> bool {
        self.inner.moved.load(Ordering::SeqCst)
    }

    /// Keeps the session's groups where the next owner finds them.
    pub(super) fn save_groups(&self) {
        if let Some(l) = self.engine.cluster.clone() {
            let (id, groups) = (self.inner.id, self.groups());
            tokio::spawn(async move {
                if let Err(e) = l.save_groups(&id, &groups).await {
                    tracing::warn!(error = %e, "cluster: groups not kept");
                }
            });
        }
    }
}

impl EngineInner {
    /// The session a token names, if the token opens and names
    /// `session_id` (every failure is [`ErrorKind::InvalidSession`]).
    pub(super) fn named(
        &self,
        session_id: &str,
        token: &str,
        now: u64,
    ) -> Result<(SessionId, Claims)> {
        let claims = self.keys.open(token, now)?;
        let id: SessionId = session_id.parse().map_err(|_| Error::invalid_session())?;
        if !claims.names(&id) {
            return Err(Error::invalid_session());
        }
        Ok((id, claims))
    }

    /// The stored record of a session that lives on another instance,
    /// checked as opening it would be (there, unexpired, of the token's
    /// generation).
    pub(super) async fn stored_record(
        &self,
        id: &SessionId,
        claims: &Claims,
        now: u64,
    ) -> Result<SessionRecord> {
        let rec = self
            .store
            .load(id)
            .await?
            .ok_or_else(Error::invalid_session)?;
        if rec.expires_ms <= now || rec.generation != claims.generation {
            return Err(Error::invalid_session());
        }
        Ok(rec)
    }

    /// Takes the lease of `id` for this instance, asking a live owner to
    /// hand the session over; gives up after twice the lease (the owner
    /// neither answers nor dies).
    pub(super) async fn take_lease(&self, id: &SessionId) -> Result<()> {
        let Some(l) = &self.cluster else {
            return Ok(());
        };
        let deadline = tokio::time::Instant::now() + l.options().lease * 2;
        loop {
            let Some(owner) = l.claim(id).await? else {
                return Ok(());
            };
            match l.call(&owner, id, &Op::Release).await {
                Ok(_) => continue,
                Err(e) if e.kind() == ErrorKind::Conflict => {
                    // Not live there (any more): it gives the lease up.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => {
                    tracing::debug!(error = %e, owner, "cluster: owner did not hand over");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::new(
                    ErrorKind::Store,
                    format!(
                        "cluster: instance {owner} holds the session and does not hand it over"
                    ),
                ));
            }
        }
    }

    /// Gives a live session to whoever takes its lease next: it stops here
    /// (no renders; its sockets close with a code that makes their clients
    /// reconnect, wherever they land), its record stays in the store, and
    /// its lease is released.
    pub(super) async fn hand_over(&self, s: &Arc<SessionInner>) {
        s.moved.store(true, Ordering::SeqCst);
        if !s.closed.swap(true, Ordering::SeqCst) {
            let page = s.state.lock().await;
            s.end_subscribers();
            self.pools.lock().expect("lock").remove(&s.id);
            drop(page);
            self.live.remove_if(&s.id, |_, v| Arc::ptr_eq(v, s));
            self.leave_groups(s);
            tracing::debug!(sid = %s.id.short(), "session handed over");
        }
        if let Some(l) = &self.cluster {
            if let Err(e) = l.release(&s.id).await {
                tracing::warn!(error = %e, "cluster: lease not released (it runs out)");
            }
        }
    }

    /// After a refused append: if another instance owns the session now,
    /// it stops here (see [`EngineInner::hand_over`]).
    pub(super) async fn check_owner(&self, s: &Arc<SessionInner>) {
        let Some(l) = &self.cluster else { return };
        if let Ok(Some(owner)) = l.owner(&s.id).await {
            if owner != l.instance() {
                tracing::info!(sid = %s.id.short(), owner, "session owned elsewhere now; dropped here");
                self.hand_over(s).await;
            }
        }
    }

    /// After this instance's beat lapsed: every session live here whose
    /// lease does not name this instance any more (another instance took
    /// it for gone and claimed it, and may have rendered since) stops here
    /// (see [`EngineInner::hand_over`]), so its sockets reconnect to the
    /// page as it is now rather than wait on a copy nobody renders. A
    /// lease that cannot be read counts as lost: reconnecting costs a
    /// resume, a stale page would cost what the user sees.
    pub(super) async fn check_leases(&self) {
        let Some(l) = &self.cluster else { return };
        let live: Vec<Arc<SessionInner>> = self.live.iter().map(|s| s.value().clone()).collect();
        let mut lost = 0usize;
        for chunk in live.chunks(512) {
            let ids: Vec<SessionId> = chunk.iter().map(|s| s.id).collect();
            let held = l.holds(&ids).await.unwrap_or_else(|e| {
                tracing::warn!(error = %e, sessions = ids.len(), "cluster: leases not readable; sessions dropped here");
                vec![false; ids.len()]
            });
            for (s, held) in chunk.iter().zip(held) {
                if !held {
                    lost += 1;
                    self.hand_over(s).await;
                }
            }
        }
        tracing::info!(
            live = live.len(),
            lost,
            "cluster: leases checked after a lapsed beat"
        );
    }

    /// Connections in each group with members here: of the sessions this
    /// instance owns, and of the sockets it serves as a follower.
    fn local_presence(&self) -> HashMap<String, u64> {
        let mut counts: HashMap<String, u64> = HashMap::new();
        for g in self.groups.iter() {
            let n: u64 = g
                .value()
                .iter()
                .filter_map(|id| self.live.get(id))
                .map(|s| u64::from(s.connections.load(Ordering::Relaxed)))
                .sum();
            *counts.entry(g.key().to_string()).or_default() += n;
        }
        for (g, n) in self.followed_groups.lock().expect("lock").iter() {
            *counts.entry(g.clone()).or_default() += *n;
        }
        counts
    }
}

/// Publishes this instance's presence counts when they change.
pub(super) async fn presence_task(engine: Weak<EngineInner>, every: Duration) {
    let mut published: HashMap<String, u64> = HashMap::new();
    loop {
        tokio::time::sleep(every).await;
        let Some(e) = engine.upgrade() else { return };
        let Some(l) = e.cluster.clone() else { return };
        if e.shut.load(Ordering::SeqCst) {
            return;
        }
        let now = e.local_presence();
        let gone: Vec<String> = published
            .keys()
            .filter(|g| !now.contains_key(*g))
            .cloned()
            .collect();
        for g in gone {
            if l.set_presence(&g, 0).await.is_ok() {
                published.remove(&g);
            }
        }
        for (g, n) in now {
            if published.get(&g) != Some(&n) && l.set_presence(&g, n).await.is_ok() {
                published.insert(g, n);
            }
        }
    }
}

impl StateTemplate {
    /// Sends `message` on `topic` to every instance of the app (this one
    /// included; one instance without a cluster): each one's
    /// [`StateTemplate::broadcasts`] receivers get it once. Render it to
    /// the sessions it concerns there (say, `engine.group(topic)`): each
    /// instance renders only the sessions it owns, so a broadcast costs one
    /// message per instance and one render per session.
    ///
    /// Once each, in order, on every instance running when it is sent:
    /// with Redis, broadcasts go through a stream that each instance reads
    /// from the last entry it saw, so one whose connection drops gets them
    /// when it is back. Not kept for instances started later, nor past
    /// about the last 10,000. A render a broadcast asks for can still fail
    /// when the store stays unreachable (a dropped connection alone is
    /// tried again): [`Session::update`] says so, and it is the app's to
    /// retry.
    pub async fn broadcast<M: Serialize + ?Sized>(&self, topic: &str, message: &M) -> Result<()> {
        let b = Broadcast {
            topic: topic.to_owned(),
            message: serde_json::to_value(message).map_err(Error::data)?,
        };
        match &self.inner.cluster {
            Some(l) => l.broadcast(&b).await,
            None => {
                let _ = self.inner.bcast.send(b);
                Ok(())
            }
        }
    }

    /// The broadcasts sent by any instance from now on (see
    /// [`StateTemplate::broadcast`]). A receiver that falls more than 1,024
    /// behind misses the oldest (`recv` says how many).
    pub fn broadcasts(&self) -> broadcast::Receiver<Broadcast> {
        self.inner.bcast.subscribe()
    }

    /// How many client connections the sessions of `group` have over all
    /// instances: this instance's count now, and the others' as they last
    /// published it (every `presence_every`; an instance that stopped
    /// beating is left out once its lease runs out).
    pub async fn presence(&self, group: &str) -> Result<u64> {
        let e = &self.inner;
        let mine = e.local_presence().get(group).copied().unwrap_or(0);
        let Some(l) = &e.cluster else {
            return Ok(mine);
        };
        let others: u64 = l
            .presence(group)
            .await?
            .into_iter()
            .filter(|(name, _)| name != l.instance())
            .map(|(_, n)| n)
            .sum();
        Ok(mine + others)
    }

    /// This instance's name in its cluster (`None` without one).
    pub fn instance(&self) -> Option<&str> {
        self.inner.cluster.as_ref().map(|l| l.instance())
    }

    /// What a page load for an existing session needs (its HTML now and a
    /// fresh token), checked like [`StateTemplate::get_session`] and
    /// counting as activity. Unlike `get_session`, it does not move a
    /// session another live instance owns: the HTML is rendered here from
    /// the store's record, and the page's socket follows the owner (so a
    /// load balancer that sends a browser's requests anywhere does not
    /// move its session back and forth).
    pub async fn open_page(&self, session_id: &str, token: &str) -> Result<InitialRender> {
        let e = &self.inner;
        if let Some(link) = &e.cluster {
            let now = e.clock.now_ms();
            let (id, claims) = e.named(session_id, token, now)?;
            if !e.live.contains_key(&id) && link.claim(&id).await?.is_some() {
                let rec = e.stored_record(&id, &claims, now).await?;
                let exp = now + e.config.expiration.as_millis() as u64;
                e.store.touch(&id, now, exp).await?;
                let mut page = e.fragments.render(&rec.template, &rec.data)?;
                page.set_seq(rec.seq);
                return Ok(InitialRender {
                    html: page.html(),
                    session_id: id,
                    token: e.mint(id, rec.generation, now)?,
                    seq: rec.seq,
                    epoch: String::new(),
                });
            }
        }
        let s = self.get_session(session_id, token).await?;
        let (seq, html) = s.page_now().await;
        Ok(InitialRender {
            html,
            session_id: s.id(),
            token: s.token()?,
            seq,
            epoch: s.epoch(),
        })
    }

    /// The seq and a fresh full render of a session's data (the test
    /// oracle, see [`Session::fresh_render`]) without moving it: from the
    /// live page when it lives here, else from the store's record (what
    /// its owner last acknowledged).
    #[cfg_attr(not(feature = "axum"), allow(dead_code))]
    pub(crate) async fn fresh_anywhere(&self, sid: &str, token: &str) -> Result<(u64, String)> {
        let e = &self.inner;
        let (id, _) = e.named(sid, token, e.clock.now_ms())?;
        if let Some(s) = self.session_unchecked(&id) {
            return s.fresh_render().await;
        }
        let rec = e
            .store
            .load(&id)
            .await?
            .ok_or_else(Error::invalid_session)?;
        let html = e.fragments.render_html(&rec.template, &rec.data)?;
        Ok((rec.seq, html))
    }

    /// Registers how forwarded client frames run here (by `Live`).
    pub(crate) fn set_remote_events(&self, f: Arc<RemoteEventFn>) {
        *self.inner.remote_events.write().expect("lock") = Some(f);
    }

    /// The link, for the follower.
    pub(crate) fn link(&self) -> Option<&Arc<dyn Link>> {
        self.inner.cluster.as_ref()
    }
}
