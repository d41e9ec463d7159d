#![allow(missing_docs)]
//! Live WebSocket connections: opens N (default 15,000) joined connections
//! to an axum server in this process from a child process, and reports the
//! server's resident memory per connection (beyond the sessions, which are
//! created first and measured separately).
//! Run: `cargo bench --bench connections` (`-- N` for another count).
//! Bounded: N connections, then both processes exit.

use std::io::Write;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use minijinja::Environment;
use serde_json::json;
use statetemplate::token::KeyRing;
use statetemplate::{Live, StateTemplate};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

fn rss() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    statm
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<usize>()
        .unwrap()
        * 4096
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--client") {
        return client(&args[2], &args[3]);
    }
    let n: usize = args
        .iter()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(15_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let mut env = Environment::new();
        env.add_template("c.html", "<p>{{ name }}: {{ n }}</p>")
            .unwrap();
        let engine = StateTemplate::builder(env)
            .keys(KeyRing::generate().unwrap())
            .max_sessions(n + 1)
            .build()
            .unwrap();
        let live = Live::new(engine.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let app: axum::Router = live.router();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        tokio::time::sleep(Duration::from_millis(200)).await;

        let rss0 = rss();
        let path = std::env::temp_dir().join(format!("st-conns-{}.txt", std::process::id()));
        let mut f = std::fs::File::create(&path).unwrap();
        let mut sessions = Vec::with_capacity(n);
        for k in 0..n {
            let i = engine
                .new_session("c.html", &json!({"name": format!("user {k}"), "n": 0}))
                .await
                .unwrap();
            writeln!(
                f,
                "/statetemplate/ws?v=1&sid={}&token={}",
                i.session_id, i.token
            )
            .unwrap();
            sessions.push(i.session_id);
        }
        drop(f);
        let rss1 = rss();

        let t = Instant::now();
        let mut child = tokio::process::Command::new(std::env::current_exe().unwrap())
            .args(["--client", &addr, path.to_str().unwrap()])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        while live.open_connections() < n && t.elapsed() < Duration::from_secs(120) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let open = live.open_connections();
        tokio::time::sleep(Duration::from_secs(2)).await; // let joins finish
        let rss2 = rss();
        // One update to every session: all connections are live.
        let t2 = Instant::now();
        for s in engine.sessions() {
            s.render(&json!({"name": "x", "n": 1})).await.unwrap();
        }
        let render_all = t2.elapsed();
        drop(child.stdin.take()); // the child exits when its stdin closes
        let _ = child.wait().await;
        let _ = std::fs::remove_file(&path);
        println!(
            "connections open at once: {open} of {n} (connected in {:.1} s)",
            t.elapsed().as_secs_f64() - 2.0
        );
        println!("sessions: {:.0} B each", (rss1 - rss0) as f64 / n as f64);
        println!(
            "server memory per live connection (joined, idle): {:.0} B ({:.1} KiB)",
            (rss2.saturating_sub(rss1)) as f64 / open.max(1) as f64,
            (rss2.saturating_sub(rss1)) as f64 / open.max(1) as f64 / 1024.0
        );
        println!(
            "one render to each of the {n} sessions: {:.0} ms",
            render_all.as_secs_f64() * 1e3
        );
    });
}

/// The child: opens one connection per line of `file`, joins, holds them
/// until stdin closes.
fn client(addr: &str, file: &str) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let lines: Vec<String> = std::fs::read_to_string(file)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    rt.block_on(async move {
        let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(256));
        let mut held = Vec::new();
        for path in lines {
            let permit = sem.clone().acquire_owned().await.unwrap();
            let addr = addr.to_owned();
            held.push(tokio::spawn(async move {
                let mut req = format!("ws://{addr}{path}").into_client_request().unwrap();
                req.headers_mut()
                    .insert("origin", format!("http://{addr}").parse().unwrap());
                let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
                let mut texts = 0;
                while texts < 2 {
                    if let Some(Ok(Message::Text(_))) = ws.next().await {
                        texts += 1;
                    }
                }
                drop(permit);
                // Keep reading (answering pings) until the process ends.
                while ws.next().await.is_some() {}
            }));
        }
        let mut line = String::new();
        let _ = tokio::io::AsyncBufReadExt::read_line(
            &mut tokio::io::BufReader::new(tokio::io::stdin()),
            &mut line,
        )
        .await;
        drop(held);
    });
}
