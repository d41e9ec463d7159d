//! The connection loop over real WebSockets on loopback (axum and the plain
//! tokio-tungstenite server, with a tokio-tungstenite client), and over
//! channels.

mod common;

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use minijinja::Environment;
use serde::{Deserialize, Serialize};
use serde_json::{Value as Json, json};
use statetemplate::testing::WireClient;
use statetemplate::token::KeyRing;
use statetemplate::transport::{ConnectParams, WsMessage, close};
use statetemplate::{Error, ErrorKind, InitialRender, Live, StateTemplate};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

const PAGE: &str =
    "<p>Count: {{ count }}</p><ul>{% for t in items %}<li>{{ t.text }}</li>{% endfor %}</ul>";

#[derive(Debug, Serialize, Deserialize, Default)]
struct Counter {
    count: i64,
    items: Vec<Item>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Item {
    id: u32,
    text: String,
}

#[derive(Deserialize)]
struct By {
    by: i64,
}

fn engine(replay: usize) -> StateTemplate {
    let mut env = Environment::new();
    env.add_template("counter.html", PAGE).unwrap();
    StateTemplate::builder(env)
        .keys(KeyRing::generate().unwrap())
        .replay_frames(replay)
        .build()
        .unwrap()
}

fn live(engine: &StateTemplate) -> Live {
    Live::new(engine.clone())
        .on_update("inc", |c: &mut Counter, _: Json| {
            c.count += 1;
            Ok(())
        })
        .on_update("add", |c: &mut Counter, p: By| {
            c.count += p.by;
            Ok(())
        })
        .on_update("push", |c: &mut Counter, text: String| {
            let id = c.items.len() as u32 + 1;
            c.items.push(Item { id, text });
            Ok(())
        })
        .on("fail", |_ctx| async {
            Err(Error::store(
                "the database is down",
                std::io::Error::other("down"),
            ))
        })
        .on_update("refuse", |c: &mut Counter, _: Json| {
            c.count += 100; // dropped: a failed update changes nothing
            Err(Error::user("That name is taken"))
        })
        .on_update("panic", |c: &mut Counter, _: Json| {
            c.count += 1000;
            panic!("a bug in the handler");
        })
}

async fn serve_axum(live: &Live) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app: axum::Router = live.router();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr.to_string()
}

async fn serve_plain(live: &Live) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(statetemplate::transport::serve_tungstenite(
        listener,
        live.clone(),
    ));
    addr.to_string()
}

fn url(addr: &str, i: &InitialRender, token: &str, resume: Option<(u64, &str)>) -> String {
    let mut u = format!(
        "ws://{addr}/statetemplate/ws?v=2&sid={}&token={token}",
        i.session_id
    );
    if let Some((seq, epoch)) = resume {
        u.push_str(&format!("&seq={seq}&epoch={epoch}"));
    }
    u
}

/// Connects as a page of the server's own origin would.
async fn connect(url: &str) -> Ws {
    let host = url.trim_start_matches("ws://").split('/').next().unwrap();
    connect_from(url, Some(&format!("http://{host}")))
        .await
        .unwrap()
}

async fn connect_from(
    url: &str,
    origin: Option<&str>,
) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = url.into_client_request().unwrap();
    if let Some(o) = origin {
        req.headers_mut().insert("origin", o.parse().unwrap());
    }
    Ok(tokio_tungstenite::connect_async(req).await?.0)
}

/// The next text frame (pings are answered by the client library).
async fn text(ws: &mut Ws) -> Json {
    serde_json::from_str(&raw(ws).await).unwrap()
}

/// Waits for the server's close and returns its code.
async fn closed(ws: &mut Ws) -> u16 {
    loop {
        match tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("a close within 5 s")
        {
            Some(Ok(Message::Close(Some(f)))) => return f.code.into(),
            Some(Ok(Message::Close(None))) | None => return 0,
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                eprintln!("socket error instead of a close: {e}");
                return 0;
            }
        }
    }
}

async fn send(ws: &mut Ws, j: Json) {
    ws.send(Message::Text(j.to_string().into())).await.unwrap();
}

/// Applies a frame to the client model, returning it for inspection.
fn apply(wire: &mut WireClient, f: &Json) {
    wire.apply(&f.to_string()).unwrap();
}

/// A counter at `n` with no items.
fn count(n: i64) -> Counter {
    Counter {
        count: n,
        items: vec![],
    }
}

async fn new_counter(engine: &StateTemplate) -> InitialRender {
    engine
        .new_session("counter.html", &Counter::default())
        .await
        .unwrap()
}

async fn reopen(engine: &StateTemplate, i: &InitialRender) -> statetemplate::Session {
    engine
        .get_session(&i.session_id.to_string(), &i.token)
        .await
        .unwrap()
}

fn fresh(engine: &StateTemplate, c: &Counter) -> String {
    engine.fragments().render_html("counter.html", c).unwrap()
}

async fn join(ws: &mut Ws) -> (WireClient, String) {
    let hello = text(ws).await;
    assert_eq!(hello["t"], "hello");
    assert_eq!(hello["v"], 2);
    let epoch = hello["epoch"].as_str().unwrap().to_owned();
    assert_eq!(hello["token"].as_str().unwrap().len(), 92);
    let mut wire = WireClient::new();
    let f = text(ws).await;
    apply(&mut wire, &f);
    (wire, epoch)
}

async fn full_flow(addr: &str, engine: &StateTemplate) {
    let start = Counter::default();
    let i = engine.new_session("counter.html", &start).await.unwrap();
    let mut ws = connect(&url(addr, &i, &i.token, None)).await;
    let (mut wire, _) = join(&mut ws).await;
    assert_eq!(wire.html(), i.html);

    // An event changes the data; the frame brings the client to a fresh render.
    send(&mut ws, json!({"t":"ev","n":"inc","d":{},"r":1})).await;
    apply(&mut wire, &text(&mut ws).await);
    assert_eq!(wire.html(), fresh(engine, &count(1)));
    // Then the event's answer: its ref.
    assert_eq!(text(&mut ws).await, json!(1), "the event is acknowledged");

    // Errors come back as error frames; the connection and state survive.
    send(&mut ws, json!({"t":"ev","n":"nope","r":2})).await;
    let e = text(&mut ws).await;
    assert_eq!(
        (e["t"].as_str(), e["code"].as_str(), e["r"].as_u64()),
        (Some("error"), Some("unknown_event"), Some(2))
    );
    send(&mut ws, json!({"t":"ev","n":"add","d":{"by":"x"},"r":3})).await;
    assert_eq!(text(&mut ws).await["code"], "bad_payload");
    send(&mut ws, json!({"t":"ev","n":"fail","r":4})).await;
    let e = text(&mut ws).await;
    assert_eq!(e["code"], "handler");
    // Internal errors are logged, not shown: the page gets a generic line.
    assert!(
        !e["msg"].as_str().unwrap().contains("database"),
        "an internal error reached the page: {e}"
    );
    assert_eq!(e["r"], 4);
    // A user error is shown as it is; the data did not change.
    send(&mut ws, json!({"t":"ev","n":"refuse","r":5})).await;
    let e = text(&mut ws).await;
    assert_eq!(
        (&e["code"], &e["msg"], &e["r"]),
        (&json!("user"), &json!("That name is taken"), &json!(5))
    );
    // A panicking handler fails its event; the session and the socket go on.
    send(&mut ws, json!({"t":"ev","n":"panic","r":6})).await;
    let e = text(&mut ws).await;
    assert_eq!((&e["code"], &e["r"]), (&json!("handler"), &json!(6)), "{e}");
    ws.send(Message::Text("{not json".into())).await.unwrap();
    assert_eq!(text(&mut ws).await["code"], "bad_frame");
    send(&mut ws, json!({"t":"ping"})).await;
    assert_eq!(text(&mut ws).await["t"], "pong");
    send(&mut ws, json!({"t":"ack","q":1})).await;
    send(&mut ws, json!({"t":"ev","n":"add","d":{"by":5}})).await;
    apply(&mut wire, &text(&mut ws).await);
    let now = Counter {
        count: 6,
        items: vec![],
    };
    assert_eq!(wire.html(), fresh(engine, &now));

    // Server push: a render from elsewhere reaches the client.
    let s = reopen(engine, &i).await;
    s.render(&Counter {
        count: 6,
        items: vec![Item {
            id: 1,
            text: "pushed".into(),
        }],
    })
    .await
    .unwrap();
    let f = text(&mut ws).await;
    assert!(f.to_string().contains("pushed"));
    apply(&mut wire, &f);
    assert_eq!(wire.html(), s.html().await);

    // Closing the session ends the connection with 4002.
    s.close().await.unwrap();
    assert_eq!(closed(&mut ws).await, close::SESSION_ENDED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn axum_end_to_end() {
    let engine = engine(64);
    let addr = serve_axum(&live(&engine)).await;
    full_flow(&addr, &engine).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tungstenite_server_end_to_end() {
    let engine = engine(64);
    let addr = serve_plain(&live(&engine)).await;
    full_flow(&addr, &engine).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tabs_stay_in_sync() {
    let engine = engine(64);
    let addr = serve_axum(&live(&engine)).await;
    let i = new_counter(&engine).await;
    let mut a = connect(&url(&addr, &i, &i.token, None)).await;
    let mut b = connect(&url(&addr, &i, &i.token, None)).await;
    let (mut wa, _) = join(&mut a).await;
    let (mut wb, _) = join(&mut b).await;
    send(&mut a, json!({"t":"ev","n":"push","d":"from a"})).await;
    send(&mut b, json!({"t":"ev","n":"push","d":"from b"})).await;
    for _ in 0..2 {
        apply(&mut wa, &text(&mut a).await);
        apply(&mut wb, &text(&mut b).await);
    }
    let s = reopen(&engine, &i).await;
    let data: Counter = s.data().await.unwrap();
    assert_eq!(data.items.len(), 2, "neither tab's event was lost");
    assert_eq!(wa.html(), fresh(&engine, &data));
    assert_eq!(wb.html(), wa.html());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_replays_what_was_missed_or_resyncs() {
    let engine = engine(3);
    let addr = serve_axum(&live(&engine)).await;
    let i = new_counter(&engine).await;
    let s = reopen(&engine, &i).await;
    let mut ws = connect(&url(&addr, &i, &i.token, None)).await;
    let (mut wire, epoch) = join(&mut ws).await;
    ws.close(None).await.unwrap();
    drop(ws);

    // Two renders while disconnected: within the buffer of 3.
    for n in 1..=2 {
        s.render(&count(n)).await.unwrap();
    }
    let mut ws = connect(&url(&addr, &i, &i.token, Some((wire.seq(), &epoch)))).await;
    assert_eq!(text(&mut ws).await["t"], "hello");
    for want in 1..=2 {
        let f = text(&mut ws).await;
        assert!(f.is_array(), "a replayed frame, not a join: {f}");
        apply(&mut wire, &f);
        assert_eq!(wire.seq(), want, "frames count their seq");
    }
    assert_eq!(wire.html(), fresh(&engine, &count(2)));
    ws.close(None).await.unwrap();
    drop(ws);

    // Five more: the buffer of 3 no longer covers seq 2 -> a resync.
    for n in 3..=7 {
        s.render(&count(n)).await.unwrap();
    }
    let mut ws = connect(&url(&addr, &i, &i.token, Some((wire.seq(), &epoch)))).await;
    assert_eq!(text(&mut ws).await["t"], "hello");
    let f = text(&mut ws).await;
    assert_eq!(f["o"][0][0], "", "a join frame");
    assert_eq!(f["q"], 7, "a join states its seq");
    let mut fresh_client = WireClient::new();
    apply(&mut fresh_client, &f);
    assert_eq!(fresh_client.html(), fresh(&engine, &count(7)));

    // Another epoch (a restarted server) also resyncs.
    let mut ws2 = connect(&url(&addr, &i, &i.token, Some((7, "0000000000000000")))).await;
    assert_eq!(text(&mut ws2).await["t"], "hello");
    assert_eq!(text(&mut ws2).await["o"][0][0], "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_failure_has_a_close_code() {
    let engine = engine(8);
    let live = live(&engine).heartbeat(Duration::from_millis(50), Duration::from_millis(200));
    let addr = serve_axum(&live).await;
    let i = new_counter(&engine).await;

    let mut bad = connect(&url(&addr, &i, "not-a-token", None)).await;
    assert_eq!(closed(&mut bad).await, close::INVALID_SESSION);
    let mut nothing = connect(&format!("ws://{addr}/statetemplate/ws")).await;
    assert_eq!(closed(&mut nothing).await, close::INVALID_SESSION);
    let mut version = connect(&format!(
        "ws://{addr}/statetemplate/ws?v=9&sid={}&token={}",
        i.session_id, i.token
    ))
    .await;
    assert_eq!(closed(&mut version).await, close::VERSION);

    let mut binary = connect(&url(&addr, &i, &i.token, None)).await;
    join(&mut binary).await;
    binary
        .send(Message::Binary(vec![1, 2, 3].into()))
        .await
        .unwrap();
    assert_eq!(closed(&mut binary).await, close::UNSUPPORTED);

    let mut big = connect(&url(&addr, &i, &i.token, None)).await;
    join(&mut big).await;
    let _ = big.send(Message::Text("x".repeat(100 << 10).into())).await;
    assert_eq!(closed(&mut big).await, close::TOO_BIG);

    // A client that never reads (so never answers pings) is dropped.
    let mut silent = connect(&url(&addr, &i, &i.token, None)).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(closed(&mut silent).await, close::IDLE_TIMEOUT);

    // The session survived all of it.
    let s = reopen(&engine, &i).await;
    assert_eq!(s.render(&count(1)).await.unwrap(), 1);
}

fn read_text(m: Option<WsMessage>) -> Json {
    match m {
        Some(WsMessage::Text(t)) => serde_json::from_str::<Json>(&t).unwrap(),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn the_loop_runs_over_channels() {
    let engine = engine(8);
    let live = live(&engine);
    let i = new_counter(&engine).await;
    let (to_server, mut from_server, sink, stream) = common::channel_socket(8);
    let params = ConnectParams {
        sid: i.session_id.to_string(),
        token: i.token.clone(),
        ..Default::default()
    };
    let task =
        tokio::spawn(async move { live.connect(params, Box::pin(sink), Box::pin(stream)).await });
    let next = |m: Option<WsMessage>| match m {
        Some(WsMessage::Text(t)) => serde_json::from_str::<Json>(&t).unwrap(),
        other => panic!("{other:?}"),
    };
    assert_eq!(next(from_server.recv().await)["t"], "hello");
    let mut wire = WireClient::new();
    apply(&mut wire, &next(from_server.recv().await));
    to_server
        .send(Ok(WsMessage::Text(json!({"t":"ev","n":"inc"}).to_string())))
        .await
        .unwrap();
    apply(&mut wire, &next(from_server.recv().await));
    assert_eq!(wire.html(), fresh(&engine, &count(1)));
    to_server.send(Ok(WsMessage::Close(None))).await.unwrap();
    task.await.unwrap();
}

#[tokio::test]
async fn the_client_script_is_served_with_etag() {
    let engine = engine(8);
    let addr = serve_axum(&live(&engine)).await;
    let get = |extra: String| {
        let addr = addr.clone();
        async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
            s.write_all(
                format!("GET /statetemplate/client.js HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{extra}\r\n").as_bytes(),
            )
            .await
            .unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out
        }
    };
    let r = get(String::new()).await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    let lower = r.to_ascii_lowercase();
    assert!(lower.contains("content-type: text/javascript; charset=utf-8"));
    assert!(lower.contains("cache-control: no-cache"));
    let etag = statetemplate::transport::client::etag();
    assert!(r.contains(etag));
    assert!(r.contains("function Model()"));
    let r = get(format!("If-None-Match: {etag}\r\n")).await;
    assert!(r.starts_with("HTTP/1.1 304"), "{r}");
    let _ = ErrorKind::Protocol;
}

#[tokio::test]
async fn a_connection_that_cannot_keep_up_gets_a_resync() {
    let mut env = Environment::new();
    env.add_template("counter.html", PAGE).unwrap();
    let engine = StateTemplate::builder(env)
        .keys(KeyRing::generate().unwrap())
        .subscriber_capacity(4)
        .build()
        .unwrap();
    let live = Live::new(engine.clone());
    let i = new_counter(&engine).await;
    let s = reopen(&engine, &i).await;
    // The "socket" takes one message at a time: while the test does not
    // read, the connection loop is stuck writing and falls behind.
    let (to_server, mut from_server, sink, stream) = common::channel_socket(1);
    let params = ConnectParams {
        sid: i.session_id.to_string(),
        token: i.token.clone(),
        ..Default::default()
    };
    let conn = {
        let live = live.clone();
        tokio::spawn(async move { live.connect(params, sink, stream).await })
    };
    let read = read_text;
    assert_eq!(read(from_server.recv().await)["t"], "hello");
    let mut wire = WireClient::new();
    apply(&mut wire, &read(from_server.recv().await));
    // 50 renders while the client reads nothing: none of them waits.
    for n in 1..=50 {
        s.render(&count(n)).await.unwrap();
    }
    // The client catches up: a few stale frames at most, then a resync
    // (hello + join frame) at the latest seq instead of the whole backlog.
    let mut got = Vec::new();
    loop {
        let f = read(from_server.recv().await);
        let join = f.is_object() && f["o"][0][0] == "";
        if f["t"] == "hello" {
            continue;
        }
        if join {
            wire = WireClient::new();
        }
        apply(&mut wire, &f);
        got.push(f);
        if wire.seq() == 50 {
            break;
        }
    }
    assert!(got.len() < 10, "{} frames instead of a resync", got.len());
    assert!(
        got.iter().any(|f| f["o"][0][0] == ""),
        "a join frame was sent"
    );
    assert_eq!(wire.html(), fresh(&engine, &count(50)));
    drop(to_server);
    conn.await.unwrap();
}

async fn raw(ws: &mut Ws) -> String {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("a frame within 5 s")
            .expect("socket open")
            .unwrap();
        match m {
            Message::Text(t) => return t.as_str().to_owned(),
            Message::Close(c) => panic!("closed: {c:?}"),
            _ => {}
        }
    }
}

/// FNV-1a over UTF-16 code units, as the JS client hashes a frame it acks.
fn fnv(s: &str) -> String {
    let h = s.encode_utf16().fold(0x811c_9dc5u32, |h, u| {
        (h ^ u32::from(u)).wrapping_mul(0x0100_0193)
    });
    format!("{h:x}")
}

/// Frames carry no seq (each is one more), so a lost or reordered one is
/// found through the ack: it names the seq and hashes the frame the client
/// applied as it. A mismatch gets the client a resync; a match nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ack_that_does_not_match_the_frame_sent_gets_a_resync() {
    let engine = engine(8);
    let addr = serve_axum(&live(&engine)).await;
    let i = new_counter(&engine).await;
    let s = reopen(&engine, &i).await;
    let mut ws = connect(&url(&addr, &i, &i.token, None)).await;
    let (mut wire, _) = join(&mut ws).await;
    s.render(&count(1)).await.unwrap();
    s.render(&count(2)).await.unwrap();
    let f1 = raw(&mut ws).await;
    let f2 = raw(&mut ws).await;
    wire.apply(&f1).unwrap();
    wire.apply(&f2).unwrap();
    assert_eq!(wire.seq(), 2);

    // In step: the hash of the frame sent as seq 2.
    send(&mut ws, json!({"t":"ack","q":2,"h":fnv(&f2)})).await;
    s.render(&count(3)).await.unwrap();
    let f3 = raw(&mut ws).await;
    assert!(f3.starts_with('['), "a plain update, not a resync: {f3}");
    wire.apply(&f3).unwrap();

    // A client that lost frame 4 applies frame 5 as its "4": its ack for 4
    // hashes frame 5, which is not what was sent as 4.
    s.render(&count(4)).await.unwrap();
    s.render(&count(5)).await.unwrap();
    let _lost = raw(&mut ws).await;
    let f5 = raw(&mut ws).await;
    send(&mut ws, json!({"t":"ack","q":4,"h":fnv(&f5)})).await;
    assert_eq!(text(&mut ws).await["t"], "hello", "a resync follows");
    let join = text(&mut ws).await;
    assert_eq!(join["q"], 5, "the join states the seq");
    let mut fresh_client = WireClient::new();
    apply(&mut fresh_client, &join);
    assert_eq!(fresh_client.html(), fresh(&engine, &count(5)));

    // An ack beyond what was sent is out of step too.
    send(&mut ws, json!({"t":"ack","q":99})).await;
    assert_eq!(text(&mut ws).await["t"], "hello");
    assert_eq!(text(&mut ws).await["q"], 5);
}

/// A client numbers its events and resends the unanswered ones after a
/// reconnect: the session applies each (client, ref) once. Another client
/// instance's refs are its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resent_event_is_applied_once() {
    let engine = engine(8);
    let addr = serve_axum(&live(&engine)).await;
    let i = new_counter(&engine).await;
    let s = reopen(&engine, &i).await;
    let as_client = |c: &str| format!("{}&c={c}", url(&addr, &i, &i.token, None));
    let mut ws = connect(&as_client("00aa11bb22cc")).await;
    let (mut wire, _) = join(&mut ws).await;
    send(&mut ws, json!({"t":"ev","n":"inc","d":{},"r":1})).await;
    apply(&mut wire, &text(&mut ws).await);
    assert_eq!(text(&mut ws).await, json!(1));
    ws.close(None).await.unwrap();
    drop(ws);

    // The same client, reconnected, resends ref 1 (its answer was lost)
    // and sends ref 2: 1 is answered without being applied again.
    let mut ws = connect(&as_client("00aa11bb22cc")).await;
    let (mut wire, _) = join(&mut ws).await;
    send(&mut ws, json!({"t":"ev","n":"inc","d":{},"r":1})).await;
    assert_eq!(text(&mut ws).await, json!(1), "answered, not applied");
    send(&mut ws, json!({"t":"ev","n":"inc","d":{},"r":2})).await;
    apply(&mut wire, &text(&mut ws).await);
    assert_eq!(text(&mut ws).await, json!(2));
    assert_eq!(s.seq().await, 2, "two events applied, not three");
    assert_eq!(wire.html(), fresh(&engine, &count(2)));

    // Another client instance with its own ref 1.
    let mut other = connect(&as_client("ffff")).await;
    let (mut w2, _) = join(&mut other).await;
    send(&mut other, json!({"t":"ev","n":"inc","d":{},"r":1})).await;
    apply(&mut w2, &text(&mut other).await);
    assert_eq!(text(&mut other).await, json!(1));
    assert_eq!(w2.html(), fresh(&engine, &count(3)));
    // Without a client id, nothing is deduplicated.
    let mut anon = connect(&url(&addr, &i, &i.token, None)).await;
    let _ = join(&mut anon).await;
    for _ in 0..2 {
        send(&mut anon, json!({"t":"ev","n":"inc","d":{},"r":1})).await;
        let f = text(&mut anon).await;
        assert!(f.is_array(), "{f}");
        assert_eq!(text(&mut anon).await, json!(1));
    }
    assert_eq!(s.seq().await, 5);
}

/// `GET path` with optional `Authorization: Bearer auth`: (status, body).
async fn http_get(addr: &str, path: &str, auth: Option<&str>) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let auth = auth.map_or(String::new(), |a| format!("Authorization: Bearer {a}\r\n"));
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.unwrap();
    let (head, body) = buf.split_once("\r\n\r\n").unwrap();
    let status = head[9..12].parse().unwrap();
    (status, body.to_owned())
}

/// The debug listing: only with the token (401 without it, with another
/// one, or with a prefix of it), and then every live session with its
/// seq, epoch, connections and recent frames.
#[tokio::test]
async fn the_debug_listing_needs_its_token_and_shows_each_session() {
    let engine = engine(8);
    let token = "0123456789abcdef0123456789abcdef-debug";
    assert_eq!(
        live(&engine).debug_sessions("short").unwrap_err().kind(),
        ErrorKind::Config,
        "a short token is refused"
    );
    let addr = serve_axum(&live(&engine).debug_sessions(token).unwrap()).await;
    let i = new_counter(&engine).await;
    let mut ws = connect(&url(&addr, &i, &i.token, None)).await;
    let (mut wire, epoch) = join(&mut ws).await;
    send(&mut ws, json!({"t":"ev","n":"inc","d":{},"r":1})).await;
    apply(&mut wire, &text(&mut ws).await);
    assert_eq!(text(&mut ws).await, json!(1));
    let path = "/statetemplate/debug/sessions";
    for bad in [
        None,
        Some("wrong-token-wrong-token-wrong-token!!"),
        Some(&token[..20]),
    ] {
        let (status, body) = http_get(&addr, path, bad).await;
        assert_eq!(status, 401, "{bad:?}: {body}");
        assert!(!body.contains(&i.session_id.to_string()));
    }
    let (status, body) = http_get(&addr, path, Some(token)).await;
    assert_eq!(status, 200, "{body}");
    let listing: Json = serde_json::from_str(body.trim()).unwrap_or_else(|e| {
        // A chunked body: take the JSON between the chunk lines.
        let start = body.find('{').unwrap();
        let end = body.rfind('}').unwrap();
        serde_json::from_str(&body[start..=end]).unwrap_or_else(|_| panic!("{e}: {body}"))
    });
    assert_eq!(listing["live"], 1);
    let s = &listing["sessions"][0];
    assert_eq!(s["id"], i.session_id.to_string());
    assert_eq!(s["seq"], 1);
    assert_eq!(s["epoch"], epoch);
    assert_eq!(s["connections"], 1);
    assert_eq!(s["frames"][0]["seq"], 1, "{s}");
    assert!(s["frames"][0]["bytes"].as_u64().unwrap() > 0);
}

/// What a connection did to its socket, in order.
#[derive(Debug, PartialEq)]
enum Wrote {
    Text(String),
    Flush,
}

/// A sink that records each message and each flush.
struct Recorder(std::sync::Arc<std::sync::Mutex<Vec<Wrote>>>);

impl futures_util::Sink<WsMessage> for Recorder {
    type Error = std::convert::Infallible;
    fn poll_ready(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn start_send(self: std::pin::Pin<&mut Self>, m: WsMessage) -> Result<(), Self::Error> {
        if let WsMessage::Text(t) = m {
            self.0.lock().unwrap().push(Wrote::Text(t));
        }
        Ok(())
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        let mut log = self.0.lock().unwrap();
        if log.last().is_some_and(|w| *w != Wrote::Flush) {
            log.push(Wrote::Flush);
        }
        std::task::Poll::Ready(Ok(()))
    }
    fn poll_close(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }
}

/// A click's frame and its reply are written together and flushed once
/// (one system call and one wakeup of the client on a real socket), and so
/// are the hello and the join frame of a connect.
#[tokio::test]
async fn a_click_is_answered_in_one_write() {
    let engine = engine(8);
    let live = live(&engine);
    let i = new_counter(&engine).await;
    let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let (to_server, from_client) = tokio::sync::mpsc::channel::<Result<WsMessage, String>>(8);
    let stream = futures_util::stream::unfold(from_client, |mut rx| async move {
        rx.recv().await.map(|m| (m, rx))
    });
    let params = ConnectParams {
        sid: i.session_id.to_string(),
        token: i.token.clone(),
        ..Default::default()
    };
    let sink = Recorder(log.clone());
    let task = tokio::spawn(async move { live.connect(params, sink, Box::pin(stream)).await });
    let settle = || async {
        for _ in 0..200 {
            tokio::time::sleep(Duration::from_millis(5)).await;
            let l = log.lock().unwrap();
            if l.last() == Some(&Wrote::Flush) && l.len() >= 3 {
                return;
            }
        }
        panic!("nothing was flushed: {:?}", log.lock().unwrap());
    };
    settle().await;
    let taken: Vec<Wrote> = std::mem::take(&mut *log.lock().unwrap());
    assert_eq!(taken.len(), 3, "{taken:?}");
    assert!(matches!(&taken[0], Wrote::Text(t) if t.contains("\"hello\"")));
    assert!(matches!(&taken[1], Wrote::Text(_)));
    assert_eq!(taken[2], Wrote::Flush);
    for r in 1..=3 {
        to_server
            .send(Ok(WsMessage::Text(
                json!({"t":"ev","n":"inc","r":r}).to_string(),
            )))
            .await
            .unwrap();
        settle().await;
        let taken: Vec<Wrote> = std::mem::take(&mut *log.lock().unwrap());
        let [Wrote::Text(frame), Wrote::Text(reply), Wrote::Flush] = &taken[..] else {
            panic!("click {r}: {taken:?}");
        };
        assert!(frame.starts_with('['), "click {r}: {frame}");
        assert_eq!(reply, &r.to_string(), "click {r}");
    }
    to_server.send(Ok(WsMessage::Close(None))).await.unwrap();
    task.await.unwrap();
}

/// A client that starts from the page it was served (`p=1` with the page's
/// seq and epoch) gets the statics in its hello and no join frame while the
/// session is still at that page; the frames that follow apply to the page
/// it holds. A session that moved on, another epoch, or a page whose HTML
/// does not tell its values apart (markup in a slot without an anchor)
/// gets a join frame as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_served_the_page_gets_no_join_frame() {
    let mut env = Environment::new();
    env.add_template("counter.html", PAGE).unwrap();
    env.add_template(
        "checks.html",
        "<ul>{% for t in items %}<li><input type=checkbox{% if t.id > 1 %} checked{% endif %}>{{ t.text|safe }}</li>{% endfor %}</ul>",
    )
    .unwrap();
    let engine = StateTemplate::builder(env)
        .keys(KeyRing::generate().unwrap())
        .build()
        .unwrap();
    let live = live(&engine);
    let addr = serve_axum(&live).await;
    let paged = |i: &InitialRender, epoch: &str| {
        format!("{}&p=1", url(&addr, i, &i.token, Some((i.seq, epoch))))
    };
    let i = new_counter(&engine).await;
    assert_eq!((i.seq, i.epoch.len()), (0, 16));
    let page = live.mount(&i);
    assert!(
        page.contains(&format!("data-st-seq=\"0\" data-st-epoch=\"{}\"", i.epoch)),
        "the page says its seq and epoch: {page}"
    );
    let mut ws = connect(&paged(&i, &i.epoch)).await;
    let hello = text(&mut ws).await;
    assert_eq!(hello["t"], "hello");
    assert_eq!(hello["epoch"], i.epoch.as_str());
    // The statics are those of a join of the same page.
    let join = serde_json::from_str::<Json>(
        &engine
            .fragments()
            .render("counter.html", &Counter::default())
            .unwrap()
            .join_frame(),
    )
    .unwrap();
    assert_eq!(
        hello["s"], join["s"],
        "the hello carries the page's statics"
    );
    // No page content follows: the next frame is the next render's update.
    let s = reopen(&engine, &i).await;
    let next = Counter {
        count: 5,
        items: vec![Item {
            id: 1,
            text: "milk".into(),
        }],
    };
    s.render(&next).await.unwrap();
    let f = text(&mut ws).await;
    assert!(f.is_array(), "an update, not a join: {f}");
    let mut wire = WireClient::new();
    apply(&mut wire, &join);
    apply(&mut wire, &f);
    assert_eq!(
        wire.html(),
        fresh(&engine, &next),
        "the update applies to the page served"
    );
    ws.close(None).await.unwrap();

    // The session moved on since the page (seq 1 now): a join.
    let mut ws = connect(&paged(&i, &i.epoch)).await;
    let hello = text(&mut ws).await;
    assert_eq!(hello["s"], Json::Null);
    let f = text(&mut ws).await;
    assert_eq!(
        (f["q"].as_u64(), &f["o"][0][0]),
        (Some(1), &json!("")),
        "a join frame: {f}"
    );
    ws.close(None).await.unwrap();

    // Another epoch: a join.
    let i = new_counter(&engine).await;
    let mut ws = connect(&paged(&i, "0000000000000000")).await;
    assert_eq!(text(&mut ws).await["s"], Json::Null);
    assert_eq!(text(&mut ws).await["o"][0][0], "");
    ws.close(None).await.unwrap();

    // The same over the plain tokio-tungstenite server.
    let plain = serve_plain(&live).await;
    let i = new_counter(&engine).await;
    let u = format!("{}&p=1", url(&plain, &i, &i.token, Some((i.seq, &i.epoch))));
    let mut ws = connect(&u).await;
    assert_eq!(text(&mut ws).await["s"], join["s"]);
    ws.close(None).await.unwrap();

    // A branch in a tag of an item reads from the page (the client takes
    // the attributes there as the slot's text).
    let data = json!({"items": [{"id": 1, "text": "a"}, {"id": 2, "text": "b"}]});
    let i = engine.new_session("checks.html", &data).await.unwrap();
    let mut ws = connect(&paged(&i, &i.epoch)).await;
    assert!(text(&mut ws).await["s"].is_object());
    ws.close(None).await.unwrap();
    // Markup in a slot without an anchor does not: a join.
    let data = json!({"items": [{"id": 1, "text": "<b>a</b>"}, {"id": 2, "text": "b"}]});
    let i = engine.new_session("checks.html", &data).await.unwrap();
    let mut ws = connect(&paged(&i, &i.epoch)).await;
    assert_eq!(text(&mut ws).await["s"], Json::Null);
    let f = text(&mut ws).await;
    assert_eq!(f["o"][0][0], "", "a join frame");
    let mut wire = WireClient::new();
    apply(&mut wire, &f);
    assert_eq!(wire.html(), i.html);
}
