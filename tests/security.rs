//! Hostile input at the socket: origins, half-open handshakes, size limits,
//! malformed frames, floods, clients that never read, running out of file
//! descriptors, and isolation under load. Real sockets on loopback, both
//! servers (axum and the plain tokio-tungstenite one).

mod common;

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use minijinja::Environment;
use serde::{Deserialize, Serialize};
use serde_json::{Value as Json, json};
use statetemplate::token::KeyRing;
use statetemplate::transport::close;
use statetemplate::{InitialRender, Live, StateTemplate};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

#[derive(Debug, Default, Serialize, Deserialize)]
struct Page {
    owner: String,
    count: i64,
    blob: String,
}

const PAGE: &str = "<p>{{ owner }}: {{ count }}</p><pre>{{ blob }}</pre>";

fn engine() -> StateTemplate {
    let mut env = Environment::new();
    env.add_template("p.html", PAGE).unwrap();
    StateTemplate::builder(env)
        .keys(KeyRing::generate().unwrap())
        .build()
        .unwrap()
}

#[derive(Deserialize)]
struct Set {
    owner: String,
}

fn live(engine: &StateTemplate) -> Live {
    Live::new(engine.clone()).on_update("set", |p: &mut Page, v: Set| {
        p.owner = v.owner;
        p.count += 1;
        Ok(())
    })
}

#[derive(Clone, Copy, Debug)]
enum Server {
    Axum,
    Plain,
}

async fn serve(live: &Live, kind: Server) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    match kind {
        Server::Axum => {
            let app: axum::Router = live.router();
            tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        }
        Server::Plain => {
            tokio::spawn(statetemplate::transport::serve_tungstenite(
                listener,
                live.clone(),
            ));
        }
    }
    addr
}

fn query(i: &InitialRender) -> String {
    format!(
        "/statetemplate/ws?v=2&sid={}&token={}",
        i.session_id, i.token
    )
}

async fn connect(
    addr: &str,
    path: &str,
    origin: Option<&str>,
) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
    let mut req = format!("ws://{addr}{path}").into_client_request().unwrap();
    if let Some(o) = origin {
        req.headers_mut().insert("origin", o.parse().unwrap());
    }
    Ok(tokio_tungstenite::connect_async(req).await?.0)
}

async fn new_page(engine: &StateTemplate) -> InitialRender {
    engine
        .new_session("p.html", &Page::default())
        .await
        .unwrap()
}

/// Connects to session `i` from the server's own origin.
async fn connect_own(addr: &str, i: &InitialRender) -> Ws {
    connect(addr, &query(i), Some(&format!("http://{addr}")))
        .await
        .unwrap()
}

async fn next_json(ws: &mut Ws) -> Json {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a frame in time")
            .expect("open")
            .unwrap();
        if let Message::Text(t) = m {
            return serde_json::from_str(t.as_str()).unwrap();
        }
    }
}

/// A WebSocket client that writes raw frames (for what a library would not
/// send: invalid UTF-8, oversize frames) and reads the server's frames.
struct Raw {
    io: BufReader<TcpStream>,
}

impl Raw {
    async fn open(addr: &str, path: &str) -> Raw {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(
            format!(
                "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
                 Origin: http://{addr}\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        let mut io = BufReader::new(s);
        let mut line = String::new();
        io.read_line(&mut line).await.unwrap();
        assert!(line.contains(" 101 "), "handshake: {line}");
        loop {
            line.clear();
            io.read_line(&mut line).await.unwrap();
            if line == "\r\n" {
                break;
            }
        }
        Raw { io }
    }

    async fn send(&mut self, opcode: u8, payload: &[u8]) {
        self.send_frame(true, opcode, payload).await;
    }

    /// One frame; `fin` false starts or continues a fragmented message
    /// (later frames use opcode 0).
    async fn send_frame(&mut self, fin: bool, opcode: u8, payload: &[u8]) {
        let mut f = vec![if fin { 0x80 } else { 0 } | opcode];
        let n = payload.len();
        if n < 126 {
            f.push(0x80 | n as u8);
        } else if n < 65536 {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        } else {
            f.push(0x80 | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
        let mask = [0x12, 0x34, 0x56, 0x78];
        f.extend_from_slice(&mask);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        let _ = self.io.get_mut().write_all(&f).await;
    }

    /// Writes bytes as they are (for frames no client library would send).
    async fn send_bytes(&mut self, b: &[u8]) {
        let _ = self.io.get_mut().write_all(b).await;
    }

    /// The next frame: (opcode, payload); `None` at EOF.
    async fn frame(&mut self) -> Option<(u8, Vec<u8>)> {
        let mut h = [0u8; 2];
        self.io.read_exact(&mut h).await.ok()?;
        let mut n = u64::from(h[1] & 0x7f);
        if n == 126 {
            let mut b = [0u8; 2];
            self.io.read_exact(&mut b).await.ok()?;
            n = u64::from(u16::from_be_bytes(b));
        } else if n == 127 {
            let mut b = [0u8; 8];
            self.io.read_exact(&mut b).await.ok()?;
            n = u64::from_be_bytes(b);
        }
        let mut p = vec![0u8; n as usize];
        self.io.read_exact(&mut p).await.ok()?;
        Some((h[0] & 0x0f, p))
    }

    /// Reads until the server's close; its code (0 if the socket just ended).
    async fn close_code(&mut self) -> u16 {
        let fut = async {
            while let Some((op, p)) = self.frame().await {
                if op == 8 {
                    return if p.len() >= 2 {
                        u16::from_be_bytes([p[0], p[1]])
                    } else {
                        0
                    };
                }
            }
            0
        };
        tokio::time::timeout(Duration::from_secs(10), fut)
            .await
            .expect("a close in time")
    }

    /// The next text frame as JSON.
    async fn json(&mut self) -> Json {
        loop {
            let (op, p) = self.frame().await.expect("a frame");
            if op == 1 {
                return serde_json::from_slice(&p).unwrap();
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_is_checked_at_the_handshake() {
    let engine = engine();
    let live = live(&engine);
    for kind in [Server::Axum, Server::Plain] {
        let addr = serve(&live, kind).await;
        let port = addr.rsplit(':').next().unwrap();
        let i = new_page(&engine).await;
        let path = query(&i);
        let own = format!("http://{addr}");
        assert!(
            connect(&addr, &path, Some(&own)).await.is_ok(),
            "{kind:?}: own origin"
        );
        let bad = [
            None,
            Some("null".to_owned()),
            Some(format!("http://{addr}.evil.com")),
            Some(format!("http://127.0.0.1.evil.com:{port}")),
            Some(format!("http://evil.com@{addr}")),
            Some("http://127.0.0.1:1".to_owned()),
            Some(format!("http://localhost:{port}")),
        ];
        for origin in bad {
            match connect(&addr, &path, origin.as_deref()).await {
                Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
                    assert_eq!(r.status(), 403, "{kind:?}: {origin:?}")
                }
                Err(e) => panic!("{kind:?}: {origin:?}: {e}"),
                Ok(_) => panic!("{kind:?}: {origin:?} was let in"),
            }
        }
    }
    // An allow-list replaces the same-host rule.
    let listed = live.clone().allowed_origins(["https://app.example.com"]);
    let addr = serve(&listed, Server::Plain).await;
    let i = new_page(&engine).await;
    assert!(
        connect(&addr, &query(&i), Some("https://app.example.com"))
            .await
            .is_ok()
    );
    assert!(
        connect(&addr, &query(&i), Some(&format!("http://{addr}")))
            .await
            .is_err()
    );
}

/// `serve_axum`: connections that trickle their request headers are
/// dropped at the header read timeout, while real requests, WebSockets and
/// the peer address work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_axum_drops_connections_that_trickle_headers() {
    use axum::extract::ConnectInfo;
    use statetemplate::transport::{ServeOptions, serve_axum};
    let engine = engine();
    let live = live(&engine);
    let app =
        axum::Router::new()
            .route(
                "/peer",
                axum::routing::get(
                    |ConnectInfo(p): ConnectInfo<std::net::SocketAddr>| async move {
                        p.ip().to_string()
                    },
                ),
            )
            .merge(live.router());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let options = ServeOptions {
        header_read_timeout: Duration::from_secs(1),
        ..ServeOptions::default()
    };
    tokio::spawn(serve_axum(listener, app, options));
    // 200 connections each send a header byte every 200 ms.
    let mut trickle = Vec::new();
    for _ in 0..200 {
        let s = TcpStream::connect(&addr).await.unwrap();
        trickle.push(tokio::spawn(async move {
            let mut s = s;
            let start = tokio::time::Instant::now();
            let head =
                b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
            for b in head.iter().cycle() {
                if s.write_all(&[*b]).await.is_err() {
                    break;
                }
                let mut buf = [0u8; 256];
                match tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => break,
                    _ => {}
                }
                if start.elapsed() > Duration::from_secs(10) {
                    return None;
                }
            }
            Some(start.elapsed())
        }));
    }
    // Meanwhile a real request and a WebSocket are served.
    let mut s = TcpStream::connect(&addr).await.unwrap();
    s.write_all(b"GET /peer HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    assert!(
        out.starts_with("HTTP/1.1 200") && out.ends_with("127.0.0.1"),
        "{out}"
    );
    let i = new_page(&engine).await;
    let mut ws = connect_own(&addr, &i).await;
    assert_eq!(next_json(&mut ws).await["t"], "hello");
    for t in trickle {
        let held = t
            .await
            .unwrap()
            .expect("the server dropped a trickling connection");
        assert!(held < Duration::from_secs(3), "held for {held:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_handshakes_are_dropped() {
    let engine = engine();
    let live = live(&engine).handshake_timeout(Duration::from_millis(300));
    let addr = serve(&live, Server::Plain).await;
    let mut s = TcpStream::connect(&addr).await.unwrap();
    s.write_all(b"GET /statetemplate/ws HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("the server drops the half-open connection")
        .unwrap_or(0);
    assert_eq!(n, 0, "the server closed without answering");
    // Other clients are served meanwhile.
    let i = new_page(&engine).await;
    let mut ws = connect_own(&addr, &i).await;
    assert_eq!(next_json(&mut ws).await["t"], "hello");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_get_errors_or_close_codes_and_change_nothing() {
    let engine = engine();
    let live = live(&engine);
    for kind in [Server::Axum, Server::Plain] {
        let addr = serve(&live, kind).await;
        let victim = new_page(&engine).await;
        let bystander = new_page(&engine).await;
        let mut other = connect_own(&addr, &bystander).await;
        next_json(&mut other).await; // hello
        next_json(&mut other).await; // join

        // Error frames, connection kept.
        let mut raw = Raw::open(&addr, &query(&victim)).await;
        raw.json().await; // hello
        raw.json().await; // join
        let deep = "[".repeat(10_000);
        for (bad, code) in [
            ("{not json", "bad_frame"),
            (r#"{"t":"ev","n":5}"#, "bad_frame"),
            (r#"{"t":["ev"]}"#, "bad_frame"),
            (deep.as_str(), "bad_frame"),
            (r#"{"t":"ev","n":"nope"}"#, "unknown_event"),
            (r#"{"t":"ev","n":"set","d":7}"#, "bad_payload"),
            (r#"{"t":"ev","n":"set","d":{"owner":[1]}}"#, "bad_payload"),
        ] {
            raw.send(1, bad.as_bytes()).await;
            let e = raw.json().await;
            assert_eq!(e["t"], "error", "{kind:?}: {bad:.40}");
            assert_eq!(e["code"], code, "{kind:?}: {bad:.40}");
        }
        raw.send(1, br#"{"t":"ping"}"#).await;
        assert_eq!(raw.json().await["t"], "pong", "{kind:?}: still serving");

        // Closes with codes.
        raw.send(1, &[b'"', 0xff, 0xfe, b'"']).await;
        assert_eq!(
            raw.close_code().await,
            close::INVALID_DATA,
            "{kind:?}: invalid UTF-8"
        );
        let mut big = Raw::open(&addr, &query(&victim)).await;
        big.send(1, &vec![b'x'; 100 << 10]).await;
        assert_eq!(big.close_code().await, close::TOO_BIG, "{kind:?}: oversize");
        let mut bin = Raw::open(&addr, &query(&victim)).await;
        bin.send(2, b"\x00\x01").await;
        assert_eq!(
            bin.close_code().await,
            close::UNSUPPORTED,
            "{kind:?}: binary"
        );

        // The victim's state is unchanged; the bystander noticed nothing.
        let s = engine
            .get_session(&victim.session_id.to_string(), &victim.token)
            .await
            .unwrap();
        assert_eq!(s.seq().await, 0, "{kind:?}: bad frames changed the session");
        assert_eq!(s.html().await, victim.html);
        let b = engine
            .get_session(&bystander.session_id.to_string(), &bystander.token)
            .await
            .unwrap();
        b.render(&Page {
            owner: "b".into(),
            count: 1,
            blob: String::new(),
        })
        .await
        .unwrap();
        let f = next_json(&mut other).await;
        assert!(
            f.is_array(),
            "{kind:?}: the bystander's update arrives: {f}"
        );
    }
}

/// A ping message of exactly `n` bytes (the server ignores the padding).
fn ping_of(n: usize) -> Vec<u8> {
    let head = br#"{"t":"ping","p":""#;
    let mut m = head.to_vec();
    m.resize(n - 2, b'x');
    m.extend_from_slice(br#""}"#);
    assert_eq!(m.len(), n);
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_message_limit_is_64_kib_whole_or_in_fragments() {
    const LIMIT: usize = 64 << 10;
    let engine = engine();
    let live = live(&engine);
    for kind in [Server::Axum, Server::Plain] {
        let addr = serve(&live, kind).await;
        let i = new_page(&engine).await;
        let open = || async {
            let mut raw = Raw::open(&addr, &query(&i)).await;
            let hello = raw.json().await;
            assert_eq!(
                hello["max"], LIMIT,
                "{kind:?}: the hello tells the limit: {hello}"
            );
            raw.json().await; // join
            raw
        };
        // Exactly at the limit: served, whole and as four fragments.
        let mut raw = open().await;
        raw.send(1, &ping_of(LIMIT)).await;
        assert_eq!(raw.json().await["t"], "pong", "{kind:?}: 64 KiB whole");
        let m = ping_of(LIMIT);
        for (n, part) in m.chunks(LIMIT / 4).enumerate() {
            raw.send_frame(n == 3, if n == 0 { 1 } else { 0 }, part)
                .await;
        }
        assert_eq!(
            raw.json().await["t"],
            "pong",
            "{kind:?}: 64 KiB in fragments"
        );
        // One byte over: 1009.
        raw.send(1, &ping_of(LIMIT + 1)).await;
        assert_eq!(
            raw.close_code().await,
            close::TOO_BIG,
            "{kind:?}: 64 KiB + 1"
        );
        // 65 KiB as four fragments of 16.25 KiB (each under the limit): 1009.
        let mut raw = open().await;
        let m = ping_of(65 << 10);
        for (n, part) in m.chunks(m.len() / 4).enumerate() {
            raw.send_frame(n == 3, if n == 0 { 1 } else { 0 }, part)
                .await;
        }
        assert_eq!(
            raw.close_code().await,
            close::TOO_BIG,
            "{kind:?}: 65 KiB in fragments"
        );
        // The session is untouched.
        let s = engine
            .get_session(&i.session_id.to_string(), &i.token)
            .await
            .unwrap();
        assert_eq!(s.seq().await, 0);
    }
}

/// A limit set with `Live::max_message` is the one the hello tells the
/// client (which refuses bigger events itself) and the one the server
/// holds to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hello_tells_the_message_limit_the_server_holds() {
    const LIMIT: usize = 4000;
    let engine = engine();
    let live = live(&engine).max_message(LIMIT);
    for kind in [Server::Axum, Server::Plain] {
        let addr = serve(&live, kind).await;
        let i = new_page(&engine).await;
        let mut raw = Raw::open(&addr, &query(&i)).await;
        let hello = raw.json().await;
        assert_eq!(hello["t"], "hello");
        assert_eq!(hello["max"], LIMIT, "{kind:?}: {hello}");
        raw.json().await; // join
        raw.send(1, &ping_of(LIMIT)).await;
        assert_eq!(raw.json().await["t"], "pong", "{kind:?}: at the limit");
        raw.send(1, &ping_of(LIMIT + 1)).await;
        assert_eq!(raw.close_code().await, close::TOO_BIG, "{kind:?}: over it");
    }
}

/// A masked frame with a raw first byte (FIN, RSV bits, opcode).
fn masked(first: u8, payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 126);
    let mask = [1u8, 2, 3, 4];
    let mut f = vec![first, 0x80 | payload.len() as u8];
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_violations_get_close_1002() {
    let engine = engine();
    let live = live(&engine);
    let ping = br#"{"t":"ping"}"#;
    let mut big_ping = vec![0x89, 0x80 | 126, 0, 126, 1, 2, 3, 4];
    big_ping.extend(std::iter::repeat_n(0u8, 126));
    let cases: [(&str, Vec<u8>); 5] = [
        ("an unmasked frame", {
            let mut f = vec![0x81, ping.len() as u8];
            f.extend_from_slice(ping);
            f
        }),
        ("a reserved opcode", masked(0x83, ping)),
        ("an RSV bit", masked(0x80 | 0x40 | 1, ping)),
        ("an oversize control frame", big_ping),
        ("a fragmented control frame", masked(0x09, b"x")),
    ];
    for kind in [Server::Axum, Server::Plain] {
        let addr = serve(&live, kind).await;
        let i = new_page(&engine).await;
        for (what, bytes) in &cases {
            let mut raw = Raw::open(&addr, &query(&i)).await;
            raw.json().await; // hello
            raw.json().await; // join
            raw.send_bytes(bytes).await;
            assert_eq!(raw.close_code().await, close::PROTOCOL, "{kind:?}: {what}");
        }
        let s = engine
            .get_session(&i.session_id.to_string(), &i.token)
            .await
            .unwrap();
        assert_eq!(s.seq().await, 0, "{kind:?}: the session is untouched");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_is_rate_limited() {
    let engine = engine();
    let live = live(&engine).rate_limit(50, 50);
    let addr = serve(&live, Server::Axum).await;
    let i = new_page(&engine).await;
    let mut raw = Raw::open(&addr, &query(&i)).await;
    raw.json().await;
    raw.json().await;
    for _ in 0..2000 {
        raw.send(1, br#"{"t":"ping"}"#).await;
    }
    let start = tokio::time::Instant::now();
    let mut pongs = 0;
    while start.elapsed() < Duration::from_secs(1) {
        match tokio::time::timeout(Duration::from_millis(100), raw.json()).await {
            Ok(j) if j["t"] == "pong" => pongs += 1,
            _ => {}
        }
    }
    // 50 at once, then 50 a second (allowing for scheduling slack).
    assert!(
        (50..=120).contains(&pongs),
        "{pongs} messages served in the first second"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_dropped() {
    let engine = engine();
    let live = live(&engine).write_timeout(Duration::from_millis(300));
    let addr = serve(&live, Server::Axum).await;
    let i = new_page(&engine).await;
    let _raw = Raw::open(&addr, &query(&i)).await; // never reads again
    let s = engine
        .get_session(&i.session_id.to_string(), &i.token)
        .await
        .unwrap();
    let wait = tokio::time::Instant::now();
    while live.open_connections() == 0 && wait.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(live.open_connections(), 1);
    let mut n = 0;
    while live.open_connections() > 0 && n < 2000 {
        n += 1;
        let blob = format!("{n:>4}").repeat(8192); // 32 KiB
        // Renders never wait for the socket.
        tokio::time::timeout(
            Duration::from_secs(1),
            s.render(&Page {
                owner: "x".into(),
                count: n,
                blob,
            }),
        )
        .await
        .expect("a render blocked on a slow client")
        .unwrap();
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_eq!(
        live.open_connections(),
        0,
        "the non-reading client was dropped after {n} renders"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_sessions_with_concurrent_events_stay_isolated() {
    let engine = engine();
    let live = live(&engine);
    let addr = serve(&live, Server::Axum).await;
    let addr = Arc::new(addr);
    let mut tasks = Vec::new();
    for k in 0..1000 {
        let (engine, addr) = (engine.clone(), addr.clone());
        tasks.push(tokio::spawn(async move {
            let me = format!("zq{k}qz");
            let i = engine
                .new_session(
                    "p.html",
                    &Page {
                        owner: me.clone(),
                        ..Page::default()
                    },
                )
                .await
                .unwrap();
            let mut ws = connect_own(&addr, &i).await;
            assert_eq!(next_json(&mut ws).await["t"], "hello");
            let mut seen = vec![next_json(&mut ws).await.to_string()];
            for _ in 0..3 {
                ws.send(Message::Text(
                    json!({"t":"ev","n":"set","d":{"owner": me}})
                        .to_string()
                        .into(),
                ))
                .await
                .unwrap();
                seen.push(next_json(&mut ws).await.to_string());
            }
            (k, seen)
        }));
    }
    let mut checked = 0;
    for t in tasks {
        let (k, seen) = t.await.unwrap();
        for frame in &seen {
            for part in frame.split("zq").skip(1) {
                let owner: usize = part.split('q').next().unwrap().parse().unwrap();
                assert_eq!(owner, k, "connection {k} received session {owner}'s data");
                checked += 1;
            }
        }
        assert!(
            seen.iter().skip(1).all(|f| f.starts_with('[')),
            "connection {k} got its updates"
        );
    }
    assert!(checked >= 1000, "{checked} markers checked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_stop_working_when_the_session_ends() {
    let mut env = Environment::new();
    env.add_template("p.html", PAGE).unwrap();
    let engine = StateTemplate::builder(env)
        .keys(KeyRing::generate().unwrap())
        .max_sessions(1)
        .build()
        .unwrap();
    let live = live(&engine);
    let addr = serve(&live, Server::Plain).await;
    let own = format!("http://{addr}");
    let a = new_page(&engine).await;
    let s = engine
        .get_session(&a.session_id.to_string(), &a.token)
        .await
        .unwrap();
    s.close().await.unwrap();
    let mut ws = connect(&addr, &query(&a), Some(&own)).await.unwrap();
    assert_eq!(closed(&mut ws).await, close::INVALID_SESSION, "closed");
    let b = new_page(&engine).await;
    let _c = new_page(&engine).await; // evicts b
    let mut ws = connect(&addr, &query(&b), Some(&own)).await.unwrap();
    assert_eq!(closed(&mut ws).await, close::INVALID_SESSION, "evicted");
}

async fn closed(ws: &mut Ws) -> u16 {
    loop {
        match tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("close in time")
        {
            Some(Ok(Message::Close(Some(f)))) => return f.code.into(),
            Some(Ok(Message::Close(None))) | None | Some(Err(_)) => return 0,
            Some(Ok(_)) => {}
        }
    }
}

/// The plain server under a low file-descriptor limit: accepting fails with
/// EMFILE, the loop backs off instead of spinning, and it recovers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_out_of_file_descriptors_backs_off_and_recovers() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let addr = format!("127.0.0.1:{port}");
    let bin = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/debug/examples/plain");
    assert!(
        bin.exists(),
        "build the examples first (cargo test builds them)"
    );
    let mut child = tokio::process::Command::new("prlimit")
        .arg("--nofile=64:64")
        .arg(&bin)
        .env("ADDR", &addr)
        .env("RUST_LOG", "off")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("prlimit (util-linux) runs the example");
    let pid = child.id().unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut sid, mut token) = (String::new(), String::new());
    while let Some(l) = out.next_line().await.unwrap() {
        if let Some(v) = l.strip_prefix("sid ") {
            sid = v.to_owned();
        } else if let Some(v) = l.strip_prefix("token ") {
            token = v.to_owned();
        } else if l.starts_with("listening on") {
            break;
        }
    }
    let cpu = || {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let f: Vec<u64> = stat
            .rsplit(')')
            .next()
            .unwrap()
            .split_whitespace()
            .skip(11)
            .take(2)
            .map(|x| x.parse().unwrap())
            .collect();
        f[0] + f[1]
    };
    // Hold more connections than the server has descriptors.
    let mut held = Vec::new();
    for _ in 0..120 {
        if let Ok(s) = TcpStream::connect(&addr).await {
            held.push(s);
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = cpu();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let ticks = cpu() - before; // clock ticks, 100 a second
    assert!(
        ticks < 60,
        "the accept loop spun: {ticks} ticks of CPU in 2 s"
    );
    assert!(child.try_wait().unwrap().is_none(), "the server survived");
    drop(held);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let path = format!("/statetemplate/ws?v=2&sid={sid}&token={token}");
    let mut ws = connect(&addr, &path, Some(&format!("http://{addr}")))
        .await
        .expect("it recovered");
    assert_eq!(next_json(&mut ws).await["t"], "hello");
    child.kill().await.unwrap();
}

mod prop {
    use super::*;
    use proptest::prelude::*;
    use proptest::test_runner::FileFailurePersistence;
    use statetemplate::transport::{ConnectParams, WsMessage};

    /// A client frame: a valid `set` event (its owner), or anything else.
    #[derive(Clone, Debug)]
    enum Frame {
        Set(String),
        Other(String),
    }

    fn frame() -> impl Strategy<Value = Frame> {
        let junk = prop_oneof![
            ".{0,200}",
            "\\{\"t\":\"(ev|ack|ping|[a-z]{0,4})\"(,\"n\":\"[a-z]{0,6}\")?(,\"d\":[0-9\\[\\]{}\",:a-z]{0,30})?(,\"q\":-?[0-9]{1,20})?\\}",
            "[\\[\\]{}\",:0-9a-z]{0,300}",
            // Events for the real handler with payloads it must refuse.
            "\\{\"t\":\"ev\",\"n\":\"set\",\"d\":(7|null|\\[\\]|\\{\\}|\\{\"owner\":[0-9]\\})\\}",
        ]
        // Only the `Set` arm may hold a valid event, so that the expected
        // state is known exactly.
        .prop_filter("no valid set event in junk", |f| !is_valid_set(f))
        .prop_map(Frame::Other);
        prop_oneof![3 => junk, 1 => "[a-z<>&\"]{0,12}".prop_map(Frame::Set)]
    }

    /// What the `set` handler accepts, judged independently of the loop.
    fn is_valid_set(text: &str) -> bool {
        let Ok(j) = serde_json::from_str::<Json>(text) else {
            return false;
        };
        j["t"] == "ev" && j["n"] == "set" && j["d"]["owner"].is_string()
    }

    fn text(f: &Frame) -> String {
        match f {
            Frame::Set(owner) => json!({"t": "ev", "n": "set", "d": {"owner": owner}}).to_string(),
            Frame::Other(t) => t.clone(),
        }
    }

    /// The last frame of every case: an unknown event whose error reply
    /// echoes this ref, so that once it arrives every earlier frame has been
    /// handled.
    const PROBE: u64 = 18_446_744_073_709_551_557;

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: 64,
            failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("regressions"))),
            ..ProptestConfig::default()
        })]

        /// Any sequence of client frames: the loop answers, never panics,
        /// keeps serving, and the session holds exactly what the valid
        /// events made of it: `seq` is their count, the page their result.
        #[test]
        fn any_client_frames_leave_the_session_intact(frames in proptest::collection::vec(frame(), 1..20)) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                let engine = engine();
                let live = live(&engine).rate_limit(100_000, 100_000);
                let i = new_page(&engine).await;
                let (to_server, mut from_server, sink, stream) = common::channel_socket(64);
                let params = ConnectParams { sid: i.session_id.to_string(), token: i.token.clone(), ..Default::default() };
                let conn = tokio::spawn(async move { live.connect(params, sink, stream).await });
                let reader = tokio::spawn(async move {
                    let mut replies = Vec::new();
                    while let Some(m) = from_server.recv().await {
                        if let WsMessage::Text(t) = m {
                            let j: Json = serde_json::from_str(&t).expect("the server sends JSON");
                            if j["t"] == "error" && j["r"] == PROBE {
                                assert_eq!(j["code"], "unknown_event");
                                return replies;
                            }
                            replies.push(j);
                        }
                    }
                    panic!("the connection ended before the probe's reply");
                });
                let mut want = Page::default();
                for f in &frames {
                    if let Frame::Set(owner) = f {
                        want.owner = owner.clone();
                        want.count += 1;
                    }
                    to_server.send(Ok(WsMessage::Text(text(f)))).await.unwrap();
                }
                let probe = json!({"t": "ev", "n": "probe", "r": PROBE}).to_string();
                to_server.send(Ok(WsMessage::Text(probe))).await.unwrap();
                let replies = tokio::time::timeout(Duration::from_secs(10), reader)
                    .await
                    .expect("the probe was answered")
                    .unwrap();
                drop(to_server);
                conn.await.unwrap();
                // The client's model, fed what the socket sent (update
                // frames, and joins: an ack the server finds out of step
                // gets a resync), ends at the valid events' count and page.
                let mut wire = statetemplate::testing::WireClient::new();
                for j in replies.iter().filter(|j| j.is_array() || j.get("q").is_some()) {
                    wire.apply(&j.to_string()).expect("the client applies what the server sends");
                }
                assert_eq!(wire.seq(), want.count as u64, "frames: {replies:?}");
                let s = engine.get_session(&i.session_id.to_string(), &i.token).await.unwrap();
                assert_eq!(s.seq().await, want.count as u64, "seq counts the valid events");
                let fresh = engine.new_session("p.html", &want).await.unwrap();
                assert_eq!(s.html().await, fresh.html, "the page is the valid events' result");
                assert_eq!(wire.html(), fresh.html, "the client holds the valid events' result");
            });
        }
    }
}
