#![allow(missing_docs)]
//! Does a flooding client hurt everyone else? Flooders in a child process
//! send click events (`inc`, 10,000 a second each by default) while a
//! bystander client's update latency (render → frame) is measured in this
//! process, against the same measurement without a flood, in the same run.
//!
//! The `inc` handler (`Live::on_update`) increments a counter in the
//! flooder's own session data, so every message the connection loop serves
//! costs a render and a frame back to the flooder. The handler counts its
//! invocations: that is the number of messages actually served (what was
//! written to the socket but not read is not counted). The flooders count
//! what they wrote and the frames they got back.
//!
//! Phases: no flood; one flooder, then F flooders, at the default limit
//! (100 messages a second, bursts of 200); the same on a second server with
//! the limit raised to 1,000,000 a second (effectively off); no flood again.
//! Run: `cargo bench --bench flood` (`-- SAMPLES F RATE`: bystander samples
//! per phase, default 2,000, one every millisecond; flooders, default 4;
//! messages a second per flooder, default 10,000; 0 sends unpaced).
//! Bounded: each phase ends after its samples, and its flooders with it.
//! Sent, served and replies are all counted over the bystander's window
//! (after a 500 ms warm-up, which takes the burst allowance).

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use minijinja::Environment;
use serde::{Deserialize, Serialize};
use serde_json::json;
use statetemplate::token::KeyRing;
use statetemplate::{Live, StateTemplate};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

#[derive(Serialize, Deserialize)]
struct Counter {
    n: i64,
}

fn ws_request(
    addr: &str,
    path: &str,
) -> tokio_tungstenite::tungstenite::handshake::client::Request {
    let mut req = format!("ws://{addr}{path}").into_client_request().unwrap();
    req.headers_mut()
        .insert("origin", format!("http://{addr}").parse().unwrap());
    req
}

async fn new_session(engine: &StateTemplate) -> (statetemplate::Session, String) {
    let i = engine
        .new_session("c.html", &json!({"n": 0}))
        .await
        .unwrap();
    let s = engine
        .get_session(&i.session_id.to_string(), &i.token)
        .await
        .unwrap();
    let path = format!(
        "/statetemplate/ws?v=2&sid={}&token={}",
        i.session_id, i.token
    );
    (s, path)
}

async fn text(ws: &mut Ws) {
    loop {
        if let Message::Text(_) = ws.next().await.unwrap().unwrap() {
            return;
        }
    }
}

/// The bystander: `samples` renders, one a millisecond, each timed until
/// its frame arrives. Returns (p50, p99) in µs.
async fn measure(
    s: &statetemplate::Session,
    ws: &mut Ws,
    next: &mut i64,
    samples: usize,
) -> (f64, f64) {
    let mut lat = Vec::with_capacity(samples);
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for _ in 0..samples {
        tick.tick().await;
        *next += 1;
        let t = Instant::now();
        s.render(&json!({ "n": *next })).await.unwrap();
        text(ws).await;
        lat.push(t.elapsed());
    }
    lat.sort_unstable();
    let us = |p: f64| lat[((lat.len() - 1) as f64 * p) as usize].as_secs_f64() * 1e6;
    (us(0.5), us(0.99))
}

struct Server {
    addr: String,
    bystander: (statetemplate::Session, Ws),
}

async fn server(engine: &StateTemplate, live: Live) -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let app: axum::Router = live.router();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let (s, path) = new_session(engine).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(ws_request(&addr, &path))
        .await
        .unwrap();
    text(&mut ws).await;
    text(&mut ws).await;
    Server {
        addr,
        bystander: (s, ws),
    }
}

struct Row {
    phase: String,
    p50: f64,
    p99: f64,
    /// Per flooder: sent (written to the socket) a second, served a second,
    /// replies received a second.
    flood: Option<(f64, f64, f64)>,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--flooder") {
        return flooder(&args[2], args[3].parse().unwrap(), &args[4..]);
    }
    let nums: Vec<usize> = args.iter().skip(1).filter_map(|a| a.parse().ok()).collect();
    let samples = nums.first().copied().unwrap_or(2000);
    let flooders = nums.get(1).copied().unwrap_or(4);
    let rate = nums.get(2).copied().unwrap_or(10_000);
    let rt = support::runtime(2);
    rt.block_on(async move {
        let mut env = Environment::new();
        env.add_template("c.html", "<p>{{ n }}</p>").unwrap();
        let engine = StateTemplate::builder(env)
            .keys(KeyRing::generate().unwrap())
            .build()
            .unwrap();
        let served = Arc::new(AtomicU64::new(0));
        let count = served.clone();
        let live = Live::new(engine.clone()).on_update("inc", move |c: &mut Counter, _: serde_json::Value| {
            count.fetch_add(1, Ordering::Relaxed);
            c.n += 1;
            Ok(())
        });
        let mut default = server(&engine, live.clone()).await;
        let mut raised = server(&engine, live.rate_limit(1_000_000, 1_000_000)).await;

        let mut next = 0i64;
        let mut rows = Vec::new();
        // Warm up both bystanders (not reported).
        for srv in [&mut default, &mut raised] {
            measure(&srv.bystander.0, &mut srv.bystander.1, &mut next, 200).await;
        }
        let quiet = measure(&default.bystander.0, &mut default.bystander.1, &mut next, samples).await;
        rows.push(Row { phase: "no flood".into(), p50: quiet.0, p99: quiet.1, flood: None });
        for (srv, limit) in [(&mut default, "default limit (100/s, burst 200)"), (&mut raised, "limit raised to 1,000,000/s")] {
            for k in [1, flooders] {
                let mut paths = Vec::new();
                let mut flood_sessions = Vec::new();
                for _ in 0..k {
                    let (s, p) = new_session(&engine).await;
                    flood_sessions.push(s);
                    paths.push(p);
                }
                let mut child = tokio::process::Command::new(std::env::current_exe().unwrap())
                    .arg("--flooder")
                    .arg(&srv.addr)
                    .arg(rate.to_string())
                    .args(&paths)
                    .stdin(std::process::Stdio::piped())
                    .stdout(std::process::Stdio::piped())
                    .kill_on_drop(true)
                    .spawn()
                    .unwrap();
                let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
                let ready = tokio::time::timeout(Duration::from_secs(30), lines.next_line()).await;
                assert!(matches!(&ready, Ok(Ok(Some(l))) if l == "flooding"), "flooder: {ready:?}");
                // Let the burst allowance drain and the flood settle.
                tokio::time::sleep(Duration::from_millis(500)).await;
                let mut stdin = child.stdin.take().unwrap();
                stdin.write_all(b"mark\n").await.unwrap();
                stdin.flush().await.unwrap();
                let s0 = served.load(Ordering::Relaxed);
                let t = Instant::now();
                let (p50, p99) = measure(&srv.bystander.0, &mut srv.bystander.1, &mut next, samples).await;
                let window = t.elapsed().as_secs_f64();
                let served_n = served.load(Ordering::Relaxed) - s0;
                // Stop the flood: the child reports and exits when its stdin
                // closes; its sessions are closed so that nothing it queued
                // is served later.
                stdin.shutdown().await.unwrap();
                drop(stdin);
                let report = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
                    .await
                    .ok()
                    .and_then(|l| l.ok().flatten())
                    .unwrap_or_default();
                let _ = child.wait().await;
                for s in flood_sessions {
                    s.close().await.unwrap();
                }
                // "sent SENT replies REPLIES secs SECS"
                let f: Vec<f64> = report.split_whitespace().filter_map(|w| w.parse().ok()).collect();
                let (sent, replies, secs) = match f[..] {
                    [a, b, c] => (a, b, c),
                    _ => panic!("flooder report: {report:?}"),
                };
                let kf = k as f64;
                rows.push(Row {
                    phase: format!("{k} flooder{}, {limit}", if k == 1 { "" } else { "s" }),
                    p50,
                    p99,
                    flood: Some((sent / secs / kf, served_n as f64 / window / kf, replies / secs / kf)),
                });
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
        let quiet = measure(&default.bystander.0, &mut default.bystander.1, &mut next, samples).await;
        rows.push(Row { phase: "no flood, again".into(), p50: quiet.0, p99: quiet.1, flood: None });

        let offered = if rate == 0 {
            "unpaced messages".to_owned()
        } else {
            format!("{rate} messages/s")
        };
        println!(
            "{samples} bystander renders per phase, one a millisecond; flooders offer {offered} each\n"
        );
        println!("| phase | bystander p50 | bystander p99 | per flooder: sent/s | served/s | replies/s |");
        println!("|---|---:|---:|---:|---:|---:|");
        for r in rows {
            let flood = match r.flood {
                Some((a, b, c)) => format!("{a:.0} | {b:.0} | {c:.0}"),
                None => "– | – | –".to_owned(),
            };
            println!("| {} | {:.0} µs | {:.0} µs | {flood} |", r.phase, r.p50, r.p99);
        }
        println!("\nsent: written to the socket; served: `inc` handler invocations; replies: frames back to the flooders (all over the bystander's window)");
    });
}

/// The child: one connection per path, each sending `rate` `inc` events a
/// second (in batches every millisecond; 0: unpaced) and counting the
/// frames it gets back. Prints `flooding` once all have joined; counts from
/// a `mark` line on stdin until stdin closes, then prints
/// `sent S replies R secs T` and exits.
fn flooder(addr: &str, rate: usize, paths: &[String]) {
    let rt = support::runtime(0);
    rt.block_on(async move {
        let sent = Arc::new(AtomicU64::new(0));
        let replies = Arc::new(AtomicU64::new(0));
        let mut conns = Vec::new();
        for p in paths {
            let (mut ws, _) = tokio_tungstenite::connect_async(ws_request(addr, p))
                .await
                .unwrap();
            text(&mut ws).await;
            text(&mut ws).await;
            conns.push(ws);
        }
        println!("flooding");
        let per_tick = rate.div_ceil(1000);
        let mut tasks = Vec::new();
        for ws in conns {
            let (mut tx, mut rx) = ws.split();
            let sent = sent.clone();
            tasks.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(1));
                loop {
                    // Rate 0: no pacing, as fast as the socket takes them.
                    if per_tick > 0 {
                        tick.tick().await;
                    }
                    for _ in 0..per_tick.max(1) {
                        let m = Message::Text(r#"{"t":"ev","n":"inc","d":null}"#.into());
                        if tx.send(m).await.is_err() {
                            return;
                        }
                        sent.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
            let replies = replies.clone();
            tasks.push(tokio::spawn(async move {
                while let Some(Ok(m)) = rx.next().await {
                    if matches!(m, Message::Text(_)) {
                        replies.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
        // The window: from the `mark` line to the end of stdin.
        let mut stdin = BufReader::new(tokio::io::stdin());
        let mut line = String::new();
        let _ = stdin.read_line(&mut line).await;
        let (s0, r0, t0) = (
            sent.load(Ordering::Relaxed),
            replies.load(Ordering::Relaxed),
            Instant::now(),
        );
        line.clear();
        let _ = stdin.read_line(&mut line).await;
        let secs = t0.elapsed().as_secs_f64();
        let (s1, r1) = (
            sent.load(Ordering::Relaxed),
            replies.load(Ordering::Relaxed),
        );
        for t in &tasks {
            t.abort();
        }
        println!("sent {} replies {} secs {secs:.3}", s1 - s0, r1 - r0);
    });
}
