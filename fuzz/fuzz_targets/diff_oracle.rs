//! Diff oracle on arbitrary data: for any two JSON values, rendering the
//! first and updating to the second gives exactly a fresh render of the
//! second, and the wire client agrees. Bad data is an error, never a panic.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use statetemplate::FragmentEngine;
use statetemplate::testing::WireClient;

const PAGE: &str = r#"<h1>{{ title }}</h1>{% if flag %}<b>{{ n }}</b>{% else %}<i>no</i>{% endif %}
<ul>{% for r in rows %}<li class="{{ r.c }}">{{ r.t }}{% for x in r.xs %}<i>{{ x }}</i>{% endfor %}</li>{% else %}<li>none</li>{% endfor %}</ul>
<table><tbody>{% for r in rows|keyed("k") %}<tr><td>{{ r.t }}</td></tr>{% endfor %}</tbody></table>"#;

fn engine() -> &'static FragmentEngine {
    static E: OnceLock<FragmentEngine> = OnceLock::new();
    E.get_or_init(|| {
        let mut env = minijinja::Environment::new();
        env.add_template("p", PAGE).unwrap();
        FragmentEngine::new(env)
    })
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.splitn(2, '\u{1}');
    let (Some(a), Some(b)) = (parts.next(), parts.next()) else {
        return;
    };
    let (Ok(a), Ok(b)) = (
        serde_json::from_str::<serde_json::Value>(a),
        serde_json::from_str::<serde_json::Value>(b),
    ) else {
        return;
    };
    let e = engine();
    let Ok(mut page) = e.render("p", &a) else {
        return;
    };
    let mut wire = WireClient::new();
    wire.apply(&page.join_frame()).expect("join applies");
    let before = page.html();
    match page.update(&b) {
        Ok(patch) => {
            let fresh = e
                .render_html("p", &b)
                .expect("fresh render of data that updated");
            assert_eq!(page.html(), fresh);
            if let Some(f) = page.encode(&patch) {
                wire.apply(&f).expect("frame applies");
            }
            assert_eq!(wire.html(), fresh);
        }
        Err(_) => assert_eq!(page.html(), before, "a failed update changed the page"),
    }
});
