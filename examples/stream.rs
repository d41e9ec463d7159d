//! A stream (Phoenix LiveView's `stream`): items the server renders once,
//! sends and forgets. `{% for e in feed|stream %}` in the template; the
//! handlers insert at the end or the start, insert 50 at once, delete by
//! key and reset, and the page keeps only the last 20 items (`limit(-20)`).
//! The session's data holds a counter, not the items: a tab that joins, or
//! a page rebuilt after a restart, shows the stream empty until new items
//! arrive.
//!
//! Run: `cargo run --example stream`, then open the URL it prints.

#[path = "common/mod.rs"]
mod common;

use minijinja::Environment;
use serde::{Deserialize, Serialize};
use serde_json::json;
use statetemplate::{EventCtx, StreamAt};

/// How many items the page keeps (the newest).
const KEEP: i64 = 20;

#[derive(Debug, Default, Serialize, Deserialize)]
struct Feed {
    /// Items sent so far (the last item's id).
    sent: u64,
    keep: i64,
    note: String,
    clock: String,
}

/// Takes `n` new ids from the session's counter (under its lock, so two
/// tabs never get the same one) and streams that many items to `at`.
async fn add(ctx: EventCtx, n: u64, at: StreamAt) -> statetemplate::Result<()> {
    let mut first = 0;
    ctx.session
        .update(|f: &mut Feed| {
            first = f.sent + 1;
            f.sent += n;
            Ok(())
        })
        .await?;
    let at_time = common::clock_text();
    ctx.session
        .stream("feed", |s| {
            for id in first..first + n {
                s.insert(&json!({"id": id, "at": at_time}), at);
            }
            s.limit(-KEEP);
        })
        .await?;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), statetemplate::Error> {
    let mut env = Environment::new();
    env.add_template("feed.html", include_str!("../templates/feed.html"))?;
    let engine = common::engine(env, "stream")?;
    let live = common::live(&engine)
        .on("add", |ctx| add(ctx, 1, StreamAt::End))
        .on("prepend", |ctx| add(ctx, 1, StreamAt::Start))
        .on("burst", |ctx| add(ctx, 50, StreamAt::End))
        .on("delete", |ctx| async move {
            let id = common::id_of(&ctx.payload()?)?;
            ctx.session
                .stream("feed", |s| {
                    s.delete(id);
                })
                .await?;
            Ok(())
        })
        .on("reset", |ctx| async move {
            ctx.session
                .stream("feed", |s| {
                    s.reset();
                })
                .await?;
            Ok(())
        });
    let app = common::app(live, "feed.html", "Feed", || Feed {
        keep: KEEP,
        clock: common::clock_text(),
        ..Feed::default()
    });
    common::serve(app, 3005).await;
    Ok(())
}
