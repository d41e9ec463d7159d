//! The plain tokio-tungstenite server, for apps without axum: the app
//! serves its pages however it likes; statetemplate serves the WebSocket.
//! This one creates a counter session, prints the page HTML to embed and
//! the session's id and token, and serves the socket.
//!
//! Run: `cargo run --example plain` (`ADDR` picks the address).

use std::time::Duration;

use minijinja::Environment;
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use statetemplate::{Live, StateTemplate};
use tokio::net::TcpListener;

#[derive(Default, Serialize, Deserialize)]
struct Counter {
    count: i64,
}

#[tokio::main]
async fn main() -> Result<(), statetemplate::Error> {
    let mut env = Environment::new();
    env.add_template(
        "counter.html",
        r#"<p>{{ count }}</p><button st-click="inc">+1</button>"#,
    )?;
    let keys = statetemplate::token::KeyRing::from_env("STATETEMPLATE_KEYS")
        .or_else(|_| statetemplate::token::KeyRing::generate())?;
    let engine = StateTemplate::builder(env).keys(keys).build()?;
    let live = Live::new(engine.clone())
        .handshake_timeout(Duration::from_secs(5))
        .on_update("inc", |c: &mut Counter, _: Json| {
            c.count += 1;
            Ok(())
        });
    let initial = engine
        .new_session("counter.html", &Counter::default())
        .await?;
    let addr = std::env::var("ADDR").unwrap_or_else(|_| "127.0.0.1:3004".to_owned());
    let listener = TcpListener::bind(&addr)
        .await
        .unwrap_or_else(|e| panic!("cannot listen on {addr}: {e}"));
    let addr = listener.local_addr().expect("bound address");
    println!("page markup to serve from http://{addr} (the origin the socket accepts):");
    println!("{}", live.mount(&initial));
    println!("sid {}", initial.session_id);
    println!("token {}", initial.token);
    println!("listening on ws://{addr}{}", live.ws_path());
    statetemplate::transport::serve_tungstenite(listener, live)
        .await
        .expect("accept loop");
    Ok(())
}
