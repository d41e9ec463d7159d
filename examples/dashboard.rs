//! A dashboard: a 1,000-row table that the server changes several times a
//! second; each push carries only the changed cells.
//!
//! Run: `cargo run --example dashboard`, then open the URL it prints.

#[path = "common/mod.rs"]
mod common;

use std::time::Duration;

use minijinja::Environment;
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use statetemplate::StateTemplate;

const ROWS: usize = 1000;

#[derive(Debug, Default, Serialize, Deserialize)]
struct Dash {
    rows: Vec<Row>,
    paused: bool,
    updates: u64,
    total: u64,
    note: String,
    clock: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct Row {
    id: u64,
    name: String,
    cpu: u64,
    mem: u64,
    status: String,
}

/// A small deterministic generator (no dependency needed for an example).
fn next(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

fn start() -> Dash {
    let mut seed = 42;
    let rows: Vec<Row> = (0..ROWS as u64)
        .map(|i| {
            let cpu = next(&mut seed) % 100;
            Row {
                id: i + 1,
                name: format!("host-{:04}", i + 1),
                cpu,
                mem: 512 + next(&mut seed) % 4096,
                status: if cpu > 90 { "busy" } else { "ok" }.into(),
            }
        })
        .collect();
    let total = rows.iter().map(|r| r.cpu).sum();
    Dash {
        rows,
        total,
        clock: common::clock_text(),
        ..Dash::default()
    }
}

/// Changes a few random rows of every connected session that is not paused.
fn spawn_feed(engine: StateTemplate, every: Duration) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        let mut seed = 7u64;
        loop {
            tick.tick().await;
            for s in engine.connected_sessions() {
                let mut local = next(&mut seed);
                let _ = s
                    .update(|d: &mut Dash| {
                        if d.paused {
                            return Ok(());
                        }
                        for _ in 0..5 {
                            let i = (next(&mut local) % ROWS as u64) as usize;
                            let r = &mut d.rows[i];
                            r.cpu = next(&mut local) % 100;
                            r.mem = 512 + next(&mut local) % 4096;
                            r.status = if r.cpu > 90 { "busy" } else { "ok" }.into();
                        }
                        d.updates += 1;
                        d.total = d.rows.iter().map(|r| r.cpu).sum();
                        Ok(())
                    })
                    .await;
            }
        }
    });
}

#[tokio::main]
async fn main() -> Result<(), statetemplate::Error> {
    let mut env = Environment::new();
    env.add_template(
        "dashboard.html",
        include_str!("../templates/dashboard.html"),
    )?;
    let engine = common::engine(env, "dashboard")?;
    let live = common::live(&engine).on_update("pause", |d: &mut Dash, _: Json| {
        d.paused = !d.paused;
        Ok(())
    });
    spawn_feed(engine.clone(), Duration::from_millis(200));
    let app = common::app(live, "dashboard.html", "Dashboard", start);
    common::serve(app, 3002).await;
    Ok(())
}
