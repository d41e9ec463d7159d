//! Errors: template errors point at the user's template and line; a failed
//! render leaves the page exactly as it was.

use minijinja::{Environment, UndefinedBehavior};
use serde_json::json;
use statetemplate::{ErrorKind, FragmentEngine};

fn engine(src: &'static str) -> FragmentEngine {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.add_template("page.html", src).unwrap();
    FragmentEngine::new(env)
}

#[test]
fn render_error_keeps_template_line_and_excerpt() {
    let e = engine(
        "<h1>{{ title }}</h1>\n<ul>\n{% for x in xs %}<li>{{ x.name + 1 }}</li>{% endfor %}\n</ul>",
    );
    let err = e
        .render("page.html", &json!({"title": "t", "xs": [{"name": "a"}]}))
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Template);
    assert_eq!(err.template_name(), Some("page.html"));
    assert_eq!(err.line(), Some(3));
    let full = format!("{err:#}");
    assert!(full.contains("x.name + 1"), "{full}");
    assert!(full.contains("page.html:3"), "{full}");
}

#[test]
fn syntax_error_keeps_minijinja_location() {
    let mut env = Environment::new();
    env.set_loader(|name| Ok((name == "page.html").then(|| "<p>\n{% if %}</p>".to_owned())));
    let e = FragmentEngine::new(env);
    let err = e.render("page.html", &json!({})).unwrap_err();
    assert_eq!(err.template_name(), Some("page.html"));
    assert_eq!(err.line(), Some(2));
}

#[test]
fn failed_update_changes_nothing() {
    let e = engine("<p>{{ a }}</p><ul>{% for x in xs %}<li>{{ x.v + 1 }}</li>{% endfor %}</ul>");
    let mut page = e
        .render("page.html", &json!({"a": 1, "xs": [{"id": 1, "v": 1}]}))
        .unwrap();
    let before = page.html();
    // `"s" + 1` fails in the second row; the first change (a) must not stick.
    let err = page.update(&json!({"a": 2, "xs": [{"id": 1, "v": 1}, {"id": 2, "v": "s"}]}));
    assert!(err.is_err());
    assert_eq!(page.html(), before);
    assert_eq!(page.seq(), 0);
    // And the page still works, diffing against its last good state.
    let patch = page
        .update(&json!({"a": 2, "xs": [{"id": 1, "v": 1}]}))
        .unwrap();
    assert_eq!(patch.len(), 1);
    assert_eq!(
        page.html(),
        e.render_html("page.html", &json!({"a": 2, "xs": [{"id": 1, "v": 1}]}))
            .unwrap()
    );
}

#[test]
fn missing_template_is_a_clear_error() {
    let e = engine("x");
    let err = e.render("nope.html", &json!({})).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Template);
    assert!(err.to_string().contains("nope.html"), "{err}");
}

#[test]
fn identical_data_emits_nothing() {
    let e = engine("<p>{{ a }}</p>{% for x in xs %}<i>{{ x }}</i>{% endfor %}");
    let d = json!({"a": 1, "xs": [1, 2, 3]});
    let mut page = e.render("page.html", &d).unwrap();
    let patch = page.update(&d).unwrap();
    assert!(patch.is_empty());
    assert!(page.encode(&patch).is_none());
}

#[test]
fn statics_are_sent_once() {
    let e = engine("<ul>{% for x in xs %}<li class=\"row\">{{ x.v }}</li>{% endfor %}</ul>");
    let mut page = e.render("page.html", &json!({"xs": []})).unwrap();
    let _ = page.join_frame();
    let p1 = page.update(&json!({"xs": [{"id": 1, "v": "a"}]})).unwrap();
    let f1 = page.encode(&p1).unwrap();
    assert!(f1.contains("class=\\\"row\\\""), "{f1}");
    let p2 = page
        .update(&json!({"xs": [{"id": 1, "v": "a"}, {"id": 2, "v": "b"}]}))
        .unwrap();
    let f2 = page.encode(&p2).unwrap();
    assert!(!f2.contains("row"), "statics re-sent: {f2}");
    assert!(f2.contains("\"b\""));
}
