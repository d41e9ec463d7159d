//! Leaves that print a variable path (`{{ count }}`, `{{ r.name }}`) are
//! formatted without running their piece (`eval::Formats`). They must print
//! exactly what minijinja prints, in every case the shortcut could get
//! wrong: values of every kind, characters to escape, a name missing from
//! the data (a global, or undefined), a step through something without the
//! attribute, `autoescape` blocks (two escapings in one walk), the loop
//! variable, a custom formatter, strict undefined behaviour. Every sequence
//! goes through all the oracles of `common::run_against`.

mod common;

use minijinja::{Environment, UndefinedBehavior, Value};
use serde_json::{Value as Json, json};
use statetemplate::FragmentEngine;

const PAGE: &str = r#"<p class="{{ cls }}">{{ a }}|{{ b.c }}|{{ b.c.d }}|{{ n }}|{{ f }}|{{ t }}|{{ z }}|{{ list }}|{{ map }}|{{ g }}|{{ missing }}|{{ b.missing }}</p>
{% include "part.txt" %}
<ul>{% for r in rows %}<li id="r{{ r.id }}">{{ loop.index }}. {{ r.name }} {{ r.tags }}</li>{% endfor %}</ul>"#;

fn env(set_up: impl Fn(&mut Environment<'static>)) -> Environment<'static> {
    let mut env = Environment::new();
    env.add_template(common::MAIN, PAGE).unwrap();
    // Included from the page, with no escaping (by its name): two
    // escapings in one walk.
    env.add_template("part.txt", "<pre>{{ a }}{{ b.c }}</pre>")
        .unwrap();
    env.add_global("g", Value::from_safe_string("<b>global</b>".into()));
    set_up(&mut env);
    env
}

fn steps() -> Vec<Json> {
    vec![
        json!({"cls": "x", "a": "<&\"'/>", "b": {"c": "one"}, "n": 1, "f": 1.5, "t": true,
               "z": null, "list": [1, "two"], "map": {"k": "v"},
               "rows": [{"id": 1, "name": "ann", "tags": ["a"]}, {"id": 2, "name": "<bob>", "tags": []}]}),
        // Every value changes kind; the data now has a `g` of its own,
        // which wins over the global.
        json!({"cls": "a\"b", "a": 7, "b": {"c": {"d": "deep"}}, "n": -3, "f": 2.0, "t": false,
               "z": "now a string", "list": [], "map": {}, "g": "mine",
               "rows": [{"id": 2, "name": "<bob>", "tags": [1]}, {"id": 3, "name": "cy", "tags": null}]}),
        // Steps through what has no such attribute, and names gone.
        json!({"a": null, "b": "a string", "n": 0, "f": 0.1, "t": true,
               "rows": [{"id": 3, "name": "cy & co"}]}),
        json!({"cls": "", "a": "", "b": {"c": ""}, "n": 1e300, "f": -0.0, "t": null,
               "z": 0, "list": [null], "map": {"a": {"b": 1}}, "g": null,
               "rows": [{"id": 1, "name": "ann"}, {"id": 2, "name": "bob"}, {"id": 3, "name": "cy"}]}),
        json!({"cls": "x", "a": "back", "b": {"c": "one"}, "n": 1, "rows": []}),
    ]
}

fn check(env: Environment<'static>) {
    let engine = FragmentEngine::new(env);
    let bare = common::bare_main(&engine);
    common::run_against(&engine, &bare, &steps()).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn paths_print_what_minijinja_prints() {
    check(env(|_| {}));
}

#[test]
fn paths_go_through_a_custom_formatter() {
    check(env(|e| {
        e.set_formatter(|out, state, value| {
            if value.is_none() {
                return Ok(());
            }
            if let Some(s) = value.as_str() {
                return minijinja::escape_formatter(
                    out,
                    state,
                    &Value::from(format!("[{}]", s.to_uppercase())),
                );
            }
            minijinja::escape_formatter(out, state, value)
        });
    }));
}

#[test]
fn paths_keep_chainable_undefined() {
    check(env(|e| {
        e.set_undefined_behavior(UndefinedBehavior::Chainable)
    }));
}

/// Strict undefined: a path that is there prints as usual, one that is not
/// fails the update as it fails minijinja's render.
#[test]
fn strict_undefined_fails_where_minijinja_fails() {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.add_template(common::MAIN, "<p>{{ a }}</p><p>{{ b.c }}</p>")
        .unwrap();
    let engine = FragmentEngine::new(env);
    let mut page = engine
        .render(common::MAIN, &json!({"a": 1, "b": {"c": 2}}))
        .unwrap();
    page.join_frame();
    page.update(&json!({"a": 2, "b": {"c": 3}})).unwrap();
    assert!(statetemplate::testing::strip_anchors(&page.html()).contains("<p>2</p><p>3</p>"));
    let err = page.update(&json!({"a": 3, "b": {}})).unwrap_err();
    assert!(err.to_string().contains("undefined"), "{err}");
    let err = page.update(&json!({"b": {"c": 1}})).unwrap_err();
    assert!(err.to_string().contains("undefined"), "{err}");
}
