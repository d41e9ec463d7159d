//! Broadcasts between the instances of a [`Cluster`](crate::cluster::Cluster):
//! a Redis stream, `P` + `bcast`, rather than a pub/sub channel.
//!
//! Redis keeps no pub/sub message: an instance whose connection is down
//! when one is published (a network cut, Redis killing the client) never
//! gets it. A stream keeps its entries, so each instance reads from the
//! last entry it has seen, and a dropped connection costs a delay, not a
//! broadcast.
//!
//! - [`send`]: `XADD P bcast MAXLEN ~ 10000 * m <json>` (the stream keeps
//!   about the last 10,000 broadcasts; an instance cut off while more
//!   than that are sent misses the oldest).
//! - [`read`]: from where the stream stood when the instance started, in
//!   order, once each: `XREAD BLOCK` on a connection of its own (a blocked
//!   read would hold up every other command on a shared one), again from
//!   the last entry read after any error.

use std::time::Duration;

use ::redis::Value;
use ::redis::aio::MultiplexedConnection;

use super::RedisStore;
use crate::cluster::Broadcast;
use crate::{Error, Result};

/// How long one `XREAD` waits for entries.
const BLOCK_MS: u64 = 2000;
/// About how many broadcasts the stream keeps (`MAXLEN ~`).
const KEEP: u64 = 10_000;
/// How many entries one read takes at most.
const COUNT: u64 = 256;
/// The reader's connection name (`CLIENT SETNAME`).
const READER_NAME: &str = "statetemplate-broadcasts";

/// Appends broadcast `body` (JSON) to the stream `key`.
pub(super) async fn send(store: &RedisStore, key: &str, body: &str) -> Result<()> {
    let mut c = store.conn().await?;
    ::redis::cmd("XADD")
        .arg(key)
        .arg("MAXLEN")
        .arg("~")
        .arg(KEEP)
        .arg("*")
        .arg("m")
        .arg(body)
        .query_async::<Value>(&mut c)
        .await
        .map_err(|e| store.err("broadcasting", e))?;
    Ok(())
}

/// Reads the stream `key` while `alive()` holds, giving each broadcast
/// to `deliver`. `started` is called once the read position is fixed:
/// every broadcast appended after that is delivered.
pub(super) async fn read(
    store: RedisStore,
    key: String,
    alive: impl Fn() -> bool,
    deliver: impl Fn(Broadcast),
    started: impl FnOnce(),
) {
    let mut started = Some(started);
    let mut conn: Option<MultiplexedConnection> = None;
    let mut last: Option<String> = None;
    // Failed reads in a row: the wait before the next one doubles (100 ms
    // to 2 s), and only the first of an outage is logged as a warning.
    let mut failed = 0u32;
    while alive() {
        let step = read_once(&store, &key, &mut conn, &mut last, || {
            if let Some(f) = started.take() {
                f();
            }
        });
        match step.await {
            Ok(entries) => {
                failed = 0;
                for (id, body) in entries {
                    match serde_json::from_slice::<Broadcast>(&body) {
                        Ok(b) => deliver(b),
                        Err(_) => tracing::warn!(id, "redis: a broadcast is not valid; ignored"),
                    }
                }
            }
            Err(e) => {
                conn = None;
                if failed == 0 {
                    tracing::warn!(error = %e, "cluster: reading broadcasts; retrying");
                } else {
                    tracing::debug!(error = %e, failed, "cluster: reading broadcasts; retrying");
                }
                let wait = Duration::from_millis(100 << failed.min(4)).min(Duration::from_secs(2));
                failed = failed.saturating_add(1);
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// One read: the entries after `last` (fixing `last` first, at the end of
/// the stream, if it is not yet, and then calling `fixed`).
async fn read_once(
    store: &RedisStore,
    key: &str,
    conn: &mut Option<MultiplexedConnection>,
    last: &mut Option<String>,
    fixed: impl FnOnce(),
) -> Result<Vec<(String, Vec<u8>)>> {
    let c = match conn {
        Some(c) => c,
        None => {
            let o = &store.inner.opts;
            let config = ::redis::AsyncConnectionConfig::new()
                .set_connection_timeout(Some(o.connect_timeout))
                .set_response_timeout(Some(Duration::from_millis(BLOCK_MS) + o.response_timeout));
            let c = store
                .inner
                .client
                .get_multiplexed_async_connection_with_config(&config)
                .await
                .map_err(|e| store.err("reading broadcasts", e))?;
            let c = conn.insert(c);
            // Named, so that `CLIENT LIST` tells it from the store's.
            ::redis::cmd("CLIENT")
                .arg("SETNAME")
                .arg(READER_NAME)
                .query_async::<()>(c)
                .await
                .map_err(|e| store.err("reading broadcasts", e))?;
            c
        }
    };
    let from = match last {
        Some(id) => id.clone(),
        None => {
            // Where the stream ends now: this instance reads what comes
            // after it.
            let v: Value = ::redis::cmd("XREVRANGE")
                .arg(key)
                .arg("+")
                .arg("-")
                .arg("COUNT")
                .arg(1)
                .query_async(c)
                .await
                .map_err(|e| store.err("reading broadcasts", e))?;
            let id = entries(v)?
                .into_iter()
                .next()
                .map_or_else(|| "0-0".to_owned(), |(id, _)| id);
            let id = last.insert(id).clone();
            fixed();
            id
        }
    };
    let v: Value = ::redis::cmd("XREAD")
        .arg("COUNT")
        .arg(COUNT)
        .arg("BLOCK")
        .arg(BLOCK_MS)
        .arg("STREAMS")
        .arg(key)
        .arg(&from)
        .query_async(c)
        .await
        .map_err(|e| store.err("reading broadcasts", e))?;
    let got = match v {
        Value::Nil => Vec::new(),
        Value::Array(streams) => match streams.into_iter().next() {
            Some(Value::Array(s)) if s.len() == 2 => {
                entries(s.into_iter().nth(1).unwrap_or(Value::Nil))?
            }
            None => Vec::new(),
            Some(_) => return Err(bad("XREAD")),
        },
        _ => return Err(bad("XREAD")),
    };
    if let Some((id, _)) = got.last() {
        *last = Some(id.clone());
    }
    Ok(got)
}

/// The entries of an `XRANGE`-shaped reply: `[[id, [field, value, …]], …]`,
/// each with the value of its field `m`.
fn entries(v: Value) -> Result<Vec<(String, Vec<u8>)>> {
    let Value::Array(items) = v else {
        return match v {
            Value::Nil => Ok(Vec::new()),
            _ => Err(bad("an entry list")),
        };
    };
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let Value::Array(pair) = item else {
            return Err(bad("an entry"));
        };
        let mut pair = pair.into_iter();
        let (Some(Value::BulkString(id)), Some(Value::Array(fields))) = (pair.next(), pair.next())
        else {
            return Err(bad("an entry"));
        };
        let id = String::from_utf8(id).map_err(|_| bad("an entry id"))?;
        let mut body = None;
        let mut f = fields.into_iter();
        while let (Some(k), Some(v)) = (f.next(), f.next()) {
            if let (Value::BulkString(k), Value::BulkString(v)) = (k, v) {
                if k == b"m" {
                    body = Some(v);
                }
            }
        }
        out.push((id, body.unwrap_or_default()));
    }
    Ok(out)
}

fn bad(what: &str) -> Error {
    Error::new(
        crate::ErrorKind::Store,
        format!("redis: reading broadcasts: {what} of an unexpected shape"),
    )
}
