#![allow(missing_docs)]
//! Click to last frame, side by side with `../shared/peers/dioxus-liveview`:
//! the same pages (a counter; a table of N rows with update, append and
//! remove buttons), served by statetemplate on axum (`serve_axum`) in this
//! process and driven, as a browser would, by a child process over real
//! WebSockets on loopback: it loads the page (`GET`), reads the session id
//! and token from the mounted root, connects, and clicks. Measured as the
//! peer's harness measures (its README, "Metrics"): bytes are the text
//! payloads of all server messages of one click (those that arrive before
//! the connection has been quiet for 30 ms), latency runs from just before
//! the click is written to the arrival of the last of them, p99 is the
//! nearest rank over n samples after 10 warm-up clicks, and each scenario
//! has its own session and connection (append and remove alternate on one,
//! n of each).
//!
//! The last column is the server's CPU time per click (all its threads,
//! from `/proc/<server>/task/*/schedstat`, read before the click and after
//! the quiet period), median: what the server itself spends, apart from the
//! waiting that latency includes. The first row is the floor: the same
//! client against a bare axum WebSocket that answers at once. The column
//! after it is the server threads' context switches per click, averaged
//! over the measured clicks (append and remove share theirs).
//!
//! Run: `cargo bench --bench e2e` (`-- UPDATES ROWS...`; default 200 and
//! 100 1000 10000; with `E2E_ONLY=counter`, the floor and the counter
//! only; with `E2E_ONLY=targeted`, the floor and the targeted tables
//! only). Bounded: UPDATES clicks per scenario, then both exit.

mod support;

#[path = "../tests/common/flood.rs"]
mod flood;

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use minijinja::Environment;
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use statetemplate::token::KeyRing;
use statetemplate::transport::{ServeOptions, serve_axum};
use statetemplate::{Live, StateTemplate};
use support::{COUNTER, Row, TABLE, make_row};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

const WARMUP: usize = 10;
const SETTLE: Duration = Duration::from_millis(30);

/// The peer's footer: seconds and microseconds, different on every render.
fn timestamp() -> String {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!("{}.{:06}", d.as_secs(), d.subsec_micros())
}

#[derive(Serialize, Deserialize)]
struct Counter {
    count: i64,
    status: String,
    ts: String,
}

impl Counter {
    fn set(&mut self, count: i64) {
        self.count = count;
        self.status = match count.signum() {
            1 => "positive",
            -1 => "negative",
            _ => "zero",
        }
        .into();
        self.ts = timestamp();
    }
}

#[derive(Serialize, Deserialize)]
struct Table {
    rows: Vec<Row>,
    next_id: u64,
    op: u64,
}

fn table(n: usize) -> Table {
    Table {
        rows: (1..=n as u64).map(make_row).collect(),
        next_id: n as u64 + 1,
        op: 0,
    }
}

fn app(engine: &StateTemplate) -> axum::Router {
    let live = Live::new(engine.clone())
        .rate_limit(1_000_000, 1_000_000)
        .on_update("inc", |c: &mut Counter, _: Json| {
            c.set(c.count + 1);
            Ok(())
        })
        .on_update("dec", |c: &mut Counter, _: Json| {
            c.set(c.count - 1);
            Ok(())
        })
        .on_update("update", |t: &mut Table, _: Json| {
            let k = t.op;
            t.op += 1;
            if !t.rows.is_empty() {
                let i = (k as usize).wrapping_mul(7919) % t.rows.len();
                t.rows[i].amount += 1;
            }
            Ok(())
        })
        // What an app that knows what changed does (`Session::edit`): the
        // clicked row's index and its new amount come with the click, as a
        // row's own button would send them.
        .on("edit", |ctx: statetemplate::EventCtx| async move {
            #[derive(Deserialize)]
            struct Click {
                i: usize,
                v: i64,
            }
            let c: Click = ctx.payload()?;
            ctx.session
                .edit(|e| {
                    e.set(&format!("rows.{}.amount", c.i), &c.v);
                })
                .await?;
            Ok(())
        })
        .on_update("append", |t: &mut Table, _: Json| {
            t.rows.push(make_row(t.next_id));
            t.next_id += 1;
            Ok(())
        })
        .on_update("remove", |t: &mut Table, _: Json| {
            if !t.rows.is_empty() {
                let i = t.rows.len() / 2;
                t.rows.remove(i);
            }
            Ok(())
        });
    let (l1, l2) = (live.clone(), live.clone());
    axum::Router::new()
        .route(
            "/counter",
            axum::routing::get(move || {
                let live = l1.clone();
                async move {
                    let mut c = Counter {
                        count: 0,
                        status: String::new(),
                        ts: String::new(),
                    };
                    c.set(0);
                    let i = live.engine().new_session("counter.html", &c).await.unwrap();
                    axum::response::Html(live.mount(&i))
                }
            }),
        )
        .route(
            "/table",
            axum::routing::get(
                move |axum::extract::Query(q): axum::extract::Query<
                    std::collections::HashMap<String, usize>,
                >| {
                    let live = l2.clone();
                    async move {
                        let n = q.get("rows").copied().unwrap_or(100).min(100_000);
                        let i = live
                            .engine()
                            .new_session("table.html", &table(n))
                            .await
                            .unwrap();
                        axum::response::Html(live.mount(&i))
                    }
                },
            ),
        )
        .route("/echo", axum::routing::get(echo))
        .merge(live.router())
}

/// A bare WebSocket: each message is answered with a counter frame and the
/// ref `1`, as two messages in one write (see [`floor`]).
async fn echo(ws: axum::extract::ws::WebSocketUpgrade) -> axum::response::Response {
    use axum::extract::ws::Message as M;
    // The socket settings `Live`'s own upgrade uses (a 4 KiB read buffer,
    // where tungstenite's default of 128 KiB is zeroed on every read).
    ws.read_buffer_size(4 << 10)
        .write_buffer_size(4 << 10)
        .on_upgrade(|mut s| async move {
            while let Some(Ok(m)) = s.next().await {
                if let M::Text(_) = m {
                    let frame = r#"[[2,"1"],[5,"positive","positive"]]"#;
                    // Queued, then written with the ref: one write, as `Live`
                    // writes a click's frame and reply.
                    if s.feed(M::Text(frame.into())).await.is_err()
                        || s.send(M::Text("1".into())).await.is_err()
                    {
                        break;
                    }
                }
            }
        })
}

/// `GET path`; the body.
async fn get(addr: &str, path: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    text.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default()
}

fn attr<'a>(html: &'a str, name: &str) -> &'a str {
    let start = html.find(&format!("{name}=\"")).unwrap() + name.len() + 2;
    &html[start..start + html[start..].find('"').unwrap()]
}

/// CPU time the server process (this client's parent) has used so far, in
/// nanoseconds: the sum of its threads' run time (`schedstat`).
fn server_cpu_ns() -> u64 {
    let dir = format!("/proc/{}/task", std::os::unix::process::parent_id());
    let Ok(tasks) = std::fs::read_dir(dir) else {
        return 0;
    };
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// The server's threads' context switches so far (voluntary and not).
fn server_switches() -> u64 {
    let pid = std::os::unix::process::parent_id();
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("status")).ok())
        .flat_map(|s| {
            s.lines()
                .filter(|l| l.contains("ctxt_switches:"))
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .collect::<Vec<_>>()
        })
        .sum()
}

struct Result {
    /// The server's context switches per measured click, on average.
    switches: f64,
    label: String,
    /// The server's CPU time per measured click (all its threads).
    cpu: Vec<Duration>,
    bytes: Vec<usize>,
    lat: Vec<Duration>,
    frames: Vec<usize>,
    page: usize,
}

/// One scenario: a fresh page and connection, then `n` clicks (after the
/// warm-up), cycling through `buttons`.
async fn scenario(addr: &str, label: &str, path: &str, buttons: &[&str], n: usize) -> Result {
    let page = get(addr, path).await;
    let (sid, token) = (attr(&page, "data-st-session"), attr(&page, "data-st-token"));
    let ws = flood::join(addr, sid, token).await;
    clicks(ws, label, page.len(), buttons, n, |_| "{}".to_owned()).await
}

/// A table scenario whose clicks carry the row and its new amount (the
/// `edit` handler, a targeted change through `Session::edit`).
async fn edit_scenario(addr: &str, rows: usize, n: usize) -> Result {
    let path = format!("/table?rows={rows}");
    let page = get(addr, &path).await;
    let (sid, token) = (attr(&page, "data-st-session"), attr(&page, "data-st-token"));
    let ws = flood::join(addr, sid, token).await;
    let label = format!("table N={rows}: change 1, targeted");
    // The same rows as the `update` handler picks; each new amount is new.
    let payload = move |k: usize| {
        format!(
            r#"{{"i":{},"v":{}}}"#,
            k.wrapping_mul(7919) % rows,
            2 * k + 1
        )
    };
    clicks(ws, &label, page.len(), &["edit"], n, payload).await
}

/// The floor: the same clicks against `/echo`, a bare axum WebSocket that
/// answers each message at once with a fixed frame and the event's ref
/// (the two messages a counter click gets), with no session, no template
/// and no statetemplate code on the way.
async fn floor(addr: &str, n: usize) -> Result {
    let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/echo"))
        .await
        .unwrap();
    clicks(
        ws,
        "floor: bare axum WebSocket echo",
        0,
        &["inc"],
        n,
        |_| "{}".to_owned(),
    )
    .await
}

async fn clicks(
    mut ws: flood::Ws,
    label: &str,
    page: usize,
    buttons: &[&str],
    n: usize,
    payload: impl Fn(usize) -> String,
) -> Result {
    let mut r = Result {
        label: label.to_owned(),
        switches: 0.0,
        cpu: Vec::new(),
        bytes: Vec::new(),
        lat: Vec::new(),
        frames: Vec::new(),
        page,
    };
    let mut switches = 0;
    for k in 0..WARMUP + n {
        if k == WARMUP {
            switches = server_switches();
        }
        let b = buttons[k % buttons.len()];
        // As the JS client sends it: with a ref, so the server answers it
        // (the answer, the ref alone, counts in the bytes).
        let click = format!(r#"{{"t":"ev","n":"{b}","d":{},"r":{}}}"#, payload(k), k + 1);
        let cpu = server_cpu_ns();
        let sent = Instant::now();
        ws.send(Message::Text(click.into())).await.unwrap();
        let (mut bytes, mut frames, mut last) = (0, 0, sent);
        // The first message may take long (a big page); then the update's
        // messages are those before 30 ms of quiet.
        let mut wait = Duration::from_secs(10);
        while let Ok(Some(m)) = tokio::time::timeout(wait, ws.next()).await {
            wait = SETTLE;
            if let Message::Text(t) = m.unwrap() {
                bytes += t.len();
                frames += 1;
                last = Instant::now();
            }
        }
        assert!(frames > 0, "{label}: click {k} got no frame");
        if k >= WARMUP {
            // Read after the quiet period: the server has long finished.
            r.cpu
                .push(Duration::from_nanos(server_cpu_ns().saturating_sub(cpu)));
            r.bytes.push(bytes);
            r.lat.push(last - sent);
            r.frames.push(frames);
        }
    }
    r.switches = server_switches().saturating_sub(switches) as f64 / n as f64;
    r
}

fn every_other<T: Copy>(v: &[T], start: usize) -> Vec<T> {
    v.iter().skip(start).step_by(2).copied().collect()
}

fn median<T: Ord + Copy>(v: &mut [T]) -> T {
    v.sort_unstable();
    v[v.len() / 2]
}

fn nearest_rank(v: &mut [Duration], p: f64) -> Duration {
    v.sort_unstable();
    v[((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1]
}

async fn client(addr: String, updates: usize, rows: Vec<usize>) {
    // `E2E_ONLY=counter`: the floor and the counter only; `E2E_ONLY=targeted`:
    // the floor and the targeted table scenarios only (for a profile).
    let only = std::env::var("E2E_ONLY").unwrap_or_default();
    let mut all = vec![floor(&addr, updates).await];
    if only != "targeted" {
        all.extend([
            scenario(
                &addr,
                "counter +1 (status const)",
                "/counter",
                &["inc"],
                updates,
            )
            .await,
            scenario(
                &addr,
                "counter +1/-1 (status flips)",
                "/counter",
                &["inc", "dec"],
                updates,
            )
            .await,
        ]);
    }
    let rows = if only == "counter" { Vec::new() } else { rows };
    for n in rows {
        if only == "targeted" {
            all.push(edit_scenario(&addr, n, updates).await);
            continue;
        }
        let path = format!("/table?rows={n}");
        all.push(
            scenario(
                &addr,
                &format!("table N={n}: change 1 amount"),
                &path,
                &["update"],
                updates,
            )
            .await,
        );
        all.push(edit_scenario(&addr, n, updates).await);
        // Append and remove alternate on one connection, so N stays N or N+1.
        let both = scenario(
            &addr,
            &format!("table N={n}: append/remove"),
            &path,
            &["append", "remove"],
            2 * updates,
        )
        .await;
        for (which, start) in [("append 1 row", 0), ("remove 1 row", 1)] {
            all.push(Result {
                label: format!("table N={n}: {which}"),
                switches: both.switches,
                cpu: every_other(&both.cpu, start),
                bytes: every_other(&both.bytes, start),
                lat: every_other(&both.lat, start),
                frames: every_other(&both.frames, start),
                page: both.page,
            });
        }
    }
    println!(
        "{:<32} {:>5} {:>15} {:>14} {:>11} {:>11} {:>11} {:>15} {:>14} {:>13}",
        "scenario",
        "n",
        "bytes/upd(med)",
        "bytes(min-max)",
        "lat med ms",
        "lat p99 ms",
        "frames/upd",
        "initial page B",
        "server CPU µs",
        "ctx switches"
    );
    for mut r in all {
        let (lo, hi) = (
            *r.bytes.iter().min().unwrap(),
            *r.bytes.iter().max().unwrap(),
        );
        println!(
            "{:<32} {:>5} {:>15} {:>14} {:>11.3} {:>11.3} {:>11} {:>15} {:>14.1} {:>13.1}",
            r.label,
            r.lat.len(),
            median(&mut r.bytes),
            format!("{lo}-{hi}"),
            median(&mut r.lat).as_secs_f64() * 1e3,
            nearest_rank(&mut r.lat, 0.99).as_secs_f64() * 1e3,
            median(&mut r.frames),
            r.page,
            median(&mut r.cpu).as_secs_f64() * 1e6,
            r.switches
        );
    }
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--bench"))
        .collect();
    if args.first().map(String::as_str) == Some("--client") {
        let rt = support::runtime(0);
        let updates = args[2].parse().unwrap();
        let rows = args[3..].iter().map(|a| a.parse().unwrap()).collect();
        rt.block_on(client(args[1].clone(), updates, rows));
        return;
    }
    let updates: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(200);
    let rows: Vec<String> = if args.len() > 1 {
        args[1..].to_vec()
    } else {
        vec!["100".into(), "1000".into(), "10000".into()]
    };
    let rt = support::runtime(2);
    rt.block_on(async move {
        let mut env = Environment::new();
        env.add_template("counter.html", COUNTER).unwrap();
        env.add_template("table.html", TABLE).unwrap();
        let engine = StateTemplate::builder(env)
            .keys(KeyRing::generate().unwrap())
            .build()
            .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(serve_axum(listener, app(&engine), ServeOptions::default()));
        println!(
            "statetemplate {} / axum 0.8 / loopback, 2 cores; client in a child process",
            env!("CARGO_PKG_VERSION")
        );
        let status = tokio::process::Command::new(std::env::current_exe().unwrap())
            .arg("--client")
            .arg(&addr)
            .arg(updates.to_string())
            .args(&rows)
            .status()
            .await
            .unwrap();
        assert!(status.success(), "the client failed");
    });
}
