//! A conformance suite every [`SessionStore`] must pass.
//!
//! Call [`run`] from a test of your store, on a store that nothing else uses
//! while it runs (it checks counts). It panics with a message naming the
//! failed property, like an assertion.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use std::sync::Arc;
//! use statetemplate::store::{MemoryStore, conformance};
//! conformance::run(Arc::new(MemoryStore::new())).await;
//! # }
//! ```

use std::sync::Arc;

use minijinja::Value;

use super::{Append, SessionRecord, SessionStore};
use crate::ErrorKind;
use crate::fragment::{Delta, DeltaOp};
use crate::id::SessionId;

/// A record with fresh id, distinctive data and the given expiry.
pub fn sample_record(expires_ms: u64) -> SessionRecord {
    let id = SessionId::generate().expect("OS random source");
    SessionRecord {
        id,
        template: Arc::from("page.html"),
        data: Value::from(minijinja::value::Serde(serde_json::json!({
            "owner": id.to_string(),
            "title": "Grüße, <b>&</b> \"quotes\"",
            "n": 42,
            "ratio": 1.5,
            "flag": true,
            "nothing": null,
            "rows": [{"id": 1, "text": "one"}, {"id": 2, "text": "two"}],
            "nested": {"a": {"b": [1, 2, 3]}},
        }))),
        seq: 7,
        version: 0,
        generation: 1,
        created_ms: 1_700_000_000_000,
        last_access_ms: 1_700_000_000_500,
        expires_ms,
        epoch: 0x5eed_0000_0000_0001,
        applied: vec![(3, 9)],
    }
}

/// Runs every check against `store`. Panics on the first failure.
pub async fn run(store: Arc<dyn SessionStore>) {
    create_load_delete(&*store).await;
    save_replaces(&*store).await;
    touch(&*store).await;
    expired_listing(&*store).await;
    concurrent(store.clone()).await;
    append_in_order(&*store).await;
    append_refuses_stale_and_out_of_order(&*store).await;
    append_race(store.clone()).await;
    frames_kept(&*store).await;
    two_engines(store.clone()).await;
}

fn json(v: &Value) -> serde_json::Value {
    serde_json::to_value(v).expect("data serializes")
}

fn v(j: serde_json::Value) -> Value {
    Value::from(minijinja::value::Serde(j))
}

fn path(steps: &[serde_json::Value]) -> Vec<Value> {
    steps.iter().cloned().map(v).collect()
}

/// The record after `delta`: data applied, version and times moved on.
fn next_of(cur: &SessionRecord, delta: &Delta, seq_step: u64) -> SessionRecord {
    let mut next = cur.clone();
    next.data = delta.apply(&cur.data).expect("the test's delta applies");
    next.version = cur.version + 1;
    next.seq = cur.seq + seq_step;
    next.last_access_ms = cur.last_access_ms + 10;
    next.expires_ms = cur.expires_ms + 10;
    next
}

/// Everything but the data compared directly; the data through JSON (a
/// store may keep it as JSON and rebuild it).
fn assert_record(got: &SessionRecord, want: &SessionRecord, what: &str) {
    assert_eq!(json(&got.data), json(&want.data), "{what}: data");
    let strip = |r: &SessionRecord| SessionRecord {
        data: Value::UNDEFINED,
        ..r.clone()
    };
    assert_eq!(strip(got), strip(want), "{what}: the record's other fields");
}

async fn append_in_order(store: &dyn SessionStore) {
    use serde_json::json as j;
    let first = sample_record(u64::MAX / 2);
    store.create(&first).await.expect("create");
    let deltas = [
        Delta::new([DeltaOp::Set {
            path: path(&[j!("n")]),
            value: v(j!(43)),
        }]),
        Delta::new([
            DeltaOp::Insert {
                path: path(&[j!("rows")]),
                index: 1,
                value: v(j!({"id": 3, "text": "three"})),
            },
            DeltaOp::Unset {
                path: path(&[j!("nothing")]),
            },
            DeltaOp::Set {
                path: path(&[j!("added")]),
                value: v(j!({"deep": [1, "<&>"]})),
            },
        ]),
        Delta::new([
            DeltaOp::Remove {
                path: path(&[j!("rows")]),
                index: 0,
            },
            DeltaOp::Set {
                path: path(&[j!("nested"), j!("a"), j!("b"), j!(2)]),
                value: v(j!("x")),
            },
            DeltaOp::Set {
                path: path(&[j!("rows"), j!(0), j!("text")]),
                value: v(j!("THREE")),
            },
        ]),
    ];
    let mut cur = first.clone();
    for (i, d) in deltas.iter().enumerate() {
        // The seq stays when a render changed only data the page hides.
        let next = next_of(&cur, d, (i % 2) as u64);
        store
            .append(Append::new(&next, d))
            .await
            .expect("an append of the next version applies");
        let got = store.load(&next.id).await.expect("load").expect("present");
        assert_record(&got, &next, "load after an append returns its record");
        cur = next;
    }
    // The deltas, applied in order to the first snapshot, give what the
    // store holds.
    let mut replayed = first.data.clone();
    for d in &deltas {
        replayed = d.apply(&replayed).expect("applies");
    }
    let got = store.load(&first.id).await.expect("load").expect("present");
    assert_eq!(
        json(&got.data),
        json(&replayed),
        "the deltas applied in order to the first snapshot give the stored data"
    );
    assert_eq!(
        json(&got.data),
        serde_json::json!({
            "owner": first.id.to_string(),
            "title": "Grüße, <b>&</b> \"quotes\"",
            "n": 43, "ratio": 1.5, "flag": true,
            "rows": [{"id": 3, "text": "THREE"}, {"id": 2, "text": "two"}],
            "nested": {"a": {"b": [1, 2, "x"]}},
            "added": {"deep": [1, "<&>"]},
        }),
        "the stored data is what the deltas say"
    );
    assert_eq!(got.version, 3, "three appends: version 3");
    // Touch and save keep the version; appends continue after a save.
    store
        .touch(&cur.id, cur.last_access_ms + 5, cur.expires_ms + 5)
        .await
        .expect("touch");
    cur.last_access_ms += 5;
    cur.expires_ms += 5;
    assert_record(
        &store.load(&cur.id).await.expect("load").expect("present"),
        &cur,
        "touch leaves data and version",
    );
    cur.generation += 1;
    store.save(&cur).await.expect("save");
    let d = Delta::new([DeltaOp::Set {
        path: Vec::new(),
        value: v(j!({"replaced": true})),
    }]);
    let next = next_of(&cur, &d, 1);
    store
        .append(Append::new(&next, &d))
        .await
        .expect("an append after a save applies");
    assert_record(
        &store.load(&cur.id).await.expect("load").expect("present"),
        &next,
        "an append after a save (a whole-data set)",
    );
    store.delete(&cur.id).await.expect("delete");
}

async fn append_refuses_stale_and_out_of_order(store: &dyn SessionStore) {
    use serde_json::json as j;
    let first = sample_record(u64::MAX / 2);
    store.create(&first).await.expect("create");
    let set = |n: i64| {
        Delta::new([DeltaOp::Set {
            path: path(&[j!("n")]),
            value: v(j!(n)),
        }])
    };
    let (d1, d2) = (set(1), set(2));
    let one = next_of(&first, &d1, 1);
    store.append(Append::new(&one, &d1)).await.expect("append");
    let refused = |r: crate::Result<()>, what: &str| {
        assert_eq!(
            r.map_err(|e| e.kind()),
            Err(ErrorKind::Conflict),
            "{what} is refused with a Conflict error"
        );
    };
    // The same version again (a stale writer, a replay).
    let stale = next_of(&first, &d2, 1);
    refused(
        store.append(Append::new(&stale, &d2)).await,
        "an append of a version already stored",
    );
    // A gap: version 3 on top of version 1.
    let two = next_of(&one, &d2, 1);
    let three = next_of(&two, &d1, 1);
    refused(
        store.append(Append::new(&three, &d1)).await,
        "an append that skips a version",
    );
    // Version 0 has nothing before it.
    refused(
        store.append(Append::new(&first, &d1)).await,
        "an append of version 0",
    );
    assert_record(
        &store.load(&first.id).await.expect("load").expect("present"),
        &one,
        "refused appends change nothing",
    );
    // Then the right next version still applies.
    store
        .append(Append::new(&two, &d2))
        .await
        .expect("the next version applies after refusals");
    assert_record(
        &store.load(&first.id).await.expect("load").expect("present"),
        &two,
        "after refusals",
    );
    // No record: refused, and nothing is created.
    let ghost = sample_record(u64::MAX / 2);
    let g1 = next_of(&ghost, &d1, 1);
    refused(
        store.append(Append::new(&g1, &d1)).await,
        "an append to an unknown id",
    );
    assert_eq!(
        store.load(&ghost.id).await.expect("load"),
        None,
        "a refused append creates nothing"
    );
    store.delete(&first.id).await.expect("delete");
    refused(
        store.append(Append::new(&three, &d1)).await,
        "an append to a deleted record",
    );
    assert_eq!(
        store.load(&first.id).await.expect("load"),
        None,
        "an append does not bring a deleted record back"
    );
}

async fn append_race(store: Arc<dyn SessionStore>) {
    let first = sample_record(u64::MAX / 2);
    store.create(&first).await.expect("create");
    let mut tasks = Vec::new();
    for k in 0..8i64 {
        let (store, first) = (store.clone(), first.clone());
        tasks.push(tokio::spawn(async move {
            let d = Delta::new([DeltaOp::Set {
                path: Vec::new(),
                value: v(serde_json::json!({"writer": k})),
            }]);
            let next = next_of(&first, &d, 1);
            store
                .append(Append::new(&next, &d))
                .await
                .map(|()| k)
                .map_err(|e| e.kind())
        }));
    }
    let mut won = Vec::new();
    for t in tasks {
        match t.await.expect("task") {
            Ok(k) => won.push(k),
            Err(kind) => assert_eq!(kind, ErrorKind::Conflict, "a racing append loses"),
        }
    }
    assert_eq!(
        won.len(),
        1,
        "of appends racing with one version, exactly one applies"
    );
    let got = store.load(&first.id).await.expect("load").expect("present");
    assert_eq!(
        (json(&got.data), got.version),
        (serde_json::json!({"writer": won[0]}), 1),
        "the winner's record is stored"
    );
    store.delete(&first.id).await.expect("delete");
}

async fn create_load_delete(store: &dyn SessionStore) {
    let before = store.count().await.expect("count");
    let r = sample_record(u64::MAX / 2);
    store.create(&r).await.expect("create");
    let loaded = store.load(&r.id).await.expect("load");
    assert_eq!(loaded.as_ref(), Some(&r), "load returns what create stored");
    assert_eq!(
        store.count().await.expect("count"),
        before + 1,
        "count after create"
    );
    let dup = store.create(&r).await;
    assert_eq!(
        dup.map_err(|e| e.kind()),
        Err(ErrorKind::Store),
        "creating an existing id fails with a Store error"
    );
    let other = sample_record(u64::MAX / 2);
    assert_eq!(
        store.load(&other.id).await.expect("load"),
        None,
        "unknown id loads None"
    );
    assert!(
        store.delete(&r.id).await.expect("delete"),
        "delete reports an existing record"
    );
    assert!(
        !store.delete(&r.id).await.expect("delete"),
        "second delete reports none"
    );
    assert_eq!(
        store.load(&r.id).await.expect("load"),
        None,
        "deleted record is gone"
    );
    assert_eq!(
        store.count().await.expect("count"),
        before,
        "count after delete"
    );
}

async fn save_replaces(store: &dyn SessionStore) {
    let mut r = sample_record(u64::MAX / 2);
    store.save(&r).await.expect("save inserts a new record");
    assert_eq!(store.load(&r.id).await.expect("load").as_ref(), Some(&r));
    r.seq = 8;
    r.version = 5;
    r.generation = 2;
    r.data = Value::from(minijinja::value::Serde(
        serde_json::json!({"rows": [], "title": "changed"}),
    ));
    store.save(&r).await.expect("save replaces");
    assert_eq!(
        store.load(&r.id).await.expect("load").as_ref(),
        Some(&r),
        "save replaces data, seq, version and generation"
    );
    // A stale writer (an older version) cannot overwrite it.
    let mut stale = r.clone();
    stale.version = 4;
    stale.data = Value::from(minijinja::value::Serde(serde_json::json!({"stale": true})));
    let err = store
        .save(&stale)
        .await
        .expect_err("a stale save is refused");
    assert_eq!(err.kind(), ErrorKind::Conflict, "a stale save: {err}");
    assert_eq!(
        store.load(&r.id).await.expect("load").as_ref(),
        Some(&r),
        "a refused save changes nothing"
    );
    store.delete(&r.id).await.expect("delete");
}

async fn touch(store: &dyn SessionStore) {
    let r = sample_record(2_000);
    store.create(&r).await.expect("create");
    assert!(
        store.touch(&r.id, 1_500, 9_000).await.expect("touch"),
        "touch finds the record"
    );
    let t = store.load(&r.id).await.expect("load").expect("present");
    assert_eq!(
        (t.last_access_ms, t.expires_ms),
        (1_500, 9_000),
        "touch sets both times"
    );
    assert_eq!(t.data, r.data, "touch leaves the data");
    assert_eq!(t.seq, r.seq, "touch leaves the seq");
    let ghost = sample_record(0);
    assert!(
        !store.touch(&ghost.id, 1, 2).await.expect("touch"),
        "touch of unknown id"
    );
    assert_eq!(
        store.load(&ghost.id).await.expect("load"),
        None,
        "touch creates nothing"
    );
    store.delete(&r.id).await.expect("delete");
}

async fn expired_listing(store: &dyn SessionStore) {
    // Far in the past, so no other record of this run is listed between them.
    let base = 1_000u64;
    let recs: Vec<SessionRecord> = [30, 10, 20, 40, 1_000_000]
        .iter()
        .map(|d| sample_record(base + d))
        .collect();
    for r in &recs {
        store.create(r).await.expect("create");
    }
    let listed = store
        .list_expired(base + 30, 100)
        .await
        .expect("list_expired");
    let want: Vec<SessionId> = vec![recs[1].id, recs[2].id, recs[0].id];
    assert_eq!(
        listed, want,
        "expired = expires_ms <= now, oldest first, boundary included"
    );
    let limited = store
        .list_expired(base + 40, 2)
        .await
        .expect("list_expired");
    assert_eq!(limited, vec![recs[1].id, recs[2].id], "limit is respected");
    assert!(
        store
            .list_expired(base, 100)
            .await
            .expect("list_expired")
            .is_empty(),
        "nothing expired before the first expiry"
    );
    // Touching moves a record out of the expired set.
    store
        .touch(&recs[1].id, base + 30, base + 500)
        .await
        .expect("touch");
    let listed = store
        .list_expired(base + 30, 100)
        .await
        .expect("list_expired");
    assert_eq!(
        listed,
        vec![recs[2].id, recs[0].id],
        "a touched record is no longer expired"
    );
    for r in &recs {
        store.delete(&r.id).await.expect("delete");
    }
}

async fn concurrent(store: Arc<dyn SessionStore>) {
    let before = store.count().await.expect("count");
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut kept = Vec::new();
            for i in 0..25u64 {
                let mut r = sample_record(u64::MAX / 2);
                store.create(&r).await.expect("create");
                r.seq = i;
                store.save(&r).await.expect("save");
                if i % 5 == 0 {
                    store.delete(&r.id).await.expect("delete");
                } else {
                    kept.push(r);
                }
            }
            kept
        }));
    }
    let mut kept = Vec::new();
    for t in tasks {
        kept.extend(t.await.expect("task"));
    }
    assert_eq!(
        store.count().await.expect("count"),
        before + kept.len(),
        "concurrent creates and deletes are all accounted for"
    );
    for r in &kept {
        let got = store.load(&r.id).await.expect("load").expect("present");
        assert_eq!(&got, r, "each record keeps its own data under concurrency");
    }
    for r in &kept {
        store.delete(&r.id).await.expect("delete");
    }
}

/// Frames handed over with appends: a store that keeps them returns a run
/// that ends at the newest seq, each frame as given; one that keeps none
/// returns nothing.
async fn frames_kept(store: &dyn SessionStore) {
    let first = sample_record(u64::MAX / 2);
    store.create(&first).await.expect("create");
    let mut cur = first.clone();
    let mut frames = Vec::new();
    for i in 0..5 {
        let d = Delta::new([DeltaOp::Set {
            path: path(&[serde_json::json!("n")]),
            value: v(serde_json::json!(100 + i)),
        }]);
        let next = next_of(&cur, &d, 1);
        let frame = format!("[[1,\"{}\"]]", 100 + i);
        store
            .append(Append::new(&next, &d).with_frame(&frame))
            .await
            .expect("append with a frame");
        frames.push((next.seq, frame));
        cur = next;
    }
    let got = store.frames(&first.id, first.seq).await.expect("frames");
    if !got.is_empty() {
        let tail = &frames[frames.len() - got.len()..];
        assert_eq!(
            got.as_slice(),
            tail,
            "kept frames: the newest, in order, as given"
        );
        let after = store.frames(&first.id, cur.seq - 2).await.expect("frames");
        assert_eq!(after.as_slice(), &frames[3..], "frames after a seq");
    }
    store.delete(&first.id).await.expect("delete");
    assert!(
        store.frames(&first.id, 0).await.expect("frames").is_empty(),
        "a deleted session keeps no frames"
    );
}

/// Two engines on one store (two processes behind a load balancer, or an
/// old process not yet gone): both open one session; the one that renders
/// second from a stale version is refused (its render undone), so it cannot
/// overwrite the newer state; the first one's data is what is stored.
async fn two_engines(store: Arc<dyn SessionStore>) {
    use crate::StateTemplate;
    use crate::token::KeyRing;
    let env = || {
        let mut env = minijinja::Environment::new();
        env.add_template("n.html", "<p>{{ n }}</p>")
            .expect("template");
        env
    };
    let keys = KeyRing::generate().expect("keys");
    let engine = || {
        StateTemplate::builder(env())
            .keys(keys.clone())
            .store(store.clone())
            .build()
            .expect("engine")
    };
    let (a, b) = (engine(), engine());
    let init = a
        .new_session("n.html", &serde_json::json!({"n": 0}))
        .await
        .expect("new session");
    let sid = init.session_id.to_string();
    let on_a = a.get_session(&sid, &init.token).await.expect("open on a");
    let on_b = b.get_session(&sid, &init.token).await.expect("open on b");
    on_a.render(&serde_json::json!({"n": 1}))
        .await
        .expect("a renders");
    let err = on_b
        .render(&serde_json::json!({"n": 2}))
        .await
        .expect_err("b renders from a stale version");
    assert_eq!(err.kind(), ErrorKind::Conflict, "a stale writer is refused");
    assert!(on_b.html().await.contains(">0<"), "b's render was undone");
    let got = store
        .load(&init.session_id)
        .await
        .expect("load")
        .expect("stored");
    assert_eq!(
        json(&got.data),
        serde_json::json!({"n": 1}),
        "a's data is stored"
    );
    a.shutdown().await;
    b.shutdown().await;
    store.delete(&init.session_id).await.expect("delete");
}

/// A restart, for stores that persist: `open` makes a *new* handle on the
/// same stored state (a new connection, as a restarted process makes). A
/// client joins, misses the last two frames of a first engine, the engine
/// goes away; a second engine on a fresh handle gives the client exactly
/// those two frames (or, for a store that keeps no frames, a resync of the
/// same session), then its own live frames, and the client's page equals a
/// fresh render all along.
pub async fn resume_after_restart<S: SessionStore>(open: impl Fn() -> S) {
    use crate::apply::WireClient;
    use crate::session::Catchup;
    use crate::token::KeyRing;
    use crate::{SessionEvent, StateTemplate};
    let env = || {
        let mut env = minijinja::Environment::new();
        env.add_template(
            "page.html",
            "<h1>{{ title }}</h1><ul>{% for r in rows %}<li id=\"r{{ r.id }}\">{{ loop.index }}. {{ r.text }}</li>{% endfor %}</ul>",
        )
        .expect("template");
        env
    };
    let data = |title: &str, n: usize| {
        serde_json::json!({
            "title": title,
            "rows": (0..n).map(|i| serde_json::json!({"id": i, "text": format!("row {i}")})).collect::<Vec<_>>(),
        })
    };
    async fn next_frame(sub: &mut crate::Subscriber) -> String {
        match sub.recv().await {
            Some(SessionEvent::Patch(p)) => p.frame().to_owned(),
            other => panic!("expected a patch, got {other:?}"),
        }
    }
    let keys = KeyRing::generate().expect("keys");
    let engine = |store: S| {
        StateTemplate::builder(env())
            .keys(keys.clone())
            .store(store)
            .build()
            .expect("engine")
    };
    let a = engine(open());
    let initial = a
        .new_session("page.html", &data("t0", 3))
        .await
        .expect("new");
    let sid = initial.session_id.to_string();
    let s = a.get_session(&sid, &initial.token).await.expect("open");
    let (resync, mut sub) = s.join().await.expect("join");
    let epoch = resync.epoch().to_owned();
    let mut client = WireClient::new();
    client.apply(resync.frame()).expect("join frame");
    s.render(&data("t1", 4)).await.expect("render");
    client.apply(&next_frame(&mut sub).await).expect("frame");
    let held = client.seq();
    // Two renders the client does not see.
    s.render(&data("t2", 5)).await.expect("render");
    s.render(&data("t3", 2)).await.expect("render");
    let seq_a = s.seq().await;
    drop(sub);
    a.shutdown().await;
    drop((s, a));

    let b = engine(open());
    let s = b.get_session(&sid, &initial.token).await.expect("restored");
    assert_eq!(s.seq().await, seq_a, "the seq survives");
    assert_eq!(s.epoch(), epoch, "the epoch survives: same history");
    let keeps_frames = !b
        .store()
        .frames(&initial.session_id, 0)
        .await
        .expect("frames")
        .is_empty();
    let (catchup, mut sub) = s.resume(held, &epoch).await.expect("resume");
    let want = b
        .fragments()
        .render_html("page.html", &data("t3", 2))
        .expect("render");
    match catchup {
        Catchup::Frames(frames) => {
            assert!(keeps_frames, "frames from a store that keeps none?");
            assert_eq!(frames.len(), 2, "exactly the frames it missed");
            for f in &frames {
                client.apply(f.frame()).expect("missed frame");
            }
        }
        Catchup::Resync(r) => {
            assert!(
                !keeps_frames,
                "the store kept the frames: expected them, got a resync"
            );
            client = WireClient::new();
            client.apply(r.frame()).expect("resync");
        }
    }
    assert_eq!(client.html(), want, "caught up == a fresh render");
    // Live frames from the new engine continue the same page.
    for (i, d) in [data("t4", 6), data("t5", 1), data("t5", 7)]
        .iter()
        .enumerate()
    {
        s.render(d).await.expect("render");
        client
            .apply(&next_frame(&mut sub).await)
            .expect("live frame");
        let want = b.fragments().render_html("page.html", d).expect("render");
        assert_eq!(client.html(), want, "live frame {i} after the restart");
    }
    b.shutdown().await;
}
