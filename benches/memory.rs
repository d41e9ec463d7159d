#![allow(missing_docs)]
//! Memory per session: creates 100,000 sessions of a small page and reports
//! resident memory per session, idle and in the steady state.
//! Run: `cargo bench --bench memory` (`-- N R` for N sessions and R renders
//! per session per phase; defaults 100,000 and 64; `-- N R K` also sets the
//! replay buffer to K frames, `Builder::replay_frames`, instead of 64;
//! `--rest` lets every page rest as soon as it is made,
//! `Builder::rest_unjoined_after(Some(Duration::ZERO))`, where by default
//! the bench keeps every tree, `None`, so that no sweep in the middle of a
//! phase changes what it measures).
//!
//! Method: the data snapshots are built first (as template values) and the
//! RSS growth they cause is measured on its own. The sessions are then
//! created from those same values, which they share (reference counted), so
//! the RSS growth of that phase is what an idle session costs beyond its
//! data: the render tree, the session state, the store record, the LRU
//! entry. Then, on the same sessions, in order:
//!
//! 1. R renders each, nobody subscribed (a session no client has joined
//!    keeps no frames);
//! 2. one in-process subscriber joins each session (`Session::join`, what a
//!    connection does): the broadcast channel and the replay buffer exist;
//! 3. R more renders each, the subscriber receiving every frame (as a
//!    connection that keeps up): by default the session keeps the last 64
//!    frames for replay, so with R >= 64 the buffer is full.
//!
//! Each render changes two values (the count, and one item's `done`), like
//! the throughput bench. RSS is read after each phase.

mod support;

use std::time::{Duration, Instant};

use minijinja::Environment;
use minijinja::value::Value;
use statetemplate::token::KeyRing;
use statetemplate::{SessionEvent, StateTemplate};

fn main() {
    let nums: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let n = nums.first().copied().unwrap_or(100_000);
    let renders = nums.get(1).copied().unwrap_or(64);
    let replay = nums.get(2).copied();
    let rest = std::env::args().any(|a| a == "--rest");
    let rt = support::runtime(0);
    rt.block_on(async {
        let mut env = Environment::new();
        env.add_template("small.html", include_str!("../templates/small.html"))
            .unwrap();
        let mut builder = StateTemplate::builder(env)
            .keys(KeyRing::generate().unwrap())
            .max_sessions(n + 1)
            // Every session here is created before a client joins it, and
            // the first phase (renders are not client activity) may take
            // longer than the default 5 minutes' unjoined expiration.
            .max_unjoined(n + 1)
            .unjoined_expiration(std::time::Duration::from_secs(3600))
            .rest_unjoined_after(rest.then_some(Duration::ZERO));
        if let Some(k) = replay {
            builder = builder.replay_frames(k);
        }
        let engine = builder.build().unwrap();
        // Warm up: compile the template, allocate the runtime's pools.
        let w = engine.new_session("small.html", &data(0, 0)).await.unwrap();
        drop(w);

        let rss0 = support::rss();
        let snapshots: Vec<Value> = (0..n)
            .map(|i| Value::from(minijinja::value::Serde(&data(i, 0))))
            .collect();
        let rss1 = support::rss();

        // Only `new_session` is timed; the handles (16 B each, as the ids
        // this vector held before) are opened from the tokens untimed.
        let mut took = Duration::ZERO;
        let mut sessions = Vec::with_capacity(n);
        for v in &snapshots {
            let t = Instant::now();
            let init = engine.new_session("small.html", v).await.unwrap();
            took += t.elapsed();
            let s = engine
                .get_session(&init.session_id.to_string(), &init.token)
                .await
                .unwrap();
            sessions.push(s);
        }
        let rss2 = support::rss();
        assert_eq!(engine.live_sessions(), n + 1);

        // 1. Renders, nobody subscribed.
        let t = Instant::now();
        for step in 1..=renders {
            for (i, s) in sessions.iter().enumerate() {
                s.render(&data(i, step)).await.unwrap();
            }
        }
        let took_unjoined = t.elapsed();
        let rss3 = support::rss();

        // 2. One subscriber joins each session.
        let mut subs = Vec::with_capacity(n);
        for s in &sessions {
            let (resync, sub) = s.join().await.unwrap();
            drop(resync);
            subs.push(sub);
        }
        let rss4 = support::rss();

        // 3. Renders, each received by the subscriber.
        let t = Instant::now();
        let mut frame_bytes = 0usize;
        for step in renders + 1..=2 * renders {
            for (i, (s, sub)) in sessions.iter().zip(subs.iter_mut()).enumerate() {
                s.render(&data(i, step)).await.unwrap();
                match sub.recv().await {
                    Some(SessionEvent::Patch(p)) => frame_bytes += p.frame().len(),
                    other => panic!("expected a patch, got {other:?}"),
                }
            }
        }
        let took_joined = t.elapsed();
        let rss5 = support::rss();

        let per = |a: usize, b: usize| b.saturating_sub(a) as f64 / n as f64;
        let kb = |b: f64| b / 1024.0;
        let data_per = per(rss0, rss1);
        println!(
            "sessions: {n} (all live: {}), {renders} renders per phase{}",
            engine.live_sessions(),
            if rest { ", pages rest when made" } else { "" }
        );
        println!("data snapshot, per session: {data_per:.0} B");
        println!(
            "idle session beyond its data, per session: {:.0} B ({:.2} KiB)",
            per(rss1, rss2),
            kb(per(rss1, rss2))
        );
        println!(
            "creation: {:.2} s ({:.1} µs per session)",
            took.as_secs_f64(),
            took.as_secs_f64() * 1e6 / n as f64
        );
        println!(
            "after {renders} renders, no subscriber: +{:.0} B per session ({:.1} µs per render)",
            per(rss2, rss3),
            took_unjoined.as_secs_f64() * 1e6 / (n * renders) as f64
        );
        println!(
            "one subscriber joined, before any frame: +{:.0} B per session",
            per(rss3, rss4)
        );
        println!(
            "after {renders} more renders, each received: +{:.0} B per session \
             ({:.0} B per frame kept, frames of {:.0} B on the wire; {:.1} µs per render + recv)",
            per(rss4, rss5),
            per(rss4, rss5) / renders.min(replay.unwrap_or(64)).max(1) as f64,
            frame_bytes as f64 / (n * renders) as f64,
            took_joined.as_secs_f64() * 1e6 / (n * renders) as f64
        );
        // The original snapshots are still held (by `snapshots`), but after
        // the renders no session shares them any more: each holds its own
        // current data, counted from rss1 on.
        println!(
            "steady state, per session including its own data: {:.0} B ({:.1} KiB); \
             beyond a data snapshot: {:.0} B ({:.1} KiB)",
            per(rss1, rss5),
            kb(per(rss1, rss5)),
            per(rss1, rss5) - data_per,
            kb(per(rss1, rss5) - data_per)
        );
        println!(
            "total RSS: idle {:.1} MB, steady {:.1} MB",
            rss2 as f64 / 1e6,
            rss5 as f64 / 1e6
        );
        std::hint::black_box((&snapshots, &sessions, &subs));
    });
}

fn data(i: usize, step: usize) -> serde_json::Value {
    serde_json::json!({
        "title": format!("Tasks of user {i}"),
        "count": i + step,
        "status": "ok",
        "items": [{"id": 1, "text": format!("milk {i}"), "done": false},
                  {"id": 2, "text": "eggs", "done": (i + step) % 2 == 0},
                  {"id": 3, "text": "bread", "done": false}],
    })
}
