//! The connection loop for a socket whose session another instance owns
//! (see [`crate::cluster`]): frames come from the owner's channel, events
//! go to the owner, and the owner's replies come back.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{FutureExt, Sink, Stream, StreamExt};
use tokio::sync::broadcast::error::RecvError;
use tokio::time::Instant;

use super::connection::{Out, hello, shown_read_error};
use super::{ClientFrame, ConnectParams, Live, ReadError, WsMessage, close, parse_client_frame};
use crate::cluster::FeedItem;
use crate::rate::Bucket;
use crate::session::{Follower, Start, next_frame};

/// What a follower's feed gave: frames to send, or the socket is done.
enum Step {
    Send(Vec<String>),
    Nothing,
    Done,
}

impl Live {
    /// Lets the engine run client frames that followers on other instances
    /// forward to sessions owned here, with this layer's handlers.
    pub(crate) fn register_remote_events(&self) {
        if self.engine.link().is_none() {
            return;
        }
        let (handlers, uploads, states, config, open) = (
            self.handlers.clone(),
            self.uploads.clone(),
            self.states.clone(),
            self.config.clone(),
            self.open.clone(),
        );
        self.engine
            .set_remote_events(Arc::new(move |session, client, text| {
                let live = Live {
                    engine: session.engine_handle(),
                    handlers: handlers.clone(),
                    states: states.clone(),
                    uploads: uploads.clone(),
                    config: config.clone(),
                    open: open.clone(),
                };
                async move {
                    let frame = parse_client_frame(&text);
                    live.client_frame(&session, client, frame).await
                }
                .boxed()
            }));
    }

    /// Serves a socket as a follower of a session owned elsewhere.
    pub(super) async fn run_follower<Si, St, E>(
        &self,
        f: Follower,
        params: ConnectParams,
        out: &mut Out<'_, Si>,
        stream: &mut St,
    ) where
        Si: Sink<WsMessage> + Unpin,
        St: Stream<Item = std::result::Result<WsMessage, E>> + Unpin,
        E: Into<ReadError>,
    {
        let cfg = self.config.clone();
        let span = tracing::debug_span!("socket", sid = %f.id().short(), owner = %f.owner());
        // A client that starts from the page it was served gets a join here
        // (a follower does not send the statics alone).
        let held = match (params.seq, params.epoch.as_deref(), params.page) {
            (Some(q), Some(e), p) if p != Some(1) => Some((q, e)),
            _ => None,
        };
        let (start, mut feed) = match f.start(held).await {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!(parent: &span, error = %e, "follower could not start");
                out.close(close::MOVED, "the session cannot be reached now")
                    .await;
                return;
            }
        };
        let token = f.token().unwrap_or_default();
        let client = params
            .c
            .as_deref()
            .filter(|c| !c.is_empty() && c.len() <= 16)
            .and_then(|c| u64::from_str_radix(c, 16).ok());
        let mut seq = start.seq;
        if !send_start(out, &start, &token).await {
            return;
        }
        tracing::debug!(parent: &span, "client connected (follower)");
        let mut last_heard = Instant::now();
        let mut others = Bucket::new(cfg.rate_per_sec, cfg.rate_burst);
        let mut events = Bucket::new(cfg.rate_per_sec, cfg.rate_burst);
        let mut ping =
            tokio::time::interval_at(Instant::now() + cfg.ping_interval, cfg.ping_interval);
        // How often the owner's beat is checked (a dead owner's frames stop
        // without a word; its sessions move once its lease runs out).
        let every = self
            .engine
            .link()
            .map_or(Duration::from_secs(1), |l| l.options().lease / 2);
        let mut watch = tokio::time::interval_at(Instant::now() + every, every);
        loop {
            tokio::select! {
                item = feed.rx.recv() => {
                    match feed_step(&f, item, &mut seq, &token, out.max).await {
                        Step::Send(frames) => {
                            if !(queue_all(out, frames).await && out.flush().await) {
                                break;
                            }
                        }
                        Step::Nothing => {}
                        Step::Done => {
                            out.close(close::MOVED, "the session moved").await;
                            break;
                        }
                    }
                }
                msg = stream.next() => {
                    let msg = match msg {
                        Some(Ok(m)) => m,
                        Some(Err(e)) => {
                            shown_read_error(out, e.into(), &span).await;
                            break;
                        }
                        None => break,
                    };
                    last_heard = Instant::now();
                    let text = match msg {
                        WsMessage::Text(t) => t,
                        WsMessage::Binary(_) => {
                            out.close(close::UNSUPPORTED, "binary frames are not used").await;
                            break;
                        }
                        WsMessage::Ping(p) => {
                            if !out.send(WsMessage::Pong(p)).await {
                                break;
                            }
                            continue;
                        }
                        WsMessage::Pong(_) => continue,
                        WsMessage::Close(_) => break,
                    };
                    if text.len() > cfg.max_message {
                        out.close(close::TOO_BIG, "message too big").await;
                        break;
                    }
                    let frame = parse_client_frame(&text);
                    let wait = match &frame {
                        Ok(ClientFrame::Event { .. }) => events.reserve(),
                        _ => others.reserve(),
                    };
                    if !wait.is_zero() {
                        tokio::time::sleep(wait).await;
                    }
                    let _ = f.touch().await;
                    let reply = match frame {
                        Ok(ClientFrame::Event { .. }) => match f.event(client, &text).await {
                            Ok(r) => r,
                            Err(e) => {
                                // The owner is gone or the session moved: the
                                // client resends what was not answered.
                                tracing::debug!(parent: &span, error = %e, "event not forwarded");
                                out.close(close::MOVED, "the session cannot be reached now").await;
                                break;
                            }
                        },
                        Ok(ClientFrame::Ack { .. }) => None,
                        Ok(ClientFrame::Ping) => Some("{\"t\":\"pong\"}".to_owned()),
                        Err(e) => Some(super::error_frame("bad_frame", &e, None)),
                    };
                    if let Some(reply) = reply {
                        // The frames the event rendered were published before
                        // its answer: they go out first (polled without the
                        // coop budget, which could make a ready frame wait).
                        let mut open = true;
                        while let Some(item) = tokio::task::unconstrained(feed.rx.recv()).now_or_never() {
                            match feed_step(&f, item, &mut seq, &token, out.max).await {
                                Step::Send(frames) => open = queue_all(out, frames).await,
                                Step::Nothing => {}
                                Step::Done => open = false,
                            }
                            if !open {
                                break;
                            }
                        }
                        if !open || !out.text(reply).await {
                            break;
                        }
                    }
                }
                _ = ping.tick() => {
                    if last_heard.elapsed() >= cfg.idle_timeout {
                        out.close(close::IDLE_TIMEOUT, "idle timeout").await;
                        break;
                    }
                    if !out.send(WsMessage::Ping(Vec::new())).await {
                        break;
                    }
                }
                _ = watch.tick() => {
                    if !f.owner_alive().await {
                        tracing::debug!(parent: &span, "the owner stopped beating");
                        out.close(close::MOVED, "the instance serving the session is gone").await;
                        break;
                    }
                }
            }
        }
        tracing::debug!(parent: &span, "client disconnected (follower)");
    }
}

/// Sends what a client needs to start or restart: the hello, then the
/// frames.
async fn send_start<Si: Sink<WsMessage> + Unpin>(
    out: &mut Out<'_, Si>,
    start: &Start,
    token: &str,
) -> bool {
    out.queue(hello(&start.epoch, token, out.max)).await
        && queue_all(out, start.frames.clone()).await
        && out.flush().await
}

/// Queues frames; they go out with what is sent or flushed next.
async fn queue_all<Si: Sink<WsMessage> + Unpin>(
    out: &mut Out<'_, Si>,
    frames: Vec<String>,
) -> bool {
    for f in frames {
        if !out.queue(f).await {
            return false;
        }
    }
    true
}

/// What one item of the feed means for a client at `seq`: the next frame,
/// an old one, or a gap (filled from the store's frames, or a join).
async fn feed_step(
    f: &Follower,
    item: std::result::Result<FeedItem, RecvError>,
    seq: &mut u64,
    token: &str,
    max: usize,
) -> Step {
    let gap = match &item {
        Ok(FeedItem::Push(frame)) => return Step::Send(vec![frame.to_string()]),
        Ok(it) => match next_frame(it, *seq) {
            Ok(Some((q, frame))) => {
                *seq = q;
                return Step::Send(vec![frame.to_string()]);
            }
            Ok(None) => return Step::Nothing,
            Err(()) => true,
        },
        Err(RecvError::Lagged(_)) => true,
        Err(RecvError::Closed) => return Step::Done,
    };
    debug_assert!(gap);
    match f.catch_up(*seq).await {
        Ok(start) => {
            *seq = start.seq;
            let mut frames = Vec::with_capacity(start.frames.len() + 1);
            if start.joined {
                frames.push(hello(&start.epoch, token, max));
            }
            frames.extend(start.frames);
            Step::Send(frames)
        }
        Err(e) => {
            tracing::debug!(error = %e, "follower could not catch up");
            Step::Done
        }
    }
}
