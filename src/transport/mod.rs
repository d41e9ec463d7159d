//! The browser loop: a connection loop over any WebSocket, event handlers,
//! resume, heartbeats; adapters for axum and plain tokio-tungstenite; and
//! the JS client the crate serves.
//!
//! The protocol is in `docs/protocol.md` ("Connection").

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{FutureExt, Sink, SinkExt, Stream, StreamExt};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value as Json;
use tokio::time::Instant;

use crate::rate::Bucket;
use crate::session::{Attached, Catchup, Session, SessionEvent, StateTemplate};
use crate::{Error, ErrorKind, InitialRender, Result};

#[cfg(feature = "axum")]
mod axum_adapter;
pub mod client;
mod tungstenite_server;

#[cfg(feature = "axum")]
mod axum_serve;
mod cookie;
mod follow;
#[cfg(feature = "axum")]
pub use axum_serve::{ServeOptions, serve_axum};
pub use tungstenite_server::serve as serve_tungstenite;

/// Close codes the server sends (and the JS client understands).
pub mod close {
    /// Normal closure.
    pub const NORMAL: u16 = 1000;
    /// The server is going away (shutdown).
    pub const GOING_AWAY: u16 = 1001;
    /// The client broke the WebSocket protocol (an unmasked frame, a
    /// reserved opcode or RSV bit, an oversize control frame).
    pub const PROTOCOL: u16 = 1002;
    /// The client sent a frame type the protocol does not use (binary).
    pub const UNSUPPORTED: u16 = 1003;
    /// The client sent text that is not valid UTF-8.
    pub const INVALID_DATA: u16 = 1007;
    /// A message exceeded the size limit.
    pub const TOO_BIG: u16 = 1009;
    /// An internal error on the server.
    pub const INTERNAL: u16 = 1011;
    /// The client sent nothing (not even a pong) within the idle timeout.
    pub const IDLE_TIMEOUT: u16 = 4000;
    /// The session id or token is invalid, or the session is gone: the
    /// client should reload the page (it gets a new session).
    pub const INVALID_SESSION: u16 = 4001;
    /// The session ended (closed, expired or evicted) while connected: the
    /// client should reload the page.
    pub const SESSION_ENDED: u16 = 4002;
    /// The client speaks another protocol version.
    pub const VERSION: u16 = 4003;
    /// The session moved to another instance, or the instance serving it
    /// cannot be reached: the client should reconnect (it resumes from its
    /// seq wherever it lands; nothing is reloaded).
    pub const MOVED: u16 = 4004;
    /// The client could not take frames as fast as they were written.
    pub const TOO_SLOW: u16 = 4009;
}

/// A WebSocket message, independent of the WebSocket library.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WsMessage {
    /// A text message.
    Text(String),
    /// A binary message (the protocol does not use them).
    Binary(Vec<u8>),
    /// A ping.
    Ping(Vec<u8>),
    /// A pong.
    Pong(Vec<u8>),
    /// A close, with code and reason.
    Close(Option<(u16, String)>),
}

/// Why reading from a socket failed, as the connection loop sees it: the
/// two failures with close codes of their own, and the rest. Adapters map
/// their library's errors into it; a `String` is an `Other`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadError {
    /// A message or frame over the size limit (close 1009).
    TooBig,
    /// A text message that is not UTF-8 (close 1007).
    InvalidUtf8,
    /// The peer broke the WebSocket protocol: an unmasked client frame, a
    /// reserved opcode or RSV bit, an oversize or fragmented control frame
    /// (close 1002).
    Protocol(String),
    /// Anything else (the connection just ends).
    Other(String),
}

impl From<String> for ReadError {
    fn from(s: String) -> ReadError {
        ReadError::Other(s)
    }
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadError::TooBig => f.write_str("message too big"),
            ReadError::InvalidUtf8 => f.write_str("invalid UTF-8"),
            ReadError::Protocol(m) => write!(f, "protocol violation: {m}"),
            ReadError::Other(m) => f.write_str(m),
        }
    }
}

/// What a client sends to connect: from the WebSocket URL's query string
/// (`?sid=…&token=…&seq=…&epoch=…`).
#[derive(Clone, Deserialize, Default)]
pub struct ConnectParams {
    /// The session id.
    pub sid: String,
    /// The session token.
    pub token: String,
    /// The last seq the client holds, when it resumes.
    #[serde(default)]
    pub seq: Option<u64>,
    /// The page incarnation of that seq (from the server's `hello`).
    #[serde(default)]
    pub epoch: Option<String>,
    /// The protocol version the client speaks.
    #[serde(default)]
    pub v: Option<u32>,
    /// The client instance (a page's script; hex, up to 16 digits): events
    /// it numbers (`r`) are applied at most once per session, however often
    /// it resends them across reconnects.
    #[serde(default)]
    pub c: Option<String>,
}

impl fmt::Debug for ConnectParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectParams")
            .field("seq", &self.seq)
            .field("v", &self.v)
            .finish_non_exhaustive()
    }
}

/// One event from the browser.
#[derive(Debug, Clone)]
pub struct Event {
    /// The handler name, from the element's `st-click="name"` (etc.).
    pub name: String,
    /// What the client sent with it (form fields, input value, `data-*`).
    pub payload: Json,
}

/// What an event handler gets: the event, its session and the engine.
#[derive(Debug, Clone)]
pub struct EventCtx {
    /// The event.
    pub event: Event,
    /// The session the event came from.
    pub session: Session,
    /// The engine (to render to other sessions or a group).
    pub engine: StateTemplate,
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
}

type BoxFuture = Pin<Box<dyn Future<Output = Result<()>> + Send>>;
type Handler = dyn Fn(EventCtx) -> BoxFuture + Send + Sync;

/// Connection settings.
#[derive(Debug, Clone)]
struct Config {
    prefix: String,
    ping_interval: Duration,
    idle_timeout: Duration,
    write_timeout: Duration,
    max_message: usize,
    debug_oracle: bool,
    debug_token: Option<DebugToken>,
    origins: Option<Vec<String>>,
    rate_per_sec: f64,
    rate_burst: f64,
    handshake_timeout: Duration,
    /// The name of the cookie that names a browser's session.
    cookie: String,
    secure_cookie: bool,
}

/// The debug listing's token: never shown by `Debug`.
#[derive(Clone)]
struct DebugToken(Arc<str>);

impl fmt::Debug for DebugToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DebugToken(<redacted>)")
    }
}

/// The live layer: an engine, its event handlers and the connection
/// settings. Serve it with [`Live::router`] (axum), [`serve_tungstenite`],
/// or drive [`Live::connect`] with any WebSocket.
#[derive(Clone)]
pub struct Live {
    engine: StateTemplate,
    handlers: Arc<HashMap<String, Arc<Handler>>>,
    config: Arc<Config>,
    open: Arc<std::sync::atomic::AtomicUsize>,
}

impl fmt::Debug for Live {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<&String> = self.handlers.keys().collect();
        names.sort();
        f.debug_struct("Live")
            .field("handlers", &names)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Live {
    /// A live layer over `engine`, with no handlers yet and default settings:
    /// routes under `/statetemplate`, a ping every 20 s, 60 s idle timeout,
    /// 10 s write timeout, 64 KiB messages at most.
    pub fn new(engine: StateTemplate) -> Live {
        Live {
            engine,
            handlers: Arc::new(HashMap::new()),
            open: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
            config: Arc::new(Config {
                prefix: "/statetemplate".to_owned(),
                ping_interval: Duration::from_secs(20),
                idle_timeout: Duration::from_secs(60),
                write_timeout: Duration::from_secs(10),
                max_message: 64 << 10,
                debug_oracle: false,
                debug_token: None,
                origins: None,
                rate_per_sec: 100.0,
                rate_burst: 200.0,
                handshake_timeout: Duration::from_secs(10),
                cookie: "st".to_owned(),
                secure_cookie: false,
            }),
        }
    }

    /// The engine.
    pub fn engine(&self) -> &StateTemplate {
        &self.engine
    }

    fn handlers_mut(&mut self) -> &mut HashMap<String, Arc<Handler>> {
        Arc::make_mut(&mut self.handlers)
    }

    fn config_mut(&mut self) -> &mut Config {
        Arc::make_mut(&mut self.config)
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

    /// Mounts the routes under `prefix` instead of `/statetemplate`.
    pub fn prefix(mut self, prefix: &str) -> Live {
        self.config_mut().prefix = prefix.trim_end_matches('/').to_owned();
        self
    }

    /// How often the server pings, and how long a client may stay silent
    /// before it is dropped.
    pub fn heartbeat(mut self, ping_interval: Duration, idle_timeout: Duration) -> Live {
        let c = self.config_mut();
        c.ping_interval = ping_interval;
        c.idle_timeout = idle_timeout;
        self
    }

    /// How long one write to a client may take before the client is dropped
    /// as too slow.
    pub fn write_timeout(mut self, d: Duration) -> Live {
        self.config_mut().write_timeout = d;
        self
    }

    /// Accept WebSocket handshakes only from these origins (exact,
    /// case-insensitive, like `https://app.example.com`). Default: the
    /// page's own host, i.e. the `Origin`'s host and port must equal the
    /// request's `Host`. A missing or `null` origin is always refused (403).
    pub fn allowed_origins<I, S>(mut self, origins: I) -> Live
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.config_mut().origins = Some(
            origins
                .into_iter()
                .map(|o| o.into().trim_end_matches('/').to_ascii_lowercase())
                .collect(),
        );
        self
    }

    /// Whether a handshake with this `Origin` and `Host` is allowed (see
    /// [`Live::allowed_origins`]). The adapters answer 403 when it is not.
    pub fn origin_allowed(&self, origin: Option<&str>, host: Option<&str>) -> bool {
        let Some(origin) = origin.map(str::trim) else {
            return false;
        };
        let origin = origin.trim_end_matches('/').to_ascii_lowercase();
        if origin.is_empty() || origin == "null" {
            return false;
        }
        if let Some(list) = &self.config.origins {
            return list.contains(&origin);
        }
        let (Some(host), Some((scheme, authority))) = (host, origin.split_once("://")) else {
            return false;
        };
        (scheme == "http" || scheme == "https")
            && !authority.contains(['/', '@'])
            && authority == host.trim().to_ascii_lowercase()
    }

    /// How many events a second one session may send, from all its
    /// connections together (`burst` at once); and, separately, how many
    /// other messages (pings, acks, anything malformed) each connection may
    /// send. Beyond either budget the server stops reading that connection
    /// until it refills, so a flood slows only the flooder, and opening more
    /// sockets to one session buys no more events. Default: 100 a second,
    /// bursts of 200.
    pub fn rate_limit(mut self, per_second: u32, burst: u32) -> Live {
        let c = self.config_mut();
        c.rate_per_sec = f64::from(per_second.max(1));
        c.rate_burst = f64::from(burst.max(1));
        self
    }

    /// How long the plain tokio-tungstenite server gives a client to
    /// complete the WebSocket handshake (slowloris). Default: 10 s.
    pub fn handshake_timeout(mut self, d: Duration) -> Live {
        self.config_mut().handshake_timeout = d;
        self
    }

    /// How many connections are open now (all clones of this `Live`).
    pub fn open_connections(&self) -> usize {
        self.open.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The largest message (and frame) accepted from a client, in bytes.
    pub fn max_message(mut self, bytes: usize) -> Live {
        self.config_mut().max_message = bytes;
        self
    }

    /// Serves `GET {prefix}/debug/fresh?sid=…&token=…`: the session's seq
    /// and a fresh full render of its data, as JSON (`{"seq":…,"html":…}`).
    /// For end-to-end tests that compare a browser's DOM with the truth;
    /// it needs the session's token like the socket, but leave it off in
    /// production. Off by default.
    pub fn debug_oracle(mut self, on: bool) -> Live {
        self.config_mut().debug_oracle = on;
        self
    }

    /// Serves `GET {prefix}/debug/sessions` to a caller that sends
    /// `Authorization: Bearer TOKEN`: the live sessions of this process as
    /// JSON, the most recently active first (at most `?limit=N`, default
    /// 100, at most 10,000), each with its id, template, seq, epoch, data
    /// version, whether a client joined, open connections, groups, idle
    /// time and the recent frames kept for resume. Other callers get 401.
    /// The token must be at least 32 characters (refused with a
    /// [`crate::ErrorKind::Config`] error otherwise); it is compared in
    /// constant time and never logged. The listing holds session ids:
    /// keep the token secret, and the route off where nobody debugs. Off
    /// by default.
    pub fn debug_sessions(mut self, token: impl Into<String>) -> crate::Result<Live> {
        let token = token.into();
        if token.len() < 32 {
            return Err(crate::Error::new(
                crate::ErrorKind::Config,
                "the debug sessions token must be at least 32 characters",
            ));
        }
        self.config_mut().debug_token = Some(DebugToken(Arc::from(token)));
        Ok(self)
    }

    /// Whether `authorization` (the header's value) carries the debug token.
    pub(crate) fn debug_allowed(&self, authorization: Option<&str>) -> bool {
        use subtle::ConstantTimeEq;
        let (Some(want), Some(got)) = (
            &self.config.debug_token,
            authorization.and_then(|a| a.strip_prefix("Bearer ")),
        ) else {
            return false;
        };
        want.0.as_bytes().ct_eq(got.trim().as_bytes()).into()
    }

    /// The debug listing (see [`Live::debug_sessions`]).
    pub(crate) async fn debug_listing(&self, query: &str) -> String {
        let limit = query
            .split('&')
            .find_map(|kv| kv.strip_prefix("limit="))
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(100)
            .min(10_000);
        let mut sessions = Vec::new();
        for s in self.engine.sessions() {
            sessions.push(s.debug_info().await);
        }
        sessions.sort_by_key(|s| s["idle_ms"].as_u64().unwrap_or(u64::MAX));
        let total = sessions.len();
        sessions.truncate(limit);
        serde_json::json!({
            "instance": self.engine.instance().map_or_else(|| format!("pid {}", std::process::id()), |i| format!("{i} (pid {})", std::process::id())),
            "live": total,
            "connected": self.engine.connected_sessions().len(),
            "sessions": sessions,
        })
        .to_string()
    }

    /// The path of the WebSocket endpoint.
    pub fn ws_path(&self) -> String {
        format!("{}/ws", self.config.prefix)
    }

    /// The path the JS client is served at.
    pub fn client_path(&self) -> String {
        format!("{}/client.js", self.config.prefix)
    }

    /// The markup to put in a page for a new session: the session's HTML in
    /// a root element that names the session, and the client script.
    pub fn mount(&self, initial: &InitialRender) -> String {
        format!(
            "<div data-st-root data-st-session=\"{}\" data-st-token=\"{}\" data-st-ws=\"{}\">{}</div>\n\
             <script src=\"{}?v={}\" defer></script>",
            initial.session_id,
            attr_escape(&initial.token),
            attr_escape(&self.ws_path()),
            initial.html,
            attr_escape(&self.client_path()),
            client::etag().trim_matches('"'),
        )
    }

    /// Runs one connection to its end: opens the session from `params`,
    /// catches the client up (resume or join), then streams frames out and
    /// events in until either side closes. Generic over the WebSocket: any
    /// `Sink` and `Stream` of [`WsMessage`].
    pub async fn connect<Si, St, E>(&self, params: ConnectParams, mut sink: Si, mut stream: St)
    where
        Si: Sink<WsMessage> + Unpin,
        St: Stream<Item = std::result::Result<WsMessage, E>> + Unpin,
        E: Into<ReadError>,
    {
        let _count = OpenGuard::new(&self.open);
        let mut out = Out {
            sink: &mut sink,
            timeout: self.config.write_timeout,
            closed: false,
        };
        self.run(params, &mut out, &mut stream).await;
        if out.closed {
            // The closing handshake: wait (bounded) for the client's close
            // so it reads ours before the connection goes.
            let _ = tokio::time::timeout(Duration::from_secs(2), async {
                while let Some(m) = stream.next().await {
                    if matches!(m, Ok(WsMessage::Close(_)) | Err(_)) {
                        break;
                    }
                }
            })
            .await;
        }
    }

    async fn run<Si, St, E>(&self, params: ConnectParams, out: &mut Out<'_, Si>, stream: &mut St)
    where
        Si: Sink<WsMessage> + Unpin,
        St: Stream<Item = std::result::Result<WsMessage, E>> + Unpin,
        E: Into<ReadError>,
    {
        let cfg = self.config.clone();
        if params.v.is_some_and(|v| v != crate::WIRE_VERSION) {
            out.close(close::VERSION, "unsupported protocol version")
                .await;
            return;
        }
        self.register_remote_events();
        let session = match self.engine.attach(&params.sid, &params.token).await {
            Ok(Attached::Local(s)) => s,
            Ok(Attached::Remote(f)) => return self.run_follower(f, params, out, stream).await,
            Err(e) if e.kind() == ErrorKind::InvalidSession => {
                out.close(close::INVALID_SESSION, "invalid session").await;
                return;
            }
            Err(e) => {
                // The store or the cluster failed: the session may well be
                // fine, so the client tries again (no reload).
                tracing::warn!(error = %e, "socket: the session could not be opened");
                out.close(close::MOVED, "the session cannot be reached now")
                    .await;
                return;
            }
        };
        // The session counts this socket as an open connection while it
        // lives (such sessions are evicted last).
        let _connection = session.connection();
        let span = tracing::debug_span!("socket", sid = %session.id().short());
        let start = match (params.seq, params.epoch.as_deref()) {
            (Some(seq), Some(epoch)) => session.resume(seq, epoch).await,
            _ => session
                .join()
                .await
                .map(|(r, sub)| (Catchup::Resync(r), sub)),
        };
        let (catchup, mut sub) = match start {
            Ok(x) => x,
            Err(_) => {
                out.close(close::SESSION_ENDED, "session ended").await;
                return;
            }
        };
        let token = session.token().unwrap_or_default();
        let client = params
            .c
            .as_deref()
            .filter(|c| !c.is_empty() && c.len() <= 16)
            .and_then(|c| u64::from_str_radix(c, 16).ok());
        let ok = match catchup {
            Catchup::Frames(frames) => {
                let mut ok = out.text(hello(&session.epoch(), &token)).await;
                for f in frames {
                    if !ok {
                        break;
                    }
                    ok = out.text(f.frame().to_owned()).await;
                }
                ok
            }
            Catchup::Resync(r) => {
                out.text(hello(r.epoch(), &token)).await && out.text(r.frame().to_owned()).await
            }
        };
        if !ok {
            return;
        }
        tracing::debug!(parent: &span, "client connected");
        let mut last_heard = Instant::now();
        // Pings, acks and junk: this connection's own budget. Events take
        // the session's (shared by all its connections).
        let mut others = Bucket::new(cfg.rate_per_sec, cfg.rate_burst);
        let mut ping =
            tokio::time::interval_at(Instant::now() + cfg.ping_interval, cfg.ping_interval);
        loop {
            tokio::select! {
                ev = sub.recv() => {
                    if !forward(out, ev, &token, &session).await {
                        break;
                    }
                }
                msg = stream.next() => {
                    let msg = match msg {
                        Some(Ok(m)) => m,
                        Some(Err(e)) => {
                            shown_read_error(out, e.into(), &span).await;
                            break;
                        }
                        None => break,
                    };
                    last_heard = Instant::now();
                    let frame = match &msg {
                        WsMessage::Text(t) if t.len() <= cfg.max_message => Some(parse_client_frame(t)),
                        _ => None,
                    };
                    let wait = match &frame {
                        Some(Ok(ClientFrame::Event { .. })) => {
                            session.reserve_event(cfg.rate_per_sec, cfg.rate_burst)
                        }
                        _ => others.reserve(),
                    };
                    if !wait.is_zero() {
                        tokio::time::sleep(wait).await;
                    }
                    match msg {
                        WsMessage::Text(t) => {
                            let _ = session.touch().await;
                            if t.len() > cfg.max_message {
                                out.close(close::TOO_BIG, "message too big").await;
                                break;
                            }
                            let Some(frame) = frame else { break };
                            if let Ok(ClientFrame::Ack { seq, hash }) = &frame {
                                if !session.holds(*seq, *hash) {
                                    tracing::debug!(parent: &span, seq, "client out of step; resync");
                                    sub.resync();
                                }
                            }
                            let reply = self.client_frame(&session, client, frame).await;
                            if session.is_moved() {
                                // Handed over while the event ran: its client
                                // resends what was not answered, to the owner.
                                out.close(close::MOVED, "the session moved").await;
                                break;
                            }
                            if let Some(reply) = reply {
                                // What the event rendered goes out before its
                                // reply, so a client sees the two in order.
                                // A subscriber that lagged owes a resync (which
                                // holds the event's change): awaited, since it
                                // takes the page lock.
                                let mut open = true;
                                loop {
                                    let ev = if sub.owes_resync() {
                                        sub.recv().await
                                    } else {
                                        // Unconstrained: under load the task's
                                        // coop budget runs out, and a budgeted
                                        // poll would say "pending" with the
                                        // frame in the channel (then the reply
                                        // would overtake it).
                                        match tokio::task::unconstrained(sub.recv()).now_or_never() {
                                            Some(ev) => ev,
                                            None if sub.owes_resync() => continue,
                                            None => break,
                                        }
                                    };
                                    open = forward(out, ev, &token, &session).await;
                                    if !open {
                                        break;
                                    }
                                }
                                if !open || !out.text(reply).await {
                                    break;
                                }
                            }
                        }
                        WsMessage::Binary(_) => {
                            out.close(close::UNSUPPORTED, "binary frames are not used").await;
                            break;
                        }
                        WsMessage::Ping(p) => {
                            if !out.send(WsMessage::Pong(p)).await {
                                break;
                            }
                        }
                        WsMessage::Pong(_) => {}
                        WsMessage::Close(_) => break,
                    }
                }
                _ = ping.tick() => {
                    if last_heard.elapsed() >= cfg.idle_timeout {
                        out.close(close::IDLE_TIMEOUT, "idle timeout").await;
                        break;
                    }
                    if !out.send(WsMessage::Ping(Vec::new())).await {
                        break;
                    }
                }
            }
        }
        tracing::debug!(parent: &span, "client disconnected");
    }

    /// Handles one client text frame; returns the reply, if any. An event
    /// with a ref (`r`) always gets one: its ref alone (a JSON number) when
    /// it was applied, or was applied before (a resend of client `client`),
    /// else an error frame.
    async fn client_frame(
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
                };
                // A handler that panics fails its event, not the session (the
                // page lock is async and not poisoned; the data is unchanged).
                let run = std::panic::AssertUnwindSafe(h(ctx)).catch_unwind();
                match run.await {
                    Ok(Ok(())) => r.map(|r| r.to_string()),
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

/// FNV-1a (32 bits) over the UTF-16 code units of a frame, as the JS client
/// computes it for its acks: a client whose frame for a seq hashes
/// differently from the one sent as that seq has lost or reordered one.
pub(crate) fn frame_hash(frame: &str) -> u32 {
    frame.encode_utf16().fold(0x811c_9dc5u32, |h, u| {
        (h ^ u32::from(u)).wrapping_mul(0x0100_0193)
    })
}

fn hello(epoch: &str, token: &str) -> String {
    format!(
        "{{\"t\":\"hello\",\"v\":{},\"epoch\":\"{}\",\"token\":\"{}\"}}",
        crate::WIRE_VERSION,
        epoch,
        token
    )
}

/// What the page is told when a handler fails with an internal error or
/// panics (the details go to the log).
const HANDLER_FAILED: &str = "Something went wrong. Please try again.";

fn error_frame(code: &str, message: &str, r: Option<u64>) -> String {
    let mut j = serde_json::json!({"t": "error", "code": code, "msg": message});
    if let Some(r) = r {
        j["r"] = r.into();
    }
    j.to_string()
}

fn attr_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('"', "&quot;")
        .replace('<', "&lt;")
}

/// Parses `sid=…&token=…&seq=…&epoch=…&v=…` (percent-decoded); unknown
/// or malformed fields are left unset.
pub(crate) fn parse_query(q: &str) -> ConnectParams {
    let mut p = ConnectParams::default();
    for pair in q.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = percent_decode(v);
        match k {
            "sid" => p.sid = v,
            "token" => p.token = v,
            "seq" => p.seq = v.parse().ok(),
            "epoch" => p.epoch = Some(v),
            "v" => p.v = v.parse().ok(),
            "c" => p.c = Some(v),
            _ => {}
        }
    }
    p
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = (b[i] == b'%' && i + 2 < b.len())
            .then(|| std::str::from_utf8(&b[i + 1..i + 3]).ok())
            .flatten()
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b[i], hex) {
            (_, Some(v)) => {
                out.push(v);
                i += 3;
            }
            (b'+', None) => {
                out.push(b' ');
                i += 1;
            }
            (c, None) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Closes the socket after a read error, with the code that names it.
async fn shown_read_error<Si: Sink<WsMessage> + Unpin>(
    out: &mut Out<'_, Si>,
    e: ReadError,
    span: &tracing::Span,
) {
    tracing::debug!(parent: span, error = %e, "socket error");
    match e {
        ReadError::TooBig => out.close(close::TOO_BIG, "message too big").await,
        ReadError::InvalidUtf8 => out.close(close::INVALID_DATA, "invalid UTF-8").await,
        ReadError::Protocol(_) => out.close(close::PROTOCOL, "protocol violation").await,
        ReadError::Other(_) => {}
    }
}

/// Sends one session event to the client; `false` once the connection is
/// done (the socket failed, or the session ended and was closed with 4002).
async fn forward<Si: Sink<WsMessage> + Unpin>(
    out: &mut Out<'_, Si>,
    ev: Option<SessionEvent>,
    token: &str,
    session: &Session,
) -> bool {
    match ev {
        Some(SessionEvent::Patch(p)) => out.text(p.frame().to_owned()).await,
        Some(SessionEvent::Resync(r)) => {
            out.text(hello(r.epoch(), token)).await && out.text(r.frame().to_owned()).await
        }
        None if session.is_moved() => {
            out.close(close::MOVED, "the session moved").await;
            false
        }
        None => {
            out.close(close::SESSION_ENDED, "session ended").await;
            false
        }
    }
}

/// A frame from the client.
#[derive(Debug, PartialEq)]
pub(crate) enum ClientFrame {
    /// `{"t":"ev","n":NAME,"d":PAYLOAD,"r":REF?}`
    Event {
        name: String,
        data: Json,
        r: Option<u64>,
    },
    /// `{"t":"ack","q":SEQ,"h":HASH?}`: the client holds `SEQ`; `HASH` is
    /// [`frame_hash`] of the frame it applied as `SEQ` (absent after a join).
    Ack { seq: u64, hash: Option<u32> },
    /// `{"t":"ping"}`
    Ping,
}

/// Parses a client frame; the error is a message for the error frame.
pub(crate) fn parse_client_frame(text: &str) -> std::result::Result<ClientFrame, String> {
    #[derive(Deserialize)]
    struct Raw {
        t: String,
        #[serde(default)]
        n: Option<String>,
        #[serde(default)]
        d: Option<Json>,
        #[serde(default)]
        q: Option<u64>,
        #[serde(default)]
        r: Option<u64>,
        #[serde(default)]
        h: Option<String>,
    }
    let raw: Raw = serde_json::from_str(text).map_err(|e| format!("malformed frame: {e}"))?;
    match raw.t.as_str() {
        "ev" => {
            let name = raw.n.ok_or("an event needs a name (\"n\")")?;
            if name.is_empty() || name.len() > 128 {
                return Err("an event name is 1 to 128 bytes".to_owned());
            }
            Ok(ClientFrame::Event {
                name,
                data: raw.d.unwrap_or(Json::Null),
                r: raw.r,
            })
        }
        "ack" => Ok(ClientFrame::Ack {
            seq: raw.q.ok_or("an ack needs a seq (\"q\")")?,
            hash: match raw.h {
                None => None,
                Some(h) => Some(
                    (h.len() <= 8)
                        .then(|| u32::from_str_radix(&h, 16).ok())
                        .flatten()
                        .ok_or("an ack's hash (\"h\") is up to 8 hex digits")?,
                ),
            },
        }),
        "ping" => Ok(ClientFrame::Ping),
        other => Err(format!("unknown frame type {other:?}")),
    }
}

/// Counts a connection while it lives.
struct OpenGuard<'a>(&'a std::sync::atomic::AtomicUsize);

impl<'a> OpenGuard<'a> {
    fn new(n: &'a std::sync::atomic::AtomicUsize) -> OpenGuard<'a> {
        n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        OpenGuard(n)
    }
}

impl Drop for OpenGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The writing half with a per-write timeout.
struct Out<'a, Si> {
    sink: &'a mut Si,
    timeout: Duration,
    /// Whether we sent a close.
    closed: bool,
}

impl<Si: Sink<WsMessage> + Unpin> Out<'_, Si> {
    /// Sends; false if the client is gone or too slow (then closed).
    async fn send(&mut self, m: WsMessage) -> bool {
        match tokio::time::timeout(self.timeout, self.sink.send(m)).await {
            Ok(Ok(())) => true,
            Ok(Err(_)) => false,
            Err(_) => {
                tracing::debug!("client too slow; dropped");
                false
            }
        }
    }

    async fn text(&mut self, t: String) -> bool {
        self.send(WsMessage::Text(t)).await
    }

    async fn close(&mut self, code: u16, reason: &str) {
        self.closed = true;
        let _ = self
            .send(WsMessage::Close(Some((code, reason.to_owned()))))
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins() {
        let mut env = minijinja::Environment::new();
        env.add_template("t", "x").unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let engine = rt.block_on(async { StateTemplate::builder(env).build().unwrap() });
        let live = Live::new(engine);
        let host = Some("app.example.com:8080");
        let ok = |o: &str| live.origin_allowed(Some(o), host);
        assert!(ok("http://app.example.com:8080"));
        assert!(ok("https://APP.example.com:8080/"));
        assert!(!ok("http://app.example.com:8081"), "wrong port");
        assert!(!ok("http://app.example.com"), "no port");
        assert!(!ok("http://app.example.com:8080.evil.com"));
        assert!(!ok("http://app.example.com.evil.com:8080"));
        assert!(!ok("http://evil.com@app.example.com:8080"));
        assert!(!ok("null"));
        assert!(!ok(""));
        assert!(!ok("ftp://app.example.com:8080"));
        assert!(!live.origin_allowed(None, host), "missing origin");
        assert!(!live.origin_allowed(Some("http://a"), None), "missing host");
        let listed = live.allowed_origins(["https://app.example.com"]);
        assert!(listed.origin_allowed(Some("https://app.example.com"), Some("x")));
        assert!(!listed.origin_allowed(Some("https://app.example.com.evil.com"), Some("x")));
        assert!(!listed.origin_allowed(Some("http://app.example.com"), Some("x")));
    }

    #[test]
    fn query() {
        let p = parse_query("sid=abc&token=a%2Bb-_&seq=7&epoch=00ff&v=1&x=%");
        assert_eq!(p.sid, "abc");
        assert_eq!(p.token, "a+b-_");
        assert_eq!(p.seq, Some(7));
        assert_eq!(p.epoch.as_deref(), Some("00ff"));
        assert_eq!(p.v, Some(1));
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
    }

    #[test]
    fn client_frames() {
        assert_eq!(
            parse_client_frame(r#"{"t":"ev","n":"inc","d":{"by":2},"r":7}"#),
            Ok(ClientFrame::Event {
                name: "inc".into(),
                data: serde_json::json!({"by": 2}),
                r: Some(7)
            })
        );
        assert_eq!(
            parse_client_frame(r#"{"t":"ack","q":4}"#),
            Ok(ClientFrame::Ack { seq: 4, hash: None })
        );
        assert_eq!(
            parse_client_frame(r#"{"t":"ack","q":4,"h":"1a47e90b"}"#),
            Ok(ClientFrame::Ack {
                seq: 4,
                hash: Some(0x1a47e90b)
            })
        );
        // The client's hash (FNV-1a over UTF-16 code units) of "abc", as
        // src/client/statetemplate.js computes it.
        assert_eq!(frame_hash("abc"), 0x1a47e90b);
        assert_eq!(frame_hash("\u{1F600}é"), {
            let mut h: u32 = 0x811c9dc5;
            for u in [0xD83Du16, 0xDE00, 0xE9] {
                h = (h ^ u32::from(u)).wrapping_mul(0x0100_0193);
            }
            h
        });
        assert_eq!(parse_client_frame(r#"{"t":"ping"}"#), Ok(ClientFrame::Ping));
        for bad in [
            "",
            "null",
            "[]",
            "{",
            r#"{"t":1}"#,
            r#"{"t":"ev"}"#,
            r#"{"t":"ev","n":""}"#,
            r#"{"t":"ack"}"#,
            r#"{"t":"nope"}"#,
        ] {
            assert!(parse_client_frame(bad).is_err(), "{bad}");
        }
        let deep = "[".repeat(10_000);
        assert!(parse_client_frame(&deep).is_err());
    }
}
