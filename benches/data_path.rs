#![allow(missing_docs)]
//! The data path (issue 12): what one data change costs, from the app's data
//! to the encoded frame, next to a bare minijinja render of the same page in
//! the same run. The pages are those of `../shared/peers/dioxus-liveview`
//! (and of `benches/e2e.rs`): a counter, and a table of N rows whose status
//! class derives from the amount.
//!
//! Run: `cargo bench --bench data_path`; results in docs/benchmarks.md.

use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, criterion_group};
use minijinja::Environment;
use minijinja::value::{Serde, Value};
use serde::Serialize;
use statetemplate::fragment::{Delta, DeltaOp};
use statetemplate::{FragmentEngine, LivePage};

const COUNTER: &str = r#"<main class="counter"><h1>Live counter</h1><p class="count">{{ count }}</p><p class="status status-{{ status }}">The count is {{ status }}</p><button st-click="inc">+1</button><button st-click="dec">-1</button><footer>Last rendered at {{ ts }}</footer></main>"#;
const TABLE: &str = r#"<main class="table"><h1>Accounts</h1><div class="controls"><button st-click="update">update</button><button st-click="append">append</button><button st-click="remove">remove</button></div><p class="rowcount">{{ rows|length }} rows</p><table><thead><tr><th>id</th><th>name</th><th>amount</th><th>status</th></tr></thead><tbody>{% for r in rows %}{% set status = "paid" if r.amount % 2 == 0 else "pending" %}<tr><td>{{ r.id }}</td><td>{{ r.name }}</td><td>{{ r.amount }}</td><td class="st-{{ status }}">{{ status }}</td></tr>{% endfor %}</tbody></table></main>"#;

#[derive(Serialize, Clone)]
struct Counter {
    count: i64,
    status: &'static str,
    ts: String,
}

#[derive(Serialize, Clone)]
struct Row {
    id: u64,
    name: String,
    amount: i64,
}

#[derive(Serialize, Clone)]
struct Table {
    rows: Vec<Row>,
}

fn row(id: u64) -> Row {
    Row {
        id,
        name: format!("Customer {id:05}"),
        amount: ((id * 7919) % 10_000) as i64,
    }
}

fn table(n: usize) -> Table {
    Table {
        rows: (1..=n as u64).map(row).collect(),
    }
}

fn env() -> Environment<'static> {
    let mut env = Environment::new();
    env.add_template("counter.html", COUNTER).unwrap();
    env.add_template("table.html", TABLE).unwrap();
    statetemplate::fragment::register_filters(&mut env);
    env
}

/// Times `forward` (update and encode); `back` restores the page untimed.
fn alternate(
    page: &mut LivePage,
    iters: u64,
    mut forward: impl FnMut(&mut LivePage) -> statetemplate::Patch,
    mut back: impl FnMut(&mut LivePage),
) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let t = Instant::now();
        let p = forward(page);
        let f = page.encode(&p);
        total += t.elapsed();
        std::hint::black_box(f);
        back(page);
    }
    total
}

fn path(steps: &[Value]) -> Vec<Value> {
    steps.to_vec()
}

fn tables(c: &mut Criterion) {
    let engine = FragmentEngine::new(env());
    let plain = env();
    for n in [100usize, 1000, 10_000] {
        let mut g = c.benchmark_group(format!("table_{n}"));
        if n == 10_000 {
            g.sample_size(15);
        }
        let base = table(n);
        let mid = n / 2;
        let mut changed = base.clone();
        changed.rows[mid].amount += 1;
        let mut appended = base.clone();
        appended.rows.push(row(n as u64 + 1));
        let mut removed = base.clone();
        removed.rows.remove(mid);

        g.bench_function(BenchmarkId::new("bare_minijinja_render", n), |b| {
            let t = plain.get_template("table.html").unwrap();
            b.iter(|| t.render(Serde(&changed)).unwrap())
        });
        let mut page = engine.render("table.html", &base).unwrap();
        let _ = page.join_frame();
        g.bench_function(BenchmarkId::new("update_identical", n), |b| {
            b.iter(|| {
                let p = page.update(&base).unwrap();
                assert!(p.is_empty());
                p
            })
        });
        for (name, to) in [
            ("update_row_changed", &changed),
            ("update_row_appended", &appended),
            ("update_row_removed", &removed),
        ] {
            g.bench_function(BenchmarkId::new(name, n), |b| {
                b.iter_custom(|iters| {
                    alternate(
                        &mut page,
                        iters,
                        |p| p.update(to).unwrap(),
                        |p| {
                            p.update(&base).unwrap();
                        },
                    )
                })
            });
        }
        // The targeted API: the app says which value changed.
        let at = path(&[Value::from("rows"), Value::from(mid), Value::from("amount")]);
        let set = |v: i64| {
            Delta::new([DeltaOp::Set {
                path: at.clone(),
                value: Value::from(v),
            }])
        };
        let (old_amount, new_amount) = (base.rows[mid].amount, changed.rows[mid].amount);
        g.bench_function(BenchmarkId::new("apply_row_changed", n), |b| {
            b.iter_custom(|iters| {
                alternate(
                    &mut page,
                    iters,
                    |p| p.apply(set(new_amount)).unwrap(),
                    |p| {
                        p.apply(set(old_amount)).unwrap();
                    },
                )
            })
        });
        let rows = path(&[Value::from("rows")]);
        let new_row = Value::from(Serde(&appended.rows[n]));
        g.bench_function(BenchmarkId::new("apply_row_appended", n), |b| {
            b.iter_custom(|iters| {
                alternate(
                    &mut page,
                    iters,
                    |p| {
                        p.apply(Delta::new([DeltaOp::Insert {
                            path: rows.clone(),
                            index: n,
                            value: new_row.clone(),
                        }]))
                        .unwrap()
                    },
                    |p| {
                        p.apply(Delta::new([DeltaOp::Remove {
                            path: rows.clone(),
                            index: n,
                        }]))
                        .unwrap();
                    },
                )
            })
        });
        g.finish();
    }
}

/// The counter's two states: an update between them changes three values.
fn counters() -> (Counter, Counter) {
    let a = Counter {
        count: 0,
        status: "zero",
        ts: "1764547200.000001".into(),
    };
    let b = Counter {
        count: 1,
        status: "positive",
        ts: "1764547200.000002".into(),
    };
    (a, b)
}

fn counter(c: &mut Criterion) {
    let engine = FragmentEngine::new(env());
    let plain = env();
    let mut g = c.benchmark_group("counter");
    let (a, b) = counters();
    g.bench_function("bare_minijinja_render", |bench| {
        let t = plain.get_template("counter.html").unwrap();
        bench.iter(|| t.render(Serde(&b)).unwrap())
    });
    let mut page = engine.render("counter.html", &a).unwrap();
    let _ = page.join_frame();
    g.bench_function("update_count_changed", |bench| {
        bench.iter_custom(|iters| {
            alternate(
                &mut page,
                iters,
                |p| p.update(&b).unwrap(),
                |p| {
                    p.update(&a).unwrap();
                },
            )
        })
    });
    g.finish();
}

/// The cost of looking for edited templates (`FragmentEngine::reload`):
/// the default (at most once a second), off, and on every render (the
/// worst case), on a 100-row table, in the same run.
fn reload(c: &mut Criterion) {
    let mut g = c.benchmark_group("reload_check");
    let base = table(100);
    let mut changed = base.clone();
    changed.rows[50].amount += 1;
    for (name, every) in [
        ("default_1s", Some(Duration::from_secs(1))),
        ("off", None),
        ("every_render", Some(Duration::ZERO)),
    ] {
        let engine = FragmentEngine::new(env());
        engine.reload_interval(every);
        let mut page = engine.render("table.html", &base).unwrap();
        let _ = page.join_frame();
        g.bench_function(BenchmarkId::new("update_identical", name), |b| {
            b.iter(|| page.update(&base).unwrap())
        });
        g.bench_function(BenchmarkId::new("update_row_changed", name), |b| {
            b.iter_custom(|iters| {
                alternate(
                    &mut page,
                    iters,
                    |p| p.update(&changed).unwrap(),
                    |p| {
                        p.update(&base).unwrap();
                    },
                )
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = counter, tables, reload
}

/// `DATA_PATH_COUNT=case:rows:iterations`: runs one case that many times
/// (`bare`, `identical`, `changed`, `appended`, `removed` (each
/// alternating with the base data), `apply`; `counter` and `counter_bare`
/// for the counter page, rows ignored)
/// and exits, for instruction counts (`valgrind --tool=callgrind`): run with
/// 0 and with N iterations; the difference over N is one operation's cost,
/// repeatable on a busy machine.
fn count_mode(spec: &str) {
    let mut it = spec.split(':');
    let (case, n, k) = (
        it.next().unwrap_or(""),
        it.next()
            .and_then(|n| n.parse::<usize>().ok())
            .unwrap_or(1000),
        it.next().and_then(|n| n.parse::<usize>().ok()).unwrap_or(0),
    );
    let engine = FragmentEngine::new(env());
    let plain = env();
    if let Some(which) = case.strip_prefix("counter") {
        // `counter` (an update with 3 values changed, and its frame) or
        // `counter_bare` (a bare render); `n` is ignored.
        let (a, b) = counters();
        let t = plain.get_template("counter.html").unwrap();
        let mut page = engine.render("counter.html", &a).unwrap();
        let _ = page.join_frame();
        for i in 0..k {
            let to = if i % 2 == 0 { &b } else { &a };
            if which == "_bare" {
                drop(std::hint::black_box(t.render(Serde(to)).unwrap()));
            } else {
                let p = page.update(to).unwrap();
                std::hint::black_box(page.encode(&p));
            }
        }
        return;
    }
    let base = table(n);
    let mut changed = base.clone();
    changed.rows[n / 2].amount += 1;
    let mut appended = base.clone();
    appended.rows.push(row(n as u64 + 1));
    let mut removed = base.clone();
    removed.rows.remove(n / 2);
    let mut page = engine.render("table.html", &base).unwrap();
    let _ = page.join_frame();
    let t = plain.get_template("table.html").unwrap();
    let at = vec![
        Value::from("rows"),
        Value::from(n / 2),
        Value::from("amount"),
    ];
    for i in 0..k {
        match case {
            "bare" => drop(std::hint::black_box(t.render(Serde(&changed)).unwrap())),
            "identical" => drop(std::hint::black_box(page.update(&base).unwrap())),
            "changed" | "appended" | "removed" => {
                let other = match case {
                    "changed" => &changed,
                    "appended" => &appended,
                    _ => &removed,
                };
                let to = if i % 2 == 0 { other } else { &base };
                let p = page.update(to).unwrap();
                std::hint::black_box(page.encode(&p));
            }
            "apply" => {
                let v = if i % 2 == 0 {
                    changed.rows[n / 2].amount
                } else {
                    base.rows[n / 2].amount
                };
                let p = page
                    .apply(Delta::new([DeltaOp::Set {
                        path: at.clone(),
                        value: Value::from(v),
                    }]))
                    .unwrap();
                std::hint::black_box(page.encode(&p));
            }
            other => panic!("unknown case {other}"),
        }
    }
}

fn main() {
    if let Ok(spec) = std::env::var("DATA_PATH_COUNT") {
        count_mode(&spec);
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
