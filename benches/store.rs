#![allow(missing_docs)]
//! The SQLite store: renders per second and latency per durability mode
//! (against the memory store in the same run), bytes written per one-row
//! change, restart-to-resumed time, and (with `-- million`) one million
//! persisted sessions with 100,000 live.
//!
//! Run: `cargo bench --bench store` (add `-- million` for the last part);
//! results in docs/benchmarks.md. The database files go to a temp dir,
//! removed at the end. Medians of per-render times; the machine is noisy,
//! so compare modes only within one run.

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use minijinja::Environment;
use serde_json::json;
use statetemplate::StateTemplate;
use statetemplate::session::Catchup;
use statetemplate::store::{Durability, MemoryStore, SessionStore, SqliteOptions, SqliteStore};
use statetemplate::token::KeyRing;
use support::{Row, TABLE, make_row};

#[derive(serde::Serialize)]
struct Table {
    rows: Vec<Row>,
}

fn env() -> Environment<'static> {
    let mut env = Environment::new();
    env.add_template("table.html", TABLE).unwrap();
    env.add_template("n.html", "<p>{{ n }} clicks, {{ who }}</p>")
        .unwrap();
    env
}

fn table(n: u64) -> Table {
    Table {
        rows: (1..=n).map(make_row).collect(),
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() as f64 - 1.0) * p) as usize]
}

/// Bytes this process passed to write(2) so far (`/proc/self/io` wchar).
fn wchar() -> u64 {
    let io = std::fs::read_to_string("/proc/self/io").unwrap_or_default();
    io.lines()
        .find_map(|l| l.strip_prefix("wchar: "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

fn dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("st-bench-store-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[derive(Clone, Copy)]
enum Kind {
    Memory,
    Sqlite(Durability),
}

impl Kind {
    fn name(&self) -> String {
        match self {
            Kind::Memory => "memory store".into(),
            Kind::Sqlite(Durability::Full) => "sqlite, Full (sync every commit)".into(),
            Kind::Sqlite(Durability::Grouped { max_delay }) => {
                format!("sqlite, Grouped ({} ms)", max_delay.as_millis())
            }
            Kind::Sqlite(Durability::Async) => "sqlite, Async".into(),
        }
    }

    fn engine(&self, path: &Path) -> (StateTemplate, Option<SqliteStore>) {
        let b = StateTemplate::builder(env()).keys(KeyRing::generate().unwrap());
        match self {
            Kind::Memory => (b.store(MemoryStore::new()).build().unwrap(), None),
            Kind::Sqlite(d) => {
                let s =
                    SqliteStore::open_with(path, SqliteOptions::default().durability(*d)).unwrap();
                (b.store(s.clone()).build().unwrap(), Some(s))
            }
        }
    }
}

/// A new session of the table page with `data`, joined by a client (so its
/// frames are made and kept).
async fn joined(
    engine: &StateTemplate,
    data: &Table,
) -> (statetemplate::Session, statetemplate::Subscriber) {
    let init = engine.new_session("table.html", data).await.unwrap();
    let s = engine
        .get_session(&init.session_id.to_string(), &init.token)
        .await
        .unwrap();
    let (_r, sub) = s.join().await.unwrap();
    (s, sub)
}

/// One session of a 1,000-row table, joined (so frames are made and kept):
/// `n` renders each changing one row's amount, one after the other. Then
/// 8 such sessions rendering at once. Per-render latency and renders/s.
async fn durability(kind: Kind, i: usize) -> (f64, f64, f64) {
    let path = dir().join(format!("dur{i}.db"));
    let (engine, _store) = kind.engine(&path);
    let mut data = table(1000);
    let (s, _sub) = joined(&engine, &data).await;
    let mut lat = Vec::new();
    for k in 0..300usize {
        data.rows[(k * 37) % 1000].amount += 1;
        let t = Instant::now();
        s.render(&data).await.unwrap();
        lat.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let med = median(&mut lat);
    let p99 = pct(&mut lat, 0.99);
    // Eight sessions at once.
    let mut tasks = Vec::new();
    let t = Instant::now();
    for w in 0..8u64 {
        let engine = engine.clone();
        tasks.push(tokio::spawn(async move {
            let mut data = table(1000);
            let (s, _sub) = joined(&engine, &data).await;
            for k in 0..100usize {
                data.rows[(k * 31 + w as usize) % 1000].amount += 1;
                s.render(&data).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let rps = 800.0 / t.elapsed().as_secs_f64();
    engine.shutdown().await;
    (med, p99, rps)
}

/// Bytes written per one-row change in a session of `n` rows.
async fn bytes_per_change(n: u64) -> (f64, f64, usize) {
    let path = dir().join(format!("bytes{n}.db"));
    let (engine, store) = Kind::Sqlite(Durability::Grouped {
        max_delay: Duration::from_millis(2),
    })
    .engine(&path);
    let store = store.unwrap();
    let mut data = table(n);
    let snapshot = serde_json::to_vec(&data).unwrap().len();
    let (s, _sub) = joined(&engine, &data).await;
    // Warm up (the first snapshot by size may come later for big pages).
    let renders = 400;
    let (b0, w0) = (store.stats().bytes, wchar());
    for k in 0..renders {
        let i = (k * 7919) % n as usize;
        data.rows[i].amount += 1;
        s.render(&data).await.unwrap();
    }
    store.flush().await.unwrap();
    let payload = (store.stats().bytes - b0) as f64 / renders as f64;
    let written = (wchar() - w0) as f64 / renders as f64;
    engine.shutdown().await;
    (payload, written, snapshot)
}

/// 10,000 stored sessions; the process restarts: time to open the store,
/// to resume one client, and to bring all 10,000 back.
async fn restart() {
    let path = dir().join("restart.db");
    let keys = KeyRing::generate().unwrap();
    let mut who = Vec::new();
    {
        let engine = StateTemplate::builder(env())
            .keys(keys.clone())
            .store(SqliteStore::open(&path).unwrap())
            .build()
            .unwrap();
        let mut tasks = Vec::new();
        for w in 0..8 {
            let engine = engine.clone();
            tasks.push(tokio::spawn(async move {
                let mut mine = Vec::new();
                for i in 0..1250 {
                    let init = engine
                        .new_session("n.html", &json!({"n": i, "who": format!("w{w}")}))
                        .await
                        .unwrap();
                    let s = engine
                        .get_session(&init.session_id.to_string(), &init.token)
                        .await
                        .unwrap();
                    let (r, _sub) = s.join().await.unwrap();
                    s.render(&json!({"n": i + 1, "who": format!("w{w}")}))
                        .await
                        .unwrap();
                    mine.push((
                        init.session_id.to_string(),
                        init.token.clone(),
                        r.seq(),
                        r.epoch().to_owned(),
                    ));
                }
                mine
            }));
        }
        for t in tasks {
            who.extend(t.await.unwrap());
        }
        engine.shutdown().await;
    }
    std::thread::sleep(Duration::from_millis(200));
    let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0)
        + std::fs::metadata(format!("{}-wal", path.display()))
            .map(|m| m.len())
            .unwrap_or(0);
    let t0 = Instant::now();
    let store = SqliteStore::open(&path).unwrap();
    let open = t0.elapsed();
    let engine = StateTemplate::builder(env())
        .keys(keys.clone())
        .store(store)
        .build()
        .unwrap();
    let (sid, token, seq, epoch) = &who[0];
    let s = engine.get_session(sid, token).await.unwrap();
    let (c, _sub) = s.resume(*seq, epoch).await.unwrap();
    let first = t0.elapsed();
    assert!(matches!(c, Catchup::Frames(ref f) if f.len() == 1));
    // The other clients come back at once (16 at a time), as after a
    // restart.
    let t1 = Instant::now();
    let rest: Vec<_> = who[1..].to_vec();
    let mut tasks = Vec::new();
    for part in rest.chunks(rest.len().div_ceil(16)) {
        let (engine, part) = (engine.clone(), part.to_vec());
        tasks.push(tokio::spawn(async move {
            let mut each = Vec::new();
            for (sid, token, seq, epoch) in &part {
                let t = Instant::now();
                let s = engine.get_session(sid, token).await.unwrap();
                let (c, _sub) = s.resume(*seq, epoch).await.unwrap();
                assert!(matches!(c, Catchup::Frames(_)));
                each.push(t.elapsed().as_secs_f64() * 1e6);
            }
            each
        }));
    }
    let mut each = Vec::new();
    for t in tasks {
        each.extend(t.await.unwrap());
    }
    let all = t1.elapsed();
    println!(
        "restart, 10,000 stored sessions ({:.1} MB file): open (with quick_check) {:.1} ms; first client resumed {:.1} ms after the open began; the other 9,999, reconnecting 16 at a time, all resumed {:.2} s later (median {:.0} µs each)",
        size as f64 / 1e6,
        open.as_secs_f64() * 1e3,
        first.as_secs_f64() * 1e3,
        all.as_secs_f64(),
        median(&mut each)
    );
    engine.shutdown().await;
}

/// 1,000,000 persisted sessions, 100,000 of them live in this process.
async fn million() {
    let path = dir().join("million.db");
    let store = SqliteStore::open_with(
        &path,
        // The fill is not what is measured: no sync per commit.
        SqliteOptions::default().durability(Durability::Async),
    )
    .unwrap();
    let t = Instant::now();
    // 900,000 stored only: made by a first engine, which then goes away (as
    // a process that served them and restarted would leave them).
    let key = statetemplate::token::Key::generate().unwrap();
    let key_text = key.encode();
    let keys = KeyRing::new(key);
    let mut cold = Vec::new();
    {
        let first = StateTemplate::builder(env())
            .keys(keys.clone())
            .store(store.clone())
            .max_sessions(1_000_000)
            .max_unjoined(1_000_000)
            .build()
            .unwrap();
        let mut tasks = Vec::new();
        for w in 0..8u64 {
            let first = first.clone();
            tasks.push(tokio::spawn(async move {
                let mut ids = Vec::new();
                for i in 0..112_500u64 {
                    let init = first
                        .new_session("n.html", &json!({"n": i, "who": format!("cold {w}")}))
                        .await
                        .unwrap();
                    if i % 1000 == 0 {
                        ids.push((init.session_id.to_string(), init.token));
                    }
                }
                ids
            }));
        }
        for t in tasks {
            cold.extend(t.await.unwrap());
        }
        first.shutdown().await;
    }
    let stored_in = t.elapsed();
    drop(store);
    std::thread::sleep(Duration::from_millis(500));
    let list = dir().join("million.tokens");
    let text: Vec<String> = cold.iter().map(|(a, b)| format!("{a} {b}")).collect();
    std::fs::write(&list, text.join("\n")).unwrap();
    std::fs::write(dir().join("million.key"), key_text).unwrap();
    println!(
        "million: 900,000 sessions stored in {:.1} s; measuring in a fresh process",
        stored_in.as_secs_f64()
    );
    let st = std::process::Command::new(std::env::current_exe().unwrap())
        .arg("million-measure")
        .arg(dir())
        .status()
        .unwrap();
    assert!(st.success());
}

/// The second half of `million`, in a fresh process: 100,000 live sessions
/// beside the 900,000 on disk.
async fn million_measure(d: &Path) {
    let path = d.join("million.db");
    let t = Instant::now();
    let store = SqliteStore::open(&path).unwrap();
    let open = t.elapsed();
    let cold: Vec<(String, String)> = std::fs::read_to_string(d.join("million.tokens"))
        .unwrap()
        .lines()
        .map(|l| {
            let (a, b) = l.split_once(' ').unwrap();
            (a.to_owned(), b.to_owned())
        })
        .collect();
    let keys = KeyRing::parse(
        std::fs::read_to_string(d.join("million.key"))
            .unwrap()
            .trim(),
    )
    .unwrap();
    let rss0 = support::rss();
    let engine = StateTemplate::builder(env())
        .keys(keys.clone())
        .store(store.clone())
        .max_sessions(200_000)
        .max_unjoined(200_000)
        .build()
        .unwrap();
    let rss1 = support::rss();
    let t = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..8u64 {
        let engine = engine.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..12_500u64 {
                engine
                    .new_session("n.html", &json!({"n": i, "who": format!("live {w}")}))
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let live_in = t.elapsed();
    let rss2 = support::rss();
    let count = store.count().await.unwrap();
    // Cold opens: sessions only on disk, restored on their client's return.
    let mut opens = Vec::new();
    for (sid, token) in cold.iter().take(500) {
        let t = Instant::now();
        let s = engine.get_session(sid, token).await.unwrap();
        opens.push(t.elapsed().as_secs_f64() * 1e6);
        drop(s);
    }
    let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    println!(
        "million: {count} sessions in the store ({:.0} MB file; opened with quick_check in {:.1} s), {} live; RSS {:.0} MB before the live ones, {:.0} MB with 100,000 live (+{:.0} B per live session); cold open of a stored session: median {:.0} µs, p99 {:.0} µs (over {} opens); 100,000 new sessions in {:.1} s; RSS of the process at start {:.0} MB",
        size as f64 / 1e6,
        open.as_secs_f64(),
        engine.live_sessions(),
        rss1 as f64 / 1e6,
        rss2 as f64 / 1e6,
        (rss2 - rss1) as f64 / 100_000.0,
        median(&mut opens),
        pct(&mut opens, 0.99),
        opens.len(),
        live_in.as_secs_f64(),
        rss0 as f64 / 1e6,
    );
    engine.shutdown().await;
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let rt = support::runtime(2);
    rt.block_on(async {
        if let Some(i) = args.iter().position(|a| a == "million-measure") {
            million_measure(Path::new(&args[i + 1])).await;
            return;
        }
        if args.iter().any(|a| a == "million") {
            million().await;
        } else {
            println!("durability (one-row change in a 1,000-row table, joined session):");
            let kinds = [
                Kind::Memory,
                Kind::Sqlite(Durability::Full),
                Kind::Sqlite(Durability::Grouped {
                    max_delay: Duration::from_millis(2),
                }),
                Kind::Sqlite(Durability::Async),
            ];
            // Two passes, interleaved, medians of the pair reported apart.
            for pass in 0..2 {
                for (i, k) in kinds.iter().enumerate() {
                    let (med, p99, rps) = durability(*k, pass * 10 + i).await;
                    println!(
                        "  pass {pass}: {:34} render latency median {:7.0} µs, p99 {:7.0} µs; 8 sessions at once: {:6.0} renders/s",
                        k.name(),
                        med,
                        p99,
                        rps
                    );
                }
            }
            println!("bytes written per one-row change (Grouped):");
            for n in [100u64, 1_000, 10_000] {
                let (payload, written, snap) = bytes_per_change(n).await;
                println!(
                    "  {n:>6} rows (data {snap:>8} B as JSON): payload {payload:7.0} B/render, write(2) {written:8.0} B/render"
                );
            }
            restart().await;
        }
    });
    if !args.iter().any(|a| a == "million-measure") {
        let _ = std::fs::remove_dir_all(dir());
    }
}
