//! Anonymous page loads on loopback: the flood of issue "anonymous page
//! loads cannot push real users out", shared by `tests/page_flood.rs` and
//! `benches/page_flood.rs`. Bounded in count; keep-alive HTTP/1.1.
#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use futures_util::StreamExt;
use serde_json::Value as Json;
use statetemplate::transport::{ServeOptions, serve_axum};
use statetemplate::{Live, Session, StateTemplate};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

pub type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

/// Serves (with `serve_axum`, on loopback) the live routes and `GET /`,
/// which makes a session of `template` with `data` for every request
/// (503 when refused); the address.
pub async fn page_server(engine: &StateTemplate, template: &'static str, data: Json) -> String {
    let live = Live::new(engine.clone());
    let e = engine.clone();
    let app = axum::Router::new()
        .route(
            "/",
            axum::routing::get(move || {
                let (e, data) = (e.clone(), data.clone());
                async move {
                    match e.new_session(template, &data).await {
                        Ok(i) => (axum::http::StatusCode::OK, i.html),
                        Err(err) => (axum::http::StatusCode::SERVICE_UNAVAILABLE, err.to_string()),
                    }
                }
            }),
        )
        .merge(live.router());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(serve_axum(listener, app, ServeOptions::default()));
    addr
}

/// A WebSocket to session `sid` at `addr`, from the server's own origin,
/// past its hello and join frames.
pub async fn join(addr: &str, sid: &str, token: &str) -> Ws {
    let mut req = format!("ws://{addr}/statetemplate/ws?v=2&sid={sid}&token={token}")
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("origin", format!("http://{addr}").parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    for _ in 0..2 {
        ws.next().await.unwrap().unwrap(); // hello, join
    }
    ws
}

/// `n` real users of the server at `addr`: a session each (data `data(u)`)
/// and a WebSocket that joined it and stays open.
pub async fn users(
    engine: &StateTemplate,
    addr: &str,
    template: &str,
    n: usize,
    data: impl Fn(usize) -> Json,
) -> Vec<(Session, Ws)> {
    let mut out = Vec::new();
    for u in 0..n {
        let i = engine.new_session(template, &data(u)).await.unwrap();
        let ws = join(addr, &i.session_id.to_string(), &i.token).await;
        let s = engine
            .get_session(&i.session_id.to_string(), &i.token)
            .await
            .unwrap();
        out.push((s, ws));
    }
    out
}

/// What a flood saw: responses by status.
#[derive(Debug, Default, Clone, Copy)]
pub struct Tally {
    pub ok: usize,
    pub refused: usize,
    pub other: usize,
}

/// Sends `total` `GET /` requests without cookies (each makes a session)
/// over `conns` keep-alive connections to `addr`.
pub async fn page_loads(addr: &str, total: usize, conns: usize) -> Tally {
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let (addr, next) = (addr.to_owned(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut t = Tally::default();
            let mut io = BufReader::new(TcpStream::connect(&addr).await.unwrap());
            let mut line = String::new();
            while next.fetch_add(1, Ordering::Relaxed) < total {
                io.get_mut()
                    .write_all(b"GET / HTTP/1.1\r\nHost: flood\r\n\r\n")
                    .await
                    .unwrap();
                line.clear();
                io.read_line(&mut line).await.unwrap();
                let status: u16 = line
                    .split(' ')
                    .nth(1)
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(0);
                let mut len = 0usize;
                loop {
                    line.clear();
                    io.read_line(&mut line).await.unwrap();
                    if line == "\r\n" {
                        break;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap();
                    }
                }
                let mut body = vec![0u8; len];
                io.read_exact(&mut body).await.unwrap();
                match status {
                    200 => t.ok += 1,
                    429 | 503 => t.refused += 1,
                    _ => t.other += 1,
                }
            }
            t
        }));
    }
    let mut all = Tally::default();
    for t in tasks {
        let t = t.await.unwrap();
        all.ok += t.ok;
        all.refused += t.refused;
        all.other += t.other;
    }
    all
}
