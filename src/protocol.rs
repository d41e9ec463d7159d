//! What goes to the client: seed-compatible [`Update`]s, and the compact wire
//! frames written by [`LivePage::encode`](crate::LivePage::encode) (versioned,
//! see `docs/protocol.md`).

use serde::{Deserialize, Serialize};

/// One change to one fragment of the page, with the fragment's full HTML.
///
/// Keeps the fields of the design seed (`fragment_id`, `html`, `action`,
/// `timestamp`) so that an app with its own transport can stream
/// `serde_json::to_string(&update)`. Fragment ids are the ids of the comment
/// anchors in the page (`<!--[ID-->` … `<!--]-->`); a keyed list item's id is
/// `LIST:KEY` (its marker in the page is `<!--:KEY-->`); the empty id is the
/// whole page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Update {
    /// The anchor the update applies to.
    pub fragment_id: String,
    /// The new content of the fragment (empty for `remove` and moves).
    pub html: String,
    /// What to do.
    pub action: Action,
    /// For `insert_after` and `move_after`: the item the fragment goes after.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Milliseconds since the Unix epoch when the update was made.
    pub timestamp: u64,
    /// The render's sequence number (monotonic per page or session).
    pub seq: u64,
}

/// What an [`Update`] does to its fragment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Action {
    /// Replace the fragment's content.
    Replace,
    /// Remove a list item, anchors included.
    Remove,
    /// Insert a new list item at the start of its list.
    Prepend,
    /// Insert a new list item at the end of its list.
    Append,
    /// Insert a new list item after `target`.
    InsertAfter,
    /// Move an existing list item to after `target`.
    MoveAfter,
    /// Move an existing list item to the start of its list.
    MoveFirst,
}

pub(crate) fn now_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
