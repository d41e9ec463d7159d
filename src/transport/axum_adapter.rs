//! The axum adapter: the WebSocket endpoint and the client script as a
//! `Router` to merge into the app's.

use axum::Router;
use axum::body::Body;
use axum::extract::ws::{CloseFrame, Message, WebSocketUpgrade};
use axum::extract::{Path, RawQuery};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use futures_util::{SinkExt, StreamExt, future};

use super::tungstenite_server::read_error;
use super::{ConnectParams, Live, ReadError, WsMessage, client, parse_query};

/// An upload route's answer: its status and JSON body.
fn json_answer((status, json): (u16, String)) -> Response {
    (
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        [(header::CONTENT_TYPE, "application/json")],
        json,
    )
        .into_response()
}

impl Live {
    /// The routes: `GET {prefix}/ws` (the WebSocket, mounted with `any`),
    /// `GET {prefix}/client.js` (and `{prefix}/extras.js`), and for
    /// uploads `POST {prefix}/upload/NAME` and `POST
    /// {prefix}/upload/NAME/cancel` (see [`Live::on_upload`]). Merge into
    /// the app's router: `app.merge(live.router())`.
    pub fn router<S: Clone + Send + Sync + 'static>(&self) -> Router<S> {
        // In a cluster, events other instances forward run with these
        // handlers.
        self.register_remote_events();
        let live = self.clone();
        let mut router = Router::new();
        if self.config.debug_oracle {
            let live = self.clone();
            router = router.route(
                &format!("{}/debug/fresh", self.config.prefix),
                get(move |RawQuery(q): RawQuery| {
                    let live = live.clone();
                    async move { live.debug_fresh(q.as_deref().unwrap_or("")).await }
                }),
            );
        }
        if self.config.debug_token.is_some() {
            let live = self.clone();
            router = router.route(
                &format!("{}/debug/sessions", self.config.prefix),
                get(move |headers: HeaderMap, RawQuery(q): RawQuery| {
                    let live = live.clone();
                    async move {
                        let auth = headers
                            .get(header::AUTHORIZATION)
                            .and_then(|v| v.to_str().ok());
                        if !live.debug_allowed(auth) {
                            return StatusCode::UNAUTHORIZED.into_response();
                        }
                        (
                            [(header::CONTENT_TYPE, "application/json")],
                            live.debug_listing(q.as_deref().unwrap_or("")).await,
                        )
                            .into_response()
                    }
                }),
            );
        }
        let uploads = self.clone();
        let cancels = self.clone();
        router
            .route(
                &format!("{}/upload/{{name}}", self.config.prefix),
                post(
                    move |Path(name): Path<String>,
                          headers: HeaderMap,
                          RawQuery(q): RawQuery,
                          body: Body| {
                        let live = uploads.clone();
                        async move { live.upload_route(&name, &headers, q.as_deref(), body).await }
                    },
                ),
            )
            .route(
                &format!("{}/upload/{{name}}/cancel", self.config.prefix),
                post(
                    move |Path(name): Path<String>, headers: HeaderMap, RawQuery(q): RawQuery| {
                        let live = cancels.clone();
                        async move {
                            live.upload_cancel_route(&name, &headers, q.as_deref())
                                .await
                        }
                    },
                ),
            )
            .route(
                &self.ws_path(),
                any(
                    move |ws: WebSocketUpgrade, headers: HeaderMap, RawQuery(q): RawQuery| {
                        let live = live.clone();
                        let params = parse_query(q.as_deref().unwrap_or(""));
                        async move {
                            let h = |n| headers.get(n).and_then(|v: &HeaderValue| v.to_str().ok());
                            if !live.origin_allowed(h(header::ORIGIN), h(header::HOST)) {
                                return (StatusCode::FORBIDDEN, "origin not allowed")
                                    .into_response();
                            }
                            live.upgrade(ws, params)
                        }
                    },
                ),
            )
            .route(
                &self.client_path(),
                get(|headers: HeaderMap, RawQuery(q): RawQuery| async move {
                    script(client::served(), client::etag(), &headers, q.as_deref())
                }),
            )
            .route(
                &self.extras_path(),
                get(|headers: HeaderMap, RawQuery(q): RawQuery| async move {
                    script(
                        client::extras_served(),
                        client::extras_etag(),
                        &headers,
                        q.as_deref(),
                    )
                }),
            )
    }

    /// `POST {prefix}/upload/NAME?sid=…&token=…`: one file (see
    /// [`Live::on_upload`]), from the page's own origin only.
    async fn upload_route(
        &self,
        name: &str,
        headers: &HeaderMap,
        query: Option<&str>,
        body: Body,
    ) -> Response {
        let h = |n| headers.get(n).and_then(|v: &HeaderValue| v.to_str().ok());
        if !self.origin_allowed(h(header::ORIGIN), h(header::HOST)) {
            return (StatusCode::FORBIDDEN, "origin not allowed").into_response();
        }
        let params = parse_query(query.unwrap_or(""));
        let head = super::upload::UploadHead {
            length: h(header::CONTENT_LENGTH).and_then(|v| v.trim().parse().ok()),
            content_type: h(header::CONTENT_TYPE),
            file_name: h(header::HeaderName::from_static("x-st-file")),
            id: h(header::HeaderName::from_static("x-st-upload-id")),
        };
        json_answer(
            self.upload(name, &params, head, body.into_data_stream())
                .await,
        )
    }

    /// `POST {prefix}/upload/NAME/cancel?sid=…&token=…` with the
    /// upload's `X-St-Upload-Id`: what became of an upload the browser
    /// aborted.
    async fn upload_cancel_route(
        &self,
        name: &str,
        headers: &HeaderMap,
        query: Option<&str>,
    ) -> Response {
        let h = |n| headers.get(n).and_then(|v: &HeaderValue| v.to_str().ok());
        if !self.origin_allowed(h(header::ORIGIN), h(header::HOST)) {
            return (StatusCode::FORBIDDEN, "origin not allowed").into_response();
        }
        let params = parse_query(query.unwrap_or(""));
        let id = h(header::HeaderName::from_static("x-st-upload-id"));
        json_answer(self.upload_cancel(name, &params, id).await)
    }

    async fn debug_fresh(&self, query: &str) -> Response {
        let p = parse_query(query);
        // In a cluster, a session owned elsewhere is rendered from the
        // store (asking for it here must not move it).
        let fresh = if self.engine.instance().is_some() {
            self.engine.fresh_anywhere(&p.sid, &p.token).await
        } else {
            match self.engine.get_session(&p.sid, &p.token).await {
                Ok(s) => s.fresh_render().await,
                Err(e) => Err(e),
            }
        };
        match fresh {
            Err(e) if e.kind() == crate::ErrorKind::InvalidSession => {
                StatusCode::UNAUTHORIZED.into_response()
            }
            Ok((seq, html)) => (
                [(header::CONTENT_TYPE, "application/json")],
                serde_json::json!({"seq": seq, "html": html}).to_string(),
            )
                .into_response(),
            Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
        }
    }

    fn upgrade(self, ws: WebSocketUpgrade, params: ConnectParams) -> Response {
        let max = self.config.max_message;
        ws.max_message_size(max)
            .max_frame_size(max)
            .read_buffer_size(4 << 10)
            .write_buffer_size(4 << 10)
            .on_upgrade(move |socket| async move {
                let (sink, stream) = socket.split();
                let sink =
                    sink.with(|m: WsMessage| future::ready(Ok::<_, axum::Error>(to_axum(m))));
                let stream = stream.map(|r| r.map(from_axum).map_err(axum_read_error));
                self.connect(params, Box::pin(sink), stream).await;
            })
    }
}

fn script(
    body: &'static str,
    etag: &'static str,
    headers: &HeaderMap,
    query: Option<&str>,
) -> Response {
    let cache = HeaderValue::from_static(client::cache_control_for(etag, query));
    let inm = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok());
    let not_modified = client::not_modified_for(etag, inm);
    let etag = HeaderValue::from_static(etag);
    if not_modified {
        return (
            StatusCode::NOT_MODIFIED,
            [(header::ETAG, etag), (header::CACHE_CONTROL, cache)],
        )
            .into_response();
    }
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static(client::CONTENT_TYPE),
            ),
            (header::ETAG, etag),
            (header::CACHE_CONTROL, cache),
        ],
        body,
    )
        .into_response()
}

/// axum wraps tungstenite's errors; unwrap them to see size and UTF-8
/// failures (one tungstenite version is in the tree).
fn axum_read_error(e: axum::Error) -> ReadError {
    match e
        .into_inner()
        .downcast::<tokio_tungstenite::tungstenite::Error>()
    {
        Ok(t) => read_error(*t),
        Err(other) => ReadError::Other(other.to_string()),
    }
}

fn to_axum(m: WsMessage) -> Message {
    match m {
        WsMessage::Text(t) => Message::Text(t.into()),
        WsMessage::Binary(b) => Message::Binary(b.into()),
        WsMessage::Ping(p) => Message::Ping(p.into()),
        WsMessage::Pong(p) => Message::Pong(p.into()),
        WsMessage::Close(c) => Message::Close(c.map(|(code, reason)| CloseFrame {
            code,
            reason: reason.into(),
        })),
    }
}

fn from_axum(m: Message) -> WsMessage {
    match m {
        Message::Text(t) => WsMessage::Text(t.as_str().to_owned()),
        Message::Binary(b) => WsMessage::Binary(b.to_vec()),
        Message::Ping(p) => WsMessage::Ping(p.to_vec()),
        Message::Pong(p) => WsMessage::Pong(p.to_vec()),
        Message::Close(c) => WsMessage::Close(c.map(|f| (f.code, f.reason.as_str().to_owned()))),
    }
}
