//! [`RedisStore`]: sessions in Redis, as a snapshot plus a log of deltas,
//! with the recent frames for resume, so several instances (or one that
//! restarts) share them.
//!
//! One client ([redis-rs](https://docs.rs/redis) with tokio): a
//! `ConnectionManager`, one multiplexed connection that reconnects after
//! an I/O error, made on the first call (so [`RedisStore::open`] needs no
//! server; [`RedisStore::ping`] checks one). Every write is a Lua script,
//! one atomic step in Redis.
//!
//! # Layout
//!
//! With the prefix `P` (default `st:`, [`RedisOptions::prefix`]: several
//! apps can share one Redis) and the session id `ID` (its 22-character
//! form):
//!
//! - `P<ID>`: a hash of the record's small fields: `template`, `version`,
//!   `seq`, `generation`, `epoch`, `created_ms`, `last_access_ms`,
//!   `expires_ms`, `applied` (JSON), and the log's state: `snap_version`,
//!   `snap_bytes`, `log_bytes`.
//! - `P<ID>:snap`: the data at `snap_version`, as JSON. Its own key, so an
//!   append does not rewrite it.
//! - `P<ID>:log`: a list of the deltas after the snapshot, each
//!   `"<version> <delta JSON>"`, oldest first. [`SessionStore::load`] reads
//!   the hash, the snapshot and the log in one `MULTI` and replays the log
//!   ([`SessionLog::replay`]).
//! - `P<ID>:frames`: a list of the newest wire frames, each
//!   `"<seq> <frame>"`, trimmed to [`RedisOptions::frames_kept`] (default
//!   64) on every append (`LTRIM`), for clients that reconnect after a
//!   restart ([`SessionStore::frames`]).
//! - `Pexpiry`: one sorted set for the prefix, member `ID`, score
//!   `expires_ms`, written in the same script as the record.
//!
//! An append is one script: it compares the stored `version` with the
//! append's base version and, only if they are equal, writes the small
//! fields, pushes the delta and the frame, trims the frames, sets the
//! deadlines and the expiry score. Two writers racing with one version:
//! Redis runs one script after the other, and the second sees the first's
//! version and is refused ([`ErrorKind::Conflict`]). Its bytes follow the
//! change (the delta, the frame and the small fields, never the snapshot).
//! When the log since the snapshot reaches [`RedisOptions::snapshot_every_bytes`]
//! (by default as many bytes as the snapshot, at least 4 KiB) or
//! [`RedisOptions::snapshot_every_deltas`], the append writes a new
//! snapshot of its version in a second script (which checks the version
//! again and drops the log): as in the SQLite store, snapshots cost at most
//! as much as the deltas they replace, and a load reads at most about twice
//! the data. A snapshot that fails to be written leaves a longer log and
//! the append stands.
//!
//! A save (the whole record: a new snapshot, the log dropped) is a script
//! too, refused ([`ErrorKind::Conflict`]) when the stored record has a
//! higher version, in the same step as the write.
//!
//! # Expiry
//!
//! Every key of a session carries a `PEXPIREAT`, set on create, save,
//! append and touch, so Redis drops a session that nobody deletes (an
//! instance that never comes back leaves nothing behind). The deadline is
//! the record's `expires_ms` plus [`RedisOptions::key_grace`] (default one
//! hour; counted from now for a record written with a past expiry). The
//! grace is there because [`SessionStore::load`] must return an expired
//! record until it is deleted: the engine writes a live session's expiry
//! lazily (up to 1/64 of its expiration behind), and its sweep finds records
//! through [`SessionStore::list_expired`] and refreshes the live ones
//! instead of deleting them.
//!
//! The sorted set keeps `list_expired`'s contract (ids with `expires_ms <=
//! now`, oldest first, up to `limit`: one `ZRANGEBYSCORE … LIMIT`), so the
//! engine finds expired records and deletes them (the delete removes the
//! member). The two ways agree: within the grace, the record is listed and
//! reads as it was; after it, Redis has dropped its keys, and it reads as
//! absent, like a record the sweep deleted (its member stays in the set
//! until a sweep lists it and the delete removes it).
//! [`SessionStore::count`] is `ZCARD` (O(1)), so it also counts such
//! members until a sweep clears them.
//!
//! # Durability
//!
//! A call returns once Redis ran its script: an acknowledged append is in
//! Redis's memory, and on disk as Redis's persistence says (`appendonly
//! yes` with `appendfsync everysec` loses at most about a second of writes
//! when the machine fails; `always` none). A process of the app that dies
//! loses nothing acknowledged. A timeout (no answer within
//! [`RedisOptions::response_timeout`]) fails the call although Redis may
//! have run it; the engine then undoes the render, and the next append
//! from that page is refused as stale (a conflict), as with any other
//! writer that got ahead.
//!
//! Not supported: Redis Cluster (a script touches the session's keys and
//! the shared sorted set, which would sit in different slots).

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::{Client, Script};
use async_trait::async_trait;
use minijinja::Value;
use tokio::sync::OnceCell;

use super::{Append, SessionLog, SessionRecord, SessionStore};
use crate::fragment::Delta;
use crate::id::SessionId;
use crate::{Error, ErrorKind, Result};

mod bcast;
mod cluster;
mod scripts;

/// How a [`RedisStore`] names its keys, keeps frames, takes snapshots and
/// waits. Build with [`RedisOptions::default`] and the setters.
#[derive(Debug, Clone)]
pub struct RedisOptions {
    prefix: String,
    frames_kept: u64,
    snapshot_bytes: u64,
    snapshot_deltas: u64,
    key_grace: Duration,
    connect_timeout: Duration,
    response_timeout: Duration,
}

impl Default for RedisOptions {
    /// Prefix `st:`, 64 frames kept per session, snapshots by size, keys
    /// kept one hour past a session's expiry, 2 s to connect, 5 s for an
    /// answer.
    fn default() -> RedisOptions {
        RedisOptions {
            prefix: "st:".into(),
            frames_kept: 64,
            snapshot_bytes: 0,
            snapshot_deltas: 0,
            key_grace: Duration::from_secs(3600),
            connect_timeout: Duration::from_secs(2),
            response_timeout: Duration::from_secs(5),
        }
    }
}

impl RedisOptions {
    /// What every key of this store starts with (default `st:`): stores
    /// with different prefixes share one Redis without seeing each other's
    /// sessions.
    pub fn prefix(mut self, prefix: impl Into<String>) -> RedisOptions {
        self.prefix = prefix.into();
        self
    }

    /// How many recent frames to keep per session for clients that
    /// reconnect after a restart (default 64, like the engine's
    /// `replay_frames`; 0 keeps none).
    pub fn frames_kept(mut self, n: u64) -> RedisOptions {
        self.frames_kept = n;
        self
    }

    /// Takes a new snapshot once the deltas since the last one hold this
    /// many bytes (0, the default: as many bytes as the snapshot, at least
    /// 4 KiB).
    pub fn snapshot_every_bytes(mut self, b: u64) -> RedisOptions {
        self.snapshot_bytes = b;
        self
    }

    /// Takes a new snapshot once this many deltas were appended since the
    /// last one (0, the default: no limit by count).
    pub fn snapshot_every_deltas(mut self, k: u64) -> RedisOptions {
        self.snapshot_deltas = k;
        self
    }

    /// How long after a session's `expires_ms` Redis keeps its keys
    /// (default one hour; see the module docs). Keep it above the engine's
    /// sweep lag: 1/64 of the session expiration plus the sweep interval.
    pub fn key_grace(mut self, grace: Duration) -> RedisOptions {
        self.key_grace = grace;
        self
    }

    /// How long one connection attempt may take (default 2 s).
    pub fn connect_timeout(mut self, t: Duration) -> RedisOptions {
        self.connect_timeout = t;
        self
    }

    /// How long a command may wait for Redis's answer (default 5 s).
    pub fn response_timeout(mut self, t: Duration) -> RedisOptions {
        self.response_timeout = t;
        self
    }
}

/// What a [`RedisStore`] wrote since it was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RedisStats {
    /// Appends applied.
    pub appends: u64,
    /// Snapshots taken by appends (each replaces a session's log).
    pub snapshots: u64,
    /// Bytes of payload sent in writes: deltas, frames, snapshots, small
    /// fields (not counting keys and the protocol's framing).
    pub bytes: u64,
    /// Commands tried a second time because the connection had dropped.
    pub retries: u64,
}

#[derive(Default)]
struct Counters {
    appends: AtomicU64,
    snapshots: AtomicU64,
    bytes: AtomicU64,
    retries: AtomicU64,
}

/// Sessions in Redis: they survive a restart of the app, and several
/// instances can share them (each append is a compare-and-set on the
/// version, so two instances writing one session cannot both win).
///
/// Each render appends its delta and its frame, not the whole data; see
/// the module docs of [`crate::store`] for the contract and this type's
/// source for the layout and expiry. A Redis that cannot be reached fails
/// the call with an [`ErrorKind::Store`] error naming the server (without
/// any password); the engine undoes the render.
///
/// ```no_run
/// # async fn f(env: minijinja::Environment<'static>) -> statetemplate::Result<()> {
/// use statetemplate::StateTemplate;
/// use statetemplate::store::{RedisOptions, RedisStore};
/// let store = RedisStore::open_with(
///     "redis://127.0.0.1:6379",
///     RedisOptions::default().prefix("myapp:"),
/// )?;
/// store.ping().await?; // fail at start, not at the first page
/// let engine = StateTemplate::builder(env).store(store).build()?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    /// The URL without its password, for messages.
    shown: String,
    opts: RedisOptions,
    conn: OnceCell<ConnectionManager>,
    create: Script,
    save: Script,
    append: Script,
    snapshot: Script,
    touch: Script,
    delete: Script,
    stats: Counters,
    /// This instance's name once [`RedisStore::cluster`] made a cluster:
    /// appends then check the owner and publish their frames.
    me: std::sync::OnceLock<String>,
    /// Nonces of writes ([`RedisStore::run`]): random per store, then
    /// counted.
    nonce_base: u64,
    writes: AtomicU64,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("url", &self.inner.shown)
            .field("prefix", &self.inner.opts.prefix)
            .finish_non_exhaustive()
    }
}

/// `url` with any password replaced by `***` and the query left out.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "(not a URL)".into();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let path = tail.split(['?', '#']).next().unwrap_or("");
    let authority = match authority.rsplit_once('@') {
        Some((user, host)) => match user.split_once(':') {
            Some((name, _)) => format!("{name}:***@{host}"),
            None => format!("{user}@{host}"),
        },
        None => authority.to_owned(),
    };
    format!("{scheme}://{authority}{path}")
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl RedisStore {
    /// A store on the Redis at `url` (`redis://[user:password@]host:port[/db]`
    /// or `redis+unix:///path`) with the default [`RedisOptions`]. Connects
    /// on the first call; fails only on a malformed URL.
    pub fn open(url: &str) -> Result<RedisStore> {
        RedisStore::open_with(url, RedisOptions::default())
    }

    /// A store on the Redis at `url` with `opts`. Connects on the first
    /// call (see [`RedisStore::ping`]); fails only on a malformed URL, with
    /// an [`ErrorKind::Config`] error that shows no password.
    pub fn open_with(url: &str, opts: RedisOptions) -> Result<RedisStore> {
        let shown = redact(url);
        let client = Client::open(url).map_err(|e| {
            Error::with_source(
                ErrorKind::Config,
                format!("redis: {shown}: not a usable Redis URL: {e}"),
                e,
            )
        })?;
        tracing::info!(url = %shown, prefix = %opts.prefix, "redis store open");
        Ok(RedisStore {
            inner: Arc::new(Inner {
                client,
                shown,
                opts,
                conn: OnceCell::new(),
                create: Script::new(&scripts::create()),
                save: Script::new(&scripts::save()),
                append: Script::new(scripts::APPEND),
                snapshot: Script::new(scripts::SNAPSHOT),
                touch: Script::new(scripts::TOUCH),
                delete: Script::new(scripts::DELETE),
                stats: Counters::default(),
                me: std::sync::OnceLock::new(),
                nonce_base: {
                    let mut b = [0u8; 8];
                    getrandom::fill(&mut b)
                        .map_err(|e| Error::store("redis: no randomness for nonces", e))?;
                    u64::from_le_bytes(b)
                },
                writes: AtomicU64::new(0),
            }),
        })
    }

    /// Checks that Redis answers (`PING`): call it at start to fail there
    /// rather than on the first page.
    pub async fn ping(&self) -> Result<()> {
        let mut c = self.conn().await?;
        ::redis::cmd("PING")
            .query_async::<String>(&mut c)
            .await
            .map_err(|e| self.err("ping", e))?;
        Ok(())
    }

    /// This instance's name in a cluster, or "" (no cluster).
    fn me(&self) -> &str {
        self.inner.me.get().map_or("", String::as_str)
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.inner.opts.prefix
    }

    /// What was written since the store was opened.
    pub fn stats(&self) -> RedisStats {
        let c = &self.inner.stats;
        RedisStats {
            appends: c.appends.load(Ordering::Relaxed),
            snapshots: c.snapshots.load(Ordering::Relaxed),
            bytes: c.bytes.load(Ordering::Relaxed),
            retries: c.retries.load(Ordering::Relaxed),
        }
    }

    /// The log of session `id`: its snapshot and the deltas after it (the
    /// event log; [`SessionLog::replay`] is the recovery).
    pub async fn log(&self, id: &SessionId) -> Result<Option<SessionLog>> {
        Ok(self.read(id).await?.map(|(_, log)| log))
    }

    async fn conn(&self) -> Result<ConnectionManager> {
        let i = &self.inner;
        let c = i
            .conn
            .get_or_try_init(|| async {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(i.opts.connect_timeout))
                    .set_response_timeout(Some(i.opts.response_timeout))
                    .set_number_of_retries(1)
                    .set_min_delay(Duration::from_millis(50));
                ConnectionManager::new_lazy_with_config(i.client.clone(), config)
                    .map_err(|e| self.err("connecting", e))
            })
            .await?;
        Ok(c.clone())
    }

    /// Runs `f` on the connection, and once more when the connection had
    /// dropped (Redis restarted, or a proxy or the network closed it; the
    /// manager reconnects for the second try), so a blip costs no write.
    /// A write may have run the first time although its answer was lost:
    /// the writes that are not idempotent (`create`, `append`) carry a
    /// nonce, and their second try recognizes its own first. A timeout is
    /// not tried again (its first try may still be on its way).
    pub(super) async fn run<T, F, Fut>(&self, what: &str, f: F) -> Result<T>
    where
        F: Fn(ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = ::redis::RedisResult<T>>,
    {
        match f(self.conn().await?).await {
            Err(e) if e.is_connection_dropped() && !e.is_timeout() => {
                tracing::debug!(store = %self.inner.shown, what, error = %e, "redis: the connection dropped; once more");
                self.inner.stats.retries.fetch_add(1, Ordering::Relaxed);
                f(self.conn().await?).await.map_err(|e| self.err(what, e))
            }
            r => r.map_err(|e| self.err(what, e)),
        }
    }

    /// Runs a script invocation through [`Self::run`].
    pub(super) async fn invoke<T: ::redis::FromRedisValue>(
        &self,
        what: &str,
        inv: &::redis::ScriptInvocation<'_>,
    ) -> Result<T> {
        self.run(
            what,
            move |mut c| async move { inv.invoke_async(&mut c).await },
        )
        .await
    }

    /// A value no other write of any instance carries (see [`Self::run`]).
    fn nonce(&self) -> String {
        let n = self.inner.writes.fetch_add(1, Ordering::Relaxed);
        format!("{:x}.{n:x}", self.inner.nonce_base)
    }

    fn err(&self, what: &str, e: ::redis::RedisError) -> Error {
        let why = if e.is_connection_refusal() {
            "cannot connect (is Redis running there?)".to_owned()
        } else if e.is_timeout() {
            "no answer in time".to_owned()
        } else {
            e.to_string()
        };
        Error::store(format!("redis {}: {what}: {why}", self.inner.shown), e)
    }

    fn keys(&self, id: &SessionId) -> [String; 5] {
        let p = &self.inner.opts.prefix;
        [
            format!("{p}{id}"),
            format!("{p}{id}:snap"),
            format!("{p}{id}:log"),
            format!("{p}{id}:frames"),
            format!("{p}expiry"),
        ]
    }

    /// When Redis drops a record's keys: its expiry plus the grace, counted
    /// from now for a past expiry (capped where Redis's times end).
    fn deadline(&self, expires_ms: u64) -> u64 {
        let grace = self.inner.opts.key_grace.as_millis().min(u64::MAX as u128) as u64;
        expires_ms
            .max(now_ms())
            .saturating_add(grace)
            .min(i64::MAX as u64 / 2)
    }

    fn add_bytes(&self, n: usize) {
        self.inner
            .stats
            .bytes
            .fetch_add(n as u64, Ordering::Relaxed);
    }

    async fn put(&self, script: &Script, r: &SessionRecord) -> Result<::redis::Value> {
        let data = serde_json::to_string(&r.data).map_err(|e| Error::store("redis: data", e))?;
        let applied =
            serde_json::to_string(&r.applied).map_err(|e| Error::store("redis: applied", e))?;
        self.add_bytes(data.len() + applied.len() + r.template.len() + 100);
        let mut inv = script.prepare_invoke();
        for k in self.keys(&r.id) {
            inv.key(k);
        }
        inv.key(self.owner_key(&r.id));
        inv.arg(r.id.to_string())
            .arg(&*r.template)
            .arg(r.version)
            .arg(r.seq)
            .arg(r.generation)
            .arg(r.epoch)
            .arg(r.created_ms)
            .arg(r.last_access_ms)
            .arg(r.expires_ms)
            .arg(applied)
            .arg(data)
            .arg(self.deadline(r.expires_ms))
            .arg(self.me())
            .arg(cluster::OWNER_TTL_MS)
            .arg(self.nonce());
        self.invoke("writing a session", &inv).await
    }

    /// The record's small fields and its log, read in one `MULTI`.
    async fn read(&self, id: &SessionId) -> Result<Option<(HashMap<String, String>, SessionLog)>> {
        let [hash, snap, log, _, _] = self.keys(id);
        let (hash, snap, log) = (&hash, &snap, &log);
        let (fields, snapshot, entries): (HashMap<String, String>, Option<String>, Vec<String>) =
            self.run("reading a session", move |mut c| async move {
                ::redis::pipe()
                    .atomic()
                    .cmd("HGETALL")
                    .arg(hash)
                    .cmd("GET")
                    .arg(snap)
                    .cmd("LRANGE")
                    .arg(log)
                    .arg(0)
                    .arg(-1)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        if fields.is_empty() {
            return Ok(None);
        }
        let damaged = |what: String| {
            Error::new(
                ErrorKind::Store,
                format!("redis: session {id} (key {hash}): {what}"),
            )
        };
        let snapshot = snapshot.ok_or_else(|| damaged("the snapshot key is missing".to_owned()))?;
        let snapshot: Value = serde_json::from_str(&snapshot)
            .map_err(|e| damaged(format!("the snapshot is not valid JSON: {e}")))?;
        let snapshot_version = number(&fields, "snap_version").map_err(&damaged)?;
        let mut deltas = Vec::with_capacity(entries.len());
        for entry in &entries {
            let parsed = entry.split_once(' ').and_then(|(v, d)| {
                Some((
                    v.parse::<u64>().ok()?,
                    serde_json::from_str::<Delta>(d).ok()?,
                ))
            });
            deltas.push(parsed.ok_or_else(|| damaged("a log entry is not valid".to_owned()))?);
        }
        Ok(Some((
            fields,
            SessionLog {
                snapshot_version,
                snapshot,
                deltas,
            },
        )))
    }
}

/// The hash field `name` as a number (`Err`: what is wrong with it).
fn number<T: std::str::FromStr>(
    fields: &HashMap<String, String>,
    name: &str,
) -> std::result::Result<T, String> {
    let raw = fields
        .get(name)
        .ok_or_else(|| format!("the field {name} is missing"))?;
    raw.parse()
        .map_err(|_| format!("the field {name} is not a number: {raw:?}"))
}

#[async_trait]
impl SessionStore for RedisStore {
    async fn create(&self, record: &SessionRecord) -> Result<()> {
        match self.put(&self.inner.create, record).await? {
            ::redis::Value::Int(1) => Ok(()),
            _ => Err(Error::new(
                ErrorKind::Store,
                "a session with this id already exists",
            )),
        }
    }

    async fn save(&self, record: &SessionRecord) -> Result<()> {
        match self.put(&self.inner.save, record).await? {
            ::redis::Value::Int(1) => Ok(()),
            other => {
                let stored = match &other {
                    ::redis::Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
                    ::redis::Value::SimpleString(s) => s.clone(),
                    v => format!("{v:?}"),
                };
                let stored = stored.strip_prefix("conflict ").unwrap_or(&stored);
                Err(Error::conflict(format!(
                    "save of version {} refused: the store holds version {stored}",
                    record.version
                )))
            }
        }
    }

    async fn append(&self, change: Append<'_>) -> Result<()> {
        let r = change.record();
        let Some(base) = change.base_version() else {
            return Err(Error::conflict(
                "an append of version 0 refused: it has no version before it",
            ));
        };
        let delta =
            serde_json::to_string(change.delta()).map_err(|e| Error::store("redis: delta", e))?;
        let applied =
            serde_json::to_string(&r.applied).map_err(|e| Error::store("redis: applied", e))?;
        let frame = change.frame();
        let o = &self.inner.opts;
        let nonce = self.nonce();
        self.add_bytes(delta.len() + applied.len() + frame.map_or(0, str::len) + 100);
        let mut inv = self.inner.append.prepare_invoke();
        let keys = self.keys(&r.id);
        for k in &keys {
            inv.key(k);
        }
        inv.key(self.owner_key(&r.id));
        inv.arg(r.id.to_string())
            .arg(base)
            .arg(r.version)
            .arg(r.seq)
            .arg(r.generation)
            .arg(r.epoch)
            .arg(r.last_access_ms)
            .arg(r.expires_ms)
            .arg(applied)
            .arg(delta)
            .arg(frame.unwrap_or(""))
            .arg(if frame.is_some() { "1" } else { "0" })
            .arg(o.frames_kept)
            .arg(self.deadline(r.expires_ms))
            .arg(o.snapshot_bytes)
            .arg(o.snapshot_deltas)
            .arg(self.me())
            .arg(self.frames_channel(&r.id))
            .arg(cluster::OWNER_TTL_MS)
            .arg(&nonce);
        let answer: String = self.invoke("appending", &inv).await?;
        match answer.as_str() {
            "ok" => {}
            "ok snapshot" => {
                // The append stands whatever happens here: a failed
                // snapshot leaves a longer log.
                if let Err(e) = self.snapshot(&keys, r).await {
                    tracing::warn!(sid = %r.id.short(), error = %e, "redis: snapshot not written");
                }
            }
            "none" => return change.check(None),
            other if other.starts_with("owner ") => {
                return Err(Error::conflict(format!(
                    "append refused: instance {} owns this session now",
                    &other[6..]
                )));
            }
            other => {
                // `conflict <stored version> <its writer's nonce>`.
                let mut said = other.strip_prefix("conflict ").unwrap_or("").split(' ');
                let stored = said.next().and_then(|v| v.parse::<u64>().ok());
                if stored == Some(r.version) && said.next() == Some(nonce.as_str()) {
                    // The first try ran; its answer was lost with the
                    // connection (see `run`).
                    tracing::debug!(sid = %r.id.short(), "redis: an append found its own first try");
                } else {
                    change.check(stored)?;
                    return Err(Error::conflict(format!(
                        "append refused: unexpected answer {other:?}"
                    )));
                }
            }
        }
        self.inner.stats.appends.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    async fn load(&self, id: &SessionId) -> Result<Option<SessionRecord>> {
        let Some((f, log)) = self.read(id).await? else {
            return Ok(None);
        };
        let damaged =
            |what: String| Error::new(ErrorKind::Store, format!("redis: session {id}: {what}"));
        let version: u64 = number(&f, "version").map_err(&damaged)?;
        let last = log.deltas.last().map_or(log.snapshot_version, |d| d.0);
        if last != version {
            return Err(damaged(format!(
                "its log ends at version {last}, its record says {version}"
            )));
        }
        let data = log.replay()?;
        let applied = serde_json::from_str(f.get("applied").map_or("[]", String::as_str))
            .map_err(|e| damaged(format!("the applied events are not valid: {e}")))?;
        Ok(Some(SessionRecord {
            id: *id,
            template: f
                .get("template")
                .ok_or_else(|| damaged("the field template is missing".into()))?
                .as_str()
                .into(),
            data,
            seq: number(&f, "seq").map_err(&damaged)?,
            version,
            generation: number(&f, "generation").map_err(&damaged)?,
            created_ms: number(&f, "created_ms").map_err(&damaged)?,
            last_access_ms: number(&f, "last_access_ms").map_err(&damaged)?,
            expires_ms: number(&f, "expires_ms").map_err(&damaged)?,
            epoch: number(&f, "epoch").map_err(&damaged)?,
            applied,
        }))
    }

    async fn touch(&self, id: &SessionId, last_access_ms: u64, expires_ms: u64) -> Result<bool> {
        let mut inv = self.inner.touch.prepare_invoke();
        for k in self.keys(id) {
            inv.key(k);
        }
        inv.arg(id.to_string())
            .arg(last_access_ms)
            .arg(expires_ms)
            .arg(self.deadline(expires_ms));
        self.add_bytes(60);
        let n: i64 = self.invoke("touching a session", &inv).await?;
        Ok(n == 1)
    }

    async fn delete(&self, id: &SessionId) -> Result<bool> {
        let mut inv = self.inner.delete.prepare_invoke();
        for k in self.keys(id) {
            inv.key(k);
        }
        inv.key(self.owner_key(id)).key(self.groups_key(id));
        inv.arg(id.to_string());
        let n: i64 = self.invoke("deleting a session", &inv).await?;
        Ok(n > 0)
    }

    async fn list_expired(&self, now_ms: u64, limit: usize) -> Result<Vec<SessionId>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let [.., expiry] = self.keys(&SessionId::from_bytes([0; 16]));
        let key = &expiry;
        let members: Vec<String> = self
            .run("listing expired sessions", move |mut c| async move {
                ::redis::cmd("ZRANGEBYSCORE")
                    .arg(key)
                    .arg("-inf")
                    .arg(now_ms)
                    .arg("LIMIT")
                    .arg(0)
                    .arg(limit.min(i64::MAX as usize))
                    .query_async(&mut c)
                    .await
            })
            .await?;
        Ok(members
            .iter()
            .filter_map(|m| match m.parse::<SessionId>() {
                Ok(id) => Some(id),
                Err(_) => {
                    tracing::warn!(key = %expiry, "redis: a member of the expiry set is not a session id; skipped");
                    None
                }
            })
            .collect())
    }

    async fn count(&self) -> Result<usize> {
        let [.., expiry] = self.keys(&SessionId::from_bytes([0; 16]));
        let key = &expiry;
        self.run("counting sessions", move |mut c| async move {
            ::redis::cmd("ZCARD").arg(key).query_async(&mut c).await
        })
        .await
    }

    async fn frames(&self, id: &SessionId, after_seq: u64) -> Result<Vec<(u64, String)>> {
        let [.., frames, _] = self.keys(id);
        let key = &frames;
        let kept: Vec<String> = self
            .run("reading frames", move |mut c| async move {
                ::redis::cmd("LRANGE")
                    .arg(key)
                    .arg(0)
                    .arg(-1)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        let mut out = Vec::new();
        for entry in kept {
            let (seq, frame) = entry
                .split_once(' ')
                .and_then(|(s, f)| Some((s.parse::<u64>().ok()?, f)))
                .ok_or_else(|| {
                    Error::new(
                        ErrorKind::Store,
                        format!("redis: session {id}: a kept frame is not valid"),
                    )
                })?;
            if seq > after_seq {
                out.push((seq, frame.to_owned()));
            }
        }
        Ok(out)
    }
}

impl RedisStore {
    async fn snapshot(&self, keys: &[String; 5], r: &SessionRecord) -> Result<()> {
        let data = serde_json::to_string(&r.data).map_err(|e| Error::store("redis: data", e))?;
        self.add_bytes(data.len() + 20);
        let mut inv = self.inner.snapshot.prepare_invoke();
        inv.key(&keys[0])
            .key(&keys[1])
            .key(&keys[2])
            .arg(r.version)
            .arg(data);
        let n: i64 = self.invoke("writing a snapshot", &inv).await?;
        if n == 1 {
            self.inner.stats.snapshots.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn urls_are_shown_without_passwords() {
        assert_eq!(redact("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
        assert_eq!(
            redact("redis://:hunter2@127.0.0.1:6379/2"),
            "redis://:***@127.0.0.1:6379/2"
        );
        assert_eq!(
            redact("redis://app:hunter2@h:1?protocol=resp3"),
            "redis://app:***@h:1"
        );
        assert_eq!(
            redact("redis+unix:///run/redis.sock?pass=hunter2"),
            "redis+unix:///run/redis.sock"
        );
        assert_eq!(redact("hunter2"), "(not a URL)");
    }
}
