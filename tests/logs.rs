//! Logs never carry a token or a key. In its own test binary, so that its
//! global subscriber sees every event of the run.

use std::sync::{Arc, Mutex};

use minijinja::Environment;
use serde_json::json;
use statetemplate::StateTemplate;
use statetemplate::token::{Key, KeyRing};

fn env() -> Environment<'static> {
    let mut env = Environment::new();
    env.add_template(
        "page.html",
        "<h1>{{ title }}</h1>{% for r in rows %}<i>{{ r }}</i>{% endfor %}",
    )
    .unwrap();
    env
}

fn data(owner: &str, title: &str, _rows: &[(u32, &str)]) -> serde_json::Value {
    json!({"owner": owner, "title": title, "rows": [1, 2]})
}

#[tokio::test]
async fn no_token_or_key_in_logs() {
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
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || w.clone())
        .with_ansi(false)
        .finish();
    tracing::subscriber::set_global_default(subscriber).unwrap();

    let key = Key::generate().unwrap();
    let key_text = key.encode();
    let engine = StateTemplate::builder(env())
        .keys(KeyRing::new(key))
        .max_sessions(1)
        .build()
        .unwrap();
    let d = data("x", "t", &[]);
    let a = engine.new_session("page.html", &d).await.unwrap();
    let s = engine
        .get_session(&a.session_id.to_string(), &a.token)
        .await
        .unwrap();
    let _sub = s.updates();
    s.render(&data("x", "u", &[])).await.unwrap();
    let _ = s.render(&json!({"rows": 5})).await; // a failing render
    let mut bad = a.token.clone();
    bad.replace_range(10..11, if &a.token[10..11] == "A" { "B" } else { "A" });
    let _ = engine
        .get_session(&a.session_id.to_string(), &bad)
        .await
        .unwrap_err();
    let b = engine.new_session("page.html", &d).await.unwrap(); // evicts a
    let _ = StateTemplate::builder(env()).build().unwrap(); // warns: no keys

    let logs = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("session created"),
        "logs were captured:\n{logs}"
    );
    assert!(logs.contains("evicted"));
    assert!(logs.contains("no keys configured"));
    assert!(
        logs.contains(&a.session_id.to_string()[..8]),
        "short ids are logged"
    );
    for secret in [&a.token, &b.token, &bad, &key_text] {
        assert!(!logs.contains(secret.as_str()), "a secret leaked into logs");
        assert!(
            !logs.contains(&secret[..16]),
            "part of a secret leaked into logs"
        );
    }
    assert!(
        !logs.contains(&a.session_id.to_string()),
        "full ids are not logged"
    );
}
