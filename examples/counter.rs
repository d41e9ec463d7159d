//! A counter: buttons whose clicks run a server-side handler, a text field
//! echoed back as you type, and a server clock pushed to every page.
//!
//! Run: `cargo run --example counter`, then open the URL it prints.

#[path = "common/mod.rs"]
mod common;

use minijinja::Environment;
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

#[derive(Debug, Default, Serialize, Deserialize)]
struct Counter {
    count: i64,
    note: String,
    clock: String,
}

#[tokio::main]
async fn main() -> Result<(), statetemplate::Error> {
    let mut env = Environment::new();
    env.add_template("counter.html", include_str!("../templates/counter.html"))?;
    let engine = common::engine(env, "counter")?;
    let live = common::live(&engine)
        .on_update("inc", |c: &mut Counter, _: Json| {
            c.count += 1;
            Ok(())
        })
        .on_update("dec", |c: &mut Counter, _: Json| {
            // A rule the user is told about: the page shows this message.
            if c.count <= 0 {
                return Err(statetemplate::Error::user(
                    "The count cannot go below zero.",
                ));
            }
            c.count -= 1;
            Ok(())
        });
    let app = common::app(live, "counter.html", "Counter", || Counter {
        clock: common::clock_text(),
        ..Counter::default()
    });
    common::serve(app, 3000).await;
    Ok(())
}
