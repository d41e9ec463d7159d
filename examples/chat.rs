//! Chat: a message sent in one browser reaches every session in the "chat"
//! group (broadcast), and the tabs of one browser share one session.
//!
//! Run: `cargo run --example chat`, then open the URL it prints in two
//! browsers (or a private window) and in two tabs.
//!
//! Across instances: messages go out with `engine.broadcast`, and each
//! instance renders them to the members it owns (`engine.broadcasts()`);
//! "online" is `engine.presence("chat")`, the open tabs over all instances.
//! With a Redis: `STATETEMPLATE_STORE=redis ADDR=127.0.0.1:3003 cargo run
//! --features redis --example chat`, and again with `ADDR=127.0.0.1:3013`.

#[path = "common/mod.rs"]
mod common;

use std::sync::{Arc, Mutex};

use std::net::SocketAddr;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::http::HeaderMap;
use axum::routing::get;
use minijinja::Environment;
use serde::{Deserialize, Serialize};
use statetemplate::{Error, EventCtx, StateTemplate};

const KEEP: usize = 50;

#[derive(Debug, Default, Serialize, Deserialize)]
struct Chat {
    name: String,
    messages: Vec<Message>,
    online: usize,
    note: String,
    clock: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Message {
    id: u64,
    from: String,
    text: String,
}

#[derive(Deserialize)]
struct Text {
    text: String,
}

#[derive(Deserialize)]
struct Input {
    value: String,
}

type History = Arc<Mutex<(u64, Vec<Message>)>>;

/// Sends a message to every instance (this one too): see [`deliver`].
async fn send(ctx: EventCtx) -> statetemplate::Result<()> {
    let p: Text = ctx.payload()?;
    let text = p.text.trim().to_owned();
    if text.is_empty() || text.len() > 500 {
        return Err(Error::protocol("a message is 1 to 500 characters"));
    }
    let me: Chat = ctx.session.data().await?;
    let from = if me.name.is_empty() {
        "anonymous".to_owned()
    } else {
        me.name
    };
    // An id unique enough across instances: the time in nanoseconds.
    let id = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    ctx.engine
        .broadcast("chat", &Message { id, from, text })
        .await
}

/// Every instance: each message broadcast on "chat" joins this instance's
/// history and is rendered to the chat sessions this instance owns.
async fn deliver(engine: StateTemplate, history: History) {
    let mut rx = engine.broadcasts();
    loop {
        let b = match rx.recv().await {
            Ok(b) => b,
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
            Err(_) => return,
        };
        if b.topic != "chat" {
            continue;
        }
        let Ok(msg) = serde_json::from_value::<Message>(b.message) else {
            continue;
        };
        let messages = {
            let mut h = history.lock().expect("history lock");
            h.1.push(msg);
            let skip = h.1.len().saturating_sub(KEEP);
            h.1.drain(..skip);
            h.1.clone()
        };
        let online = engine.presence("chat").await.unwrap_or(0) as usize;
        for s in engine.group("chat") {
            let _ = s
                .update(|c: &mut Chat| {
                    c.messages = messages.to_vec();
                    c.online = online;
                    Ok(())
                })
                .await;
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), statetemplate::Error> {
    let mut env = Environment::new();
    env.add_template("chat.html", include_str!("../templates/chat.html"))?;
    let engine = common::engine(env, "chat")?;
    let history: History = Arc::new(Mutex::new((0, Vec::new())));
    tokio::spawn(deliver(engine.clone(), history.clone()));
    let live =
        common::live(&engine)
            .on("send", send)
            .on_update("rename", |c: &mut Chat, p: Input| {
                c.name = p.value.trim().chars().take(32).collect();
                Ok(())
            });
    let page_live = live.clone();
    let app = Router::new()
        .route(
            "/",
            get(
                move |ConnectInfo(peer): ConnectInfo<SocketAddr>, headers: HeaderMap| {
                    let live = page_live.clone();
                    let history = history.clone();
                    async move {
                        let messages = history.lock().expect("history lock").1.clone();
                        let engine = live.engine().clone();
                        let online = engine.presence("chat").await.unwrap_or(0) as usize + 1;
                        let data = move || Chat {
                            messages,
                            online,
                            clock: common::clock_text(),
                            ..Chat::default()
                        };
                        // A page load renders only its own session: no broadcast
                        // (that made page loads cost every member a render).
                        common::page(&live, peer, &headers, "chat.html", "Chat", data, |s| {
                            s.join_group("chat")
                        })
                        .await
                    }
                },
            ),
        )
        .merge(live.router());
    common::serve(app, 3003).await;
    Ok(())
}
