//! The WebSocket layer statetemplate's plain server runs (tokio-tungstenite
//! with `Live::websocket_config`: 64 KiB limits, small buffers), as an echo
//! server for the Autobahn conformance suite (`scripts/autobahn.sh`).
//! The statetemplate protocol itself does not echo, so the suite runs
//! against this.
//!
//! Run: `ADDR=127.0.0.1:9001 cargo run --example autobahn_echo`

use futures_util::{SinkExt, StreamExt};
use minijinja::Environment;
use statetemplate::{Live, StateTemplate};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

#[tokio::main]
async fn main() -> Result<(), statetemplate::Error> {
    let engine = StateTemplate::builder(Environment::new())
        .keys(statetemplate::token::KeyRing::generate()?)
        .build()?;
    let config = Live::new(engine).websocket_config();
    let addr = std::env::var("ADDR").unwrap_or_else(|_| "127.0.0.1:9001".to_owned());
    let listener = TcpListener::bind(&addr).await.expect("bind");
    println!("listening on ws://{addr}");
    loop {
        let (stream, _) = listener.accept().await.expect("accept");
        tokio::spawn(async move {
            let Ok(mut ws) =
                tokio_tungstenite::accept_async_with_config(stream, Some(config)).await
            else {
                return;
            };
            while let Some(Ok(m)) = ws.next().await {
                let reply = match m {
                    Message::Text(_) | Message::Binary(_) => m,
                    Message::Close(_) => break,
                    _ => continue,
                };
                if ws.send(reply).await.is_err() {
                    break;
                }
            }
        });
    }
}
