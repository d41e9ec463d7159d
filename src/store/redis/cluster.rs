//! The Redis side of a [`Cluster`]: leases, the instances' beats, calls
//! between instances, the frames followers receive, broadcasts and
//! presence.
//!
//! # Keys and channels
//!
//! With the store's prefix `P`:
//!
//! - `P<ID>:owner`: the name of the instance that owns session `ID`. A
//!   lease: it holds only while `Pinst:<NAME>` exists. Claimed by a script
//!   (take it if it is missing or its instance is gone), checked by every
//!   append (an append from another instance is refused), deleted with the
//!   session.
//! - `Pinst:<NAME>`: set with `PX` = the lease by each beat of instance
//!   `NAME`, every third of the lease; deleted when it stops.
//! - `Ppres:<GROUP>`: a hash, instance name → its count of connections in
//!   the group; counts of instances that do not beat are left out.
//! - channel `Pf:<ID>`: the append script publishes each frame of session
//!   `ID` as `"<seq> <frame>"`, in the same step as it stores it.
//! - channel `Prpc:<NAME>`: calls to instance `NAME` and the answers to its
//!   calls (JSON).
//! - stream `Pbcast`: broadcasts (see `bcast.rs`: a stream, so that an
//!   instance whose connection dropped still gets them).
//!
//! Subscriptions use a second connection in RESP3 (redis-rs's connection
//! manager with a push sender and automatic resubscription): one
//! connection per instance whatever the number of followed sessions.
//! Messages are handled in the order Redis sent them, so a frame an event
//! rendered arrives before the event's answer.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::{Client, ProtocolVersion, PushInfo, PushKind, Script};
use async_trait::async_trait;
use serde_json::{Value as Json, json};
use tokio::sync::{broadcast, mpsc, oneshot};

use super::RedisStore;
use crate::cluster::{Broadcast, Cluster, ClusterOptions, Feed, FeedItem, Inbound, Link, Op};
use crate::id::SessionId;
use crate::{Error, ErrorKind, Result};

/// Takes a session's lease: ARGV 1 this instance, 2 the instances' key
/// prefix, 3 the owner key's expiry (ms). Returns `me`, or `owner <NAME>`
/// when a live instance holds it.
const CLAIM: &str = r#"
local o = redis.call('GET', KEYS[1])
if o == ARGV[1] then return 'me' end
if o and redis.call('EXISTS', ARGV[2] .. o) == 1 then return 'owner ' .. o end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
return 'me'
"#;

/// Gives a lease up if this instance (ARGV 1) holds it.
const RELEASE: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) return 1 end
return 0
"#;

/// How long an owner key lives without an append or a claim renewing it.
pub(super) const OWNER_TTL_MS: u64 = 24 * 3600 * 1000;

/// What the link and its push handler share.
struct Shared {
    me: String,
    prefix: String,
    rpc: String,
    frames: String,
    bcast: String,
    pending: Mutex<HashMap<u64, oneshot::Sender<std::result::Result<Json, String>>>>,
    follows: Mutex<HashMap<SessionId, Follow>>,
    inbox: Mutex<Option<mpsc::UnboundedSender<Inbound>>>,
    /// How many times the subscription connection dropped.
    drops: AtomicU64,
    /// Wakes the beat when it did.
    wake: tokio::sync::Notify,
}

struct Follow {
    tx: broadcast::Sender<FeedItem>,
    refs: usize,
}

pub(super) struct RedisLink {
    store: RedisStore,
    opts: ClusterOptions,
    shared: Arc<Shared>,
    subs: tokio::sync::OnceCell<ConnectionManager>,
    /// Orders subscribes with the beat's unsubscribes.
    order: tokio::sync::Mutex<()>,
    pubsub_client: Client,
    next: AtomicU64,
    /// The subscription connection's drops (`Shared::drops`) that a ping
    /// has since shown over: resubscribed.
    healed: AtomicU64,
    alive: Mutex<HashMap<String, (Instant, bool)>>,
    claim: Script,
    release: Script,
    beat: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// The broadcasts' reader (`bcast.rs`).
    reader: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Becomes `true` once the reader knows where it starts.
    reading: tokio::sync::watch::Sender<bool>,
    /// Becomes `true` after the first beat: the instance key says this
    /// instance is alive, and it listens for calls. Before that, other
    /// instances would take it for gone, so it claims nothing.
    ready: tokio::sync::watch::Sender<bool>,
}

impl std::fmt::Debug for RedisLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLink")
            .field("instance", &self.shared.me)
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// This instance's link to the others that share this Redis: pass it
    /// to [`Builder::cluster`](crate::Builder::cluster) with this store as
    /// the engine's store (see [`crate::cluster`]). From now on this store
    /// publishes every frame it appends and refuses appends to sessions
    /// another live instance owns. One cluster per store (a second call
    /// fails with [`ErrorKind::Config`]).
    ///
    /// ```no_run
    /// # async fn f(env: minijinja::Environment<'static>) -> statetemplate::Result<()> {
    /// use statetemplate::StateTemplate;
    /// use statetemplate::cluster::ClusterOptions;
    /// use statetemplate::store::RedisStore;
    /// let store = RedisStore::open("redis://127.0.0.1:6379")?;
    /// let cluster = store.cluster(ClusterOptions::default())?;
    /// let engine = StateTemplate::builder(env)
    ///     .store(store)
    ///     .cluster(cluster)
    ///     .build()?;
    /// # Ok(()) }
    /// ```
    pub fn cluster(&self, opts: ClusterOptions) -> Result<Cluster> {
        let mut name = [0u8; 8];
        getrandom::fill(&mut name)
            .map_err(|e| Error::new(ErrorKind::Config, format!("OS random source: {e}")))?;
        let me: String = name.iter().map(|b| format!("{b:02x}")).collect();
        if self.inner.me.set(me.clone()).is_err() {
            return Err(Error::new(
                ErrorKind::Config,
                "this RedisStore already has a cluster (one per store and instance)",
            ));
        }
        let info = self.inner.client.get_connection_info().clone();
        let redis = info
            .redis_settings()
            .clone()
            .set_protocol(ProtocolVersion::RESP3);
        let pubsub_client = Client::open(info.set_redis_settings(redis)).map_err(|e| {
            Error::with_source(ErrorKind::Config, "redis: a subscription client", e)
        })?;
        let p = &self.inner.opts.prefix;
        let shared = Arc::new(Shared {
            rpc: format!("{p}rpc:{me}"),
            frames: format!("{p}f:"),
            bcast: format!("{p}bcast"),
            prefix: p.clone(),
            me,
            pending: Mutex::default(),
            follows: Mutex::default(),
            inbox: Mutex::default(),
            drops: AtomicU64::new(0),
            wake: tokio::sync::Notify::new(),
        });
        Ok(Cluster {
            link: Arc::new(RedisLink {
                store: self.clone(),
                opts,
                shared,
                subs: tokio::sync::OnceCell::new(),
                order: tokio::sync::Mutex::new(()),
                pubsub_client,
                next: AtomicU64::new(1),
                healed: AtomicU64::new(0),
                alive: Mutex::default(),
                claim: Script::new(CLAIM),
                release: Script::new(RELEASE),
                beat: Mutex::new(None),
                reader: Mutex::new(None),
                reading: tokio::sync::watch::channel(false).0,
                ready: tokio::sync::watch::channel(false).0,
            }),
        })
    }

    pub(super) fn owner_key(&self, id: &SessionId) -> String {
        format!("{}{id}:owner", self.inner.opts.prefix)
    }

    pub(super) fn groups_key(&self, id: &SessionId) -> String {
        format!("{}{id}:groups", self.inner.opts.prefix)
    }

    pub(super) fn frames_channel(&self, id: &SessionId) -> String {
        format!("{}f:{id}", self.inner.opts.prefix)
    }
}

impl Shared {
    /// Handles one push from the subscription connection (in order).
    fn dispatch(&self, p: PushInfo) {
        match p.kind {
            PushKind::Message => {}
            PushKind::Disconnection => {
                // Messages may be lost until the connection is back: every
                // follower checks the store for what it missed now, and
                // again once the subscriptions are back (see `beat`).
                self.drops.fetch_add(1, Ordering::SeqCst);
                self.lost();
                self.wake.notify_one();
                return;
            }
            _ => return,
        }
        let mut it = p.data.into_iter();
        let (Some(ch), Some(body)) = (it.next(), it.next()) else {
            return;
        };
        let (Some(ch), Some(body)) = (bytes(ch), bytes(body)) else {
            return;
        };
        let Ok(ch) = std::str::from_utf8(&ch) else {
            return;
        };
        if let Some(id) = ch.strip_prefix(&self.frames) {
            let Ok(id) = id.parse::<SessionId>() else {
                return;
            };
            if let Some(push) = body.strip_prefix(b"p ") {
                if let (Ok(frame), Some(f)) = (
                    std::str::from_utf8(push),
                    self.follows.lock().expect("lock").get(&id),
                ) {
                    let _ = f.tx.send(FeedItem::Push(Arc::from(frame)));
                }
                return;
            }
            let Some((seq, frame)) = std::str::from_utf8(&body)
                .ok()
                .and_then(|b| b.split_once(' '))
                .and_then(|(s, f)| Some((s.parse::<u64>().ok()?, f)))
            else {
                tracing::warn!(
                    channel = ch,
                    "redis: a published frame is not valid; ignored"
                );
                return;
            };
            if let Some(f) = self.follows.lock().expect("lock").get(&id) {
                let _ = f.tx.send(FeedItem::Frame(seq, Arc::from(frame)));
            }
        } else if ch == self.rpc {
            let Ok(m) = serde_json::from_slice::<Json>(&body) else {
                tracing::warn!("redis: a call message is not JSON; ignored");
                return;
            };
            if let Some(id) = m.get("a").and_then(Json::as_u64) {
                let answer = match m.get("err").and_then(Json::as_str) {
                    Some(e) => Err(e.to_owned()),
                    None => Ok(m.get("v").cloned().unwrap_or(Json::Null)),
                };
                if let Some(tx) = self.pending.lock().expect("lock").remove(&id) {
                    let _ = tx.send(answer);
                }
                return;
            }
            let call = (|| {
                Some(Inbound::Call {
                    from: m.get("from")?.as_str()?.to_owned(),
                    id: m.get("q")?.as_u64()?,
                    sid: m.get("sid")?.as_str()?.parse().ok()?,
                    op: serde_json::from_value(m.get("o")?.clone()).ok()?,
                })
            })();
            match call {
                Some(c) => self.deliver(c),
                None => tracing::warn!("redis: a call is not valid; ignored"),
            }
        }
    }

    /// Tells every follower here that frames may have been missed.
    fn lost(&self) {
        for f in self.follows.lock().expect("lock").values() {
            let _ = f.tx.send(FeedItem::Lost);
        }
    }

    fn deliver(&self, m: Inbound) {
        if let Some(tx) = &*self.inbox.lock().expect("lock") {
            let _ = tx.send(m);
        }
    }
}

/// Waits (at most `within`) until `flag` is `true`; else a `Store` error
/// saying `why`.
async fn until(
    flag: &tokio::sync::watch::Sender<bool>,
    within: Duration,
    why: &'static str,
) -> Result<()> {
    if *flag.borrow() {
        return Ok(());
    }
    let mut rx = flag.subscribe();
    match tokio::time::timeout(within, rx.wait_for(|r| *r)).await {
        Ok(Ok(_)) => Ok(()),
        _ => Err(Error::new(ErrorKind::Store, why)),
    }
}

fn bytes(v: ::redis::Value) -> Option<Vec<u8>> {
    match v {
        ::redis::Value::BulkString(b) => Some(b),
        ::redis::Value::SimpleString(s) => Some(s.into_bytes()),
        _ => None,
    }
}

impl RedisLink {
    fn err(&self, what: &str, e: ::redis::RedisError) -> Error {
        self.store.err(what, e)
    }

    /// Waits for the first beat (at most a lease): an instance that other
    /// instances cannot see yet must not own sessions, or the first of them
    /// to open one would take it over while this one still serves it.
    async fn until_ready(&self) -> Result<()> {
        until(
            &self.ready,
            self.opts.lease,
            "redis cluster: this instance has not announced itself yet (no beat within a lease); is Redis reachable?",
        )
        .await
    }

    fn instance_key(&self, name: &str) -> String {
        format!("{}inst:{name}", self.shared.prefix)
    }

    /// The subscription connection (made on first use).
    async fn subs(&self) -> Result<ConnectionManager> {
        let c = self
            .subs
            .get_or_try_init(|| async {
                let shared = self.shared.clone();
                let push = move |p: PushInfo| -> std::result::Result<(), std::convert::Infallible> {
                    shared.dispatch(p);
                    Ok(())
                };
                let o = &self.store.inner.opts;
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(o.connect_timeout))
                    .set_response_timeout(Some(o.response_timeout))
                    .set_number_of_retries(1)
                    .set_min_delay(Duration::from_millis(50))
                    .set_push_sender(push)
                    .set_automatic_resubscription();
                ConnectionManager::new_lazy_with_config(self.pubsub_client.clone(), config)
                    .map_err(|e| self.err("subscribing", e))
            })
            .await?;
        Ok(c.clone())
    }

    async fn subscribe(&self, channel: &str) -> Result<()> {
        let mut c = self.subs().await?;
        c.subscribe(channel)
            .await
            .map_err(|e| self.err("subscribing", e))
    }

    /// One beat: the instance key, a ping on the subscription connection
    /// (so it reconnects, and resubscribes, after Redis came back), and the
    /// channels no follower needs any more.
    ///
    /// A beat that finds the instance key missing after the first one (a
    /// gap longer than the lease: other instances took this one for gone)
    /// tells the engine ([`Inbound::Lapsed`]).
    async fn beat(&self) -> Result<()> {
        let mut c = self.store.conn().await?;
        let before: Option<String> = ::redis::cmd("SET")
            .arg(self.instance_key(&self.shared.me))
            .arg(1)
            .arg("PX")
            .arg(self.opts.lease.as_millis() as u64)
            .arg("GET")
            .query_async(&mut c)
            .await
            .map_err(|e| self.err("beating", e))?;
        if before.is_none() && *self.ready.borrow() {
            // Taken for gone: sessions live here may be owned elsewhere
            // now. The key is back, so no new claim takes them from here
            // on; the engine checks each once (even if the rest of this
            // beat fails, the next one would not see the lapse).
            tracing::warn!(
                instance = %self.shared.me,
                "cluster: this instance's beat had lapsed; checking its leases"
            );
            self.shared.deliver(Inbound::Lapsed);
        }
        let mut s = self.subs().await?;
        let drops = self.shared.drops.load(Ordering::SeqCst);
        ::redis::cmd("PING")
            .query_async::<::redis::Value>(&mut s)
            .await
            .map_err(|e| self.err("pinging subscriptions", e))?;
        if drops > self.healed.swap(drops, Ordering::SeqCst) {
            // The connection is back, and redis-rs resubscribed before it
            // let the ping through. A follower that caught up when the
            // connection dropped may have missed frames published after
            // its catch-up and before the subscriptions were back (an idle
            // session sends no later frame to show the gap): each checks
            // the store once more.
            self.shared.lost();
        }
        let _order = self.order.lock().await;
        let idle: Vec<SessionId> = {
            let mut f = self.shared.follows.lock().expect("lock");
            let idle: Vec<SessionId> = f
                .iter()
                .filter(|(_, v)| v.refs == 0)
                .map(|(k, _)| *k)
                .collect();
            for id in &idle {
                f.remove(id);
            }
            idle
        };
        if !idle.is_empty() {
            let channels: Vec<String> = idle
                .iter()
                .map(|id| self.store.frames_channel(id))
                .collect();
            s.unsubscribe(&channels)
                .await
                .map_err(|e| self.err("unsubscribing", e))?;
        }
        Ok(())
    }

    /// Listens (this instance's calls, broadcasts), then beats every third
    /// of the lease until the link is dropped or stopped.
    async fn run(link: std::sync::Weak<RedisLink>) {
        let mut listening = false;
        loop {
            let Some(l) = link.upgrade() else { return };
            let every = l.opts.lease / 3;
            if !listening {
                let ok = l.subscribe(&l.shared.rpc).await;
                match ok {
                    Ok(()) => listening = true,
                    Err(e) => tracing::warn!(error = %e, "cluster: not listening yet"),
                }
            }
            if listening {
                match l.beat().await {
                    Ok(()) => {
                        l.ready.send_if_modified(|r| !std::mem::replace(r, true));
                    }
                    Err(e) => tracing::warn!(error = %e, "cluster: beat failed"),
                }
            }
            let shared = l.shared.clone();
            drop(l);
            // The next beat comes early when the subscription connection
            // dropped: its ping waits for the reconnection, and then the
            // followers check the store at once (see `beat`).
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = shared.wake.notified() => {}
            }
        }
    }

    async fn publish(&self, channel: &str, body: &str) -> Result<i64> {
        let mut c = self.store.conn().await?;
        ::redis::cmd("PUBLISH")
            .arg(channel)
            .arg(body)
            .query_async(&mut c)
            .await
            .map_err(|e| self.err("publishing", e))
    }
}

struct FollowGuard {
    shared: Arc<Shared>,
    id: SessionId,
}

impl Drop for FollowGuard {
    fn drop(&mut self) {
        if let Some(f) = self.shared.follows.lock().expect("lock").get_mut(&self.id) {
            f.refs = f.refs.saturating_sub(1);
        }
    }
}

#[async_trait]
impl Link for RedisLink {
    fn instance(&self) -> &str {
        &self.shared.me
    }

    fn options(&self) -> &ClusterOptions {
        &self.opts
    }

    fn start(self: Arc<Self>, inbox: mpsc::UnboundedSender<Inbound>) {
        *self.shared.inbox.lock().expect("lock") = Some(inbox);
        let task = tokio::spawn(RedisLink::run(Arc::downgrade(&self)));
        *self.beat.lock().expect("lock") = Some(task);
        let (weak, reading) = (Arc::downgrade(&self.shared), self.reading.clone());
        let (alive, deliver) = (weak.clone(), weak);
        let reader = tokio::spawn(super::bcast::read(
            self.store.clone(),
            self.shared.bcast.clone(),
            move || alive.strong_count() > 0,
            move |b| {
                if let Some(s) = deliver.upgrade() {
                    s.deliver(Inbound::Broadcast(b));
                }
            },
            move || {
                reading.send_replace(true);
            },
        ));
        *self.reader.lock().expect("lock") = Some(reader);
    }

    async fn ready(&self) -> Result<()> {
        self.until_ready().await
    }

    async fn claim(&self, id: &SessionId) -> Result<Option<String>> {
        self.until_ready().await?;
        let mut inv = self.claim.prepare_invoke();
        inv.key(self.store.owner_key(id))
            .arg(&self.shared.me)
            .arg(self.instance_key(""))
            .arg(OWNER_TTL_MS);
        // Claims and releases are idempotent, and so are reads: tried again
        // after a dropped connection (`RedisStore::run`).
        let answer: String = self.store.invoke("claiming a session", &inv).await?;
        Ok(answer.strip_prefix("owner ").map(str::to_owned))
    }

    async fn release(&self, id: &SessionId) -> Result<()> {
        let mut inv = self.release.prepare_invoke();
        inv.key(self.store.owner_key(id)).arg(&self.shared.me);
        self.store
            .invoke::<i64>("releasing a session", &inv)
            .await?;
        Ok(())
    }

    async fn owner(&self, id: &SessionId) -> Result<Option<String>> {
        let key = &self.store.owner_key(id);
        let o: Option<String> = self
            .store
            .run("reading an owner", move |mut c| async move {
                ::redis::cmd("GET").arg(key).query_async(&mut c).await
            })
            .await?;
        match o {
            Some(o) if self.alive(&o).await => Ok(Some(o)),
            _ => Ok(None),
        }
    }

    async fn holds(&self, ids: &[SessionId]) -> Result<Vec<bool>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = ids.iter().map(|id| self.store.owner_key(id)).collect();
        let keys = &keys;
        let owners: Vec<Option<String>> = self
            .store
            .run("reading owners", move |mut c| async move {
                ::redis::cmd("MGET").arg(keys).query_async(&mut c).await
            })
            .await?;
        Ok(owners
            .iter()
            .map(|o| o.as_deref() == Some(self.shared.me.as_str()))
            .collect())
    }

    async fn alive(&self, name: &str) -> bool {
        if name == self.shared.me {
            return true;
        }
        let fresh = self.opts.lease / 4;
        if let Some((at, v)) = self.alive.lock().expect("lock").get(name) {
            if at.elapsed() < fresh {
                return *v;
            }
        }
        let Ok(mut c) = self.store.conn().await else {
            return false;
        };
        let v = ::redis::cmd("EXISTS")
            .arg(self.instance_key(name))
            .query_async::<i64>(&mut c)
            .await
            .is_ok_and(|n| n == 1);
        let mut cache = self.alive.lock().expect("lock");
        if cache.len() > 4096 {
            cache.clear();
        }
        cache.insert(name.to_owned(), (Instant::now(), v));
        v
    }

    async fn call(&self, to: &str, sid: &SessionId, op: &Op) -> Result<Json> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.shared.pending.lock().expect("lock").insert(id, tx);
        let body = json!({"q": id, "from": self.shared.me, "sid": sid.to_string(), "o": op});
        let unreachable =
            |why: &str| Error::new(ErrorKind::Store, format!("cluster: instance {to} {why}"));
        // Nobody listening may be for a moment (the instance is
        // subscribing again after Redis came back): tried until the
        // timeout.
        let deadline = tokio::time::Instant::now() + self.opts.call_timeout;
        let channel = format!("{}rpc:{to}", self.shared.prefix);
        let body = body.to_string();
        let result = loop {
            match self.publish(&channel, &body).await {
                Ok(0) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Ok(0) => break Err(unreachable("does not listen (gone)")),
                Ok(_) => {
                    break match tokio::time::timeout_at(deadline, rx).await {
                        Ok(Ok(Ok(v))) => Ok(v),
                        Ok(Ok(Err(why))) => Err(Error::new(
                            ErrorKind::Conflict,
                            format!("cluster: instance {to}: {why}"),
                        )),
                        Ok(Err(_)) => Err(unreachable("did not answer")),
                        Err(_) => Err(unreachable("did not answer in time")),
                    };
                }
                Err(e) => break Err(e),
            }
        };
        self.shared.pending.lock().expect("lock").remove(&id);
        result
    }

    async fn answer(&self, to: &str, id: u64, answer: std::result::Result<Json, String>) {
        let body = match answer {
            Ok(v) => json!({"a": id, "v": v}),
            Err(e) => json!({"a": id, "err": e}),
        };
        if let Err(e) = self
            .publish(
                &format!("{}rpc:{to}", self.shared.prefix),
                &body.to_string(),
            )
            .await
        {
            tracing::warn!(error = %e, "cluster: an answer was not sent");
        }
    }

    async fn follow(&self, id: &SessionId) -> Result<Feed> {
        let rx = {
            let mut f = self.shared.follows.lock().expect("lock");
            let e = f.entry(*id).or_insert_with(|| Follow {
                tx: broadcast::channel(256).0,
                refs: 0,
            });
            e.refs += 1;
            e.tx.subscribe()
        };
        let guard = FollowGuard {
            shared: self.shared.clone(),
            id: *id,
        };
        // Subscribed (again: idempotent) before the caller reads the store,
        // so no frame falls between the two. The lock orders it with the
        // beat's unsubscribes.
        let _order = self.order.lock().await;
        self.subscribe(&self.store.frames_channel(id)).await?;
        Ok(Feed {
            rx,
            _guard: Box::new(guard),
        })
    }

    async fn broadcast(&self, b: &Broadcast) -> Result<()> {
        let body = serde_json::to_string(b).map_err(|e| Error::store("cluster: broadcast", e))?;
        // This instance's own reader must know where it starts first, or
        // it would skip what is sent now.
        until(
            &self.reading,
            self.opts.call_timeout,
            "redis cluster: this instance does not read broadcasts yet; is Redis reachable?",
        )
        .await?;
        super::bcast::send(&self.store, &self.shared.bcast, &body).await
    }

    async fn push(&self, id: &SessionId, frame: &str) -> Result<()> {
        let channel = format!("{}{id}", self.shared.frames);
        self.publish(&channel, &format!("p {frame}")).await?;
        Ok(())
    }

    async fn set_presence(&self, group: &str, count: u64) -> Result<()> {
        let key = format!("{}pres:{group}", self.shared.prefix);
        let mut c = self.store.conn().await?;
        let mut p = ::redis::pipe();
        if count == 0 {
            p.cmd("HDEL").arg(&key).arg(&self.shared.me).ignore();
        } else {
            p.cmd("HSET")
                .arg(&key)
                .arg(&self.shared.me)
                .arg(count)
                .ignore()
                .cmd("PEXPIRE")
                .arg(&key)
                .arg(OWNER_TTL_MS)
                .ignore();
        }
        p.query_async::<()>(&mut c)
            .await
            .map_err(|e| self.err("publishing presence", e))
    }

    async fn presence(&self, group: &str) -> Result<Vec<(String, u64)>> {
        let key = format!("{}pres:{group}", self.shared.prefix);
        let mut c = self.store.conn().await?;
        let counts: HashMap<String, u64> = ::redis::cmd("HGETALL")
            .arg(&key)
            .query_async(&mut c)
            .await
            .map_err(|e| self.err("reading presence", e))?;
        let mut live = Vec::with_capacity(counts.len());
        for (name, n) in counts {
            if self.alive(&name).await {
                live.push((name, n));
            }
        }
        Ok(live)
    }

    async fn seq(&self, id: &SessionId) -> Result<Option<u64>> {
        let mut c = self.store.conn().await?;
        let seq: Option<String> = ::redis::cmd("HGET")
            .arg(format!("{}{id}", self.shared.prefix))
            .arg("seq")
            .query_async(&mut c)
            .await
            .map_err(|e| self.err("reading a seq", e))?;
        seq.map(|s| {
            s.parse().map_err(|_| {
                Error::new(
                    ErrorKind::Store,
                    format!("redis: session {id}: the field seq is not a number"),
                )
            })
        })
        .transpose()
    }

    async fn save_groups(&self, id: &SessionId, groups: &[String]) -> Result<()> {
        let key = self.store.groups_key(id);
        let body = serde_json::to_string(groups).map_err(|e| Error::store("cluster: groups", e))?;
        let mut c = self.store.conn().await?;
        ::redis::cmd("SET")
            .arg(&key)
            .arg(body)
            .arg("PX")
            .arg(OWNER_TTL_MS)
            .query_async::<()>(&mut c)
            .await
            .map_err(|e| self.err("keeping groups", e))
    }

    async fn groups(&self, id: &SessionId) -> Result<Vec<String>> {
        let mut c = self.store.conn().await?;
        let body: Option<String> = ::redis::cmd("GET")
            .arg(self.store.groups_key(id))
            .query_async(&mut c)
            .await
            .map_err(|e| self.err("reading groups", e))?;
        Ok(body
            .and_then(|b| serde_json::from_str(&b).ok())
            .unwrap_or_default())
    }

    async fn stop(&self) {
        if let Some(h) = self.beat.lock().expect("lock").take() {
            h.abort();
        }
        if let Some(h) = self.reader.lock().expect("lock").take() {
            h.abort();
        }
        if let Ok(mut c) = self.store.conn().await {
            let _ = ::redis::cmd("DEL")
                .arg(self.instance_key(&self.shared.me))
                .query_async::<()>(&mut c)
                .await;
        }
    }
}
