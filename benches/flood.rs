#![allow(missing_docs)]
//! Does a flooding client hurt everyone else? One client sends 10,000
//! messages a second for the whole run while another client's update
//! latency (render → frame) is measured, against the same measurement
//! without the flood, in the same run.
//! Run: `cargo bench --bench flood` (bounded: 2,000 samples per phase).

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use minijinja::Environment;
use serde_json::json;
use statetemplate::token::KeyRing;
use statetemplate::{Live, StateTemplate};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const SAMPLES: usize = 2000;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(engine: &StateTemplate, addr: &str) -> (statetemplate::Session, Ws) {
    let i = engine
        .new_session("c.html", &json!({"n": 0}))
        .await
        .unwrap();
    let s = engine
        .get_session(&i.session_id.to_string(), &i.token)
        .await
        .unwrap();
    let mut req = format!(
        "ws://{addr}/statetemplate/ws?v=1&sid={}&token={}",
        i.session_id, i.token
    )
    .into_client_request()
    .unwrap();
    req.headers_mut()
        .insert("origin", format!("http://{addr}").parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    text(&mut ws).await;
    text(&mut ws).await;
    (s, ws)
}

async fn text(ws: &mut Ws) {
    loop {
        if let Message::Text(_) = ws.next().await.unwrap().unwrap() {
            return;
        }
    }
}

async fn measure(s: &statetemplate::Session, ws: &mut Ws, from: i64) -> (f64, f64) {
    let mut lat = Vec::with_capacity(SAMPLES);
    for k in 0..SAMPLES as i64 {
        let t = Instant::now();
        s.render(&json!({"n": from + k + 1})).await.unwrap();
        text(ws).await;
        lat.push(t.elapsed());
    }
    lat.sort_unstable();
    let us = |p: f64| lat[((lat.len() - 1) as f64 * p) as usize].as_secs_f64() * 1e6;
    (us(0.5), us(0.99))
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut env = Environment::new();
        env.add_template("c.html", "<p>{{ n }}</p>").unwrap();
        let engine = StateTemplate::builder(env)
            .keys(KeyRing::generate().unwrap())
            .build()
            .unwrap();
        let live = Live::new(engine.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let app: axum::Router = live.router();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

        let (s, mut ws) = connect(&engine, &addr).await;
        let quiet = measure(&s, &mut ws, 0).await;

        let (_fs, flooder) = connect(&engine, &addr).await;
        let (mut tx, mut rx) = flooder.split();
        let sent = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let count = sent.clone();
        let flood = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(1));
            loop {
                tick.tick().await;
                for _ in 0..10 {
                    if tx
                        .send(Message::Text(r#"{"t":"ping"}"#.into()))
                        .await
                        .is_err()
                    {
                        return;
                    }
                    count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        });
        let served = tokio::spawn(async move {
            let mut n = 0u64;
            while let Some(Ok(m)) = rx.next().await {
                if matches!(m, Message::Text(_)) {
                    n += 1;
                }
            }
            n
        });
        tokio::time::sleep(Duration::from_millis(500)).await;
        let t = Instant::now();
        let loud = measure(&s, &mut ws, SAMPLES as i64).await;
        let secs = t.elapsed().as_secs_f64();
        flood.abort();
        let total = sent.load(std::sync::atomic::Ordering::Relaxed);
        served.abort();

        println!("{SAMPLES} renders per phase, measured on a second client\n");
        println!("| phase | p50 | p99 |");
        println!("|---|---:|---:|");
        println!("| no flood | {:.0} µs | {:.0} µs |", quiet.0, quiet.1);
        println!(
            "| one client flooding ({:.0} messages/s sent) | {:.0} µs | {:.0} µs |",
            total as f64 / (secs + 0.5),
            loud.0,
            loud.1
        );
        println!("\nthe flooder is served at most 100 messages/s (burst 200) by default");
    });
}
