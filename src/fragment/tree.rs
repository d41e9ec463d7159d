//! The rendered tree: what a page looks like now, kept per page so the next
//! render can be compared against it, and written out as HTML or wire JSON.

use std::collections::HashSet;
use std::sync::Arc;

use minijinja::value::Value;

use super::chunked::Chunked;
use super::compile::Statics;
use super::markers::{ItemMarkers, inert, one_element};

/// One rendered body: its statics and a value per slot.
#[derive(Debug, Clone)]
pub(crate) struct BodyOut {
    pub statics: Arc<Statics>,
    pub slots: Vec<SlotOut>,
    /// Values bound by the body's `set`s, in order (not output).
    pub sets: Vec<Value>,
}

#[derive(Debug, Clone)]
pub(crate) enum SlotOut {
    Text(Text),
    Branch { index: u16, body: Arc<BodyOut> },
    Sub(Arc<BodyOut>),
    List(Arc<ListOut>),
}

/// How long a leaf's text can be and still be kept in place.
const INLINE: usize = 22;

/// A leaf's output. Texts of up to 22 bytes (numbers, short names, class
/// lists: most leaves) are kept in place, without an allocation of their
/// own; the enum is as large as a `Box<str>` with its tag, and so is a
/// `SlotOut` holding it.
#[derive(Clone)]
pub(crate) enum Text {
    Inline { len: u8, buf: [u8; INLINE] },
    Heap(Box<str>),
}

impl Default for Text {
    fn default() -> Text {
        Text::Inline {
            len: 0,
            buf: [0; INLINE],
        }
    }
}

impl From<&str> for Text {
    fn from(s: &str) -> Text {
        if s.len() <= INLINE {
            let mut buf = [0; INLINE];
            buf[..s.len()].copy_from_slice(s.as_bytes());
            Text::Inline {
                len: s.len() as u8,
                buf,
            }
        } else {
            Text::Heap(s.into())
        }
    }
}

impl From<String> for Text {
    fn from(s: String) -> Text {
        if s.len() <= INLINE {
            Text::from(s.as_str())
        } else {
            Text::Heap(s.into_boxed_str())
        }
    }
}

impl std::ops::Deref for Text {
    type Target = str;
    fn deref(&self) -> &str {
        match self {
            // Always whole UTF-8: it is copied from a `&str` whole.
            Text::Inline { len, buf } => std::str::from_utf8(&buf[..*len as usize]).unwrap_or(""),
            Text::Heap(s) => s,
        }
    }
}

impl Text {
    fn as_bytes(&self) -> &[u8] {
        match self {
            Text::Inline { len, buf } => &buf[..*len as usize],
            Text::Heap(s) => s.as_bytes(),
        }
    }
}

impl PartialEq for Text {
    /// Compares the bytes (no UTF-8 check of either side: both are whole
    /// strings).
    fn eq(&self, other: &Text) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for Text {}

impl std::fmt::Debug for Text {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&**self, f)
    }
}

#[derive(Debug, Clone)]
pub(crate) struct ListOut {
    pub anchor: Option<Arc<str>>,
    pub items: Chunked<ItemOut>,
    /// The `else` body, rendered when there are no items.
    pub empty: Option<Arc<BodyOut>>,
    /// Some key is an item's position, or was made unique with a suffix:
    /// keys then depend on other items, and only in-place changes can skip
    /// re-keying the list.
    pub relative_keys: bool,
    /// The set of keys, handed from each version of the list to the next
    /// so that a change touching a few items does not rebuild it.
    pub key_set: KeySet,
}

/// A list's keys, built when first needed and then moved from the old list
/// to the new one (the old one keeps nothing, and rebuilds if used again).
#[derive(Default)]
pub(crate) struct KeySet(pub(crate) std::sync::Mutex<Option<HashSet<Arc<str>>>>);

impl KeySet {
    pub(crate) fn new(set: Option<HashSet<Arc<str>>>) -> KeySet {
        KeySet(std::sync::Mutex::new(set))
    }

    /// Takes the set out as it is (built or not).
    pub(crate) fn pass(&self) -> Option<HashSet<Arc<str>>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    /// Takes the set out, building it from `items` when it is not there.
    pub(crate) fn take(&self, items: &Chunked<ItemOut>) -> HashSet<Arc<str>> {
        let mut g = self.0.lock().unwrap_or_else(|e| e.into_inner());
        g.take()
            .unwrap_or_else(|| items.iter().map(|i| i.key.clone()).collect())
    }
}

impl Clone for KeySet {
    fn clone(&self) -> KeySet {
        KeySet::default()
    }
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeySet")
    }
}

/// One rendered item of a list: shared between versions of the list, so
/// that copying a list's unchanged items costs one reference count each.
#[derive(Debug, Clone)]
pub(crate) struct ItemOut {
    pub it: Arc<Item>,
    pub index: u32,
    pub len: u32,
}

#[derive(Debug)]
pub(crate) struct Item {
    pub key: Arc<str>,
    pub value: Value,
    pub body: Arc<BodyOut>,
}

impl ItemOut {
    pub(crate) fn new(
        key: Arc<str>,
        value: Value,
        body: Arc<BodyOut>,
        index: usize,
        len: usize,
    ) -> ItemOut {
        ItemOut {
            it: Arc::new(Item { key, value, body }),
            index: index as u32,
            len: len as u32,
        }
    }

    /// The same item at another place.
    pub(crate) fn at(&self, index: usize, len: usize) -> ItemOut {
        ItemOut {
            it: self.it.clone(),
            index: index as u32,
            len: len as u32,
        }
    }
}

impl std::ops::Deref for ItemOut {
    type Target = Item;
    fn deref(&self) -> &Item {
        &self.it
    }
}

pub(crate) const CLOSE: &str = "<!--]-->";

pub(crate) fn write_body(b: &BodyOut, out: &mut String) {
    out.push_str(&b.statics.parts[0]);
    for (i, slot) in b.slots.iter().enumerate() {
        write_slot(slot, out);
        out.push_str(&b.statics.parts[i + 1]);
    }
}

pub(crate) fn write_slot(slot: &SlotOut, out: &mut String) {
    match slot {
        SlotOut::Text(t) => out.push_str(t),
        SlotOut::Branch { body, .. } | SlotOut::Sub(body) => write_body(body, out),
        SlotOut::List(l) => write_list(l, out),
    }
}

pub(crate) fn write_list(l: &ListOut, out: &mut String) {
    if let Some(e) = &l.empty {
        write_body(e, out);
    }
    if l.anchor.is_none() {
        for item in &l.items {
            write_body(&item.body, out);
        }
        return;
    }
    let mut marks = ItemMarkers::default();
    let mut html = String::new();
    for item in &l.items {
        html.clear();
        write_body(&item.body, &mut html);
        push_item(&mut marks, &item.key, &item.body, &html, out);
        out.push_str(&html);
    }
}

/// [`ItemMarkers::push`] for an item the engine rendered: its statics may
/// tell without a scan whether it is one element.
fn push_item(marks: &mut ItemMarkers, key: &str, body: &BodyOut, html: &str, out: &mut String) {
    marks.mark(
        key,
        // Asked only for an integer key.
        || match body.statics.run.as_ref().filter(|_| inert_slots(body)) {
            Some((l, t)) => {
                debug_assert_eq!(one_element(html), Some((&**l, &**t)), "{html}");
                Some((l, t))
            }
            None => one_element(html),
        },
        out,
    );
}

/// Whether every slot of `b` holds an inert value: text, or a body whose
/// parts and slots are inert (a list never is).
fn inert_slots(b: &BodyOut) -> bool {
    b.slots.iter().all(|s| match s {
        SlotOut::Text(t) => inert(t),
        SlotOut::Branch { body, .. } | SlotOut::Sub(body) => {
            body.statics.inert && inert_slots(body)
        }
        SlotOut::List(_) => false,
    })
}

/// Encodes bodies as wire JSON, collecting the statics the client lacks.
pub(crate) struct WireWriter<'a> {
    pub sent: &'a mut HashSet<u32>,
    pub new_statics: Vec<Arc<Statics>>,
}

impl WireWriter<'_> {
    pub(crate) fn body(&mut self, b: &BodyOut, out: &mut String) {
        self.mark(b);
        out.push('[');
        out.push_str(&b.statics.sid.to_string());
        for s in &b.slots {
            out.push(',');
            self.slot(s, out);
        }
        out.push(']');
    }

    /// A body without slots, by its statics id alone.
    pub(crate) fn constant(&mut self, b: &BodyOut, out: &mut String) {
        debug_assert!(b.slots.is_empty());
        self.mark(b);
        out.push_str(&b.statics.sid.to_string());
    }

    pub(crate) fn slot(&mut self, s: &SlotOut, out: &mut String) {
        match s {
            SlotOut::Text(t) => json_str(t, out),
            SlotOut::Branch { body, .. } | SlotOut::Sub(body) => self.body(body, out),
            SlotOut::List(l) => self.list(l, out),
        }
    }

    pub(crate) fn list(&mut self, l: &ListOut, out: &mut String) {
        out.push('{');
        if let Some(e) = &l.empty {
            out.push_str("\"e\":");
            self.body(e, out);
        } else {
            out.push_str("\"k\":[");
            for (i, it) in l.items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                json_key(&it.key, out);
            }
            out.push_str("],\"b\":[");
            for (i, it) in l.items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                self.body(&it.body, out);
            }
            out.push(']');
        }
        out.push('}');
    }

    /// Marks `b`'s own statics as sent (not those of its slots), as
    /// [`Self::body`] does, without writing anything.
    pub(crate) fn mark(&mut self, b: &BodyOut) {
        if self.sent.insert(b.statics.sid) {
            self.new_statics.push(b.statics.clone());
        }
    }

    /// The statics table entries for statics first used in this frame.
    pub(crate) fn statics_json(&self, out: &mut String) {
        out.push('{');
        for (i, s) in self.new_statics.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push('"');
            out.push_str(&s.sid.to_string());
            out.push_str("\":[[");
            for (j, p) in s.parts.iter().enumerate() {
                if j > 0 {
                    out.push(',');
                }
                json_str(p, out);
            }
            out.push_str("],[");
            for (j, a) in s.anchors.iter().enumerate() {
                if j > 0 {
                    out.push(',');
                }
                match a {
                    Some(a) => json_addr(a, out),
                    None => out.push('0'),
                }
            }
            out.push(']');
            if !s.counters.is_empty() {
                out.push_str(",[");
                for (j, c) in s.counters.iter().enumerate() {
                    if j > 0 {
                        out.push(',');
                    }
                    out.push((b'0' + c) as char);
                }
                out.push(']');
            }
            out.push(']');
        }
        out.push('}');
    }
}

/// Whether `s` reads back exactly from a JSON number: `0` or digits not
/// starting with 0, at most 15 of them (exact in a JavaScript double).
fn canonical_int(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 15
        && b.iter().all(u8::is_ascii_digit)
        && (b[0] != b'0' || b.len() == 1)
}

/// A fragment id on the wire: a JSON number for a node number, else a
/// string (a block name, an item `LIST:KEY`, `""` for the page).
pub(crate) fn json_addr(id: &str, out: &mut String) {
    if canonical_int(id) {
        out.push_str(id);
    } else {
        json_str(id, out);
    }
}

/// An item key on the wire: a JSON number when it is a plain integer, else
/// a string. Clients read both as the same string.
pub(crate) fn json_key(key: &str, out: &mut String) {
    json_addr(key, out)
}

pub(crate) fn json_str(s: &str, out: &mut String) {
    // serde_json escapes `"`, `\\` and control characters, nothing else: a
    // string without them (most leaf texts) is copied as it is.
    if !s.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\') {
        out.reserve(s.len() + 2);
        out.push('"');
        out.push_str(s);
        out.push('"');
        return;
    }
    out.push_str(&serde_json::to_string(s).expect("strings serialize"));
}

#[cfg(test)]
mod text_tests {
    use super::*;

    #[test]
    fn json_strings_are_serde_json_s() {
        let mut all: Vec<String> = [
            "",
            "plain",
            "a\"b",
            "back\\slash",
            "tab\there",
            "nl\n",
            "\u{7f}del",
            "é ü 😀",
            "</script>",
            "\u{1}\u{1f}",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        all.push((0u8..=127).map(char::from).collect());
        for s in all {
            let mut out = String::from("x");
            json_str(&s, &mut out);
            assert_eq!(
                out,
                format!("x{}", serde_json::to_string(&s).unwrap()),
                "{s:?}"
            );
        }
    }

    #[test]
    fn short_texts_are_kept_in_place_and_read_back_whole() {
        for s in [
            "",
            "1",
            "open",
            "done pending",
            "x".repeat(22).as_str(),
            "é".repeat(11).as_str(),
            &("a".repeat(20) + "é"),
        ] {
            let t = Text::from(s);
            assert!(matches!(t, Text::Inline { .. }), "{s:?} should be inline");
            assert_eq!(&*t, s);
            assert_eq!(Text::from(s.to_string()), t);
        }
        for s in ["x".repeat(23), "a".repeat(21) + "é", "<li>".repeat(40)] {
            let t = Text::from(s.as_str());
            assert!(matches!(t, Text::Heap(_)), "{s:?} should be on the heap");
            assert_eq!(&*t, s);
            assert_eq!(Text::from(s.clone()), t);
        }
        assert_ne!(Text::from("a"), Text::from("b"));
        // A slot is no larger for holding its text in place.
        assert_eq!(std::mem::size_of::<SlotOut>(), 24);
    }
}
