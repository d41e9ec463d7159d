//! The state of one live session (`SessionInner`): its page, where its
//! frames go (`Outlet`), and which client events it has applied.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64};
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;

use super::Session;
use super::events::{KeptFrame, Rendered, SessionEvent};
use crate::fragment::LivePage;
use crate::id::SessionId;
use crate::rate::Bucket;

/// (client instance, highest event ref applied), oldest first.
type Applied = Vec<(u64, u64)>;

/// How many client instances per session [`Session::first_delivery`]
/// remembers (the most recent; an older one's resends would apply again).
const APPLIED_CLIENTS: usize = 16;

pub(super) struct SessionInner {
    pub(super) id: SessionId,
    /// The template it renders (changed by [`Session::navigate`]).
    pub(super) template: Mutex<Arc<str>>,
    pub(super) created_ms: u64,
    pub(super) state: tokio::sync::Mutex<LivePage>,
    pub(super) outlet: Mutex<Outlet>,
    /// Names the session's history (kept in the store's record: the same
    /// after a restart with a persistent store).
    pub(super) epoch: u64,
    /// What clients see as the epoch: the history's mixed with the layout
    /// of the template's compiled program, so frames are replayed only to
    /// a client that holds the same history *and* the same page layout (a
    /// deploy that changed the template gives a resync instead).
    pub(super) page_epoch: u64,
    /// The groups the session is in. Boxed so that a session in none (most
    /// are) pays 8 bytes for it, not 24.
    #[allow(clippy::box_collection)]
    pub(super) groups: Mutex<Option<Box<Vec<Arc<str>>>>>,
    pub(super) closed: AtomicBool,
    /// Closed because another instance took the session over (its sockets
    /// close with a code that makes their clients reconnect).
    pub(super) moved: AtomicBool,
    /// A client has joined (a socket, or [`Session::join`] /
    /// [`Session::resume`]): the session left the unjoined pool for good.
    pub(super) joined: AtomicBool,
    /// Open client connections (see [`Session::connection`]).
    pub(super) connections: AtomicU32,
    /// The events budget of all the session's connections together (made
    /// by the transport on the first event).
    pub(super) event_budget: Mutex<Option<Box<Bucket>>>,
    /// Per client instance that numbers its events, the highest ref applied
    /// (the most recent [`APPLIED_CLIENTS`] clients).
    pub(super) applied: Mutex<Option<Box<Applied>>>,
    /// The time of the last client activity (not of the last render).
    pub(super) last_access: AtomicU64,
    /// The expiry last written to the store (store writes on activity are
    /// skipped while it is recent enough).
    pub(super) stored_expiry: AtomicU64,
    /// The version of the record in the store: how many data changes were
    /// appended (changed only under the page lock).
    pub(super) version: AtomicU64,
    pub(super) generation: AtomicU32,
}

/// Where a session's frames go: its subscribers and its recent-frame buffer.
#[derive(Default)]
pub(super) struct Outlet {
    tx: Tx,
    /// Recent frames for clients that reconnect (`None` until a client
    /// joins: sessions nobody connects to keep and encode nothing). Only
    /// the seq and the wire frame are kept, not the patch (which holds the
    /// render trees of its version).
    /// Boxed so that a session nobody joined pays 8 bytes for it, not 32.
    #[allow(clippy::box_collection)]
    pub(super) replay: Option<Box<std::collections::VecDeque<KeptFrame>>>,
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
    pub(super) fn wanted(&mut self) -> bool {
        if let Tx::Open(s) = &self.tx {
            if s.receiver_count() == 0 {
                self.tx = Tx::Idle;
            }
        }
        matches!(self.tx, Tx::Open(_)) || self.replay.is_some()
    }

    /// Sends a frame to the subscribers and keeps it (the newest `keep`).
    pub(super) fn publish(&mut self, frame: Arc<Rendered>, keep: usize) {
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

    /// Sends a pushed event to the subscribers (not kept: a client that
    /// is not connected misses it).
    pub(super) fn push(&self, ev: Arc<super::events::Pushed>) -> bool {
        match &self.tx {
            Tx::Open(s) => s.send(SessionEvent::Push(ev)).is_ok(),
            _ => false,
        }
    }

    /// How many subscribers receive the session's frames here.
    pub(super) fn subscribers(&self) -> usize {
        match &self.tx {
            Tx::Open(s) => s.receiver_count(),
            _ => 0,
        }
    }

    pub(super) fn subscribe(
        &mut self,
        capacity: usize,
    ) -> Option<broadcast::Receiver<SessionEvent>> {
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

/// The epoch clients see for history `epoch` rendered with a program of
/// layout `layout` (see `SessionInner::page_epoch`).
pub(super) fn page_epoch(epoch: u64, layout: u64) -> u64 {
    epoch ^ layout.rotate_left(17)
}

impl SessionInner {
    pub(super) fn template(&self) -> Arc<str> {
        self.template.lock().expect("lock").clone()
    }

    pub(super) fn new(
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
            template: Mutex::new(template),
            created_ms,
            state: tokio::sync::Mutex::new(page),
            outlet: Mutex::new(Outlet::default()),
            epoch,
            page_epoch: epoch,
            groups: Mutex::new(None),
            closed: AtomicBool::new(false),
            moved: AtomicBool::new(false),
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
    pub(super) fn with_layout(mut self, layout: u64) -> SessionInner {
        self.page_epoch = page_epoch(self.epoch, layout);
        self
    }

    pub(super) fn end_subscribers(&self) {
        *self.outlet.lock().expect("lock") = Outlet {
            tx: Tx::Closed,
            replay: None,
        };
    }
}

impl Session {
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
}
