//! One connection's loop: open the session, catch the client up (resume
//! or join), then frames out and events in until either side closes.

use futures_util::{FutureExt, Sink, SinkExt, Stream, StreamExt};
use tokio::time::Instant;

use super::frames::ClientFrame;
use super::{ConnectParams, Live, ReadError, WsMessage, close, parse_client_frame};
use crate::ErrorKind;
use crate::rate::Bucket;
use crate::session::{Attached, Catchup, Session, SessionEvent};
use std::time::Duration;

impl Live {
    /// Runs one connection to its end: opens the session from `params`,
    /// catches the client up (resume or join), then streams frames out and
    /// events in until either side closes. Generic over the WebSocket: any
    /// `Sink` and `Stream` of [`WsMessage`].
    pub async fn connect<Si, St, E>(&self, params: ConnectParams, mut sink: Si, mut stream: St)
    where
        Si: Sink<WsMessage> + Unpin,
        St: Stream<Item = std::result::Result<WsMessage, E>> + Unpin,
        E: Into<ReadError>,
    {
        let _count = OpenGuard::new(&self.open);
        let mut out = Out {
            sink: &mut sink,
            timeout: self.config.write_timeout,
            closed: false,
            max: self.config.max_message,
        };
        self.run(params, &mut out, &mut stream).await;
        if out.closed {
            // The closing handshake: wait (bounded) for the client's close
            // so it reads ours before the connection goes.
            let _ = tokio::time::timeout(Duration::from_secs(2), async {
                while let Some(m) = stream.next().await {
                    if matches!(m, Ok(WsMessage::Close(_)) | Err(_)) {
                        break;
                    }
                }
            })
            .await;
        }
    }

    async fn run<Si, St, E>(&self, params: ConnectParams, out: &mut Out<'_, Si>, stream: &mut St)
    where
        Si: Sink<WsMessage> + Unpin,
        St: Stream<Item = std::result::Result<WsMessage, E>> + Unpin,
        E: Into<ReadError>,
    {
        let cfg = self.config.clone();
        if params.v.is_some_and(|v| v != crate::fragment::WIRE_VERSION) {
            out.close(close::VERSION, "unsupported protocol version")
                .await;
            return;
        }
        self.register_remote_events();
        let session = match self.engine.attach(&params.sid, &params.token).await {
            Ok(Attached::Local(s)) => s,
            Ok(Attached::Remote(f)) => return self.run_follower(f, params, out, stream).await,
            Err(e) if e.kind() == ErrorKind::InvalidSession => {
                out.close(close::INVALID_SESSION, "invalid session").await;
                return;
            }
            Err(e) => {
                // The store or the cluster failed: the session may well be
                // fine, so the client tries again (no reload).
                tracing::warn!(error = %e, "socket: the session could not be opened");
                out.close(close::MOVED, "the session cannot be reached now")
                    .await;
                return;
            }
        };
        // The session counts this socket as an open connection while it
        // lives (such sessions are evicted last).
        let _connection = session.connection();
        let span = tracing::debug_span!("socket", sid = %session.id().short());
        // A client that starts from the page it was served, at that page
        // still: the statics, in the hello, and nothing more.
        let start = match (params.seq, params.epoch.as_deref(), params.page) {
            (Some(seq), Some(epoch), Some(1)) => {
                session
                    .resume_page(seq, epoch)
                    .await
                    .map(|(held, sub)| match held {
                        Ok(s) => (Catchup::Frames(Vec::new()), sub, Some(s)),
                        Err(r) => (Catchup::Resync(r), sub, None),
                    })
            }
            (Some(seq), Some(epoch), _) => session
                .resume(seq, epoch)
                .await
                .map(|(c, sub)| (c, sub, None)),
            _ => session
                .join()
                .await
                .map(|(r, sub)| (Catchup::Resync(r), sub, None)),
        };
        let (catchup, mut sub, statics) = match start {
            Ok(x) => x,
            Err(_) => {
                out.close(close::SESSION_ENDED, "session ended").await;
                return;
            }
        };
        let token = session.token().unwrap_or_default();
        let client = params
            .c
            .as_deref()
            .filter(|c| !c.is_empty() && c.len() <= 16)
            .and_then(|c| u64::from_str_radix(c, 16).ok());
        let ok = match catchup {
            Catchup::Frames(frames) => {
                let h = match &statics {
                    Some(s) => hello_with_statics(&session.epoch(), &token, out.max, s),
                    None => hello(&session.epoch(), &token, out.max),
                };
                let mut ok = out.queue(h).await;
                for f in frames {
                    if !ok {
                        break;
                    }
                    ok = out.queue(f.frame().to_owned()).await;
                }
                ok && out.flush().await
            }
            Catchup::Resync(r) => {
                out.queue(hello(r.epoch(), &token, out.max)).await
                    && out.text(r.frame().to_owned()).await
            }
        };
        if !ok {
            return;
        }
        tracing::debug!(parent: &span, "client connected");
        let mut last_heard = Instant::now();
        // Pings, acks and junk: this connection's own budget. Events take
        // the session's (shared by all its connections).
        let mut others = Bucket::new(cfg.rate_per_sec, cfg.rate_burst);
        let mut ping =
            tokio::time::interval_at(Instant::now() + cfg.ping_interval, cfg.ping_interval);
        loop {
            tokio::select! {
                ev = sub.recv() => {
                    if !forward(out, ev, &token, &session, true).await {
                        break;
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
                    let frame = match &msg {
                        WsMessage::Text(t) if t.len() <= cfg.max_message => Some(parse_client_frame(t)),
                        _ => None,
                    };
                    let wait = match &frame {
                        Some(Ok(ClientFrame::Event { .. })) => {
                            session.reserve_event(cfg.rate_per_sec, cfg.rate_burst)
                        }
                        _ => others.reserve(),
                    };
                    if !wait.is_zero() {
                        tokio::time::sleep(wait).await;
                    }
                    match msg {
                        WsMessage::Text(t) => {
                            let _ = session.touch().await;
                            if t.len() > cfg.max_message {
                                out.close(close::TOO_BIG, "message too big").await;
                                break;
                            }
                            let Some(frame) = frame else { break };
                            if let Ok(ClientFrame::Ack { seq, hash }) = &frame {
                                if !session.holds(*seq, *hash) {
                                    tracing::debug!(parent: &span, seq, "client out of step; resync");
                                    sub.resync();
                                }
                            }
                            let reply = self.client_frame(&session, client, frame).await;
                            if session.is_moved() {
                                // Handed over while the event ran: its client
                                // resends what was not answered, to the owner.
                                out.close(close::MOVED, "the session moved").await;
                                break;
                            }
                            if let Some(reply) = reply {
                                // What the event rendered goes out before its
                                // reply, so a client sees the two in order
                                // (queued, then written with the reply).
                                // A subscriber that lagged owes a resync (which
                                // holds the event's change): awaited, since it
                                // takes the page lock.
                                let mut open = true;
                                loop {
                                    let ev = if sub.owes_resync() {
                                        sub.recv().await
                                    } else {
                                        // Unconstrained: under load the task's
                                        // coop budget runs out, and a budgeted
                                        // poll would say "pending" with the
                                        // frame in the channel (then the reply
                                        // would overtake it).
                                        match tokio::task::unconstrained(sub.recv()).now_or_never() {
                                            Some(ev) => ev,
                                            None if sub.owes_resync() => continue,
                                            None => break,
                                        }
                                    };
                                    open = forward(out, ev, &token, &session, false).await;
                                    if !open {
                                        break;
                                    }
                                }
                                if !open || !out.text(reply).await {
                                    break;
                                }
                            }
                        }
                        WsMessage::Binary(_) => {
                            out.close(close::UNSUPPORTED, "binary frames are not used").await;
                            break;
                        }
                        WsMessage::Ping(p) => {
                            if !out.send(WsMessage::Pong(p)).await {
                                break;
                            }
                        }
                        WsMessage::Pong(_) => {}
                        WsMessage::Close(_) => break,
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
            }
        }
        tracing::debug!(parent: &span, "client disconnected");
    }
}

/// The first message of a connection (and of a resync): the protocol
/// version, the page incarnation, a fresh token, and the largest message
/// the server reads (`max`, bytes), so that the client refuses a bigger
/// event itself instead of having the connection closed with 1009.
pub(super) fn hello(epoch: &str, token: &str, max: usize) -> String {
    format!(
        "{{\"t\":\"hello\",\"v\":{},\"epoch\":\"{}\",\"token\":\"{}\",\"max\":{}}}",
        crate::fragment::WIRE_VERSION,
        epoch,
        token,
        max
    )
}

/// The `hello` of a client that starts from the page it was served: with
/// the statics table entries the page uses (`s`), from which it reads the
/// rest of its model out of the page.
fn hello_with_statics(epoch: &str, token: &str, max: usize, statics: &str) -> String {
    let mut h = hello(epoch, token, max);
    h.pop();
    h.push_str(",\"s\":");
    h.push_str(statics);
    h.push('}');
    h
}

/// Closes the socket after a read error, with the code that names it.
pub(super) async fn shown_read_error<Si: Sink<WsMessage> + Unpin>(
    out: &mut Out<'_, Si>,
    e: ReadError,
    span: &tracing::Span,
) {
    tracing::debug!(parent: span, error = %e, "socket error");
    match e {
        ReadError::TooBig => out.close(close::TOO_BIG, "message too big").await,
        ReadError::InvalidUtf8 => out.close(close::INVALID_DATA, "invalid UTF-8").await,
        ReadError::Protocol(_) => out.close(close::PROTOCOL, "protocol violation").await,
        ReadError::Other(_) => {}
    }
}

/// Sends one session event to the client; `false` once the connection is
/// done (the socket failed, or the session ended and was closed with 4002).
///
/// With `flush` false the frames are only queued: the caller writes them
/// out with what it sends next.
pub(super) async fn forward<Si: Sink<WsMessage> + Unpin>(
    out: &mut Out<'_, Si>,
    ev: Option<SessionEvent>,
    token: &str,
    session: &Session,
    flush: bool,
) -> bool {
    let frame = match ev {
        Some(SessionEvent::Patch(p)) => p.frame().to_owned(),
        Some(SessionEvent::Push(p)) => p.frame().to_owned(),
        Some(SessionEvent::Resync(r)) => {
            if !out.queue(hello(r.epoch(), token, out.max)).await {
                return false;
            }
            r.frame().to_owned()
        }
        None if session.is_moved() => {
            out.close(close::MOVED, "the session moved").await;
            return false;
        }
        None => {
            out.close(close::SESSION_ENDED, "session ended").await;
            return false;
        }
    };
    if flush {
        out.text(frame).await
    } else {
        out.queue(frame).await
    }
}

/// Counts a connection while it lives.
pub(super) struct OpenGuard<'a>(&'a std::sync::atomic::AtomicUsize);

impl<'a> OpenGuard<'a> {
    fn new(n: &'a std::sync::atomic::AtomicUsize) -> OpenGuard<'a> {
        n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        OpenGuard(n)
    }
}

impl Drop for OpenGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The writing half with a per-write timeout.
pub(super) struct Out<'a, Si> {
    sink: &'a mut Si,
    timeout: Duration,
    /// Whether we sent a close.
    closed: bool,
    /// The largest message the server reads (told to the client in `hello`).
    pub(super) max: usize,
}

impl<Si: Sink<WsMessage> + Unpin> Out<'_, Si> {
    /// Sends and flushes (with whatever was queued before it); false if the
    /// client is gone or too slow (then closed).
    pub(super) async fn send(&mut self, m: WsMessage) -> bool {
        written(tokio::time::timeout(self.timeout, self.sink.send(m)).await)
    }

    /// Sends a text message and flushes.
    pub(super) async fn text(&mut self, t: String) -> bool {
        self.send(WsMessage::Text(t)).await
    }

    /// Queues a text message without flushing: it goes out with the next
    /// [`Out::text`], [`Out::send`] or [`Out::flush`], in one write when
    /// they fit the socket's write buffer (a click's frames and its reply
    /// then cost one system call and one wakeup of the client, not one
    /// each).
    pub(super) async fn queue(&mut self, t: String) -> bool {
        written(tokio::time::timeout(self.timeout, self.sink.feed(WsMessage::Text(t))).await)
    }

    /// Writes out what was queued.
    pub(super) async fn flush(&mut self) -> bool {
        written(tokio::time::timeout(self.timeout, self.sink.flush()).await)
    }

    pub(super) async fn close(&mut self, code: u16, reason: &str) {
        self.closed = true;
        let _ = self
            .send(WsMessage::Close(Some((code, reason.to_owned()))))
            .await;
    }
}

/// Whether a bounded write went through (false if the client is gone or
/// too slow).
fn written<E>(
    r: std::result::Result<std::result::Result<(), E>, tokio::time::error::Elapsed>,
) -> bool {
    match r {
        Ok(Ok(())) => true,
        Ok(Err(_)) => false,
        Err(_) => {
            tracing::debug!("client too slow; dropped");
            false
        }
    }
}
