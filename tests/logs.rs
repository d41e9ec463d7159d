//! Logs never carry a token, a key or a full session id. In its own test
//! binary, so that its global subscriber sees every event of the run: the
//! session API, and the socket paths where the token travels in the query
//! string (good and bad tokens, handshake errors, the debug route).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use minijinja::Environment;
use serde_json::json;
use statetemplate::token::{Key, KeyRing};
use statetemplate::{Live, StateTemplate};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

fn env() -> Environment<'static> {
    let mut env = Environment::new();
    env.add_template(
        "page.html",
        "<h1>{{ title }}</h1>{% for r in rows %}<i>{{ r }}</i>{% endfor %}",
    )
    .unwrap();
    env
}

fn data(title: &str) -> serde_json::Value {
    json!({"title": title, "rows": [1, 2]})
}

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

/// A plain HTTP GET on loopback; the status code.
async fn get(addr: &str, path: &str) -> u16 {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("an answer in time")
        .unwrap();
    let head = String::from_utf8_lossy(&out);
    head.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// Opens a socket with `query`; every text message until the socket ends
/// (or the close code, as the last item, when there is one).
async fn socket(addr: &str, query: &str, origin: &str) -> Result<Vec<String>, String> {
    let mut req = format!("ws://{addr}/statetemplate/ws?{query}")
        .into_client_request()
        .unwrap();
    req.headers_mut().insert("origin", origin.parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .map_err(|e| e.to_string())?;
    let mut got = Vec::new();
    while let Ok(Some(Ok(m))) = tokio::time::timeout(Duration::from_millis(500), ws.next()).await {
        match m {
            Message::Text(t) => got.push(t.to_string()),
            Message::Close(c) => {
                got.push(format!("close {}", c.map_or(0, |c| u16::from(c.code))));
                break;
            }
            _ => {}
        }
    }
    Ok(got)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_or_key_in_logs() {
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
        .max_sessions(2)
        .build()
        .unwrap();
    let a = engine.new_session("page.html", &data("t")).await.unwrap();
    let sid = a.session_id.to_string();
    let s = engine.get_session(&sid, &a.token).await.unwrap();
    let _sub = s.updates();
    s.render(&data("u")).await.unwrap();
    let failed = s.render(&json!({"title": "v", "rows": 5})).await;
    assert!(failed.is_err(), "iterating a number is a render error");
    let mut bad = a.token.clone();
    bad.replace_range(10..11, if &a.token[10..11] == "A" { "B" } else { "A" });
    assert!(engine.get_session(&sid, &bad).await.is_err());

    // The socket paths: the token is in the query string.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let live = Live::new(engine.clone()).debug_oracle(true);
    let app: axum::Router = live.router();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let own = format!("http://{addr}");
    let good = socket(&addr, &format!("v=2&sid={sid}&token={}", a.token), &own)
        .await
        .unwrap();
    assert!(good[0].contains("\"hello\""), "joined: {good:?}");
    let hello: serde_json::Value = serde_json::from_str(&good[0]).unwrap();
    let fresh_token = hello["token"].as_str().unwrap().to_owned();
    let refused = socket(&addr, &format!("v=2&sid={sid}&token={bad}"), &own)
        .await
        .unwrap();
    assert_eq!(refused.last().map(String::as_str), Some("close 4001"));
    let cross = socket(
        &addr,
        &format!("v=2&sid={sid}&token={}", a.token),
        "http://evil.example",
    )
    .await
    .unwrap_err();
    assert!(cross.contains("403"), "cross-origin handshake: {cross}");
    let old = socket(&addr, &format!("v=0&sid={sid}&token={}", a.token), &own)
        .await
        .unwrap();
    assert_eq!(old.last().map(String::as_str), Some("close 4003"));
    assert_eq!(
        get(
            &addr,
            &format!("/statetemplate/debug/fresh?sid={sid}&token={}", a.token)
        )
        .await,
        200
    );
    assert_eq!(
        get(
            &addr,
            &format!("/statetemplate/debug/fresh?sid={sid}&token={bad}")
        )
        .await,
        401
    );

    let b = engine.new_session("page.html", &data("t")).await.unwrap();
    let c = engine.new_session("page.html", &data("t")).await.unwrap(); // evicts a
    let _ = StateTemplate::builder(env()).build().unwrap(); // warns: no keys
    tokio::time::sleep(Duration::from_millis(100)).await;

    let logs = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    for expected in [
        "session created",
        "evicted",
        "no keys configured",
        "render failed",
        "client connected",
        "session refused",
    ] {
        assert!(
            logs.contains(expected),
            "no {expected:?} in the logs:\n{logs}"
        );
    }
    assert!(logs.contains(&sid[..8]), "short ids are logged");
    let secrets = [
        a.token.as_str(),
        b.token.as_str(),
        c.token.as_str(),
        bad.as_str(),
        fresh_token.as_str(),
        key_text.as_str(),
        sid.as_str(),
        &b.session_id.to_string(),
    ]
    .map(str::to_owned);
    let mut windows = 0;
    for secret in &secrets {
        assert!(secret.len() >= 16);
        for i in 0..=secret.len() - 16 {
            let w = &secret[i..i + 16];
            windows += 1;
            assert!(
                !logs.contains(w),
                "16 characters of a secret leaked into logs: {w}"
            );
        }
    }
    assert!(windows > 300, "{windows} windows searched");
}
