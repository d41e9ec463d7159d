//! A counter: buttons whose clicks run a server-side handler, a text field
//! echoed back as you type, a server clock pushed to every page, a JS hook
//! (a chart drawn on a canvas, which asks the server and hears its pushed
//! events) and flash messages.
//!
//! Run: `cargo run --example counter`, then open the URL it prints.

#[path = "common/mod.rs"]
mod common;

use minijinja::Environment;
use serde::{Deserialize, Serialize};
use serde_json::{Value as Json, json};
use statetemplate::EventCtx;

#[derive(Debug, Default, Serialize, Deserialize)]
struct Counter {
    count: i64,
    note: String,
    clock: String,
    #[serde(default = "shown")]
    chart: bool,
}

fn shown() -> bool {
    true
}

#[tokio::main]
async fn main() -> Result<(), statetemplate::Error> {
    let mut env = Environment::new();
    env.add_template("counter.html", include_str!("../templates/counter.html"))?;
    let engine = common::engine(env, "counter")?;
    let live = common::live(&engine)
        .client_extras(true)
        .on_update("chart", |c: &mut Counter, _: Json| {
            c.chart = !c.chart;
            Ok(())
        })
        // A reply for the hook that asked, a pushed event for every tab's
        // hook, and a flash message.
        .on("double", |ctx: EventCtx| async move {
            let c: Counter = ctx.session.data().await?;
            ctx.reply(&json!({"double": c.count * 2}))?;
            ctx.session.push("doubled", &json!({"count": c.count}))?;
            ctx.session.flash(
                "info",
                &format!("The server doubled {}: {}", c.count, c.count * 2),
            )?;
            Ok(())
        })
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
        chart: true,
        ..Counter::default()
    });
    common::serve(app, 3000).await;
    Ok(())
}
