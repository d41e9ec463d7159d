//! The oracle harness shared by the corpus snapshots and the property tests.
#![allow(dead_code, unreachable_pub)]

use std::fmt::Write;
use std::path::Path;

use minijinja::Environment;
use serde_json::Value as Json;
use statetemplate::FragmentEngine;
use statetemplate::fragment::register_filters;
use statetemplate::testing::{WireClient, apply_updates, strip_anchors};
use statetemplate::transport::WsMessage;

pub const MAIN: &str = "main.html";

pub struct Case {
    pub templates: Vec<(String, String)>,
    pub steps: Vec<Json>,
}

/// A case file: JSON with `steps`, `---`, the main template, then any number
/// of `=== name` sections with further templates.
pub fn load_case(path: &Path) -> Case {
    let text = std::fs::read_to_string(path).unwrap();
    let (head, rest) = text.split_once("\n---\n").expect("case needs ---");
    let head: Json = serde_json::from_str(head).expect("case head is JSON");
    let steps = head["steps"].as_array().expect("steps").clone();
    let mut templates = Vec::new();
    let mut sections = rest.split("\n=== ");
    templates.push((MAIN.to_owned(), sections.next().unwrap().to_owned()));
    for s in sections {
        let (name, src) = s.split_once('\n').unwrap();
        templates.push((name.trim().to_owned(), src.to_owned()));
    }
    Case { templates, steps }
}

pub fn env_for(case: &Case) -> Environment<'static> {
    let mut env = Environment::new();
    for (n, s) in &case.templates {
        env.add_template_owned(n.clone(), s.clone()).unwrap();
    }
    env
}

/// Plain minijinja's render of the main template (the engine's filters
/// registered, no anchors).
pub fn bare_render(case: &Case, data: &Json) -> Result<String, String> {
    let mut env = env_for(case);
    register_filters(&mut env);
    env.get_template(MAIN)
        .unwrap()
        .render(minijinja::value::Serde(data))
        .map_err(|e| format!("{e:#}"))
}

/// Runs `steps` through one page and checks every oracle after each step:
/// 1. the page's HTML equals a fresh render of the same data;
/// 2. without anchors, that equals a plain minijinja render;
/// 3. a wire client fed the join frame and every frame holds exactly that;
/// 4. the seed-style updates applied to the previous HTML give exactly that.
///
/// A step that plain minijinja cannot render must fail in the engine too,
/// leaving the page as it was; the next step continues from there.
///
/// Returns a transcript of what each step emitted (for snapshots).
pub fn run(engine: &FragmentEngine, case: &Case, steps: &[Json]) -> Result<String, String> {
    run_against(engine, &|d| bare_render(case, d), steps)
}

/// Plain minijinja's render of the main template of `engine`'s own
/// environment: the oracle of [`run_against`] for an environment a test
/// set up itself.
pub fn bare_main(engine: &FragmentEngine) -> impl Fn(&Json) -> Result<String, String> + '_ {
    move |d: &Json| {
        engine.with_env(|e| {
            e.get_template(MAIN)
                .unwrap()
                .render(minijinja::value::Serde(d))
                .map_err(|e| e.to_string())
        })
    }
}

/// [`run`] with another plain-minijinja oracle: `bare` renders the main
/// template of the same environment without the engine.
pub fn run_against(
    engine: &FragmentEngine,
    bare_render: &dyn Fn(&Json) -> Result<String, String>,
    steps: &[Json],
) -> Result<String, String> {
    let mut out = String::new();
    // The one-pass fresh render gives exactly the leaf-by-leaf tree.
    for (n, data) in steps.iter().enumerate() {
        engine
            .check_fresh_render(MAIN, data)
            .map_err(|e| format!("step {n}: one-pass fresh render: {e}"))?;
    }
    let mut page = engine
        .render(MAIN, &steps[0])
        .map_err(|e| format!("{e:#}"))?;
    let html0 = page.html();
    let bare0 = bare_render(&steps[0])?;
    if strip_anchors(&html0) != bare0 {
        return Err(format!(
            "step 0: annotated render differs from minijinja\nours: {}\nbare: {bare0}",
            strip_anchors(&html0)
        ));
    }
    // A twin of the page that rests (drops its tree, as a session nobody
    // joined does) before every step: it must give the same frames.
    let mut resting = engine
        .render(MAIN, &steps[0])
        .map_err(|e| format!("{e:#}"))?;
    resting.rest();
    let mut client = WireClient::new();
    let join = page.join_frame();
    resting.rest();
    if resting.join_frame() != join {
        return Err("a resting page's join frame differs".into());
    }
    client.apply(&join).map_err(|e| format!("join: {e}"))?;
    if client.html() != html0 {
        return Err(format!(
            "join frame does not rebuild the page\nclient: {}\npage:   {html0}",
            client.html()
        ));
    }
    writeln!(
        out,
        "== initial ({} bytes, {} without anchors)\n{html0}",
        html0.len(),
        bare0.len()
    )
    .unwrap();
    let mut prev = html0;
    let mut prev_data = &steps[0];
    for (n, data) in steps.iter().enumerate().skip(1) {
        resting.rest();
        let rested = resting.update(data);
        let (patch, bare) = match (page.update(data), bare_render(data)) {
            (Ok(p), Ok(b)) => (p, b),
            (Err(e), Err(_)) => {
                if rested.is_ok() || resting.html() != prev {
                    return Err(format!("step {n}: a resting page took a failed update"));
                }
                if page.html() != prev {
                    return Err(format!(
                        "step {n}: a failed update changed the page ({e:#})"
                    ));
                }
                writeln!(out, "== step {n}: error, as in minijinja").unwrap();
                continue;
            }
            (Err(e), Ok(_)) => return Err(format!("step {n}: {e:#}; minijinja renders it")),
            (Ok(_), Err(e)) => return Err(format!("step {n}: minijinja fails ({e}); we did not")),
        };
        // The render's data delta turns the previous snapshot into this one.
        let old = minijinja::Value::from(minijinja::value::Serde(prev_data));
        let applied = patch
            .delta()
            .apply(&old)
            .map_err(|e| format!("step {n}: delta {:?}: {e:#}", patch.delta()))?;
        if serde_json::to_value(&applied).ok().as_ref() != Some(data) {
            return Err(format!(
                "step {n}: the delta does not give the new data
delta: {}
gave: {applied}
want: {data}",
                serde_json::to_string(patch.delta()).unwrap_or_default()
            ));
        }
        prev_data = data;
        let fresh = engine
            .render_html(MAIN, data)
            .map_err(|e| format!("{e:#}"))?;
        let now = page.html();
        if now != fresh {
            return Err(format!(
                "step {n}: page differs from fresh render\npage:  {now}\nfresh: {fresh}"
            ));
        }
        if strip_anchors(&fresh) != bare {
            return Err(format!(
                "step {n}: annotated render differs from minijinja\nours: {}\nbare: {bare}",
                strip_anchors(&fresh)
            ));
        }
        let updates = patch.updates();
        let applied = apply_updates(&prev, &updates).map_err(|e| format!("step {n}: {e}"))?;
        if applied != fresh {
            return Err(format!(
                "step {n}: updates do not converge\napplied: {applied}\nfresh:   {fresh}\nupdates: {updates:#?}"
            ));
        }
        let frame = page.encode(&patch);
        let rested = rested
            .map(|p| resting.encode(&p))
            .map_err(|e| format!("step {n}: a resting page fails: {e:#}"))?;
        if rested != frame || resting.html() != fresh {
            return Err(format!(
                "step {n}: a resting page differs\nresting: {rested:?}\nframe:   {frame:?}"
            ));
        }
        if let Some(f) = &frame {
            client
                .apply(f)
                .map_err(|e| format!("step {n}: frame {f}: {e}"))?;
        }
        if client.html() != fresh {
            return Err(format!(
                "step {n}: wire client does not converge\nclient: {}\nfresh:  {fresh}\nframe:  {frame:?}",
                client.html()
            ));
        }
        writeln!(
            out,
            "== step {n}: {} ops, frame {} bytes",
            patch.len(),
            frame.as_ref().map_or(0, |f| f.len())
        )
        .unwrap();
        for u in &updates {
            let target = u
                .target
                .as_deref()
                .map(|t| format!(" after {t}"))
                .unwrap_or_default();
            writeln!(
                out,
                "{:?} {:?}{target}: {}",
                u.action, u.fragment_id, u.html
            )
            .unwrap();
        }
        if let Some(f) = frame {
            writeln!(out, "wire: {f}").unwrap();
        }
        prev = fresh;
    }
    Ok(out)
}

/// `f` of every corpus case, in its own order and reversed (`NAME` and
/// `NAME/reversed`), each on an engine of its own.
fn each_corpus_run<T>(mut f: impl FnMut(String, &FragmentEngine, &[Json]) -> T) -> Vec<T> {
    let mut paths: Vec<_> = std::fs::read_dir("tests/corpus")
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    paths.sort();
    let mut out = Vec::new();
    for p in &paths {
        let case = load_case(p);
        let name = p.file_stem().unwrap().to_string_lossy().into_owned();
        let mut rev = case.steps.clone();
        rev.reverse();
        for (label, steps) in [("", &case.steps), ("/reversed", &rev)] {
            let engine = FragmentEngine::new(env_for(&case));
            out.push(f(format!("{name}{label}"), &engine, steps));
        }
    }
    out
}

/// Every corpus case, in its own order and reversed (`NAME` and
/// `NAME/reversed`), as frames, with the HTML the reference applier holds
/// after each frame.
#[allow(dead_code)]
pub fn corpus_frames() -> Vec<(String, Vec<String>, Vec<String>)> {
    each_corpus_run(|name, engine, steps| {
        let (frames, html) = frames(engine, steps);
        (name, frames, html)
    })
}

/// For every case of [`corpus_frames`], in the same order: what a client
/// that starts from the served page gets in its `hello`
/// ([`statetemplate::LivePage::page_statics`]; `None`: a join instead).
#[allow(dead_code)]
pub fn corpus_page_statics() -> Vec<Option<String>> {
    each_corpus_run(|_, engine, steps| engine.render(MAIN, &steps[0]).unwrap().page_statics())
}

/// The join frame and every update frame of `steps` on one page, with the
/// reference applier's HTML after each frame. Steps that fail to render
/// emit nothing (the page keeps its state).
pub fn frames(engine: &FragmentEngine, steps: &[Json]) -> (Vec<String>, Vec<String>) {
    let mut page = engine.render(MAIN, &steps[0]).unwrap();
    let mut wire = WireClient::new();
    let mut frames = vec![page.join_frame()];
    wire.apply(&frames[0]).unwrap();
    let mut html = vec![wire.html()];
    for d in &steps[1..] {
        let Ok(patch) = page.update(d) else { continue };
        if let Some(f) = page.encode(&patch) {
            wire.apply(&f).unwrap();
            frames.push(f);
            html.push(wire.html());
        }
    }
    assert_eq!(wire.html(), page.html());
    (frames, html)
}

/// HTML as the JS client's model writes it: every item's key written out
/// (the engine and `WireClient` write `<!--;-->` and runs).
pub fn written_out(html: &[String]) -> Vec<String> {
    html.iter()
        .map(|h| statetemplate::testing::write_out_markers(h))
        .collect()
}

/// Feeds each named frame sequence through the JS client's model in Node
/// (`tests/js/model_check.js`); one result per sequence, with `html` after
/// every frame and `error` (null when all applied).
pub fn js_model(cases: &[(String, Vec<String>)]) -> Vec<Json> {
    let input = serde_json::json!({"cases": cases.iter().map(|(n, f)| serde_json::json!({"name": n, "frames": f})).collect::<Vec<_>>()});
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let file = std::env::temp_dir().join(format!(
        "st-js-{}-{}.json",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    std::fs::write(&file, input.to_string()).unwrap();
    let out = std::process::Command::new("node")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/js/model_check.js"))
        .arg(&file)
        .output()
        .expect("node is required for the JS client tests (scripts/test.sh installs it)");
    let _ = std::fs::remove_file(&file);
    assert!(
        out.status.success(),
        "node failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let results: Vec<Json> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(results.len(), cases.len(), "one result per sequence");
    for ((name, _), r) in cases.iter().zip(&results) {
        assert_eq!(r["name"].as_str(), Some(name.as_str()), "results in order");
    }
    results
}

/// A "socket" made of two channels of `capacity`: what the test sends, and
/// what the connection loop writes.
#[allow(clippy::type_complexity)]
pub fn channel_socket(
    capacity: usize,
) -> (
    tokio::sync::mpsc::Sender<Result<WsMessage, String>>,
    tokio::sync::mpsc::Receiver<WsMessage>,
    std::pin::Pin<Box<dyn futures_util::Sink<WsMessage, Error = &'static str> + Send>>,
    std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<WsMessage, String>> + Send>>,
) {
    let (to_server, from_client) =
        tokio::sync::mpsc::channel::<Result<WsMessage, String>>(capacity);
    let (to_client, from_server) = tokio::sync::mpsc::channel::<WsMessage>(capacity);
    let stream = futures_util::stream::unfold(from_client, |mut rx| async move {
        rx.recv().await.map(|m| (m, rx))
    });
    let sink = futures_util::sink::unfold(to_client, |tx, m: WsMessage| async move {
        tx.send(m).await.map_err(|_| "gone")?;
        Ok::<_, &'static str>(tx)
    });
    (to_server, from_server, Box::pin(sink), Box::pin(stream))
}

/// A page whose templates are edited between renders (live template
/// edits): its frames (a join, then a switch to each edit and an ordinary
/// frame after it) and the WireClient HTML after each, for the JS model and
/// the browser's DOM layer.
pub fn edit_frames() -> (String, Vec<String>, Vec<String>) {
    let dir = std::env::temp_dir().join(format!("st-edit-frames-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let write = |n: &str, s: &str| std::fs::write(dir.join(n), s).unwrap();
    write(
        "base.html",
        "<main><h1>Shop</h1>{% block body %}{% endblock %}</main>",
    );
    write(
        "page.html",
        "{% extends \"base.html\" %}{% block body %}<ul>{% for r in rows %}{% include \"row.html\" %}{% endfor %}</ul>{% endblock %}",
    );
    write("row.html", "<li>{{ r.name }}</li>");
    let mut env = Environment::new();
    env.set_loader(minijinja::path_loader(&dir));
    let engine = FragmentEngine::new(env);
    engine.reload_interval(None);
    let data =
        |n: &str| serde_json::json!({"rows": [{"id": 1, "name": n}, {"id": 2, "name": "ink"}]});
    let mut page = engine.render("page.html", &data("pen")).unwrap();
    let mut client = statetemplate::testing::WireClient::new();
    let (mut frames, mut html) = (vec![page.join_frame()], Vec::new());
    client.apply(&frames[0]).unwrap();
    html.push(client.html());
    let edits = [
        ("row.html", "<li class=\"r\">{{ r.name }}!</li>"),
        (
            "base.html",
            "<main><h1>The shop</h1><nav>Home</nav>{% block body %}{% endblock %}</main>",
        ),
        (
            "page.html",
            "{% extends \"base.html\" %}{% block body %}<ol>{% for r in rows %}{% include \"row.html\" %}{% endfor %}</ol><p>{{ rows|length }}</p>{% endblock %}",
        ),
    ];
    for (i, (file, source)) in edits.iter().enumerate() {
        write(file, source);
        assert_eq!(engine.reload().len(), 1, "{file}");
        for name in [format!("pen{i}"), format!("pen{i}b")] {
            let patch = page.update(&data(&name)).unwrap();
            let f = page.encode(&patch).unwrap();
            client.apply(&f).unwrap();
            assert_eq!(client.html(), page.html(), "{file}");
            frames.push(f);
            html.push(client.html());
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    ("live-template-edits".to_owned(), frames, html)
}
