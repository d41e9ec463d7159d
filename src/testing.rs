//! Testing a live app without a browser, and the oracles the crate's own
//! tests prove its diffs with.
//!
//! [`TestClient`] drives a live page from a Rust test the way a browser
//! does, through the same connection loop, handlers and frames (over
//! in-memory channels instead of a socket): mount a session, send events,
//! and assert on the HTML the client now holds or on the frames it got.
//! Like Phoenix LiveView's `live/2` and `render_click`.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> statetemplate::Result<()> {
//! use serde::{Deserialize, Serialize};
//! use statetemplate::testing::TestClient;
//! use statetemplate::{ErrorKind, Error, Live, StateTemplate};
//!
//! #[derive(Default, Serialize, Deserialize)]
//! struct Counter { count: i64 }
//!
//! let mut env = minijinja::Environment::new();
//! env.add_template("counter.html", r#"<p>{{ count }}</p><button st-click="inc">+1</button>"#)?;
//! let engine = StateTemplate::builder(env).build()?;
//! let live = Live::new(engine.clone())
//!     .on_update("inc", |c: &mut Counter, _: serde_json::Value| { c.count += 1; Ok(()) })
//!     .on_update("reset", |c: &mut Counter, _: serde_json::Value| {
//!         if c.count == 0 { return Err(Error::user("Nothing to reset")); }
//!         c.count = 0;
//!         Ok(())
//!     });
//!
//! let initial = engine.new_session("counter.html", &Counter::default()).await?;
//! let mut page = TestClient::connect(&live, &initial).await?;
//! assert_eq!(page.text(), "0 +1");      // what a person reads
//!
//! page.send("inc", ()).await?;           // what st-click="inc" sends
//! page.send("inc", ()).await?;
//! assert_eq!(page.text(), "2 +1");
//! assert!(statetemplate::testing::strip_anchors(&page.html()).contains("<p>2</p>"));
//! assert!(page.last_frame().unwrap().len() < 20); // the change alone, not the page
//!
//! page.send("reset", ()).await?;
//! let refused = page.send("reset", ()).await.unwrap_err();
//! assert_eq!(refused.kind(), ErrorKind::User);
//! assert_eq!(refused.to_string(), "Nothing to reset");
//! page.close().await;
//! # Ok(()) }
//! ```
//!
//! The oracles: [`apply_updates`] applies HTML updates ([`crate::protocol::Update`]) to HTML,
//! [`WireClient`] applies wire frames the way the JS client does, and
//! [`strip_anchors`] removes the fragment anchors from HTML;
//! [`write_out_markers`] writes every list item's key out, as the JS client
//! holds a page.

use std::time::Duration;

use serde::Serialize;
use serde_json::Value as Json;
use tokio::sync::mpsc;

pub use crate::apply::{WireClient, apply_updates, strip_anchors, write_out_markers};
use crate::transport::{ConnectParams, WsMessage};
use crate::{Error, ErrorKind, InitialRender, Live, Result};

/// How long [`TestClient`] waits for an answer before it fails.
const WAIT: Duration = Duration::from_secs(10);

/// A client of one live page in a test: what a browser tab does, without
/// the browser. See the [module docs](self).
#[derive(Debug)]
pub struct TestClient {
    to_server: mpsc::Sender<std::result::Result<WsMessage, String>>,
    from_server: mpsc::Receiver<WsMessage>,
    task: tokio::task::JoinHandle<()>,
    model: WireClient,
    frames: Vec<String>,
    pushes: Vec<(String, Json)>,
    next_ref: u64,
    epoch: Option<String>,
    closed: Option<(u16, String)>,
}

impl TestClient {
    /// Connects to the session of `initial` through `live`'s connection
    /// loop, and waits until the page is in (the join frame applied).
    pub async fn connect(live: &Live, initial: &InitialRender) -> Result<TestClient> {
        let (to_server, from_client) = mpsc::channel::<std::result::Result<WsMessage, String>>(64);
        let (to_client, from_server) = mpsc::channel::<WsMessage>(1024);
        let stream = futures_util::stream::unfold(from_client, |mut rx| async move {
            rx.recv().await.map(|m| (m, rx))
        });
        let sink = futures_util::sink::unfold(to_client, |tx, m: WsMessage| async move {
            tx.send(m).await.map_err(|_| "the test client is gone")?;
            Ok::<_, &'static str>(tx)
        });
        let params = ConnectParams {
            sid: initial.session_id.to_string(),
            token: initial.token.clone(),
            v: Some(crate::fragment::WIRE_VERSION),
            c: Some(format!("{:x}", rand_client())),
            ..ConnectParams::default()
        };
        let live = live.clone();
        let task = tokio::spawn(async move {
            live.connect(params, Box::pin(sink), Box::pin(stream)).await;
        });
        let mut c = TestClient {
            to_server,
            from_server,
            task,
            model: WireClient::new(),
            frames: Vec::new(),
            pushes: Vec::new(),
            next_ref: 1,
            epoch: None,
            closed: None,
        };
        while c.epoch.is_none() || c.frames.is_empty() {
            c.read(WAIT).await?;
        }
        Ok(c)
    }

    /// Sends event `name` with `payload` (what `st-click="name"` or a form's
    /// `st-submit` sends: `()` for none, or the form's fields), and waits
    /// for its answer; the frames it rendered are applied by then. A
    /// handler's refusal is an [`ErrorKind::User`] error with its message, a
    /// payload of the wrong shape or an unknown event an
    /// [`ErrorKind::Protocol`] one, and a failed or panicking handler an
    /// [`ErrorKind::Handler`] one with the message the page shows.
    ///
    /// Returns the handler's reply ([`crate::EventCtx::reply`]), if it gave one.
    pub async fn send<P: Serialize>(&mut self, name: &str, payload: P) -> Result<Option<Json>> {
        let data = serde_json::to_value(payload).map_err(Error::data)?;
        let r = self.next_ref;
        self.next_ref += 1;
        let frame = serde_json::json!({"t": "ev", "n": name, "d": data, "r": r}).to_string();
        self.send_raw(frame).await?;
        loop {
            if let Some(answer) = self.read(WAIT).await? {
                match answer {
                    Answer::Ok(got, reply) if got == r => return Ok(reply),
                    Answer::Err(got, e) if got == Some(r) => return Err(e),
                    _ => {}
                }
            }
        }
    }

    /// Sends a text frame as it is (for tests of bad input).
    pub async fn send_raw(&mut self, text: impl Into<String>) -> Result<()> {
        self.to_server
            .send(Ok(WsMessage::Text(text.into())))
            .await
            .map_err(|_| self.gone())
    }

    /// Waits up to `timeout` for one more frame (a render from elsewhere: a
    /// background task, another tab's event) and applies it. `Ok(false)`
    /// when none came.
    pub async fn next_frame(&mut self, timeout: Duration) -> Result<bool> {
        let end = tokio::time::Instant::now() + timeout;
        let n = self.frames.len();
        while self.frames.len() == n {
            let left = end.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return Ok(false);
            }
            match self.next_message(left).await? {
                Some(m) => {
                    self.take(m).await?;
                }
                None => return Ok(false),
            }
        }
        Ok(true)
    }

    /// The page as the client holds it now (with the fragment anchors, as
    /// the browser's DOM has them).
    pub fn html(&self) -> String {
        self.model.html()
    }

    /// The page's text: [`TestClient::html`] without tags and anchors, its
    /// whitespace collapsed and every tag read as a space (for assertions on
    /// what a person reads).
    pub fn text(&self) -> String {
        let html = strip_anchors(&self.model.html());
        let mut out = String::new();
        let mut in_tag = false;
        for ch in html.chars() {
            match ch {
                '<' => {
                    in_tag = true;
                    out.push(' ');
                }
                '>' => in_tag = false,
                c if !in_tag => out.push(c),
                _ => {}
            }
        }
        unescape(&out.split_whitespace().collect::<Vec<_>>().join(" "))
    }

    /// Every frame received since [`TestClient::connect`], in order (the
    /// join frame first).
    pub fn frames(&self) -> &[String] {
        &self.frames
    }

    /// The last frame received.
    pub fn last_frame(&self) -> Option<&str> {
        self.frames.last().map(String::as_str)
    }

    /// The events the server pushed to this client (see
    /// [`crate::Session::push`]), oldest first, each with its payload.
    pub fn pushes(&self) -> &[(String, Json)] {
        &self.pushes
    }

    /// The close code and reason, once the server closed the connection.
    pub fn closed(&self) -> Option<&(u16, String)> {
        self.closed.as_ref()
    }

    /// Closes the connection, as a tab that goes away.
    pub async fn close(mut self) {
        let _ = self
            .to_server
            .send(Ok(WsMessage::Close(Some((1000, String::new())))))
            .await;
        let _ = tokio::time::timeout(WAIT, &mut self.task).await;
    }

    fn gone(&self) -> Error {
        Error::new(
            ErrorKind::Protocol,
            format!("the server closed the connection: {:?}", self.closed),
        )
    }

    /// Reads one message and takes it in: frames are applied, hellos and
    /// pushes kept, and an event's answer returned.
    async fn read(&mut self, timeout: Duration) -> Result<Option<Answer>> {
        match self.next_message(timeout).await? {
            Some(m) => self.take(m).await,
            None => Err(Error::new(
                ErrorKind::Protocol,
                "timed out waiting for the server",
            )),
        }
    }

    /// The next message from the server, or `None` when none came within
    /// `timeout`.
    async fn next_message(&mut self, timeout: Duration) -> Result<Option<WsMessage>> {
        match tokio::time::timeout(timeout, self.from_server.recv()).await {
            Err(_) => Ok(None),
            Ok(None) => Err(self.gone()),
            Ok(Some(m)) => Ok(Some(m)),
        }
    }

    /// Takes one message in (see [`TestClient::read`]).
    async fn take(&mut self, msg: WsMessage) -> Result<Option<Answer>> {
        let text = match msg {
            WsMessage::Text(t) => t,
            WsMessage::Ping(p) => {
                let _ = self.to_server.send(Ok(WsMessage::Pong(p))).await;
                return Ok(None);
            }
            WsMessage::Close(c) => {
                self.closed = Some(c.unwrap_or((1005, String::new())));
                return Err(self.gone());
            }
            _ => return Ok(None),
        };
        let v: Json = serde_json::from_str(&text).map_err(|e| {
            Error::new(
                ErrorKind::Protocol,
                format!("not JSON from the server: {e}"),
            )
        })?;
        if let Some(r) = v.as_u64() {
            return Ok(Some(Answer::Ok(r, None)));
        }
        match v.get("t").and_then(Json::as_str) {
            Some("hello") => {
                self.epoch = v["epoch"].as_str().map(str::to_owned);
                Ok(None)
            }
            Some("error") => {
                let msg = v["msg"].as_str().unwrap_or_default().to_owned();
                let kind = match v["code"].as_str() {
                    Some("user") => ErrorKind::User,
                    Some("handler") => ErrorKind::Handler,
                    _ => ErrorKind::Protocol,
                };
                Ok(Some(Answer::Err(v["r"].as_u64(), Error::new(kind, msg))))
            }
            Some("push") => {
                let name = v["n"].as_str().unwrap_or_default().to_owned();
                self.pushes
                    .push((name, v.get("d").cloned().unwrap_or(Json::Null)));
                Ok(None)
            }
            Some("reply") => Ok(v["r"].as_u64().map(|r| Answer::Ok(r, v.get("d").cloned()))),
            Some("pong") => Ok(None),
            _ => {
                self.model.apply(&text)?;
                let ack = serde_json::json!({"t": "ack", "q": self.model.seq()}).to_string();
                let _ = self.to_server.send(Ok(WsMessage::Text(ack))).await;
                self.frames.push(text);
                Ok(None)
            }
        }
    }
}

impl Drop for TestClient {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Decodes the character references minijinja's escaping writes (and
/// numeric ones), as a browser shows them.
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        let Some(end) = rest.find(';').filter(|&e| e <= 10) else {
            out.push('&');
            rest = &rest[1..];
            continue;
        };
        let name = &rest[1..end];
        let ch = match name {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            "nbsp" => Some('\u{a0}'),
            n if n.starts_with("#x") || n.starts_with("#X") => u32::from_str_radix(&n[2..], 16)
                .ok()
                .and_then(char::from_u32),
            n if n.starts_with('#') => n[1..].parse().ok().and_then(char::from_u32),
            _ => None,
        };
        match ch {
            Some(c) => {
                out.push(c);
                rest = &rest[end + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// What the server answered an event.
enum Answer {
    Ok(u64, Option<Json>),
    Err(Option<u64>, Error),
}

/// A client instance number (its events are deduplicated per instance).
fn rand_client() -> u64 {
    let mut b = [0u8; 8];
    if getrandom::fill(&mut b).is_err() {
        return u64::from(std::process::id());
    }
    u64::from_le_bytes(b) >> 1
}
