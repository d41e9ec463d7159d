//! A conformance suite every [`SessionStore`] must pass.
//!
//! Call [`run`] from a test of your store, on a store that nothing else uses
//! while it runs (it checks counts). It panics with a message naming the
//! failed property, like an assertion.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use std::sync::Arc;
//! use statetemplate::store::{MemoryStore, conformance};
//! conformance::run(Arc::new(MemoryStore::new())).await;
//! # }
//! ```

use std::sync::Arc;

use minijinja::Value;

use super::{SessionRecord, SessionStore};
use crate::ErrorKind;
use crate::session::SessionId;

/// A record with fresh id, distinctive data and the given expiry.
pub fn sample_record(expires_ms: u64) -> SessionRecord {
    let id = SessionId::generate().expect("OS random source");
    SessionRecord {
        id,
        template: Arc::from("page.html"),
        data: Value::from(minijinja::value::Serde(serde_json::json!({
            "owner": id.to_string(),
            "title": "Grüße, <b>&</b> \"quotes\"",
            "n": 42,
            "ratio": 1.5,
            "flag": true,
            "nothing": null,
            "rows": [{"id": 1, "text": "one"}, {"id": 2, "text": "two"}],
            "nested": {"a": {"b": [1, 2, 3]}},
        }))),
        seq: 7,
        generation: 1,
        created_ms: 1_700_000_000_000,
        last_access_ms: 1_700_000_000_500,
        expires_ms,
    }
}

/// Runs every check against `store`. Panics on the first failure.
pub async fn run(store: Arc<dyn SessionStore>) {
    create_load_delete(&*store).await;
    save_replaces(&*store).await;
    touch(&*store).await;
    expired_listing(&*store).await;
    concurrent(store.clone()).await;
}

async fn create_load_delete(store: &dyn SessionStore) {
    let before = store.count().await.expect("count");
    let r = sample_record(u64::MAX / 2);
    store.create(&r).await.expect("create");
    let loaded = store.load(&r.id).await.expect("load");
    assert_eq!(loaded.as_ref(), Some(&r), "load returns what create stored");
    assert_eq!(
        store.count().await.expect("count"),
        before + 1,
        "count after create"
    );
    let dup = store.create(&r).await;
    assert_eq!(
        dup.map_err(|e| e.kind()),
        Err(ErrorKind::Store),
        "creating an existing id fails with a Store error"
    );
    let other = sample_record(u64::MAX / 2);
    assert_eq!(
        store.load(&other.id).await.expect("load"),
        None,
        "unknown id loads None"
    );
    assert!(
        store.delete(&r.id).await.expect("delete"),
        "delete reports an existing record"
    );
    assert!(
        !store.delete(&r.id).await.expect("delete"),
        "second delete reports none"
    );
    assert_eq!(
        store.load(&r.id).await.expect("load"),
        None,
        "deleted record is gone"
    );
    assert_eq!(
        store.count().await.expect("count"),
        before,
        "count after delete"
    );
}

async fn save_replaces(store: &dyn SessionStore) {
    let mut r = sample_record(u64::MAX / 2);
    store.save(&r).await.expect("save inserts a new record");
    assert_eq!(store.load(&r.id).await.expect("load").as_ref(), Some(&r));
    r.seq = 8;
    r.generation = 2;
    r.data = Value::from(minijinja::value::Serde(
        serde_json::json!({"rows": [], "title": "changed"}),
    ));
    store.save(&r).await.expect("save replaces");
    assert_eq!(
        store.load(&r.id).await.expect("load").as_ref(),
        Some(&r),
        "save replaces data, seq and generation"
    );
    store.delete(&r.id).await.expect("delete");
}

async fn touch(store: &dyn SessionStore) {
    let r = sample_record(2_000);
    store.create(&r).await.expect("create");
    assert!(
        store.touch(&r.id, 1_500, 9_000).await.expect("touch"),
        "touch finds the record"
    );
    let t = store.load(&r.id).await.expect("load").expect("present");
    assert_eq!(
        (t.last_access_ms, t.expires_ms),
        (1_500, 9_000),
        "touch sets both times"
    );
    assert_eq!(t.data, r.data, "touch leaves the data");
    assert_eq!(t.seq, r.seq, "touch leaves the seq");
    let ghost = sample_record(0);
    assert!(
        !store.touch(&ghost.id, 1, 2).await.expect("touch"),
        "touch of unknown id"
    );
    assert_eq!(
        store.load(&ghost.id).await.expect("load"),
        None,
        "touch creates nothing"
    );
    store.delete(&r.id).await.expect("delete");
}

async fn expired_listing(store: &dyn SessionStore) {
    // Far in the past, so no other record of this run is listed between them.
    let base = 1_000u64;
    let recs: Vec<SessionRecord> = [30, 10, 20, 40, 1_000_000]
        .iter()
        .map(|d| sample_record(base + d))
        .collect();
    for r in &recs {
        store.create(r).await.expect("create");
    }
    let listed = store
        .list_expired(base + 30, 100)
        .await
        .expect("list_expired");
    let want: Vec<SessionId> = vec![recs[1].id, recs[2].id, recs[0].id];
    assert_eq!(
        listed, want,
        "expired = expires_ms <= now, oldest first, boundary included"
    );
    let limited = store
        .list_expired(base + 40, 2)
        .await
        .expect("list_expired");
    assert_eq!(limited, vec![recs[1].id, recs[2].id], "limit is respected");
    assert!(
        store
            .list_expired(base, 100)
            .await
            .expect("list_expired")
            .is_empty(),
        "nothing expired before the first expiry"
    );
    // Touching moves a record out of the expired set.
    store
        .touch(&recs[1].id, base + 30, base + 500)
        .await
        .expect("touch");
    let listed = store
        .list_expired(base + 30, 100)
        .await
        .expect("list_expired");
    assert_eq!(
        listed,
        vec![recs[2].id, recs[0].id],
        "a touched record is no longer expired"
    );
    for r in &recs {
        store.delete(&r.id).await.expect("delete");
    }
}

async fn concurrent(store: Arc<dyn SessionStore>) {
    let before = store.count().await.expect("count");
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut kept = Vec::new();
            for i in 0..25u64 {
                let mut r = sample_record(u64::MAX / 2);
                store.create(&r).await.expect("create");
                r.seq = i;
                store.save(&r).await.expect("save");
                if i % 5 == 0 {
                    store.delete(&r.id).await.expect("delete");
                } else {
                    kept.push(r);
                }
            }
            kept
        }));
    }
    let mut kept = Vec::new();
    for t in tasks {
        kept.extend(t.await.expect("task"));
    }
    assert_eq!(
        store.count().await.expect("count"),
        before + kept.len(),
        "concurrent creates and deletes are all accounted for"
    );
    for r in &kept {
        let got = store.load(&r.id).await.expect("load").expect("present");
        assert_eq!(&got, r, "each record keeps its own data under concurrency");
    }
    for r in &kept {
        store.delete(&r.id).await.expect("delete");
    }
}
