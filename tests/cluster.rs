//! Several instances, one Redis: separate server processes on loopback
//! ports, each a `RedisStore` with a `Cluster` (a 1 s lease), and clients
//! that speak the wire protocol (`WireClient`, the reference applier).
//!
//! - **fan-out**: a client on instance B sees what is rendered on A (where
//!   the session lives), and its events, forwarded to A, come back in order
//!   with their frames first;
//! - **resume elsewhere**: a client that held the page on B reconnects to C
//!   with its seq and gets only the frames it missed;
//! - **two tabs, two instances**: both stay equal to a fresh render after
//!   every event from either;
//! - **the owner dies**: SIGKILL of the owner while a client on another
//!   instance sends events: its socket closes with 4004, it reconnects,
//!   the session moves within the lease, and every answered event is in
//!   the state once, in order (the unanswered ones resent and applied once);
//! - **the lease moves** when a page is loaded on another instance, and
//!   followers go on;
//! - **broadcast and presence** across instances, presence right after a
//!   tab closes and after an instance dies;
//! - **Redis restarts** mid-run (a redis-server of the test's own, stopped
//!   and started again on its files): clients are told to reconnect, then
//!   resume, and nothing answered is lost; once for less than a lease, once
//!   for two (the instances are taken for gone, and the one that still held
//!   the session live drops it when its beat comes back);
//! - **subscriptions drop** while Redis stays up (`CLIENT KILL TYPE
//!   pubsub`, 30 times, each right before the owner renders): the
//!   follower's tab gets every frame.
//!
//! Not a libtest harness (`harness = false`): the same binary is the server
//! when started with `--child`. Needs `STATETEMPLATE_REDIS_URL` (scripts/test.sh
//! starts a Redis and sets it) and `redis-server` on the PATH (for the
//! restart case). Bounded: every wait has a timeout; the run takes about a
//! minute.

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

const LEASE_MS: u64 = 1000;

#[cfg(feature = "redis")]
mod child {
    use std::collections::HashMap;
    use std::time::Duration;

    use axum::Router;
    use axum::extract::Query;
    use axum::routing::get;
    use minijinja::Environment;
    use statetemplate::cluster::ClusterOptions;
    use statetemplate::store::{RedisOptions, RedisStore};
    use statetemplate::token::KeyRing;
    use statetemplate::{Live, StateTemplate};

    use super::{LEASE_MS, Log, PAGE};

    type Q = Query<HashMap<String, String>>;

    pub(super) fn run() {
        super::runtime().block_on(serve());
    }

    async fn serve() {
        if std::env::var("CL_LOG").is_ok() {
            tracing_subscriber::fmt()
                .with_max_level(tracing::Level::DEBUG)
                .with_writer(std::io::stderr)
                .init();
        }
        let addr = std::env::var("CL_ADDR").expect("CL_ADDR");
        let keys = KeyRing::parse(&std::env::var("CL_KEY").expect("CL_KEY")).expect("key");
        let url = std::env::var("CL_REDIS").expect("CL_REDIS");
        let prefix = std::env::var("CL_PREFIX").expect("CL_PREFIX");
        let store = RedisStore::open_with(
            &url,
            RedisOptions::default()
                .prefix(prefix)
                .response_timeout(Duration::from_secs(1))
                .connect_timeout(Duration::from_millis(500)),
        )
        .expect("store");
        let cluster = store
            .cluster(
                ClusterOptions::default()
                    .lease(Duration::from_millis(LEASE_MS))
                    .call_timeout(Duration::from_millis(1500))
                    .presence_every(Duration::from_millis(50)),
            )
            .expect("cluster");
        let mut env = Environment::new();
        env.add_template("log.html", PAGE).expect("template");
        let engine = StateTemplate::builder(env)
            .keys(keys)
            .store(store)
            .cluster(cluster)
            .build()
            .expect("engine");
        // Broadcasts: each instance renders the group members it owns.
        let mut rx = engine.broadcasts();
        let e = engine.clone();
        tokio::spawn(async move {
            while let Ok(b) = rx.recv().await {
                let n = b.message.as_u64().unwrap_or(0);
                for s in e.group(&b.topic) {
                    let _ = s
                        .update(|d: &mut Log| {
                            d.items.push(n);
                            Ok(())
                        })
                        .await;
                }
            }
        });
        let live = Live::new(engine.clone()).on_update("push", |d: &mut Log, n: u64| {
            d.items.push(n);
            Ok(())
        });
        let arg = |q: &HashMap<String, String>, k: &str| q.get(k).cloned().unwrap_or_default();
        let (e1, e2, e3, e4, e5, e6, e7) = (
            engine.clone(),
            engine.clone(),
            engine.clone(),
            engine.clone(),
            engine.clone(),
            engine.clone(),
            engine.clone(),
        );
        let app: Router = Router::new()
            .route(
                "/new",
                get(move |Query(q): Q| {
                    let e = e1.clone();
                    async move {
                        let i = e.new_session("log.html", &Log::default()).await.unwrap();
                        let g = arg(&q, "group");
                        if !g.is_empty() {
                            let s = e
                                .get_session(&i.session_id.to_string(), &i.token)
                                .await
                                .unwrap();
                            s.join_group(&g);
                        }
                        format!("{} {}", i.session_id, i.token)
                    }
                }),
            )
            .route(
                "/state",
                get(move |Query(q): Q| {
                    let e = e2.clone();
                    async move {
                        let id = arg(&q, "sid").parse().unwrap();
                        let rec = e.store().load(&id).await.unwrap().unwrap();
                        let d: Log =
                            serde_json::from_value(serde_json::to_value(&rec.data).unwrap())
                                .unwrap();
                        serde_json::to_string(&d.items).unwrap()
                    }
                }),
            )
            .route(
                "/own",
                get(move |Query(q): Q| {
                    let e = e3.clone();
                    async move {
                        match e.get_session(&arg(&q, "sid"), &arg(&q, "token")).await {
                            Ok(_) => "ok".to_owned(),
                            Err(err) => format!("error {err}"),
                        }
                    }
                }),
            )
            .route(
                "/render",
                get(move |Query(q): Q| {
                    let e = e4.clone();
                    async move {
                        let n: u64 = arg(&q, "n").parse().unwrap();
                        let s = e
                            .get_session(&arg(&q, "sid"), &arg(&q, "token"))
                            .await
                            .unwrap();
                        s.update(|d: &mut Log| {
                            d.items.push(n);
                            Ok(())
                        })
                        .await
                        .unwrap()
                        .to_string()
                    }
                }),
            )
            .route(
                "/bcast",
                get(move |Query(q): Q| {
                    let e = e5.clone();
                    async move {
                        let n: u64 = arg(&q, "n").parse().unwrap();
                        match e.broadcast(&arg(&q, "topic"), &n).await {
                            Ok(()) => "ok".to_owned(),
                            Err(e) => format!("error: {e}"),
                        }
                    }
                }),
            )
            .route(
                "/presence",
                get(move |Query(q): Q| {
                    let e = e6.clone();
                    async move { e.presence(&arg(&q, "g")).await.unwrap().to_string() }
                }),
            )
            .route(
                "/whoami",
                get(move || {
                    let e = e7.clone();
                    async move { format!("{} {}", e.instance().unwrap_or(""), e.live_sessions()) }
                }),
            )
            .merge(live.router());
        let listener = tokio::net::TcpListener::bind(&addr).await.expect("bind");
        // Ready once this instance listens to the cluster (its first beat).
        tokio::time::sleep(Duration::from_millis(100)).await;
        println!("listening");
        axum::serve(listener, app).await.expect("serve");
    }
}

#[cfg(not(feature = "redis"))]
mod child {
    pub(super) fn run() {
        panic!("the cluster test needs the redis feature");
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

    use super::{LEASE_MS, Log, PAGE};

    type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

    /// A child server; SIGKILLed when dropped, so a failing run leaves
    /// nothing behind.
    struct Server {
        child: Child,
        addr: String,
    }

    impl Drop for Server {
        fn drop(&mut self) {
            let _ = self.child.start_kill();
        }
    }

    impl Server {
        async fn kill(&mut self) {
            let _ = self.child.start_kill();
            let _ = self.child.wait().await;
        }
    }

    /// What every server of one scenario shares.
    struct Setup {
        redis: String,
        prefix: String,
        key: String,
    }

    fn free_addr() -> String {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
        format!("127.0.0.1:{}", l.local_addr().expect("addr").port())
    }

    impl Setup {
        fn new(redis: &str, name: &str) -> Setup {
            Setup {
                redis: redis.to_owned(),
                prefix: format!("st-cluster:{}:{name}:", std::process::id()),
                key: Key::generate().expect("key").encode(),
            }
        }

        async fn start(&self, addr: &str) -> Server {
            let exe = std::env::current_exe().expect("own path");
            let mut child = Command::new(exe)
                .arg("--child")
                .env("CL_ADDR", addr)
                .env("CL_KEY", &self.key)
                .env("CL_REDIS", &self.redis)
                .env("CL_PREFIX", &self.prefix)
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .kill_on_drop(true)
                .spawn()
                .expect("spawn a server");
            let out = child.stdout.take().expect("stdout");
            let mut lines = BufReader::new(out).lines();
            let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
                .await
                .expect("a server starts within 20 s")
                .expect("read")
                .expect("a line");
            assert_eq!(line, "listening");
            Server {
                child,
                addr: addr.to_owned(),
            }
        }

        async fn servers(&self, n: usize) -> Vec<Server> {
            let mut v = Vec::new();
            for _ in 0..n {
                v.push(self.start(&free_addr()).await);
            }
            v
        }
    }

    async fn http_get(addr: &str, path: &str) -> String {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .expect("write");
        let mut buf = String::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut buf))
            .await
            .expect("an answer within 10 s")
            .expect("read");
        let (head, body) = buf.split_once("\r\n\r\n").expect("a response");
        assert!(head.starts_with("HTTP/1.1 200"), "{path}: {head}\n{body}");
        body.to_owned()
    }

    async fn new_session(addr: &str, group: &str) -> (String, String) {
        let created = http_get(addr, &format!("/new?group={group}")).await;
        let (sid, token) = created.trim().split_once(' ').expect("sid token");
        (sid.to_owned(), token.to_owned())
    }

    async fn stored(addr: &str, sid: &str) -> Vec<u64> {
        serde_json::from_str(&http_get(addr, &format!("/state?sid={sid}")).await).expect("state")
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

    fn oracle() -> FragmentEngine {
        let mut env = minijinja::Environment::new();
        env.add_template("log.html", PAGE).expect("template");
        FragmentEngine::new(env)
    }

    /// What a tab reads.
    #[derive(Debug)]
    enum Got {
        Answer(u64),
        Refused(u64),
        Frame,
        Join,
        Closed(Option<u16>),
    }

    /// One browser tab of a session, as the JS client behaves: it resumes
    /// with its seq and epoch, and applies every frame.
    struct Tab {
        sid: String,
        token: String,
        client: String,
        wire: WireClient,
        epoch: Option<String>,
        ws: Option<Ws>,
        joins: usize,
    }

    impl Tab {
        fn new(sid: &str, token: &str, client: &str) -> Tab {
            Tab {
                sid: sid.to_owned(),
                token: token.to_owned(),
                client: client.to_owned(),
                wire: WireClient::new(),
                epoch: None,
                ws: None,
                joins: 0,
            }
        }

        /// Connects to `addr` (resuming when it held the page) and reads the
        /// hello; false if the server refused or closed it first.
        async fn open(&mut self, addr: &str) -> bool {
            use tokio_tungstenite::tungstenite::client::IntoClientRequest;
            let mut url = format!(
                "ws://{addr}/statetemplate/ws?v=2&sid={}&token={}&c={}",
                self.sid, self.token, self.client
            );
            if let Some(e) = &self.epoch {
                url.push_str(&format!("&seq={}&epoch={e}", self.wire.seq()));
            }
            let mut req = url.into_client_request().expect("request");
            req.headers_mut()
                .insert("origin", format!("http://{addr}").parse().expect("origin"));
            let Ok(Ok((mut ws, _))) = tokio::time::timeout(
                Duration::from_secs(5),
                tokio_tungstenite::connect_async(req),
            )
            .await
            else {
                return false;
            };
            loop {
                match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
                    Ok(Some(Ok(Message::Text(t)))) => {
                        let m: Json = serde_json::from_str(&t).expect("json");
                        assert_eq!(m["t"], "hello", "the first frame is the hello: {m}");
                        self.epoch = Some(m["epoch"].as_str().expect("epoch").to_owned());
                        self.token = m["token"].as_str().expect("token").to_owned();
                        self.ws = Some(ws);
                        return true;
                    }
                    Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
                    _ => return false,
                }
            }
        }

        /// Opens, retrying for up to `within` (a moving session refuses
        /// for a moment).
        async fn open_retry(&mut self, addr: &str, within: Duration) {
            let end = Instant::now() + within;
            while !self.open(addr).await {
                assert!(
                    Instant::now() < end,
                    "the tab could not reconnect to {addr} within {within:?}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }

        async fn send(&mut self, n: u64) {
            let ev = json!({"t": "ev", "n": "push", "d": n, "r": n});
            let ws = self.ws.as_mut().expect("connected");
            let _ = ws.send(Message::Text(ev.to_string().into())).await;
        }

        /// The next thing the tab reads (`None`: nothing within `wait`).
        async fn next(&mut self, wait: Duration) -> Option<Got> {
            let ws = self.ws.as_mut()?;
            loop {
                let m = match tokio::time::timeout(wait, ws.next()).await {
                    Err(_) => return None,
                    Ok(None) | Ok(Some(Err(_))) => {
                        self.ws = None;
                        return Some(Got::Closed(None));
                    }
                    Ok(Some(Ok(m))) => m,
                };
                let t = match m {
                    Message::Text(t) => t,
                    Message::Close(c) => {
                        self.ws = None;
                        return Some(Got::Closed(c.map(|c| u16::from(c.code))));
                    }
                    _ => continue,
                };
                let msg: Json = serde_json::from_str(&t).expect("json");
                return Some(match &msg {
                    Json::Number(r) => Got::Answer(r.as_u64().expect("ref")),
                    Json::Array(_) => {
                        self.wire.apply(&t).expect("a frame applies");
                        Got::Frame
                    }
                    Json::Object(o) if o.get("t") == Some(&json!("hello")) => {
                        // A resync: a hello, then the join frame.
                        self.epoch = Some(o["epoch"].as_str().expect("epoch").to_owned());
                        self.token = o["token"].as_str().expect("token").to_owned();
                        continue;
                    }
                    Json::Object(o) if o.contains_key("q") => {
                        self.wire = WireClient::new();
                        self.wire.apply(&t).expect("a join applies");
                        self.joins += 1;
                        Got::Join
                    }
                    Json::Object(o) if o.get("t") == Some(&json!("error")) => {
                        Got::Refused(o["r"].as_u64().expect("an error with a ref"))
                    }
                    other => panic!("unexpected {other}"),
                });
            }
        }
    }

    impl Tab {
        /// Sends event `n` and reads until its answer; the page then shows
        /// it (its frames come first). False if it was refused.
        async fn event(&mut self, n: u64) -> bool {
            self.send(n).await;
            loop {
                match self.next(Duration::from_secs(10)).await {
                    Some(Got::Answer(r)) if r == n => return true,
                    Some(Got::Refused(r)) if r == n => return false,
                    Some(Got::Frame | Got::Join) => {}
                    other => panic!("event {n}: {other:?}"),
                }
            }
        }

        /// Reads frames until the page is `want` (within 10 s).
        async fn until(&mut self, want: &str) {
            let end = Instant::now() + Duration::from_secs(10);
            while self.wire.html() != want {
                let left = end.saturating_duration_since(Instant::now());
                match self.next(left).await {
                    Some(Got::Frame | Got::Join) => {}
                    other => panic!(
                        "waiting for the page {want:?}: {other:?}; it is {:?}",
                        self.wire.html()
                    ),
                }
            }
        }
    }

    /// Polls `path` on `addr` until it answers `want` (within `within`).
    async fn eventually(addr: &str, path: &str, want: &str, within: Duration) {
        let end = Instant::now() + within;
        loop {
            let got = http_get(addr, path).await;
            if got.trim() == want {
                return;
            }
            assert!(
                Instant::now() < end,
                "{path} on {addr}: {got:?}, not {want:?} within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    async fn live_here(addr: &str) -> usize {
        let w = http_get(addr, "/whoami").await;
        w.split_whitespace()
            .nth(1)
            .expect("count")
            .parse()
            .expect("a number")
    }

    type Scenario = fn(String) -> futures_util::future::BoxFuture<'static, ()>;

    pub(super) fn run() {
        let Ok(redis) = std::env::var("STATETEMPLATE_REDIS_URL") else {
            eprintln!(
                "cluster: FAILED: STATETEMPLATE_REDIS_URL is not set (scripts/test.sh starts a Redis and sets it)"
            );
            std::process::exit(1);
        };
        if !cfg!(feature = "redis") {
            eprintln!(
                "cluster: FAILED: needs the redis feature (cargo test --all-features --test cluster)"
            );
            std::process::exit(1);
        }
        let only = std::env::args().nth(1).filter(|a| !a.starts_with('-'));
        let rt = super::runtime();
        let started = Instant::now();
        let all: [(&str, Scenario); 10] = [
            ("fan_out_and_resume_elsewhere", |r| {
                Box::pin(fan_out_and_resume_elsewhere(r))
            }),
            ("two_tabs_on_two_instances", |r| {
                Box::pin(two_tabs_on_two_instances(r))
            }),
            ("the_owner_dies", |r| Box::pin(the_owner_dies(r))),
            ("the_lease_moves", |r| Box::pin(the_lease_moves(r))),
            ("broadcast_and_presence", |r| {
                Box::pin(broadcast_and_presence(r))
            }),
            ("three_instances_one_session", |r| {
                Box::pin(three_instances_one_session(r))
            }),
            ("redis_restarts", |r| Box::pin(redis_restarts(r))),
            ("redis_away_past_the_lease", |r| {
                Box::pin(redis_away_past_the_lease(r))
            }),
            ("subscriptions_drop", |r| Box::pin(subscriptions_drop(r))),
            ("broadcasts_survive_drops", |r| {
                Box::pin(broadcasts_survive_drops(r))
            }),
        ];
        for (name, f) in all {
            if only.as_deref().is_some_and(|o| !name.contains(o)) {
                continue;
            }
            let t = Instant::now();
            match rt.block_on(async {
                tokio::time::timeout(Duration::from_secs(90), f(redis.clone())).await
            }) {
                Ok(()) => println!("cluster: {name}: ok in {:.1} s", t.elapsed().as_secs_f64()),
                Err(_) => {
                    eprintln!("cluster: {name}: FAILED: over 90 s");
                    std::process::exit(1);
                }
            }
        }
        println!(
            "cluster: all ok in {:.1} s",
            started.elapsed().as_secs_f64()
        );
    }

    /// A client on B sees renders made on A, its events forwarded to A come
    /// back with their frames first; it then reconnects to C with its seq
    /// and gets only the frames it missed.
    async fn fan_out_and_resume_elsewhere(redis: String) {
        let o = oracle();
        let setup = Setup::new(&redis, "fanout");
        let v = setup.servers(3).await;
        let (a, b, c) = (&v[0].addr, &v[1].addr, &v[2].addr);
        let (sid, token) = new_session(a, "").await;
        let mut tab = Tab::new(&sid, &token, "b0b0");
        assert!(tab.open(b).await, "the tab connects to B");
        assert!(matches!(
            tab.next(Duration::from_secs(5)).await,
            Some(Got::Join)
        ));
        let mut items = Vec::new();
        for n in 1..=10 {
            assert!(tab.event(n).await, "event {n} applied");
            items.push(n);
            assert_eq!(
                tab.wire.html(),
                fresh(&o, &items),
                "after event {n}, when it is answered"
            );
        }
        // A render made on A, where the session lives.
        http_get(a, &format!("/render?sid={sid}&token={token}&n=100")).await;
        items.push(100);
        tab.until(&fresh(&o, &items)).await;
        assert_eq!(live_here(a).await, 1, "the session lives on A");
        assert_eq!(live_here(b).await, 0, "B only follows it");
        assert_eq!(stored(c, &sid).await, items);
        // B's socket goes; two renders on A; the tab comes back on C.
        tab.ws = None;
        for n in [101, 102] {
            http_get(a, &format!("/render?sid={sid}&token={token}&n={n}")).await;
            items.push(n);
        }
        assert!(tab.open(c).await, "the tab reconnects to C");
        for _ in 0..2 {
            assert!(
                matches!(tab.next(Duration::from_secs(5)).await, Some(Got::Frame)),
                "a missed frame, not a join"
            );
        }
        assert_eq!(tab.wire.html(), fresh(&o, &items));
        assert_eq!(tab.joins, 1, "one join, at the start");
        assert_eq!(live_here(c).await, 0, "C follows too");
        assert!(tab.event(103).await);
        items.push(103);
        assert_eq!(tab.wire.html(), fresh(&o, &items));
    }

    /// Two tabs of one session, on A (where it lives) and on B: after every
    /// event from either, both equal a fresh render.
    async fn two_tabs_on_two_instances(redis: String) {
        let o = oracle();
        let setup = Setup::new(&redis, "twotabs");
        let v = setup.servers(2).await;
        let (a, b) = (&v[0].addr, &v[1].addr);
        let (sid, token) = new_session(a, "").await;
        let mut t1 = Tab::new(&sid, &token, "a1");
        let mut t2 = Tab::new(&sid, &token, "b2");
        assert!(t1.open(a).await && t2.open(b).await);
        let mut items = Vec::new();
        for n in 1..=30u64 {
            let (from, other) = if n % 3 == 0 {
                (&mut t1, &mut t2)
            } else {
                (&mut t2, &mut t1)
            };
            assert!(from.event(n).await);
            items.push(n);
            let want = fresh(&o, &items);
            assert_eq!(from.wire.html(), want, "the tab that sent {n}");
            other.until(&want).await;
        }
        assert_eq!(stored(a, &sid).await, items);
    }

    /// The owner is SIGKILLed while a client on B sends events: it is told
    /// to reconnect, the session moves to B within the lease, and every
    /// answered event is there once, in order.
    async fn the_owner_dies(redis: String) {
        let o = oracle();
        let setup = Setup::new(&redis, "ownerdies");
        let mut v = setup.servers(2).await;
        let (a, b) = (v[0].addr.clone(), v[1].addr.clone());
        let (sid, token) = new_session(&a, "").await;
        let mut tab = Tab::new(&sid, &token, "d1ed");
        assert!(tab.open(&b).await);
        let mut sent: Vec<u64> = Vec::new();
        let mut answered: BTreeSet<u64> = BTreeSet::new();
        let kill_at = Instant::now() + Duration::from_millis(300);
        let mut killed = false;
        let mut killed_at = Instant::now();
        let mut next = 1;
        // Events, up to 4 unanswered, until the socket closes.
        let code = 'run: loop {
            while sent.len() - answered.len() < 4 {
                tab.send(next).await;
                sent.push(next);
                next += 1;
            }
            if !killed && Instant::now() >= kill_at {
                v[0].kill().await;
                killed = true;
                killed_at = Instant::now();
            }
            match tab.next(Duration::from_secs(10)).await {
                Some(Got::Answer(r)) => assert!(answered.insert(r), "answered twice: {r}"),
                Some(Got::Frame | Got::Join) => {}
                Some(Got::Closed(c)) => break 'run c,
                other => panic!("{other:?}"),
            }
        };
        assert!(killed, "the socket stayed up until the kill");
        assert_eq!(
            code,
            Some(4004),
            "the client is told to reconnect (not to reload)"
        );
        let closed_after = killed_at.elapsed();
        tab.open_retry(&b, Duration::from_millis(LEASE_MS * 6))
            .await;
        let moved_in = killed_at.elapsed();
        assert!(
            moved_in < Duration::from_millis(LEASE_MS * 3),
            "the session moved {moved_in:?} after the kill: more than the lease ({LEASE_MS} ms) and its checks"
        );
        let st = stored(&b, &sid).await;
        assert_eq!(
            st.as_slice(),
            &sent[..st.len()],
            "the stored events are those sent, in order, once"
        );
        assert!(
            sent[..answered.len()].iter().all(|n| answered.contains(n))
                && st.len() >= answered.len(),
            "every answered event is stored"
        );
        // Resend what was not answered, as the JS client's outbox does.
        let unanswered: Vec<u64> = sent
            .iter()
            .copied()
            .filter(|n| !answered.contains(n))
            .collect();
        for n in &unanswered {
            tab.send(*n).await;
        }
        while answered.len() < sent.len() {
            match tab.next(Duration::from_secs(10)).await {
                Some(Got::Answer(r)) => {
                    answered.insert(r);
                }
                Some(Got::Frame | Got::Join) => {}
                other => panic!("after the move: {other:?}"),
            }
        }
        assert_eq!(stored(&b, &sid).await, sent, "every event once, in order");
        assert_eq!(tab.wire.html(), fresh(&o, &sent));
        assert_eq!(live_here(&b).await, 1, "the session lives on B now");
        println!(
            "  {} events, {} answered before the kill, {} resent; socket closed {:.2} s and session served again {:.2} s after the kill (lease {LEASE_MS} ms)",
            sent.len(),
            sent.len() - unanswered.len(),
            unanswered.len(),
            closed_after.as_secs_f64(),
            moved_in.as_secs_f64()
        );
    }

    /// A page load on B takes the session from A (the lease moves): A's tab
    /// reconnects and follows B, C's tab goes on.
    async fn the_lease_moves(redis: String) {
        let o = oracle();
        let setup = Setup::new(&redis, "leasemoves");
        let v = setup.servers(3).await;
        let (a, b, c) = (&v[0].addr, &v[1].addr, &v[2].addr);
        let (sid, token) = new_session(a, "").await;
        let mut ta = Tab::new(&sid, &token, "aa");
        let mut tc = Tab::new(&sid, &token, "cc");
        assert!(ta.open(a).await && tc.open(c).await);
        let mut items = vec![1];
        assert!(tc.event(1).await);
        ta.until(&fresh(&o, &items)).await;
        assert_eq!(
            http_get(b, &format!("/own?sid={sid}&token={token}")).await,
            "ok"
        );
        assert_eq!(live_here(a).await, 0, "A handed it over");
        assert_eq!(live_here(b).await, 1, "B owns it");
        loop {
            match ta.next(Duration::from_secs(5)).await {
                Some(Got::Closed(code)) => {
                    assert_eq!(code, Some(4004), "A's tab is told to reconnect");
                    break;
                }
                Some(Got::Frame | Got::Join) => {}
                other => panic!("{other:?}"),
            }
        }
        ta.open_retry(a, Duration::from_secs(5)).await;
        for n in 2..=6 {
            let t = if n % 2 == 0 { &mut tc } else { &mut ta };
            assert!(t.event(n).await, "event {n} after the move");
            items.push(n);
            let want = fresh(&o, &items);
            ta.until(&want).await;
            tc.until(&want).await;
        }
        assert_eq!(ta.joins, 1, "A's tab resumed by frames");
        assert_eq!(stored(c, &sid).await, items);
    }

    /// Three instances, one session, a tab on each: events from all three
    /// interleave, and all tabs stay equal to a fresh render.
    async fn three_instances_one_session(redis: String) {
        let o = oracle();
        let setup = Setup::new(&redis, "three");
        let v = setup.servers(3).await;
        let (sid, token) = new_session(&v[1].addr, "").await;
        let mut tabs: Vec<Tab> = (0..3)
            .map(|i| Tab::new(&sid, &token, &format!("7{i}")))
            .collect();
        for (t, s) in tabs.iter_mut().zip(&v) {
            assert!(t.open(&s.addr).await);
        }
        let mut items = Vec::new();
        for n in 1..=24u64 {
            let i = (n as usize * 7) % 3;
            assert!(tabs[i].event(n).await);
            items.push(n);
            let want = fresh(&o, &items);
            for t in &mut tabs {
                t.until(&want).await;
            }
        }
        assert_eq!(stored(&v[0].addr, &sid).await, items);
    }

    /// A broadcast from one instance reaches the group's sessions on every
    /// instance (once); presence counts tabs over the instances, right after
    /// a tab closes and after an instance dies.
    async fn broadcast_and_presence(redis: String) {
        let o = oracle();
        let setup = Setup::new(&redis, "bcast");
        let mut v = setup.servers(2).await;
        let (a, b) = (v[0].addr.clone(), v[1].addr.clone());
        let (s1, k1) = new_session(&a, "g").await;
        let (s2, k2) = new_session(&b, "g").await;
        let (s3, _) = new_session(&a, "").await;
        let mut t1 = Tab::new(&s1, &k1, "1"); // s1 on A, where it lives
        let mut t2 = Tab::new(&s2, &k2, "2"); // s2 on A, a follower of B
        let mut t3 = Tab::new(&s1, &k1, "3"); // s1 on B, a follower of A
        assert!(t1.open(&a).await && t2.open(&a).await && t3.open(&b).await);
        for p in [&a, &b] {
            eventually(p, "/presence?g=g", "3", Duration::from_secs(3)).await;
        }
        http_get(&b, "/bcast?topic=g&n=7").await;
        let want = fresh(&o, &[7]);
        for t in [&mut t1, &mut t2, &mut t3] {
            t.until(&want).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(stored(&a, &s1).await, vec![7], "rendered once");
        assert_eq!(stored(&a, &s2).await, vec![7], "rendered once");
        assert_eq!(stored(&a, &s3).await, Vec::<u64>::new(), "not in the group");
        // A tab closes: the count follows.
        if let Some(mut ws) = t3.ws.take() {
            let _ = ws.close(None).await;
        }
        for p in [&a, &b] {
            eventually(p, "/presence?g=g", "2", Duration::from_secs(3)).await;
        }
        // A tab on B again, then B dies: its count goes with its lease, and
        // s2 (B's) moves to A, where t2 reconnects.
        let mut t4 = Tab::new(&s1, &k1, "4");
        assert!(t4.open(&b).await);
        eventually(&a, "/presence?g=g", "3", Duration::from_secs(3)).await;
        v[1].kill().await;
        match t2.next(Duration::from_millis(LEASE_MS * 5)).await {
            Some(Got::Closed(code)) => assert_eq!(code, Some(4004)),
            other => panic!("t2 after B died: {other:?}"),
        }
        t2.open_retry(&a, Duration::from_millis(LEASE_MS * 6)).await;
        eventually(
            &a,
            "/presence?g=g",
            "2",
            Duration::from_millis(LEASE_MS * 4),
        )
        .await;
        http_get(&a, "/bcast?topic=g&n=8").await;
        let want = fresh(&o, &[7, 8]);
        t1.until(&want).await;
        t2.until(&want).await;
    }

    /// The test's own redis-server (append-only, fsync always), stopped
    /// (SIGTERM) and started again on its files while clients are on two
    /// instances: they are told to reconnect, resume, and nothing answered
    /// is lost. Away for less than a lease: no instance is taken for gone.
    async fn redis_restarts(_shared: String) {
        redis_away(Duration::from_millis(LEASE_MS / 2)).await
    }

    /// As [`redis_restarts`], away for two leases: both instance keys lapse,
    /// so B's instance claims the session A's instance still holds live;
    /// A's instance finds its beat lapsed and drops its copy, and A's tab
    /// reconnects to the page B's event changed (before, it waited on a
    /// copy nobody rendered: CI failed on it when a restart took long).
    async fn redis_away_past_the_lease(_shared: String) {
        redis_away(Duration::from_millis(LEASE_MS * 2)).await
    }

    async fn redis_away(outage: Duration) {
        let o = oracle();
        let dir = std::env::temp_dir().join(format!("st-cluster-redis-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("a directory");
        let port = free_addr().rsplit(':').next().expect("port").to_owned();
        let start_redis = || spawn_redis(&port, &dir);
        let url = format!("redis://127.0.0.1:{port}");
        let ready = |url: String| redis_ready(url);
        let mut redis = start_redis();
        ready(url.clone()).await;
        let setup = Setup::new(&url, "restart");
        let v = setup.servers(2).await;
        let (a, b) = (&v[0].addr, &v[1].addr);
        let (sid, token) = new_session(a, "").await;
        let mut ta = Tab::new(&sid, &token, "ra");
        let mut tb = Tab::new(&sid, &token, "rb");
        assert!(ta.open(a).await && tb.open(b).await);
        let mut items = Vec::new();
        for n in 1..=5 {
            assert!(tb.event(n).await);
            items.push(n);
        }
        ta.until(&fresh(&o, &items)).await;
        // Redis stops (SIGTERM: it writes its file and exits).
        let pid = redis.id().expect("pid") as i32;
        unsafe_kill_term(pid);
        let _ = redis.wait().await;
        // While it is down, B's tab sends: it is told to reconnect; A's tab
        // sends: the render cannot be stored, so it is refused (not applied).
        tb.send(6).await;
        let mut tb_code = None;
        while tb_code.is_none() {
            match tb.next(Duration::from_secs(10)).await {
                Some(Got::Closed(c)) => tb_code = Some(c),
                Some(Got::Refused(6)) => {
                    panic!("a forwarded event is not refused: its tab reconnects and resends it")
                }
                other => panic!("B's tab while Redis is down: {other:?}"),
            }
        }
        assert_eq!(tb_code, Some(Some(4004)));
        assert!(
            !ta.event(1000).await,
            "an event that cannot be stored is refused"
        );
        tokio::time::sleep(outage).await;
        redis = start_redis();
        ready(url.clone()).await;
        tb.open_retry(b, Duration::from_secs(15)).await;
        assert!(tb.event(6).await, "the resent event is applied");
        items.push(6);
        let want = fresh(&o, &items);
        assert_eq!(tb.wire.html(), want);
        // A's tab: its socket is closed or goes on; either way it ends up
        // with the page (reconnecting if it was told to).
        let end = Instant::now() + Duration::from_secs(15);
        while ta.wire.html() != want {
            assert!(Instant::now() < end, "A's tab catches up");
            if let Some(Got::Closed(_)) = ta.next(Duration::from_secs(1)).await {
                ta.open_retry(a, Duration::from_secs(15)).await;
            }
        }
        assert!(ta.event(7).await);
        items.push(7);
        tb.until(&fresh(&o, &items)).await;
        assert_eq!(stored(b, &sid).await, items, "nothing answered is lost");
        let pid = redis.id().expect("pid") as i32;
        unsafe_kill_term(pid);
        let _ = redis.wait().await;
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A redis-server of the test's own on `port` (append-only, fsync
    /// always, its files in `dir`), killed when dropped.
    fn spawn_redis(port: &str, dir: &std::path::Path) -> tokio::process::Child {
        Command::new("redis-server")
            .args([
                "--port",
                port,
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ])
            .arg("--dir")
            .arg(dir)
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server starts (it is on the PATH: scripts/test.sh installs it)")
    }

    /// Waits until the redis-server at `url` accepts connections (10 s).
    async fn redis_ready(url: String) {
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            if TcpStream::connect(url.trim_start_matches("redis://"))
                .await
                .is_ok()
            {
                return;
            }
            assert!(Instant::now() < end, "redis-server on {url} within 10 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A redis-server of the test's own (see [`spawn_redis`]), with a
    /// plain connection to it for commands the test sends itself.
    struct OwnRedis {
        child: tokio::process::Child,
        url: String,
        dir: std::path::PathBuf,
        raw: redis::aio::MultiplexedConnection,
    }

    impl OwnRedis {
        async fn start(name: &str) -> OwnRedis {
            let dir =
                std::env::temp_dir().join(format!("st-cluster-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("a directory");
            let port = free_addr().rsplit(':').next().expect("port").to_owned();
            let child = spawn_redis(&port, &dir);
            let url = format!("redis://127.0.0.1:{port}");
            redis_ready(url.clone()).await;
            let raw = redis::Client::open(url.as_str())
                .expect("url")
                .get_multiplexed_async_connection()
                .await
                .expect("a connection to the test's Redis");
            OwnRedis {
                child,
                url,
                dir,
                raw,
            }
        }

        /// `CLIENT KILL` with `filter` (say `["TYPE", "pubsub"]`).
        async fn kill(&mut self, filter: &[&str]) {
            let _: redis::Value = redis::cmd("CLIENT")
                .arg("KILL")
                .arg(filter)
                .query_async(&mut self.raw)
                .await
                .expect("CLIENT KILL");
        }

        /// The ids of the clients named `name` (`CLIENT LIST`).
        async fn named(&mut self, name: &str) -> Vec<String> {
            let list: String = redis::cmd("CLIENT")
                .arg("LIST")
                .query_async(&mut self.raw)
                .await
                .expect("CLIENT LIST");
            let field = format!(" name={name} ");
            list.lines()
                .filter(|l| l.contains(&field))
                .filter_map(|l| l.split(' ').find_map(|f| f.strip_prefix("id=")))
                .map(str::to_owned)
                .collect()
        }

        async fn stop(mut self) {
            let _ = self.child.kill().await;
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    /// Reads `tab`'s frames until its page is `want` (within 5 s), opening
    /// it again on `addr` when the server closes it.
    async fn reaches(tab: &mut Tab, addr: &str, want: &str, what: &str) -> bool {
        let end = Instant::now() + Duration::from_secs(5);
        let mut reopened = false;
        while tab.wire.html() != want {
            assert!(
                Instant::now() < end,
                "{what} did not reach the tab (it shows {:?})",
                tab.wire.html()
            );
            if let Some(Got::Closed(_)) = tab.next(Duration::from_millis(500)).await {
                reopened = true;
                tab.open_retry(addr, Duration::from_secs(10)).await;
            }
        }
        reopened
    }

    /// The instances' subscription connections are killed by Redis
    /// (`CLIENT KILL TYPE pubsub`) while Redis stays up, right before the
    /// owner renders, 30 times: the follower's tab gets every frame. A
    /// follower catches up from the store when its connection drops, and
    /// again once the subscriptions are back, so a frame published in
    /// between (nothing later would show the gap on an idle page) is not
    /// missed. Redis of the test's own: the kills reach only its clients.
    async fn subscriptions_drop(_shared: String) {
        let o = oracle();
        let mut redis = OwnRedis::start("subs").await;
        let setup = Setup::new(&redis.url, "subs");
        let v = setup.servers(2).await;
        let (a, b) = (&v[0].addr, &v[1].addr);
        let (sid, token) = new_session(a, "").await;
        let mut ta = Tab::new(&sid, &token, "sa");
        let mut tb = Tab::new(&sid, &token, "sb");
        assert!(ta.open(a).await && tb.open(b).await);
        let mut items = Vec::new();
        let mut reopened = 0;
        for n in 1..=30u64 {
            redis.kill(&["TYPE", "pubsub"]).await;
            assert!(ta.event(n).await, "the owner's event {n}");
            items.push(n);
            let want = fresh(&o, &items);
            reopened += usize::from(reaches(&mut tb, b, &want, &format!("event {n}")).await);
        }
        println!(
            "  30 drops of the subscription connections; the follower's tab reopened {reopened} times"
        );
        assert_eq!(stored(b, &sid).await, items);
        redis.stop().await;
    }

    /// Broadcasts while Redis drops every connection of the instances: the
    /// subscription connections (`CLIENT KILL TYPE pubsub`, which carried
    /// broadcasts before), then all the others (`TYPE normal`: the
    /// broadcast readers, once both are seen back by their name in `CLIENT
    /// LIST`, and the stores' own) are killed right before instance A
    /// broadcasts, 20 times; the session in the group, on B, renders every
    /// broadcast once. With pub/sub, a broadcast sent while B's
    /// subscription was reconnecting was lost; the stream keeps it for B's
    /// next read. B's render of it meets a killed store connection, and
    /// the store sends its append once more (`RedisStore::run`): before
    /// that, the render failed and the broadcast was lost to the page.
    async fn broadcasts_survive_drops(_shared: String) {
        let o = oracle();
        let mut redis = OwnRedis::start("bcast").await;
        let setup = Setup::new(&redis.url, "bdrop");
        let v = setup.servers(2).await;
        let (a, b) = (&v[0].addr, &v[1].addr);
        let (sid, token) = new_session(b, "g").await;
        let mut tab = Tab::new(&sid, &token, "g1");
        assert!(tab.open(b).await);
        let mut items = Vec::new();
        let mut retried = 0;
        for n in 1..=20u64 {
            redis.kill(&["TYPE", "pubsub"]).await;
            // Both readers are connected again (from the last kill).
            let end = Instant::now() + Duration::from_secs(5);
            let readers = loop {
                let r = redis.named("statetemplate-broadcasts").await;
                if r.len() == 2 {
                    break r;
                }
                assert!(
                    Instant::now() < end,
                    "one broadcast reader an instance: {r:?}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            };
            assert_eq!(readers.len(), 2);
            redis.kill(&["TYPE", "normal"]).await;
            // A broadcast that fails (A's reader is not back yet, or its
            // `XADD` met the killed connection: it is not sent twice) is
            // sent again: the caller gets the error, nothing is sent.
            let end = Instant::now() + Duration::from_secs(5);
            loop {
                let r = http_get(a, &format!("/bcast?topic=g&n={n}")).await;
                if r == "ok" {
                    break;
                }
                assert!(Instant::now() < end, "broadcast {n}: {r}");
                retried += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            items.push(n);
            let want = fresh(&o, &items);
            reaches(&mut tab, b, &want, &format!("broadcast {n}")).await;
        }
        println!(
            "  20 drops of the connections that carry broadcasts; {retried} broadcasts sent again after an error"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(stored(b, &sid).await, items, "each broadcast rendered once");
        redis.stop().await;
    }

    fn unsafe_kill_term(pid: i32) {
        let _ = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status();
    }
}
