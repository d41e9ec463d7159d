//! A flood of anonymous page loads does not evict or starve real users:
//! 20 users with open WebSockets, then far more anonymous sessions than
//! the caps allow, over HTTP on loopback. Not one
//! joined session is evicted or closed, every user still gets its frames,
//! and the live count stays within the caps throughout. The count is
//! `FLOOD_SESSIONS` (default 15,000; `scripts/test.sh` runs 100,000 in
//! release mode).

#[path = "common/flood.rs"]
mod flood;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use minijinja::Environment;
use serde_json::json;
use statetemplate::StateTemplate;
use statetemplate::token::KeyRing;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_load_flood_never_evicts_joined_sessions() {
    let total: usize = std::env::var("FLOOD_SESSIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(15_000);
    let mut env = Environment::new();
    env.add_template("p.html", "<h1>{{ who }}</h1><p>{{ n }}</p>")
        .unwrap();
    let evictions = Arc::new(AtomicUsize::new(0));
    let ev = evictions.clone();
    // Both caps bind: 5,000 sessions in all (so at most 4,980 unjoined
    // beside the 20 users), and the default unjoined cap (10,000) is cut to
    // that. A flood past them must recycle its own pool.
    const MAX: usize = 5_000;
    let engine = StateTemplate::builder(env)
        .keys(KeyRing::generate().unwrap())
        .max_sessions(MAX)
        .on_evict(move |_, _| {
            ev.fetch_add(1, Ordering::Relaxed);
        })
        .build()
        .unwrap();
    let addr = flood::page_server(&engine, "p.html", json!({"who": "anon", "n": 0})).await;
    // 20 real users: a page, then a socket that stays open.
    let mut users = flood::users(
        &engine,
        &addr,
        "p.html",
        20,
        |u| json!({"who": format!("user{u}"), "n": 0}),
    )
    .await;

    // Sample the caps while the flood runs.
    let done = Arc::new(AtomicBool::new(false));
    let (d, e) = (done.clone(), engine.clone());
    let sampler = tokio::spawn(async move {
        let (mut max_live, mut max_unjoined) = (0, 0);
        while !d.load(Ordering::Relaxed) {
            max_live = max_live.max(e.live_sessions());
            max_unjoined = max_unjoined.max(e.unjoined_sessions());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        (max_live, max_unjoined)
    });
    let tally = tokio::time::timeout(Duration::from_secs(600), flood::page_loads(&addr, total, 8))
        .await
        .expect("the flood finished in time");
    done.store(true, Ordering::Relaxed);
    let (max_live, max_unjoined) = sampler.await.unwrap();

    assert_eq!(tally.ok, total, "every page load was served: {tally:?}");
    assert!(
        max_unjoined <= MAX - 20,
        "unjoined peaked at {max_unjoined}"
    );
    // At most one more in flight per flooding connection (a session is
    // live until its eviction finishes).
    assert!(max_live <= MAX + 8, "live sessions peaked at {max_live}");
    assert!(
        evictions.load(Ordering::Relaxed) >= total - MAX,
        "the flood recycled its own pool"
    );
    // Not one user was evicted or closed, and each still gets its frames.
    for (n, (s, ws)) in users.iter_mut().enumerate() {
        assert!(!s.is_closed(), "user {n} was evicted");
        let seq = s
            .render(&json!({"who": format!("user{n}"), "n": 1}))
            .await
            .unwrap();
        let frame = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a frame in time")
            .expect("the socket is open")
            .unwrap();
        match frame {
            Message::Text(t) => {
                // An update frame (an array: its seq is the one after the
                // join's), not a resync.
                let j: serde_json::Value = serde_json::from_str(t.as_str()).unwrap();
                assert!(j.is_array(), "user {n}'s frame: {j}");
                assert_eq!(seq, 1, "user {n}'s first render");
            }
            other => panic!("user {n} got {other:?}"),
        }
    }
    println!(
        "{total} page loads; peak {max_live} live, {max_unjoined} unjoined; {} evictions; 20 users intact",
        evictions.load(Ordering::Relaxed)
    );
}
