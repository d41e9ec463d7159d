//! The seed's single-session API (`SetInitialData`, `SendUpdate`,
//! `GetUpdateChannel`) as a thin layer over one default session.

use std::fmt;
use std::sync::Arc;

use serde::Serialize;
use tokio::sync::broadcast;

use super::{Session, StateTemplate};
use crate::protocol::{Action, Update};
use crate::{Error, ErrorKind, Result};

/// One page, one default session, one update channel: the API of the
/// original seed, for apps that stream [`Update`]s themselves.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> statetemplate::Result<()> {
/// # let mut env = minijinja::Environment::new();
/// # env.add_template("count.html", "<b>{{ n }}</b>").unwrap();
/// # let engine = statetemplate::StateTemplate::builder(env).build()?;
/// let renderer = engine.renderer("count.html");
/// let mut updates = renderer.update_channel();
/// let html = renderer.set_initial_data(&serde_json::json!({"n": 1})).await?;
/// renderer.send_update(&serde_json::json!({"n": 2})).await?;
/// let u = updates.recv().await.unwrap();
/// assert_eq!(serde_json::to_value(&u).unwrap()["html"], "2");
/// # Ok(()) }
/// ```
pub struct Renderer {
    engine: StateTemplate,
    template: String,
    shared: Arc<Shared>,
}

struct Shared {
    session: tokio::sync::Mutex<Option<Session>>,
    tx: broadcast::Sender<Update>,
}

impl fmt::Debug for Renderer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Renderer")
            .field("template", &self.template)
            .finish_non_exhaustive()
    }
}

impl Renderer {
    pub(crate) fn new(engine: StateTemplate, template: &str) -> Renderer {
        let (tx, _) = broadcast::channel(engine.inner.config.subscriber_capacity);
        Renderer {
            engine,
            template: template.to_owned(),
            shared: Arc::new(Shared {
                session: tokio::sync::Mutex::new(None),
                tx,
            }),
        }
    }

    /// Renders the page with `data` and returns its full annotated HTML.
    /// The first call creates the default session; a later call renders
    /// `data` on it (channels see the changes) and returns the whole page.
    pub async fn set_initial_data<S: Serialize + ?Sized>(&self, data: &S) -> Result<String> {
        let mut slot = self.shared.session.lock().await;
        if let Some(s) = slot.as_ref().filter(|s| !s.is_closed()) {
            let s = s.clone();
            self.forward(&s, data).await?;
            return Ok(s.html().await);
        }
        let initial = self.engine.new_session(&self.template, data).await?;
        let s = self
            .engine
            .session_unchecked(&initial.session_id)
            .ok_or_else(|| Error::new(ErrorKind::SessionClosed, "the new session was evicted"))?;
        *slot = Some(s);
        Ok(initial.html)
    }

    /// Renders `data` on the default session; every channel receives the
    /// resulting updates. Fails before [`Renderer::set_initial_data`].
    pub async fn send_update<S: Serialize + ?Sized>(&self, data: &S) -> Result<()> {
        let slot = self.shared.session.lock().await;
        let s = slot
            .as_ref()
            .ok_or_else(|| Error::new(ErrorKind::Config, "send_update before set_initial_data"))?;
        self.forward(s, data).await
    }

    /// Renders while holding the slot lock, so updates reach the channel in
    /// render order.
    async fn forward<S: Serialize + ?Sized>(&self, s: &Session, data: &S) -> Result<()> {
        if let (_, Some(patch)) = s.render_patch(data).await? {
            for u in patch.updates() {
                let _ = self.shared.tx.send(u);
            }
        }
        Ok(())
    }

    /// A channel of [`Update`]s, one per changed fragment, in order. Each
    /// call gives an independent receiver. A receiver that falls too far
    /// behind gets one `replace` of the root fragment (`fragment_id` "")
    /// with the whole page, then continues.
    pub fn update_channel(&self) -> UpdateReceiver {
        UpdateReceiver {
            rx: self.shared.tx.subscribe(),
            shared: self.shared.clone(),
            floor: 0,
            lagged: false,
        }
    }

    /// The default session, once created.
    pub async fn session(&self) -> Option<Session> {
        self.shared.session.lock().await.clone()
    }
}

/// Receives a [`Renderer`]'s updates.
pub struct UpdateReceiver {
    rx: broadcast::Receiver<Update>,
    shared: Arc<Shared>,
    floor: u64,
    /// Lagged, and the root replace is not yet handed out (so that `recv`
    /// is cancel safe).
    lagged: bool,
}

impl fmt::Debug for UpdateReceiver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpdateReceiver")
            .field("seq", &self.floor)
            .finish_non_exhaustive()
    }
}

impl UpdateReceiver {
    /// The next update; `None` once the renderer is dropped. Cancel safe.
    pub async fn recv(&mut self) -> Option<Update> {
        loop {
            if self.lagged {
                let session = self.shared.session.lock().await.clone()?;
                let page = session.inner.state.lock().await;
                let (seq, html) = (page.seq(), page.html());
                drop(page);
                self.floor = seq;
                self.lagged = false;
                return Some(Update {
                    fragment_id: String::new(),
                    html,
                    action: Action::Replace,
                    target: None,
                    timestamp: crate::protocol::now_millis(),
                    seq,
                });
            }
            match self.rx.recv().await {
                Ok(u) if u.seq <= self.floor => continue,
                Ok(u) => return Some(u),
                Err(broadcast::error::RecvError::Lagged(_)) => self.lagged = true,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}
