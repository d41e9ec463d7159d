//! A cancel that tells the truth. The browser cannot know whether a file it
//! aborted reached the server: its upload may have been sent whole (and
//! kept) before `xhr.upload` said so. So each upload carries an id
//! (`X-St-Upload-Id`), and after an abort the client asks
//! `POST {prefix}/upload/NAME/cancel` with the same id. The answer is
//! authoritative:
//!
//! - the file has not reached its handler (still arriving, cut short, or
//!   not arrived at all): it never will (a late body is refused), and the
//!   answer is `{"cancelled":true}`;
//! - the handler has run, or is running: the answer is the upload's own
//!   (waited for), so the page says "done" about a file that was kept.
//!
//! Each upload name keeps the recent outcomes in a bounded table.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

/// How many outcomes an upload name remembers (over all sessions), and for
/// how long a finished one is kept once the table is full.
const CAP: usize = 4096;
const KEEP: Duration = Duration::from_secs(120);
/// How long a cancel waits for a handler that is running.
const WAIT: Duration = Duration::from_secs(30);

/// Where one upload is.
#[derive(Clone, Debug, PartialEq)]
enum Phase {
    /// The body is arriving.
    Receiving,
    /// It never reaches the handler: cancelled, cut short or refused
    /// before it.
    Cancelled,
    /// The handler is running.
    Handling,
    /// The handler's answer (status, JSON body).
    Done(u16, Arc<str>),
}

impl Phase {
    fn finished(&self) -> bool {
        matches!(self, Phase::Cancelled | Phase::Done(..))
    }
}

struct Slot {
    phase: watch::Sender<Phase>,
    at: Instant,
}

type Key = (String, String);

/// The outcomes of one upload name's recent uploads, by (session, id).
#[derive(Default)]
pub(super) struct Outcomes {
    slots: Mutex<HashMap<Key, Slot>>,
}

/// Whether an upload id is one the client may send: 1 to 64 of
/// `[A-Za-z0-9_-]`.
pub(super) fn valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// One upload's place in the table, from its first byte to its answer.
/// Dropped before [`Ticket::handling`] (the body was cut short, refused, or
/// the request went away), the upload counts as cancelled.
pub(super) struct Ticket {
    outcomes: Arc<Outcomes>,
    key: Key,
}

impl Outcomes {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Slot>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn insert(map: &mut HashMap<Key, Slot>, key: Key, phase: Phase) {
        if map.len() >= CAP {
            let now = Instant::now();
            map.retain(|_, s| !s.phase.borrow().finished() || now - s.at < KEEP);
            // Still full (a burst): the oldest finished go first.
            if map.len() >= CAP {
                let mut done: Vec<(Instant, Key)> = map
                    .iter()
                    .filter(|(_, s)| s.phase.borrow().finished())
                    .map(|(k, s)| (s.at, k.clone()))
                    .collect();
                done.sort_unstable_by_key(|(at, _)| *at);
                for (_, k) in done.into_iter().take(map.len() + 1 - CAP / 2) {
                    map.remove(&k);
                }
            }
        }
        map.insert(
            key,
            Slot {
                phase: watch::Sender::new(phase),
                at: Instant::now(),
            },
        );
    }

    /// An upload `id` of session `sid` starts arriving. Refused when it was
    /// cancelled first (its cancel overtook it) or the id was used before.
    pub(super) fn begin(
        self: &Arc<Self>,
        sid: &str,
        id: &str,
    ) -> std::result::Result<Ticket, &'static str> {
        let key = (sid.to_owned(), id.to_owned());
        let mut map = self.lock();
        match map.get(&key).map(|s| s.phase.borrow().clone()) {
            Some(Phase::Cancelled) => return Err("The upload was cancelled."),
            Some(_) => return Err("This upload was sent already."),
            None => Outcomes::insert(&mut map, key.clone(), Phase::Receiving),
        }
        Ok(Ticket {
            outcomes: self.clone(),
            key,
        })
    }

    /// The client gave up on upload `id`: the answer it should show, as
    /// (status, JSON body). See the module's doc.
    pub(super) async fn cancel(&self, sid: &str, id: &str) -> (u16, String) {
        let cancelled = || (200, r#"{"cancelled":true}"#.to_owned());
        let mut rx = {
            let key = (sid.to_owned(), id.to_owned());
            let mut map = self.lock();
            let Some(slot) = map.get(&key) else {
                // Not arrived (yet): a late arrival is refused.
                Outcomes::insert(&mut map, key, Phase::Cancelled);
                return cancelled();
            };
            let sent = slot.phase.send_if_modified(|p| {
                let stop = *p == Phase::Receiving;
                if stop {
                    *p = Phase::Cancelled;
                }
                stop
            });
            if sent {
                return cancelled();
            }
            slot.phase.subscribe()
        };
        let done = tokio::time::timeout(WAIT, rx.wait_for(|p| p.finished()))
            .await
            .map(|r| r.map(|p| p.clone()));
        match done {
            Ok(Ok(Phase::Done(status, json))) => (status, json.to_string()),
            Ok(Ok(_)) => cancelled(),
            _ => (
                202,
                r#"{"error":"The upload is still being processed; reload the page later to see it."}"#
                    .to_owned(),
            ),
        }
    }
}

impl Ticket {
    /// The whole file is here: the handler may run, unless the upload was
    /// cancelled while it arrived.
    pub(super) fn handling(&mut self) -> bool {
        self.step(Phase::Receiving, Phase::Handling)
    }

    /// The handler's answer, for a cancel that asks.
    pub(super) fn finish(self, status: u16, json: &str) {
        self.step(Phase::Handling, Phase::Done(status, json.into()));
    }

    /// Moves the upload from `from` to `to`; false if it was elsewhere.
    fn step(&self, from: Phase, to: Phase) -> bool {
        let mut map = self.outcomes.lock();
        let Some(slot) = map.get_mut(&self.key) else {
            return false;
        };
        let moved = slot.phase.send_if_modified(|p| {
            let go = *p == from;
            if go {
                *p = to;
            }
            go
        });
        if moved {
            slot.at = Instant::now();
        }
        moved
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        // Never reached the handler: it never will.
        if !self.step(Phase::Receiving, Phase::Cancelled) {
            // The handler's task went away without an answer.
            self.step(Phase::Handling, Phase::Done(500, HANDLER_GONE.into()));
        }
    }
}

const HANDLER_GONE: &str = r#"{"error":"The upload failed."}"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_table_stays_bounded_and_keeps_uploads_in_flight() {
        let o = Arc::new(Outcomes::default());
        let mut live = o.begin("s", "live").unwrap();
        // A flood of cancels for ids that never come.
        for i in 0..3 * CAP {
            assert_eq!(o.cancel("s", &format!("x{i}")).await.0, 200);
            assert!(o.lock().len() <= CAP);
        }
        assert!(live.handling(), "the upload in flight was not forgotten");
        live.finish(200, r#"{"ok":true}"#);
        assert_eq!(o.cancel("s", "live").await, (200, r#"{"ok":true}"#.into()));
        assert!(o.begin("s", "live").is_err(), "an id is used once");
        assert!(!valid_id("") && !valid_id("a.b") && valid_id("A-z_09"));
    }
}
