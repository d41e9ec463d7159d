//! `RedisStore` against a real `redis-server` (scripts/test.sh starts one
//! and exports `STATETEMPLATE_REDIS_URL`): the conformance suite, two
//! engines one after the other on one Redis (a client resumes with exactly
//! the frames it missed), appends that write the change and not the
//! snapshot, key deadlines and the expiry set, prefixes that keep apps
//! apart, and a Redis that is down (a clear `Store` error, a render undone,
//! the session going on once Redis is back).
//!
//! Each test uses its own key prefix, so tests running at once (and other
//! users of the same Redis) do not see each other's sessions.
#![cfg(feature = "redis")]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use minijinja::Environment;
use serde_json::{Value as Json, json};
use statetemplate::store::{RedisOptions, RedisStore, SessionStore, conformance};
use statetemplate::token::KeyRing;
use statetemplate::{ErrorKind, StateTemplate};

const PAGE: &str = "<h1>{{ title }}</h1>\
<ul>{% for r in rows %}<li id=\"r{{ r.id }}\">{{ loop.index }}. {{ r.text }}</li>{% endfor %}</ul>";

/// The Redis the tests use. No server, no test: fails, never skips.
fn url() -> String {
    std::env::var("STATETEMPLATE_REDIS_URL").unwrap_or_else(|_| {
        panic!(
            "STATETEMPLATE_REDIS_URL is not set: these tests need a real redis-server. \
             scripts/test.sh starts one on a free loopback port and sets it; by hand: \
             `redis-server --port 6390 --save '' &` and \
             `STATETEMPLATE_REDIS_URL=redis://127.0.0.1:6390 cargo test --features redis --test redis_store`"
        )
    })
}

/// A prefix no other test (or earlier run) uses.
fn prefix(name: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "st-test:{name}:{}:{nanos:x}:{}:",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn store(name: &str) -> RedisStore {
    store_with(name, RedisOptions::default())
}

fn store_with(name: &str, opts: RedisOptions) -> RedisStore {
    RedisStore::open_with(&url(), opts.prefix(prefix(name))).expect("open")
}

/// A plain connection to the same Redis, to look at the keys.
async fn raw() -> redis::aio::MultiplexedConnection {
    redis::Client::open(url().as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .expect("connect to the test Redis")
}

fn env() -> Environment<'static> {
    let mut env = Environment::new();
    env.add_template("page.html", PAGE).unwrap();
    env
}

fn engine(store: RedisStore, keys: &KeyRing) -> StateTemplate {
    StateTemplate::builder(env())
        .keys(keys.clone())
        .store(store)
        .build()
        .unwrap()
}

fn data(title: &str, n: usize) -> Json {
    json!({
        "title": title,
        "rows": (0..n).map(|i| json!({"id": i, "text": format!("row {i}")})).collect::<Vec<_>>(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passes_the_conformance_suite() {
    let s = store("conf");
    s.ping().await.expect("the test Redis answers");
    conformance::run(Arc::new(s)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passes_the_conformance_suite_with_frequent_snapshots() {
    let s = store_with("snap", RedisOptions::default().snapshot_every_deltas(2));
    conformance::run(Arc::new(s.clone())).await;
    assert!(s.stats().snapshots > 0, "{:?}", s.stats());
}

/// A client joins, misses the last two frames of the first engine, the
/// engine goes away; a second engine (a new store, a new connection) on the
/// same Redis and prefix gives the client exactly those two frames, then
/// its own live frames, and the client's page equals a fresh render.
#[tokio::test]
async fn a_client_resumes_across_a_restart_with_the_frames_it_missed() {
    let p = prefix("resume");
    conformance::resume_after_restart(|| {
        RedisStore::open_with(&url(), RedisOptions::default().prefix(p.clone())).unwrap()
    })
    .await;
}

/// A session with about 40 KB of data: each render that changes one row
/// sends Redis its delta and frame (tens of bytes), the snapshot key stays
/// as written until the log reaches the snapshot's size, and the frames
/// list stays at its cap.
#[tokio::test]
async fn appends_write_the_change_not_the_snapshot() {
    let s = store_with("bytes", RedisOptions::default().frames_kept(8));
    let keys = KeyRing::generate().unwrap();
    let e = engine(s.clone(), &keys);
    let mut d = data("big", 1500);
    let initial = e.new_session("page.html", &d).await.unwrap();
    let snapshot_bytes = serde_json::to_string(&d).unwrap().len() as u64;
    assert!(snapshot_bytes > 30_000, "{snapshot_bytes}");
    let sess = e
        .get_session(&initial.session_id.to_string(), &initial.token)
        .await
        .unwrap();
    // Only a page somebody joined makes frames.
    let (_resync, _sub) = sess.join().await.unwrap();
    let key = format!("{}{}", s.prefix(), initial.session_id);
    let mut c = raw().await;
    let strlen = |c: &mut redis::aio::MultiplexedConnection| {
        let k = format!("{key}:snap");
        let mut c = c.clone();
        async move {
            redis::cmd("STRLEN")
                .arg(k)
                .query_async::<u64>(&mut c)
                .await
                .unwrap()
        }
    };
    let snap_len = strlen(&mut c).await;
    let before = s.stats();
    for i in 0..50usize {
        d["rows"][i]["text"] = json!(format!("changed {i}"));
        sess.render(&d).await.unwrap();
    }
    let after = s.stats();
    assert_eq!(after.appends - before.appends, 50);
    assert_eq!(after.snapshots, 0, "50 small deltas are far below 40 KB");
    let per_append = (after.bytes - before.bytes) / 50;
    assert!(
        per_append < 600,
        "{per_append} bytes per one-row append (snapshot: {snapshot_bytes})"
    );
    assert_eq!(
        strlen(&mut c).await,
        snap_len,
        "the snapshot is not rewritten"
    );
    let log = s.log(&initial.session_id).await.unwrap().unwrap();
    assert_eq!((log.snapshot_version, log.deltas.len()), (0, 50));
    assert_eq!(
        serde_json::to_value(log.replay().unwrap()).unwrap(),
        d,
        "snapshot + deltas = the data"
    );
    let frames: u64 = redis::cmd("LLEN")
        .arg(format!("{key}:frames"))
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(frames, 8, "frames trimmed to frames_kept");
    e.shutdown().await;
}

/// Every key of a session carries a deadline of expires_ms + the grace; a
/// delete removes the keys and the expiry entry; a record whose keys Redis
/// dropped reads as absent while the expiry set still lists it, and the
/// engine's delete clears it.
#[tokio::test]
async fn keys_expire_with_the_session_and_the_expiry_set_follows() {
    let grace = Duration::from_secs(60);
    let s = store_with("ttl", RedisOptions::default().key_grace(grace));
    let mut c = raw().await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let mut r = conformance::sample_record(now + 600_000);
    s.create(&r).await.unwrap();
    // An append makes the log and frames keys.
    let d = statetemplate::fragment::Delta::default();
    r.version = 1;
    r.seq += 1;
    s.append(statetemplate::store::Append::new(&r, &d).with_frame("[]"))
        .await
        .unwrap();
    let key = format!("{}{}", s.prefix(), r.id);
    let want = now + 600_000 + 60_000;
    for k in [
        key.clone(),
        format!("{key}:snap"),
        format!("{key}:log"),
        format!("{key}:frames"),
    ] {
        let at: i64 = redis::cmd("PEXPIRETIME")
            .arg(&k)
            .query_async(&mut c)
            .await
            .unwrap();
        assert_eq!(at as u64, want, "{k}: PEXPIREAT expires_ms + grace");
    }
    assert!(s.touch(&r.id, now, now + 900_000).await.unwrap());
    let at: i64 = redis::cmd("PEXPIRETIME")
        .arg(format!("{key}:log"))
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(
        at as u64,
        now + 900_000 + 60_000,
        "touch moves the deadline"
    );
    assert_eq!(s.count().await.unwrap(), 1);
    assert!(s.delete(&r.id).await.unwrap());
    let left: u64 = redis::cmd("EXISTS")
        .arg(&key)
        .arg(format!("{key}:snap"))
        .arg(format!("{key}:log"))
        .arg(format!("{key}:frames"))
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(left, 0, "delete removes every key");
    assert_eq!(s.count().await.unwrap(), 0, "and the expiry entry");

    // No grace: Redis drops the keys at expires_ms.
    let s = store_with("ttl0", RedisOptions::default().key_grace(Duration::ZERO));
    let r = conformance::sample_record(now_ms() + 300);
    s.create(&r).await.unwrap();
    assert!(s.load(&r.id).await.unwrap().is_some());
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        s.load(&r.id).await.unwrap(),
        None,
        "a record whose keys expired reads as absent"
    );
    assert_eq!(
        s.list_expired(now_ms(), 10).await.unwrap(),
        vec![r.id],
        "the expiry set still lists it for the sweep"
    );
    assert!(!s.delete(&r.id).await.unwrap(), "its keys are gone already");
    assert_eq!(s.count().await.unwrap(), 0, "the delete clears the entry");
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[tokio::test]
async fn prefixes_keep_apps_apart() {
    let (a, b) = (store("app-a"), store("app-b"));
    let r = conformance::sample_record(u64::MAX / 2);
    a.create(&r).await.unwrap();
    assert_eq!(b.load(&r.id).await.unwrap(), None);
    assert_eq!((a.count().await.unwrap(), b.count().await.unwrap()), (1, 0));
    b.create(&r)
        .await
        .expect("the same id under another prefix");
    assert!(a.delete(&r.id).await.unwrap());
    assert!(b.load(&r.id).await.unwrap().is_some());
    assert!(b.delete(&r.id).await.unwrap());
}

fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Nothing listens: create fails with a Store error that names the server
/// and not the password, quickly; so does a new session on an engine.
#[tokio::test]
async fn a_redis_that_is_down_gives_a_clear_store_error() {
    let port = closed_port();
    let s = RedisStore::open(&format!("redis://:hunter2@127.0.0.1:{port}/0")).unwrap();
    let r = conformance::sample_record(u64::MAX / 2);
    let t = std::time::Instant::now();
    let err = s.create(&r).await.unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert_eq!(err.kind(), ErrorKind::Store, "{err}");
    let msg = err.to_string();
    assert!(msg.contains(&format!("127.0.0.1:{port}")), "{msg}");
    assert!(msg.contains("cannot connect"), "{msg}");
    assert!(!msg.contains("hunter2"), "no password in messages: {msg}");
    assert!(!format!("{s:?}").contains("hunter2"), "{s:?}");
    assert_eq!(s.ping().await.unwrap_err().kind(), ErrorKind::Store);
    let e = engine(s, &KeyRing::generate().unwrap());
    let err = e.new_session("page.html", &data("t", 1)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Store, "{err}");
    e.shutdown().await;
    let bad = RedisStore::open("http://nope").unwrap_err();
    assert_eq!(bad.kind(), ErrorKind::Config, "{bad}");
}

/// A TCP relay to the real Redis that can be cut (every connection dropped,
/// nothing listening) and restored on the same port: Redis going away and
/// coming back, as the store sees it.
struct Relay {
    port: u16,
    task: Option<tokio::task::JoinHandle<()>>,
    ctl: Arc<RelayCtl>,
}

/// What a test makes the relayed connections do.
#[derive(Default)]
struct RelayCtl {
    /// Bumped to close every relayed connection (the listener stays).
    drops: tokio::sync::watch::Sender<u64>,
    /// The next request goes through to Redis, and the connection closes
    /// before its answer comes back.
    lose_answer: std::sync::atomic::AtomicBool,
}

impl Relay {
    async fn start(port: u16) -> Relay {
        let target = url()
            .trim_start_matches("redis://")
            .split('/')
            .next()
            .unwrap()
            .to_owned();
        let target = target.rsplit('@').next().unwrap().to_owned();
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let ctl = Arc::new(RelayCtl::default());
        let c = ctl.clone();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((inbound, _)) = listener.accept().await {
                let target = target.clone();
                let ctl = c.clone();
                conns.spawn(async move {
                    if let Ok(out) = tokio::net::TcpStream::connect(&target).await {
                        relay(inbound, out, &ctl).await;
                    }
                });
            }
        });
        Relay {
            port,
            task: Some(task),
            ctl,
        }
    }

    /// Drops the listener and every relayed connection (the JoinSet).
    async fn cut(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
            let _ = t.await;
        }
    }

    /// Closes the connections relayed now; new ones go through.
    fn drop_connections(&self) {
        self.ctl.drops.send_modify(|n| *n += 1);
    }

    /// The next request reaches Redis, its answer does not come back.
    fn lose_next_answer(&self) {
        self.ctl.lose_answer.store(true, Ordering::SeqCst);
    }
}

/// Relays one connection until either side closes or the test drops it.
async fn relay(inbound: tokio::net::TcpStream, out: tokio::net::TcpStream, ctl: &RelayCtl) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut ri, mut wi) = inbound.into_split();
    let (mut ro, mut wo) = out.into_split();
    let mut drops = ctl.drops.subscribe();
    drops.borrow_and_update();
    let up = async {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = ri.read(&mut buf).await.unwrap_or(0);
            if n == 0 || wo.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    };
    let down = async {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = ro.read(&mut buf).await.unwrap_or(0);
            // Redis ran the request; its answer is thrown away.
            if n == 0 || ctl.lose_answer.swap(false, Ordering::SeqCst) {
                return;
            }
            if wi.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    };
    tokio::select! {
        _ = up => {}
        _ = down => {}
        _ = drops.changed() => {}
    }
}

/// An engine on a store through the relay at `port` (its own prefix,
/// returned), a session on it, rendered once after its start.
async fn relayed_session(
    port: u16,
    name: &str,
) -> (
    String,
    StateTemplate,
    statetemplate::InitialRender,
    statetemplate::Session,
) {
    let p = prefix(name);
    let s = RedisStore::open_with(
        &format!("redis://127.0.0.1:{port}"),
        RedisOptions::default().prefix(p.clone()),
    )
    .unwrap();
    let e = engine(s, &KeyRing::generate().unwrap());
    let initial = e.new_session("page.html", &data("t0", 3)).await.unwrap();
    let sess = e
        .get_session(&initial.session_id.to_string(), &initial.token)
        .await
        .unwrap();
    sess.render(&data("t1", 3)).await.unwrap();
    (p, e, initial, sess)
}

/// Redis drops the store's connection (a restart, a proxy, a network blip)
/// while it is up: the next write is not lost. A write whose answer was
/// lost (it ran, the connection closed before the answer came back) is
/// not written twice, and not reported as failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_connection_loses_no_write_and_doubles_none() {
    let relay = Relay::start(0).await;
    let (p, e, initial, sess) = relayed_session(relay.port, "dropped").await;

    relay.drop_connections();
    tokio::time::sleep(Duration::from_millis(100)).await;
    sess.render(&data("after a drop", 3))
        .await
        .expect("the first write after a dropped connection");

    relay.lose_next_answer();
    sess.render(&data("answer lost", 4))
        .await
        .expect("a write that ran but whose answer was lost");
    assert!(
        !relay.ctl.lose_answer.load(Ordering::SeqCst),
        "the relay lost an answer"
    );
    sess.render(&data("next", 4)).await.expect("and the next");
    relay.lose_next_answer();
    let other = e
        .new_session("page.html", &data("created", 1))
        .await
        .expect("a create whose answer was lost");
    assert!(
        !relay.ctl.lose_answer.load(Ordering::SeqCst),
        "the relay lost an answer"
    );
    let got = e
        .get_session(&other.session_id.to_string(), &other.token)
        .await
        .unwrap();
    assert_eq!(got.data::<Json>().await.unwrap(), data("created", 1));

    let direct = RedisStore::open_with(&url(), RedisOptions::default().prefix(p.clone())).unwrap();
    let rec = direct.load(&initial.session_id).await.unwrap().unwrap();
    assert_eq!(serde_json::to_value(&rec.data).unwrap(), data("next", 4));
    // Each version once in the log, one after the other, and no frame
    // twice: the first word of each entry of a session's list.
    let mut c = raw().await;
    let mut heads = async |list: &str| -> Vec<String> {
        let entries: Vec<String> = redis::cmd("LRANGE")
            .arg(format!("{p}{}:{list}", initial.session_id))
            .arg(0)
            .arg(-1)
            .query_async(&mut c)
            .await
            .unwrap();
        entries
            .iter()
            .map(|e| e.split(' ').next().unwrap().to_owned())
            .collect()
    };
    let versions: Vec<u64> = heads("log")
        .await
        .iter()
        .map(|v| v.parse().unwrap())
        .collect();
    assert!(
        versions.windows(2).all(|w| w[1] == w[0] + 1) && versions.len() == 4,
        "versions in the log: {versions:?}"
    );
    let seqs = heads("frames").await;
    let mut uniq = seqs.clone();
    uniq.dedup();
    assert_eq!(seqs, uniq, "no frame twice");
    e.shutdown().await;
}

/// Redis goes away under a live session: the render fails with a Store
/// error and is undone (page and seq as before), and once Redis is back
/// the session goes on with its data intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_render_while_redis_is_down_fails_cleanly_and_the_session_goes_on() {
    let mut relay = Relay::start(0).await;
    let port = relay.port;
    let (p, e, initial, sess) = relayed_session(port, "down").await;
    let (seq, html) = (sess.seq().await, sess.html().await);

    relay.cut().await;
    let err = sess.render(&data("lost", 9)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Store, "{err}");
    assert!(
        err.to_string().contains(&format!("127.0.0.1:{port}")),
        "{err}"
    );
    assert_eq!(sess.seq().await, seq, "the render was undone");
    assert_eq!(sess.html().await, html, "the page is as before");

    let mut relay = Relay::start(port).await;
    // The connection manager reconnects on the next call.
    let mut ok = false;
    for _ in 0..50 {
        if sess.render(&data("t2", 4)).await.is_ok() {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "renders work again once Redis is back");
    let direct = RedisStore::open_with(&url(), RedisOptions::default().prefix(p)).unwrap();
    let rec = direct.load(&initial.session_id).await.unwrap().unwrap();
    assert_eq!(serde_json::to_value(&rec.data).unwrap(), data("t2", 4));
    e.shutdown().await;
    relay.cut().await;
}

/// In a cluster, the owner is a fence: an append from an instance that
/// does not own the session is refused (the version alone would let it
/// through), and once the owner hands over (shutdown), the next instance
/// takes the session and the old one can no longer write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_owner_appends_in_a_cluster() {
    use statetemplate::cluster::ClusterOptions;
    use statetemplate::fragment::Delta;
    use statetemplate::store::Append;
    let ((sa, a), (sb, b)) = two_instances("fence", Duration::from_millis(500));
    assert_eq!(
        sa.cluster(ClusterOptions::default()).unwrap_err().kind(),
        ErrorKind::Config,
        "one cluster per store"
    );
    let init = a.new_session("page.html", &data("t", 2)).await.unwrap();
    let id = init.session_id;
    // B, with the right version, is still refused: A owns it.
    let mut rec = sb.load(&id).await.unwrap().unwrap();
    rec.version += 1;
    let err = sb
        .append(Append::new(&rec, &Delta::default()))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict, "{err}");
    assert!(err.to_string().contains("owns"), "{err}");
    assert_eq!(
        sb.load(&id).await.unwrap().unwrap().version,
        rec.version - 1
    );
    // A renders fine.
    let s = a.get_session(&id.to_string(), &init.token).await.unwrap();
    s.render(&data("from A", 2)).await.unwrap();
    // A stops: it hands its sessions over; B takes this one on its first
    // open and renders; A's store can no longer append.
    a.shutdown().await;
    let s = b.get_session(&id.to_string(), &init.token).await.unwrap();
    s.render(&data("from B", 3)).await.unwrap();
    let mut rec = sa.load(&id).await.unwrap().unwrap();
    assert_eq!(serde_json::to_value(&rec.data).unwrap(), data("from B", 3));
    rec.version += 1;
    let err = sa
        .append(Append::new(&rec, &Delta::default()))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict, "{err}");
    b.shutdown().await;
}

/// Two engines in one cluster on one Redis (their own stores, one key ring,
/// a lease of `lease`), as two instances would be.
fn two_instances(
    name: &str,
    lease: Duration,
) -> ((RedisStore, StateTemplate), (RedisStore, StateTemplate)) {
    let p = prefix(name);
    let keys = KeyRing::generate().unwrap();
    let one = || {
        let s = RedisStore::open_with(&url(), RedisOptions::default().prefix(p.clone())).unwrap();
        let c = s
            .cluster(statetemplate::cluster::ClusterOptions::default().lease(lease))
            .unwrap();
        let e = StateTemplate::builder(env())
            .keys(keys.clone())
            .store(s.clone())
            .cluster(c)
            .build()
            .unwrap();
        (s, e)
    };
    (one(), one())
}

/// A pushed event (`Session::push`) reaches a tab that follows the session
/// from another instance, not only the owner's own tabs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushed_events_reach_followers_on_other_instances() {
    use statetemplate::testing::TestClient;
    // The default lease: with a short one, a loaded machine that delays
    // the owner's beat makes the follower see it as gone and close the tab
    // (4004), which is failover, not what this test is about.
    let ((_, a), (_, b)) = two_instances("push", Duration::from_secs(5));
    let init = a.new_session("page.html", &data("t", 2)).await.unwrap();
    // A tab on B: A owns the session, so B serves it as a follower.
    let mut tab = TestClient::connect(&statetemplate::Live::new(b.clone()), &init)
        .await
        .unwrap();
    let s = a
        .get_session(&init.session_id.to_string(), &init.token)
        .await
        .unwrap();
    assert_eq!(
        s.push("ping", &json!({"n": 1})).unwrap(),
        0,
        "no tab on A itself"
    );
    let end = tokio::time::Instant::now() + Duration::from_secs(5);
    while tab.pushes().is_empty() && tokio::time::Instant::now() < end {
        let _ = tab.next_frame(Duration::from_millis(100)).await;
    }
    assert_eq!(tab.pushes(), &[("ping".to_owned(), json!({"n": 1}))]);
    // Frames still come in order after it.
    s.render(&data("after", 2)).await.unwrap();
    assert!(tab.next_frame(Duration::from_secs(5)).await.unwrap());
    assert_eq!(tab.html(), s.fresh_render().await.unwrap().1);
    tab.close().await;
    a.shutdown().await;
    b.shutdown().await;
}

/// An instance owns nothing before the other instances can see it: right
/// after start, its first session is written (naming it the owner) only
/// once its instance key is in Redis. Without that, a tab that opened the
/// session on another instance before the first beat took it over, and the
/// owner's pushes never reached it (seen as a flaky
/// `pushed_events_reach_followers_on_other_instances` on a loaded machine).
/// Many instances start at once, so that some first beats come late.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_claims_sessions_only_once_it_is_announced() {
    let p = prefix("announced");
    let one = |p: String| async move {
        let s = RedisStore::open_with(&url(), RedisOptions::default().prefix(p.clone())).unwrap();
        let c = s
            .cluster(statetemplate::cluster::ClusterOptions::default())
            .unwrap();
        let me = c.instance().to_owned();
        let e = StateTemplate::builder(env())
            .keys(KeyRing::generate().unwrap())
            .store(s)
            .cluster(c)
            .build()
            .unwrap();
        let init = e.new_session("page.html", &data("t", 2)).await.unwrap();
        let mut r = raw().await;
        let alive: i64 = redis::cmd("EXISTS")
            .arg(format!("{p}inst:{me}"))
            .query_async(&mut r)
            .await
            .unwrap();
        let owner: Option<String> = redis::cmd("GET")
            .arg(format!("{p}{}:owner", init.session_id))
            .query_async(&mut r)
            .await
            .unwrap();
        e.shutdown().await;
        (me, owner, alive)
    };
    let started: Vec<_> = (0..40).map(|_| tokio::spawn(one(p.clone()))).collect();
    let mut early = 0;
    for h in started {
        let (me, owner, alive) = h.await.unwrap();
        assert_eq!(owner.as_deref(), Some(me.as_str()));
        early += usize::from(alive != 1);
    }
    assert_eq!(early, 0, "instances that owned a session before they beat");
}

/// An owner taken for gone while it still held a session live (its beat
/// lapsed: Redis was away longer than the lease, or the instance stalled),
/// which another instance then claimed: when its beat comes back it lets
/// go, so its tab is closed with 4004 and reconnects to the page the new
/// owner renders, instead of waiting on a copy nobody renders. The lapse is
/// made by hand: B's name in the lease first, then A's instance key
/// deleted, so A's next beat finds it missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_whose_beat_lapsed_lets_go_of_sessions_claimed_elsewhere() {
    use statetemplate::Live;
    use statetemplate::testing::TestClient;
    let p = prefix("lapse");
    let keys = KeyRing::generate().unwrap();
    let one = || {
        let s = RedisStore::open_with(&url(), RedisOptions::default().prefix(p.clone())).unwrap();
        let c = s
            .cluster(
                statetemplate::cluster::ClusterOptions::default().lease(Duration::from_millis(600)),
            )
            .unwrap();
        let me = c.instance().to_owned();
        let e = StateTemplate::builder(env())
            .keys(keys.clone())
            .store(s)
            .cluster(c)
            .build()
            .unwrap();
        (me, e)
    };
    let ((name_a, a), (name_b, b)) = (one(), one());
    let init = a.new_session("page.html", &data("t", 2)).await.unwrap();
    let mut tab = TestClient::connect(&Live::new(a.clone()), &init)
        .await
        .unwrap();
    // A second session A keeps: its lease still names A.
    let kept = a.new_session("page.html", &data("kept", 1)).await.unwrap();
    let mut r = raw().await;
    let _: () = redis::cmd("SET")
        .arg(format!("{p}{}:owner", init.session_id))
        .arg(&name_b)
        .query_async(&mut r)
        .await
        .unwrap();
    let _: () = redis::cmd("DEL")
        .arg(format!("{p}inst:{name_a}"))
        .query_async(&mut r)
        .await
        .unwrap();
    // Within a few beats, A lets go of the first session: its tab closes
    // with 4004 (reconnect), not 4002 (reload).
    let end = tokio::time::Instant::now() + Duration::from_secs(5);
    while tab.closed().is_none() && tokio::time::Instant::now() < end {
        let _ = tab.next_frame(Duration::from_millis(100)).await;
    }
    assert_eq!(tab.closed().map(|c| c.0), Some(4004), "{:?}", tab.closed());
    assert_eq!(a.live_sessions(), 1, "A keeps the session it still holds");
    // B renders the session; a tab that reconnects (on A here) sees it.
    let s = b
        .get_session(&init.session_id.to_string(), &init.token)
        .await
        .unwrap();
    s.render(&data("from B", 3)).await.unwrap();
    let want = s.fresh_render().await.unwrap().1;
    let mut again = TestClient::connect(&Live::new(a.clone()), &init)
        .await
        .unwrap();
    let end = tokio::time::Instant::now() + Duration::from_secs(5);
    while again.html() != want && tokio::time::Instant::now() < end {
        let _ = again.next_frame(Duration::from_millis(100)).await;
    }
    assert_eq!(again.html(), want);
    // The kept session still renders on A (its lease was never lost).
    let k = a
        .get_session(&kept.session_id.to_string(), &kept.token)
        .await
        .unwrap();
    k.render(&data("still A", 1)).await.unwrap();
    let owner: Option<String> = redis::cmd("GET")
        .arg(format!("{p}{}:owner", kept.session_id))
        .query_async(&mut r)
        .await
        .unwrap();
    assert_eq!(owner.as_deref(), Some(name_a.as_str()));
    again.close().await;
    a.shutdown().await;
    b.shutdown().await;
}
