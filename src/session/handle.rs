//! The [`Session`] handle: renders, joins and resumes, groups, activity,
//! tokens.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::Serialize;
use tracing::Instrument;

use super::engine::EngineInner;
use super::events::{Catchup, Connection, KeptFrame, Rendered, Resync, Subscriber, snapshot};
use super::pool::Pool;
use super::state::SessionInner;
#[cfg(doc)]
use super::{Builder, SessionEvent, StateTemplate};
use crate::fragment::{Edit, LivePage, Patch};
use crate::id::SessionId;
use crate::rate::Bucket;
use crate::store::{Append, SessionStore};
use crate::{Error, ErrorKind, Result};

/// A handle on one session. Cheap to clone; all clones act on the same
/// session, and renders from any of them are applied one at a time.
#[derive(Clone)]
pub struct Session {
    pub(super) inner: Arc<SessionInner>,
    pub(super) engine: Arc<EngineInner>,
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

    /// The template the session renders now.
    pub fn template(&self) -> Arc<str> {
        self.inner.template()
    }

    /// The session's seq and a *fresh* full render of its current data
    /// (not the incrementally maintained page): the oracle a test compares
    /// a client's DOM with.
    pub async fn fresh_render(&self) -> Result<(u64, String)> {
        let page = self.inner.state.lock().await;
        let (seq, data, template) = (page.seq(), page.data().clone(), self.inner.template());
        drop(page);
        let html = self.engine.fragments.render_html(&template, &data)?;
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
    pub(super) async fn render_locked(
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
        // In a cluster, every frame is published (followers elsewhere).
        let wanted =
            !patch.is_empty() && (s.outlet.lock().expect("lock").wanted() || e.cluster.is_some());
        let (frame, first_sent) = match wanted.then(|| page.encode_sent(&patch)).flatten() {
            Some((f, first)) => (Some(Arc::<str>::from(f)), first),
            None => (None, Vec::new()),
        };
        let mut change = Append::new(&record, patch.delta());
        if let Some(f) = &frame {
            change = change.with_frame(f);
        }
        if let Err(err) = e.store.append(change).await {
            page.restore(checkpoint);
            page.unsend(&first_sent);
            tracing::warn!(error = %err, "store append failed; render undone");
            if err.kind() == ErrorKind::Conflict && e.cluster.is_some() {
                // Another instance may own it now: then it stops here.
                let (e, s) = (e.clone(), s.clone());
                tokio::spawn(async move { e.check_owner(&s).await });
            }
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
        page.wake()?;
        let mut sub = self.updates();
        let resync = snapshot(&mut page, self.inner.page_epoch);
        sub.floor = resync.seq;
        self.keep_replay();
        drop(page);
        self.mark_joined();
        Ok((resync, sub))
    }

    /// Keeps the recent-frame buffer from now on (a client joined, and may
    /// resume). Called with the page locked, after the client's page is
    /// taken, as a join always did.
    fn keep_replay(&self) {
        if self.engine.config.replay_frames > 0 {
            let mut outlet = self.inner.outlet.lock().expect("lock");
            outlet.replay.get_or_insert_with(Default::default);
        }
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

    /// Connects a client that starts from the page it was served: the HTML
    /// of seq `seq` of page incarnation `epoch` (the root element's
    /// `data-st-seq` and `data-st-epoch`, see [`crate::Live::mount`]). When
    /// the page is still that one, the client gets only the statics table
    /// entries the page uses ([`LivePage::page_statics`]) and reads the rest
    /// from its DOM: no page content is sent again. Otherwise (the page
    /// changed since, or is another incarnation) it gets a resync, as a join.
    pub(crate) async fn resume_page(
        &self,
        seq: u64,
        epoch: &str,
    ) -> Result<(std::result::Result<String, Resync>, Subscriber)> {
        let mut page = self.inner.state.lock().await;
        if self.is_closed() {
            return Err(Session::closed_error());
        }
        if epoch == format!("{:016x}", self.inner.page_epoch) && seq == page.seq() {
            // Subscribed first, as a join does.
            let mut sub = self.updates();
            if let Some(statics) = page.page_statics() {
                sub.floor = seq;
                self.keep_replay();
                drop(page);
                self.mark_joined();
                return Ok((Ok(statics), sub));
            }
        }
        drop(page);
        let (r, sub) = self.join().await?;
        Ok((Err(r), sub))
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
            let mut missed = complete_run(frames, seq, now);
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
    /// complete (see [`stored_run`]).
    async fn stored_frames(&self, seq: u64, now: u64) -> Option<Vec<KeptFrame>> {
        stored_run(&*self.engine.store, &self.inner.id, seq, now).await
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

    /// [`Session::update`] with an async `f`: it gets the data as `T`
    /// (owned) and returns the new data, which the session renders. The
    /// session's lock is held while `f` runs, so its other renders and
    /// updates wait for it (and nothing is lost between two tabs): keep `f`
    /// short, and never render to this same session from inside it (that
    /// waits for the lock `f` holds). If `f` or the render fails, nothing
    /// changes.
    pub async fn update_async<T, F, Fut>(&self, f: F) -> Result<u64>
    where
        T: serde::de::DeserializeOwned + Serialize + Send + 'static,
        F: FnOnce(T) -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let mut page = self.inner.state.lock().await;
        if self.is_closed() {
            return Err(Session::closed_error());
        }
        let data = match page.take_typed::<T>() {
            Some(t) => *t,
            None => T::deserialize(page.data().clone()).map_err(Error::data)?,
        };
        let data = Box::new(f(data).await?);
        if self.is_closed() {
            return Err(Session::closed_error());
        }
        let changed = self.change_page(&mut page, |p| p.update(&*data));
        if changed.is_ok() {
            page.keep_typed(data);
        }
        let span = tracing::debug_span!("session", sid = %self.inner.id.short());
        Ok(self.commit(page, changed?).instrument(span).await?.0)
    }

    /// Makes the session render another template, with `data`: its tabs
    /// swap the whole page over the same socket (one frame), as a link with
    /// `st-navigate` asks for (see [`crate::Live::on_navigate`]). From then
    /// on the session is that page: renders diff against it, its record
    /// names it, and a restart restores it. On error (an unknown template,
    /// a template error) nothing changes. Returns the seq.
    pub async fn navigate<S: Serialize + ?Sized>(&self, template: &str, data: &S) -> Result<u64> {
        let mut page = self.inner.state.lock().await;
        let name = self.engine.template_name(template);
        let old = std::mem::replace(&mut *self.inner.template.lock().expect("lock"), name);
        let undo = || *self.inner.template.lock().expect("lock") = old.clone();
        let changed = match self.change_page(&mut page, |p| p.switch_to(template, data)) {
            Ok(c) => c,
            Err(e) => {
                undo();
                return Err(e);
            }
        };
        let span = tracing::debug_span!("session", sid = %self.inner.id.short());
        let seq = match self.commit(page, changed).instrument(span).await {
            Ok((seq, _)) => seq,
            Err(e) => {
                undo();
                return Err(e);
            }
        };
        // A store that logs deltas keeps the template it was created with:
        // the whole record goes again, naming the new one (what a restore
        // renders).
        let page = self.inner.state.lock().await;
        let record = self.engine.record(&self.inner, &page);
        self.engine.store.save(&record).await.inspect_err(|e| {
            tracing::warn!(error = %e, "the store kept the old template of a navigated session");
        })?;
        Ok(seq)
    }

    /// Pushes event `name` with `payload` to every tab connected to the
    /// session now: the JS client fires `st:push` on the page's root (and
    /// on to the hooks that handle `name`, see `docs/hooks.md`). Not a
    /// change of the page: it is not stored, not replayed, and a tab that
    /// is not connected misses it. In a cluster it also reaches the tabs
    /// that follow the session from other instances. Returns how many tabs
    /// of this instance it went to (0 when none is connected). `name` is 1
    /// to 128 bytes.
    pub fn push<P: Serialize + ?Sized>(&self, name: &str, payload: &P) -> Result<usize> {
        if name.is_empty() || name.len() > 128 {
            return Err(Error::protocol("a pushed event's name is 1 to 128 bytes"));
        }
        if self.is_closed() {
            return Err(Session::closed_error());
        }
        let payload = serde_json::to_value(payload).map_err(Error::data)?;
        let frame = serde_json::json!({"t": "push", "n": name, "d": payload}).to_string();
        let ev = Arc::new(super::events::Pushed {
            name: name.to_owned(),
            payload,
            frame,
        });
        if let Some(link) = self.engine.cluster.clone() {
            // Tabs that follow from other instances get it too (best effort,
            // like the event itself).
            let (id, frame) = (self.inner.id, ev.frame.clone());
            tokio::spawn(async move {
                if let Err(e) = link.push(&id, &frame).await {
                    tracing::debug!(error = %e, "cluster: a pushed event did not reach the followers");
                }
            });
        }
        let outlet = self.inner.outlet.lock().expect("lock");
        Ok(if outlet.push(ev) {
            outlet.subscribers()
        } else {
            0
        })
    }

    /// Shows a one-time message on the session's tabs (a flash message):
    /// `kind` is `info`, `success`, `warning` or `error` (the class
    /// `st-flash-KIND` styles it), `message` the text. The JS client shows
    /// it in the page's `[st-flash]` element (made if the page has none)
    /// for 6 seconds, or until the next one. It is a [`Session::push`] of
    /// `st:flash`: an app that shows messages itself listens for that.
    pub fn flash(&self, kind: &str, message: &str) -> Result<usize> {
        if !matches!(kind, "info" | "success" | "warning" | "error") {
            return Err(Error::protocol(format!(
                "a flash kind is info, success, warning or error, not {kind:?}"
            )));
        }
        self.push(
            "st:flash",
            &serde_json::json!({"kind": kind, "msg": message}),
        )
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
        drop(mine);
        self.engine
            .groups
            .entry(g)
            .or_default()
            .insert(self.inner.id);
        self.save_groups();
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
        self.save_groups();
    }

    /// What the debug listing shows of this session (see
    /// `Live::debug_sessions`): seq, epoch, groups, connections, idle time
    /// and the recent frames kept for resume (newest last).
    #[cfg_attr(not(feature = "axum"), allow(dead_code))]
    pub(crate) async fn debug_info(&self) -> serde_json::Value {
        let seq = self.seq().await;
        let now = self.engine.clock.now_ms();
        let last = self.inner.last_access.load(Ordering::Relaxed);
        let groups: Vec<String> = self
            .inner
            .groups
            .lock()
            .expect("lock")
            .iter()
            .flat_map(|v| v.iter().map(|g| g.to_string()))
            .collect();
        let frames: Vec<serde_json::Value> = {
            let outlet = self.inner.outlet.lock().expect("lock");
            outlet
                .replay
                .iter()
                .flat_map(|b| b.iter())
                .map(|f| serde_json::json!({"seq": f.seq(), "bytes": f.frame().len(), "frame": f.frame()}))
                .collect()
        };
        serde_json::json!({
            "id": self.inner.id.to_string(),
            "template": &*self.inner.template(),
            "seq": seq,
            "epoch": self.epoch(),
            "version": self.inner.version.load(Ordering::Relaxed),
            "joined": self.is_joined(),
            "owner": self.engine.cluster.as_ref().map_or("this process", |l| l.instance()),
            "connections": self.connections(),
            "subscribers": self.inner.outlet.lock().expect("lock").subscribers(),
            "groups": groups,
            "idle_ms": now.saturating_sub(last),
            "frames": frames,
        })
    }

    /// The annotated HTML of the page as it is now.
    pub async fn html(&self) -> String {
        self.inner.state.lock().await.html()
    }

    /// The seq and the annotated HTML of the page now, read together.
    pub(crate) async fn page_now(&self) -> (u64, String) {
        let page = self.inner.state.lock().await;
        (page.seq(), page.html())
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

/// The frames of session `id` after `seq` up to `now` that `store` kept,
/// if they run complete (a store error counts as none: the client gets a
/// resync).
pub(super) async fn stored_run(
    store: &dyn SessionStore,
    id: &SessionId,
    seq: u64,
    now: u64,
) -> Option<Vec<KeptFrame>> {
    let kept = match store.frames(id, seq).await {
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
    complete_run(frames, seq, now)
}

/// `frames` if they run from right after `seq` to `now` with no gap (a
/// client applies them without seq numbers: each is one more), else `None`.
pub(super) fn complete_run(frames: Vec<KeptFrame>, seq: u64, now: u64) -> Option<Vec<KeptFrame>> {
    let complete = frames
        .iter()
        .enumerate()
        .all(|(i, f)| f.seq == seq + 1 + i as u64)
        && frames.last().map_or(seq == now, |f| f.seq == now);
    complete.then_some(frames)
}
