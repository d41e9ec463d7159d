//! # statetemplate
//!
//! Live server-rendered pages from plain [minijinja] templates. A page is
//! rendered once with full HTML; when its data changes, statetemplate diffs the
//! data, re-renders only the fragments that read what changed, and emits the
//! smallest set of operations that turns what the browser holds into the new
//! page.
//!
//! Three layers:
//!
//! - the **fragment engine** ([`FragmentEngine`], [`LivePage`]): pure and
//!   synchronous, no tokio, no I/O;
//! - **sessions** ([`StateTemplate`], [`Session`]): one live page per browser
//!   on tokio, with sealed tokens ([`token`]), expiry after client
//!   inactivity, capped pools (sessions no client joined are capped apart,
//!   so a flood of page loads cannot push joined users out) and a pluggable
//!   [`store`]. See "Sessions" below;
//! - the **browser loop** ([`Live`], [`transport`]): a WebSocket connection
//!   loop (axum and tokio-tungstenite adapters), event handlers, resume, and
//!   the JS client the crate serves. See "In the browser" below.
//!
//! ```
//! use minijinja::Environment;
//! use serde_json::json;
//! use statetemplate::FragmentEngine;
//!
//! let mut env = Environment::new();
//! env.add_template("todos.html", r#"<h1>{{ title }}</h1>
//! <ul>{% for t in todos %}<li>{{ t.text }}</li>{% endfor %}</ul>"#).unwrap();
//! let engine = FragmentEngine::new(env);
//!
//! let mut page = engine.render("todos.html", &json!({
//!     "title": "Todo",
//!     "todos": [{"id": 1, "text": "milk"}],
//! })).unwrap();
//! let html = page.html(); // annotated with comment anchors; send it as the page
//!
//! let patch = page.update(&json!({
//!     "title": "Todo",
//!     "todos": [{"id": 1, "text": "milk"}, {"id": 2, "text": "eggs"}],
//! })).unwrap();
//! // One insert of one row: the title and the first row are not re-rendered.
//! let updates = patch.updates();
//! assert_eq!(updates.len(), 1);
//! assert_eq!(updates[0].html, "<li>eggs</li>");
//!
//! // The compact wire frame carries the row's statics once and its values.
//! let frame = page.encode(&patch).unwrap();
//! assert!(frame.contains("\"eggs\""));
//!
//! // Applying the updates to the old page gives exactly a fresh render.
//! let applied = statetemplate::testing::apply_updates(&html, &updates).unwrap();
//! assert_eq!(applied, page.html());
//! ```
//!
//! ## How fragments are found
//!
//! Nothing in the template needs annotating. The engine walks minijinja's
//! syntax tree: static text is kept once per template; every `{{ … }}`, `if`
//! and `for` is a dynamic slot. Loops over items with an `id` (or the key
//! named with the `keyed` filter: `{% for r in rows|keyed("slug") %}`) give
//! per-item insert, remove, move and update operations. Each slot knows which
//! data paths it reads, so a render re-evaluates only the slots whose inputs
//! changed; identical data costs one data comparison and emits nothing.
//! `{% block name %}` names a fragment explicitly (its id is the block name).
//!
//! Anchors are HTML comments (`<!--[ID-->` … `<!--]-->`; a keyed list item
//! starts with `<!--:KEY-->` and runs to the next one; single-element items
//! with consecutive integer keys share one `<!--*KEY-->`), placed only where a
//! comment is valid and the fragment is balanced, so tables, lists, `select`
//! and SVG keep their structure. See `docs/architecture.md` for the model and
//! its limits, and `docs/protocol.md` for the wire format.
//!
//! ## Streams
//!
//! A loop over `NAME|stream` is a *stream* (Phoenix LiveView's `stream`):
//! a list whose items the server renders once, sends, and forgets. The
//! page renders it empty and its data and tree hold none of its items;
//! [`StreamOps`] (through [`LivePage::stream`] or [`Session::stream`])
//! insert items at the start, the end or an index (an item whose key the
//! client holds is re-rendered in place), delete them by key, reset the
//! list, and set a `limit` on how many the client keeps. A stream item is
//! not re-rendered by later data changes, and a client that joins (a new
//! tab, a restart) gets every stream empty. See [`StreamOps`].
//!
//! ```
//! use minijinja::Environment;
//! use serde_json::json;
//! use statetemplate::{FragmentEngine, StreamAt, StreamOps};
//!
//! let mut env = Environment::new();
//! env.add_template("log.html",
//!     "<ul>{% for m in log|stream %}<li>{{ m.text }}</li>{% endfor %}</ul>").unwrap();
//! let mut page = FragmentEngine::new(env).render("log.html", &json!({})).unwrap();
//! let mut ops = StreamOps::new("log");
//! ops.insert(&json!({"id": 1, "text": "hello"}), StreamAt::End).limit(-100);
//! let patch = page.stream(&ops).unwrap();
//! let frame = page.encode(&patch).unwrap();
//! assert!(frame.contains(r#"["*",1,1,-1,"#)); // insert item 1 last, keep 100
//! assert!(!page.html().contains("hello")); // the page kept nothing
//! ```
//!
//! ## Sessions
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> statetemplate::Result<()> {
//! use std::time::Duration;
//! use minijinja::Environment;
//! use serde_json::json;
//! use statetemplate::token::KeyRing;
//! use statetemplate::{SessionEvent, StateTemplate};
//!
//! let mut env = Environment::new();
//! env.add_template("count.html", "<b>{{ n }}</b>").unwrap();
//! let engine = StateTemplate::builder(env)
//!     .expiration(Duration::from_secs(3600))     // no client activity for 1 h: expired
//!     .unjoined_expiration(Duration::from_secs(60)) // never joined by a client: 1 min
//!     .max_sessions(10_000)                      // unjoined go first, connected last
//!     .keys(KeyRing::generate()?)                // KeyRing::from_env in production
//!     .build()?;                                 // starts the expiry task
//!
//! // Page handler: HTML for the page, id and token for the socket.
//! let initial = engine.new_session("count.html", &json!({"n": 1})).await?;
//!
//! // Socket handler: the token opens the session; each tab joins it.
//! let session = engine
//!     .get_session(&initial.session_id.to_string(), &initial.token)
//!     .await?;
//! let (page, mut updates) = session.join().await?; // the page now + what follows
//! assert_eq!(page.html(), initial.html);
//!
//! // Anywhere (a handler, a ticker task): render new data.
//! session.render(&json!({"n": 2})).await?;
//! let Some(SessionEvent::Patch(p)) = updates.recv().await else { unreachable!() };
//! assert_eq!(p.seq(), 1);
//! let _frame: &str = p.frame();   // compact wire frame for a joined client
//! let _html = p.updates();        // or updates with each fragment's HTML
//! session.close().await?;
//! # Ok(()) }
//! ```
//!
//! Renders of one session apply in call order, each with the next `seq`; a
//! subscriber that falls too far behind gets one [`SessionEvent::Resync`]
//! with the whole page, never blocking the renderer. Tokens are AES-256-GCM
//! sealed and bound to their session (format in [`token`]); every failure to
//! open a session is the same [`ErrorKind::InvalidSession`]. Records go to a
//! [`store::SessionStore`] ([`store::MemoryStore`] by default), from which a
//! session that is not live in this process is restored; each render that
//! changes the data hands the store its [`fragment::Delta`]
//! ([`store::SessionStore::append`], versioned, compare-and-set), so a store
//! can log changes instead of rewriting snapshots.
//!
//! Several instances share sessions through Redis with a [`cluster`]: one
//! owner renders each session, sockets on other instances follow it, and
//! [`StateTemplate::broadcast`] and [`StateTemplate::presence`] span them.
//!
//! ## In the browser
//!
//! ```no_run
//! # async fn run() -> statetemplate::Result<()> {
//! use axum::{Router, response::Html, routing::get};
//! use serde::{Deserialize, Serialize};
//! use statetemplate::{Live, StateTemplate};
//!
//! #[derive(Default, Serialize, Deserialize)]
//! struct Counter { count: i64 }
//!
//! let mut env = minijinja::Environment::new();
//! env.add_template("counter.html", r#"<p>{{ count }}</p><button st-click="inc">+1</button>"#)?;
//! let engine = StateTemplate::builder(env).build()?;
//! let live = Live::new(engine.clone())
//!     .on_update("inc", |c: &mut Counter, _: serde_json::Value| { c.count += 1; Ok(()) });
//! let page = live.clone();
//! let app: Router = Router::new()
//!     .route("/", get(move || async move {
//!         let initial = engine.new_session("counter.html", &Counter::default()).await.unwrap();
//!         Html(format!("<!doctype html><body>{}</body>", page.mount(&initial)))
//!     }))
//!     .merge(live.router()); // GET /statetemplate/ws and /statetemplate/client.js
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await.unwrap();
//! axum::serve(listener, app).await.unwrap();
//! # Ok(()) }
//! ```
//!
//! `Live::mount` wraps the session's HTML in an element that names the
//! session and loads the client. Elements with `st-click`, `st-submit`,
//! `st-input`, `st-change` or `st-keydown` send events to the handlers; the
//! client applies each frame to the DOM by fragment id and key, keeps focus,
//! caret and typed text, and reconnects with backoff, resuming from its last
//! seq. The protocol, with every close code, is in `docs/protocol.md`.
//!
//! ## Errors
//!
//! One [`Error`] type. Template errors keep the user's template name, line and
//! a source excerpt (`{:#}` prints it). A failed render changes nothing.
#![deny(missing_docs)]

mod apply;
pub mod cluster;
mod error;
pub mod fragment;
mod id;
pub mod protocol;
pub mod rate;
pub mod session;
pub mod store;
pub mod testing;
pub mod token;
pub mod transport;

#[cfg(feature = "fuzzing")]
pub mod fuzzing {
    //! Entry points for the fuzz targets in `fuzz/` (feature `fuzzing`).
    //! Not part of the stable API.

    use crate::token::KeyRing;

    /// Opens `token` with `ring` at `now_ms`: the claims' session id bytes,
    /// or `None` when the token is refused.
    pub fn open_token(ring: &KeyRing, token: &str, now_ms: u64) -> Option<[u8; 16]> {
        ring.open(token, now_ms).ok().map(|c| *c.session.as_bytes())
    }

    /// Seals a token for the session id `sid`, valid from `now_ms` for a minute.
    pub fn seal_token(ring: &KeyRing, sid: [u8; 16], now_ms: u64) -> String {
        ring.seal(&crate::token::Claims {
            session: crate::id::SessionId::from_bytes(sid),
            issued_ms: now_ms,
            expires_ms: now_ms + 60_000,
            generation: 0,
        })
        .expect("sealing")
    }

    /// Parses a client frame; whether it was accepted.
    pub fn parse_client_frame(text: &str) -> bool {
        crate::transport::parse_client_frame(text).is_ok()
    }

    /// Parses a WebSocket URL query string.
    pub fn parse_query(q: &str) -> crate::transport::ConnectParams {
        crate::transport::parse_query(q)
    }
}

/// The README's Rust examples, compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

/// The guides' Rust examples (`docs/*.md` with Rust in them), compiled and
/// run as doc tests.
#[cfg(doctest)]
pub mod doc_guides {
    #[doc = include_str!("../docs/guides.md")]
    pub struct Guides;
    #[doc = include_str!("../docs/hooks.md")]
    pub struct Hooks;
    #[doc = include_str!("../docs/navigation.md")]
    pub struct Navigation;
    #[doc = include_str!("../docs/uploads.md")]
    pub struct Uploads;
}

pub use error::{Error, ErrorKind, HandlerError, Result};
pub use fragment::{Edit, FragmentEngine, LivePage, Patch, StreamAt, StreamOps};
pub use id::SessionId;
pub use session::{Builder, InitialRender, Session, SessionEvent, StateTemplate, Subscriber};
pub use transport::{Event, EventCtx, Live};
