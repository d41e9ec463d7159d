#![allow(missing_docs)]
//! Bytes on the wire, deterministically, for the pages of
//! `../shared/peers/dioxus-liveview` (the same templates as `benches/e2e.rs`):
//! one frame per scenario step, the page, the connect, and the plain HTML.
//!
//! Run: `cargo bench --bench wire_bytes` (`-- -v` prints every frame).

mod support;

use minijinja::Environment;
use serde::Serialize;
use statetemplate::FragmentEngine;
use support::{COUNTER, Row, TABLE, make_row};

#[derive(Serialize, Clone)]
struct Counter {
    count: i64,
    status: &'static str,
    ts: String,
}

fn counter(count: i64, tick: u64) -> Counter {
    Counter {
        count,
        status: match count.signum() {
            1 => "positive",
            -1 => "negative",
            _ => "zero",
        },
        // The peer's footer: seconds and microseconds (17 bytes).
        ts: format!(
            "{}.{:06}",
            1_796_000_000 + tick / 1000,
            (tick * 7919) % 1_000_000
        ),
    }
}

#[derive(Serialize, Clone)]
struct Table {
    rows: Vec<Row>,
}

fn median(mut v: Vec<usize>) -> usize {
    v.sort_unstable();
    v[v.len() / 2]
}

fn main() {
    let verbose = std::env::args().any(|a| a == "-v");
    // `--fixture PATH`: the tables' pages, statics and join frames for
    // tests/browser/read_bench.mjs.
    let args: Vec<String> = std::env::args().collect();
    let fixture = args
        .iter()
        .position(|a| a == "--fixture")
        .and_then(|i| args.get(i + 1).cloned());
    let mut fixture_cases = Vec::new();
    let mut env = Environment::new();
    env.add_template("counter.html", COUNTER).unwrap();
    env.add_template("table.html", TABLE).unwrap();
    let plain_env = env.clone();
    let engine = FragmentEngine::new(env);
    let steps = 50;
    println!(
        "{:<32} {:>9} {:>9} {:>9}",
        "scenario", "B/upd med", "min", "max"
    );
    let report = |name: &str, frames: Vec<String>| {
        if verbose {
            for f in frames.iter().take(3) {
                println!("  {name}: {f}");
            }
        }
        let b: Vec<usize> = frames.iter().map(|f| f.len()).collect();
        let (lo, hi) = (*b.iter().min().unwrap(), *b.iter().max().unwrap());
        println!("{:<32} {:>9} {:>9} {:>9}", name, median(b), lo, hi);
    };

    // Counter: +1 from 1 (status stays positive), and +1/-1 across zero.
    let mut page = engine.render("counter.html", &counter(1, 0)).unwrap();
    let plain = plain_env
        .get_template("counter.html")
        .unwrap()
        .render(minijinja::value::Serde(&counter(1, 0)))
        .unwrap();
    println!(
        "counter: page {} B, plain HTML {} B; connect from the page: statics {} B in the hello, against a join frame of {} B",
        page.html().len(),
        plain.len(),
        page.page_statics()
            .expect("the counter reads from its page")
            .len(),
        page.join_frame().len()
    );
    let _ = page.join_frame();
    let mut frames = Vec::new();
    for i in 0..steps {
        let p = page.update(&counter(2 + i as i64, i + 1)).unwrap();
        frames.push(page.encode(&p).unwrap());
    }
    report("counter +1 (status const)", frames);
    let mut page = engine.render("counter.html", &counter(0, 0)).unwrap();
    let _ = page.join_frame();
    let mut frames = Vec::new();
    for i in 0..steps {
        let c = if i % 2 == 0 { 1 } else { -1 };
        let p = page.update(&counter(c, i + 1)).unwrap();
        frames.push(page.encode(&p).unwrap());
    }
    // The first switch to each branch may carry its statics; the median is
    // over the steady state, as the peer's is after its warm-up.
    report("counter +1/-1 (status flips)", frames.split_off(10));

    for n in [100usize, 1000, 10_000] {
        let mut t = Table {
            rows: (1..=n as u64).map(make_row).collect(),
        };
        let mut next = n as u64 + 1;
        let mut page = engine.render("table.html", &t).unwrap();
        let html = page.html();
        let plain = plain_env
            .get_template("table.html")
            .unwrap()
            .render(minijinja::value::Serde(&t))
            .unwrap();
        // A connect from the page: the hello with the page's statics (a
        // 16-digit epoch and a 92-byte token, as the server sends them).
        let statics = page.page_statics().expect("the table reads from its page");
        let hello = format!(
            "{{\"t\":\"hello\",\"v\":2,\"epoch\":\"{}\",\"token\":\"{}\",\"max\":65536}}",
            "0".repeat(16),
            "A".repeat(92)
        );
        let join = page.join_frame();
        if n >= 1000 {
            fixture_cases.push(serde_json::json!({"name": format!("table_{n}"), "html": [&html], "statics": &statics, "frames": [&join]}));
        }
        println!(
            "table {n}: page {} B, join frame {} B, plain HTML {} B: page + join = {:.2}x plain",
            html.len(),
            join.len(),
            plain.len(),
            (html.len() + join.len()) as f64 / plain.len() as f64
        );
        println!(
            "table {n}: connect from the page: hello {} B (statics {} B) against hello {} B + join {} B: page + hello = {:.3}x plain (was {:.3}x)",
            hello.len() + 5 + statics.len(),
            statics.len(),
            hello.len(),
            join.len(),
            (html.len() + hello.len() + 5 + statics.len()) as f64 / plain.len() as f64,
            (html.len() + hello.len() + join.len()) as f64 / plain.len() as f64,
        );
        let mut frames = Vec::new();
        for k in 0..steps {
            let i = (k as usize).wrapping_mul(7919) % t.rows.len();
            t.rows[i].amount += 1;
            let p = page.update(&t).unwrap();
            frames.push(page.encode(&p).unwrap());
        }
        report(&format!("table N={n}: change 1 amount"), frames);
        let (mut app, mut rem) = (Vec::new(), Vec::new());
        for k in 0..steps * 2 {
            if k % 2 == 0 {
                t.rows.push(make_row(next));
                next += 1;
            } else {
                let i = t.rows.len() / 2;
                t.rows.remove(i);
            }
            let p = page.update(&t).unwrap();
            let f = page.encode(&p).unwrap();
            if k % 2 == 0 { app.push(f) } else { rem.push(f) }
        }
        report(&format!("table N={n}: append 1 row"), app);
        report(&format!("table N={n}: remove 1 row"), rem);
    }
    if let Some(path) = fixture {
        let f = serde_json::json!({ "cases": fixture_cases });
        std::fs::write(&path, f.to_string()).expect("the fixture file");
        println!("fixture written to {path}");
    }
}
