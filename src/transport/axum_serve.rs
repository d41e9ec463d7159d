//! Serving an axum app with the limits a public server needs and
//! `axum::serve` does not set: a bound on reading request headers (a
//! slowloris trickles them to hold connections open), TCP_NODELAY (live
//! frames are small and should not wait for Nagle), the peer address for
//! per-client limits, and backoff when accepting fails.

use std::convert::Infallible;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::extract::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tower_service::Service;

/// How [`serve_axum`] serves.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// A connection must send each request's headers within this time or
    /// it is closed. Default: 10 s.
    pub header_read_timeout: Duration,
    /// Set TCP_NODELAY on every connection. Default: on.
    pub tcp_nodelay: bool,
}

impl Default for ServeOptions {
    fn default() -> ServeOptions {
        ServeOptions {
            header_read_timeout: Duration::from_secs(10),
            tcp_nodelay: true,
        }
    }
}

/// Serves `app` on `listener` over HTTP/1.1, WebSocket upgrades included,
/// with [`ServeOptions`]: connections that trickle their headers are
/// dropped, TCP_NODELAY is set, and every request carries
/// `ConnectInfo<SocketAddr>` (the peer, for [`crate::rate::Limiter`]). A
/// transient accept failure (out of file descriptors) backs off from 10 ms
/// to 1 s and retries; this returns only if the listener fails for good.
///
/// ```no_run
/// # async fn run(app: axum::Router) -> std::io::Result<()> {
/// use statetemplate::transport::{ServeOptions, serve_axum};
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
/// serve_axum(listener, app, ServeOptions::default()).await
/// # }
/// ```
pub async fn serve_axum(
    listener: TcpListener,
    app: Router,
    options: ServeOptions,
) -> std::io::Result<()> {
    let mut backoff = Duration::from_millis(10);
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed; backing off");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        backoff = Duration::from_millis(10);
        if options.tcp_nodelay {
            let _ = tcp.set_nodelay(true);
        }
        let app = app.clone();
        let timeout = options.header_read_timeout;
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |mut req: Request<Incoming>| {
                req.extensions_mut().insert(ConnectInfo(peer));
                let mut app = app.clone();
                async move {
                    // A Router is always ready; `call` never fails.
                    let resp = app.call(req.map(axum::body::Body::new)).await;
                    Ok::<_, Infallible>(resp.unwrap_or_else(|e| match e {}))
                }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(timeout)
                .serve_connection(TokioIo::new(tcp), svc)
                .with_upgrades();
            if let Err(e) = conn.await {
                tracing::trace!(error = %e, "connection ended with an error");
            }
        });
    }
}
