//! A plain tokio-tungstenite server for apps without axum.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt, future};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use super::{ConnectParams, Live, WsMessage};

/// Accepts WebSocket connections on `listener` (at [`Live::ws_path`]) and
/// runs each on its own task. Returns only if accepting fails for good; a
/// transient failure (out of file descriptors) backs off and retries.
pub async fn serve(listener: TcpListener, live: Live) -> std::io::Result<()> {
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
    /// default is 128 KiB), writes not buffered.
    pub fn websocket_config(&self) -> WebSocketConfig {
        let max = self.config.max_message;
        WebSocketConfig::default()
            .max_message_size(Some(max))
            .max_frame_size(Some(max))
            .read_buffer_size(4 << 10)
            .write_buffer_size(0)
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
                Err(e) => Some(Err(e)),
            })
        });
        self.connect(params.unwrap_or_default(), Box::pin(sink), Box::pin(stream))
            .await;
    }
}

/// Parses `sid=…&token=…&seq=…&epoch=…&v=…` (percent-decoded).
pub(crate) fn parse_query(q: &str) -> ConnectParams {
    let mut p = ConnectParams::default();
    for pair in q.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = percent_decode(v);
        match k {
            "sid" => p.sid = v,
            "token" => p.token = v,
            "seq" => p.seq = v.parse().ok(),
            "epoch" => p.epoch = Some(v),
            "v" => p.v = v.parse().ok(),
            _ => {}
        }
    }
    p
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(v) => {
                        out.push(v);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query() {
        let p = parse_query("sid=abc&token=a%2Bb-_&seq=7&epoch=00ff&v=1&x=%");
        assert_eq!(p.sid, "abc");
        assert_eq!(p.token, "a+b-_");
        assert_eq!(p.seq, Some(7));
        assert_eq!(p.epoch.as_deref(), Some("00ff"));
        assert_eq!(p.v, Some(1));
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
    }
}
