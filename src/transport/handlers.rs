//! Event handlers: what a handler gets ([`EventCtx`], with the app's
//! state), how handlers are registered on a [`Live`], and how one client
//! event runs its handler and is answered.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use futures_util::FutureExt;
use serde::de::DeserializeOwned;
use serde_json::Value as Json;

use super::Live;
use super::frames::ClientFrame;
use crate::session::{Session, StateTemplate};
use crate::{Error, ErrorKind, Result};

/// One event from the browser.
#[derive(Debug, Clone)]
pub struct Event {
    /// The handler name, from the element's `st-click="name"` (etc.).
    pub name: String,
    /// What the client sent with it (form fields, input value, `data-*`).
    pub payload: Json,
}

/// What an event handler gets: the event, its session, the engine, and
/// the app's state ([`EventCtx::state`]).
#[derive(Debug, Clone)]
pub struct EventCtx {
    /// The event.
    pub event: Event,
    /// The session the event came from.
    pub session: Session,
    /// The engine (to render to other sessions or a group).
    pub engine: StateTemplate,
    states: AppStates,
    reply: Arc<std::sync::Mutex<Option<Json>>>,
}

/// The app's state values, by type (see [`Live::with_state`]).
type States = HashMap<TypeId, Arc<dyn Any + Send + Sync>>;

#[derive(Clone, Default)]
pub(super) struct AppStates(Arc<States>);

impl std::fmt::Debug for AppStates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AppStates({} values)", self.0.len())
    }
}

impl EventCtx {
    /// The payload as `P`. A payload of the wrong shape is a
    /// [`ErrorKind::Protocol`] error, which the client receives as an error
    /// frame (`bad_payload`).
    pub fn payload<P: DeserializeOwned>(&self) -> Result<P> {
        P::deserialize(&self.event.payload).map_err(|e| {
            Error::new(
                ErrorKind::Protocol,
                format!("bad payload for event {:?}: {e}", self.event.name),
            )
        })
    }

    /// Answers the event with `value`: the client that sent it gets
    /// `{"t":"reply","r":REF,"d":VALUE}` instead of its bare ref, which a
    /// hook's `pushEvent` resolves its promise with (`docs/hooks.md`). The
    /// last call wins; without one, the answer carries no value.
    pub fn reply<V: serde::Serialize + ?Sized>(&self, value: &V) -> Result<()> {
        let v = serde_json::to_value(value).map_err(Error::data)?;
        *self.reply.lock().expect("lock") = Some(v);
        Ok(())
    }

    /// The app's state of type `S`, as given to [`Live::with_state`]: a
    /// database pool, a shared store, a config (the way axum's `State`
    /// extractor gives it to a route). Borrowed from the context, so
    /// nothing is cloned; clone what a spawned task needs. Asking for a type
    /// nobody added is a [`ErrorKind::Config`] error (logged; the page gets
    /// a generic message).
    pub fn state<S: Send + Sync + 'static>(&self) -> Result<&S> {
        self.states
            .0
            .get(&TypeId::of::<S>())
            .and_then(|s| s.downcast_ref::<S>())
            .ok_or_else(|| {
                Error::config(format!(
                    "no app state of type {}: add it with Live::with_state",
                    std::any::type_name::<S>()
                ))
            })
    }
}

pub(super) type BoxFuture = Pin<Box<dyn Future<Output = Result<()>> + Send>>;
pub(super) type Handler = dyn Fn(EventCtx) -> BoxFuture + Send + Sync;

/// A context for a handler that is not a client frame's (an upload).
#[cfg(feature = "axum")]
pub(super) fn new_ctx(live: &Live, name: &str, payload: Json, session: &Session) -> EventCtx {
    EventCtx {
        event: Event {
            name: name.to_owned(),
            payload,
        },
        session: session.clone(),
        engine: live.engine.clone(),
        states: live.states.clone(),
        reply: Arc::default(),
    }
}

#[cfg(feature = "axum")]
impl EventCtx {
    pub(super) fn reply_slot(&self) -> Arc<std::sync::Mutex<Option<Json>>> {
        self.reply.clone()
    }
}

impl Live {
    /// Adds a value of the app's state, which every handler reads with
    /// [`EventCtx::state`] (one value per type; adding a type again
    /// replaces it). Put what handlers share in it (a database pool, a
    /// chat room, settings) instead of cloning `Arc`s into every closure.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> statetemplate::Result<()> {
    /// use std::sync::{Arc, Mutex};
    /// use statetemplate::{EventCtx, Live, StateTemplate};
    ///
    /// #[derive(Clone, Default)]
    /// struct App { visits: Arc<Mutex<u64>> }
    ///
    /// let mut env = minijinja::Environment::new();
    /// env.add_template("p.html", "<b>{{ n }}</b>")?;
    /// let engine = StateTemplate::builder(env).build()?;
    /// let live = Live::new(engine)
    ///     .with_state(App::default())
    ///     .on("visit", |ctx: EventCtx| async move {
    ///         let n = {
    ///             let mut v = ctx.state::<App>()?.visits.lock().unwrap();
    ///             *v += 1;
    ///             *v
    ///         };
    ///         ctx.session.render(&serde_json::json!({"n": n})).await?;
    ///         Ok(())
    ///     });
    /// # let _ = live; Ok(()) }
    /// ```
    pub fn with_state<S: Send + Sync + 'static>(mut self, state: S) -> Live {
        Arc::make_mut(&mut self.states.0).insert(TypeId::of::<S>(), Arc::new(state));
        self
    }

    /// Registers an async handler for events named `name`. It typically
    /// changes data and renders: `ctx.session.render(&new_data).await`.
    pub fn on<F, Fut>(mut self, name: &str, f: F) -> Live
    where
        F: Fn(EventCtx) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<()>> + Send + 'static,
    {
        let h: Arc<Handler> = Arc::new(move |ctx| Box::pin(f(ctx)) as BoxFuture);
        self.handlers_mut().insert(name.to_owned(), h);
        self
    }

    /// Registers a handler that changes the session's data in place: the
    /// session's data is read as `T`, the payload as `P`, `f` changes the
    /// data, and the session renders it, atomically (see
    /// [`Session::update`]).
    pub fn on_update<T, P, F>(self, name: &str, f: F) -> Live
    where
        T: DeserializeOwned + serde::Serialize + Send + 'static,
        P: DeserializeOwned + Send + 'static,
        F: Fn(&mut T, P) -> Result<()> + Send + Sync + 'static,
    {
        let f = Arc::new(f);
        self.on(name, move |ctx: EventCtx| {
            let f = f.clone();
            async move {
                let p: P = ctx.payload()?;
                ctx.session.update(move |t: &mut T| f(t, p)).await?;
                Ok(())
            }
        })
    }

    /// Registers an async handler that changes the session's data: `f`
    /// gets the data as `T` (owned), the payload as `P` and the event's
    /// context (the app's state through [`EventCtx::state`]), and returns
    /// the new data, which the session renders (see
    /// [`Session::update_async`]: the session's renders wait while `f`
    /// runs, so two tabs never lose each other's changes). An error from
    /// `f` changes nothing; the client gets it as an error frame.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> statetemplate::Result<()> {
    /// use serde::{Deserialize, Serialize};
    /// use statetemplate::{EventCtx, Live, StateTemplate};
    ///
    /// #[derive(Serialize, Deserialize)]
    /// struct Page { results: Vec<String> }
    /// #[derive(Deserialize)]
    /// struct Search { q: String }
    /// struct Catalog(Vec<String>);
    ///
    /// # let mut env = minijinja::Environment::new();
    /// # env.add_template("p.html", "{{ results }}")?;
    /// # let engine = StateTemplate::builder(env).build()?;
    /// let live = Live::new(engine)
    ///     .with_state(Catalog(vec!["ink".into(), "pen".into()]))
    ///     .on_update_async("search", |mut page: Page, s: Search, ctx: EventCtx| async move {
    ///         tokio::task::yield_now().await; // a query, a call to another service
    ///         let catalog = ctx.state::<Catalog>()?;
    ///         page.results = catalog.0.iter().filter(|x| x.contains(&s.q)).cloned().collect();
    ///         Ok(page)
    ///     });
    /// # let _ = live; Ok(()) }
    /// ```
    pub fn on_update_async<T, P, F, Fut>(self, name: &str, f: F) -> Live
    where
        T: DeserializeOwned + serde::Serialize + Send + 'static,
        P: DeserializeOwned + Send + 'static,
        F: Fn(T, P, EventCtx) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<T>> + Send + 'static,
    {
        let f = Arc::new(f);
        self.on(name, move |ctx: EventCtx| {
            let f = f.clone();
            async move {
                let p: P = ctx.payload()?;
                let session = ctx.session.clone();
                session.update_async(move |t: T| f(t, p, ctx)).await?;
                Ok(())
            }
        })
    }
}

impl Live {
    /// Handles one client text frame; returns the reply, if any. An event
    /// with a ref (`r`) always gets one: its ref alone (a JSON number) when
    /// it was applied, or was applied before (a resend of client `client`),
    /// else an error frame.
    pub(super) async fn client_frame(
        &self,
        session: &Session,
        client: Option<u64>,
        frame: std::result::Result<ClientFrame, String>,
    ) -> Option<String> {
        let frame: ClientFrame = match frame {
            Ok(f) => f,
            Err(e) => return Some(error_frame("bad_frame", &e, None)),
        };
        match frame {
            ClientFrame::Ping => Some("{\"t\":\"pong\"}".to_owned()),
            ClientFrame::Ack { .. } => None,
            ClientFrame::Event { name, data, r } => {
                if let (Some(c), Some(r)) = (client, r) {
                    if !session.first_delivery(c, r) {
                        tracing::debug!(event = %name, r, "event resent; applied before");
                        return Some(r.to_string());
                    }
                }
                let Some(h) = self.handlers.get(&name).cloned() else {
                    return Some(error_frame(
                        "unknown_event",
                        &format!("no handler for event {name:?}"),
                        r,
                    ));
                };
                let ctx = EventCtx {
                    event: Event {
                        name: name.clone(),
                        payload: data,
                    },
                    session: session.clone(),
                    engine: self.engine.clone(),
                    states: self.states.clone(),
                    reply: Arc::default(),
                };
                let reply = ctx.reply.clone();
                // A handler that panics fails its event, not the session (the
                // page lock is async and not poisoned; the data is unchanged).
                let run = std::panic::AssertUnwindSafe(h(ctx)).catch_unwind();
                match run.await {
                    Ok(Ok(())) => r.map(|r| match reply.lock().expect("lock").take() {
                        Some(d) => serde_json::json!({"t": "reply", "r": r, "d": d}).to_string(),
                        None => r.to_string(),
                    }),
                    Ok(Err(e)) if e.kind() == ErrorKind::User => {
                        tracing::debug!(event = %name, error = %e, "event refused");
                        Some(error_frame("user", &e.to_string(), r))
                    }
                    Ok(Err(e)) if e.kind() == ErrorKind::Protocol => {
                        tracing::debug!(event = %name, error = %e, "bad event payload");
                        Some(error_frame("bad_payload", &e.to_string(), r))
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(event = %name, error = %e, "event handler failed");
                        Some(error_frame("handler", HANDLER_FAILED, r))
                    }
                    Err(panic) => {
                        let what = panic
                            .downcast_ref::<&str>()
                            .map(|s| s.to_string())
                            .or_else(|| panic.downcast_ref::<String>().cloned())
                            .unwrap_or_default();
                        tracing::error!(event = %name, panic = %what, "event handler panicked");
                        Some(error_frame("handler", HANDLER_FAILED, r))
                    }
                }
            }
        }
    }
}

/// What the page is told when a handler fails with an internal error or
/// panics (the details go to the log).
pub(super) const HANDLER_FAILED: &str = "Something went wrong. Please try again.";

pub(super) fn error_frame(code: &str, message: &str, r: Option<u64>) -> String {
    let mut j = serde_json::json!({"t": "error", "code": code, "msg": message});
    if let Some(r) = r {
        j["r"] = r.into();
    }
    j.to_string()
}
