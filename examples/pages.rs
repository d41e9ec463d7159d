//! Several live pages and live navigation: a product list whose sort and
//! search live in the URL (links with `st-patch`: the URL changes, the page
//! re-renders, no reload), and a page per product reached with
//! `st-navigate` links, which swap the page over the same socket. Back and
//! forward work; a reload or a shared link renders the same page from the
//! URL.
//!
//! Run: `cargo run --example pages`, then open the URL it prints.

#[path = "common/mod.rs"]
mod common;

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Path, RawQuery};
use axum::response::{Html, IntoResponse};
use axum::routing::get;
use minijinja::Environment;
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use statetemplate::transport::Params;
use statetemplate::{Error, EventCtx, Live};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Product {
    id: u64,
    name: String,
    price: u32,
    stock: u32,
}

/// The app's state: the catalog every session reads.
#[derive(Clone)]
struct Catalog(Arc<Mutex<Vec<Product>>>);

impl Catalog {
    fn new() -> Catalog {
        let names = [
            "Fountain pen",
            "Ink, blue",
            "Ink, black",
            "Notebook",
            "Pencil",
            "Eraser",
            "Ruler",
            "Stapler",
            "Paper clips",
            "Sketchbook",
        ];
        let items = names
            .iter()
            .enumerate()
            .map(|(i, n)| Product {
                id: i as u64 + 1,
                name: (*n).to_owned(),
                price: 3 + (i as u32 * 7) % 20,
                stock: 5 + (i as u32 * 3) % 11,
            })
            .collect();
        Catalog(Arc::new(Mutex::new(items)))
    }

    /// The list page's data for a URL's parameters.
    fn list(&self, p: &Params) -> List {
        let q = p.get("q").unwrap_or("").trim().to_owned();
        let sort = match p.get("sort") {
            Some(s @ ("price" | "stock")) => s.to_owned(),
            _ => "name".to_owned(),
        };
        let all = self.0.lock().expect("lock");
        let needle = q.to_lowercase();
        let mut products: Vec<Product> = all
            .iter()
            .filter(|x| x.name.to_lowercase().contains(&needle))
            .cloned()
            .collect();
        match sort.as_str() {
            "price" => products.sort_by_key(|x| x.price),
            "stock" => products.sort_by_key(|x| x.stock),
            _ => products.sort_by(|a, b| a.name.cmp(&b.name)),
        }
        List {
            q,
            sort,
            total: all.len(),
            products,
        }
    }

    /// The template and data for a path, if it is one of the app's pages.
    fn route(&self, p: &Params) -> Option<(&'static str, Json)> {
        if p.path == "/" {
            return Some(("products.html", serde_json::to_value(self.list(p)).ok()?));
        }
        let id: u64 = p.path.strip_prefix("/item/")?.parse().ok()?;
        let product = self
            .0
            .lock()
            .expect("lock")
            .iter()
            .find(|x| x.id == id)?
            .clone();
        Some((
            "product.html",
            serde_json::to_value(Detail { product }).ok()?,
        ))
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct List {
    q: String,
    sort: String,
    total: usize,
    products: Vec<Product>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Detail {
    product: Product,
}

#[derive(Deserialize)]
struct Buy {
    qty: String,
}

#[derive(Deserialize)]
struct Input {
    value: String,
}

#[tokio::main]
async fn main() -> Result<(), statetemplate::Error> {
    let mut env = Environment::new();
    common::templates(
        &mut env,
        &[
            ("products.html", include_str!("../templates/products.html")),
            ("product.html", include_str!("../templates/product.html")),
        ],
    )?;
    let engine = common::engine(env, "pages")?;
    let catalog = Catalog::new();
    let c = catalog.clone();
    let live = common::live(&engine)
        .client_extras(true)
        .with_state(catalog.clone())
        // st-patch links, and back and forward on the list page.
        .on_params(move |l: &mut List, p: Params| {
            *l = c.list(&p);
            Ok(())
        })
        // Searching as you type (the URL follows when the user asks for a
        // link to the search).
        .on_update_async("search", |l: List, i: Input, ctx: EventCtx| async move {
            let mut p = Params::default();
            p.query.insert("q".into(), i.value);
            p.query.insert("sort".into(), l.sort);
            Ok(ctx.state::<Catalog>()?.list(&p))
        })
        // st-navigate links, and back and forward between pages.
        .on_navigate(|ctx: EventCtx, p: Params| async move {
            let Some((template, data)) = ctx.state::<Catalog>()?.route(&p) else {
                return Err(Error::user("There is no such page."));
            };
            ctx.session.navigate(template, &data).await?;
            Ok(())
        })
        .on("buy", |ctx: EventCtx| async move {
            let qty: u32 = ctx
                .payload::<Buy>()?
                .qty
                .trim()
                .parse()
                .ok()
                .filter(|n| (1..=5).contains(n))
                .ok_or_else(|| Error::user("Buy 1 to 5 at a time."))?;
            let catalog = ctx.state::<Catalog>()?.clone();
            let mut d: Detail = ctx.session.data().await?;
            {
                let mut all = catalog.0.lock().expect("lock");
                let item = all
                    .iter_mut()
                    .find(|x| x.id == d.product.id)
                    .ok_or_else(|| Error::user("That product is gone."))?;
                if item.stock < qty {
                    return Err(Error::user(format!("Only {} left, sorry.", item.stock)));
                }
                item.stock -= qty;
                d.product = item.clone();
            }
            ctx.session.render(&d).await?;
            ctx.session.flash(
                "success",
                &format!("You bought {qty} × {}.", d.product.name),
            )?;
            Ok(())
        });
    let page = |live: Live, catalog: Catalog, path: String, query: Option<String>| async move {
        let p = Params::from_query(&path, query.as_deref());
        let Some((template, data)) = catalog.route(&p) else {
            return (axum::http::StatusCode::NOT_FOUND, "no such page").into_response();
        };
        match live.engine().new_session(template, &data).await {
            Ok(initial) => Html(common::layout("Products", &live.mount(&initial))).into_response(),
            Err(e) => (axum::http::StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response(),
        }
    };
    let (l1, c1, l2, c2) = (live.clone(), catalog.clone(), live.clone(), catalog);
    let app = Router::new()
        .route(
            "/",
            get(move |RawQuery(q): RawQuery| page(l1.clone(), c1.clone(), "/".into(), q)),
        )
        .route(
            "/item/{id}",
            get(move |Path(id): Path<String>, RawQuery(q): RawQuery| {
                page(l2.clone(), c2.clone(), format!("/item/{id}"), q)
            }),
        )
        .merge(live.router());
    common::serve(app, 3006).await;
    Ok(())
}
