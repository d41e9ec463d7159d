//! A stream keeps nothing per item on the server: 100,000 items streamed
//! into a joined session (which keeps its recent frames for resumes, and
//! has a subscriber receiving every frame) leave the process's resident
//! memory where it was after the first 1,000, give or take a small part of
//! the bytes that were streamed. Keeping anything per item (the items,
//! their keys, their HTML or their frames) would grow it by about as much
//! as was streamed. The only test in its binary, so nothing else
//! allocates meanwhile.

use std::time::Duration;

use minijinja::Environment;
use serde_json::json;
use statetemplate::{SessionEvent, StateTemplate, StreamAt};

/// This process's resident set size in bytes (`/proc/self/statm`).
fn rss() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
    let pages: usize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("statm has a resident field");
    pages * 4096
}

const BATCH: u64 = 10;

/// Streams items `first..first + n` in batches (a third at the start, the
/// rest at the end, a delete now and then, the client keeping the last
/// 100), taking every frame from `sub` and adding its bytes to `sent`.
async fn stream(
    session: &statetemplate::Session,
    first: u64,
    n: u64,
    sub: &mut statetemplate::Subscriber,
    sent: &mut usize,
) {
    for b in (first..first + n).step_by(BATCH as usize) {
        session
            .stream("feed", |s| {
                for id in b..b + BATCH {
                    let at = if id % 3 == 0 {
                        StreamAt::Start
                    } else {
                        StreamAt::End
                    };
                    s.insert(
                        &json!({"id": id, "who": "ann", "text": format!("message number {id}")}),
                        at,
                    );
                }
                if b % 100 == 0 {
                    s.delete(b.saturating_sub(50));
                }
                s.limit(-100);
            })
            .await
            .unwrap();
        // The subscriber takes each frame as it comes.
        while let Ok(Some(ev)) = tokio::time::timeout(Duration::ZERO, sub.recv()).await {
            match ev {
                SessionEvent::Patch(p) => *sent += p.frame().len(),
                other => panic!("the subscriber fell behind: {other:?}"),
            }
        }
    }
}

#[tokio::test(flavor = "current_thread")]
async fn streaming_100k_items_retains_nothing_per_item() {
    let mut env = Environment::new();
    env.add_template(
        "feed.html",
        "<h1>{{ title }}</h1><ul>{% for m in feed|stream %}<li id=\"m{{ m.id }}\">{{ m.who }}: {{ m.text }}</li>{% endfor %}</ul>",
    )
    .unwrap();
    let engine = StateTemplate::builder(env).build().unwrap();
    let init = engine
        .new_session("feed.html", &json!({"title": "Feed"}))
        .await
        .unwrap();
    let session = engine
        .get_session(&init.session_id.to_string(), &init.token)
        .await
        .unwrap();
    // Joined: every render is encoded and the last frames are kept.
    let (_, mut sub) = session.join().await.unwrap();
    let html = session.html().await;
    let mut sent = 0usize;
    // Warm up: the replay buffer fills, the statics table is sent.
    stream(&session, 0, 1_000, &mut sub, &mut sent).await;
    let (after_1k, sent_1k) = (rss(), sent);
    stream(&session, 1_000, 99_000, &mut sub, &mut sent).await;
    let after_100k = rss();
    let streamed = sent - sent_1k;
    let growth = after_100k as isize - after_1k as isize;
    println!(
        "resident after 1,000 items: {after_1k} B; after 100,000: {after_100k} B ({growth:+} B) \
         while {streamed} B of frames were streamed"
    );
    assert_eq!(session.seq().await, 100_000 / BATCH);
    assert_eq!(session.html().await, html, "the page holds no items");
    assert!(streamed > 99_000 * 30, "{streamed} bytes streamed");
    // Allocator and page-granularity noise is far below 2% of that.
    assert!(
        growth < (streamed / 50) as isize,
        "resident memory grew by {growth} bytes while {streamed} bytes were streamed"
    );
}
