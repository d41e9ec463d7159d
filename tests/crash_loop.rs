//! The crash loop: a server process on loopback keeps its sessions in
//! SQLite (durability `Full`) and takes events from a client; it is killed
//! with SIGKILL at random moments, 50 times, and started again on the same
//! file. After every restart:
//!
//! - every event the server answered before the kill is in the stored state,
//!   and the state is the events in the order sent, each once (a prefix of
//!   what was sent: events applied but unanswered when the kill came count,
//!   nothing else);
//! - the client resumes in the same session and page epoch, with the frames
//!   it missed (no resync), resends what was unanswered, and each resent
//!   event is applied once;
//! - the page the client holds (every frame applied) equals a fresh render
//!   of the events sent.
//!
//! Not a libtest harness (`harness = false`): the same binary is the server
//! when started with `--child` by the loop. Bounded: 50 kills, each life at
//! most a few hundred milliseconds; the whole run takes well under a
//! minute. `CRASH_LOOPS` changes the count.
//!
//! `CRASH_STORE=redis` (with the `redis` feature) keeps the sessions in
//! Redis instead, at `STATETEMPLATE_REDIS_URL`, under a key prefix of its
//! own for the run: the server is killed, Redis keeps running (as when an
//! app instance dies), and the same properties must hold. SQLite is the
//! default.

fn main() {
    if std::env::args().any(|a| a == "--child") {
        child::run();
    } else {
        parent::run();
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

const PAGE: &str =
    "<ul>{% for n in items %}<li>{{ n }}</li>{% endfor %}</ul><p>{{ items|length }} events</p>";

#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Log {
    items: Vec<u64>,
}

mod child {
    use axum::Router;
    use axum::extract::Query;
    use axum::routing::get;
    use minijinja::Environment;
    use statetemplate::store::{Durability, SqliteOptions, SqliteStore};
    use statetemplate::token::KeyRing;
    use statetemplate::{Live, StateTemplate};

    use super::{Log, PAGE};

    #[derive(serde::Deserialize)]
    struct Who {
        sid: String,
        token: String,
    }

    pub(super) fn run() {
        let rt = super::runtime();
        rt.block_on(serve());
    }

    #[cfg(feature = "redis")]
    fn redis_store() -> statetemplate::store::RedisStore {
        use statetemplate::store::{RedisOptions, RedisStore};
        let url = std::env::var("STATETEMPLATE_REDIS_URL")
            .expect("CRASH_STORE=redis needs STATETEMPLATE_REDIS_URL (scripts/test.sh sets it)");
        let prefix = std::env::var("CRASH_PREFIX").expect("CRASH_PREFIX");
        RedisStore::open_with(&url, RedisOptions::default().prefix(prefix)).expect("store")
    }

    #[cfg(not(feature = "redis"))]
    fn redis_store() -> statetemplate::store::MemoryStore {
        panic!("CRASH_STORE=redis needs the redis feature (cargo test --features redis)")
    }

    async fn serve() {
        let db = std::env::var("CRASH_DB").expect("CRASH_DB");
        let addr = std::env::var("CRASH_ADDR").expect("CRASH_ADDR");
        let keys = KeyRing::parse(&std::env::var("CRASH_KEY").expect("CRASH_KEY")).expect("key");
        let mut env = Environment::new();
        env.add_template("log.html", PAGE).expect("template");
        let builder = StateTemplate::builder(env).keys(keys);
        let builder = match std::env::var("CRASH_STORE").as_deref() {
            Ok("redis") => builder.store(redis_store()),
            Ok("sqlite") | Err(_) => builder.store(
                SqliteStore::open_with(&db, SqliteOptions::default().durability(Durability::Full))
                    .expect("store"),
            ),
            Ok(other) => panic!("CRASH_STORE={other}: expected sqlite or redis"),
        };
        let engine = builder.build().expect("engine");
        let live = Live::new(engine.clone()).on_update("push", |d: &mut Log, n: u64| {
            d.items.push(n);
            Ok(())
        });
        let e1 = engine.clone();
        let e2 = engine.clone();
        let app: Router = Router::new()
            .route(
                "/new",
                get(move || {
                    let e = e1.clone();
                    async move {
                        let i = e.new_session("log.html", &Log::default()).await.unwrap();
                        format!("{} {}", i.session_id, i.token)
                    }
                }),
            )
            .route(
                "/state",
                get(move |Query(w): Query<Who>| {
                    let e = e2.clone();
                    async move {
                        let s = e.get_session(&w.sid, &w.token).await.unwrap();
                        let d: Log = s.data().await.unwrap();
                        serde_json::to_string(&d.items).unwrap()
                    }
                }),
            )
            .merge(live.router());
        let listener = tokio::net::TcpListener::bind(&addr).await.expect("bind");
        println!("listening");
        axum::serve(listener, app).await.expect("serve");
    }
}

mod parent {
    use std::collections::BTreeSet;
    use std::process::Stdio;
    use std::time::{Duration, Instant};

    use futures_util::{SinkExt, StreamExt};
    use serde_json::{Value as Json, json};
    use statetemplate::FragmentEngine;
    use statetemplate::testing::WireClient;
    use statetemplate::token::Key;
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    use tokio::net::TcpStream;
    use tokio::process::{Child, Command};
    use tokio_tungstenite::tungstenite::Message;

    use super::{Log, PAGE};

    type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

    /// The child server; killed (SIGKILL) when dropped, so a failing run
    /// leaves nothing behind.
    struct Server(Child);

    impl Drop for Server {
        fn drop(&mut self) {
            let _ = self.0.start_kill();
        }
    }

    struct Rng(u64);

    impl Rng {
        fn next(&mut self, below: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % below
        }
    }

    pub(super) fn run() {
        let rt = super::runtime();
        let started = Instant::now();
        match rt
            .block_on(async { tokio::time::timeout(Duration::from_secs(240), crash_loop()).await })
        {
            Ok(()) => println!("crash loop: ok in {:.1} s", started.elapsed().as_secs_f64()),
            Err(_) => {
                eprintln!("crash loop: FAILED: over 240 s");
                std::process::exit(1);
            }
        }
    }

    async fn start(db: &str, addr: &str, key: &str) -> Server {
        let exe = std::env::current_exe().expect("own path");
        let mut child = Command::new(exe)
            .arg("--child")
            .env("CRASH_DB", db)
            .env(
                "CRASH_PREFIX",
                format!("st-crash:{}:", db.rsplit('/').nth(1).unwrap_or("run")),
            )
            .env("CRASH_ADDR", addr)
            .env("CRASH_KEY", key)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn the server");
        let out = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(out).lines();
        let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .expect("the server starts within 20 s")
            .expect("read")
            .expect("a line");
        assert_eq!(line, "listening");
        Server(child)
    }

    async fn http_get(addr: &str, path: &str) -> String {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .expect("write");
        let mut buf = String::new();
        s.read_to_string(&mut buf).await.expect("read");
        let (head, body) = buf.split_once("\r\n\r\n").expect("a response");
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        body.to_owned()
    }

    async fn connect(url: &str, addr: &str) -> Ws {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut req = url.into_client_request().expect("request");
        req.headers_mut()
            .insert("origin", format!("http://{addr}").parse().expect("origin"));
        tokio_tungstenite::connect_async(req)
            .await
            .expect("connect")
            .0
    }

    async fn next_json(ws: &mut Ws) -> Option<Json> {
        loop {
            match ws.next().await? {
                Ok(Message::Text(t)) => return Some(serde_json::from_str(&t).expect("json")),
                Ok(Message::Close(_)) | Err(_) => return None,
                Ok(_) => continue,
            }
        }
    }

    fn fresh(engine: &FragmentEngine, items: &[u64]) -> String {
        engine
            .render_html(
                "log.html",
                &Log {
                    items: items.to_vec(),
                },
            )
            .expect("render")
    }

    async fn crash_loop() {
        let loops: usize = std::env::var("CRASH_LOOPS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(50);
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("time")
            .as_nanos() as u64
            | 1;
        let store = std::env::var("CRASH_STORE").unwrap_or_else(|_| "sqlite".into());
        println!("crash loop: {loops} kills, seed {seed}, store {store}");
        let mut rng = Rng(seed);
        let dir = std::env::temp_dir().join(format!("st-crash-{}-{seed:x}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let db = dir.join("crash.db").display().to_string();
        let key = Key::generate().expect("key").encode();
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
            l.local_addr().expect("addr").port()
        };
        let addr = format!("127.0.0.1:{port}");
        let mut env = minijinja::Environment::new();
        env.add_template("log.html", PAGE).expect("template");
        let oracle = FragmentEngine::new(env);

        let mut server = start(&db, &addr, &key).await;
        let created = http_get(&addr, "/new").await;
        let (sid, token) = created.trim().split_once(' ').expect("sid token");
        let (sid, mut token) = (sid.to_owned(), token.to_owned());
        let client = "c0ffee01";
        let mut wire = WireClient::new();
        let mut epoch: Option<String> = None;
        // Events by number: sent (in order), answered.
        let mut sent: Vec<u64> = Vec::new();
        let mut answered: BTreeSet<u64> = BTreeSet::new();
        let (mut resumes, mut resyncs, mut resent_total) = (0, 0, 0);
        let mut applied_unanswered = 0;

        for life in 0..=loops {
            if life > 0 {
                server = start(&db, &addr, &key).await;
                // What the store holds: every answered event, in order, each
                // once; at most the unanswered ones after them.
                let body = http_get(&addr, &format!("/state?sid={sid}&token={token}")).await;
                let stored: Vec<u64> = serde_json::from_str(&body).expect("state");
                assert_eq!(
                    stored.as_slice(),
                    &sent[..stored.len()],
                    "life {life}: the stored state is the events sent, in order, each once"
                );
                let done = answered.len();
                assert!(
                    stored.len() >= done,
                    "life {life}: {done} events were answered but only {} are stored",
                    stored.len()
                );
                assert!(
                    sent[..done].iter().all(|n| answered.contains(n)),
                    "answers come in order"
                );
                applied_unanswered += stored.len() - done;
            }
            let mut url =
                format!("ws://{addr}/statetemplate/ws?v=2&sid={sid}&token={token}&c={client}");
            if let Some(e) = &epoch {
                url.push_str(&format!("&seq={}&epoch={e}", wire.seq()));
            }
            let mut ws = connect(&url, &addr).await;
            let hello = next_json(&mut ws).await.expect("hello");
            assert_eq!(hello["t"], "hello", "{hello}");
            let e = hello["epoch"].as_str().expect("epoch").to_owned();
            if let Some(old) = &epoch {
                assert_eq!(
                    &e, old,
                    "life {life}: the same page epoch after the restart"
                );
                resumes += 1;
            }
            epoch = Some(e);
            token = hello["token"].as_str().expect("token").to_owned();
            // Resend what was not answered, in order.
            let unanswered: Vec<u64> = sent
                .iter()
                .copied()
                .filter(|n| !answered.contains(n))
                .collect();
            resent_total += unanswered.len();
            for n in &unanswered {
                send(&mut ws, *n).await;
            }
            let mut first = true;
            // This life: events, up to 4 unanswered at once, until the kill
            // (the last life: until every event is answered).
            let kill_at = Instant::now() + Duration::from_millis(20 + rng.next(250));
            let last = life == loops;
            let mut next = sent.len() as u64 + 1;
            let mut in_flight = unanswered.len();
            let mut sent_this_life = 0;
            loop {
                if !last && Instant::now() >= kill_at {
                    break;
                }
                if last && sent_this_life >= 20 && in_flight == 0 {
                    break;
                }
                while in_flight < 4 && !(last && sent_this_life >= 20) {
                    send(&mut ws, next).await;
                    sent.push(next);
                    next += 1;
                    in_flight += 1;
                    sent_this_life += 1;
                }
                let wait = if last {
                    Duration::from_secs(10)
                } else {
                    kill_at.saturating_duration_since(Instant::now())
                };
                let msg = match tokio::time::timeout(wait, next_json(&mut ws)).await {
                    Ok(Some(m)) => m,
                    Ok(None) => panic!("life {life}: the server closed the socket"),
                    Err(_) if last => panic!("life {life}: no answer within 10 s"),
                    Err(_) => break,
                };
                match &msg {
                    Json::Number(r) => {
                        let r = r.as_u64().expect("a ref");
                        assert!(answered.insert(r), "event {r} answered twice");
                        in_flight -= 1;
                    }
                    Json::Array(_) => {
                        wire.apply(&msg.to_string()).expect("a frame applies");
                    }
                    Json::Object(o) if o.contains_key("q") => {
                        assert!(
                            life == 0 || !first,
                            "life {life}: a resync after the restart"
                        );
                        if life > 0 {
                            resyncs += 1;
                        }
                        wire = WireClient::new();
                        wire.apply(&msg.to_string()).expect("a join applies");
                    }
                    other => panic!("life {life}: unexpected {other}"),
                }
                first = false;
            }
            if !last {
                // SIGKILL, mid-stream.
                let _ = server.0.start_kill();
                let _ = server.0.wait().await;
                drop(ws);
            } else {
                assert_eq!(answered.len(), sent.len(), "every event answered");
                let want = fresh(&oracle, &sent);
                assert_eq!(
                    wire.html(),
                    want,
                    "the client's page == a fresh render of every event once"
                );
                let body = http_get(&addr, &format!("/state?sid={sid}&token={token}")).await;
                let stored: Vec<u64> = serde_json::from_str(&body).expect("state");
                assert_eq!(
                    stored, sent,
                    "the stored state is every event, once, in order"
                );
                drop(ws);
                let _ = server.0.start_kill();
                let _ = server.0.wait().await;
            }
        }
        assert_eq!(resyncs, 0, "resumes after a restart are by frames");
        println!(
            "crash loop: {loops} SIGKILLs, {} events sent and applied once, {resumes} resumes in the same epoch, {resyncs} resyncs, {applied_unanswered} events applied but unanswered at a kill (deduplicated on resend), {resent_total} resent, {} frames applied",
            sent.len(),
            wire.seq()
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    async fn send(ws: &mut Ws, n: u64) {
        let ev = json!({"t": "ev", "n": "push", "d": n, "r": n});
        ws.send(Message::Text(ev.to_string().into()))
            .await
            .expect("send");
    }
}
