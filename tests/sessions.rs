//! Sessions: lifecycle, data flow, isolation, tokens, expiry, LRU, ordering,
//! lag, atomicity, restore from a store, and the seed-compatible Renderer.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use minijinja::Environment;
use serde_json::{Value as Json, json};
use statetemplate::store::{MemoryStore, SessionRecord, SessionStore, conformance};
use statetemplate::testing::{WireClient, apply_updates};
use statetemplate::token::{Key, KeyRing};

#[path = "common/flaky.rs"]
mod flaky;
use flaky::FlakyStore;
use statetemplate::session::EvictReason;
use statetemplate::{
    Builder, ErrorKind, InitialRender, Result, Session, SessionEvent, StateTemplate,
};

const PAGE: &str = "<h1>{{ title }}</h1>\
<ul>{% for r in rows %}<li>{{ r.text }}</li>{% endfor %}</ul>\
<p>{{ owner }}</p>";

fn env() -> Environment<'static> {
    let mut env = Environment::new();
    env.add_template("page.html", PAGE).unwrap();
    env.add_template("div.html", "<p>{{ 10 // n }}</p>")
        .unwrap();
    env
}

fn builder() -> Builder {
    StateTemplate::builder(env()).keys(KeyRing::generate().unwrap())
}

fn data(owner: &str, title: &str, rows: &[(u32, &str)]) -> Json {
    json!({
        "owner": owner,
        "title": title,
        "rows": rows.iter().map(|(id, t)| json!({"id": id, "text": t})).collect::<Vec<_>>(),
    })
}

/// Opens the session of `initial` with its own token.
async fn reopen(engine: &StateTemplate, initial: &InitialRender) -> Session {
    engine
        .get_session(&initial.session_id.to_string(), &initial.token)
        .await
        .unwrap()
}

fn fresh(engine: &StateTemplate, template: &str, d: &Json) -> String {
    engine.fragments().render_html(template, d).unwrap()
}

#[tokio::test]
async fn acquire_get_and_invalidate() {
    let engine = builder().build().unwrap();
    let d = data("a", "Hello", &[(1, "one")]);
    let initial = engine.new_session("page.html", &d).await.unwrap();
    assert_eq!(initial.html, fresh(&engine, "page.html", &d));
    assert_eq!(initial.session_id.to_string().len(), 22);
    assert!(!format!("{initial:?}").contains(&initial.token));

    let id = initial.session_id.to_string();
    let s = engine.get_session(&id, &initial.token).await.unwrap();
    assert_eq!(s.id(), initial.session_id);
    assert_eq!(s.html().await, initial.html);
    assert_eq!(engine.live_sessions(), 1);
    assert!(engine.store().load(&s.id()).await.unwrap().is_some());

    let mut sub = s.updates();
    s.close().await.unwrap();
    s.close().await.unwrap(); // twice is fine
    assert!(s.is_closed());
    assert!(sub.recv().await.is_none(), "subscribers end on close");
    assert_eq!(engine.live_sessions(), 0);
    assert!(engine.store().load(&s.id()).await.unwrap().is_none());
    let e = engine.get_session(&id, &initial.token).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidSession);
    let e = s.render(&d).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::SessionClosed);
    assert!(s.updates().recv().await.is_none());
}

#[tokio::test]
async fn data_flows_from_snapshot_to_updates() {
    let engine = builder().build().unwrap();
    let steps = [
        data("a", "One", &[(1, "x")]),
        data("a", "Two", &[(1, "x")]),
        data("a", "Two", &[(1, "x"), (2, "y")]),
        data("a", "Two", &[(2, "y"), (1, "x")]),
        data("a", "Two", &[(2, "y2")]),
        data("a", "Two", &[(2, "y2")]), // identical: nothing sent
        data("a", "Three", &[]),
    ];
    let initial = engine.new_session("page.html", &steps[0]).await.unwrap();
    let s = reopen(&engine, &initial).await;
    let (resync, mut joined) = s.join().await.unwrap();
    let mut plain = s.updates();
    assert_eq!(resync.html(), initial.html);
    let mut wire = WireClient::new();
    wire.apply(resync.frame()).unwrap();
    assert_eq!(wire.html(), initial.html);

    let mut browser = initial.html.clone();
    let mut last_seq = 0;
    for d in &steps[1..] {
        let before = s.seq().await;
        let seq = s.render(d).await.unwrap();
        let want = fresh(&engine, "page.html", d);
        assert_eq!(s.html().await, want);
        if seq == before {
            continue; // identical data
        }
        let Some(SessionEvent::Patch(p)) = joined.recv().await else {
            panic!("expected a patch")
        };
        assert_eq!(p.seq(), seq);
        assert!(p.seq() > last_seq);
        last_seq = p.seq();
        wire.apply(p.frame()).unwrap();
        assert_eq!(wire.html(), want, "wire client == fresh render");
        let Some(SessionEvent::Patch(q)) = plain.recv().await else {
            panic!("expected a patch")
        };
        assert_eq!(q.seq(), p.seq(), "every subscriber gets every update");
        browser = apply_updates(&browser, &q.updates()).unwrap();
        assert_eq!(
            browser, want,
            "updates applied to the old page == fresh render"
        );
    }
    assert_eq!(last_seq, 5, "five of six steps changed something");
    let rec = engine.store().load(&s.id()).await.unwrap().unwrap();
    assert_eq!(rec.seq, 5);
    assert_eq!(
        serde_json::to_value(&rec.data).unwrap(),
        steps[6],
        "the store holds the last snapshot"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolation_of_1000_concurrent_sessions() {
    let engine = builder().build().unwrap();
    let marker = |i: usize, step: usize| format!("zq{i}q{step}qz");
    let mut tasks = Vec::new();
    for i in 0..1000 {
        let engine = engine.clone();
        tasks.push(tokio::spawn(async move {
            let d0 = data(&marker(i, 0), &marker(i, 0), &[(1, &marker(i, 0))]);
            let initial = engine.new_session("page.html", &d0).await.unwrap();
            let s = reopen(&engine, &initial).await;
            let mut sub = s.updates();
            let reader = tokio::spawn(async move {
                let mut seen = Vec::new();
                while let Some(ev) = sub.recv().await {
                    let SessionEvent::Patch(p) = ev else {
                        panic!("no resync expected")
                    };
                    seen.push(p.frame().to_owned());
                    for u in p.updates() {
                        seen.push(u.html);
                    }
                }
                seen
            });
            for step in 1..=3 {
                let m = marker(i, step);
                s.render(&data(&m, &m, &[(1, &m), (2, &m)])).await.unwrap();
                tokio::task::yield_now().await;
            }
            s.close().await.unwrap();
            (initial.html, reader.await.unwrap())
        }));
    }
    let mut n = 0;
    for (i, t) in tasks.into_iter().enumerate() {
        let (html, seen) = t.await.unwrap();
        let all = std::iter::once(html).chain(seen.iter().cloned());
        let mut frames = 0;
        for text in all {
            for part in text.split("zq").skip(1) {
                let owner: usize = part.split('q').next().unwrap().parse().unwrap();
                assert_eq!(owner, i, "session {i} saw data of session {owner}");
                n += 1;
            }
            frames += 1;
        }
        assert!(frames >= 4, "session {i} got its updates");
    }
    assert!(n > 10_000, "markers were checked ({n})");
}

#[tokio::test(start_paused = true)]
async fn tokens_round_trip_and_refusals() {
    let engine = builder()
        .token_ttl(Duration::from_secs(60))
        .build()
        .unwrap();
    let d = data("a", "t", &[]);
    let a = engine.new_session("page.html", &d).await.unwrap();
    let b = engine.new_session("page.html", &d).await.unwrap();
    let (ida, idb) = (a.session_id.to_string(), b.session_id.to_string());
    assert!(engine.get_session(&ida, &a.token).await.is_ok());

    let refused = |r: Result<statetemplate::Session>| {
        let e = r.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidSession);
        assert_eq!(
            e.to_string(),
            "invalid or expired session",
            "one error for all"
        );
    };
    refused(engine.get_session(&idb, &a.token).await); // token of A for B
    refused(engine.get_session(&ida, &b.token).await);
    // Tampered: change one character in every position.
    for i in 0..a.token.len() {
        let mut t = a.token.clone().into_bytes();
        t[i] = if t[i] == b'A' { b'B' } else { b'A' };
        refused(
            engine
                .get_session(&ida, &String::from_utf8(t).unwrap())
                .await,
        );
    }
    refused(engine.get_session(&ida, "").await);
    refused(engine.get_session(&ida, &format!("{}=", a.token)).await);
    refused(engine.get_session("not-an-id", &a.token).await);
    // Another engine's key.
    let other = builder().build().unwrap();
    let c = other.new_session("page.html", &d).await.unwrap();
    refused(
        engine
            .get_session(&c.session_id.to_string(), &c.token)
            .await,
    );

    // Expired: the token lives 60 s.
    tokio::time::advance(Duration::from_secs(59)).await;
    let s = engine.get_session(&ida, &a.token).await.unwrap();
    tokio::time::advance(Duration::from_secs(1)).await;
    refused(engine.get_session(&ida, &a.token).await);
    // A fresh token from the live session works.
    let t2 = s.token().unwrap();
    assert!(engine.get_session(&ida, &t2).await.is_ok());
    // Revocation: older tokens stop working.
    let t3 = s.revoke_tokens().await.unwrap();
    refused(engine.get_session(&ida, &t2).await);
    assert!(engine.get_session(&ida, &t3).await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn expiry_with_a_paused_clock() {
    let evicted = Arc::new(Mutex::new(Vec::new()));
    let ev = evicted.clone();
    let engine = builder()
        .expiration(Duration::from_secs(600))
        .unjoined_expiration(Duration::from_secs(600))
        .cleanup_interval(Duration::from_secs(60))
        .token_ttl(Duration::from_secs(3600))
        .on_evict(move |r: &SessionRecord, why| ev.lock().unwrap().push((r.id, why, r.seq)))
        .build()
        .unwrap();
    let d = data("a", "t", &[]);
    let a = engine.new_session("page.html", &d).await.unwrap();
    let b = engine.new_session("page.html", &d).await.unwrap();
    let c = engine.new_session("page.html", &d).await.unwrap();
    let sa = reopen(&engine, &a).await;
    let sb = reopen(&engine, &b).await;
    let sc = reopen(&engine, &c).await;
    let mut sub_a = sa.updates();

    tokio::time::advance(Duration::from_secs(330)).await;
    sb.render(&data("b", "busy", &[])).await.unwrap(); // a render: not activity
    sc.touch().await.unwrap(); // activity: a client frame
    tokio::time::advance(Duration::from_secs(330)).await;
    // The store lists A and B as expired (their idle clocks ran out), not C.
    let rec_a = engine.store().load(&sa.id()).await.unwrap().unwrap();
    let listed = engine
        .store()
        .list_expired(rec_a.expires_ms, 100)
        .await
        .unwrap();
    assert!(listed.contains(&sa.id()) && listed.contains(&sb.id()));
    assert!(!listed.contains(&sc.id()));
    // Let the sweeper run (it ticks every 60 s).
    tokio::time::sleep(Duration::from_secs(61)).await;
    assert!(sub_a.recv().await.is_none(), "A's subscriber ended");
    assert!(sa.is_closed() && sb.is_closed());
    assert!(engine.store().load(&sa.id()).await.unwrap().is_none());
    assert_eq!(
        engine
            .get_session(&sa.id().to_string(), &a.token)
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::InvalidSession
    );
    let mut ev = evicted.lock().unwrap().clone();
    ev.sort_by_key(|e| e.2);
    assert_eq!(
        ev,
        [
            (sa.id(), EvictReason::Expired, 0),
            (sb.id(), EvictReason::Expired, 1)
        ],
        "the callback sees each one's last seq"
    );
    assert!(!sc.is_closed());
    assert_eq!(engine.live_sessions(), 1);

    // Nothing more happens: C expires 600 s after its last activity.
    tokio::time::sleep(Duration::from_secs(600)).await;
    assert!(sc.is_closed());
    assert_eq!(engine.live_sessions(), 0);
    assert_eq!(engine.store().count().await.unwrap(), 0);
    assert_eq!(evicted.lock().unwrap().len(), 3);
}

#[tokio::test(start_paused = true)]
async fn opening_an_idle_session_before_the_sweep_refuses_it() {
    let engine = builder()
        .expiration(Duration::from_secs(10))
        .cleanup_interval(Duration::from_secs(3600))
        .build()
        .unwrap();
    let a = engine
        .new_session("page.html", &data("a", "t", &[]))
        .await
        .unwrap();
    tokio::time::advance(Duration::from_secs(10)).await;
    let e = engine
        .get_session(&a.session_id.to_string(), &a.token)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidSession);
    assert_eq!(engine.live_sessions(), 0);
}

#[tokio::test]
async fn lru_eviction_and_callback() {
    let evicted = Arc::new(Mutex::new(Vec::new()));
    let ev = evicted.clone();
    let engine = builder()
        .max_sessions(3)
        .on_evict(move |r: &SessionRecord, why| {
            ev.lock()
                .unwrap()
                .push((r.id, why, r.data.get_attr("owner").unwrap().to_string()))
        })
        .build()
        .unwrap();
    let mut sessions = Vec::new();
    for name in ["s1", "s2", "s3"] {
        let i = engine
            .new_session("page.html", &data(name, "t", &[]))
            .await
            .unwrap();
        let s = reopen(&engine, &i).await;
        sessions.push((i, s));
    }
    let mut sub2 = sessions[1].1.updates();
    sessions[0].1.touch().await.unwrap(); // s1 is now more recent than s2
    let s4 = engine
        .new_session("page.html", &data("s4", "t", &[]))
        .await
        .unwrap();
    assert_eq!(engine.live_sessions(), 3);
    assert_eq!(
        evicted.lock().unwrap().as_slice(),
        &[(sessions[1].1.id(), EvictReason::Capacity, "s2".to_owned())]
    );
    assert!(sub2.recv().await.is_none());
    assert!(
        engine
            .get_session(&sessions[1].0.session_id.to_string(), &sessions[1].0.token)
            .await
            .is_err()
    );
    // A render is not activity: s3 goes next although it rendered last;
    // s1, touched later than s3, stays.
    sessions[2]
        .1
        .render(&data("s3", "again", &[]))
        .await
        .unwrap();
    engine
        .new_session("page.html", &data("s5", "t", &[]))
        .await
        .unwrap();
    let ev = evicted.lock().unwrap().clone();
    assert_eq!(ev.len(), 2);
    assert_eq!(ev[1].0, sessions[2].1.id());
    assert!(!sessions[0].1.is_closed());
    assert!(engine.store().load(&s4.session_id).await.unwrap().is_some());
    assert_eq!(engine.store().count().await.unwrap(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_renders_on_one_session_arrive_in_order() {
    // Room for all 200 updates: this test is about order, not lag.
    let engine = builder().subscriber_capacity(256).build().unwrap();
    let d = |i: usize| data("c", &format!("title {i}"), &[(i as u32 % 7, "r")]);
    let initial = engine.new_session("page.html", &d(0)).await.unwrap();
    let s = reopen(&engine, &initial).await;
    let (resync, mut sub) = s.join().await.unwrap();
    let mut tasks = Vec::new();
    for i in 1..=200 {
        let s = s.clone();
        tasks.push(tokio::spawn(
            async move { (s.render(&d(i)).await.unwrap(), i) },
        ));
    }
    let mut by_seq = std::collections::BTreeMap::new();
    for t in tasks {
        let (seq, i) = t.await.unwrap();
        assert!(by_seq.insert(seq, i).is_none(), "seq {seq} given twice");
    }
    assert_eq!(
        by_seq.keys().copied().collect::<Vec<_>>(),
        (1..=200).collect::<Vec<u64>>()
    );
    let mut wire = WireClient::new();
    wire.apply(resync.frame()).unwrap();
    for want in 1..=200u64 {
        let Some(SessionEvent::Patch(p)) = sub.recv().await else {
            panic!("expected patch {want}")
        };
        assert_eq!(p.seq(), want, "updates arrive in seq order, none lost");
        wire.apply(p.frame()).unwrap();
        let i = by_seq[&want];
        assert_eq!(wire.html(), fresh(&engine, "page.html", &d(i)));
    }
    let last = by_seq[&200];
    assert_eq!(s.html().await, fresh(&engine, "page.html", &d(last)));
}

#[tokio::test]
async fn a_lagging_subscriber_gets_a_resync_and_blocks_nobody() {
    let engine = builder().subscriber_capacity(4).build().unwrap();
    let initial = engine
        .new_session("page.html", &data("l", "0", &[]))
        .await
        .unwrap();
    let s = reopen(&engine, &initial).await;
    let (resync, mut slow) = s.join().await.unwrap();
    let mut fast = s.updates();
    let mut wire = WireClient::new();
    wire.apply(resync.frame()).unwrap();
    for i in 1..=20 {
        s.render(&data("l", &i.to_string(), &[(i, "row")]))
            .await
            .unwrap();
        let Some(SessionEvent::Patch(p)) = fast.recv().await else {
            panic!()
        };
        assert_eq!(p.seq(), i as u64);
    }
    // The slow one never read: it gets the whole page at seq 20.
    let Some(SessionEvent::Resync(r)) = slow.recv().await else {
        panic!("expected a resync")
    };
    assert_eq!(r.seq(), 20);
    let want = fresh(&engine, "page.html", &data("l", "20", &[(20, "row")]));
    assert_eq!(r.html(), want);
    let mut wire2 = WireClient::new();
    wire2.apply(r.frame()).unwrap();
    assert_eq!(wire2.html(), want);
    // And continues with patches after it.
    s.render(&data("l", "21", &[(20, "row"), (21, "row")]))
        .await
        .unwrap();
    let Some(SessionEvent::Patch(p)) = slow.recv().await else {
        panic!()
    };
    assert_eq!(p.seq(), 21);
    wire2.apply(p.frame()).unwrap();
    assert_eq!(
        wire2.html(),
        fresh(
            &engine,
            "page.html",
            &data("l", "21", &[(20, "row"), (21, "row")])
        )
    );
}

#[tokio::test]
async fn a_failed_render_changes_nothing() {
    let engine = builder().build().unwrap();
    let initial = engine
        .new_session("div.html", &json!({"n": 2}))
        .await
        .unwrap();
    let s = reopen(&engine, &initial).await;
    let mut sub = s.updates();
    let e = s.render(&json!({"n": 0})).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Template);
    assert_eq!(e.template_name(), Some("div.html"));
    assert_eq!(e.line(), Some(1));
    assert_eq!(s.html().await, initial.html);
    assert_eq!(s.seq().await, 0);
    let rec = engine.store().load(&s.id()).await.unwrap().unwrap();
    assert_eq!(serde_json::to_value(&rec.data).unwrap(), json!({"n": 2}));
    assert_eq!(s.render(&json!({"n": 5})).await.unwrap(), 1);
    let Some(SessionEvent::Patch(p)) = sub.recv().await else {
        panic!()
    };
    assert_eq!(p.seq(), 1, "the failed render sent nothing");
    assert_eq!(p.updates()[0].html, "2");
}

#[tokio::test]
async fn a_store_failure_undoes_the_render() {
    let store = Arc::new(FlakyStore::default());
    let engine = builder().store(store.clone()).build().unwrap();
    let d1 = data("f", "one", &[(1, "a")]);
    let initial = engine.new_session("page.html", &d1).await.unwrap();
    let s = reopen(&engine, &initial).await;
    let (resync, mut sub) = s.join().await.unwrap();
    store.fail.store(true, Ordering::SeqCst);
    let d2 = data("f", "two", &[(1, "a"), (2, "b")]);
    let e = s.render(&d2).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Store);
    assert!(std::error::Error::source(&e).is_some());
    assert_eq!(s.html().await, initial.html);
    assert_eq!(s.seq().await, 0);
    store.fail.store(false, Ordering::SeqCst);
    assert_eq!(s.render(&d2).await.unwrap(), 1);
    let Some(SessionEvent::Patch(p)) = sub.recv().await else {
        panic!()
    };
    let mut wire = WireClient::new();
    wire.apply(resync.frame()).unwrap();
    wire.apply(p.frame()).unwrap();
    assert_eq!(wire.html(), fresh(&engine, "page.html", &d2));
    assert_eq!(
        apply_updates(&initial.html, &p.updates()).unwrap(),
        fresh(&engine, "page.html", &d2)
    );
}

#[tokio::test]
async fn a_session_is_restored_from_a_shared_store() {
    let store: Arc<dyn SessionStore> = Arc::new(MemoryStore::new());
    let keys = KeyRing::new(Key::generate().unwrap());
    let a = StateTemplate::builder(env())
        .keys(keys.clone())
        .store(store.clone())
        .build()
        .unwrap();
    let d1 = data("r", "one", &[(1, "a")]);
    let d2 = data("r", "two", &[(1, "a"), (2, "b")]);
    let initial = a.new_session("page.html", &d1).await.unwrap();
    let sa = reopen(&a, &initial).await;
    sa.render(&d2).await.unwrap();
    let html_a = sa.html().await;
    drop(sa);
    a.shutdown().await; // the first instance goes away; the record stays
    assert!(a.new_session("page.html", &d1).await.is_err());

    let b = StateTemplate::builder(env())
        .keys(keys)
        .store(store.clone())
        .build()
        .unwrap();
    let sb = reopen(&b, &initial).await;
    assert_eq!(sb.html().await, html_a);
    assert_eq!(sb.seq().await, 1, "numbering continues");
    let d3 = data("r", "three", &[(2, "b")]);
    assert_eq!(sb.render(&d3).await.unwrap(), 2);
    assert_eq!(sb.html().await, fresh(&b, "page.html", &d3));
}

#[tokio::test]
async fn seed_compatible_renderer() {
    let engine = builder().build().unwrap();
    let r = engine.renderer("page.html");
    let d1 = data("c", "one", &[(1, "a")]);
    assert_eq!(
        r.send_update(&d1).await.unwrap_err().kind(),
        ErrorKind::Config
    );
    let mut ch = r.update_channel();
    let html = r.set_initial_data(&d1).await.unwrap();
    assert_eq!(html, fresh(&engine, "page.html", &d1));
    let d2 = data("c", "two", &[(1, "a"), (2, "b")]);
    r.send_update(&d2).await.unwrap();
    let mut got = Vec::new();
    while got.len() < 2 {
        got.push(ch.recv().await.unwrap());
    }
    assert!(got.iter().all(|u| u.seq == 1));
    let json = serde_json::to_value(&got[0]).unwrap();
    for field in ["fragment_id", "html", "action", "timestamp"] {
        assert!(json.get(field).is_some(), "seed field {field}");
    }
    assert_eq!(
        apply_updates(&html, &got).unwrap(),
        fresh(&engine, "page.html", &d2)
    );
    // A second set_initial_data renders on the same session.
    let d3 = data("c", "three", &[]);
    let html3 = r.set_initial_data(&d3).await.unwrap();
    assert_eq!(html3, fresh(&engine, "page.html", &d3));
    let u = ch.recv().await.unwrap();
    assert_eq!(u.seq, 2);
    assert_eq!(engine.live_sessions(), 1);
}

#[tokio::test]
async fn memory_store_passes_the_conformance_suite() {
    conformance::run(Arc::new(MemoryStore::new())).await;
}

#[tokio::test]
async fn the_expiry_task_stops_when_the_engine_is_dropped() {
    let metrics = tokio::runtime::Handle::current().metrics();
    let before = metrics.num_alive_tasks();
    let engine = builder().build().unwrap();
    assert_eq!(metrics.num_alive_tasks(), before + 1);
    let clone = engine.clone();
    drop(engine);
    tokio::task::yield_now().await;
    assert_eq!(metrics.num_alive_tasks(), before + 1, "a clone keeps it");
    drop(clone);
    settle(&metrics, before).await;
    assert_eq!(metrics.num_alive_tasks(), before);

    let engine = builder().build().unwrap();
    engine.shutdown().await;
    settle(&metrics, before).await;
    assert_eq!(metrics.num_alive_tasks(), before);
}

/// Lets the runtime run other tasks until `want` are alive (bounded).
async fn settle(metrics: &tokio::runtime::RuntimeMetrics, want: usize) {
    for _ in 0..200 {
        if metrics.num_alive_tasks() == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[test]
fn building_outside_a_runtime_is_a_clear_error() {
    let e = builder().build().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config);
    assert!(e.to_string().contains("tokio runtime"));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        assert!(builder().max_sessions(0).build().is_err());
        assert!(builder().expiration(Duration::ZERO).build().is_err());
    });
}

#[tokio::test]
async fn groups_and_broadcast() {
    let engine = builder().build().unwrap();
    let mut members = Vec::new();
    for name in ["a", "b", "c"] {
        let i = engine
            .new_session("page.html", &data(name, "t", &[]))
            .await
            .unwrap();
        members.push(reopen(&engine, &i).await);
    }
    members[0].join_group("room");
    members[1].join_group("room");
    members[1].join_group("room"); // twice is once
    members[2].join_group("other");
    let mut subs: Vec<_> = members.iter().map(|s| s.updates()).collect();
    assert_eq!(engine.group("room").len(), 2);
    assert_eq!(engine.sessions().len(), 3);
    for s in engine.group("room") {
        s.update(|d: &mut Json| {
            d["title"] = "broadcast".into();
            Ok(())
        })
        .await
        .unwrap();
    }
    for (i, sub) in subs.iter_mut().enumerate().take(2) {
        let Some(SessionEvent::Patch(p)) = sub.recv().await else {
            panic!("member {i} got nothing")
        };
        assert!(p.frame().contains("broadcast"));
    }
    assert_eq!(members[2].html().await.matches("broadcast").count(), 0);
    members[0].leave_group("room");
    assert_eq!(engine.group("room").len(), 1);
    members[1].close().await.unwrap();
    assert!(
        engine.group("room").is_empty(),
        "a closed session leaves its groups"
    );
    assert_eq!(engine.group("other").len(), 1);
    // update() is atomic and typed; a failing closure changes nothing.
    let before = members[2].html().await;
    let e = members[2]
        .update(|_: &mut Json| Err(statetemplate::Error::protocol("no")))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Protocol);
    assert_eq!(members[2].html().await, before);
}

/// A second engine on the same memory store (a "restart" that kept the
/// store, as a process would with a persistent one): the session comes
/// back with its epoch; the memory store keeps no frames, so the client
/// gets a resync of the same session, then live frames.
#[tokio::test]
async fn a_second_engine_on_the_same_store_resumes_the_session() {
    let store = Arc::new(MemoryStore::new());
    conformance::resume_after_restart(|| store.clone()).await;
}
