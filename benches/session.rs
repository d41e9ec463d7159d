#![allow(missing_docs)]
//! Session benchmarks: `new_session` against a bare minijinja render and a
//! fragment render of the same page, and a session render against the bare
//! page update underneath.
//! Run: `cargo bench --bench session` (`-- ROUNDS`, default 60); results in
//! docs/benchmarks.md.
//!
//! Method (the machine is shared and noisy): the cases of one table are
//! interleaved. Each round runs every case once, in a rotating order, for a
//! batch of about 10 ms (the batch size is calibrated per case), and records
//! the mean time per call in that batch. A case's figure is the median over
//! the rounds; a ratio or a difference between two cases is the median of
//! the per-round ratios or differences, so that a burst of load from
//! elsewhere hits both sides of it.
//!
//! Every `new_session` case keeps what it built until its clock stops: the
//! HTML for the bare render, the page tree and the HTML for the fragment
//! render, the session for `new_session` (closed afterwards, untimed). The
//! case `fragment_render, dropped in the loop` is the old way of timing the
//! fragment render (the tree freed inside the timed loop), kept to show what
//! that difference cost.

mod support;

use std::time::{Duration, Instant};

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
    statetemplate::fragment::register_filters(&mut env);
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
    let rt = support::runtime(0);
    let engine = rt.block_on(async {
        StateTemplate::builder(env())
            .keys(KeyRing::generate().unwrap())
            .build()
            .unwrap()
    });
    (rt, engine)
}

/// Runs `f` `iters` times and returns the time taken; everything `f`
/// returns is kept and dropped only after the clock stops.
fn keep_outputs<T>(iters: u64, mut f: impl FnMut() -> T) -> Duration {
    let mut made = Vec::with_capacity(iters as usize);
    let t = Instant::now();
    for _ in 0..iters {
        made.push(f());
    }
    let took = t.elapsed();
    drop(made);
    took
}

/// One case: runs `iters` calls, returns the time they took.
type Run<'a> = Box<dyn FnMut(u64) -> Duration + 'a>;

const BATCH: Duration = Duration::from_millis(10);

/// Runs the cases interleaved for `rounds` rounds; returns, per case, the
/// mean time per call of each round (seconds).
fn interleaved(cases: &mut [(&str, Run<'_>)], rounds: usize) -> Vec<Vec<f64>> {
    // Warm up and calibrate: double the batch until it takes BATCH.
    let mut iters = Vec::new();
    for (_, run) in cases.iter_mut() {
        let mut k = 1u64;
        loop {
            let took = run(k);
            if took >= BATCH || k >= 1 << 20 {
                break;
            }
            k *= 2;
        }
        iters.push(k);
    }
    let mut per = vec![Vec::with_capacity(rounds); cases.len()];
    for r in 0..rounds {
        for j in 0..cases.len() {
            let c = (r + j) % cases.len();
            let took = (cases[c].1)(iters[c]);
            per[c].push(took.as_secs_f64() / iters[c] as f64);
        }
    }
    per
}

fn median(v: impl IntoIterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = v.into_iter().collect();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Median of the per-round ratios a / b.
fn ratio(a: &[f64], b: &[f64]) -> f64 {
    median(a.iter().zip(b).map(|(x, y)| x / y))
}

/// Median of the per-round differences a - b.
fn minus(a: &[f64], b: &[f64]) -> f64 {
    median(a.iter().zip(b).map(|(x, y)| x - y))
}

/// The interquartile range of the per-round differences a - b.
fn minus_iqr(a: &[f64], b: &[f64]) -> String {
    let mut v: Vec<f64> = a.iter().zip(b).map(|(x, y)| x - y).collect();
    v.sort_by(f64::total_cmp);
    format!("{} to {}", fmt(v[v.len() / 4]), fmt(v[v.len() * 3 / 4]))
}

fn fmt(secs: f64) -> String {
    let us = secs * 1e6;
    if us >= 1000.0 {
        format!("{:.2} ms", us / 1000.0)
    } else if us >= 100.0 {
        format!("{us:.0} µs")
    } else {
        format!("{us:.2} µs")
    }
}

fn new_session(rt: &tokio::runtime::Runtime, engine: &StateTemplate, rounds: usize) {
    let plain = env();
    println!("## new_session ({rounds} interleaved rounds, medians)\n");
    println!(
        "| page | bare minijinja | fragment render | `new_session` | `new_session` / bare | \
         `new_session` - fragment render (session layer; IQR) | fragment render, dropped in the loop |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (name, tmpl, d) in pages() {
        let t = plain.get_template(tmpl).unwrap();
        let d = &d;
        let mut cases: Vec<(&str, Run<'_>)> = vec![
            (
                "bare",
                Box::new(|iters| {
                    keep_outputs(iters, || t.render(minijinja::value::Serde(d)).unwrap())
                }),
            ),
            (
                "fragment",
                Box::new(|iters| {
                    keep_outputs(iters, || {
                        let page = engine.fragments().render(tmpl, d).unwrap();
                        let html = page.html();
                        (page, html)
                    })
                }),
            ),
            (
                "new_session",
                Box::new(|iters| {
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
                }),
            ),
            (
                "fragment_drop_in_loop",
                Box::new(|iters| {
                    let t = Instant::now();
                    for _ in 0..iters {
                        std::hint::black_box(engine.fragments().render(tmpl, d).unwrap().html());
                    }
                    t.elapsed()
                }),
            ),
        ];
        let per = interleaved(&mut cases, rounds);
        let [bare, frag, sess, drop_in] = &per[..] else {
            unreachable!()
        };
        println!(
            "| {name} | {} | {} | {} | {:.2}x | {} ({}) | {} |",
            fmt(median(bare.iter().copied())),
            fmt(median(frag.iter().copied())),
            fmt(median(sess.iter().copied())),
            ratio(sess, bare),
            fmt(minus(sess, frag)),
            minus_iqr(sess, frag),
            fmt(median(drop_in.iter().copied())),
        );
    }
    println!();
}

fn render(rt: &tokio::runtime::Runtime, engine: &StateTemplate, rounds: usize) {
    println!("## session render ({rounds} interleaved rounds, medians)\n");
    println!(
        "| page | `LivePage::update` | `Session::render` | `Session::render` + one subscriber receiving | \
         session layer (render - update; IQR) |"
    );
    println!("|---|---:|---:|---:|---:|");
    let mut changed = table(100);
    changed["updated"] = json!("12:00:01");
    let cases = [
        ("small, one field", "small.html", small(1), small(2)),
        (
            "table 100 rows, one field",
            "table.html",
            table(100),
            changed,
        ),
    ];
    for (name, tmpl, a, b) in cases {
        let (a, b) = (&a, &b);
        // One field changed and changed back; only the change is timed.
        let mut page = engine.fragments().render(tmpl, a).unwrap();
        let session = |subscribed: bool| {
            rt.block_on(async {
                let i = engine.new_session(tmpl, a).await.unwrap();
                let s = engine
                    .get_session(&i.session_id.to_string(), &i.token)
                    .await
                    .unwrap();
                let sub = subscribed.then(|| s.updates());
                (s, sub)
            })
        };
        let mut runs: Vec<(&str, Run<'_>)> = vec![(
            "update",
            Box::new(move |iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let t = Instant::now();
                    std::hint::black_box(page.update(b).unwrap());
                    total += t.elapsed();
                    page.update(a).unwrap();
                }
                total
            }),
        )];
        for subscribed in [false, true] {
            let (s, mut sub) = session(subscribed);
            runs.push((
                "render",
                Box::new(move |iters| {
                    rt.block_on(async {
                        let mut total = Duration::ZERO;
                        for _ in 0..iters {
                            let t = Instant::now();
                            s.render(b).await.unwrap();
                            if let Some(sub) = sub.as_mut() {
                                std::hint::black_box(sub.recv().await.unwrap());
                            }
                            total += t.elapsed();
                            s.render(a).await.unwrap();
                            if let Some(sub) = sub.as_mut() {
                                sub.recv().await.unwrap();
                            }
                        }
                        total
                    })
                }),
            ));
        }
        let per = interleaved(&mut runs, rounds);
        let [upd, ren, sub] = &per[..] else {
            unreachable!()
        };
        println!(
            "| {name} | {} | {} | {} | {} ({}) |",
            fmt(median(upd.iter().copied())),
            fmt(median(ren.iter().copied())),
            fmt(median(sub.iter().copied())),
            fmt(minus(ren, upd)),
            minus_iqr(ren, upd),
        );
    }
    println!();
}

fn main() {
    // `cargo bench` passes `--bench`; without it (`cargo test --benches`)
    // this is a quick smoke run.
    let bench = std::env::args().any(|a| a == "--bench");
    let rounds = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(if bench { 60 } else { 2 });
    let (rt, engine) = runtime_and_engine();
    new_session(&rt, &engine, rounds);
    render(&rt, &engine, rounds);
}
