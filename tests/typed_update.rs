//! `Session::update` keeps the app's typed data between updates: it must
//! never act on a stale copy. Every other way the data changes (a whole
//! render, an edit, a failed update, a failed store write) is seen by the
//! next `update`.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use minijinja::Environment;
use serde::{Deserialize, Serialize};
use statetemplate::token::KeyRing;
use statetemplate::{Error, StateTemplate};

#[path = "common/flaky.rs"]
mod flaky;
use flaky::FlakyStore;

#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct Count {
    n: i64,
    log: Vec<String>,
}

fn engine(store: Arc<FlakyStore>) -> StateTemplate {
    let mut env = Environment::new();
    env.add_template(
        "c.html",
        "<p>{{ n }}</p><ul>{% for l in log %}<li>{{ l }}</li>{% endfor %}</ul>",
    )
    .unwrap();
    StateTemplate::builder(env)
        .keys(KeyRing::generate().unwrap())
        .store(store)
        .build()
        .unwrap()
}

#[tokio::test]
async fn the_kept_copy_never_goes_stale() {
    let store = Arc::new(FlakyStore::default());
    let engine = engine(store.clone());
    let first = Count { n: 0, log: vec![] };
    let init = engine.new_session("c.html", &first).await.unwrap();
    let s = engine
        .get_session(&init.session_id.to_string(), &init.token)
        .await
        .unwrap();
    let inc = |tag: &'static str| {
        move |c: &mut Count| {
            c.n += 1;
            c.log.push(tag.into());
            Ok(())
        }
    };
    s.update(inc("a")).await.unwrap();
    s.update(inc("b")).await.unwrap();
    assert_eq!(
        s.data::<Count>().await.unwrap(),
        Count {
            n: 2,
            log: vec!["a".into(), "b".into()]
        }
    );
    // A whole render in between: the next update starts from it.
    s.render(&Count {
        n: 10,
        log: vec!["r".into()],
    })
    .await
    .unwrap();
    s.update(inc("c")).await.unwrap();
    assert_eq!(
        s.data::<Count>().await.unwrap(),
        Count {
            n: 11,
            log: vec!["r".into(), "c".into()]
        }
    );
    // An edit in between.
    s.edit(|e| {
        e.set("n", &100);
    })
    .await
    .unwrap();
    s.update(inc("d")).await.unwrap();
    assert_eq!(s.data::<Count>().await.unwrap().n, 101);
    // A handler that fails after changing its copy: nothing of it stays.
    let err = s
        .update(|c: &mut Count| {
            c.n = -5;
            Err(Error::protocol("no"))
        })
        .await;
    assert!(err.is_err());
    s.update(inc("e")).await.unwrap();
    assert_eq!(s.data::<Count>().await.unwrap().n, 102);
    // A failed store write undoes the render, and the kept copy with it.
    store.fail.store(true, Ordering::SeqCst);
    assert!(s.update(inc("lost")).await.is_err());
    store.fail.store(false, Ordering::SeqCst);
    s.update(inc("f")).await.unwrap();
    let c = s.data::<Count>().await.unwrap();
    assert_eq!(c.n, 103);
    assert!(!c.log.contains(&"lost".to_string()), "{c:?}");
    // The page shows exactly that data.
    let (resync, _) = s.join().await.unwrap();
    assert!(resync.html().contains(">103<"), "{}", resync.html());
}
