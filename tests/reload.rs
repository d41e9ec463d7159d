//! Live template edits: an edited page, base layout, include or import is
//! picked up by new pages and by live pages on their next render, and the
//! frame that switches a live page gives exactly a fresh render of the new
//! template (checked by the wire oracle and the seed-style updates).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use minijinja::{Environment, path_loader};
use serde_json::json;
use statetemplate::testing::{WireClient, apply_updates};
use statetemplate::{ErrorKind, FragmentEngine, SessionEvent, StateTemplate};

/// A fresh directory of templates (removed on drop).
struct Dir(PathBuf);

impl Dir {
    fn new(files: &[(&str, &str)]) -> Dir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "st-reload-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&p).unwrap();
        let d = Dir(p);
        for (n, s) in files {
            d.write(n, s);
        }
        d
    }

    fn write(&self, name: &str, source: &str) {
        std::fs::write(self.0.join(name), source).unwrap();
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const BASE: &str = "<html><body><header>Shop</header>{% block main %}{% endblock %}</body></html>";
const PAGE: &str = r#"{% extends "base.html" %}{% import "m.html" as m %}{% block main %}<h1>{{ title }}</h1>
<ul>{% for r in rows %}{% include "row.html" %}{% endfor %}</ul><p>{{ m.total(rows) }}</p>{% endblock %}"#;
const ROW: &str = "<li>{{ r.name }}: {{ r.n }}</li>";
const MACROS: &str = "{% macro total(rows) %}{{ rows|length }} rows{% endmacro %}";

fn files() -> Vec<(&'static str, &'static str)> {
    vec![
        ("base.html", BASE),
        ("page.html", PAGE),
        ("row.html", ROW),
        ("m.html", MACROS),
    ]
}

fn env(dir: &Dir) -> Environment<'static> {
    let mut env = Environment::new();
    env.set_loader(path_loader(dir.path()));
    env
}

fn data(n: i64) -> serde_json::Value {
    json!({"title": "Stock", "rows": [{"id": 1, "name": "pen", "n": n}, {"id": 2, "name": "ink", "n": 2}]})
}

/// Each edit is picked up on the next update; the frame and the updates
/// that switch the page both turn what the client held into a fresh render
/// of the edited templates.
#[test]
fn edits_to_the_page_its_base_an_include_and_an_import_are_picked_up() {
    let dir = Dir::new(&files());
    let engine = FragmentEngine::new(env(&dir));
    engine.reload_interval(None); // checks only when asked, below
    let mut page = engine.render("page.html", &data(1)).unwrap();
    let mut client = WireClient::new();
    client.apply(&page.join_frame()).unwrap();
    let mut html = page.html();
    assert!(engine.reload().is_empty(), "nothing changed yet");

    let edits: [(&str, &str, &str); 4] = [
        ("base.html", &BASE.replace("Shop", "The shop"), "The shop"),
        (
            "row.html",
            "<li class=\"row\">{{ r.name }} = {{ r.n }}</li>",
            "pen = ",
        ),
        (
            "page.html",
            &PAGE.replace("<h1>", "<h1 class=\"big\">"),
            "class=\"big\"",
        ),
        ("m.html", &MACROS.replace(" rows{%", " items{%"), "2 items"),
    ];
    for (i, (file, source, shows)) in edits.iter().enumerate() {
        dir.write(file, source);
        assert_eq!(engine.reload(), vec!["page.html".to_owned()], "{file}");
        let patch = page.update(&data(10 + i as i64)).unwrap();
        assert_eq!(patch.len(), 1, "{file}: one operation replaces the page");
        let frame = page.encode(&patch).unwrap();
        client.apply(&frame).unwrap();
        html = apply_updates(&html, &patch.updates()).unwrap();
        let fresh = engine
            .render_html("page.html", &data(10 + i as i64))
            .unwrap();
        assert_eq!(page.html(), fresh, "{file}");
        assert_eq!(client.html(), fresh, "{file}: the wire oracle");
        assert_eq!(html, fresh, "{file}: the seed-style updates");
        assert!(fresh.contains(shows), "{file}: {fresh}");
        // And the page diffs as usual on the new program afterwards.
        let patch = page.update(&data(100 + i as i64)).unwrap();
        assert_eq!(patch.updates().len(), 1, "{file}: one row's text");
        client.apply(&page.encode(&patch).unwrap()).unwrap();
        assert_eq!(
            client.html(),
            engine
                .render_html("page.html", &data(100 + i as i64))
                .unwrap()
        );
        html = client.html();
    }
}

/// A template edited into an error fails renders with its error (name and
/// line) and changes nothing; fixed, the next render picks it up.
#[test]
fn a_broken_edit_fails_renders_until_it_is_fixed() {
    let dir = Dir::new(&files());
    let engine = FragmentEngine::new(env(&dir));
    engine.reload_interval(None);
    let mut page = engine.render("page.html", &data(1)).unwrap();
    let before = page.html();
    dir.write("row.html", "<li>\n{{ r.name }</li>");
    engine.reload();
    let err = page.update(&data(2)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Template, "{err:#}");
    let shown = format!("{err:#}");
    assert!(shown.contains("row.html:2"), "{shown}");
    assert_eq!(page.html(), before, "the page is unchanged");
    assert!(
        engine.render("page.html", &data(2)).is_err(),
        "new pages fail too"
    );
    dir.write("row.html", "<li>{{ r.name }}!</li>");
    let patch = page.update(&data(3)).unwrap();
    assert!(!patch.is_empty());
    assert_eq!(
        page.html(),
        engine.render_html("page.html", &data(3)).unwrap()
    );
    assert!(page.html().contains("pen!"));
}

/// With auto-reload off (production), edits are not looked for; with an
/// interval, renders look by themselves.
#[test]
fn the_interval_and_auto_reload_decide_when_renders_look() {
    let dir = Dir::new(&files());
    let mut off = env(&dir);
    off.set_auto_reload(false);
    let engine = FragmentEngine::new(off);
    let mut page = engine.render("page.html", &data(1)).unwrap();
    dir.write("base.html", &BASE.replace("Shop", "Edited"));
    std::thread::sleep(Duration::from_millis(1100));
    page.update(&data(2)).unwrap();
    assert!(
        !page.html().contains("Edited"),
        "auto-reload off: not looked for"
    );

    let engine = FragmentEngine::new(env(&dir));
    engine.reload_interval(Some(Duration::ZERO));
    let mut page = engine.render("page.html", &data(1)).unwrap();
    dir.write("base.html", &BASE.replace("Shop", "Edited again"));
    page.update(&data(2)).unwrap();
    assert!(page.html().contains("Edited again"), "{}", page.html());
    // Identical data after a switch still costs nothing.
    assert!(page.update(&data(2)).unwrap().is_empty());
}

/// In a session: a joined subscriber gets the switching frame like any
/// other, a new session renders the edit, and the wire oracle agrees.
#[tokio::test]
async fn a_live_session_switches_on_its_next_render() {
    let dir = Dir::new(&files());
    let engine = StateTemplate::builder(env(&dir)).build().unwrap();
    engine.fragments().reload_interval(Some(Duration::ZERO));
    let initial = engine.new_session("page.html", &data(1)).await.unwrap();
    let session = engine
        .get_session(&initial.session_id.to_string(), &initial.token)
        .await
        .unwrap();
    let (resync, mut sub) = session.join().await.unwrap();
    let mut client = WireClient::new();
    client.apply(resync.frame()).unwrap();
    dir.write("row.html", "<li><b>{{ r.name }}</b> {{ r.n }}</li>");
    session.render(&data(5)).await.unwrap();
    let Some(SessionEvent::Patch(p)) = sub.recv().await else {
        panic!("a patch")
    };
    client.apply(p.frame()).unwrap();
    let fresh = engine
        .fragments()
        .render_html("page.html", &data(5))
        .unwrap();
    assert_eq!(client.html(), fresh);
    assert!(fresh.contains("<b>pen</b>"));
    let other = engine.new_session("page.html", &data(1)).await.unwrap();
    assert!(other.html.contains("<b>pen</b>"));
}
