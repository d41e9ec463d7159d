#![allow(missing_docs)]
//! Memory per session: creates 100,000 sessions of a small page and reports
//! resident memory per session beyond its data snapshot.
//! Run: `cargo bench --bench memory` (`-- N` for another count).
//!
//! Method: the data snapshots are built first (as template values) and the
//! RSS growth they cause is measured on its own. The sessions are then
//! created from those same values, which they share (reference counted), so
//! the RSS growth of the second phase is what sessions cost beyond their
//! data: the render tree, the session state, the store record, the LRU entry.

use std::time::Instant;

use minijinja::Environment;
use minijinja::value::Value;
use statetemplate::StateTemplate;
use statetemplate::token::KeyRing;

fn rss_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
    let pages: usize = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

fn main() {
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(100_000);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut env = Environment::new();
        env.add_template("small.html", include_str!("../templates/small.html"))
            .unwrap();
        let engine = StateTemplate::builder(env)
            .keys(KeyRing::generate().unwrap())
            .max_sessions(n + 1)
            .build()
            .unwrap();
        // Warm up: compile the template, allocate the runtime's pools.
        let w = engine.new_session("small.html", &data(0)).await.unwrap();
        drop(w);

        let rss0 = rss_bytes();
        let snapshots: Vec<Value> = (0..n)
            .map(|i| Value::from(minijinja::value::Serde(&data(i))))
            .collect();
        let rss1 = rss_bytes();

        let t = Instant::now();
        let mut ids = Vec::with_capacity(n);
        for v in &snapshots {
            let init = engine.new_session("small.html", v).await.unwrap();
            ids.push(init.session_id);
        }
        let took = t.elapsed();
        let rss2 = rss_bytes();
        assert_eq!(engine.live_sessions(), n + 1);
        let per = |a: usize, b: usize| (b.saturating_sub(a)) as f64 / n as f64;
        println!("sessions: {n} (all live: {})", engine.live_sessions());
        println!("data snapshot, per session: {:.0} B", per(rss0, rss1));
        println!(
            "session beyond its data, per session: {:.0} B ({:.2} KB)",
            per(rss1, rss2),
            per(rss1, rss2) / 1024.0
        );
        println!(
            "total RSS: {:.1} MB ({:.0} B per session with data)",
            rss2 as f64 / 1e6,
            per(rss0, rss2)
        );
        println!(
            "creation: {:.2} s ({:.1} µs per session)",
            took.as_secs_f64(),
            took.as_secs_f64() * 1e6 / n as f64
        );
        std::hint::black_box((&snapshots, &ids));
    });
}

fn data(i: usize) -> serde_json::Value {
    serde_json::json!({
        "title": format!("Tasks of user {i}"),
        "count": i,
        "status": "ok",
        "items": [{"id": 1, "text": format!("milk {i}"), "done": false},
                  {"id": 2, "text": "eggs", "done": i % 2 == 0},
                  {"id": 3, "text": "bread", "done": false}],
    })
}
