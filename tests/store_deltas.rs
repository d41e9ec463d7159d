//! The store's delta path: every render hands the store its data delta
//! (`SessionStore::append`). Deltas replayed on the first snapshot give the
//! session's data (a property test over random changes through `render`,
//! `edit` and `update`); a change the page does not show is stored too; a
//! failed or refused append undoes the render and sends nothing; a store
//! that keeps the default `append` still passes the conformance suite.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use minijinja::Environment;
use proptest::prelude::*;
use serde_json::{Value as Json, json};
use statetemplate::fragment::{At, Delta};
use statetemplate::store::{Append, MemoryStore, SessionRecord, SessionStore, conformance};
use statetemplate::token::KeyRing;
use statetemplate::{ErrorKind, Result, SessionEvent, SessionId, StateTemplate};

/// Reads `title`, `count` and `items`; never `hidden` or `extra`.
const PAGE: &str = "<h1>{{ title }}</h1><p>{{ count }}</p>\
<ul>{% for t in items %}<li class=\"{{ 'done' if t.done else 'open' }}\">{{ t.text }}</li>{% endfor %}</ul>";

fn engine(store: Arc<dyn SessionStore>) -> StateTemplate {
    engine_with(store, KeyRing::generate().unwrap())
}

fn engine_with(store: Arc<dyn SessionStore>, keys: KeyRing) -> StateTemplate {
    let mut env = Environment::new();
    env.add_template("page.html", PAGE).unwrap();
    StateTemplate::builder(env)
        .keys(keys)
        .store(store)
        .build()
        .unwrap()
}

/// A memory store that logs every append it accepted (the delta as JSON,
/// as a log store would write it), and can be made to fail.
#[derive(Debug, Default)]
struct Recording {
    inner: MemoryStore,
    fail: AtomicBool,
    appended: Mutex<Vec<(u64, String)>>,
}

impl Recording {
    /// The deltas appended so far, read back from their JSON.
    fn deltas(&self) -> Vec<(u64, Delta)> {
        let log = self.appended.lock().unwrap();
        log.iter()
            .map(|(v, d)| (*v, serde_json::from_str(d).unwrap()))
            .collect()
    }
}

#[async_trait]
impl SessionStore for Recording {
    async fn create(&self, r: &SessionRecord) -> Result<()> {
        self.inner.create(r).await
    }
    async fn save(&self, r: &SessionRecord) -> Result<()> {
        self.inner.save(r).await
    }
    async fn append(&self, change: Append<'_>) -> Result<()> {
        if self.fail.load(Ordering::SeqCst) {
            return Err(statetemplate::Error::store(
                "disk full",
                std::io::Error::other("disk full"),
            ));
        }
        self.inner.append(change).await?;
        let wire = serde_json::to_string(change.delta()).unwrap();
        self.appended
            .lock()
            .unwrap()
            .push((change.record().version, wire));
        Ok(())
    }
    async fn load(&self, id: &SessionId) -> Result<Option<SessionRecord>> {
        self.inner.load(id).await
    }
    async fn touch(&self, id: &SessionId, a: u64, e: u64) -> Result<bool> {
        self.inner.touch(id, a, e).await
    }
    async fn delete(&self, id: &SessionId) -> Result<bool> {
        self.inner.delete(id).await
    }
    async fn list_expired(&self, now: u64, limit: usize) -> Result<Vec<SessionId>> {
        self.inner.list_expired(now, limit).await
    }
    async fn count(&self) -> Result<usize> {
        self.inner.count().await
    }
}

/// A store written before `append` existed: everything but `append`
/// forwarded, so the trait's default implementation runs.
#[derive(Debug, Default)]
struct Legacy(MemoryStore);

#[async_trait]
impl SessionStore for Legacy {
    async fn create(&self, r: &SessionRecord) -> Result<()> {
        self.0.create(r).await
    }
    async fn save(&self, r: &SessionRecord) -> Result<()> {
        self.0.save(r).await
    }
    async fn load(&self, id: &SessionId) -> Result<Option<SessionRecord>> {
        self.0.load(id).await
    }
    async fn touch(&self, id: &SessionId, a: u64, e: u64) -> Result<bool> {
        self.0.touch(id, a, e).await
    }
    async fn delete(&self, id: &SessionId) -> Result<bool> {
        self.0.delete(id).await
    }
    async fn list_expired(&self, now: u64, limit: usize) -> Result<Vec<SessionId>> {
        self.0.list_expired(now, limit).await
    }
    async fn count(&self) -> Result<usize> {
        self.0.count().await
    }
}

#[tokio::test]
async fn a_store_with_the_default_append_passes_the_conformance_suite() {
    conformance::run(Arc::new(Legacy::default())).await;
}

fn json_of(v: &minijinja::Value) -> Json {
    serde_json::to_value(v).unwrap()
}

fn first_data() -> Json {
    json!({
        "title": "Tasks",
        "count": 0,
        "items": [{"id": 1, "text": "milk", "done": false}],
        "hidden": {"notes": ["a"], "flag": false},
    })
}

#[tokio::test]
async fn a_change_the_page_does_not_show_is_appended_and_survives_a_restore() {
    let store = Arc::new(Recording::default());
    let keys = KeyRing::generate().unwrap();
    let engine = engine_with(store.clone(), keys.clone());
    let d0 = first_data();
    let init = engine.new_session("page.html", &d0).await.unwrap();
    let s = engine
        .get_session(&init.session_id.to_string(), &init.token)
        .await
        .unwrap();
    let (_, mut sub) = s.join().await.unwrap();
    let mut d1 = d0.clone();
    d1["hidden"]["flag"] = json!(true);
    assert_eq!(s.render(&d1).await.unwrap(), 0, "the page did not change");
    let rec = store.load(&s.id()).await.unwrap().unwrap();
    assert_eq!(json_of(&rec.data), d1, "the store has the hidden change");
    assert_eq!((rec.version, rec.seq), (1, 0));
    assert_eq!(store.deltas().len(), 1);
    // Identical data: nothing appended.
    assert_eq!(s.render(&d1).await.unwrap(), 0);
    assert_eq!(store.deltas().len(), 1, "identical data appends nothing");
    // A visible change: its frame is the first thing the subscriber gets.
    let mut d2 = d1.clone();
    d2["count"] = json!(1);
    assert_eq!(s.render(&d2).await.unwrap(), 1);
    let Some(SessionEvent::Patch(p)) = sub.recv().await else {
        panic!()
    };
    assert_eq!(p.seq(), 1, "the hidden change sent no frame");
    // Another instance restores the session from the record, hidden data
    // included, and appends after the record's version.
    drop(sub);
    engine.shutdown().await;
    let other = engine_with(store.clone(), keys);
    let s = other
        .get_session(&init.session_id.to_string(), &init.token)
        .await
        .unwrap();
    assert_eq!(s.data::<Json>().await.unwrap(), d2);
    assert_eq!(s.seq().await, 1);
    let mut d3 = d2.clone();
    d3["hidden"]["notes"] = json!([]);
    s.render(&d3).await.unwrap();
    let rec = store.load(&init.session_id).await.unwrap().unwrap();
    assert_eq!(json_of(&rec.data), d3);
    assert_eq!((rec.version, rec.seq), (3, 1));
}

#[tokio::test]
async fn a_failed_append_undoes_the_render_and_sends_nothing() {
    let store = Arc::new(Recording::default());
    let engine = engine(store.clone());
    let d0 = first_data();
    let init = engine.new_session("page.html", &d0).await.unwrap();
    let s = engine
        .get_session(&init.session_id.to_string(), &init.token)
        .await
        .unwrap();
    let (_, mut sub) = s.join().await.unwrap();
    store.fail.store(true, Ordering::SeqCst);
    // A change the page shows, and one it does not: both are undone.
    let mut shown = d0.clone();
    shown["title"] = json!("changed");
    let mut hidden = d0.clone();
    hidden["hidden"]["notes"] = json!(["a", "b"]);
    for (d, what) in [(&shown, "shown"), (&hidden, "hidden")] {
        let e = s.render(d).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Store, "{what}");
        assert_eq!(s.data::<Json>().await.unwrap(), d0, "{what}: data undone");
        assert_eq!(s.seq().await, 0, "{what}");
        assert_eq!(s.html().await, init.html, "{what}: page undone");
    }
    let e = s
        .edit(|e| {
            e.push("hidden.notes", "c");
        })
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Store);
    assert_eq!(s.data::<Json>().await.unwrap(), d0, "edit undone");
    let rec = store.load(&s.id()).await.unwrap().unwrap();
    assert_eq!((json_of(&rec.data), rec.version), (d0.clone(), 0));
    store.fail.store(false, Ordering::SeqCst);
    // The next render diffs against the undone data: its delta is the
    // whole change, and the first frame the subscriber sees is this one.
    assert_eq!(s.render(&shown).await.unwrap(), 1);
    let Some(SessionEvent::Patch(p)) = sub.recv().await else {
        panic!()
    };
    assert_eq!(p.seq(), 1);
    assert_eq!(p.updates()[0].html, "changed");
    let deltas = store.deltas();
    assert_eq!(deltas.len(), 1, "only the successful render was appended");
    let replayed = deltas[0]
        .1
        .apply(&minijinja::Value::from(minijinja::value::Serde(&d0)))
        .unwrap();
    assert_eq!(json_of(&replayed), shown);
}

#[tokio::test]
async fn a_refused_append_undoes_the_render() {
    let store = Arc::new(MemoryStore::new());
    let engine = engine(store.clone());
    let d0 = first_data();
    let init = engine.new_session("page.html", &d0).await.unwrap();
    let s = engine
        .get_session(&init.session_id.to_string(), &init.token)
        .await
        .unwrap();
    let (_, mut sub) = s.join().await.unwrap();
    // Another writer moved the record on (another instance, say).
    let mut other = store.load(&s.id()).await.unwrap().unwrap();
    other.version += 1;
    store.save(&other).await.unwrap();
    let mut d1 = d0.clone();
    d1["count"] = json!(5);
    let e = s.render(&d1).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Conflict);
    assert_eq!(s.data::<Json>().await.unwrap(), d0);
    assert_eq!(s.seq().await, 0);
    assert_eq!(s.html().await, init.html);
    assert_eq!(
        store.load(&s.id()).await.unwrap().unwrap().version,
        1,
        "the other writer's record stays"
    );
    s.close().await.unwrap();
    assert!(sub.recv().await.is_none(), "nothing was sent");
}

/// One change to the data, and the way it reaches the session.
#[derive(Debug, Clone)]
enum Change {
    Title(String),
    Count(i64),
    Insert(usize, String),
    Remove(usize),
    Toggle(usize),
    Note(String),
    Flag(bool),
    Extra(Option<i64>),
    Same,
}

fn change() -> impl Strategy<Value = Change> {
    prop_oneof![
        "[a-z<&]{0,6}".prop_map(Change::Title),
        (-3i64..100).prop_map(Change::Count),
        (0usize..8, "[a-z]{1,5}").prop_map(|(i, t)| Change::Insert(i, t)),
        (0usize..8).prop_map(Change::Remove),
        (0usize..8).prop_map(Change::Toggle),
        "[a-z]{0,4}".prop_map(Change::Note),
        any::<bool>().prop_map(Change::Flag),
        proptest::option::of(0i64..5).prop_map(Change::Extra),
        Just(Change::Same),
    ]
}

/// Applies `c` to the model; returns what the session must be asked, as
/// an edit when one expresses it (`None`: send the whole data).
fn apply(model: &mut Json, c: &Change, next_id: &mut u64) -> Option<statetemplate::Edit> {
    let mut e = statetemplate::Edit::default();
    let items = model["items"].as_array_mut().unwrap();
    match c {
        Change::Title(t) => {
            model["title"] = json!(t);
            e.assign("title", t);
        }
        Change::Count(n) => {
            model["count"] = json!(n);
            e.set("count", n);
        }
        Change::Insert(i, t) => {
            *next_id += 1;
            let at = (*i).min(items.len());
            let item = json!({"id": *next_id, "text": t, "done": false});
            items.insert(at, item.clone());
            e.insert("items", At::Index(at), &item);
        }
        Change::Remove(i) => {
            if items.is_empty() {
                return None;
            }
            let it = items.remove(i % items.len());
            e.remove("items", it["id"].as_u64().unwrap());
        }
        Change::Toggle(i) => {
            if items.is_empty() {
                return None;
            }
            let n = items.len();
            let it = &mut items[i % n];
            let done = !it["done"].as_bool().unwrap();
            it["done"] = json!(done);
            e.update_item("items", it["id"].as_u64().unwrap(), "done", &done);
        }
        Change::Note(t) => {
            model["hidden"]["notes"]
                .as_array_mut()
                .unwrap()
                .push(json!(t));
            e.push("hidden.notes", t);
        }
        Change::Flag(b) => {
            model["hidden"]["flag"] = json!(b);
            e.set("hidden.flag", b);
        }
        Change::Extra(x) => {
            let m = model.as_object_mut().unwrap();
            match x {
                Some(x) => {
                    m.insert("extra".into(), json!(x));
                    e.assign("extra", x);
                }
                None => {
                    m.remove("extra")?;
                    e.unset("extra");
                }
            }
        }
        Change::Same => return None,
    }
    Some(e)
}

async fn run_changes(changes: &[(Change, u8)]) {
    let store = Arc::new(Recording::default());
    let engine = engine(store.clone());
    let mut model = first_data();
    let init = engine.new_session("page.html", &model).await.unwrap();
    let s = engine
        .get_session(&init.session_id.to_string(), &init.token)
        .await
        .unwrap();
    let first = store.load(&s.id()).await.unwrap().unwrap().data;
    let mut next_id = 1;
    for (c, how) in changes {
        let edit = apply(&mut model, c, &mut next_id);
        match (edit, how % 3) {
            (Some(e), 0) => {
                s.edit(move |x| *x = e).await.unwrap();
            }
            (_, 1) => {
                let want = model.clone();
                s.update(move |d: &mut Json| {
                    *d = want;
                    Ok(())
                })
                .await
                .unwrap();
            }
            _ => {
                s.render(&model).await.unwrap();
            }
        }
    }
    let now: Json = s.data().await.unwrap();
    assert_eq!(now, model, "the session holds the model's data");
    let deltas = store.deltas();
    let versions: Vec<u64> = deltas.iter().map(|(v, _)| *v).collect();
    assert_eq!(
        versions,
        (1..=deltas.len() as u64).collect::<Vec<_>>(),
        "appends come in version order, one each"
    );
    let mut replayed = first;
    for (_, d) in &deltas {
        replayed = d.apply(&replayed).unwrap();
    }
    assert_eq!(
        json_of(&replayed),
        now,
        "the deltas the store received, applied to the first snapshot, give the session's data"
    );
    let rec = store.load(&s.id()).await.unwrap().unwrap();
    assert_eq!(json_of(&rec.data), now);
    assert_eq!(rec.version, deltas.len() as u64);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn deltas_replayed_on_the_first_snapshot_give_the_session_data(
        changes in proptest::collection::vec((change(), any::<u8>()), 1..24)
    ) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(run_changes(&changes));
    }
}
