//! Live navigation: links with `st-patch` change the URL's query (or path)
//! without a reload and tell the page's handler the new parameters; links
//! with `st-navigate` swap to another live page over the same socket. Back
//! and forward do the same for the URL they go to. The client's side is in
//! the extras script (`Live::client_extras`); see `docs/navigation.md`.

use std::collections::BTreeMap;
use std::future::Future;

use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::{EventCtx, Live};
use crate::Result;

/// The event a `st-patch` link (or back and forward to a patched URL)
/// sends.
pub const PARAMS_EVENT: &str = "st:params";
/// The event a `st-navigate` link (or back and forward to such a URL)
/// sends.
pub const NAVIGATE_EVENT: &str = "st:navigate";

/// Where the browser went: the URL's path and its query parameters
/// (decoded; a name given twice keeps its last value).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Params {
    /// The path, like `/todos`.
    #[serde(default)]
    pub path: String,
    /// The query parameters.
    #[serde(default)]
    pub query: BTreeMap<String, String>,
}

impl Params {
    /// The query parameter `name`, if the URL has it.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.query.get(name).map(String::as_str)
    }

    /// Parses a query string (`a=1&b=x%20y`, with or without the `?`),
    /// for the page handler's first render from the request's URL.
    pub fn from_query(path: &str, query: Option<&str>) -> Params {
        let mut p = Params {
            path: path.to_owned(),
            query: BTreeMap::new(),
        };
        for pair in query.unwrap_or("").trim_start_matches('?').split('&') {
            if pair.is_empty() {
                continue;
            }
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            p.query.insert(
                super::frames::percent_decode(k),
                super::frames::percent_decode(v),
            );
        }
        p
    }
}

impl Live {
    /// What the page does when its URL's parameters change (a link with
    /// `st-patch`, or back and forward between such URLs): `f` gets the
    /// session's data as `T` and the new [`Params`], changes the data, and
    /// the session renders it (as [`Live::on_update`]). The page's own
    /// handler renders the first page from the request's URL the same way
    /// (see [`Params::from_query`]).
    pub fn on_params<T, F>(self, f: F) -> Live
    where
        T: DeserializeOwned + serde::Serialize + Send + 'static,
        F: Fn(&mut T, Params) -> Result<()> + Send + Sync + 'static,
    {
        self.on_update(PARAMS_EVENT, f)
    }

    /// What the page does when a link with `st-navigate` (or back and
    /// forward to such a URL) goes to another live page: `f` gets the
    /// event's context and the [`Params`] of the URL, and typically calls
    /// [`crate::Session::navigate`] with the template and data for that
    /// path, so every tab of the session swaps to it over the same socket.
    /// A path it does not know is best refused with [`crate::Error::user`]
    /// (the client then loads the URL as a plain page).
    pub fn on_navigate<F, Fut>(self, f: F) -> Live
    where
        F: Fn(EventCtx, Params) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<()>> + Send + 'static,
    {
        let f = std::sync::Arc::new(f);
        self.on(NAVIGATE_EVENT, move |ctx: EventCtx| {
            let f = f.clone();
            async move {
                let p: Params = ctx.payload()?;
                f(ctx, p).await
            }
        })
    }
}
