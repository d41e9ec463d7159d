//! Sessions end to end, without a browser: a page handler creates a session,
//! two "tabs" open it with its token and subscribe, a background ticker
//! renders new data, the tabs apply what arrives, and the session expires.
//!
//! Run: `cargo run --example sessions`
//! (keys come from `STATETEMPLATE_KEYS` when set; see `KeyRing::from_env`).

use std::time::Duration;

use minijinja::Environment;
use serde_json::json;
use statetemplate::session::EvictReason;
use statetemplate::testing::WireClient;
use statetemplate::token::{Key, KeyRing};
use statetemplate::{SessionEvent, StateTemplate};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), statetemplate::Error> {
    let mut env = Environment::new();
    env.add_template("clock.html", include_str!("../templates/small.html"))
        .expect("template parses");
    let keys = match KeyRing::from_env("STATETEMPLATE_KEYS") {
        Ok(k) => k,
        Err(_) => {
            let key = Key::generate()?;
            println!(
                "no STATETEMPLATE_KEYS set: using a fresh key (export STATETEMPLATE_KEYS=<43 chars> to keep tokens across restarts)\n"
            );
            KeyRing::new(key)
        }
    };
    let engine = StateTemplate::builder(env)
        .keys(keys)
        .expiration(Duration::from_secs(2))
        .cleanup_interval(Duration::from_millis(500))
        .max_sessions(10_000)
        .on_evict(|record, why| {
            let why = match why {
                EvictReason::Expired => "expired",
                _ => "evicted",
            };
            println!("on_evict: session {why} at seq {}", record.seq);
        })
        .build()?;

    // 1. The page handler: full HTML plus what the socket needs.
    let data = |count: u64| {
        json!({
            "title": "Ticker",
            "count": count,
            "status": if count % 2 == 0 { "even" } else { "odd" },
            "items": (1..=count.min(3)).map(|i| json!({"id": i, "text": format!("tick {i}"), "done": false})).collect::<Vec<_>>(),
        })
    };
    let initial = engine.new_session("clock.html", &data(0)).await?;
    println!(
        "initial HTML ({} bytes):\n{}",
        initial.html.len(),
        initial.html
    );
    println!(
        "session id {} (token: {} characters, sealed)\n",
        initial.session_id,
        initial.token.len()
    );

    // 2. Two tabs open the session with the token and join it.
    let id = initial.session_id.to_string();
    let session = engine.get_session(&id, &initial.token).await?;
    let mut tabs = Vec::new();
    for tab in 1..=2 {
        let s = engine.get_session(&id, &initial.token).await?;
        let (resync, mut updates) = s.join().await?;
        tabs.push(tokio::spawn(async move {
            let mut dom = WireClient::new();
            dom.apply(resync.frame()).expect("join frame applies");
            while let Some(ev) = updates.recv().await {
                match ev {
                    SessionEvent::Patch(p) => {
                        dom.apply(p.frame()).expect("frame applies");
                        println!(
                            "tab {tab}: seq {} ({} bytes): {}",
                            p.seq(),
                            p.frame().len(),
                            p.frame()
                        );
                    }
                    SessionEvent::Resync(r) => {
                        dom = WireClient::new();
                        dom.apply(r.frame()).expect("resync applies");
                        println!("tab {tab}: resync at seq {}", r.seq());
                    }
                    _ => {}
                }
            }
            println!("tab {tab}: session ended");
            dom.html()
        }));
    }

    // 3. A background task renders new data (server push).
    let ticker = {
        let session = session.clone();
        tokio::spawn(async move {
            for count in 1..=5 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                session.render(&data(count)).await?;
            }
            Ok::<_, statetemplate::Error>(())
        })
    };
    ticker.await.expect("ticker ran")?;
    let want = engine.fragments().render_html("clock.html", &data(5))?;
    assert_eq!(session.html().await, want);

    // 4. Nobody renders or touches it for 2 s: it expires and the tabs end.
    println!("\nidle for 2 s...");
    for tab in tabs {
        let html = tab.await.expect("tab ran");
        assert_eq!(html, want, "each tab holds exactly a fresh render");
    }
    let again = engine.get_session(&id, &initial.token).await;
    println!("opening it again: {}", again.unwrap_err());
    Ok(())
}
