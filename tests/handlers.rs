//! What handlers get and give, driven through the real connection loop by
//! the app-level test client: the app's state, async updates, the app's
//! own error types, replies, pushed events and flash messages.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value as Json, json};
use statetemplate::testing::TestClient;
use statetemplate::{ErrorKind, EventCtx, HandlerError, Live, StateTemplate};

#[derive(Default, Serialize, Deserialize)]
struct Shop {
    stock: u32,
    sold: u32,
    note: String,
}

/// The app's state: what every handler shares.
struct Warehouse {
    restocks: AtomicU64,
    delay: Duration,
}

#[derive(Debug)]
enum ShopError {
    SoldOut,
    Ledger(std::io::Error),
}

impl std::fmt::Display for ShopError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ShopError::SoldOut => f.write_str("Sold out, sorry"),
            ShopError::Ledger(e) => write!(f, "the ledger failed: {e}"),
        }
    }
}

impl std::error::Error for ShopError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ShopError::Ledger(e) => Some(e),
            ShopError::SoldOut => None,
        }
    }
}

impl HandlerError for ShopError {
    fn user_message(&self) -> Option<String> {
        matches!(self, ShopError::SoldOut).then(|| self.to_string())
    }
}

fn sell(shop: &mut Shop) -> Result<(), ShopError> {
    if shop.stock == 0 {
        return Err(ShopError::SoldOut);
    }
    shop.stock -= 1;
    shop.sold += 1;
    Ok(())
}

const PAGE: &str = "<p>stock {{ stock }}</p><p>sold {{ sold }}</p><p>{{ note }}</p>";

async fn app() -> (StateTemplate, Live) {
    let mut env = minijinja::Environment::new();
    env.add_template("shop.html", PAGE).unwrap();
    let engine = StateTemplate::builder(env).build().unwrap();
    let live = Live::new(engine.clone())
        .with_state(Warehouse {
            restocks: AtomicU64::new(0),
            delay: Duration::from_millis(20),
        })
        .with_state("the shop's name".to_owned())
        .on_update("sell", |shop: &mut Shop, _: Json| Ok(sell(shop)?))
        .on_update("ledger", |_: &mut Shop, _: Json| {
            Err(ShopError::Ledger(std::io::Error::other("disk full")).into())
        })
        // Async, with the app's state: waits (a database, another service)
        // while the session's other updates wait for it.
        .on_update_async(
            "restock",
            |mut shop: Shop, n: u32, ctx: EventCtx| async move {
                let w = ctx.state::<Warehouse>()?;
                tokio::time::sleep(w.delay).await;
                w.restocks.fetch_add(1, Ordering::SeqCst);
                shop.stock += n;
                shop.note = format!("restocked by {}", ctx.state::<String>()?);
                Ok(shop)
            },
        )
        .on("count", |ctx: EventCtx| async move {
            let n = ctx.state::<Warehouse>()?.restocks.load(Ordering::SeqCst);
            ctx.reply(&json!({"restocks": n}))?;
            Ok(())
        })
        .on("missing", |ctx: EventCtx| async move {
            ctx.state::<Vec<u8>>()?;
            Ok(())
        })
        .on("notify", |ctx: EventCtx| async move {
            ctx.session.push("stock-low", &json!({"left": 1}))?;
            ctx.session.flash("success", "Saved")?;
            Ok(())
        });
    (engine, live)
}

#[tokio::test]
async fn handlers_share_the_apps_state_and_update_asynchronously() {
    let (engine, live) = app().await;
    let initial = engine
        .new_session("shop.html", &Shop::default())
        .await
        .unwrap();
    let mut page = TestClient::connect(&live, &initial).await.unwrap();
    assert_eq!(page.text(), "stock 0 sold 0");
    page.send("restock", 3).await.unwrap();
    assert_eq!(page.text(), "stock 3 sold 0 restocked by the shop's name");
    // Two tabs at once: async updates of one session never lose each
    // other's changes (each runs with the session's lock).
    let mut other = TestClient::connect(&live, &initial).await.unwrap();
    let (a, b) = tokio::join!(page.send("restock", 1), other.send("restock", 10));
    a.unwrap();
    b.unwrap();
    let session = engine
        .get_session(&initial.session_id.to_string(), &initial.token)
        .await
        .unwrap();
    let shop: Shop = session.data().await.unwrap();
    assert_eq!(shop.stock, 14, "both restocks applied");
    assert!(other.next_frame(Duration::from_secs(2)).await.is_ok());
    assert_eq!(page.html(), other.html(), "both tabs show the same page");
    let reply = page.send("count", ()).await.unwrap();
    assert_eq!(reply, Some(json!({"restocks": 3})));
    assert_eq!(page.send("sell", ()).await.unwrap(), None, "no reply value");
    page.close().await;
    other.close().await;
}

#[tokio::test]
async fn the_apps_own_errors_reach_the_page_as_they_should() {
    let (engine, live) = app().await;
    let initial = engine
        .new_session(
            "shop.html",
            &Shop {
                stock: 1,
                ..Shop::default()
            },
        )
        .await
        .unwrap();
    let mut page = TestClient::connect(&live, &initial).await.unwrap();
    page.send("sell", ()).await.unwrap();
    let before = page.html();
    // An error the person should read: its message, as a user error.
    let e = page.send("sell", ()).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::User);
    assert_eq!(e.to_string(), "Sold out, sorry");
    // An internal one: logged; the page learns only that it failed.
    let e = page.send("ledger", ()).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Handler);
    assert!(!e.to_string().contains("disk"), "{e}");
    // State nobody added: a clear error in the log, a generic one shown.
    let e = page.send("missing", ()).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Handler);
    // A payload of the wrong shape and an unknown event: protocol errors.
    let e = page.send("restock", "many").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Protocol);
    assert!(e.to_string().contains("bad payload"), "{e}");
    let e = page.send("nope", ()).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Protocol);
    assert_eq!(page.html(), before, "no failed event changed the page");
    assert_eq!(page.text(), "stock 0 sold 1");
    page.close().await;
}

#[tokio::test]
async fn pushed_events_and_flash_messages_reach_every_tab() {
    let (engine, live) = app().await;
    let initial = engine
        .new_session("shop.html", &Shop::default())
        .await
        .unwrap();
    let mut a = TestClient::connect(&live, &initial).await.unwrap();
    let mut b = TestClient::connect(&live, &initial).await.unwrap();
    a.send("notify", ()).await.unwrap();
    let want = [
        ("stock-low".to_owned(), json!({"left": 1})),
        (
            "st:flash".to_owned(),
            json!({"kind": "success", "msg": "Saved"}),
        ),
    ];
    assert_eq!(a.pushes(), &want[..], "before the event's answer");
    // The other tab gets them too (nothing else comes to wait for).
    let _ = b.next_frame(Duration::from_millis(300)).await;
    assert_eq!(b.pushes(), &want[..]);
    // From outside a handler, to whoever is connected.
    let session = engine
        .get_session(&initial.session_id.to_string(), &initial.token)
        .await
        .unwrap();
    assert_eq!(session.push("tick", &3).unwrap(), 2);
    assert!(
        session.flash("loud", "x").is_err(),
        "flash kinds are checked"
    );
    assert!(session.push("", &1).is_err(), "names are checked");
    b.close().await;
    let _ = a.next_frame(Duration::from_millis(200)).await;
    assert_eq!(a.pushes().last().unwrap(), &("tick".to_owned(), json!(3)));
    a.close().await;
    // Pushes are not stored: a tab that joins later gets none of them.
    let c = TestClient::connect(&live, &initial).await.unwrap();
    assert!(c.pushes().is_empty());
}
