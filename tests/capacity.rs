//! Activity and capacity: what keeps a session alive (client activity, not
//! server renders), the short leash of sessions no client joined, and who
//! is evicted first when a cap is reached (never a joined session for a
//! page load; a connected one last). Paused clocks and channel sockets.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use minijinja::Environment;
use serde_json::json;
use statetemplate::session::EvictReason;
use statetemplate::store::{MemoryStore, SessionRecord};
use statetemplate::token::KeyRing;
use statetemplate::transport::{ConnectParams, WsMessage};
use statetemplate::{Builder, ErrorKind, InitialRender, Live, Session, StateTemplate};

fn builder() -> Builder {
    let mut env = Environment::new();
    env.add_template("p.html", "<p>{{ n }}</p>").unwrap();
    StateTemplate::builder(env).keys(KeyRing::generate().unwrap())
}

type Evicted = Arc<Mutex<Vec<(String, EvictReason)>>>;

fn recording(b: Builder) -> (Builder, Evicted) {
    let ev: Evicted = Arc::default();
    let e = ev.clone();
    let b =
        b.on_evict(move |r: &SessionRecord, why| e.lock().unwrap().push((r.id.to_string(), why)));
    (b, ev)
}

async fn open(engine: &StateTemplate, i: &InitialRender) -> Session {
    engine
        .get_session(&i.session_id.to_string(), &i.token)
        .await
        .unwrap()
}

/// A socket (over channels) joined to `i`'s session: it stays open until
/// the sender is dropped. Returns once the join frame arrived.
async fn socket(
    live: &Live,
    i: &InitialRender,
) -> (
    tokio::sync::mpsc::Sender<Result<WsMessage, String>>,
    tokio::sync::mpsc::Receiver<WsMessage>,
    tokio::task::JoinHandle<()>,
) {
    let (to_server, mut from_server, sink, stream) = common::channel_socket(1024);
    let params = ConnectParams {
        sid: i.session_id.to_string(),
        token: i.token.clone(),
        ..Default::default()
    };
    let live = live.clone();
    let conn = tokio::spawn(async move { live.connect(params, sink, stream).await });
    for _ in 0..2 {
        match from_server.recv().await {
            Some(WsMessage::Text(_)) => {}
            other => panic!("hello and join, got {other:?}"),
        }
    }
    (to_server, from_server, conn)
}

/// Seconds from `t0` until `s` closes (at most `limit` s of paused time).
async fn closed_after(s: &Session, t0: tokio::time::Instant, limit: u64) -> f64 {
    while !s.is_closed() && t0.elapsed() < Duration::from_secs(limit) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    t0.elapsed().as_secs_f64()
}

async fn new_page(engine: &StateTemplate) -> InitialRender {
    engine
        .new_session("p.html", &json!({"n": 0}))
        .await
        .unwrap()
}

fn ticker(s: Session) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut n = 0;
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            n += 1;
            if s.render(&json!({ "n": n })).await.is_err() {
                break;
            }
        }
    })
}

#[tokio::test(start_paused = true)]
async fn a_ticker_does_not_keep_an_unjoined_session_alive() {
    let (b, evicted) = recording(builder().cleanup_interval(Duration::from_secs(1)));
    let engine = b.build().unwrap();
    let i = new_page(&engine).await;
    let s = open(&engine, &i).await;
    let t0 = tokio::time::Instant::now();
    let tick = ticker(s.clone());
    // The default unjoined timeout is 5 minutes, renders notwithstanding.
    tokio::time::sleep(Duration::from_secs(299)).await;
    assert!(!s.is_closed(), "alive at 299 s");
    assert!(s.seq().await >= 298, "the ticker rendered");
    let at = closed_after(&s, t0, 400).await;
    assert!((300.0..=301.5).contains(&at), "expired at {at} s");
    assert_eq!(
        evicted.lock().unwrap().as_slice(),
        &[(i.session_id.to_string(), EvictReason::Expired)]
    );
    tick.await.unwrap();
    assert_eq!(engine.live_sessions(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_joined_session_whose_sockets_closed_expires_at_its_expiration() {
    let (b, evicted) = recording(
        builder()
            .expiration(Duration::from_secs(3600))
            .cleanup_interval(Duration::from_secs(1)),
    );
    let engine = b.build().unwrap();
    let live = Live::new(engine.clone());
    let i = new_page(&engine).await;
    let s = open(&engine, &i).await;
    let (to_server, _from, conn) = socket(&live, &i).await;
    assert!(s.is_joined());
    assert_eq!(s.connections(), 1);
    drop(to_server); // the tab closes
    conn.await.unwrap();
    assert_eq!(s.connections(), 0);
    let t0 = tokio::time::Instant::now();
    let tick = ticker(s.clone());
    // Far past the unjoined timeout: the session was joined.
    tokio::time::sleep(Duration::from_secs(3599)).await;
    assert!(!s.is_closed(), "alive at 3,599 s");
    let at = closed_after(&s, t0, 4000).await;
    assert!((3600.0..=3601.5).contains(&at), "expired at {at} s");
    assert_eq!(evicted.lock().unwrap()[0].1, EvictReason::Expired);
    tick.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn client_frames_keep_a_session_alive() {
    let engine = builder()
        .expiration(Duration::from_secs(120))
        .cleanup_interval(Duration::from_secs(1))
        .build()
        .unwrap();
    let live = Live::new(engine.clone());
    let i = new_page(&engine).await;
    let s = open(&engine, &i).await;
    let (to_server, _from, _conn) = socket(&live, &i).await;
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_secs(15)).await;
        to_server
            .send(Ok(WsMessage::Text(r#"{"t":"ping"}"#.into())))
            .await
            .unwrap();
    }
    // 450 s in, far past both timeouts, with a ping every 15 s.
    assert!(!s.is_closed());
}

#[tokio::test]
async fn page_loads_never_evict_joined_sessions() {
    let (b, evicted) = recording(builder().max_sessions(50).max_unjoined(10));
    let engine = b.build().unwrap();
    let live = Live::new(engine.clone());
    let mut joined = Vec::new();
    for _ in 0..20 {
        let i = engine
            .new_session("p.html", &json!({"n": 0}))
            .await
            .unwrap();
        let sock = socket(&live, &i).await;
        joined.push((open(&engine, &i).await, sock));
    }
    // Five of them close their tab: joined, but no connection.
    for (_, (tx, _, _)) in joined.iter_mut().take(5) {
        let (closed_tx, _) = tokio::sync::mpsc::channel(1);
        *tx = closed_tx;
    }
    for _ in 0..1000 {
        engine
            .new_session("p.html", &json!({"n": 1}))
            .await
            .unwrap();
        assert!(engine.live_sessions() <= 50);
        assert!(engine.unjoined_sessions() <= 10);
    }
    for (s, _) in &joined {
        assert!(!s.is_closed(), "a joined session was evicted");
    }
    let ev = evicted.lock().unwrap();
    assert_eq!(
        ev.len(),
        1000 - 10,
        "each page load past the cap evicts one unjoined"
    );
    assert!(ev.iter().all(|e| e.1 == EvictReason::Capacity));
    let joined_ids: Vec<String> = joined.iter().map(|j| j.0.id().to_string()).collect();
    assert!(ev.iter().all(|e| !joined_ids.contains(&e.0)));
}

#[tokio::test]
async fn when_joined_sessions_hold_every_slot_a_page_load_is_refused() {
    let engine = builder().max_sessions(3).build().unwrap();
    let live = Live::new(engine.clone());
    let mut held = Vec::new();
    for _ in 0..3 {
        let i = engine
            .new_session("p.html", &json!({"n": 0}))
            .await
            .unwrap();
        held.push(socket(&live, &i).await);
    }
    let e = engine
        .new_session("p.html", &json!({"n": 1}))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Capacity, "{e}");
    assert_eq!(engine.live_sessions(), 3);
    assert_eq!(
        engine.store().count().await.unwrap(),
        3,
        "nothing stored for it"
    );
    // A tab closes: its session is detached, yet still not evicted by a
    // page load.
    drop(held.pop());
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        engine
            .new_session("p.html", &json!({"n": 1}))
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::Capacity
    );
}

/// A returning client (a session restored from a shared store) evicts an
/// unjoined session first, then a joined one without a connection, and a
/// connected one only when nothing else is left.
#[tokio::test]
async fn a_returning_client_evicts_connected_sessions_last() {
    let store = Arc::new(MemoryStore::default());
    let keys = KeyRing::generate().unwrap();
    let (b, evicted) = recording(
        builder()
            .keys(keys.clone())
            .store(store.clone())
            .max_sessions(3),
    );
    let here = b.build().unwrap();
    let elsewhere = builder().keys(keys).store(store).build().unwrap();
    let live = Live::new(here.clone());
    let connected = here.new_session("p.html", &json!({"n": 0})).await.unwrap();
    let _sock = socket(&live, &connected).await;
    let detached = here.new_session("p.html", &json!({"n": 0})).await.unwrap();
    open(&here, &detached).await.join().await.unwrap();
    let unjoined = here.new_session("p.html", &json!({"n": 0})).await.unwrap();
    let mut victims = Vec::new();
    let mut sockets = Vec::new();
    for _ in 0..3 {
        // Made by another instance, then its client connects here: the
        // session is restored from the store and connected.
        let away = elsewhere
            .new_session("p.html", &json!({"n": 9}))
            .await
            .unwrap();
        sockets.push(socket(&live, &away).await);
        victims.push(evicted.lock().unwrap().last().unwrap().0.clone());
    }
    assert_eq!(
        victims,
        [unjoined, detached, connected].map(|i| i.session_id.to_string())
    );
    assert!(
        evicted
            .lock()
            .unwrap()
            .iter()
            .all(|e| e.1 == EvictReason::Capacity)
    );
    assert_eq!(here.live_sessions(), 3);
}

#[tokio::test]
async fn connected_sessions_are_those_with_an_open_socket() {
    let engine = builder().build().unwrap();
    let live = Live::new(engine.clone());
    let a = new_page(&engine).await;
    let _b = new_page(&engine).await;
    assert!(engine.connected_sessions().is_empty());
    let (to_server, _from, conn) = socket(&live, &a).await;
    let ids: Vec<String> = engine
        .connected_sessions()
        .iter()
        .map(|s| s.id().to_string())
        .collect();
    assert_eq!(ids, [a.session_id.to_string()]);
    drop(to_server);
    conn.await.unwrap();
    assert!(engine.connected_sessions().is_empty(), "the socket closed");
    assert_eq!(engine.live_sessions(), 2);
}
