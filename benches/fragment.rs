#![allow(missing_docs)]
//! Fragment engine benchmarks. Each case runs next to its baseline in the
//! same run. Run: `cargo bench --bench fragment`; results in docs/benchmarks.md.
//!
//! `FRAGMENT_CALLGRIND=PAGE:N` (PAGE `counter` or `table_ROWS`) skips
//! criterion and renders the page N times fresh and N times with bare
//! minijinja, in `fresh_renders` and `bare_renders`, keeping what they
//! built (dropped outside them): run it under
//! `valgrind --tool=callgrind` and compare the two functions' inclusive
//! instruction counts.

use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, criterion_group};
use minijinja::Environment;
use serde_json::{Value as Json, json};
use statetemplate::{FragmentEngine, LivePage};

const PAGE: &str = include_str!("../templates/table.html");
const COUNTER: &str = include_str!("../templates/counter.html");

fn env() -> Environment<'static> {
    let mut env = Environment::new();
    env.add_template("table.html", PAGE).unwrap();
    env.add_template("counter.html", COUNTER).unwrap();
    statetemplate::fragment::register_filters(&mut env);
    env
}

fn row(i: usize) -> Json {
    json!({"id": i, "name": format!("User {i}"), "email": format!("user{i}@example.com"), "score": i * 7 % 100, "active": i % 3 == 0})
}

fn data(n: usize) -> Json {
    json!({
        "title": "Dashboard",
        "user": {"name": "Ann", "role": "admin"},
        "updated": "12:00:00",
        "rows": (0..n).map(row).collect::<Vec<_>>(),
    })
}

fn variants(n: usize) -> Vec<(&'static str, Json, Json)> {
    let base = data(n);
    let mut scalar = base.clone();
    scalar["updated"] = json!("12:00:01");
    let mut changed = base.clone();
    changed["rows"][n / 2]["score"] = json!(1000);
    let mut appended = base.clone();
    appended["rows"].as_array_mut().unwrap().push(row(n));
    let mut removed = base.clone();
    removed["rows"].as_array_mut().unwrap().remove(n / 2);
    vec![
        ("identical", base.clone(), base.clone()),
        ("scalar", base.clone(), scalar),
        ("row_changed", base.clone(), changed),
        ("row_appended", base.clone(), appended),
        ("row_removed", base, removed),
    ]
}

/// Bytes on the wire and annotation overhead, printed once (deterministic).
fn bytes_report() {
    let engine = FragmentEngine::new(env());
    println!("\n| rows | case | ops | wire frame bytes | seed updates JSON bytes |");
    println!("|---:|---|---:|---:|---:|");
    for n in [100, 1000, 10_000] {
        for (name, a, b) in variants(n) {
            let mut page = engine.render("table.html", &a).unwrap();
            let _ = page.join_frame();
            let patch = page.update(&b).unwrap();
            let frame = page.encode(&patch).map_or(0, |f| f.len());
            let json_len = serde_json::to_string(&patch.updates()).unwrap().len();
            let json_len = if patch.is_empty() { 0 } else { json_len };
            println!("| {n} | {name} | {} | {frame} | {json_len} |", patch.len());
        }
    }
    println!("\n| rows | bare HTML bytes | annotated HTML bytes | overhead | join frame bytes |");
    println!("|---:|---:|---:|---:|---:|");
    let plain = env();
    for n in [100, 1000, 10_000] {
        let d = data(n);
        let bare = plain
            .get_template("table.html")
            .unwrap()
            .render(minijinja::value::Serde(&d))
            .unwrap();
        let mut page = engine.render("table.html", &d).unwrap();
        let html = page.html();
        let join = page.join_frame();
        println!(
            "| {n} | {} | {} | {:.1}% | {} |",
            bare.len(),
            html.len(),
            100.0 * (html.len() as f64 - bare.len() as f64) / bare.len() as f64,
            join.len()
        );
    }
    println!();
}

/// The pages of the initial-render comparison: the counter page and the
/// table at 100, 1,000 and 10,000 rows.
fn initial_pages() -> Vec<(String, &'static str, Json)> {
    let mut pages = vec![(
        "counter".to_owned(),
        "counter.html",
        json!({"count": 42, "note": "milk & <eggs>", "clock": "12:00:00"}),
    )];
    for n in [100, 1000, 10_000] {
        pages.push((format!("table_{n}"), "table.html", data(n)));
    }
    pages
}

/// A fresh render (`FragmentEngine::render`, what `new_session` does) next
/// to a bare minijinja render of the same template and data. Both keep
/// what they built until the clock stops (`iter_with_large_drop`): the
/// page tree is freed when the session ends, not when it is created.
fn initial(c: &mut Criterion) {
    let engine = FragmentEngine::new(env());
    let plain = env();
    let mut g = c.benchmark_group("initial_render");
    for (name, tmpl, d) in initial_pages() {
        if name == "table_10000" {
            g.sample_size(10);
        }
        g.bench_with_input(BenchmarkId::new("statetemplate", &name), &d, |b, d| {
            b.iter_with_large_drop(|| engine.render(tmpl, d).unwrap())
        });
        g.bench_with_input(BenchmarkId::new("bare_minijinja", &name), &d, |b, d| {
            let t = plain.get_template(tmpl).unwrap();
            b.iter_with_large_drop(|| t.render(minijinja::value::Serde(d)).unwrap())
        });
    }
    g.finish();
}

#[inline(never)]
fn fresh_renders(engine: &FragmentEngine, tmpl: &str, d: &Json, n: usize) -> Vec<LivePage> {
    (0..n).map(|_| engine.render(tmpl, d).unwrap()).collect()
}

#[inline(never)]
fn bare_renders(env: &Environment<'static>, tmpl: &str, d: &Json, n: usize) -> Vec<String> {
    let t = env.get_template(tmpl).unwrap();
    (0..n)
        .map(|_| t.render(minijinja::value::Serde(d)).unwrap())
        .collect()
}

/// The `FRAGMENT_CALLGRIND` mode (see the top of this file).
fn callgrind(spec: &str) {
    let (page, n) = spec.split_once(':').expect("PAGE:N");
    let n: usize = n.parse().expect("N");
    let (_, tmpl, d) = initial_pages()
        .into_iter()
        .find(|(name, _, _)| name == page)
        .expect("page: counter or table_ROWS");
    let engine = FragmentEngine::new(env());
    let plain = env();
    // Compile once outside the measured functions.
    drop(engine.render(tmpl, &d).unwrap());
    let pages = fresh_renders(&engine, tmpl, &d, n);
    let html = bare_renders(&plain, tmpl, &d, n);
    assert_eq!(
        statetemplate::testing::strip_anchors(&pages[0].html()),
        html[0]
    );
    std::hint::black_box((pages, html));
}

/// Times `page.update(to)` only; the way back (`update(from)`) is untimed.
fn timed_updates(engine: &FragmentEngine, from: &Json, to: &Json, iters: u64) -> Duration {
    let mut page = engine.render("table.html", from).unwrap();
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let t = Instant::now();
        let p = page.update(to).unwrap();
        total += t.elapsed();
        std::hint::black_box(p);
        let _ = page.update(from).unwrap();
    }
    total
}

fn updates(c: &mut Criterion) {
    let engine = FragmentEngine::new(env());
    let plain = env();
    for n in [100, 1000, 10_000] {
        let mut g = c.benchmark_group(format!("update_{n}_rows"));
        if n == 10_000 {
            g.sample_size(10);
        }
        for (name, a, b) in variants(n) {
            g.bench_function(BenchmarkId::new("incremental", name), |bench| {
                bench.iter_custom(|iters| timed_updates(&engine, &a, &b, iters))
            });
        }
        let (_, _, changed) = &variants(n)[2];
        g.bench_function(
            BenchmarkId::new("full_rerender_bare_minijinja", "row_changed"),
            |bench| {
                let t = plain.get_template("table.html").unwrap();
                bench.iter(|| t.render(minijinja::value::Serde(changed)).unwrap())
            },
        );
        g.bench_function(
            BenchmarkId::new("full_rerender_statetemplate", "row_changed"),
            |bench| bench.iter(|| engine.render("table.html", changed).unwrap()),
        );
        g.bench_function(
            BenchmarkId::new("data_to_value_only", "snapshot"),
            |bench| {
                // Converting one snapshot to template values: part of the floor for
                // any update of this page.
                bench.iter(|| {
                    let a = minijinja::Value::from(minijinja::value::Serde(&variants_base(n)));
                    std::hint::black_box(a)
                })
            },
        );
        g.finish();
    }
}

fn variants_base(n: usize) -> &'static Json {
    use std::sync::OnceLock;
    static D: OnceLock<Vec<(usize, Json)>> = OnceLock::new();
    let v = D.get_or_init(|| [100, 1000, 10_000].iter().map(|&n| (n, data(n))).collect());
    &v.iter().find(|(k, _)| *k == n).unwrap().1
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = initial, updates
}

fn main() {
    if let Ok(spec) = std::env::var("FRAGMENT_CALLGRIND") {
        callgrind(&spec);
        return;
    }
    bytes_report();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
