//! Load: many simulated browsers against a running statetemplate page
//! (issue 16, "Load and soak"), on one server or on several instances.
//!
//! ```sh
//! cargo run --release --example todos &                     # the server (port 3001)
//! cargo run --release --example load -- --url http://127.0.0.1:3001/ \
//!     --sessions 10000 --sockets 15000 --events-per-sec 200 --duration 60s
//! ```
//!
//! Several instances (a scale-out deployment behind a load balancer; here
//! the client picks the instance itself): give `--url` once per instance,
//! or as a comma-separated list, and `--server-pid` once per instance for
//! their RSS. Two todos servers sharing their sessions in one Redis (the
//! binaries run directly, so that `$!` is the server's pid, not cargo's):
//!
//! ```sh
//! cargo build --release --example todos --example load
//! export STATETEMPLATE_STORE=redis STATETEMPLATE_REDIS_URL=redis://127.0.0.1:6379
//! export STATETEMPLATE_KEYS=$(cargo run -q --example keygen)   # one key for both
//! ADDR=127.0.0.1:3101 target/release/examples/todos & P1=$!
//! ADDR=127.0.0.1:3102 target/release/examples/todos & P2=$!
//! target/release/examples/load \
//!     --url http://127.0.0.1:3101/,http://127.0.0.1:3102/ --spread-tabs \
//!     --sessions 10000 --sockets 15000 --server-pid $P1 --server-pid $P2
//! ```
//!
//! Session i loads its page from url i mod n (of the n URLs), and so do
//! its other tabs, unless `--spread-tabs`: then tab k of session i (its
//! GET and its WebSocket) goes to url (i + k) mod n, so a session's second
//! tab is on another instance than its first, which works only when the
//! instances share the session store (and keys). The WebSocket URL and the
//! Origin are those of the tab's URL. The report adds a line per instance
//! (sessions, sockets, events, latencies, errors), a broadcast line per
//! instance (each has its own clock) and RSS lines per pid; each error is
//! listed with the URL it happened at (none of this with one URL).
//!
//! Each simulated browser does what a browser with the JS client does:
//! GET the page (a fresh session: the id and token from the root's
//! `data-st-session` / `data-st-token`, the cookie `st=SID.TOKEN` kept),
//! connect the WebSocket (`?v=2&sid=…&token=…&c=CLIENT`, with `Origin` set
//! to the page's origin), read `hello` and the join frame, count every
//! update frame it is sent (the seq), ack at most once a second with the
//! frame's hash, ping every 15 s, and send events. A second socket of a
//! session (`--sockets` above `--sessions`) is another tab: it GETs the page
//! with the cookie (the same session, a fresh token) and connects with its
//! own client id. Sessions beyond `--sockets` are made by the GET only: they
//! exist in the server, unjoined, with no socket.
//!
//! Events go out at `--events-per-sec` in all, round-robin over the open
//! sockets, for `--duration` (the steady phase; the setup before it is
//! bounded by `--setup-timeout`). Two latencies are measured from the
//! moment the event is written: to its answer (the bare ref), and to the
//! update frame that carries it. The default event is the demos' `note`
//! with a unique text per event, so that frame is the one that holds the
//! text (not the clock's frame that may come first); for another `--event`
//! it is the first update frame after the send. Then the tool stops sending,
//! waits up to 5 s for the last answers, closes its sockets and prints a
//! report. Every `--progress` it prints a line (and reads each server's RSS
//! when `--server-pid` is given).
//!
//! The demos push their clock to every connected session twice a second;
//! the report measures that too, as a broadcast: for each tick (the clock
//! text in the frame), how many sockets got it and the time from its first
//! frame to its last here.
//!
//! One source address holds `--per-source` sessions (default 20): the
//! demos allow 30 new sessions at once per client address, then one a
//! second, so 10,000 page loads need many addresses. With a loopback URL,
//! browsers bind to 127.1.X.Y (all of 127.0.0.0/8 is local on Linux); 0
//! uses the OS's choice.
//!
//! Open files: one per socket, here and in the server. This tool warns when
//! `--sockets` is near its soft limit (`ulimit -n`; raise it in the shell
//! before running, for both processes).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};

const HELP: &str = "\
load: many simulated browsers (GET, WebSocket, events) against a statetemplate page

USAGE: cargo run --release --example load -- [OPTIONS]

OPTIONS:
  --url URL[,URL...]     the page (default http://127.0.0.1:3001/); repeat it or give a
                         comma-separated list for several instances: session i loads
                         its page from url i mod n, and so do its other tabs
  --spread-tabs          socket j (tab k = j / N of session i = j mod N) does its GET and
                         WebSocket on url (i + k) mod n instead: a second tab lands on
                         another instance (which needs a store and keys they share)
  --sessions N           sessions to make, one GET each (default 100)
  --sockets M            WebSockets to open (default: --sessions); socket j joins
                         session j mod N, so M > N opens more tabs per session and
                         M < N leaves N - M sessions without a socket
  --events-per-sec R     events per second in all, round-robin over the sockets (default 10)
  --duration D           length of the steady phase: 60s, 5m, 500ms (default 10s)
  --progress D           a progress line every D (default 5s)
  --server-pid PID       read the server's VmRSS from /proc/PID/status at start,
                         after setup, every --progress and at the end; repeat it (or
                         a comma-separated list) for one line per instance
  --event NAME           the event to send (default note: {\"value\": a unique text})
  --payload JSON         its payload, for an event other than note (default {})
  --per-source K         sessions per source address 127.1.X.Y (default 20; 0: the OS's)
  --concurrency C        page loads and connects in flight during setup (default 200)
  --setup-timeout D      the most the setup may take (default 300s)
  --threads T            tokio worker threads (default 2)
  --no-acks              do not ack frames (the JS client acks at most once a second)
  -h, --help             this text

The report ends with a line `errors: 0` when nothing failed, and
`events: sent S, answered A, unanswered U` (U is 0 when every event was answered).
With several URLs it adds a line per URL and names the URL of each error.

Two instances sharing sessions in Redis, with one key (STATETEMPLATE_KEYS):
  export STATETEMPLATE_STORE=redis STATETEMPLATE_REDIS_URL=redis://127.0.0.1:6379
  export STATETEMPLATE_KEYS=$(cargo run -q --example keygen)
  ADDR=127.0.0.1:3101 target/release/examples/todos & P1=$!
  ADDR=127.0.0.1:3102 target/release/examples/todos & P2=$!
  cargo run --release --example load -- --url http://127.0.0.1:3101/,http://127.0.0.1:3102/ \
    --spread-tabs --server-pid $P1 --server-pid $P2";

#[derive(Debug, Clone)]
struct Opts {
    /// The instances' page URLs (at least one).
    urls: Vec<String>,
    /// Tab k of session i on `urls[(i + k) % n]` instead of `urls[i % n]`.
    spread_tabs: bool,
    sessions: usize,
    sockets: usize,
    rate: f64,
    duration: Duration,
    progress: Duration,
    server_pids: Vec<u32>,
    event: String,
    payload: serde_json::Value,
    per_source: usize,
    concurrency: usize,
    setup_timeout: Duration,
    threads: usize,
    acks: bool,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("not a duration: {s} (say 60s, 5m, 500ms)");
    let (num, mult) = if let Some(n) = s.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else if let Some(n) = s.strip_suffix('h') {
        (n, 3600.0)
    } else {
        (s, 1.0)
    };
    let v: f64 = num.parse().map_err(|_| bad())?;
    if !v.is_finite() || v < 0.0 {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(v * mult))
}

fn parse_args() -> Result<Opts, String> {
    let mut o = Opts {
        urls: Vec::new(),
        spread_tabs: false,
        sessions: 100,
        sockets: usize::MAX,
        rate: 10.0,
        duration: Duration::from_secs(10),
        progress: Duration::from_secs(5),
        server_pids: Vec::new(),
        event: "note".into(),
        payload: serde_json::json!({}),
        per_source: 20,
        concurrency: 200,
        setup_timeout: Duration::from_secs(300),
        threads: 2,
        acks: true,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "-h" || a == "--help" {
            println!("{HELP}");
            std::process::exit(0);
        }
        if a == "--no-acks" {
            o.acks = false;
            continue;
        }
        if a == "--spread-tabs" {
            o.spread_tabs = true;
            continue;
        }
        let (flag, inline) = match a.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_owned(), Some(v.to_owned())),
            _ => (a.clone(), None),
        };
        let v = match inline {
            Some(v) => v,
            None => args
                .next()
                .ok_or_else(|| format!("{flag} needs a value (see --help)"))?,
        };
        let num = |v: &str| -> Result<usize, String> {
            v.replace('_', "")
                .parse()
                .map_err(|_| format!("{flag}: not a number: {v}"))
        };
        match flag.as_str() {
            "--url" => {
                for u in v.split(',').map(str::trim).filter(|u| !u.is_empty()) {
                    o.urls.push(u.to_owned());
                }
            }
            "--sessions" => o.sessions = num(&v)?,
            "--sockets" => o.sockets = num(&v)?,
            "--events-per-sec" => {
                o.rate = v
                    .parse()
                    .map_err(|_| format!("--events-per-sec: not a number: {v}"))?;
                if !(o.rate >= 0.0 && o.rate.is_finite()) {
                    return Err("--events-per-sec must be 0 or more".into());
                }
            }
            "--duration" => o.duration = parse_duration(&v)?,
            "--progress" => o.progress = parse_duration(&v)?,
            "--server-pid" => {
                for p in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                    o.server_pids.push(num(p)? as u32);
                }
            }
            "--event" => o.event = v,
            "--payload" => {
                o.payload =
                    serde_json::from_str(&v).map_err(|e| format!("--payload: not JSON: {e}"))?
            }
            "--per-source" => o.per_source = num(&v)?,
            "--concurrency" => o.concurrency = num(&v)?.max(1),
            "--setup-timeout" => o.setup_timeout = parse_duration(&v)?,
            "--threads" => o.threads = num(&v)?.max(1),
            other => return Err(format!("unknown option {other} (see --help)")),
        }
    }
    if o.urls.is_empty() {
        o.urls.push("http://127.0.0.1:3001/".into());
    }
    if o.sockets == usize::MAX {
        o.sockets = o.sessions;
    }
    if o.sessions == 0 {
        return Err("--sessions must be at least 1".into());
    }
    if o.progress.is_zero() {
        o.progress = Duration::from_secs(5);
    }
    Ok(o)
}

/// Where the page is: `http://HOST:PORT/PATH`.
#[derive(Debug, Clone)]
struct Target {
    addr: SocketAddr,
    /// `HOST:PORT` as in the URL (the Host header, and the Origin's).
    authority: String,
    path: String,
}

fn parse_url(url: &str) -> Result<Target, String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("--url: only http:// URLs: {url}"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let with_port = if authority.rsplit_once(':').is_some_and(|(_, p)| {
        !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) && !authority.ends_with(']')
    }) {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    use std::net::ToSocketAddrs;
    let addr = with_port
        .to_socket_addrs()
        .map_err(|e| format!("--url: cannot resolve {authority}: {e}"))?
        .next()
        .ok_or_else(|| format!("--url: no address for {authority}"))?;
    Ok(Target {
        addr,
        authority: authority.to_owned(),
        path: path.to_owned(),
    })
}

/// Counters shared by every task.
#[derive(Default)]
struct Stats {
    sessions: AtomicU64,
    get_only: AtomicU64,
    connected: AtomicU64,
    open: AtomicU64,
    sent: AtomicU64,
    answered: AtomicU64,
    frames: AtomicU64,
    joins_after_setup: AtomicU64,
    acks: AtomicU64,
    /// Sockets whose setup ended (connected or failed).
    setup_done: AtomicU64,
    /// Set once the steady phase runs: what is recorded before is setup.
    steady: AtomicBool,
    /// Per instance: `per[u]` counts what went to `urls[u]`.
    per: Vec<PerUrl>,
    /// By instance (None: the client's own errors) and kind.
    errors: Mutex<BTreeMap<(Option<usize>, String), u64>>,
    lat: Mutex<Latencies>,
    /// By instance and clock text (each instance has its own clock).
    ticks: Mutex<HashMap<(usize, u32), Tick>>,
}

/// The counters of one instance (one `--url`).
#[derive(Default)]
struct PerUrl {
    sessions: AtomicU64,
    /// Sockets that tried this instance.
    asked: AtomicU64,
    connected: AtomicU64,
    open: AtomicU64,
    sent: AtomicU64,
    answered: AtomicU64,
}

#[derive(Default)]
struct Latencies {
    /// Microseconds, the whole steady phase, per instance.
    answer: Vec<Vec<u32>>,
    frame: Vec<Vec<u32>>,
    /// Since the last progress line, all instances.
    answer_now: Vec<u32>,
    frame_now: Vec<u32>,
}

/// One clock tick of the server as seen here.
#[derive(Clone, Copy)]
struct Tick {
    first: Instant,
    last: Instant,
    sockets: u32,
}

impl Stats {
    fn new(instances: usize) -> Self {
        Stats {
            per: (0..instances).map(|_| PerUrl::default()).collect(),
            lat: Mutex::new(Latencies {
                answer: vec![Vec::new(); instances],
                frame: vec![Vec::new(); instances],
                ..Latencies::default()
            }),
            ..Stats::default()
        }
    }

    /// An error at instance `u` (`urls[u]`).
    fn err(&self, u: usize, kind: impl Into<String>) {
        self.count(Some(u), kind.into());
    }

    /// An error of the client's own, not of one instance.
    fn error(&self, kind: impl Into<String>) {
        self.count(None, kind.into());
    }

    fn count(&self, u: Option<usize>, kind: String) {
        *self
            .errors
            .lock()
            .expect("errors")
            .entry((u, kind))
            .or_default() += 1;
    }

    fn error_total(&self) -> u64 {
        self.errors.lock().expect("errors").values().sum()
    }
}

fn micros(d: Duration) -> u32 {
    d.as_micros().min(u32::MAX as u128) as u32
}

/// The kind of an I/O error, as a short name (the errno's when known).
fn io_kind(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(24) => "EMFILE (too many open files)".into(),
        Some(23) => "ENFILE (too many open files in the system)".into(),
        Some(98) => "EADDRINUSE".into(),
        Some(99) => "EADDRNOTAVAIL (no local port)".into(),
        Some(104) => "ECONNRESET".into(),
        Some(110) => "ETIMEDOUT".into(),
        Some(111) => "ECONNREFUSED".into(),
        Some(n) => format!("errno {n} ({:?})", e.kind()),
        None => format!("{:?}", e.kind()),
    }
}

fn ws_kind(e: &tungstenite::Error) -> String {
    use tungstenite::Error as E;
    match e {
        E::Io(e) => io_kind(e),
        E::Http(r) => format!("HTTP {}", r.status().as_u16()),
        E::ConnectionClosed => "connection closed".into(),
        E::AlreadyClosed => "already closed".into(),
        E::Protocol(p) => format!("protocol: {p}"),
        E::Capacity(c) => format!("capacity: {c}"),
        other => format!("{other}"),
    }
}

/// Browser `i`'s source address: 127.1.X.Y, `per_source` browsers each.
fn source(target: &Target, per_source: usize, i: usize) -> Option<IpAddr> {
    if per_source == 0 || !target.addr.ip().is_loopback() || !target.addr.is_ipv4() {
        return None;
    }
    let k = i / per_source;
    let (x, y) = (k / 250, k % 250 + 1);
    (x < 256).then(|| IpAddr::V4(Ipv4Addr::new(127, 1, x as u8, y as u8)))
}

async fn tcp(target: &Target, src: Option<IpAddr>) -> std::io::Result<TcpStream> {
    let sock = if target.addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(ip) = src {
        sock.bind(SocketAddr::new(ip, 0))?;
    }
    let s = sock.connect(target.addr).await?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// What a page load gives a browser.
#[derive(Debug, Clone)]
struct Page {
    sid: String,
    token: String,
    ws_path: String,
    /// `SID.TOKEN` from `Set-Cookie: st=…`.
    cookie: Option<String>,
}

fn attr<'a>(html: &'a str, name: &str) -> Option<&'a str> {
    let key = format!("{name}=\"");
    let at = html.find(&key)? + key.len();
    let end = html[at..].find('"')?;
    Some(&html[at..at + end])
}

/// GET the page (with the session cookie when `cookie` is given).
async fn get_page(
    target: &Target,
    src: Option<IpAddr>,
    cookie: Option<&str>,
) -> Result<Page, String> {
    let mut s = tcp(target, src)
        .await
        .map_err(|e| format!("GET connect: {}", io_kind(&e)))?;
    let cookie = cookie
        .map(|c| format!("Cookie: st={c}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: statetemplate-load\r\nAccept: text/html\r\n{cookie}Connection: close\r\n\r\n",
        target.path, target.authority
    );
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| format!("GET write: {}", io_kind(&e)))?;
    let mut buf = Vec::with_capacity(8192);
    s.read_to_end(&mut buf)
        .await
        .map_err(|e| format!("GET read: {}", io_kind(&e)))?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| "GET: no complete response".to_owned())?;
    let status = head.split(' ').nth(1).unwrap_or("?");
    if status != "200" {
        return Err(format!("GET: HTTP {status}"));
    }
    let cookie = head.lines().find_map(|l| {
        let (name, v) = l.split_once(':')?;
        if !name.eq_ignore_ascii_case("set-cookie") {
            return None;
        }
        let v = v.trim().strip_prefix("st=")?;
        Some(v.split(';').next()?.to_owned())
    });
    let from_cookie = cookie.as_deref().and_then(|c| c.split_once('.'));
    let sid = attr(body, "data-st-session").or(from_cookie.map(|c| c.0));
    let token = attr(body, "data-st-token").or(from_cookie.map(|c| c.1));
    let (Some(sid), Some(token)) = (sid, token) else {
        return Err("GET: no session in the page or the cookie".into());
    };
    Ok(Page {
        sid: sid.to_owned(),
        token: token.to_owned(),
        ws_path: attr(body, "data-st-ws")
            .unwrap_or("/statetemplate/ws")
            .to_owned(),
        cookie,
    })
}

type Ws = WebSocketStream<TcpStream>;

/// FNV-1a over the UTF-16 code units, as the JS client hashes a frame.
fn frame_hash(t: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for u in t.encode_utf16() {
        h = (h ^ u32::from(u)).wrapping_mul(0x0100_0193);
    }
    h
}

/// The first `HH:MM:SS.D` in `t` (the demos' clock text), as tenths of a
/// second of the day.
fn clock_in(t: &str) -> Option<u32> {
    let b = t.as_bytes();
    let d = |i: usize| -> Option<u32> {
        let c = *b.get(i)?;
        c.is_ascii_digit().then(|| u32::from(c - b'0'))
    };
    let mut i = 0;
    while i + 10 <= b.len() {
        if b[i + 2] == b':' && b[i + 5] == b':' && b[i + 8] == b'.' {
            if let (Some(h1), Some(h2), Some(m1), Some(m2), Some(s1), Some(s2), Some(t1)) = (
                d(i),
                d(i + 1),
                d(i + 3),
                d(i + 4),
                d(i + 6),
                d(i + 7),
                d(i + 9),
            ) {
                return Some(
                    ((h1 * 10 + h2) * 3600 + (m1 * 10 + m2) * 60 + s1 * 10 + s2) * 10 + t1,
                );
            }
        }
        i += 1;
    }
    None
}

struct Pending {
    r: u64,
    at: Instant,
    marker: Option<String>,
    framed: bool,
}

/// Connects socket `j` to `page` and reads `hello` and the join frame.
async fn connect(
    target: &Target,
    src: Option<IpAddr>,
    page: &Page,
    client: &str,
) -> Result<(Ws, u64), String> {
    let stream = tcp(target, src)
        .await
        .map_err(|e| format!("WS connect: {}", io_kind(&e)))?;
    let url = format!(
        "ws://{}{}?v=2&sid={}&token={}&c={client}",
        target.authority, page.ws_path, page.sid, page.token
    );
    let mut req = url
        .into_client_request()
        .map_err(|e| format!("WS request: {e}"))?;
    let origin = format!("http://{}", target.authority);
    req.headers_mut().insert(
        "origin",
        origin.parse().map_err(|_| "WS: bad origin".to_owned())?,
    );
    // tungstenite's default read buffer is 128 KiB a socket: 15,000 sockets
    // would hold 1.9 GiB once a busy socket has touched its pages.
    let config = tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(4 << 10)
        .write_buffer_size(4 << 10);
    let (mut ws, _) = tokio_tungstenite::client_async_with_config(req, stream, Some(config))
        .await
        .map_err(|e| format!("WS handshake: {}", ws_kind(&e)))?;
    let mut text = async || -> Result<String, String> {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => return Ok(t.as_str().to_owned()),
                Some(Ok(Message::Close(c))) => {
                    return Err(format!(
                        "WS closed before the join: {}",
                        c.map(|c| u16::from(c.code)).unwrap_or(1005)
                    ));
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(format!("WS read before the join: {}", ws_kind(&e))),
                None => return Err("WS ended before the join".into()),
            }
        }
    };
    let hello = text().await?;
    if !hello.starts_with("{\"t\":\"hello\"") && !hello.contains("\"hello\"") {
        return Err("WS: the first message is not hello".into());
    }
    let join = text().await?;
    let j: serde_json::Value =
        serde_json::from_str(&join).map_err(|_| "WS: the join is not JSON".to_owned())?;
    let q = j
        .get("q")
        .and_then(|q| q.as_u64())
        .ok_or_else(|| "WS: the second message is not a join frame".to_owned())?;
    Ok((ws, q))
}

struct Conn {
    j: usize,
    /// The instance (index into `urls`) this socket is connected to.
    u: usize,
    ws: Ws,
    seq: u64,
    /// The last update frame applied (None right after a join).
    last_hash: Option<u32>,
    next_ref: u64,
    pending: VecDeque<Pending>,
    ack_at: Option<tokio::time::Instant>,
    acked: u64,
}

enum Step {
    Go,
    Closed,
}

impl Conn {
    async fn send(&mut self, s: &Stats, o: &Opts) -> Step {
        self.next_ref += 1;
        let r = self.next_ref;
        let (payload, marker) = if o.event == "note" {
            let m = format!("t{}r{}e", self.j, r);
            (serde_json::json!({ "value": m }), Some(m))
        } else {
            (o.payload.clone(), None)
        };
        let ev = serde_json::json!({"t": "ev", "n": o.event, "d": payload, "r": r});
        let at = Instant::now();
        if let Err(e) = self.ws.send(Message::Text(ev.to_string().into())).await {
            s.err(self.u, format!("WS send: {}", ws_kind(&e)));
            return Step::Closed;
        }
        s.sent.fetch_add(1, Ordering::Relaxed);
        s.per[self.u].sent.fetch_add(1, Ordering::Relaxed);
        self.pending.push_back(Pending {
            r,
            at,
            marker,
            framed: false,
        });
        Step::Go
    }

    fn on_text(&mut self, t: &str, s: &Stats, o: &Opts) {
        let now = Instant::now();
        match t.as_bytes().first() {
            Some(b'0'..=b'9') => {
                let Ok(r) = t.trim().parse::<u64>() else {
                    s.err(self.u, "a bad answer");
                    return;
                };
                while let Some(p) = self.pending.front() {
                    if p.r > r {
                        break;
                    }
                    let p = self.pending.pop_front().expect("front");
                    if p.r < r {
                        s.err(self.u, "an event answered out of order or not at all");
                        continue;
                    }
                    s.answered.fetch_add(1, Ordering::Relaxed);
                    s.per[self.u].answered.fetch_add(1, Ordering::Relaxed);
                    if p.marker.is_some() && !p.framed {
                        s.err(self.u, "an answer before its frame");
                    }
                    if s.steady.load(Ordering::Relaxed) {
                        let mut l = s.lat.lock().expect("lat");
                        let us = micros(now - p.at);
                        l.answer[self.u].push(us);
                        l.answer_now.push(us);
                    }
                }
            }
            Some(b'[') => {
                self.seq += 1;
                s.frames.fetch_add(1, Ordering::Relaxed);
                if o.acks {
                    self.last_hash = Some(frame_hash(t));
                    if self.ack_at.is_none() {
                        self.ack_at = Some(tokio::time::Instant::now() + Duration::from_secs(1));
                    }
                }
                let steady = s.steady.load(Ordering::Relaxed);
                for p in self.pending.iter_mut().filter(|p| !p.framed) {
                    let hit = match &p.marker {
                        Some(m) => t.contains(m.as_str()),
                        None => true,
                    };
                    if hit {
                        p.framed = true;
                        if steady {
                            let mut l = s.lat.lock().expect("lat");
                            let us = micros(now - p.at);
                            l.frame[self.u].push(us);
                            l.frame_now.push(us);
                        }
                    }
                }
                if steady && let Some(c) = clock_in(t) {
                    let mut ticks = s.ticks.lock().expect("ticks");
                    let e = ticks.entry((self.u, c)).or_insert(Tick {
                        first: now,
                        last: now,
                        sockets: 0,
                    });
                    e.last = now;
                    e.sockets += 1;
                }
            }
            Some(b'{') => {
                let v: serde_json::Value = match serde_json::from_str(t) {
                    Ok(v) => v,
                    Err(_) => return s.err(self.u, "a message that is not JSON"),
                };
                if let Some(q) = v.get("q").and_then(|q| q.as_u64()) {
                    // A join (a resync): the seq restarts from it.
                    self.seq = q;
                    self.last_hash = None;
                    s.joins_after_setup.fetch_add(1, Ordering::Relaxed);
                    s.err(self.u, "a join after setup (resync)");
                    return;
                }
                match v.get("t").and_then(|t| t.as_str()) {
                    Some("pong") => {}
                    Some("hello") => s.err(self.u, "a hello after setup (resync)"),
                    Some("error") => {
                        let code = v.get("code").and_then(|c| c.as_str()).unwrap_or("?");
                        s.err(self.u, format!("event error {code}"));
                        if let Some(r) = v.get("r").and_then(|r| r.as_u64()) {
                            self.pending.retain(|p| p.r != r);
                        }
                    }
                    _ => s.err(self.u, "an unknown message"),
                }
            }
            _ => s.err(self.u, "an unknown message"),
        }
    }

    async fn ack(&mut self, s: &Stats) -> Step {
        self.ack_at = None;
        if self.seq == self.acked {
            return Step::Go;
        }
        let msg = match self.last_hash {
            Some(h) => format!(r#"{{"t":"ack","q":{},"h":"{h:x}"}}"#, self.seq),
            None => format!(r#"{{"t":"ack","q":{}}}"#, self.seq),
        };
        self.acked = self.seq;
        if let Err(e) = self.ws.send(Message::Text(msg.into())).await {
            s.err(self.u, format!("WS send: {}", ws_kind(&e)));
            return Step::Closed;
        }
        s.acks.fetch_add(1, Ordering::Relaxed);
        Step::Go
    }

    /// Runs the socket until `phase` reaches 2 (close) or the server ends it.
    async fn run(
        mut self,
        s: Arc<Stats>,
        o: Arc<Opts>,
        mut cmds: mpsc::Receiver<()>,
        mut phase: watch::Receiver<u8>,
    ) {
        let mut ping = tokio::time::interval(Duration::from_secs(15));
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ping.tick().await;
        let far = tokio::time::Instant::now() + Duration::from_secs(86_400 * 365);
        let closed = loop {
            let ack_at = self.ack_at.unwrap_or(far);
            tokio::select! {
                msg = self.ws.next() => match msg {
                    Some(Ok(Message::Text(t))) => self.on_text(t.as_str(), &s, &o),
                    Some(Ok(Message::Close(c))) => {
                        let code = c.map(|c| u16::from(c.code)).unwrap_or(1005);
                        s.err(self.u, format!("closed by the server: {code}"));
                        break true;
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        s.err(self.u, format!("WS read: {}", ws_kind(&e)));
                        break true;
                    }
                    None => {
                        s.err(self.u, "WS ended by the server");
                        break true;
                    }
                },
                Some(()) = cmds.recv() => {
                    if let Step::Closed = self.send(&s, &o).await { break true; }
                }
                _ = tokio::time::sleep_until(ack_at), if self.ack_at.is_some() => {
                    if let Step::Closed = self.ack(&s).await { break true; }
                }
                _ = ping.tick() => {
                    if let Err(e) = self.ws.send(Message::Text(r#"{"t":"ping"}"#.into())).await {
                        s.err(self.u, format!("WS send: {}", ws_kind(&e)));
                        break true;
                    }
                }
                r = phase.changed() => {
                    if r.is_err() || *phase.borrow() >= 2 { break false; }
                }
            }
        };
        s.open.fetch_sub(1, Ordering::Relaxed);
        s.per[self.u].open.fetch_sub(1, Ordering::Relaxed);
        if !closed {
            // Close as a browser leaving the page does, and read until the
            // server's close (bounded).
            let _ = self.ws.close(None).await;
            let _ = tokio::time::timeout(Duration::from_secs(3), async {
                while let Some(Ok(_)) = self.ws.next().await {}
            })
            .await;
        }
    }
}

fn vm_rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// This process's open-file soft limit, from /proc/self/limits.
fn fd_soft_limit() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/limits").ok()?;
    let l = s.lines().find(|l| l.starts_with("Max open files"))?;
    l.split_whitespace().nth(3)?.parse().ok()
}

fn pct(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i] as f64 / 1000.0
}

/// `p50 X p99 Y ms` of sorted microseconds, or `none`.
fn p50_p99(sorted: &[u32]) -> String {
    if sorted.is_empty() {
        return "none".into();
    }
    format!(
        "p50 {:.2} p99 {:.2} ms",
        pct(sorted, 0.5),
        pct(sorted, 0.99)
    )
}

fn summary(v: &mut [u32]) -> String {
    if v.is_empty() {
        return "none".into();
    }
    v.sort_unstable();
    format!(
        "p50 {:.2} ms, p99 {:.2} ms, p999 {:.2} ms, max {:.2} ms (n={})",
        pct(v, 0.5),
        pct(v, 0.99),
        pct(v, 0.999),
        *v.last().expect("max") as f64 / 1000.0,
        v.len()
    )
}

fn main() {
    let o = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("load: {e}");
            std::process::exit(2);
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(o.threads)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let ok = rt.block_on(run(o));
    std::process::exit(if ok { 0 } else { 1 });
}

/// The instance (index into `urls`) socket `j` uses: it is tab
/// `k = j / sessions` of session `i = j % sessions`, on `urls[i % n]`, or on
/// `urls[(i + k) % n]` with `--spread-tabs`. Session `i`'s first page load
/// is `instance(o, i)`, that is `urls[i % n]`.
fn instance(o: &Opts, j: usize) -> usize {
    let i = j % o.sessions;
    let k = if o.spread_tabs { j / o.sessions } else { 0 };
    (i + k) % o.urls.len()
}

/// The RSS of each `--server-pid`.
fn rss_all(pids: &[u32]) -> Vec<Option<u64>> {
    pids.iter().map(|&p| vm_rss_kib(p)).collect()
}

/// RSS readings for a line: `236.0 MiB` for one server, `236.0, 240.1 MiB`
/// for several; `missing` when there is no pid or the one was not read.
fn rss_text(v: &[Option<u64>], missing: &str) -> String {
    match v {
        [] | [None] => missing.to_owned(),
        [Some(k)] => mib(*k),
        many => format!(
            "{} MiB",
            many.iter()
                .map(|r| r.map(|k| format!("{:.1}", k as f64 / 1024.0)))
                .map(|r| r.unwrap_or_else(|| "-".into()))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

async fn run(o: Opts) -> bool {
    let mut targets = Vec::new();
    for url in &o.urls {
        match parse_url(url) {
            Ok(t) => targets.push(t),
            Err(e) => {
                eprintln!("load: {e}");
                return false;
            }
        }
    }
    let targets = Arc::new(targets);
    let n = targets.len();
    if let Some(limit) = fd_soft_limit()
        && (o.sockets as u64) + (o.concurrency as u64) + 64 > limit
    {
        eprintln!(
            "load: warning: {} sockets (+{} in flight during setup) need more open files than the soft limit {limit}; raise it with `ulimit -n` before running (the server needs as many)",
            o.sockets, o.concurrency
        );
    }
    let o = Arc::new(o);
    let s = Arc::new(Stats::new(n));
    let pids = o.server_pids.clone();
    let rss_start = rss_all(&pids);
    let mut rss_samples: Vec<Vec<(f64, u64)>> = vec![Vec::new(); pids.len()];
    let mut sample = |t: f64, v: &[Option<u64>]| {
        for (samples, r) in rss_samples.iter_mut().zip(v) {
            if let Some(r) = r {
                samples.push((t, *r));
            }
        }
    };
    println!(
        "load: {} sessions, {} sockets, {} events/s for {:.0} s against {}{} (server RSS {})",
        o.sessions,
        o.sockets,
        o.rate,
        o.duration.as_secs_f64(),
        o.urls.join(", "),
        if n > 1 && o.spread_tabs {
            " (tabs spread)"
        } else {
            ""
        },
        rss_text(&rss_start, "not read")
    );
    let t0 = Instant::now();

    // Setup: page loads, then sockets (tabs beyond the first GET with the
    // cookie), `concurrency` at a time.
    let (phase_tx, phase_rx) = watch::channel(0u8);
    let pages: Arc<Mutex<Vec<Option<Page>>>> = Arc::new(Mutex::new(vec![None; o.sessions]));
    let sem = Arc::new(Semaphore::new(o.concurrency));
    let (conn_tx, mut conn_rx) = mpsc::unbounded_channel::<(usize, mpsc::Sender<()>)>();
    let setup = {
        let (o, s, targets, pages, sem) = (
            o.clone(),
            s.clone(),
            targets.clone(),
            pages.clone(),
            sem.clone(),
        );
        let phase_rx = phase_rx.clone();
        tokio::spawn(async move {
            let mut tasks = Vec::new();
            for i in 0..o.sessions {
                let permit = sem.clone().acquire_owned().await.expect("semaphore");
                let (o, s, targets, pages) = (o.clone(), s.clone(), targets.clone(), pages.clone());
                tasks.push(tokio::spawn(async move {
                    let _permit = permit;
                    let u = instance(&o, i);
                    let target = &targets[u];
                    match get_page(target, source(target, o.per_source, i), None).await {
                        Ok(p) => {
                            s.sessions.fetch_add(1, Ordering::Relaxed);
                            s.per[u].sessions.fetch_add(1, Ordering::Relaxed);
                            if i >= o.sockets {
                                s.get_only.fetch_add(1, Ordering::Relaxed);
                            }
                            pages.lock().expect("pages")[i] = Some(p);
                        }
                        Err(e) => s.err(u, e),
                    }
                }));
            }
            for t in tasks.drain(..) {
                let _ = t.await;
            }
            for j in 0..o.sockets {
                let i = j % o.sessions;
                let u = instance(&o, j);
                s.per[u].asked.fetch_add(1, Ordering::Relaxed);
                let Some(page) = pages.lock().expect("pages")[i].clone() else {
                    s.err(instance(&o, i), "no socket: its session's page load failed");
                    s.setup_done.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                let permit = sem.clone().acquire_owned().await.expect("semaphore");
                let (o, s, targets, conn_tx, phase_rx) = (
                    o.clone(),
                    s.clone(),
                    targets.clone(),
                    conn_tx.clone(),
                    phase_rx.clone(),
                );
                tasks.push(tokio::spawn(async move {
                    let target = &targets[u];
                    let src = source(target, o.per_source, i);
                    let done = || s.setup_done.fetch_add(1, Ordering::Relaxed);
                    let page = if j < o.sessions {
                        page
                    } else {
                        // Another tab: the page again, with the cookie, from
                        // this tab's instance.
                        let cookie = page.cookie.clone().unwrap_or_default();
                        match get_page(target, src, Some(&cookie)).await {
                            Ok(p) if p.sid == page.sid => p,
                            Ok(_) if u != instance(&o, i) => {
                                drop(permit);
                                done();
                                return s.err(
                                    u,
                                    "a tab's GET with the cookie got another session (not the instance the session was made on: do the instances share the store and keys?)",
                                );
                            }
                            Ok(_) => {
                                drop(permit);
                                done();
                                return s
                                    .err(u, "a tab's GET with the cookie got another session");
                            }
                            Err(e) => {
                                drop(permit);
                                done();
                                return s.err(u, e);
                            }
                        }
                    };
                    let client = format!("{:012x}", 0x10ad_0000_0000u64 + j as u64);
                    let r = tokio::time::timeout(
                        Duration::from_secs(30),
                        connect(target, src, &page, &client),
                    )
                    .await;
                    drop(permit);
                    let (ws, q) = match r {
                        Ok(Ok(c)) => c,
                        Ok(Err(e)) => {
                            done();
                            return s.err(u, e);
                        }
                        Err(_) => {
                            done();
                            return s.err(u, "WS: no hello and join within 30 s");
                        }
                    };
                    s.connected.fetch_add(1, Ordering::Relaxed);
                    s.open.fetch_add(1, Ordering::Relaxed);
                    s.per[u].connected.fetch_add(1, Ordering::Relaxed);
                    s.per[u].open.fetch_add(1, Ordering::Relaxed);
                    let (tx, rx) = mpsc::channel(64);
                    let _ = conn_tx.send((j, tx));
                    done();
                    Conn {
                        j,
                        u,
                        ws,
                        seq: q,
                        last_hash: None,
                        next_ref: 0,
                        pending: VecDeque::new(),
                        ack_at: None,
                        acked: q,
                    }
                    .run(s, o, rx, phase_rx)
                    .await;
                }));
            }
            // Every socket connected or failed.
            while (s.setup_done.load(Ordering::Relaxed) as usize) < o.sockets {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            tasks
        })
    };

    // `a, b` of a counter per instance, for progress lines (empty with one).
    let split = |f: fn(&PerUrl) -> &AtomicU64| -> String {
        if n == 1 {
            return String::new();
        }
        let v: Vec<String> = s
            .per
            .iter()
            .map(|p| f(p).load(Ordering::Relaxed).to_string())
            .collect();
        format!(" ({})", v.join(", "))
    };
    let mut setup = std::pin::pin!(setup);
    let mut progress = tokio::time::interval(o.progress);
    progress.tick().await;
    let setup_deadline = tokio::time::sleep(o.setup_timeout);
    tokio::pin!(setup_deadline);
    let mut conn_tasks = None;
    let mut setup_timed_out = false;
    while conn_tasks.is_none() {
        tokio::select! {
            r = &mut setup => conn_tasks = Some(r.expect("setup task")),
            _ = progress.tick() => {
                println!(
                    "[setup {:6.1}s] sessions {}{} | sockets {}{} | errors {} | server RSS {}",
                    t0.elapsed().as_secs_f64(),
                    s.sessions.load(Ordering::Relaxed),
                    split(|p| &p.sessions),
                    s.connected.load(Ordering::Relaxed),
                    split(|p| &p.connected),
                    s.error_total(),
                    rss_text(&rss_all(&pids), "-"),
                );
            }
            _ = &mut setup_deadline => {
                setup_timed_out = true;
                s.error("setup did not finish within --setup-timeout");
                break;
            }
        }
    }
    let setup_secs = t0.elapsed().as_secs_f64();
    let mut senders: Vec<(usize, mpsc::Sender<()>)> = Vec::new();
    while let Ok(c) = conn_rx.try_recv() {
        senders.push(c);
    }
    senders.sort_by_key(|c| c.0);
    let rss_setup = rss_all(&pids);
    println!(
        "setup: {} sessions, {} sockets in {:.1} s (server RSS {})",
        s.sessions.load(Ordering::Relaxed),
        s.connected.load(Ordering::Relaxed),
        setup_secs,
        rss_text(&rss_setup, "not read")
    );
    sample(0.0, &rss_setup);

    // Steady phase: events at `rate`, round-robin.
    s.steady.store(true, Ordering::Relaxed);
    let frames0 = s.frames.load(Ordering::Relaxed);
    let acks0 = s.acks.load(Ordering::Relaxed);
    let steady0 = Instant::now();
    let end = tokio::time::Instant::now() + o.duration;
    let scheduler = {
        let s = s.clone();
        let rate = o.rate;
        tokio::spawn(async move {
            if rate <= 0.0 || senders.is_empty() {
                return;
            }
            let start = tokio::time::Instant::now();
            let mut k: u64 = 0;
            let mut next = 0usize;
            loop {
                let at = start + Duration::from_secs_f64(k as f64 / rate);
                if at >= end {
                    break;
                }
                tokio::time::sleep_until(at).await;
                // The next open socket, round-robin.
                let mut tries = 0;
                while tries < senders.len() {
                    let (_, tx) = &senders[next % senders.len()];
                    next += 1;
                    tries += 1;
                    match tx.try_send(()) {
                        Ok(()) => break,
                        Err(mpsc::error::TrySendError::Full(_)) => {
                            s.error("a socket task fell 64 events behind (client overloaded)");
                            break;
                        }
                        Err(mpsc::error::TrySendError::Closed(_)) => continue,
                    }
                }
                k += 1;
            }
        })
    };
    let mut last = (Instant::now(), 0u64, 0u64, frames0);
    let mut progress = tokio::time::interval(o.progress);
    progress.tick().await;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(end) => break,
            _ = progress.tick() => {
                let now = Instant::now();
                let (sent, answered, frames) = (
                    s.sent.load(Ordering::Relaxed),
                    s.answered.load(Ordering::Relaxed),
                    s.frames.load(Ordering::Relaxed),
                );
                let dt = (now - last.0).as_secs_f64();
                let (mut a, mut f) = {
                    let mut l = s.lat.lock().expect("lat");
                    (std::mem::take(&mut l.answer_now), std::mem::take(&mut l.frame_now))
                };
                a.sort_unstable();
                f.sort_unstable();
                let rss = rss_all(&pids);
                sample(steady0.elapsed().as_secs_f64(), &rss);
                println!(
                    "[{:6.1}s] sockets {} open{} | events {:.1}/s, answered {:.1}/s | answer p50 {:.2} p99 {:.2} ms | frame p50 {:.2} p99 {:.2} ms | frames {:.0}/s | errors {} | server RSS {}",
                    steady0.elapsed().as_secs_f64(),
                    s.open.load(Ordering::Relaxed),
                    split(|p| &p.open),
                    (sent - last.1) as f64 / dt,
                    (answered - last.2) as f64 / dt,
                    pct(&a, 0.5), pct(&a, 0.99), pct(&f, 0.5), pct(&f, 0.99),
                    (frames - last.3) as f64 / dt,
                    s.error_total(),
                    rss_text(&rss, "-"),
                );
                last = (now, sent, answered, frames);
            }
        }
    }
    let _ = scheduler.await;
    let steady_secs = steady0.elapsed().as_secs_f64();
    let frames_steady = s.frames.load(Ordering::Relaxed) - frames0;
    let acks_steady = s.acks.load(Ordering::Relaxed) - acks0;
    // The last answers (bounded), then close.
    let _ = phase_tx.send(1);
    let drain = Instant::now();
    while s.answered.load(Ordering::Relaxed) + error_answers(&s) < s.sent.load(Ordering::Relaxed)
        && drain.elapsed() < Duration::from_secs(5)
        && s.open.load(Ordering::Relaxed) > 0
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    s.steady.store(false, Ordering::Relaxed);
    let rss_end = rss_all(&pids);
    sample(steady0.elapsed().as_secs_f64(), &rss_end);
    let open_at_end = s.open.load(Ordering::Relaxed);
    let open_at_end_per: Vec<u64> = s
        .per
        .iter()
        .map(|p| p.open.load(Ordering::Relaxed))
        .collect();
    let _ = phase_tx.send(2);
    if let Some(tasks) = conn_tasks {
        let _ = tokio::time::timeout(Duration::from_secs(10), async {
            for t in tasks {
                let _ = t.await;
            }
        })
        .await;
    }

    // The report.
    let sent = s.sent.load(Ordering::Relaxed);
    let answered = s.answered.load(Ordering::Relaxed);
    let (mut a_per, mut f_per) = {
        let mut l = s.lat.lock().expect("lat");
        (std::mem::take(&mut l.answer), std::mem::take(&mut l.frame))
    };
    let mut a: Vec<u32> = a_per.concat();
    let mut f: Vec<u32> = f_per.concat();
    let errors = s.errors.lock().expect("errors").clone();
    println!("\nload report");
    if n == 1 {
        println!("  url: {}", o.urls[0]);
    } else {
        println!(
            "  urls: {} instances, {}",
            n,
            if o.spread_tabs {
                "tab k of session i on url (i + k) mod n (--spread-tabs)"
            } else {
                "every tab of session i on url i mod n"
            }
        );
    }
    println!(
        "  sessions: {} made ({} asked), {} of them by GET only (no socket)",
        s.sessions.load(Ordering::Relaxed),
        o.sessions,
        s.get_only.load(Ordering::Relaxed)
    );
    println!(
        "  sockets: {} connected ({} asked), {} open at the end",
        s.connected.load(Ordering::Relaxed),
        o.sockets,
        open_at_end
    );
    if n > 1 {
        for (u, url) in o.urls.iter().enumerate() {
            let p = &s.per[u];
            let errs: u64 = errors
                .iter()
                .filter(|((at, _), _)| *at == Some(u))
                .map(|(_, c)| *c)
                .sum();
            let (a, f) = (&mut a_per[u], &mut f_per[u]);
            a.sort_unstable();
            f.sort_unstable();
            let (ps, pa) = (
                p.sent.load(Ordering::Relaxed),
                p.answered.load(Ordering::Relaxed),
            );
            println!(
                "  {url}: sessions {}, sockets {} connected ({} asked), {} open at the end; events sent {ps}, answered {pa}, unanswered {}; answer {}; frame {}; errors {errs}",
                p.sessions.load(Ordering::Relaxed),
                p.connected.load(Ordering::Relaxed),
                p.asked.load(Ordering::Relaxed),
                open_at_end_per[u],
                ps.saturating_sub(pa),
                p50_p99(a),
                p50_p99(f),
            );
        }
    }
    println!(
        "  setup: {setup_secs:.1} s{}; steady phase: {steady_secs:.1} s",
        if setup_timed_out { " (TIMED OUT)" } else { "" }
    );
    println!(
        "  events: sent {sent}, answered {answered}, unanswered {}, {:.1} sent/s ({} asked), event `{}`",
        sent.saturating_sub(answered),
        sent as f64 / steady_secs,
        o.rate,
        o.event
    );
    println!("  event→answer: {}", summary(&mut a));
    println!(
        "  event→frame ({}): {}",
        if o.event == "note" {
            "the frame holding the event's text"
        } else {
            "the first update frame after the send"
        },
        summary(&mut f)
    );
    println!(
        "  frames received (steady): {frames_steady} ({:.0}/s), acks sent {acks_steady} ({:.0}/s), joins after setup {}",
        frames_steady as f64 / steady_secs,
        acks_steady as f64 / steady_secs,
        s.joins_after_setup.load(Ordering::Relaxed)
    );
    if n == 1 {
        broadcast_report(&s, 0, "", s.connected.load(Ordering::Relaxed));
    } else {
        for (u, url) in o.urls.iter().enumerate() {
            let label = format!(" at {url}");
            broadcast_report(&s, u, &label, s.per[u].connected.load(Ordering::Relaxed));
        }
    }
    for (k, pid) in pids.iter().enumerate() {
        let show = |v: Option<u64>| v.map(mib).unwrap_or_else(|| "-".into());
        let of = if pids.len() > 1 {
            format!(" (pid {pid})")
        } else {
            String::new()
        };
        println!(
            "  server RSS{of}: start {}, after setup {}, end {}",
            show(rss_start[k]),
            show(rss_setup[k]),
            show(rss_end[k])
        );
        let samples = &rss_samples[k];
        if samples.len() >= 2 {
            let first = samples[0].1 as f64;
            let lo = samples.iter().map(|r| r.1).min().expect("min");
            let hi = samples.iter().map(|r| r.1).max().expect("max");
            println!(
                "  server RSS{of} over the steady phase: min {}, max {}, spread {:.1}% of the first ({} samples: {})",
                mib(lo),
                mib(hi),
                (hi - lo) as f64 / first * 100.0,
                samples.len(),
                samples
                    .iter()
                    .map(|(t, r)| format!("{t:.0}s {:.0}", *r as f64 / 1024.0))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    let total: u64 = errors.values().sum();
    println!(
        "  client RSS: {}",
        vm_rss_kib(std::process::id()).map(mib).unwrap_or_default()
    );
    println!("errors: {total}");
    if n == 1 {
        // By kind alone, as before there were several instances.
        let mut by_kind: BTreeMap<&str, u64> = BTreeMap::new();
        for ((_, k), c) in &errors {
            *by_kind.entry(k.as_str()).or_default() += c;
        }
        for (k, c) in &by_kind {
            println!("  {c:>8}  {k}");
        }
    } else {
        // The client's own first, then by instance.
        for ((at, k), c) in &errors {
            match at {
                Some(u) => println!("  {c:>8}  {}: {k}", o.urls[*u]),
                None => println!("  {c:>8}  {k}"),
            }
        }
    }
    total == 0 && sent == answered
}

/// Events answered by an error frame (counted as errors, not answers).
fn error_answers(s: &Stats) -> u64 {
    s.errors
        .lock()
        .expect("errors")
        .iter()
        .filter(|((_, k), _)| k.starts_with("event error"))
        .map(|(_, n)| *n)
        .sum()
}

/// The demo clock's push to every connected session of instance `u`, as a
/// broadcast: per tick (its clock text), the sockets that got it and the
/// time from its first frame here to its last. `at` names the instance in
/// the line (empty with one).
fn broadcast_report(s: &Stats, u: usize, at: &str, sockets: u64) {
    let ticks = s.ticks.lock().expect("ticks");
    let mut keys: Vec<u32> = ticks
        .keys()
        .filter(|(tu, _)| *tu == u)
        .map(|(_, c)| *c)
        .collect();
    if keys.is_empty() {
        println!("  broadcast{at} (clock ticks): none seen");
        return;
    }
    keys.sort_unstable();
    // The first and last tick may be cut by the start and end of the phase.
    let inner: Vec<&Tick> = if keys.len() > 2 {
        keys[1..keys.len() - 1]
            .iter()
            .map(|k| &ticks[&(u, *k)])
            .collect()
    } else {
        keys.iter().map(|k| &ticks[&(u, *k)]).collect()
    };
    let mut spread: Vec<u32> = inner.iter().map(|t| micros(t.last - t.first)).collect();
    let mut reached: Vec<u32> = inner.iter().map(|t| t.sockets).collect();
    reached.sort_unstable();
    spread.sort_unstable();
    println!(
        "  broadcast{at} (clock ticks, {} whole): sockets reached per tick median {} of {} (min {}); first→last frame of a tick p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        inner.len(),
        reached[reached.len() / 2],
        sockets,
        reached[0],
        pct(&spread, 0.5),
        pct(&spread, 0.99),
        *spread.last().expect("max") as f64 / 1000.0
    );
}
