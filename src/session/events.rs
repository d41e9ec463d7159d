//! What sessions hand out: the events a [`Subscriber`] receives
//! ([`SessionEvent`], [`Rendered`], [`Resync`]), a reconnect's
//! [`Catchup`] and its [`KeptFrame`]s, the [`Connection`] guard, and the
//! [`InitialRender`] a new session starts with.

use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use serde::Serialize;
use tokio::sync::broadcast;

use super::Session;
#[cfg(doc)]
use super::StateTemplate;
use super::pool::Pool;
use super::state::SessionInner;
use crate::fragment::{LivePage, Patch};
use crate::id::SessionId;
use crate::protocol::Update;

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
    /// The seq the HTML is of: a client that starts from this page connects
    /// with it and gets no page content again (see [`crate::Live::mount`]).
    pub seq: u64,
    /// The page incarnation the HTML is of (see [`Resync::epoch`]), or empty
    /// when not known here (a page rendered from the store for a session
    /// another instance owns): then the client gets a join frame.
    pub epoch: String,
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

/// An open client connection of a session; see [`Session::connection`].
pub struct Connection {
    pub(super) session: Session,
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

pub(super) fn snapshot(page: &mut LivePage, epoch: u64) -> Resync {
    // A resting page renders its tree once, for both.
    let _ = page.wake();
    Resync {
        seq: page.seq(),
        html: page.html(),
        frame: page.join_frame(),
        epoch: format!("{epoch:016x}"),
    }
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
    /// An event the server pushes to the page (see [`Session::push`]):
    /// not a change of the page, so it has no seq of its own.
    Push(Arc<Pushed>),
}

impl SessionEvent {
    /// The session `seq` the event brings the client to (for a
    /// [`SessionEvent::Push`], which changes no seq: 0).
    pub fn seq(&self) -> u64 {
        match self {
            SessionEvent::Patch(p) => p.seq,
            SessionEvent::Resync(r) => r.seq,
            SessionEvent::Push(_) => 0,
        }
    }
}

/// An event pushed to a session's tabs (see [`Session::push`]).
#[derive(Debug)]
pub struct Pushed {
    pub(super) name: String,
    pub(super) payload: serde_json::Value,
    pub(super) frame: String,
}

impl Pushed {
    /// The event's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its payload.
    pub fn payload(&self) -> &serde_json::Value {
        &self.payload
    }

    /// The wire frame (`{"t":"push","n":NAME,"d":PAYLOAD}`).
    pub fn frame(&self) -> &str {
        &self.frame
    }
}

/// A frame a session keeps for clients that reconnect (see
/// [`Session::resume`]): its seq and wire form, shared with the
/// [`Rendered`] it came from.
#[derive(Debug, Clone)]
pub struct KeptFrame {
    pub(super) seq: u64,
    pub(super) frame: Arc<str>,
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
    pub(super) seq: u64,
    pub(super) timestamp_ms: u64,
    pub(super) patch: Patch,
    pub(super) frame: Arc<str>,
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
    pub(super) seq: u64,
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
    pub(super) rx: Option<broadcast::Receiver<SessionEvent>>,
    pub(super) session: Weak<SessionInner>,
    /// Events at or below this seq are already reflected in what the
    /// subscriber was given.
    pub(super) floor: u64,
    /// The receiver lagged and the resync is not yet handed out. Kept here,
    /// not in the future's state, so that `recv` is cancel safe: a `recv`
    /// dropped while it waits for the page lock resyncs on the next call.
    pub(super) lagged: bool,
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

    /// Whether the next [`recv`](Self::recv) is a resync (the subscriber
    /// fell behind; the resync waits for the page lock).
    pub(crate) fn owes_resync(&self) -> bool {
        self.lagged && self.rx.is_some()
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
                Ok(ev @ SessionEvent::Push(_)) => return Some(ev),
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
