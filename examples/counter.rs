//! A counter: buttons whose clicks run a server-side handler, a text field
//! echoed back as you type, and a server clock pushed to every page.
//!
//! Run: `cargo run --example counter`, then open the URL it prints.

#[path = "common/mod.rs"]
mod common;

use std::time::Duration;

use axum::Router;
use axum::http::HeaderMap;
use axum::routing::get;
use minijinja::Environment;
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use statetemplate::StateTemplate;

#[derive(Debug, Default, Serialize, Deserialize)]
struct Counter {
    count: i64,
    note: String,
    clock: String,
}

#[derive(Deserialize)]
struct Input {
    value: String,
}

#[tokio::main]
async fn main() -> Result<(), statetemplate::Error> {
    let mut env = Environment::new();
    env.add_template("counter.html", include_str!("../templates/counter.html"))?;
    let engine = StateTemplate::builder(env).keys(common::keys()).build()?;
    let live = common::live(&engine)
        .on_update("inc", |c: &mut Counter, _: Json| {
            c.count += 1;
            Ok(())
        })
        .on_update("dec", |c: &mut Counter, _: Json| {
            c.count -= 1;
            Ok(())
        })
        .on_update("note", |c: &mut Counter, p: Input| {
            c.note = p.value;
            Ok(())
        });
    common::spawn_clock(engine.clone(), Duration::from_millis(500));
    let page_live = live.clone();
    let app = Router::new()
        .route(
            "/",
            get(move |headers: HeaderMap| {
                let live = page_live.clone();
                async move {
                    common::page(
                        &live,
                        &headers,
                        "counter.html",
                        "Counter",
                        || Counter {
                            clock: common::clock_text(),
                            ..Counter::default()
                        },
                        |_| {},
                    )
                    .await
                }
            }),
        )
        .merge(live.router());
    common::serve(app, 3000).await;
    Ok(())
}
