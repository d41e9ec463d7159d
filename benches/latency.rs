#![allow(missing_docs)]
//! End-to-end update latency over a real WebSocket on loopback: from
//! `Session::render` to the frame arriving at a tokio-tungstenite client,
//! and from a client event to the updated frame (the click round trip).
//! Run: `cargo bench --bench latency` (bounded: 2,000 samples per case).

mod support;

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use minijinja::Environment;
use serde_json::{Value as Json, json};
use statetemplate::token::KeyRing;
use statetemplate::{Live, StateTemplate};
use tokio_tungstenite::tungstenite::Message;

const SAMPLES: usize = 2000;

fn table(n: usize, changed: Option<usize>) -> Json {
    json!({
        "title": "Dashboard",
        "user": {"name": "Ann", "role": "admin"},
        "updated": "12:00:00",
        "rows": (0..n).map(|i| json!({"id": i, "name": format!("User {i}"),
            "email": format!("user{i}@example.com"),
            "score": if Some(i) == changed { 1000 } else { i * 7 % 100 },
            "active": i % 3 == 0})).collect::<Vec<_>>(),
    })
}

fn pct(v: &mut [Duration], p: f64) -> f64 {
    v.sort_unstable();
    v[((v.len() - 1) as f64 * p) as usize].as_secs_f64() * 1e6
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn next_text(ws: &mut Ws) -> usize {
    loop {
        match ws.next().await.unwrap().unwrap() {
            Message::Text(t) => return t.len(),
            Message::Close(c) => panic!("closed: {c:?}"),
            _ => {}
        }
    }
}

async fn open(
    engine: &StateTemplate,
    addr: &str,
    tmpl: &str,
    data: &Json,
) -> (statetemplate::Session, Ws) {
    let i = engine.new_session(tmpl, data).await.unwrap();
    let s = engine
        .get_session(&i.session_id.to_string(), &i.token)
        .await
        .unwrap();
    let url = format!(
        "ws://{addr}/statetemplate/ws?v=2&sid={}&token={}",
        i.session_id, i.token
    );
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = url.into_client_request().unwrap();
    req.headers_mut()
        .insert("origin", format!("http://{addr}").parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    next_text(&mut ws).await; // hello
    next_text(&mut ws).await; // join frame
    (s, ws)
}

fn main() {
    let rt = support::runtime(2);
    rt.block_on(async {
        let mut env = Environment::new();
        env.add_template("table.html", include_str!("../templates/table.html"))
            .unwrap();
        env.add_template("counter.html", "<p>Count: {{ count }}</p><button st-click=\"inc\">+</button>")
            .unwrap();
        let engine = StateTemplate::builder(env)
            .keys(KeyRing::generate().unwrap())
            .build()
            .unwrap();
        // The limit is raised: 2,000 back-to-back clicks would otherwise
        // measure the rate limiter (100 a second after a burst of 200).
        let live = Live::new(engine.clone()).rate_limit(1_000_000, 1_000_000).on_update("inc", |d: &mut Json, _: Json| {
            d["count"] = (d["count"].as_i64().unwrap_or(0) + 1).into();
            Ok(())
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let app: axum::Router = live.router();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

        println!("{SAMPLES} samples per case, 2 worker threads, loopback\n");
        println!("| case | frame bytes | p50 | p90 | p99 |");
        println!("|---|---:|---:|---:|---:|");

        // render() -> frame received: one field, then one row of 100 / 1,000 rows.
        let mut cases: Vec<(String, &str, Json, Json)> = vec![(
            "render → frame: counter, one field".into(),
            "counter.html",
            json!({"count": 0}),
            json!({"count": 1}),
        )];
        for n in [100, 1000] {
            let mut scalar = table(n, None);
            scalar["updated"] = json!("12:00:01");
            cases.push((format!("render → frame: {n}-row table, one field"), "table.html", table(n, None), scalar));
            cases.push((format!("render → frame: {n}-row table, one row"), "table.html", table(n, None), table(n, Some(n / 2))));
        }
        for (name, tmpl, a, b) in cases {
            let (s, mut ws) = open(&engine, &addr, tmpl, &a).await;
            let mut lat = Vec::with_capacity(SAMPLES);
            let mut bytes = 0;
            for k in 0..SAMPLES {
                let d = if k % 2 == 0 { &b } else { &a };
                let t = Instant::now();
                s.render(d).await.unwrap();
                bytes = next_text(&mut ws).await;
                lat.push(t.elapsed());
            }
            println!(
                "| {name} | {bytes} | {:.0} µs | {:.0} µs | {:.0} µs |",
                pct(&mut lat, 0.5),
                pct(&mut lat, 0.9),
                pct(&mut lat, 0.99)
            );
            s.close().await.unwrap();
        }

        // Client event -> updated frame (the click round trip).
        let (s, mut ws) = open(&engine, &addr, "counter.html", &json!({"count": 0})).await;
        let mut lat = Vec::with_capacity(SAMPLES);
        let mut bytes = 0;
        let ev = json!({"t": "ev", "n": "inc", "d": {}}).to_string();
        for _ in 0..SAMPLES {
            let t = Instant::now();
            ws.send(Message::Text(ev.clone().into())).await.unwrap();
            bytes = next_text(&mut ws).await;
            lat.push(t.elapsed());
        }
        println!(
            "| event → frame (click round trip): counter | {bytes} | {:.0} µs | {:.0} µs | {:.0} µs |",
            pct(&mut lat, 0.5),
            pct(&mut lat, 0.9),
            pct(&mut lat, 0.99)
        );
        s.close().await.unwrap();
    });
}
