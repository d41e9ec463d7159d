//! Auto-escaping follows the app's own rule, decided on the real template
//! names, exactly as plain minijinja does with the same environment: by
//! folder prefix, by exact name, by extension, or constant; `{% autoescape %}`
//! blocks either way; an included partial under another rule; a custom
//! formatter. Hostile strings go into an attribute, text, a loop item and a
//! branch, and every oracle of `common::run_against` checks the initial
//! render, every wire frame (through `WireClient`) and the seed updates.
//! A property test does the same over random data.

mod common;

use minijinja::{AutoEscape, Environment};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use serde_json::{Value as Json, json};
use statetemplate::FragmentEngine;
use statetemplate::fragment::register_filters;

const HOSTILE: [&str; 6] = [
    "<script>alert(1)</script>",
    "\"><img src=x onerror=alert(1)>",
    "</textarea><b>x</b>",
    "{{ x }}",
    "' onmouseover='alert(1)",
    "plain",
];

/// The page: a value in an attribute, in text, in loop items and in a
/// branch; an `autoescape false` and an `autoescape true` block; a partial.
fn page(part: &str) -> String {
    format!(
        r#"<a title="{{{{ t }}}}" href="/s?q={{{{ t }}}}">{{{{ t }}}}</a>
<ul>{{% for r in rows %}}<li class="{{{{ r.c }}}}">{{{{ r.v }}}}</li>{{% endfor %}}</ul>
{{% if flag %}}<b>{{{{ t }}}}</b>{{% else %}}<i>{{{{ r0 }}}}</i>{{% endif %}}
{{% autoescape false %}}<p>{{{{ t }}}}</p>{{% endautoescape %}}
{{% autoescape true %}}<q>{{{{ r0 }}}}</q>{{% endautoescape %}}
{{% include "{part}" %}}"#
    )
}

const PART: &str =
    r#"<em data-x="{{ r0 }}">{{ t }}</em>{% for r in rows %}<s>{{ r.v }}</s>{% endfor %}"#;

/// One way an app decides escaping: its callback, the page's name, the
/// partial's name, and whether the page (and the partial) escape HTML.
struct Family {
    label: &'static str,
    page: &'static str,
    part: &'static str,
    callback: Option<fn(&str) -> AutoEscape>,
    page_escapes: bool,
    part_escapes: bool,
}

fn families() -> Vec<Family> {
    fn by_prefix(n: &str) -> AutoEscape {
        if n.starts_with("html/") {
            AutoEscape::Html
        } else {
            AutoEscape::None
        }
    }
    fn by_name(n: &str) -> AutoEscape {
        if n == "index" {
            AutoEscape::Html
        } else {
            AutoEscape::None
        }
    }
    fn constant(_: &str) -> AutoEscape {
        AutoEscape::Html
    }
    fn never(_: &str) -> AutoEscape {
        AutoEscape::None
    }
    vec![
        Family {
            label: "prefix",
            page: "html/index",
            part: "txt/part",
            callback: Some(by_prefix),
            page_escapes: true,
            part_escapes: false,
        },
        Family {
            label: "prefix, escaped partial in a raw page",
            page: "txt/index",
            part: "html/part",
            callback: Some(by_prefix),
            page_escapes: false,
            part_escapes: true,
        },
        Family {
            label: "exact name",
            page: "index",
            part: "part",
            callback: Some(by_name),
            page_escapes: true,
            part_escapes: false,
        },
        Family {
            label: "extension (minijinja's default)",
            page: "index.html",
            part: "part.txt",
            callback: None,
            page_escapes: true,
            part_escapes: false,
        },
        Family {
            label: "constant",
            page: "page",
            part: "part",
            callback: Some(constant),
            page_escapes: true,
            part_escapes: true,
        },
        Family {
            label: "never",
            page: "page.html",
            part: "part.html",
            callback: Some(never),
            page_escapes: false,
            part_escapes: false,
        },
    ]
}

fn env_of(f: &Family, formatter: bool) -> Environment<'static> {
    let mut env = Environment::new();
    if let Some(cb) = f.callback {
        env.set_auto_escape_callback(cb);
    }
    if formatter {
        // Wraps every printed value, then escapes as usual.
        env.set_formatter(|out, state, value| {
            out.write_str("[")?;
            minijinja::escape_formatter(out, state, value)?;
            out.write_str("]")?;
            Ok(())
        });
    }
    env.add_template_owned(f.page.to_owned(), page(f.part))
        .unwrap();
    env.add_template_owned(f.part.to_owned(), PART.to_owned())
        .unwrap();
    env
}

fn bare(env: &Environment<'static>, name: &str, data: &Json) -> Result<String, String> {
    let mut env = env.clone();
    register_filters(&mut env);
    env.get_template(name)
        .unwrap()
        .render(minijinja::value::Serde(data))
        .map_err(|e| format!("{e:#}"))
}

fn data(t: &str, r0: &str, flag: bool, rows: &[(u32, &str, &str)]) -> Json {
    json!({
        "t": t, "r0": r0, "flag": flag,
        "rows": rows.iter().map(|(id, c, v)| json!({"id": id, "c": c, "v": v})).collect::<Vec<_>>(),
    })
}

fn steps() -> Vec<Json> {
    let [script, img, textarea, braces, quote, plain] = HOSTILE;
    vec![
        data(plain, plain, true, &[(1, "a", "x")]),
        data(
            script,
            braces,
            false,
            &[(1, img, textarea), (2, quote, script)],
        ),
        data(img, script, true, &[(2, img, braces)]),
        data(textarea, quote, false, &[]),
        data(quote, img, true, &[(3, script, img), (1, textarea, quote)]),
    ]
}

/// Runs the oracles for one family with the engine compiling `name` as the
/// main template (the harness renders `common::MAIN`).
fn check(f: &Family, formatter: bool, steps: &[Json]) -> Result<(), String> {
    let mut env = env_of(f, formatter);
    // The harness renders `main.html`: it includes the page, which then
    // runs with the page's own escaping (as an include does in minijinja).
    env.add_template_owned(
        common::MAIN.to_owned(),
        format!("{{% include \"{}\" %}}", f.page),
    )
    .unwrap();
    let engine = FragmentEngine::new(env.clone());
    common::run_against(&engine, &|d| bare(&env, common::MAIN, d), steps)
        .map(|_| ())
        .map_err(|e| format!("{} (formatter: {formatter}): {e}", f.label))
}

#[test]
fn each_escape_rule_matches_plain_minijinja() {
    for f in families() {
        for formatter in [false, true] {
            check(&f, formatter, &steps()).unwrap();
        }
    }
}

/// The engine renders the user's page directly (no wrapper): the initial
/// HTML and each update, with the rule of the page's own name.
#[test]
fn the_page_itself_escapes_by_its_own_name() {
    for f in families() {
        let env = env_of(&f, false);
        let engine = FragmentEngine::new(env.clone());
        let steps = steps();
        let mut page = engine.render(f.page, &steps[0]).unwrap();
        let mut wire = statetemplate::testing::WireClient::new();
        wire.apply(&page.join_frame()).unwrap();
        for d in &steps[1..] {
            let patch = page.update(d).unwrap();
            if let Some(frame) = page.encode(&patch) {
                wire.apply(&frame).unwrap();
            }
            let want = bare(&env, f.page, d).unwrap();
            let got = statetemplate::testing::strip_anchors(&wire.html());
            assert_eq!(got, want, "{}: the client's page", f.label);
            assert_eq!(
                statetemplate::testing::strip_anchors(&page.html()),
                want,
                "{}: the server's page",
                f.label
            );
        }
        // The rule really was applied: the `<b>` branch and the anchor text
        // escape exactly when the page's rule says so, and the partial by
        // its own rule.
        let html = bare(&env, f.page, &steps[1]).unwrap();
        assert_eq!(
            html.contains("<a title=\"&lt;script&gt;"),
            f.page_escapes,
            "{}: {html}",
            f.label
        );
        assert_eq!(
            html.contains("<em data-x=\"{{ x }}\">&lt;script&gt;"),
            f.part_escapes,
            "{}: {html}",
            f.label
        );
        // `autoescape false` prints raw whatever the rule.
        assert!(
            html.contains("<p><script>alert(1)</script></p>"),
            "{}",
            f.label
        );
    }
}

/// The escaping of a session's first render, of its frames and of its seed
/// updates, through the session API.
#[tokio::test]
async fn sessions_escape_by_the_rule() {
    let f = &families()[0];
    let env = env_of(f, false);
    let engine = statetemplate::StateTemplate::builder(env.clone())
        .keys(statetemplate::token::KeyRing::generate().unwrap())
        .build()
        .unwrap();
    let steps = steps();
    let i = engine.new_session(f.page, &steps[0]).await.unwrap();
    assert_eq!(
        statetemplate::testing::strip_anchors(&i.html),
        bare(&env, f.page, &steps[0]).unwrap()
    );
    let s = engine
        .get_session(&i.session_id.to_string(), &i.token)
        .await
        .unwrap();
    let mut sub = s.updates();
    let mut prev = i.html.clone();
    for d in &steps[1..] {
        s.render(d).await.unwrap();
        let statetemplate::SessionEvent::Patch(p) = sub.recv().await.unwrap() else {
            panic!("a patch")
        };
        let applied = statetemplate::testing::apply_updates(&prev, &p.updates()).unwrap();
        let want = bare(&env, f.page, d).unwrap();
        assert_eq!(statetemplate::testing::strip_anchors(&applied), want);
        assert!(
            !p.frame().contains("<script>alert(1)</script></b>"),
            "{}",
            p.frame()
        );
        prev = applied;
    }
}

fn hostile() -> impl Strategy<Value = String> {
    prop_oneof![
        (0..HOSTILE.len()).prop_map(|i| HOSTILE[i].to_owned()),
        "[<>&\"' a-z{}]{0,8}",
    ]
}

fn datum() -> impl Strategy<Value = Json> {
    (
        hostile(),
        hostile(),
        any::<bool>(),
        proptest::collection::vec((0u32..5, hostile(), hostile()), 0..4),
    )
        .prop_map(|(t, r0, flag, rows)| {
            json!({
                "t": t, "r0": r0, "flag": flag,
                "rows": rows.iter().map(|(id, c, v)| json!({"id": id, "c": c, "v": v})).collect::<Vec<_>>(),
            })
        })
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).map_or(256, |n: u32| (n / 10).max(256)),
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("regressions"))),
        ..ProptestConfig::default()
    })]
    #[test]
    fn random_hostile_data_escapes_as_minijinja(family in 0usize..6, formatter in any::<bool>(), steps in proptest::collection::vec(datum(), 1..6)) {
        let f = &families()[family];
        if let Err(e) = check(f, formatter, &steps) {
            panic!("{e}\nsteps: {}", serde_json::to_string(&steps).unwrap());
        }
    }
}
