//! The browser loop: a connection loop over any WebSocket, event handlers,
//! resume, heartbeats; adapters for axum and plain tokio-tungstenite; and
//! the JS client the crate serves.
//!
//! The protocol is in `docs/protocol.md` ("Connection").

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use frames::ClientFrame;
pub(crate) use frames::{frame_hash, parse_client_frame, parse_query};
use handlers::{AppStates, Handler, error_frame};
pub use handlers::{Event, EventCtx};
pub use navigate::{NAVIGATE_EVENT, PARAMS_EVENT, Params};
pub use upload::{Upload, UploadOptions};

use crate::InitialRender;
use crate::session::StateTemplate;

#[cfg(feature = "axum")]
mod axum_adapter;
pub mod client;
mod tungstenite_server;

#[cfg(feature = "axum")]
mod axum_serve;
mod connection;
mod cookie;
mod follow;
mod frames;
mod handlers;
mod navigate;
mod upload;
mod upload_cancel;
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
    /// `p=1`: the client starts from the page it was served (its `seq` and
    /// `epoch` are the page's): when the session is still at that page it
    /// gets the statics in the `hello` and no join frame.
    #[serde(default, rename = "p")]
    pub page: Option<u8>,
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
    hooks: bool,
}

/// The debug listing's token: never shown by `Debug`.
#[derive(Clone)]
#[cfg_attr(not(feature = "axum"), allow(dead_code))]
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
    uploads: Arc<HashMap<String, Arc<upload::UploadEntry>>>,
    states: AppStates,
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
            states: AppStates::default(),
            uploads: Arc::new(HashMap::new()),
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
                hooks: false,
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

    /// The largest message (and frame) accepted from a client, in bytes
    /// (64 KiB by default). A bigger one closes the connection with 1009.
    /// The `hello` tells the client this limit, and the statetemplate
    /// client refuses a bigger event itself (`st:error` `too_large`)
    /// instead of sending it; behind a proxy with a lower limit, set the
    /// proxy's here.
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
    #[cfg_attr(not(feature = "axum"), allow(dead_code))]
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
    #[cfg_attr(not(feature = "axum"), allow(dead_code))]
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

    /// The path the extras script is served at (see [`Live::client_extras`]).
    pub fn extras_path(&self) -> String {
        format!("{}/extras.js", self.config.prefix)
    }

    /// Whether [`Live::mount`] also loads the extras script: JS hooks
    /// (elements with `st-hook="Name"` get the callbacks of
    /// `window.StHooks.Name`: `mounted`, `updated`, `destroyed`,
    /// `pushEvent`, `handleEvent`; see `docs/hooks.md`), live navigation
    /// (links with `st-patch` and `st-navigate`, back and forward; see
    /// [`Live::on_params`], [`Live::on_navigate`]) and file uploads. Off by
    /// default: pages without them load the core client alone.
    pub fn client_extras(mut self, on: bool) -> Live {
        self.config_mut().hooks = on;
        self
    }

    /// The markup to put in a page for a new session: the session's HTML in
    /// a root element that names the session, and the client script (and
    /// the extras script, with [`Live::client_extras`]). The root also says
    /// the seq and epoch the HTML is of (`data-st-seq`, `data-st-epoch`):
    /// the client starts from this page and its first connect gets no page
    /// content again while the session is still at it (see
    /// `docs/protocol.md`, "Connect from the page").
    pub fn mount(&self, initial: &InitialRender) -> String {
        // The page's seq and incarnation: the client starts from this HTML
        // and connects for what changed since (see `Session::resume_page`).
        let at = if initial.epoch.is_empty() {
            String::new()
        } else {
            format!(
                " data-st-seq=\"{}\" data-st-epoch=\"{}\"",
                initial.seq,
                attr_escape(&initial.epoch)
            )
        };
        let mut out = format!(
            "<div data-st-root data-st-session=\"{}\" data-st-token=\"{}\" data-st-ws=\"{}\"{}>{}</div>\n\
             <script src=\"{}?v={}\" defer></script>",
            initial.session_id,
            attr_escape(&initial.token),
            attr_escape(&self.ws_path()),
            at,
            initial.html,
            attr_escape(&self.client_path()),
            client::etag().trim_matches('"'),
        );
        if self.config.hooks {
            out.push_str(&format!(
                "\n<script src=\"{}?v={}\" defer></script>",
                attr_escape(&self.extras_path()),
                client::extras_etag().trim_matches('"'),
            ));
        }
        out
    }
}

fn attr_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('"', "&quot;")
        .replace('<', "&lt;")
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
}
