//! Granularity of the constructs that share state or control flow
//! (namespaces, `do`, `break`/`continue`, recursive loops, `call` and
//! `filter` blocks): a change re-renders and re-sends at most the smallest
//! fragment enclosing the construct, never the page. Every sequence also
//! goes through all the oracles of `common::run`.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use minijinja::Environment;
use serde_json::{Value as Json, json};
use statetemplate::FragmentEngine;

/// The template as `main.html`, with a `probe(x)` function that returns
/// `x` and counts its calls: what a step re-rendered.
fn env_of(src: &str) -> (Environment<'static>, Arc<AtomicUsize>) {
    let mut env = Environment::new();
    env.add_template_owned(common::MAIN, src.to_owned())
        .unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    env.add_function("probe", move |v: minijinja::Value| {
        c.fetch_add(1, Ordering::Relaxed);
        v
    });
    (env, calls)
}

/// What one step produced: operations, the wire frame, and how many
/// `probe` calls it re-rendered.
#[derive(Debug)]
struct Step {
    ops: usize,
    frame: String,
    renders: usize,
}

/// Checks every oracle over `steps`, then runs them again on a fresh page
/// and returns what each step after the first produced.
fn steps(src: &str, steps: &[Json]) -> Vec<Step> {
    let (env, calls) = env_of(src);
    let engine = FragmentEngine::new(env);
    let bare = common::bare_main(&engine);
    common::run_against(&engine, &bare, steps).unwrap_or_else(|e| panic!("{e}"));
    let mut page = engine.render(common::MAIN, &steps[0]).unwrap();
    page.join_frame();
    steps[1..]
        .iter()
        .map(|d| {
            let before = calls.load(Ordering::Relaxed);
            let p = page.update(d).unwrap();
            Step {
                ops: p.len(),
                frame: page.encode(&p).unwrap_or_default(),
                renders: calls.load(Ordering::Relaxed) - before,
            }
        })
        .collect()
}

fn with(base: &Json, path: &[&str], v: Json) -> Json {
    let mut out = base.clone();
    let mut at = &mut out;
    for p in path {
        at = match p.parse::<usize>() {
            Ok(i) => &mut at[i],
            Err(_) => &mut at[*p],
        };
    }
    *at = v;
    out
}

/// A step's frame holds one operation, is small and does not contain any
/// of `absent`; it re-rendered `renders` probes.
#[track_caller]
fn small(s: &Step, renders: usize, absent: &[&str]) {
    assert_eq!(s.ops, 1, "{s:?}");
    assert!(s.frame.len() < 80, "{s:?}");
    for a in absent {
        assert!(!s.frame.contains(a), "{a} in {s:?}");
    }
    assert_eq!(s.renders, renders, "re-rendered probes: {s:?}");
}

#[test]
fn a_namespace_loop_is_patched_by_row_and_rendered_only_when_it_reads_a_change() {
    let src = r#"<h1>{{ title }}</h1>
{% set ns = namespace(total=0) %}<ul>{% for i in items %}{% set ns.total = ns.total + i.price %}<li>{{ probe(i.name) }}: {{ ns.total }}</li>{% endfor %}</ul>
<p>Total {{ ns.total }}</p>
<footer>{{ footer }}</footer><aside>{{ probe(other) }}</aside>"#;
    let d0 = json!({"title": "t", "footer": "f", "other": "o", "items": [
        {"id": 1, "name": "first-item", "price": 1},
        {"id": 2, "name": "second-item", "price": 2},
        {"id": 3, "name": "third-item", "price": 3},
    ]});
    let d1 = with(&d0, &["footer"], json!("F"));
    let d2 = with(&d1, &["other"], json!("O"));
    let d3 = with(&d2, &["items", "1", "price"], json!(20));
    let d4 = with(&d3, &["title"], json!("T"));
    let out = steps(src, &[d0, d1, d2, d3, d4]);
    // Outside the namespace's region: one leaf each; the region does not
    // run.
    small(&out[0], 0, &["item"]);
    small(&out[1], 1, &["item"]);
    small(&out[3], 0, &["item"]);
    // Inside: the region runs again, all its rows; what is sent is the rows
    // whose running total moved and the total, not the first row, the
    // title or the footer.
    let s = &out[2];
    assert_eq!((s.ops, s.renders), (3, 3), "{s:?}");
    assert!(
        s.frame.contains("\"21\"")
            && s.frame.contains("\"24\"")
            && !s.frame.contains("first")
            && !s.frame.contains('F'),
        "{s:?}"
    );
}

#[test]
fn do_statements_and_macros_that_change_a_namespace() {
    let src = r#"{% macro bump(ns, n) %}{% set ns.n = ns.n + n %}{% endmacro %}<h1>{{ title }}</h1>
{% set ns = namespace(n=0) %}{% for i in items %}{% do bump(ns, probe(i.n)) %}<b>{{ i.name }}</b>{% endfor %}<p>{{ ns.n }}</p>
{% do probe(footer) %}<footer>{{ footer }}</footer>"#;
    let d0 = json!({"title": "t", "footer": "f", "items": [{"id": 1, "name": "x", "n": 1}, {"id": 2, "name": "y", "n": 2}]});
    let d1 = with(&d0, &["title"], json!("T"));
    let d2 = with(&d1, &["footer"], json!("F"));
    let d3 = with(&d2, &["items", "1", "n"], json!(5));
    let out = steps(src, &[d0, d1, d2, d3]);
    small(&out[0], 0, &[]);
    small(&out[1], 1, &[]);
    // Only the total changes on the page; the region ran for both items.
    small(&out[2], 2, &["x"]);
    assert!(out[2].frame.contains("\"6\""), "{out:?}");
}

#[test]
fn a_loop_with_break_or_continue_is_one_fragment_not_the_page() {
    let src = r#"<h1>{{ title }}</h1>
<ul>{% for i in items %}{% if i.skip %}{% continue %}{% endif %}<li>{{ probe(i.name) }}</li>{% if i.stop %}{% break %}{% endif %}{% endfor %}</ul>
<footer>{{ footer }}</footer>"#;
    let d0 = json!({"title": "t", "footer": "f", "items": [{"name": "a"}, {"name": "b", "skip": true}, {"name": "c", "stop": true}, {"name": "d"}]});
    let d1 = with(&d0, &["title"], json!("T"));
    let d2 = with(&d1, &["items", "2", "stop"], json!(false));
    let d3 = with(&d2, &["footer"], json!("F"));
    let out = steps(src, &[d0, d1, d2, d3]);
    small(&out[0], 0, &["<li>"]);
    small(&out[2], 0, &["<li>"]);
    // The loop, as one leaf: all its rows re-rendered and sent.
    let s = &out[1];
    assert_eq!((s.ops, s.renders), (1, 3), "{s:?}");
    assert!(
        s.frame.contains("<li>d</li>") && !s.frame.contains('T') && !s.frame.contains("footer"),
        "{s:?}"
    );
}

#[test]
fn a_recursive_loop_re_renders_the_path_to_a_change_and_patches_one_top_level_item() {
    let src = r#"<h1>{{ title }}</h1>
<ul>{% for n in tree recursive %}<li>{{ probe(n.name) }} {{ loop.depth }}{% if n.children %}<ul>{{ loop(n.children) }}</ul>{% endif %}</li>{% endfor %}</ul>
<footer>{{ footer }}</footer>"#;
    let d0 = json!({"title": "t", "footer": "f", "tree": [
        {"id": "a", "name": "a", "children": [
            {"id": "a1", "name": "a1", "children": [{"id": "a11", "name": "a11"}]},
            {"id": "a2", "name": "sibling"},
        ]},
        {"id": "b", "name": "other-root"},
    ]});
    let d1 = with(&d0, &["title"], json!("T"));
    let d2 = with(
        &d1,
        &["tree", "0", "children", "0", "children", "0", "name"],
        json!("deep"),
    );
    let d3 = with(&d2, &["footer"], json!("F"));
    let mut d4 = d3.clone();
    d4["tree"][0]["children"][0]["children"]
        .as_array_mut()
        .unwrap()
        .push(json!({"id": "a12", "name": "added"}));
    let mut d5 = d4.clone();
    d5["tree"][0]["children"].as_array_mut().unwrap().remove(1);
    let out = steps(src, &[d0, d1, d2, d3, d4, d5]);
    small(&out[0], 0, &["<li>"]);
    small(&out[2], 0, &["<li>"]);
    // The path to the change re-renders (a, a1, a11), not its siblings or
    // the other root; one patch, for the top-level item that holds it.
    for (s, renders, new) in [(&out[1], 3, "deep"), (&out[3], 3, "added")] {
        assert_eq!((s.ops, s.renders), (1, renders), "{s:?}");
        assert!(s.frame.starts_with("[[2,\"a\","), "{s:?}");
        assert!(
            s.frame.contains(new) && !s.frame.contains("other-root") && !s.frame.contains('T'),
            "{s:?}"
        );
    }
    // A removed node: its parent's path re-renders, not the siblings' subtrees.
    let s = &out[4];
    assert_eq!((s.ops, s.renders), (1, 1), "{s:?}");
    assert!(
        !s.frame.contains("sibling") && !s.frame.contains("other-root"),
        "{s:?}"
    );
}

#[test]
fn call_and_filter_blocks_are_one_fragment_each() {
    let src = r#"{% macro card(h) %}<div><h2>{{ h }}</h2>{{ caller() }}</div>{% endmacro %}<h1>{{ title }}</h1>
{% call card(head) %}<p>{{ probe(body) }}</p>{% endcall %}
<p>{% filter upper %}{{ probe(msg) }}{% endfilter %}</p>
<footer>{{ footer }}</footer>"#;
    let d0 = json!({"title": "t", "head": "h", "body": "b", "msg": "m", "footer": "f"});
    let d1 = with(&d0, &["title"], json!("T"));
    let d2 = with(&d1, &["body"], json!("B2"));
    let d3 = with(&d2, &["msg"], json!("loud"));
    let d4 = with(&d3, &["footer"], json!("F"));
    let out = steps(src, &[d0, d1, d2, d3, d4]);
    small(&out[0], 0, &["div"]);
    small(&out[1], 1, &[]);
    assert!(
        out[1].frame.contains("<div><h2>h</h2><p>B2</p></div>"),
        "{out:?}"
    );
    small(&out[2], 1, &["div"]);
    assert!(out[2].frame.contains("LOUD"), "{out:?}");
    small(&out[3], 0, &["div", "LOUD"]);
}

#[test]
fn what_stays_one_leaf_is_logged_once_per_template_with_its_line() {
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = Buf::default();
    let w = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || w.clone())
        .with_ansi(false)
        .finish();
    let src = "<h1>{{ t }}</h1>\n{% for i in xs %}{% if i %}{% break %}{% endif %}{% endfor %}\n{% set ns = namespace(a=1) %}{% set ns.a = 2 %}{{ ns.a }}\n{% filter upper %}x{% endfilter %}";
    tracing::subscriber::with_default(subscriber, || {
        let engine = FragmentEngine::new(env_of(src).0);
        for t in ["a", "b"] {
            let mut page = engine
                .render(common::MAIN, &json!({"t": t, "xs": [0, 1]}))
                .unwrap();
            page.update(&json!({"t": "c", "xs": [1]})).unwrap();
        }
    });
    let logs = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    assert_eq!(logs.lines().count(), 1, "{logs}");
    assert!(logs.contains("WARN"), "{logs}");
    assert!(
        logs.contains("a loop with `break`/`continue` at main.html:2"),
        "{logs}"
    );
    assert!(logs.contains("a `filter` block at main.html:4"), "{logs}");
    assert!(
        !logs.contains("namespace") && !logs.contains("one fragment"),
        "namespaces are split, nothing falls back to the whole page: {logs}"
    );
}
