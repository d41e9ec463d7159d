//! The settings `Live::new` ships with, checked by what the connection loop
//! does under a paused clock, with none of them overridden: a ping every
//! 20 s, a silent peer dropped at 60 s (close 4000), a write that waits 10 s
//! dropped, 100 events a second with bursts of 200 per session (all its
//! connections together), and as many pings and acks again per connection.
//! (The 64 KiB message limit is checked on real sockets in
//! `tests/security.rs`.)

mod common;

use std::time::Duration;

use minijinja::Environment;
use serde_json::{Value as Json, json};
use statetemplate::token::KeyRing;
use statetemplate::transport::{ConnectParams, WsMessage, close};
use statetemplate::{InitialRender, Live, StateTemplate};
use tokio::time::Instant;

async fn setup() -> (Live, InitialRender, ConnectParams) {
    let mut env = Environment::new();
    env.add_template("p.html", "<p>{{ n }}</p>").unwrap();
    let engine = StateTemplate::builder(env)
        .keys(KeyRing::generate().unwrap())
        .build()
        .unwrap();
    let i = engine
        .new_session("p.html", &json!({"n": 0}))
        .await
        .unwrap();
    let params = ConnectParams {
        sid: i.session_id.to_string(),
        token: i.token.clone(),
        ..Default::default()
    };
    (Live::new(engine), i, params)
}

fn text(m: &WsMessage) -> Json {
    match m {
        WsMessage::Text(t) => serde_json::from_str(t).unwrap(),
        other => panic!("not text: {other:?}"),
    }
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

#[tokio::test(start_paused = true)]
async fn pings_every_20_s_and_drops_a_silent_peer_at_60_s() {
    let (live, _, params) = setup().await;
    let (_to_server, mut from_server, sink, stream) = common::channel_socket(64);
    let t0 = Instant::now();
    let conn = tokio::spawn(async move { live.connect(params, sink, stream).await });
    assert_eq!(text(&from_server.recv().await.unwrap())["t"], "hello");
    assert_eq!(text(&from_server.recv().await.unwrap())["q"], 0);
    let mut pings = Vec::new();
    let code = loop {
        match from_server.recv().await.expect("a close before the end") {
            WsMessage::Ping(_) => pings.push(secs(t0.elapsed())),
            WsMessage::Close(c) => break (c.map(|c| c.0), secs(t0.elapsed())),
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(pings, vec![20.0, 40.0], "pings at 20 s and 40 s");
    assert_eq!(
        code,
        (Some(close::IDLE_TIMEOUT), 60.0),
        "closed idle at 60 s"
    );
    conn.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_peer_that_answers_pings_stays() {
    let (live, _, params) = setup().await;
    let (to_server, mut from_server, sink, stream) = common::channel_socket(64);
    let t0 = Instant::now();
    let conn = tokio::spawn(async move { live.connect(params, sink, stream).await });
    from_server.recv().await.unwrap();
    from_server.recv().await.unwrap();
    let mut pings = 0;
    while t0.elapsed() < Duration::from_secs(300) {
        match from_server.recv().await.unwrap() {
            WsMessage::Ping(p) => {
                pings += 1;
                to_server.send(Ok(WsMessage::Pong(p))).await.unwrap();
            }
            other => panic!("unexpected {other:?} at {:?}", t0.elapsed()),
        }
    }
    assert_eq!(pings, 15, "one ping every 20 s for 300 s");
    drop(to_server);
    conn.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_write_stuck_for_10_s_drops_the_client() {
    let (live, i, params) = setup().await;
    let engine = live.engine().clone();
    // Room for the hello only: the join frame's write never completes.
    let (_to_server, _from_server, sink, stream) = common::channel_socket(1);
    let t0 = Instant::now();
    let conn = tokio::spawn(async move { live.connect(params, sink, stream).await });
    tokio::time::sleep(Duration::from_millis(9_990)).await;
    assert!(!conn.is_finished(), "dropped before 10 s");
    tokio::time::timeout(Duration::from_secs(11), conn)
        .await
        .expect("the stuck client was dropped")
        .unwrap();
    // The write of the join frame times out at 10 s; the close that follows
    // cannot be written either and times out 10 s later.
    let took = secs(t0.elapsed());
    assert!((10.0..=20.0).contains(&took), "dropped after {took} s");
    // The session itself is fine.
    let s = engine
        .get_session(&i.session_id.to_string(), &i.token)
        .await
        .unwrap();
    assert_eq!(s.render(&json!({"n": 1})).await.unwrap(), 1);
}

/// Sends `n` events (to no handler: each gets an `unknown_event` error
/// naming its ref) and `pings` pings, all at once; the times (s since
/// `t0`) at which the events were answered.
async fn served(
    to_server: &tokio::sync::mpsc::Sender<Result<WsMessage, String>>,
    from_server: &mut tokio::sync::mpsc::Receiver<WsMessage>,
    n: usize,
    pings: usize,
    t0: Instant,
) -> Vec<f64> {
    for _ in 0..pings {
        let ping = r#"{"t":"ping"}"#.to_owned();
        to_server.send(Ok(WsMessage::Text(ping))).await.unwrap();
    }
    for r in 0..n {
        let ev = json!({"t": "ev", "n": "nothing", "r": r}).to_string();
        to_server.send(Ok(WsMessage::Text(ev))).await.unwrap();
    }
    let mut at = Vec::new();
    while at.len() < n {
        match from_server.recv().await.unwrap() {
            WsMessage::Text(t) if t.contains("unknown_event") => at.push(secs(t0.elapsed())),
            WsMessage::Text(t) if t.contains("pong") => {}
            WsMessage::Ping(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    at
}

#[tokio::test(start_paused = true)]
async fn events_are_limited_to_100_a_second_with_bursts_of_200() {
    let (live, _, params) = setup().await;
    let (to_server, mut from_server, sink, stream) = common::channel_socket(1024);
    let conn = tokio::spawn(async move { live.connect(params, sink, stream).await });
    from_server.recv().await.unwrap();
    from_server.recv().await.unwrap();
    // 200 pings first: they have a budget of their own.
    let at = served(&to_server, &mut from_server, 400, 200, Instant::now()).await;
    let burst = at.iter().filter(|t| **t == 0.0).count();
    assert_eq!(burst, 200, "events served at once, after 200 pings");
    // Then one every 10 ms: the 300th at 1 s, the 400th at 2 s.
    for (n, want) in [(300, 1.0), (400, 2.0)] {
        let got = at[n - 1];
        assert!((got - want).abs() < 0.011, "event {n} served at {got} s");
    }
    drop(to_server);
    conn.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn pings_are_limited_to_100_a_second_with_bursts_of_200_per_connection() {
    let (live, _, params) = setup().await;
    let (to_server, mut from_server, sink, stream) = common::channel_socket(1024);
    let conn = tokio::spawn(async move { live.connect(params, sink, stream).await });
    from_server.recv().await.unwrap();
    from_server.recv().await.unwrap();
    let t0 = Instant::now();
    for _ in 0..300 {
        let ping = r#"{"t":"ping"}"#.to_owned();
        to_server.send(Ok(WsMessage::Text(ping))).await.unwrap();
    }
    let mut at = Vec::new();
    while at.len() < 300 {
        if let WsMessage::Text(t) = from_server.recv().await.unwrap() {
            assert!(t.contains("pong"));
            at.push(secs(t0.elapsed()));
        }
    }
    assert_eq!(at.iter().filter(|t| **t == 0.0).count(), 200);
    assert!((at[299] - 1.0).abs() < 0.011, "the 300th at {} s", at[299]);
    drop(to_server);
    conn.await.unwrap();
}

/// Two sockets of one session share its event budget: opening more
/// sockets buys no more events.
#[tokio::test(start_paused = true)]
async fn the_event_budget_covers_all_connections_of_a_session() {
    let (live, _, params) = setup().await;
    let mut socks = Vec::new();
    for _ in 0..2 {
        let (to_server, mut from_server, sink, stream) = common::channel_socket(1024);
        let (live, params) = (live.clone(), params.clone());
        let conn = tokio::spawn(async move { live.connect(params, sink, stream).await });
        from_server.recv().await.unwrap();
        from_server.recv().await.unwrap();
        socks.push((to_server, from_server, conn));
    }
    let t0 = Instant::now();
    let (mut a, mut b) = (socks.remove(0), socks.remove(0));
    let (at_a, at_b) = tokio::join!(
        served(&a.0, &mut a.1, 150, 0, t0),
        served(&b.0, &mut b.1, 150, 0, t0)
    );
    let mut all: Vec<f64> = at_a.into_iter().chain(at_b).collect();
    all.sort_by(f64::total_cmp);
    assert_eq!(
        all.iter().filter(|t| **t == 0.0).count(),
        200,
        "one burst for both"
    );
    assert!(
        (all[299] - 1.0).abs() < 0.011,
        "the 300th at {} s",
        all[299]
    );
    for (tx, _, conn) in [a, b] {
        drop(tx);
        conn.await.unwrap();
    }
}
