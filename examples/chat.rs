//! Chat: a message sent in one browser reaches every session in the "chat"
//! group (broadcast), and the tabs of one browser share one session.
//!
//! Run: `cargo run --example chat`, then open the URL it prints in two
//! browsers (or a private window) and in two tabs.

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

/// Appends a message to the history and renders it to every chat session.
async fn send(ctx: EventCtx, history: History) -> statetemplate::Result<()> {
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
    let messages = {
        let mut h = history.lock().expect("history lock");
        h.0 += 1;
        let msg = Message {
            id: h.0,
            from,
            text,
        };
        h.1.push(msg);
        let skip = h.1.len().saturating_sub(KEEP);
        h.1.drain(..skip);
        h.1.clone()
    };
    broadcast(&ctx.engine, &messages).await;
    Ok(())
}

async fn broadcast(engine: &StateTemplate, messages: &[Message]) {
    let members = engine.group("chat");
    let online = members.len();
    for s in members {
        let _ = s
            .update(|c: &mut Chat| {
                c.messages = messages.to_vec();
                c.online = online;
                Ok(())
            })
            .await;
    }
}

#[tokio::main]
async fn main() -> Result<(), statetemplate::Error> {
    let mut env = Environment::new();
    env.add_template("chat.html", include_str!("../templates/chat.html"))?;
    let engine = common::engine(env, "chat")?;
    let history: History = Arc::new(Mutex::new((0, Vec::new())));
    let h = history.clone();
    let live = common::live(&engine)
        .on("send", move |ctx| send(ctx, h.clone()))
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
                        let online = engine.group("chat").len() + 1;
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
