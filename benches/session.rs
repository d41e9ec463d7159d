#![allow(missing_docs)]
//! Session benchmarks: `new_session` against a bare minijinja render of the
//! same page, and a session render against the bare page update underneath.
//! Run: `cargo bench --bench session`; results in docs/benchmarks.md.

use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, criterion_group};
use minijinja::Environment;
use serde_json::{Value as Json, json};
use statetemplate::StateTemplate;
use statetemplate::token::KeyRing;

fn env() -> Environment<'static> {
    let mut env = Environment::new();
    env.add_template("table.html", include_str!("../templates/table.html"))
        .unwrap();
    env.add_template("small.html", include_str!("../templates/small.html"))
        .unwrap();
    statetemplate::register_filters(&mut env);
    env
}

fn table(n: usize) -> Json {
    json!({
        "title": "Dashboard",
        "user": {"name": "Ann", "role": "admin"},
        "updated": "12:00:00",
        "rows": (0..n).map(|i| json!({"id": i, "name": format!("User {i}"),
            "email": format!("user{i}@example.com"), "score": i * 7 % 100, "active": i % 3 == 0}))
            .collect::<Vec<_>>(),
    })
}

fn small(count: u64) -> Json {
    json!({
        "title": "Tasks",
        "count": count,
        "status": "ok",
        "items": [{"id": 1, "text": "milk", "done": false},
                  {"id": 2, "text": "eggs", "done": true},
                  {"id": 3, "text": "bread", "done": false}],
    })
}

fn pages() -> Vec<(String, &'static str, Json)> {
    vec![
        ("small".to_owned(), "small.html", small(1)),
        ("table_10".to_owned(), "table.html", table(10)),
        ("table_100".to_owned(), "table.html", table(100)),
        ("table_1000".to_owned(), "table.html", table(1000)),
    ]
}

fn runtime_and_engine() -> (tokio::runtime::Runtime, StateTemplate) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let engine = rt.block_on(async {
        StateTemplate::builder(env())
            .keys(KeyRing::generate().unwrap())
            .build()
            .unwrap()
    });
    (rt, engine)
}

fn new_session(c: &mut Criterion) {
    let (rt, engine) = runtime_and_engine();
    let plain = env();
    let mut g = c.benchmark_group("new_session");
    for (name, tmpl, d) in pages() {
        g.bench_with_input(BenchmarkId::new("bare_minijinja", &name), &d, |b, d| {
            let t = plain.get_template(tmpl).unwrap();
            b.iter(|| t.render(minijinja::value::Serde(d)).unwrap())
        });
        g.bench_with_input(BenchmarkId::new("fragment_render", &name), &d, |b, d| {
            b.iter(|| engine.fragments().render(tmpl, d).unwrap().html())
        });
        g.bench_with_input(BenchmarkId::new("new_session", &name), &d, |b, d| {
            // Only the new_session calls are timed; closing is not.
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let mut made = Vec::with_capacity(iters as usize);
                    let t = Instant::now();
                    for _ in 0..iters {
                        made.push(engine.new_session(tmpl, d).await.unwrap());
                    }
                    let took = t.elapsed();
                    for m in made {
                        let s = engine
                            .get_session(&m.session_id.to_string(), &m.token)
                            .await
                            .unwrap();
                        s.close().await.unwrap();
                    }
                    took
                })
            })
        });
    }
    g.finish();
}

fn render(c: &mut Criterion) {
    let (rt, engine) = runtime_and_engine();
    let mut g = c.benchmark_group("session_render");
    let mut changed = table(100);
    changed["updated"] = json!("12:00:01");
    let cases = [
        ("small_one_field", "small.html", small(1), small(2)),
        ("table_100_one_field", "table.html", table(100), changed),
    ];
    for (name, tmpl, a, b) in cases {
        g.bench_function(BenchmarkId::new("live_page_update", name), |bench| {
            let mut page = engine.fragments().render(tmpl, &a).unwrap();
            bench.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let t = Instant::now();
                    std::hint::black_box(page.update(&b).unwrap());
                    total += t.elapsed();
                    page.update(&a).unwrap();
                }
                total
            })
        });
        for subscribed in [false, true] {
            let label = if subscribed {
                "session_render_one_subscriber"
            } else {
                "session_render"
            };
            g.bench_function(BenchmarkId::new(label, name), |bench| {
                let (s, mut sub) = rt.block_on(async {
                    let i = engine.new_session(tmpl, &a).await.unwrap();
                    let s = engine
                        .get_session(&i.session_id.to_string(), &i.token)
                        .await
                        .unwrap();
                    let sub = subscribed.then(|| s.updates());
                    (s, sub)
                });
                bench.iter_custom(|iters| {
                    rt.block_on(async {
                        let mut total = Duration::ZERO;
                        for _ in 0..iters {
                            let t = Instant::now();
                            s.render(&b).await.unwrap();
                            if let Some(sub) = sub.as_mut() {
                                std::hint::black_box(sub.recv().await.unwrap());
                            }
                            total += t.elapsed();
                            s.render(&a).await.unwrap();
                            if let Some(sub) = sub.as_mut() {
                                sub.recv().await.unwrap();
                            }
                        }
                        total
                    })
                })
            });
        }
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = new_session, render
}

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
}
