//! What the browser examples share: the page layout, keys, the session
//! cookie (so a browser's tabs share one session), a limit on new sessions
//! per client address, a server clock pushed to every connected session,
//! and serving on `ADDR` with `serve_axum` (header read timeout,
//! TCP_NODELAY).
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::ConnectInfo;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use serde::Serialize;
use statetemplate::rate::{Limiter, client_key};
use statetemplate::token::KeyRing;
use statetemplate::transport::{ServeOptions, serve_axum};
use statetemplate::{ErrorKind, Live, Session, StateTemplate};

/// Keys from `STATETEMPLATE_KEYS` (tokens then survive a restart), else a
/// fresh key.
pub(crate) fn keys() -> KeyRing {
    KeyRing::from_env("STATETEMPLATE_KEYS")
        .unwrap_or_else(|_| KeyRing::generate().expect("OS random source"))
}

/// Adds the example's templates to `env`: the embedded copies, or, when
/// `STATETEMPLATE_TEMPLATES` names a directory, the files there, read by
/// minijinja's `path_loader` with auto-reload on: edit one and live pages
/// show the edit on their next render (see `FragmentEngine::reload_interval`).
pub(crate) fn templates(
    env: &mut minijinja::Environment<'static>,
    embedded: &[(&'static str, &'static str)],
) -> statetemplate::Result<()> {
    if let Ok(dir) = std::env::var("STATETEMPLATE_TEMPLATES") {
        println!("templates are read from {dir} and picked up when edited");
        env.set_loader(minijinja::path_loader(dir));
        return Ok(());
    }
    for (name, source) in embedded {
        env.add_template(name, source)?;
    }
    Ok(())
}

/// The engine of example `name`, on the embedded default: sessions in an
/// SQLite file (`STATETEMPLATE_DB`, else `target/demo/NAME.db`), so a
/// restart, even a `kill -9`, loses nothing: the open pages resume. Keys
/// come from `STATETEMPLATE_KEYS`, else from a key file beside the database
/// (made on the first start, readable by its owner only), so tokens stay
/// valid across restarts too. `STATETEMPLATE_STORE=memory` keeps sessions
/// in memory instead (a restart then starts every page over).
/// `STATETEMPLATE_STORE=redis` (feature `redis`) keeps them in the Redis at
/// `STATETEMPLATE_REDIS_URL` and joins the instances that share it into a
/// cluster (start several with different `ADDR`s; they share the key file,
/// or `STATETEMPLATE_KEYS`); `STATETEMPLATE_REDIS_PREFIX` sets the key
/// prefix (default `st:`) and `STATETEMPLATE_LEASE_MS` the lease.
pub(crate) fn engine(
    env: minijinja::Environment<'static>,
    name: &str,
) -> statetemplate::Result<StateTemplate> {
    let builder = tuned(StateTemplate::builder(env));
    let store_kind = std::env::var("STATETEMPLATE_STORE").unwrap_or_default();
    if store_kind == "memory" {
        println!("sessions are kept in memory (STATETEMPLATE_STORE=memory)");
        return builder.keys(keys()).build();
    }
    let db = std::env::var("STATETEMPLATE_DB")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| std::path::PathBuf::from(format!("target/demo/{name}.db")));
    if let Some(dir) = db.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| {
            statetemplate::Error::store(format!("cannot make {}", dir.display()), e)
        })?;
    }
    let keys = match KeyRing::from_env("STATETEMPLATE_KEYS") {
        Ok(k) => k,
        Err(_) => key_file(&db.with_extension("key"))?,
    };
    if store_kind == "redis" {
        return redis_engine(builder.keys(keys));
    }
    let store = statetemplate::store::SqliteStore::open(&db)?;
    println!(
        "sessions are kept in {} (delete it to start over; STATETEMPLATE_DB moves it)",
        db.display()
    );
    builder.keys(keys).store(store).build()
}

#[cfg(feature = "redis")]
fn redis_engine(builder: statetemplate::Builder) -> statetemplate::Result<StateTemplate> {
    use statetemplate::cluster::ClusterOptions;
    use statetemplate::store::RedisStore;
    let url = std::env::var("STATETEMPLATE_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let prefix = std::env::var("STATETEMPLATE_REDIS_PREFIX").unwrap_or_else(|_| "st:".to_owned());
    let store = RedisStore::open_with(
        &url,
        statetemplate::store::RedisOptions::default().prefix(prefix),
    )?;
    let mut opts = ClusterOptions::default();
    if let Some(ms) = std::env::var("STATETEMPLATE_LEASE_MS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        opts = opts.lease(Duration::from_millis(ms));
    }
    let cluster = store.cluster(opts)?;
    println!(
        "sessions are kept in Redis at {url}; this instance is {} of its cluster",
        cluster.instance()
    );
    builder.store(store).cluster(cluster).build()
}

#[cfg(not(feature = "redis"))]
fn redis_engine(_: statetemplate::Builder) -> statetemplate::Result<StateTemplate> {
    Err(statetemplate::Error::config(
        "STATETEMPLATE_STORE=redis needs the redis feature (cargo run --features redis …)",
    ))
}

/// Limits from the environment, for load runs: `STATETEMPLATE_MAX_SESSIONS`,
/// `STATETEMPLATE_MAX_UNJOINED` and `STATETEMPLATE_REPLAY_FRAMES` (see the
/// `Builder` methods of those names).
fn tuned(mut b: statetemplate::Builder) -> statetemplate::Builder {
    let num = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<usize>().ok());
    if let Some(n) = num("STATETEMPLATE_MAX_SESSIONS") {
        b = b.max_sessions(n);
    }
    if let Some(n) = num("STATETEMPLATE_MAX_UNJOINED") {
        b = b.max_unjoined(n);
    }
    if let Some(n) = num("STATETEMPLATE_REPLAY_FRAMES") {
        b = b.replay_frames(n);
    }
    if let Some(ms) = num("STATETEMPLATE_REST_UNJOINED_MS") {
        // (The browser tests run some examples with 0: every page rests
        // before its socket connects, so each connect renders it again.)
        println!("pages of unjoined sessions rest after {ms} ms");
        b = b.rest_unjoined_after(Some(std::time::Duration::from_millis(ms as u64)));
    }
    b
}

/// The key in `path`, made there (mode 0600) when the file is missing.
fn key_file(path: &std::path::Path) -> statetemplate::Result<KeyRing> {
    use std::io::Write;
    match std::fs::read_to_string(path) {
        Ok(text) => return KeyRing::parse(&text),
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(statetemplate::Error::store(
                format!("cannot read the key file {}", path.display()),
                e,
            ));
        }
        Err(_) => {}
    }
    let key = statetemplate::token::Key::generate()?;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(path).map_err(|e| {
        statetemplate::Error::store(format!("cannot write the key file {}", path.display()), e)
    })?;
    f.write_all(key.encode().as_bytes()).map_err(|e| {
        statetemplate::Error::store(format!("cannot write the key file {}", path.display()), e)
    })?;
    Ok(KeyRing::new(key))
}

#[derive(serde::Deserialize)]
struct Input {
    value: String,
}

/// The live layer every browser example starts from: the `note` field's
/// handler (any page data with a `note`), the server clock pushed to every
/// connected session twice a second, and with `STATETEMPLATE_DEBUG=1` the
/// test oracle route.
pub(crate) fn live(engine: &StateTemplate) -> Live {
    // `STATETEMPLATE_CLOCK_MS` (default 500; 0: no clock) for load runs.
    let clock = std::env::var("STATETEMPLATE_CLOCK_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(500);
    if clock > 0 {
        spawn_clock(engine.clone(), Duration::from_millis(clock));
    }
    let debug = std::env::var("STATETEMPLATE_DEBUG").is_ok();
    let live = Live::new(engine.clone()).debug_oracle(debug).on_update(
        "note",
        |d: &mut serde_json::Value, p: Input| {
            d["note"] = p.value.into();
            Ok(())
        },
    );
    // `STATETEMPLATE_DEBUG_TOKEN` (32 characters or more) serves the
    // session listing at /statetemplate/debug/sessions to whoever sends it
    // as `Authorization: Bearer …`.
    let live = match std::env::var("STATETEMPLATE_DEBUG_TOKEN") {
        Ok(t) => live
            .debug_sessions(t)
            .expect("STATETEMPLATE_DEBUG_TOKEN: 32 characters or more"),
        Err(_) => live,
    };
    if !debug {
        return live;
    }
    // For the browser tests: a handler with a bug (it panics after changing
    // the data, which must not stick), so they can check what the user sees
    // and that the session goes on.
    live.on_update(
        "debug_panic",
        |d: &mut serde_json::Value, _: serde_json::Value| {
            d["note"] = "changed by a handler that then panicked".into();
            panic!("a bug in a handler (debug_panic)")
        },
    )
}

/// The app: `GET /` serves this browser's page (see [`page`]) of `template`
/// with `data()` for new sessions, plus the live routes.
pub(crate) fn app<T, F>(live: Live, template: &'static str, title: &'static str, data: F) -> Router
where
    T: Serialize + Send + Sync + 'static,
    F: Fn() -> T + Clone + Send + Sync + 'static,
{
    let routes = live.router();
    Router::new()
        .route(
            "/",
            axum::routing::get(
                move |ConnectInfo(peer): ConnectInfo<SocketAddr>, headers: HeaderMap| {
                    let live = live.clone();
                    let data = data.clone();
                    async move { page(&live, peer, &headers, template, title, data, |_| {}).await }
                },
            ),
        )
        .merge(routes)
}

/// New sessions per client address: 30 at once, then one a second. An
/// anonymous client can only make sessions this fast, and those never push
/// out sessions a client has joined (see `Builder::max_unjoined`).
fn new_sessions() -> &'static Limiter<std::net::IpAddr> {
    static L: OnceLock<Limiter<std::net::IpAddr>> = OnceLock::new();
    L.get_or_init(|| Limiter::new(1.0, 30))
}

/// The page for this browser: the session its cookie names if that is
/// still live (tabs share it), else a new session of `template` with
/// `data()`, if `peer` may make one now (429 otherwise). `created` runs for
/// new sessions (to join a group, say).
pub(crate) async fn page<T: Serialize>(
    live: &Live,
    peer: SocketAddr,
    headers: &HeaderMap,
    template: &str,
    title: &str,
    data: impl FnOnce() -> T,
    created: impl FnOnce(&Session),
) -> Response {
    let engine = live.engine();
    // The session this browser's cookie names, if still live (in a
    // cluster, wherever it lives: it does not move).
    let cookie = headers.get(header::COOKIE).and_then(|v| v.to_str().ok());
    let existing = live.cookie_session(cookie).await;
    let initial = match existing {
        Some(i) => i,
        None if !new_sessions().check(client_key(peer.ip())) => {
            return (
                StatusCode::TOO_MANY_REQUESTS,
                "too many new sessions from your address; try again in a moment",
            )
                .into_response();
        }
        None => match engine.new_session(template, &data()).await {
            Ok(i) => {
                if let Ok(s) = engine
                    .get_session(&i.session_id.to_string(), &i.token)
                    .await
                {
                    created(&s);
                }
                i
            }
            Err(e) if e.kind() == ErrorKind::Capacity => {
                return (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the server is full; try again later",
                )
                    .into_response();
            }
            Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")).into_response(),
        },
    };
    let set_cookie = live.set_cookie(&initial);
    (
        [(header::SET_COOKIE, set_cookie)],
        Html(layout(title, &live.mount(&initial))),
    )
        .into_response()
}

/// A minimal page around the mounted session.
pub(crate) fn layout(title: &str, mounted: &str) -> String {
    format!(
        r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
body {{ font: 16px/1.4 system-ui, sans-serif; margin: 2rem auto; max-width: 60rem; padding: 0 1rem; color: #222; }}
.conn {{ position: fixed; top: .5rem; right: .5rem; font-size: .8rem; padding: .2rem .5rem; border-radius: 1rem; background: #eee; }}
.conn::after {{ content: "connecting…"; }}
html.st-connected .conn {{ background: #d4f7d4; }}
html.st-connected .conn::after {{ content: "● live"; }}
html.st-reconnecting .conn {{ background: #ffe1b3; }}
html.st-reconnecting .conn::after {{ content: "reconnecting…"; }}
.count {{ font-size: 3rem; margin: .5rem 0; }}
button {{ font-size: 1rem; margin: 0 .1rem; }}
li.done .text {{ text-decoration: line-through; color: #888; }}
table {{ border-collapse: collapse; font-size: .8rem; }}
td, th {{ padding: .1rem .5rem; border-bottom: 1px solid #eee; text-align: right; }}
td.hot {{ background: #ffe1e1; }}
.messages {{ list-style: none; padding: 0; }}
.messages b {{ margin-right: .5rem; }}
footer {{ margin-top: 1rem; color: #777; font-size: .8rem; }}
.st-loading {{ opacity: .6; cursor: progress; }}
[data-st-pending]:not([data-st-pending="0"])::before {{ content: attr(data-st-pending) " waiting to be sent"; position: fixed; top: 2.2rem; right: .5rem; font-size: .8rem; padding: .2rem .5rem; border-radius: 1rem; background: #ffe1b3; }}
[st-flash] {{ position: fixed; bottom: 1rem; left: 50%; transform: translateX(-50%); background: #b00020; color: #fff; padding: .5rem 1rem; border-radius: .3rem; }}
[st-flash][data-st-kind=info] {{ background: #0b5394; }}
[st-flash][data-st-kind=success] {{ background: #1b5e20; }}
[st-flash][data-st-kind=warning] {{ background: #8a5a00; }}
canvas[st-hook] {{ vertical-align: middle; background: #f4f4f4; cursor: pointer; }}
</style>
</head>
<body>
<div class="conn"></div>
<div st-flash role="alert" hidden></div>
{mounted}
</body>
</html>
"#
    )
}

/// The time of day (UTC) to a tenth of a second.
pub(crate) fn clock_text() -> String {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let s = ms / 1000;
    format!(
        "{:02}:{:02}:{:02}.{}",
        s / 3600 % 24,
        s / 60 % 60,
        s % 60,
        ms % 1000 / 100
    )
}

/// Pushes the server clock to every connected session every `every`: a
/// render from a background task reaching every browser.
fn spawn_clock(engine: StateTemplate, every: Duration) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        // A tick that takes longer than `every` (many sessions on a synced
        // store) is not followed by a burst of catch-up ticks.
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tick.tick().await;
            let now = clock_text();
            // Only sessions with a client connected now: a render is not
            // activity, so pushing to the others would not keep them alive,
            // but would cost a render each; they catch up on the next push
            // after their client reconnects.
            // 64 at a time: with a synced store, renders that run together
            // share a commit (one by one, each would wait for its own sync).
            use futures_util::StreamExt;
            futures_util::stream::iter(engine.connected_sessions())
                .for_each_concurrent(64, |s| {
                    let now = now.clone();
                    async move {
                        let _ = s
                            .update(|d: &mut serde_json::Value| {
                                d["clock"] = now.into();
                                Ok(())
                            })
                            .await;
                    }
                })
                .await;
        }
    });
}

/// Serves `app` on `ADDR` (default `127.0.0.1:PORT`) and says where, with
/// `serve_axum`: connections that trickle their request headers are
/// dropped after 10 s, TCP_NODELAY is set, and handlers see the peer's
/// address (`ConnectInfo`).
pub(crate) async fn serve(app: Router, port: u16) {
    let addr = std::env::var("ADDR").unwrap_or_else(|_| format!("127.0.0.1:{port}"));
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .unwrap_or_else(|e| panic!("cannot listen on {addr}: {e}"));
    println!(
        "listening on http://{}/  (open it in a browser; Ctrl-C stops)",
        listener.local_addr().expect("bound address")
    );
    serve_axum(listener, app, ServeOptions::default())
        .await
        .expect("server runs");
}

/// Reads a `data-id` payload (strings in the DOM) as a number.
pub(crate) fn id_of(p: &serde_json::Value) -> statetemplate::Result<u64> {
    p.get("id")
        .and_then(|v| v.as_str().and_then(|s| s.parse().ok()).or(v.as_u64()))
        .ok_or_else(|| statetemplate::Error::protocol("the event needs a numeric data-id"))
}
