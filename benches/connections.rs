#![allow(missing_docs)]
//! Live WebSocket connections: opens N (default 15,000) joined connections
//! to an axum server in this process from a child process, and reports the
//! server's resident memory per connection (beyond the sessions, which are
//! created first and measured separately), idle and in the steady state.
//! Run: `cargo bench --bench connections` (`-- N R` for N connections and R
//! render rounds; defaults 15,000 and 64; `-- N R K` also sets the replay
//! buffer to K frames, `Builder::replay_frames`, instead of the default 64).
//! Bounded: N connections, R rounds, then both processes exit.
//!
//! Phases: the connections join (RSS: idle, no frame sent yet); then R
//! rounds each render every session once (one changed value, as a counter
//! does), and each round is timed until the child reports that its clients
//! have received every frame of the round (the child counts the frames it
//! receives and prints a line each time the count reaches a multiple of N).
//! With R >= 64 every session's replay buffer (64 frames by default) is
//! full when the RSS is read again.

mod support;

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use minijinja::Environment;
use serde_json::json;
use statetemplate::token::KeyRing;
use statetemplate::{Live, StateTemplate};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

type Lines = tokio::io::Lines<BufReader<tokio::process::ChildStdout>>;

/// The child's next line starting with `prefix` (its rest), within `limit`.
async fn expect(lines: &mut Lines, prefix: &str, limit: Duration) -> Option<String> {
    tokio::time::timeout(limit, async {
        while let Ok(Some(l)) = lines.next_line().await {
            if let Some(rest) = l.strip_prefix(prefix) {
                return Some(rest.trim().to_owned());
            }
        }
        None
    })
    .await
    .ok()
    .flatten()
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort_unstable();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--client") {
        return client(&args[2], &args[3]);
    }
    let nums: Vec<usize> = args.iter().skip(1).filter_map(|a| a.parse().ok()).collect();
    let n = nums.first().copied().unwrap_or(15_000);
    let rounds = nums.get(1).copied().unwrap_or(64);
    let replay = nums.get(2).copied();
    let rt = support::runtime(2);
    rt.block_on(async move {
        let mut env = Environment::new();
        env.add_template("c.html", "<p>{{ name }}: {{ n }}</p>")
            .unwrap();
        let mut builder = StateTemplate::builder(env)
            .keys(KeyRing::generate().unwrap())
            .max_sessions(n + 1)
            // Every session here is created before a client joins it.
            .max_unjoined(n + 1);
        if let Some(k) = replay {
            builder = builder.replay_frames(k);
        }
        let engine = builder.build().unwrap();
        let live = Live::new(engine.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let app: axum::Router = live.router();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        tokio::time::sleep(Duration::from_millis(200)).await;

        let rss0 = support::rss();
        let path = std::env::temp_dir().join(format!("st-conns-{}.txt", std::process::id()));
        let mut f = std::fs::File::create(&path).unwrap();
        // The handles (16 B each) are kept to render to each session with
        // its own data; they are counted in the sessions' figure.
        let mut sessions = Vec::with_capacity(n);
        for k in 0..n {
            let i = engine
                .new_session("c.html", &json!({"name": format!("user {k}"), "n": 0}))
                .await
                .unwrap();
            writeln!(
                f,
                "/statetemplate/ws?v=2&sid={}&token={}",
                i.session_id, i.token
            )
            .unwrap();
            let s = engine
                .get_session(&i.session_id.to_string(), &i.token)
                .await
                .unwrap();
            sessions.push(s);
        }
        drop(f);
        let rss1 = support::rss();

        let t = Instant::now();
        let mut child = tokio::process::Command::new(std::env::current_exe().unwrap())
            .args(["--client", &addr, path.to_str().unwrap()])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let joined: usize = expect(&mut lines, "joined", Duration::from_secs(180))
            .await
            .and_then(|s| s.split_whitespace().next()?.parse().ok())
            .unwrap_or(0);
        let connect = t.elapsed();
        let open = live.open_connections();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let rss2 = support::rss();

        // R rounds: every session renders once (the count changes); a round
        // ends when the child has received all N frames.
        let mut queued = Vec::with_capacity(rounds);
        let mut delivered = Vec::with_capacity(rounds);
        let mut complete = 0;
        for r in 1..=rounds {
            let t = Instant::now();
            for (k, s) in sessions.iter().enumerate() {
                s.render(&json!({"name": format!("user {k}"), "n": r}))
                    .await
                    .unwrap();
            }
            queued.push(t.elapsed());
            let want = (r * joined).to_string();
            let mut got = false;
            while let Some(c) = expect(&mut lines, "frames", Duration::from_secs(60)).await {
                if c == want {
                    got = true;
                    break;
                }
            }
            if !got {
                eprintln!("round {r}: the clients did not receive every frame within 60 s");
                break;
            }
            delivered.push(t.elapsed());
            complete = r;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let rss3 = support::rss();

        drop(child.stdin.take()); // the child reports and exits when its stdin closes
        let report = expect(&mut lines, "received", Duration::from_secs(30))
            .await
            .unwrap_or_default();
        let _ = child.wait().await;
        let _ = std::fs::remove_file(&path);

        let per_conn = |a: usize, b: usize| b.saturating_sub(a) as f64 / open.max(1) as f64;
        if let Some(k) = replay {
            println!("replay buffer: {k} frames (not the default)");
        }
        println!(
            "connections open at once: {open} of {n}, {joined} joined (connected in {:.1} s)",
            connect.as_secs_f64()
        );
        println!(
            "sessions: {:.0} B each",
            rss1.saturating_sub(rss0) as f64 / n as f64
        );
        println!(
            "server memory per live connection, joined, before any frame: {:.0} B ({:.1} KiB)",
            per_conn(rss1, rss2),
            per_conn(rss1, rss2) / 1024.0
        );
        println!(
            "server memory per live connection after {complete} renders: {:.0} B ({:.1} KiB); \
             the renders added {:.0} B per connection",
            per_conn(rss1, rss3),
            per_conn(rss1, rss3) / 1024.0,
            per_conn(rss2, rss3)
        );
        println!("child: received {report}");
        if complete > 0 {
            println!(
                "one render to each of the {n} sessions, until the last client has its frame: \
                 first round {:.0} ms; median of {complete} rounds {:.0} ms (renders queued in {:.0} ms)",
                ms(delivered[0]),
                ms(median(&mut delivered)),
                ms(median(&mut queued)),
            );
        }
    });
}

/// The child: opens one connection per line of `file`, joins, prints
/// `joined K` once every connection has joined (or failed), counts the
/// frames received after the join (printing `frames C` whenever C is a
/// multiple of the number joined), and when stdin closes prints
/// `received …` and exits.
fn client(addr: &str, file: &str) {
    let rt = support::runtime(2);
    let lines: Vec<String> = std::fs::read_to_string(file)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    let n = lines.len();
    rt.block_on(async move {
        let sem = Arc::new(tokio::sync::Semaphore::new(256));
        let joined = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let settled = Arc::new(AtomicU64::new(0));
        let frames = Arc::new(AtomicU64::new(0));
        let resyncs = Arc::new(AtomicU64::new(0));
        let all_settled = Arc::new(tokio::sync::Notify::new());
        let mut held = Vec::new();
        let mut counts = Vec::new();
        for path in lines {
            let permit = sem.clone().acquire_owned().await.unwrap();
            let addr = addr.to_owned();
            let (joined, failed, settled, frames, resyncs, all_settled) = (
                joined.clone(),
                failed.clone(),
                settled.clone(),
                frames.clone(),
                resyncs.clone(),
                all_settled.clone(),
            );
            let mine = Arc::new(AtomicU64::new(0));
            counts.push(mine.clone());
            held.push(tokio::spawn(async move {
                // Counts a connection as joined or failed.
                let settle = |c: &AtomicU64| {
                    c.fetch_add(1, Ordering::SeqCst);
                    if settled.fetch_add(1, Ordering::SeqCst) + 1 == n as u64 {
                        all_settled.notify_one();
                    }
                };
                let mut req = format!("ws://{addr}{path}").into_client_request().unwrap();
                req.headers_mut()
                    .insert("origin", format!("http://{addr}").parse().unwrap());
                let Ok((mut ws, _)) = tokio_tungstenite::connect_async(req).await else {
                    settle(&failed);
                    return;
                };
                let mut texts = 0;
                while texts < 2 {
                    match ws.next().await {
                        Some(Ok(Message::Text(_))) => texts += 1,
                        Some(Ok(_)) => {}
                        _ => {
                            settle(&failed);
                            return;
                        }
                    }
                }
                settle(&joined);
                drop(permit);
                // Count frames until the process ends (answering pings). The
                // server renders only once every connection has settled, so
                // `joined` is final when frames arrive.
                while let Some(m) = ws.next().await {
                    if let Ok(Message::Text(t)) = m {
                        if t.starts_with("{\"t\":\"hello\"") {
                            resyncs.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                        mine.fetch_add(1, Ordering::Relaxed);
                        let c = frames.fetch_add(1, Ordering::SeqCst) + 1;
                        let k = joined.load(Ordering::SeqCst);
                        if k > 0 && c % k == 0 {
                            println!("frames {c}");
                        }
                    }
                }
            }));
        }
        if n > 0 {
            all_settled.notified().await;
        }
        println!(
            "joined {} failed {}",
            joined.load(Ordering::SeqCst),
            failed.load(Ordering::SeqCst)
        );
        let mut line = String::new();
        let _ = tokio::io::AsyncBufReadExt::read_line(
            &mut tokio::io::BufReader::new(tokio::io::stdin()),
            &mut line,
        )
        .await;
        let per: Vec<u64> = counts.iter().map(|c| c.load(Ordering::Relaxed)).collect();
        println!(
            "received {} frames after the joins ({} to {} per connection), {} resyncs",
            frames.load(Ordering::SeqCst),
            per.iter().min().unwrap_or(&0),
            per.iter().max().unwrap_or(&0),
            resyncs.load(Ordering::Relaxed)
        );
        drop(held);
    });
}
