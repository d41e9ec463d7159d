//! Reference appliers: the model of the browser, and the oracle of every
//! diff test. Applying what the engine emitted to what the client held must
//! give exactly the HTML of a fresh render.
//!
//! - [`WireClient`] holds what the JS client holds (the statics table and the
//!   tree of dynamic values) and applies wire frames; the JS client mirrors it.
//! - [`apply_updates`] applies [`Update`]s (each fragment's HTML) to an HTML string by
//!   their comment anchors, as a client without the tree would.

use std::collections::HashMap;

use serde_json::Value as Json;

use crate::error::{Error, ErrorKind, Result};
use crate::fragment::counter;
use crate::fragment::markers::{ItemMarkers, element_len, plain_int, ws_len};
use crate::fragment::tree::CLOSE;
use crate::protocol::{Action, Update};

fn bad(msg: impl Into<String>) -> Error {
    Error::new(ErrorKind::Protocol, msg)
}

/// Applies updates to annotated HTML by fragment id.
pub fn apply_updates(html: &str, updates: &[Update]) -> Result<String> {
    let mut doc = explicit_markers(html);
    for u in updates {
        apply_update(&mut doc, u)?;
    }
    Ok(compact_markers(&doc))
}

/// Byte ranges of a fragment: `(start, content start, content end, end)`.
/// A fragment `ID` is `<!--[ID-->` … `<!--]-->`; a list item `LIST:KEY` is
/// `<!--:KEY-->` and what follows it, up to the next item marker of its list
/// or the list's close (an item has no close of its own).
fn locate(doc: &str, id: &str) -> Result<(usize, usize, usize, usize)> {
    if let Some((list, key)) = id.split_once(':') {
        let (_, from, to, _) = locate(doc, list)?;
        let marker = format!("<!--:{key}-->");
        let mut i = from;
        while let Some((at, kind)) = next_marker(doc, i, to) {
            if kind == Marker::Item && doc[at..].starts_with(&marker) {
                let content = at + marker.len();
                let end = next_marker(doc, content, to).map_or(to, |(e, _)| e);
                return Ok((at, content, end, end));
            }
            i = at + 4;
        }
        return Err(bad(format!("no fragment {id:?} in the document")));
    }
    let open = format!("<!--[{id}-->");
    let start = doc
        .find(&open)
        .ok_or_else(|| bad(format!("no fragment {id:?} in the document")))?;
    let content = start + open.len();
    let mut depth = 1usize;
    let mut i = content;
    while let Some(p) = doc[i..].find("<!--") {
        let at = i + p;
        if doc[at..].starts_with("<!--[") && doc[at..].find("-->").is_some() {
            depth += 1;
            i = at + 5;
        } else if doc[at..].starts_with(CLOSE) {
            depth -= 1;
            if depth == 0 {
                return Ok((start, content, at, at + CLOSE.len()));
            }
            i = at + CLOSE.len();
        } else {
            i = at + 4;
        }
    }
    Err(bad(format!("fragment {id:?} is not closed")))
}

/// `html` with every item marker written out as `<!--:KEY-->`, as the JS
/// client holds the page in its DOM and writes its own HTML: a
/// `<!--;-->` (the previous item's key plus one) and a run
/// (`<!--*KEY-->` and the single-element items after it, which have no
/// marker). [`apply_updates`] and [`WireClient::html`] write markers as
/// the engine does; this gives the form to compare with the client's.
pub fn write_out_markers(html: &str) -> String {
    explicit_markers(html)
}

/// `html` with every item marker written out as `<!--:KEY-->`: a
/// `<!--;-->` (the previous item's key plus one) and a run (`<!--*KEY-->`
/// and the single-element items after it, which have no marker), so that
/// items can be found, inserted and moved anywhere.
fn explicit_markers(html: &str) -> String {
    if !html.contains("<!--;-->") && !html.contains("<!--*") {
        return html.to_owned();
    }
    let mut out = String::with_capacity(html.len() + 64);
    // The last key of each open fragment's items.
    let mut last: Vec<Option<u64>> = vec![None];
    let mut rest = html;
    while let Some(p) = rest.find("<!--") {
        out.push_str(&rest[..p]);
        let tail = &rest[p..];
        let end = tail.find("-->").map_or(tail.len(), |e| e + 3);
        let c = &tail[..end];
        rest = &tail[end..];
        let top = last.len() - 1;
        if c.starts_with("<!--[") {
            last.push(None);
        } else if c == CLOSE {
            if top > 0 {
                last.pop();
            }
        } else if let Some(k) = c.strip_prefix("<!--:").and_then(|k| k.strip_suffix("-->")) {
            last[top] = plain_int(k);
        } else if c == "<!--;-->" {
            last[top] = last[top].and_then(|k| k.checked_add(1));
            if let Some(k) = last[top] {
                out.push_str(&format!("<!--:{k}-->"));
                continue;
            }
        } else if let Some(mut k) = c
            .strip_prefix("<!--*")
            .and_then(|k| k.strip_suffix("-->"))
            .and_then(plain_int)
        {
            // A run: each element is an item, written out with what it
            // holds; between two stand the whitespace after one (T) and
            // before the next (L, what stands before the first).
            out.push_str(&format!("<!--:{k}-->"));
            let l = &rest[..ws_len(rest)];
            out.push_str(l);
            rest = &rest[l.len()..];
            while let Some(n) = element_len(rest) {
                out.push_str(&explicit_markers(&rest[..n]));
                rest = &rest[n..];
                let w = ws_len(rest);
                let next = &rest[w..];
                let element = next.starts_with('<')
                    && next.as_bytes().get(1).is_some_and(u8::is_ascii_alphabetic);
                if !element || !rest[..w].ends_with(l) {
                    break;
                }
                k += 1;
                out.push_str(&rest[..w - l.len()]);
                out.push_str(&format!("<!--:{k}-->"));
                out.push_str(l);
                rest = next;
            }
            last[top] = Some(k);
            continue;
        }
        out.push_str(c);
    }
    out.push_str(rest);
    out
}

/// Item markers as the engine writes them ([`ItemMarkers`]: `<!--;-->`,
/// runs) in a document whose markers are written out.
fn compact_markers(doc: &str) -> String {
    let mut out = String::with_capacity(doc.len());
    let mut marks = vec![ItemMarkers::default()];
    let mut i = 0;
    while let Some(p) = doc[i..].find("<!--") {
        let at = i + p;
        out.push_str(&doc[i..at]);
        let end = doc[at..].find("-->").map_or(doc.len(), |e| at + e + 3);
        let c = &doc[at..end];
        i = end;
        if c.starts_with("<!--[") {
            marks.push(ItemMarkers::default());
        } else if c == CLOSE {
            if marks.len() > 1 {
                marks.pop();
            }
        } else if let Some(k) = c.strip_prefix("<!--:").and_then(|k| k.strip_suffix("-->")) {
            let to = next_marker(doc, end, doc.len()).map_or(doc.len(), |(e, _)| e);
            let top = marks.len() - 1;
            marks[top].push(k, &doc[end..to], &mut out);
            continue;
        }
        out.push_str(c);
    }
    out.push_str(&doc[i..]);
    out
}

#[derive(PartialEq)]
enum Marker {
    Item,
    Close,
}

/// The next item marker or close at depth 0 in `doc[from..to]` (the
/// content of a list): where it starts, and which it is. Fragments nested
/// in an item are skipped whole.
fn next_marker(doc: &str, from: usize, to: usize) -> Option<(usize, Marker)> {
    let mut depth = 0usize;
    let mut i = from;
    while let Some(p) = doc[i..to].find("<!--") {
        let at = i + p;
        let tail = &doc[at..to];
        if tail.starts_with("<!--[") {
            depth += 1;
        } else if tail.starts_with(CLOSE) {
            if depth == 0 {
                return Some((at, Marker::Close));
            }
            depth -= 1;
        } else if depth == 0 && tail.starts_with("<!--:") {
            return Some((at, Marker::Item));
        }
        i = at + 4;
    }
    None
}

fn split_item(id: &str) -> Result<(&str, &str)> {
    id.split_once(':')
        .ok_or_else(|| bad(format!("{id:?} is not a list item id")))
}

fn apply_update(doc: &mut String, u: &Update) -> Result<()> {
    let wrap = |id: &str, html: &str| -> Result<String> {
        let (_, key) = split_item(id)?;
        Ok(format!("<!--:{key}-->{html}"))
    };
    match u.action {
        Action::Replace if u.fragment_id.is_empty() => *doc = explicit_markers(&u.html),
        Action::Replace => {
            let (_, a, b, _) = locate(doc, &u.fragment_id)?;
            doc.replace_range(a..b, &explicit_markers(&u.html));
        }
        Action::Remove => {
            let (a, _, _, b) = locate(doc, &u.fragment_id)?;
            doc.replace_range(a..b, "");
        }
        Action::Prepend | Action::Append => {
            let (list, _) = split_item(&u.fragment_id)?;
            let (_, a, b, _) = locate(doc, list)?;
            let at = if u.action == Action::Prepend { a } else { b };
            doc.insert_str(at, &wrap(&u.fragment_id, &explicit_markers(&u.html))?);
        }
        Action::InsertAfter => {
            let target = u
                .target
                .as_deref()
                .ok_or_else(|| bad("insert_after needs a target"))?;
            let (_, _, _, end) = locate(doc, target)?;
            doc.insert_str(end, &wrap(&u.fragment_id, &explicit_markers(&u.html))?);
        }
        Action::MoveAfter | Action::MoveFirst => {
            let (a, _, _, b) = locate(doc, &u.fragment_id)?;
            let item = doc[a..b].to_owned();
            doc.replace_range(a..b, "");
            let at = match &u.target {
                Some(t) if u.action == Action::MoveAfter => locate(doc, t)?.3,
                _ => locate(doc, split_item(&u.fragment_id)?.0)?.1,
            };
            doc.insert_str(at, &item);
        }
    }
    Ok(())
}

#[derive(Debug, Clone)]
enum Dyn {
    Text(String),
    Body(Body),
    List(List),
}

#[derive(Debug, Clone)]
struct Body {
    sid: u64,
    slots: Vec<Dyn>,
}

#[derive(Debug, Clone, Default)]
struct List {
    items: Vec<(String, Body)>,
    empty: Option<Box<Body>>,
}

#[derive(Debug, Clone)]
struct Statics {
    parts: Vec<String>,
    anchors: Vec<Option<String>>,
    /// Per slot, the loop counter it shows (1 to 5), or empty.
    counters: Vec<u8>,
}

/// The browser's model: the statics it has been sent and the tree of
/// dynamic values, patched by wire frames. Its [`html`](Self::html) is what
/// the DOM holds.
#[derive(Debug, Default)]
pub struct WireClient {
    statics: HashMap<u64, Statics>,
    root: Option<Body>,
    seq: u64,
}

impl WireClient {
    /// A client that holds nothing yet (feed it a join frame first).
    pub fn new() -> WireClient {
        WireClient::default()
    }

    /// The sequence number of the last frame applied.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Applies one frame (wire v2, `docs/protocol.md`): an array frame (the
    /// next sequence number, optionally led by statics entries) or an object
    /// frame that states its sequence number (a join). On error the client
    /// may be partly updated, as a browser would be; it should then ask for
    /// a join frame.
    pub fn apply(&mut self, frame: &str) -> Result<()> {
        let f: Json = serde_json::from_str(frame).map_err(|e| bad(format!("bad frame: {e}")))?;
        match &f {
            Json::Array(items) => {
                let mut ops = &items[..];
                if let Some(Json::Object(s)) = ops.first() {
                    self.add_statics(s)?;
                    ops = &ops[1..];
                }
                if ops.is_empty() {
                    return Err(bad("a frame without operations"));
                }
                for op in ops {
                    self.op(op)?;
                }
                self.seq += 1;
            }
            Json::Object(o) => {
                let seq = o
                    .get("q")
                    .and_then(safe_int)
                    .ok_or_else(|| bad("an object frame without a seq (\"q\")"))?;
                let ops = o
                    .get("o")
                    .and_then(Json::as_array)
                    .filter(|o| !o.is_empty())
                    .ok_or_else(|| bad("no ops"))?;
                let join = ops
                    .first()
                    .and_then(Json::as_array)
                    .is_some_and(|op| op.len() == 2 && op[0] == "" && op[1].is_array());
                if join {
                    self.statics.clear();
                }
                if let Some(s) = o.get("s") {
                    self.add_statics(s.as_object().ok_or_else(|| bad("bad statics"))?)?;
                }
                for op in ops {
                    self.op(op)?;
                }
                self.seq = seq;
            }
            _ => return Err(bad("a frame is an array or an object")),
        }
        Ok(())
    }

    fn add_statics(&mut self, s: &serde_json::Map<String, Json>) -> Result<()> {
        for (sid, entry) in s {
            let sid: u64 = sid.parse().map_err(|_| bad("bad statics id"))?;
            let parts = entry
                .get(0)
                .and_then(Json::as_array)
                .ok_or_else(|| bad("bad statics"))?
                .iter()
                .map(|p| {
                    p.as_str()
                        .map(str::to_owned)
                        .ok_or_else(|| bad("bad static"))
                })
                .collect::<Result<Vec<_>>>()?;
            let anchors: Vec<Option<String>> = entry
                .get(1)
                .and_then(Json::as_array)
                .ok_or_else(|| bad("bad anchors"))?
                .iter()
                .map(|a| match a {
                    Json::Number(_) if safe_int(a) == Some(0) => Ok(None),
                    Json::Number(_) if safe_int(a).is_some() => Ok(Some(a.to_string())),
                    Json::String(s) => Ok(Some(s.clone())),
                    _ => Err(bad("bad anchor")),
                })
                .collect::<Result<_>>()?;
            if parts.len() != anchors.len() + 1 {
                return Err(bad("statics parts and anchors do not fit"));
            }
            let counters: Vec<u8> = match entry.get(2) {
                None => Vec::new(),
                Some(c) => c
                    .as_array()
                    .filter(|c| c.len() == anchors.len())
                    .ok_or_else(|| bad("bad counters"))?
                    .iter()
                    .map(|c| {
                        c.as_u64()
                            .filter(|c| *c <= 2)
                            .map(|c| c as u8)
                            .ok_or_else(|| bad("bad counter"))
                    })
                    .collect::<Result<_>>()?,
            };
            if entry.as_array().is_some_and(|e| e.len() > 3) {
                return Err(bad("bad statics"));
            }
            self.statics.insert(
                sid,
                Statics {
                    parts,
                    anchors,
                    counters,
                },
            );
        }
        Ok(())
    }

    /// The document the client holds, as HTML.
    pub fn html(&self) -> String {
        let mut out = String::new();
        if let Some(r) = &self.root {
            self.write_body(r, &mut out);
        }
        out
    }

    fn write_body(&self, b: &Body, out: &mut String) {
        let Some(s) = self.statics.get(&b.sid) else {
            return;
        };
        out.push_str(&s.parts[0]);
        for (i, d) in b.slots.iter().enumerate() {
            match d {
                Dyn::Text(t) => out.push_str(t),
                Dyn::Body(b) => self.write_body(b, out),
                Dyn::List(l) => {
                    if let Some(e) = &l.empty {
                        self.write_body(e, out);
                    }
                    let anchored = s.anchors.get(i).is_some_and(Option::is_some);
                    let mut marks = ItemMarkers::default();
                    let mut html = String::new();
                    for (k, b) in &l.items {
                        if !anchored {
                            self.write_body(b, out);
                            continue;
                        }
                        html.clear();
                        self.write_body(b, &mut html);
                        marks.push(k, &html, out);
                        out.push_str(&html);
                    }
                }
            }
            if let Some(p) = s.parts.get(i + 1) {
                out.push_str(p);
            }
        }
    }

    fn decode_body(&self, j: &Json) -> Result<Body> {
        let a = j.as_array().ok_or_else(|| bad("body is not an array"))?;
        let sid = a
            .first()
            .and_then(Json::as_u64)
            .ok_or_else(|| bad("body without statics id"))?;
        let s = self
            .statics
            .get(&sid)
            .ok_or_else(|| bad(format!("unknown statics {sid}")))?;
        if a.len() != s.parts.len() {
            return Err(bad("body does not fit its statics"));
        }
        let slots = a[1..]
            .iter()
            .map(|d| self.decode_dyn(d))
            .collect::<Result<_>>()?;
        Ok(Body { sid, slots })
    }

    fn decode_dyn(&self, j: &Json) -> Result<Dyn> {
        Ok(match j {
            Json::String(s) => Dyn::Text(s.clone()),
            Json::Array(_) => Dyn::Body(self.decode_body(j)?),
            Json::Object(_) => Dyn::List(self.decode_list(j)?),
            _ => return Err(bad("bad dynamic")),
        })
    }

    fn decode_list(&self, j: &Json) -> Result<List> {
        if let Some(e) = j.get("e") {
            return Ok(List {
                items: Vec::new(),
                empty: Some(Box::new(self.decode_body(e)?)),
            });
        }
        let keys = j
            .get("k")
            .and_then(Json::as_array)
            .ok_or_else(|| bad("list without keys"))?;
        let bodies = j
            .get("b")
            .and_then(Json::as_array)
            .ok_or_else(|| bad("list without bodies"))?;
        if keys.len() != bodies.len() {
            return Err(bad("list keys and bodies differ in length"));
        }
        let items: Vec<(String, Body)> = keys
            .iter()
            .zip(bodies)
            .map(|(k, b)| Ok((key(k)?, self.decode_body(b)?)))
            .collect::<Result<_>>()?;
        let mut seen = std::collections::HashSet::new();
        if !items.iter().all(|(k, _)| seen.insert(k.as_str())) {
            return Err(bad("a list with a key twice"));
        }
        Ok(List { items, empty: None })
    }

    fn op(&mut self, op: &Json) -> Result<()> {
        let a = op.as_array().ok_or_else(|| bad("op is not an array"))?;
        let code = a
            .first()
            .and_then(Json::as_str)
            .filter(|c| OP_CODES.contains(c));
        let Some(code) = code else {
            // An addressed op: text, body, list, or slots of fragment ID.
            let id = addr(a.first().ok_or_else(|| bad("empty op"))?)?;
            return match (a.len(), a.get(1)) {
                (2, Some(Json::String(text))) => {
                    *self.slot_mut(&id)? = Dyn::Text(text.clone());
                    Ok(())
                }
                (2, Some(b @ (Json::Array(_) | Json::Number(_)))) => {
                    // A body, or a constant one by its statics id alone.
                    let body = if b.is_number() {
                        if id.is_empty() {
                            return Err(bad("the page by a statics id"));
                        }
                        self.decode_body(&Json::Array(vec![b.clone()]))?
                    } else {
                        self.decode_body(b)?
                    };
                    if id.is_empty() {
                        self.root = Some(body);
                    } else {
                        *self.body_mut(&id)? = body;
                    }
                    Ok(())
                }
                (2, Some(l @ Json::Object(_))) => {
                    let list = self.decode_list(l)?;
                    *self.slot_mut(&id)? = Dyn::List(list);
                    Ok(())
                }
                (n, Some(second)) if n >= 3 && (second.is_number() || second.is_string()) => {
                    // `[ID, runs…]`, or an item's `[LIST, KEY, runs…]` (a
                    // string key, or a number followed by a slot number).
                    let item = second.is_string() || a[2].is_number();
                    let (id, runs) = if item {
                        (format!("{id}:{}", key(second)?), &a[2..])
                    } else {
                        (id, &a[1..])
                    };
                    let mut decoded = Vec::new();
                    let mut at: Option<(usize, bool)> = None;
                    for d in runs {
                        if let Json::Number(n) = d {
                            if at.is_some_and(|(_, filled)| !filled) {
                                return Err(bad("a slot number without a value"));
                            }
                            let n = n.as_u64().ok_or_else(|| bad("bad slot index"))?;
                            at = Some((n as usize, false));
                            continue;
                        }
                        let (n, _) = at.ok_or_else(|| bad("a value without a slot"))?;
                        decoded.push((n, self.decode_dyn(d)?));
                        at = Some((n + 1, true));
                    }
                    if at.is_some_and(|(_, filled)| !filled) {
                        return Err(bad("a slot number without a value"));
                    }
                    let body = self.body_mut(&id)?;
                    for (n, d) in decoded {
                        *body
                            .slots
                            .get_mut(n)
                            .ok_or_else(|| bad("slot out of range"))? = d;
                    }
                    Ok(())
                }
                _ => Err(bad("bad op")),
            };
        };
        let field = |i: usize| a.get(i).ok_or_else(|| bad("op field missing"));
        let list_id = addr(field(1)?)?;
        match code {
            "+" => {
                if a.len() != 5 {
                    return Err(bad("bad insert"));
                }
                let key = key(field(2)?)?;
                let after = opt_key(field(3)?)?;
                let body = self.decode_body(field(4)?)?;
                let list = self.list_mut(&list_id)?;
                if list.empty.is_some() {
                    return Err(bad("an insert into a list showing its else body"));
                }
                if list.items.iter().any(|(k, _)| *k == key) {
                    return Err(bad(format!(
                        "an insert of item {key:?}, which the list holds"
                    )));
                }
                let at = position_after(list, after.as_deref())?;
                list.items.insert(at, (key, body));
            }
            "-" => {
                let key = key(field(2)?)?;
                let list = self.list_mut(&list_id)?;
                let at = list
                    .items
                    .iter()
                    .position(|(k, _)| *k == key)
                    .ok_or_else(|| bad("no such item"))?;
                list.items.remove(at);
            }
            "~" => {
                let key = key(field(2)?)?;
                let after = opt_key(field(3)?)?;
                let list = self.list_mut(&list_id)?;
                let at = list
                    .items
                    .iter()
                    .position(|(k, _)| *k == key)
                    .ok_or_else(|| bad("no such item"))?;
                let item = list.items.remove(at);
                let to = position_after(list, after.as_deref());
                list.items.insert(to.as_ref().map_or(at, |t| *t), item);
                to?;
            }
            "*" => {
                // A stream insert: replace in place if the key is held,
                // else insert at AT (0 first, -1 last, n at n); then trim
                // to LIMIT.
                let key = key(field(2)?)?;
                let at = a
                    .get(3)
                    .and_then(Json::as_i64)
                    .filter(|n| *n >= -1)
                    .ok_or_else(|| bad("bad stream position"))?;
                let body = self.decode_body(field(4)?)?;
                let limit = match a.get(5) {
                    None => None,
                    Some(n) => Some(
                        n.as_i64()
                            .filter(|n| *n != 0)
                            .ok_or_else(|| bad("bad stream limit"))?,
                    ),
                };
                if a.len() > 6 {
                    return Err(bad("bad stream insert"));
                }
                let list = self.stream_mut(&list_id)?;
                match list.items.iter_mut().find(|(k, _)| *k == key) {
                    Some(item) => item.1 = body,
                    None => {
                        let len = list.items.len();
                        let i = if at < 0 { len } else { (at as usize).min(len) };
                        list.items.insert(i, (key, body));
                    }
                }
                if let Some(n) = limit {
                    let keep = n.unsigned_abs().min(usize::MAX as u64) as usize;
                    let len = list.items.len();
                    if len > keep {
                        if n > 0 {
                            list.items.truncate(keep);
                        } else {
                            list.items.drain(..len - keep);
                        }
                    }
                }
            }
            "/" => {
                let key = key(field(2)?)?;
                let list = self.stream_mut(&list_id)?;
                list.items.retain(|(k, _)| *k != key);
            }
            "!" => {
                if a.len() != 2 {
                    return Err(bad("bad stream reset"));
                }
                self.stream_mut(&list_id)?.items.clear();
            }
            "#" => {
                // Renumber: items from FROM on recompute their counter slots.
                let from = field(2).ok().and_then(safe_int).filter(|_| a.len() == 3);
                let from = from.ok_or_else(|| bad("bad renumber"))? as usize;
                let statics = &self.statics;
                let root = self.root.as_mut().ok_or_else(|| bad("no document yet"))?;
                let list = match find_slot(statics, root, &list_id) {
                    Some(Dyn::List(l)) if l.empty.is_none() => l,
                    _ => return Err(bad(format!("fragment {list_id:?} is not a list"))),
                };
                let n = list.items.len();
                if from > n {
                    return Err(bad("renumber past the end"));
                }
                for (i, (_, body)) in list.items.iter_mut().enumerate().skip(from) {
                    let Some(s) = statics.get(&body.sid) else {
                        continue;
                    };
                    for (slot, c) in body.slots.iter_mut().zip(&s.counters) {
                        if *c != 0 {
                            *slot = Dyn::Text(counter::value(*c, i).to_string());
                        }
                    }
                }
            }
            other => return Err(bad(format!("unknown op {other:?}"))),
        }
        Ok(())
    }

    /// Finds the slot anchored as `id`.
    fn slot_mut(&mut self, id: &str) -> Result<&mut Dyn> {
        let statics = &self.statics;
        let root = self.root.as_mut().ok_or_else(|| bad("no document yet"))?;
        find_slot(statics, root, id).ok_or_else(|| bad(format!("no fragment {id:?}")))
    }

    /// Finds the body of fragment `id`: the root, a list item, or the body in
    /// an anchored slot.
    fn body_mut(&mut self, id: &str) -> Result<&mut Body> {
        if id.is_empty() {
            return self.root.as_mut().ok_or_else(|| bad("no document yet"));
        }
        if let Some((list, key)) = id.split_once(':') {
            let l = self.list_mut(list)?;
            return l
                .items
                .iter_mut()
                .find(|(k, _)| k == key)
                .map(|(_, b)| b)
                .ok_or_else(|| bad(format!("no item {id:?}")));
        }
        match self.slot_mut(id)? {
            Dyn::Body(b) => Ok(b),
            _ => Err(bad(format!("fragment {id:?} is not a body"))),
        }
    }

    /// The list of a stream: one that is not showing its `else` body.
    fn stream_mut(&mut self, id: &str) -> Result<&mut List> {
        let l = self.list_mut(id)?;
        if l.empty.is_some() {
            return Err(bad(format!("fragment {id:?} is not a stream")));
        }
        Ok(l)
    }

    fn list_mut(&mut self, id: &str) -> Result<&mut List> {
        match self.slot_mut(id)? {
            Dyn::List(l) => Ok(l),
            _ => Err(bad(format!("fragment {id:?} is not a list"))),
        }
    }
}

/// The op codes of wire v2; every other first element is an address.
const OP_CODES: [&str; 7] = ["+", "-", "~", "*", "/", "!", "#"];

/// A non-negative integer a JavaScript number holds exactly (as the JS
/// client requires of ids, keys and seqs).
fn safe_int(j: &Json) -> Option<u64> {
    j.as_u64().filter(|n| *n < (1 << 53))
}

/// A fragment id: a JSON number (a node number) or a string.
fn addr(j: &Json) -> Result<String> {
    match j {
        Json::Number(_) if safe_int(j).is_some() => Ok(j.to_string()),
        Json::String(s) => Ok(s.clone()),
        _ => Err(bad("bad fragment id")),
    }
}

/// An item key: a JSON number (an integer key) or a string.
fn key(j: &Json) -> Result<String> {
    match j {
        Json::Number(_) if safe_int(j).is_some() => Ok(j.to_string()),
        Json::String(s) => Ok(s.clone()),
        _ => Err(bad("bad key")),
    }
}

fn opt_key(j: &Json) -> Result<Option<String>> {
    if j.is_null() {
        Ok(None)
    } else {
        key(j).map(Some)
    }
}

fn position_after(list: &List, after: Option<&str>) -> Result<usize> {
    Ok(match after {
        None => 0,
        Some(a) => {
            list.items
                .iter()
                .position(|(k, _)| k == a)
                .ok_or_else(|| bad("no such item"))?
                + 1
        }
    })
}

fn find_slot<'a>(
    statics: &HashMap<u64, Statics>,
    b: &'a mut Body,
    id: &str,
) -> Option<&'a mut Dyn> {
    let s = statics.get(&b.sid)?;
    if let Some(i) = s.anchors.iter().position(|a| a.as_deref() == Some(id)) {
        return b.slots.get_mut(i);
    }
    for d in b.slots.iter_mut() {
        let found = match d {
            Dyn::Text(_) => None,
            Dyn::Body(inner) => find_slot(statics, inner, id),
            Dyn::List(l) => {
                let mut r = None;
                if let Some(e) = l.empty.as_deref_mut() {
                    r = find_slot(statics, e, id);
                }
                if r.is_none() {
                    for (_, item) in l.items.iter_mut() {
                        if let Some(x) = find_slot(statics, item, id) {
                            r = Some(x);
                            break;
                        }
                    }
                }
                r
            }
        };
        if found.is_some() {
            return found;
        }
    }
    None
}

/// Removes statetemplate's comment anchors from annotated HTML, giving what a
/// plain minijinja render of the same template and data gives.
pub fn strip_anchors(html: &str) -> String {
    let mut out = String::with_capacity(html.len());
    let mut rest = html;
    while let Some(p) = rest.find("<!--") {
        out.push_str(&rest[..p]);
        let tail = &rest[p..];
        if let Some(r) = tail.strip_prefix(CLOSE) {
            rest = r;
        } else if let Some(r) = tail.strip_prefix("<!--;-->") {
            rest = r;
        } else if tail.starts_with("<!--[")
            || tail.starts_with("<!--:")
            || tail.starts_with("<!--*")
        {
            // An item's key may be empty (`<!--:-->`), a fragment's id not;
            // a run's key is an integer.
            let item = tail.as_bytes()[4] == b':';
            match tail.find("-->") {
                Some(e) if e >= 5 && (item && e == 5 || is_anchor_id(&tail[5..e])) => {
                    rest = &tail[e + 3..]
                }
                _ => {
                    out.push_str("<!--");
                    rest = &tail[4..];
                }
            }
        } else {
            out.push_str("<!--");
            rest = &tail[4..];
        }
    }
    out.push_str(rest);
    out
}

fn is_anchor_id(s: &str) -> bool {
    !s.is_empty()
        && s.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'%' | b'~' | b'-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fragments, items (an empty key too) and nested anchors are stripped;
    /// a comment of the page's own stays.
    #[test]
    fn strip_anchors_drops_fragments_and_item_markers() {
        let html = "<ul><!--[1--><!--:a--><li>a</li><!--:--><li>empty key</li><!--:x%2Dy--><li><!--[2-->z<!--]--></li><!--]--></ul><!-- mine -->";
        assert_eq!(
            strip_anchors(html),
            "<ul><li>a</li><li>empty key</li><li>z</li></ul><!-- mine -->"
        );
    }

    /// `<!--;-->` is the previous item's key plus one, per list: written
    /// out before updates apply, and back as the engine writes it after.
    #[test]
    fn sequential_keys_are_written_out_and_back() {
        let doc =
            "<!--[1--><!--:1-->a<!--;-->b<!--;-->c<!--]--><!--[2--><!--:9-->x<!--;-->y<!--]-->";
        assert_eq!(
            explicit_markers(doc),
            "<!--[1--><!--:1-->a<!--:2-->b<!--:3-->c<!--]--><!--[2--><!--:9-->x<!--:10-->y<!--]-->"
        );
        assert_eq!(compact_markers(&explicit_markers(doc)), doc);
        // An item put in after the first: the one after it is written out.
        let ins = Update {
            fragment_id: "1:7".into(),
            action: Action::InsertAfter,
            html: "n".into(),
            target: Some("1:1".into()),
            timestamp: 0,
            seq: 1,
        };
        assert_eq!(
            apply_updates(doc, &[ins]).unwrap(),
            "<!--[1--><!--:1-->a<!--:7-->n<!--:2-->b<!--;-->c<!--]--><!--[2--><!--:9-->x<!--;-->y<!--]-->"
        );
        // Keys that are not plain integers are never implied.
        let mut out = String::new();
        let mut m = ItemMarkers::default();
        for k in ["1", "2", "03", "4", "5", "x", "6", "99999999999999999"] {
            m.push(k, "text", &mut out);
        }
        assert_eq!(
            out,
            "<!--:1--><!--;--><!--:03--><!--:4--><!--;--><!--:x--><!--:6--><!--:99999999999999999-->"
        );
    }

    /// Items that are single elements with consecutive integer keys and
    /// the same whitespace around them are a run: one marker for all of
    /// them. Written out, each element is an item (nested runs too);
    /// written back, the same runs.
    #[test]
    fn runs_of_single_elements_are_written_out_and_back() {
        let mut out = String::new();
        let mut m = ItemMarkers::default();
        for (k, h) in [
            ("1", "<li>a</li>"),
            ("2", "<li>b</li>"),
            ("3", "<br>"),
            ("4", "two <b>nodes</b>"),
            ("5", "<li>c</li>"),
            ("6", "<li>d</li>"),
            ("x", "<li>e</li>"),
            ("8", "<li>f</li>"),
            ("10", "<li>g</li>"),
            ("11", "<li>h</li><li>i</li>"),
            ("12", "\n  <li>j</li>\n"),
            ("13", "\n  <li>k</li>\n"),
            ("14", "\n  <li>l</li>\n"),
            ("15", "<li>m</li>\n"),
            ("16", "<li>n</li>\n"),
            ("17", "\t<li>o</li>"),
            ("18", "\t<li>p</li>"),
            ("19", "\r\n<li>q</li>"),
        ] {
            m.push(k, h, &mut out);
            out.push_str(h);
        }
        assert_eq!(
            out,
            "<!--*1--><li>a</li><li>b</li><br><!--;-->two <b>nodes</b><!--*5--><li>c</li><li>d</li>\
             <!--:x--><li>e</li><!--*8--><li>f</li><!--*10--><li>g</li><!--;--><li>h</li><li>i</li>\
             <!--*12-->\n  <li>j</li>\n\n  <li>k</li>\n\n  <li>l</li>\n<!--*15--><li>m</li>\n<li>n</li>\n\
             <!--*17-->\t<li>o</li>\t<li>p</li><!--;-->\r\n<li>q</li>"
        );
        let doc = format!("<ul><!--[1-->{out}<!--]--></ul>");
        let explicit = explicit_markers(&doc);
        assert_eq!(
            explicit,
            "<ul><!--[1--><!--:1--><li>a</li><!--:2--><li>b</li><!--:3--><br><!--:4-->two <b>nodes</b>\
             <!--:5--><li>c</li><!--:6--><li>d</li><!--:x--><li>e</li><!--:8--><li>f</li><!--:10--><li>g</li>\
             <!--:11--><li>h</li><li>i</li>\
             <!--:12-->\n  <li>j</li>\n<!--:13-->\n  <li>k</li>\n<!--:14-->\n  <li>l</li>\n<!--:15--><li>m</li>\n<!--:16--><li>n</li>\n\
             <!--:17-->\t<li>o</li><!--:18-->\t<li>p</li><!--:19-->\r\n<li>q</li><!--]--></ul>"
        );
        assert_eq!(compact_markers(&explicit), doc);
        assert_eq!(strip_anchors(&doc), strip_anchors(&explicit));
        assert!(!strip_anchors(&doc).contains("<!--"));
        // Nested: a run inside an item of a run.
        let nested = "<!--[1--><!--*1--><tr><td><!--[2--><!--*7--><i>x</i><i>y</i><!--]--></td></tr><tr></tr><!--]-->";
        let explicit = explicit_markers(nested);
        assert_eq!(
            explicit,
            "<!--[1--><!--:1--><tr><td><!--[2--><!--:7--><i>x</i><!--:8--><i>y</i><!--]--></td></tr><!--:2--><tr></tr><!--]-->"
        );
        assert_eq!(compact_markers(&explicit), nested);
        let remove = |id: &str| {
            let rm = Update {
                fragment_id: id.into(),
                action: Action::Remove,
                html: String::new(),
                target: None,
                timestamp: 0,
                seq: 1,
            };
            apply_updates(&doc, &[rm]).unwrap()
        };
        // Removing the run's second item: the third starts a run again.
        let removed = remove("1:2");
        assert!(removed.starts_with("<ul><!--[1--><!--*1--><li>a</li><!--*3--><br><!--;-->two"));
        // Removing one from the middle of a run with whitespace.
        let removed = remove("1:13");
        assert!(removed.contains("<!--*12-->\n  <li>j</li>\n<!--*14-->\n  <li>l</li>\n<!--*15-->"));
    }

    /// An item runs to the next marker or its list's close, whatever its
    /// key; a fragment nested in an item is skipped whole.
    #[test]
    fn items_are_found_by_their_marker() {
        let doc = "<ul><!--[1--><!--:1--><li>1</li><!--:10--><li><!--[3-->x<!--]--></li><!--:--><li>e</li><!--]--></ul>";
        let span = |id: &str| {
            let (a, b, c, d) = locate(doc, id).unwrap();
            (&doc[a..b], &doc[b..c], c == d)
        };
        assert_eq!(span("1:1"), ("<!--:1-->", "<li>1</li>", true));
        assert_eq!(
            span("1:10"),
            ("<!--:10-->", "<li><!--[3-->x<!--]--></li>", true)
        );
        assert_eq!(span("1:"), ("<!--:-->", "<li>e</li>", true));
        assert!(locate(doc, "1:2").is_err());
        let removed = apply_updates(
            doc,
            &[Update {
                fragment_id: "1:10".into(),
                action: Action::Remove,
                html: String::new(),
                target: None,
                timestamp: 0,
                seq: 1,
            }],
        )
        .unwrap();
        assert_eq!(
            removed,
            "<ul><!--[1--><!--*1--><li>1</li><!--:--><li>e</li><!--]--></ul>"
        );
    }
}
