//! Live navigation on the server: `st:params` runs `Live::on_params`,
//! `st:navigate` runs `Live::on_navigate`, and `Session::navigate` swaps the
//! page (one frame that gives a fresh render of the new template; the
//! record names it, so it is what a restore renders); a failed one changes
//! nothing.

use serde::{Deserialize, Serialize};
use serde_json::json;
use statetemplate::testing::TestClient;
use statetemplate::token::KeyRing;
use statetemplate::transport::Params;
use statetemplate::{Error, ErrorKind, EventCtx, Live, StateTemplate};

#[derive(Default, Serialize, Deserialize)]
struct List {
    sort: String,
    page: u32,
}

async fn app(
    store: Option<statetemplate::store::SqliteStore>,
    keys: KeyRing,
) -> (StateTemplate, Live) {
    let mut env = minijinja::Environment::new();
    env.add_template(
        "list.html",
        "<p>sort {{ sort }}, page {{ page }}</p><a href=\"/item/1\" st-navigate>one</a>",
    )
    .unwrap();
    env.add_template(
        "item.html",
        "<h1>{{ name }}</h1><p>{% for t in tags %}<i>{{ t }}</i>{% endfor %}</p>",
    )
    .unwrap();
    env.add_template("broken.html", "{{ name.first.second }}")
        .unwrap();
    let mut b = StateTemplate::builder(env).keys(keys);
    if let Some(s) = store {
        b = b.store(s);
    }
    let engine = b.build().unwrap();
    let live = Live::new(engine.clone())
        .on_params(|l: &mut List, p: Params| {
            l.sort = p.get("sort").unwrap_or("name").to_owned();
            l.page = p.get("page").and_then(|v| v.parse().ok()).unwrap_or(1);
            Ok(())
        })
        .on_navigate(|ctx: EventCtx, p: Params| async move {
            match p.path.as_str() {
                "/item/1" => {
                    ctx.session
                        .navigate(
                            "item.html",
                            &json!({"name": "Pen", "tags": ["blue", "fine"]}),
                        )
                        .await?
                }
                "/broken" => {
                    ctx.session
                        .navigate("broken.html", &json!({"name": 1}))
                        .await?
                }
                "/missing" => ctx.session.navigate("nope.html", &json!({})).await?,
                _ => return Err(Error::user("There is no such page.")),
            };
            Ok(())
        });
    (engine, live)
}

#[tokio::test]
async fn params_and_navigation_drive_the_page() {
    let (engine, live) = app(None, KeyRing::generate().unwrap()).await;
    let initial = engine
        .new_session(
            "list.html",
            &List {
                sort: "name".into(),
                page: 1,
            },
        )
        .await
        .unwrap();
    let mut tab = TestClient::connect(&live, &initial).await.unwrap();
    let mut other = TestClient::connect(&live, &initial).await.unwrap();
    tab.send(
        "st:params",
        json!({"path": "/", "query": {"sort": "price", "page": "3"}}),
    )
    .await
    .unwrap();
    assert_eq!(tab.text(), "sort price, page 3 one");
    tab.send("st:navigate", json!({"path": "/item/1", "query": {}}))
        .await
        .unwrap();
    let fresh = engine
        .fragments()
        .render_html(
            "item.html",
            &json!({"name": "Pen", "tags": ["blue", "fine"]}),
        )
        .unwrap();
    assert_eq!(
        tab.html(),
        fresh,
        "the swap frame gives a fresh render of the new page"
    );
    while other.text() != tab.text() {
        assert!(
            other
                .next_frame(std::time::Duration::from_secs(2))
                .await
                .unwrap(),
            "the other tab swaps too"
        );
    }
    assert_eq!(other.html(), fresh);
    let session = engine
        .get_session(&initial.session_id.to_string(), &initial.token)
        .await
        .unwrap();
    assert_eq!(&*session.template(), "item.html");
    assert_eq!(session.fresh_render().await.unwrap().1, fresh);
    // The new page diffs as usual.
    session
        .render(&json!({"name": "Pen", "tags": ["blue", "fine", "new"]}))
        .await
        .unwrap();
    assert!(
        tab.next_frame(std::time::Duration::from_secs(2))
            .await
            .unwrap()
    );
    assert!(
        tab.last_frame().unwrap().len() < 40,
        "{}",
        tab.last_frame().unwrap()
    );
    assert_eq!(tab.html(), session.fresh_render().await.unwrap().1);
    // Refused, failing and unknown navigations change nothing.
    let before = tab.html();
    let e = tab
        .send("st:navigate", json!({"path": "/nowhere"}))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::User);
    assert!(
        tab.send("st:navigate", json!({"path": "/broken"}))
            .await
            .is_err()
    );
    assert!(
        tab.send("st:navigate", json!({"path": "/missing"}))
            .await
            .is_err()
    );
    assert_eq!(tab.html(), before);
    assert_eq!(&*session.template(), "item.html");
    assert_eq!(
        tab.send("st:params", json!({"path": "/", "query": {"page": "x"}}))
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::Handler,
        "item data is not a List: a server-side error"
    );
    tab.close().await;
    other.close().await;
}

#[tokio::test]
async fn a_navigated_session_is_restored_as_the_page_it_went_to() {
    let dir = std::env::temp_dir().join(format!("st-nav-{}.db", std::process::id()));
    let _ = std::fs::remove_file(&dir);
    let keys = KeyRing::generate().unwrap();
    let (engine, live) = app(
        Some(statetemplate::store::SqliteStore::open(&dir).unwrap()),
        keys.clone(),
    )
    .await;
    let initial = engine
        .new_session("list.html", &List::default())
        .await
        .unwrap();
    let mut tab = TestClient::connect(&live, &initial).await.unwrap();
    tab.send("st:navigate", json!({"path": "/item/1"}))
        .await
        .unwrap();
    tab.close().await;
    engine.shutdown().await;
    drop((engine, live));
    let (engine, live) = app(
        Some(statetemplate::store::SqliteStore::open(&dir).unwrap()),
        keys,
    )
    .await;
    let back = TestClient::connect(&live, &initial).await.unwrap();
    assert_eq!(back.text(), "Pen blue fine");
    let s = engine
        .get_session(&initial.session_id.to_string(), &initial.token)
        .await
        .unwrap();
    assert_eq!(&*s.template(), "item.html");
    drop(back);
    engine.shutdown().await;
    let _ = std::fs::remove_file(&dir);
}

#[test]
fn params_from_a_query_string() {
    let p = Params::from_query("/list", Some("?sort=price&q=blue%20ink&q=x+y&flag"));
    assert_eq!(p.path, "/list");
    assert_eq!(p.get("sort"), Some("price"));
    assert_eq!(p.get("q"), Some("x y"), "the last value wins");
    assert_eq!(p.get("flag"), Some(""));
    assert_eq!(
        Params::from_query("/", None),
        Params {
            path: "/".into(),
            ..Params::default()
        }
    );
}
