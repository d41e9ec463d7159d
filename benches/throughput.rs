#![allow(missing_docs)]
//! Update throughput: 10,000 sessions rendering concurrently on a 2-worker
//! tokio runtime, against the same work done as bare minijinja re-renders.
//! Run: `cargo bench --bench throughput` (`-- SESSIONS RENDERS` to change the
//! counts). Bounded: SESSIONS x RENDERS renders per phase, then it exits.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use minijinja::Environment;
use statetemplate::token::KeyRing;
use statetemplate::{SessionEvent, StateTemplate};

fn env() -> Environment<'static> {
    let mut env = Environment::new();
    env.add_template("small.html", include_str!("../templates/small.html"))
        .unwrap();
    env
}

fn data(i: usize, step: usize) -> serde_json::Value {
    serde_json::json!({
        "title": format!("Tasks of user {i}"),
        "count": step,
        "status": "ok",
        "items": [{"id": 1, "text": format!("milk {i}"), "done": false},
                  {"id": 2, "text": "eggs", "done": step % 2 == 0},
                  {"id": 3, "text": "bread", "done": false}],
    })
}

struct Phase {
    name: &'static str,
    wall: Duration,
    lat: Vec<Duration>,
}

fn pct(v: &[Duration], p: f64) -> Duration {
    v[((v.len() - 1) as f64 * p) as usize]
}

fn report(p: &mut Phase, renders: usize) {
    p.lat.sort_unstable();
    println!(
        "| {} | {} | {:.2} s | {:.0} | {:.1} µs | {:.1} µs |",
        p.name,
        renders,
        p.wall.as_secs_f64(),
        renders as f64 / p.wall.as_secs_f64(),
        pct(&p.lat, 0.5).as_secs_f64() * 1e6,
        pct(&p.lat, 0.99).as_secs_f64() * 1e6,
    );
}

fn main() {
    let nums: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let sessions = nums.first().copied().unwrap_or(10_000);
    let renders = nums.get(1).copied().unwrap_or(20);
    let rt = support::runtime(2);
    rt.block_on(async move {
        println!("{sessions} sessions x {renders} renders each, 2 worker threads\n");
        println!("| phase | renders | wall | renders/s | p50 latency | p99 latency |");
        println!("|---|---:|---:|---:|---:|---:|");
        let total = sessions * renders;

        // Baseline: the same page re-rendered in full by bare minijinja.
        let plain = Arc::new(env());
        let t = Instant::now();
        let mut tasks = Vec::new();
        for i in 0..sessions {
            let plain = plain.clone();
            tasks.push(tokio::spawn(async move {
                let tmpl = plain.get_template("small.html").unwrap();
                let mut lat = Vec::with_capacity(renders);
                for step in 1..=renders {
                    let d = data(i, step);
                    let t = Instant::now();
                    std::hint::black_box(tmpl.render(minijinja::value::Serde(&d)).unwrap());
                    lat.push(t.elapsed());
                    tokio::task::yield_now().await;
                }
                lat
            }));
        }
        let mut lat = Vec::with_capacity(total);
        for t in tasks {
            lat.extend(t.await.unwrap());
        }
        report(
            &mut Phase {
                name: "bare minijinja full re-render",
                wall: t.elapsed(),
                lat,
            },
            total,
        );

        for subscribed in [false, true] {
            let engine = StateTemplate::builder(env())
                .keys(KeyRing::generate().unwrap())
                .build()
                .unwrap();
            let mut handles = Vec::with_capacity(sessions);
            for i in 0..sessions {
                let init = engine.new_session("small.html", &data(i, 0)).await.unwrap();
                let s = engine
                    .get_session(&init.session_id.to_string(), &init.token)
                    .await
                    .unwrap();
                handles.push(s);
            }
            let mut readers = Vec::new();
            if subscribed {
                for s in &handles {
                    let mut sub = s.updates();
                    readers.push(tokio::spawn(async move {
                        let mut bytes = 0usize;
                        while let Some(ev) = sub.recv().await {
                            if let SessionEvent::Patch(p) = ev {
                                bytes += p.frame().len();
                            }
                        }
                        bytes
                    }));
                }
            }
            let t = Instant::now();
            let mut tasks = Vec::new();
            for (i, s) in handles.iter().cloned().enumerate() {
                tasks.push(tokio::spawn(async move {
                    let mut lat = Vec::with_capacity(renders);
                    for step in 1..=renders {
                        let d = data(i, step);
                        let t = Instant::now();
                        s.render(&d).await.unwrap();
                        lat.push(t.elapsed());
                        tokio::task::yield_now().await;
                    }
                    lat
                }));
            }
            let mut lat = Vec::with_capacity(total);
            for t in tasks {
                lat.extend(t.await.unwrap());
            }
            let wall = t.elapsed();
            for s in &handles {
                s.close().await.unwrap();
            }
            let mut bytes = 0;
            for r in readers {
                bytes += r.await.unwrap();
            }
            let name = if subscribed {
                "session.render, one subscriber each"
            } else {
                "session.render, no subscriber"
            };
            report(&mut Phase { name, wall, lat }, total);
            if subscribed {
                println!(
                    "\nframes received by subscribers: {bytes} bytes ({:.1} B per render)",
                    bytes as f64 / total as f64
                );
            }
        }
    });
}
