//! What the bench binaries share: their tokio runtime, the process's
//! resident memory, and the pages of `../shared/peers/dioxus-liveview`.
#![allow(dead_code)]

use serde::{Deserialize, Serialize};

/// The peer's counter: a title, the count, a status text and class from
/// the count's sign, two buttons, and a footer that changes every render.
pub(crate) const COUNTER: &str = r#"<main class="counter"><h1>Live counter</h1><p class="count">{{ count }}</p><p class="status status-{{ status }}">The count is {{ status }}</p><button st-click="inc">+1</button><button st-click="dec">-1</button><footer>Last rendered at {{ ts }}</footer></main>"#;

/// The peer's table of N rows (id, name, amount, status from the amount),
/// with update, append and remove buttons.
pub(crate) const TABLE: &str = r#"<main class="table"><h1>Accounts</h1><div class="controls"><button st-click="update">update</button><button st-click="append">append</button><button st-click="remove">remove</button></div><p class="rowcount">{{ rows|length }} rows</p><table><thead><tr><th>id</th><th>name</th><th>amount</th><th>status</th></tr></thead><tbody>{% for r in rows %}{% set status = "paid" if r.amount % 2 == 0 else "pending" %}<tr><td>{{ r.id }}</td><td>{{ r.name }}</td><td>{{ r.amount }}</td><td class="st-{{ status }}">{{ status }}</td></tr>{% endfor %}</tbody></table></main>"#;

/// One row of the table.
#[derive(Serialize, Deserialize, Clone)]
pub(crate) struct Row {
    pub id: u64,
    pub name: String,
    pub amount: i64,
}

/// Row `id` as the peer makes it.
pub(crate) fn make_row(id: u64) -> Row {
    Row {
        id,
        name: format!("Customer {id:05}"),
        amount: ((id * 7919) % 10_000) as i64,
    }
}

/// A runtime with `workers` worker threads, or a current-thread one for 0.
pub(crate) fn runtime(workers: usize) -> tokio::runtime::Runtime {
    let mut b = if workers == 0 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(workers);
        b
    };
    b.enable_all().build().expect("a tokio runtime")
}

/// This process's resident set size in bytes (`/proc/self/statm`).
pub(crate) fn rss() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
    let pages: usize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("resident pages");
    pages * 4096
}
