//! A plain tokio-tungstenite server for apps without axum.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt, future};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use super::{ConnectParams, Live, ReadError, WsMessage, parse_query};

/// Accepts WebSocket connections on `listener` (at [`Live::ws_path`]) and
/// runs each on its own task. Returns only if accepting fails for good; a
/// transient failure (out of file descriptors) backs off and retries.
pub async fn serve(listener: TcpListener, live: Live) -> std::io::Result<()> {
    live.register_remote_events();
    let mut backoff = Duration::from_millis(10);
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                backoff = Duration::from_millis(10);
                let live = live.clone();
                tokio::spawn(async move { live.serve_tcp(stream).await });
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed; backing off");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}

impl Live {
    /// The tungstenite settings the plain server uses: messages and frames
    /// capped at [`Live::max_message`], a 4 KiB read buffer (tungstenite's
    /// default is 128 KiB), writes buffered up to 4 KiB until a flush (a
    /// click's frames and its reply go out in one write).
    pub fn websocket_config(&self) -> WebSocketConfig {
        let max = self.config.max_message;
        WebSocketConfig::default()
            .max_message_size(Some(max))
            .max_frame_size(Some(max))
            .read_buffer_size(4 << 10)
            .write_buffer_size(4 << 10)
    }

    /// Runs the WebSocket handshake on one TCP connection, then the
    /// connection loop.
    pub async fn serve_tcp(&self, stream: TcpStream) {
        let path = self.ws_path();
        let mut params: Option<ConnectParams> = None;
        // The signature is tungstenite's `Callback`.
        #[allow(clippy::result_large_err)]
        let callback = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
            if req.uri().path() != path {
                let mut r = ErrorResponse::new(Some("not found".to_owned()));
                *r.status_mut() = StatusCode::NOT_FOUND;
                return Err(r);
            }
            let h = |n: &str| req.headers().get(n).and_then(|v| v.to_str().ok());
            if !self.origin_allowed(h("origin"), h("host")) {
                let mut r = ErrorResponse::new(Some("origin not allowed".to_owned()));
                *r.status_mut() = StatusCode::FORBIDDEN;
                return Err(r);
            }
            let q = req.uri().query().unwrap_or("");
            params = Some(parse_query(q));
            Ok(resp)
        };
        let config = self.websocket_config();
        let ws = match tokio::time::timeout(
            self.config.handshake_timeout,
            tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(config)),
        )
        .await
        {
            Ok(Ok(ws)) => ws,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "handshake failed");
                return;
            }
            Err(_) => {
                tracing::debug!("handshake timed out");
                return;
            }
        };
        let (sink, stream) = ws.split();
        let sink = sink.with(|m: WsMessage| {
            future::ready(Ok::<_, tokio_tungstenite::tungstenite::Error>(
                to_tungstenite(m),
            ))
        });
        let stream = stream.filter_map(|r| {
            future::ready(match r {
                Ok(Message::Frame(_)) => None,
                Ok(m) => Some(Ok(from_tungstenite(m))),
                Err(e) => Some(Err(read_error(e))),
            })
        });
        self.connect(params.unwrap_or_default(), Box::pin(sink), Box::pin(stream))
            .await;
    }
}

/// The connection loop's view of a tungstenite read error.
pub(crate) fn read_error(e: tokio_tungstenite::tungstenite::Error) -> ReadError {
    use tokio_tungstenite::tungstenite::Error;
    match e {
        Error::Capacity(_) => ReadError::TooBig,
        Error::Utf8(_) => ReadError::InvalidUtf8,
        Error::Protocol(p) => ReadError::Protocol(p.to_string()),
        other => ReadError::Other(other.to_string()),
    }
}

fn to_tungstenite(m: WsMessage) -> Message {
    match m {
        WsMessage::Text(t) => Message::Text(t.into()),
        WsMessage::Binary(b) => Message::Binary(b.into()),
        WsMessage::Ping(p) => Message::Ping(p.into()),
        WsMessage::Pong(p) => Message::Pong(p.into()),
        WsMessage::Close(c) => Message::Close(c.map(|(code, reason)| CloseFrame {
            code: code.into(),
            reason: reason.into(),
        })),
    }
}

fn from_tungstenite(m: Message) -> WsMessage {
    match m {
        Message::Text(t) => WsMessage::Text(t.as_str().to_owned()),
        Message::Binary(b) => WsMessage::Binary(b.to_vec()),
        Message::Ping(p) => WsMessage::Ping(p.to_vec()),
        Message::Pong(p) => WsMessage::Pong(p.to_vec()),
        Message::Close(c) => {
            WsMessage::Close(c.map(|f| (u16::from(f.code), f.reason.as_str().to_owned())))
        }
        Message::Frame(_) => WsMessage::Binary(Vec::new()),
    }
}
