//! The oracle harness shared by the corpus snapshots and the property tests.
#![allow(dead_code, unreachable_pub)]

use std::fmt::Write;
use std::path::Path;

use minijinja::Environment;
use serde_json::Value as Json;
use statetemplate::apply::{WireClient, apply_updates, strip_anchors};
use statetemplate::{FragmentEngine, register_filters};

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

fn bare_render(case: &Case, data: &Json) -> String {
    let mut env = env_for(case);
    register_filters(&mut env);
    env.get_template(MAIN)
        .unwrap()
        .render(minijinja::value::Serde(data))
        .unwrap()
}

/// Runs `steps` through one page and checks every oracle after each step:
/// 1. the page's HTML equals a fresh render of the same data;
/// 2. without anchors, that equals a plain minijinja render;
/// 3. a wire client fed the join frame and every frame holds exactly that;
/// 4. the seed-style updates applied to the previous HTML give exactly that.
///
/// Returns a transcript of what each step emitted (for snapshots).
pub fn run(engine: &FragmentEngine, case: &Case, steps: &[Json]) -> Result<String, String> {
    let mut out = String::new();
    let mut page = engine
        .render(MAIN, &steps[0])
        .map_err(|e| format!("{e:#}"))?;
    let html0 = page.html();
    let bare0 = bare_render(case, &steps[0]);
    if strip_anchors(&html0) != bare0 {
        return Err(format!(
            "step 0: annotated render differs from minijinja\nours: {}\nbare: {bare0}",
            strip_anchors(&html0)
        ));
    }
    let mut client = WireClient::new();
    let join = page.join_frame();
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
    for (n, data) in steps.iter().enumerate().skip(1) {
        let patch = page.update(data).map_err(|e| format!("step {n}: {e:#}"))?;
        let fresh = engine
            .render_html(MAIN, data)
            .map_err(|e| format!("{e:#}"))?;
        let now = page.html();
        if now != fresh {
            return Err(format!(
                "step {n}: page differs from fresh render\npage:  {now}\nfresh: {fresh}"
            ));
        }
        let bare = bare_render(case, data);
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
