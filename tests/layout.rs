//! A program's ids and layout fingerprint do not depend on what else the
//! process compiled: a session restored from a store into a new process
//! addresses the same statics ids and fragment ids as the old one did, so a
//! client that holds the old page keeps applying frames.

use minijinja::Environment;
use serde_json::{Value as Json, json};
use statetemplate::FragmentEngine;
use statetemplate::testing::WireClient;

/// Two pages, a layout and a partial they share, and a page that falls back
/// to one fragment (a computed `extends`).
fn templates() -> Vec<(&'static str, String)> {
    vec![
        (
            "base.html",
            "<html><body>{% block main %}{% endblock %}<footer>{{ footer }}</footer></body></html>"
                .into(),
        ),
        (
            "row.html",
            "<li>{{ row.name }}{% if row.done %} <b>done</b>{% endif %}</li>".into(),
        ),
        (
            "a.html",
            "{% extends \"base.html\" %}{% block main %}<h1>{{ title }}</h1>\
             {% if admin %}<a href=\"/admin\">Admin</a>{% else %}<span>guest</span>{% endif %}\
             <ul>{% for row in rows %}{% include \"row.html\" %}{% endfor %}</ul>{% endblock %}"
                .into(),
        ),
        (
            "b.html",
            "<main>{% for t in tags %}<i>{{ loop.index }}: {{ t }}</i>{% endfor %}\
             {% if note %}<p>{{ note }}</p>{% endif %}{% include \"row.html\" %}</main>"
                .into(),
        ),
        (
            "c.html",
            "{% extends layout %}{% block main %}<p>{{ title }}</p>{% endblock %}".into(),
        ),
    ]
}

fn engine(templates: &[(&'static str, String)]) -> FragmentEngine {
    let mut env = Environment::new();
    for (name, source) in templates {
        env.add_template_owned(*name, source.clone()).unwrap();
    }
    FragmentEngine::new(env)
}

/// Each page's data before and after one change that shows new statics (a
/// branch taken for the first time, a new list item).
fn data(template: &str) -> (Json, Json) {
    match template {
        "a.html" => (
            json!({"title": "Hi", "footer": "f", "admin": false,
                   "rows": [{"id": 1, "name": "x", "done": false}]}),
            json!({"title": "Hey", "footer": "f", "admin": true,
                   "rows": [{"id": 1, "name": "x", "done": true},
                            {"id": 2, "name": "y", "done": false}]}),
        ),
        "b.html" => (
            json!({"tags": ["p", "q"], "note": null, "row": {"name": "r", "done": false}}),
            json!({"tags": ["o", "p", "q"], "note": "n", "row": {"name": "r", "done": true}}),
        ),
        "c.html" => (
            json!({"layout": "base.html", "title": "one", "footer": "f"}),
            json!({"layout": "base.html", "title": "two", "footer": "g"}),
        ),
        _ => unreachable!(),
    }
}

const PAGES: [&str; 3] = ["a.html", "b.html", "c.html"];

#[test]
fn ids_and_layout_do_not_depend_on_compile_order() {
    let t = templates();
    let first = engine(&t);
    let second = engine(&t);
    // Each engine compiles (and renders) the pages in its own order.
    let mut pages_1 = Vec::new();
    for name in PAGES {
        pages_1.push((name, first.render(name, &data(name).0).unwrap()));
    }
    let mut pages_2 = Vec::new();
    for name in PAGES.iter().rev() {
        pages_2.push((*name, second.render(name, &data(name).0).unwrap()));
    }
    pages_2.reverse();
    for ((name, p1), (_, p2)) in pages_1.iter_mut().zip(pages_2.iter_mut()) {
        assert_eq!(
            first.layout(name).unwrap(),
            second.layout(name).unwrap(),
            "{name}: layout"
        );
        assert_eq!(p1.html(), p2.html(), "{name}: html");
        let join = p1.join_frame();
        assert_eq!(join, p2.join_frame(), "{name}: join frame");
        // A client that joined in the first process takes the second's
        // frames: what a restored session sends.
        let mut client = WireClient::new();
        client.apply(&join).unwrap();
        let next = data(name).1;
        let patch_1 = p1.update(&next).unwrap();
        let patch_2 = p2.update(&next).unwrap();
        let frame = p1.encode(&patch_1).expect("a change");
        assert_eq!(Some(&frame), p2.encode(&patch_2).as_ref(), "{name}: frame");
        // The page of one fragment has no statics to bring.
        if *name != "c.html" {
            assert!(
                frame.contains("{\""),
                "{name}: the frame brings statics: {frame}"
            );
        }
        client.apply(&frame).unwrap();
        assert_eq!(client.html(), p2.html(), "{name}: client after the frame");
    }
}

#[test]
fn layout_changes_with_a_template_source() {
    let t = templates();
    let before = engine(&t);
    let changed = |name: &str, from: &str, to: &str| {
        let mut t = templates();
        let s = &mut t.iter_mut().find(|(n, _)| *n == name).unwrap().1;
        assert!(s.contains(from), "{name} has {from}");
        *s = s.replacen(from, to, 1);
        engine(&t)
    };
    for (name, from, to, affected) in [
        // Static text only.
        ("a.html", "<h1>", "<h2>", &["a.html"][..]),
        // An expression only: the same statics, another piece.
        ("a.html", "{{ title }}", "{{ title|upper }}", &["a.html"]),
        // A partial: every page that includes it.
        ("row.html", "done", "finished", &["a.html", "b.html"]),
        // A layout: only the page that extends it by name; the fallback
        // page renders it at run time.
        ("base.html", "<footer>", "<footer class=\"f\">", &["a.html"]),
        ("c.html", "<p>", "<div>", &["c.html"]),
        // A comment: nothing a client holds changes.
        ("a.html", "<h1>", "{# a note #}<h1>", &[]),
    ] {
        let after = changed(name, from, to);
        for page in PAGES {
            let (old, new) = (before.layout(page).unwrap(), after.layout(page).unwrap());
            if affected.contains(&page) {
                assert_ne!(old, new, "{name}: {from} -> {to}: {page}");
            } else {
                assert_eq!(old, new, "{name}: {from} -> {to}: {page}");
            }
        }
    }
}
