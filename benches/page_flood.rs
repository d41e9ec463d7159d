#![allow(missing_docs)]
//! A flood of anonymous page loads: a child process sends N `GET /`
//! without cookies (each creates a session) over 8 keep-alive connections
//! to an axum server (`serve_axum`) in this process, while 20 users hold
//! open WebSockets. Reports sessions created per second, the server's RSS
//! (before, peak, after) and its CPU use during the flood (this process
//! only: the flooder is the child), with the default caps (100,000
//! sessions, 10,000 unjoined). Bounded: N requests, then both exit.
//!
//! A second phase measures slowloris: 1,000 connections that trickle their
//! request headers (a byte a second) against `serve_axum` (10 s header
//! read timeout) and, side by side, `axum::serve`; how many each server
//! still holds after 12 s.
//!
//! Run: `cargo bench --bench page_flood` (`-- N` for N page loads; default
//! 200,000).

mod support;

#[path = "../tests/common/flood.rs"]
mod flood;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use minijinja::Environment;
use serde_json::json;
use statetemplate::StateTemplate;
use statetemplate::token::KeyRing;
use statetemplate::transport::{ServeOptions, serve_axum};

const PAGE: &str = r#"<h1>{{ title }}</h1>
<ul>{% for t in todos %}<li class="{{ 'done' if t.done }}">{{ t.text }}</li>{% endfor %}</ul>
<p>{{ clock }}</p>"#;

/// User plus system CPU time of this process.
fn cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<u64> = after
        .split_whitespace()
        .skip(11)
        .take(2)
        .map(|x| x.parse().unwrap())
        .collect();
    // Clock ticks are 100 a second on Linux.
    Duration::from_millis((f[0] + f[1]) * 10)
}

fn data() -> serde_json::Value {
    json!({
        "title": "Todos", "clock": "12:00:00.0",
        "todos": [{"id": 1, "text": "milk", "done": false}, {"id": 2, "text": "eggs", "done": true}],
    })
}

/// Opens `n` connections to `addr` that send a header byte a second; after
/// `after`, how many the server still holds open.
async fn trickle(addr: String, n: usize, after: Duration) -> usize {
    let held = Arc::new(AtomicUsize::new(n));
    let mut tasks = Vec::new();
    for _ in 0..n {
        let (addr, held) = (addr.clone(), held.clone());
        tasks.push(tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
            let start = Instant::now();
            let head = b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ";
            let mut i = 0;
            while start.elapsed() < after {
                let b = head.get(i).copied().unwrap_or(b'a');
                i += 1;
                if s.write_all(&[b]).await.is_err() {
                    held.fetch_sub(1, Ordering::Relaxed);
                    return;
                }
                let mut buf = [0u8; 64];
                match tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => {
                        held.fetch_sub(1, Ordering::Relaxed);
                        return;
                    }
                    _ => {}
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    held.load(Ordering::Relaxed)
}

async fn slowloris() {
    let app = || axum::Router::new().route("/", axum::routing::get(|| async { "hi" }));
    let ours = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let plain = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (a, b) = (
        ours.local_addr().unwrap().to_string(),
        plain.local_addr().unwrap().to_string(),
    );
    tokio::spawn(serve_axum(ours, app(), ServeOptions::default()));
    tokio::spawn(async move { axum::serve(plain, app()).await });
    let after = Duration::from_secs(12);
    let (held_ours, held_plain) = tokio::join!(trickle(a, 1000, after), trickle(b, 1000, after));
    println!(
        "slowloris, 1,000 connections trickling a header byte a second, still held after 12 s: \
         serve_axum {held_ours}, axum::serve {held_plain}"
    );
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--bench"))
        .collect();
    if args.first().map(String::as_str) == Some("--flood-client") {
        let rt = support::runtime(1);
        let n: usize = args[2].parse().unwrap();
        let t = rt.block_on(flood::page_loads(&args[1], n, 8));
        println!("tally {} {} {}", t.ok, t.refused, t.other);
        return;
    }
    let n: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(200_000);
    let rt = support::runtime(2);
    rt.block_on(run(n));
    rt.block_on(slowloris());
}

async fn run(n: usize) {
    let mut env = Environment::new();
    env.add_template("todos.html", PAGE).unwrap();
    let evicted = Arc::new(AtomicUsize::new(0));
    let ev = evicted.clone();
    let engine = StateTemplate::builder(env)
        .keys(KeyRing::generate().unwrap())
        .on_evict(move |_, _| {
            ev.fetch_add(1, Ordering::Relaxed);
        })
        .build()
        .unwrap();
    let addr = flood::page_server(&engine, "todos.html", data()).await;
    let users = flood::users(&engine, &addr, "todos.html", 20, |_| data()).await;

    let rss0 = support::rss();
    let (cpu0, t0) = (cpu(), Instant::now());
    let done = Arc::new(AtomicBool::new(false));
    let d = done.clone();
    let sampler = tokio::spawn(async move {
        let mut peak = 0;
        while !d.load(Ordering::Relaxed) {
            peak = peak.max(support::rss());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        peak
    });
    let out = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args(["--flood-client", &addr, &n.to_string()])
        .output()
        .await
        .unwrap();
    let wall = t0.elapsed();
    let cpu_used = cpu() - cpu0;
    done.store(true, Ordering::Relaxed);
    let peak = sampler.await.unwrap().max(support::rss());
    let tally = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let intact = users.iter().filter(|(s, _)| !s.is_closed()).count();
    println!("page loads: {n} ({tally}: ok, refused, other)");
    println!(
        "created: {:.0} sessions/s over {:.2} s",
        n as f64 / wall.as_secs_f64(),
        wall.as_secs_f64()
    );
    println!(
        "server CPU: {:.2} s ({:.0}% of one core)",
        cpu_used.as_secs_f64(),
        100.0 * cpu_used.as_secs_f64() / wall.as_secs_f64()
    );
    println!(
        "RSS: {:.1} MiB before, {:.1} MiB peak, {:.1} MiB after",
        rss0 as f64 / 1048576.0,
        peak as f64 / 1048576.0,
        support::rss() as f64 / 1048576.0
    );
    println!(
        "live {} (unjoined {}), evicted {}, users intact {intact}/20",
        engine.live_sessions(),
        engine.unjoined_sessions(),
        evicted.load(Ordering::Relaxed)
    );
}
