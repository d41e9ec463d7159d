//! Reference appliers: the model of the browser, and the oracle of every
//! diff test. Applying what the engine emitted to what the client held must
//! give exactly the HTML of a fresh render.
//!
//! - [`WireClient`] holds what the JS client holds (the statics table and the
//!   tree of dynamic values) and applies wire frames; the JS client mirrors it.
//! - [`apply_updates`] applies seed-style [`Update`]s to an HTML string by
//!   their comment anchors, as a client without the tree would.

use std::collections::HashMap;

use serde_json::Value as Json;

use crate::error::{Error, ErrorKind, Result};
use crate::fragment::tree::CLOSE;
use crate::protocol::{Action, Update};

fn bad(msg: impl Into<String>) -> Error {
    Error::new(ErrorKind::Protocol, msg)
}

/// Applies updates to annotated HTML by fragment id.
pub fn apply_updates(html: &str, updates: &[Update]) -> Result<String> {
    let mut doc = html.to_owned();
    for u in updates {
        apply_update(&mut doc, u)?;
    }
    Ok(doc)
}

/// Byte ranges of a fragment: `(open marker start, content start, content end,
/// close marker end)`.
fn locate(doc: &str, id: &str) -> Result<(usize, usize, usize, usize)> {
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

fn split_item(id: &str) -> Result<(&str, &str)> {
    id.split_once(':')
        .ok_or_else(|| bad(format!("{id:?} is not a list item id")))
}

fn apply_update(doc: &mut String, u: &Update) -> Result<()> {
    let wrap = |id: &str, html: &str| format!("<!--[{id}-->{html}{CLOSE}");
    match u.action {
        Action::Replace if u.fragment_id.is_empty() => *doc = u.html.clone(),
        Action::Replace => {
            let (_, a, b, _) = locate(doc, &u.fragment_id)?;
            doc.replace_range(a..b, &u.html);
        }
        Action::Remove => {
            let (a, _, _, b) = locate(doc, &u.fragment_id)?;
            doc.replace_range(a..b, "");
        }
        Action::Prepend | Action::Append => {
            let (list, _) = split_item(&u.fragment_id)?;
            let (_, a, b, _) = locate(doc, list)?;
            let at = if u.action == Action::Prepend { a } else { b };
            doc.insert_str(at, &wrap(&u.fragment_id, &u.html));
        }
        Action::InsertAfter => {
            let target = u
                .target
                .as_deref()
                .ok_or_else(|| bad("insert_after needs a target"))?;
            let (_, _, _, end) = locate(doc, target)?;
            doc.insert_str(end, &wrap(&u.fragment_id, &u.html));
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

    /// Applies one frame. On error the client may be partly updated, as a
    /// browser would be; it should then ask for a join frame.
    pub fn apply(&mut self, frame: &str) -> Result<()> {
        let f: Json = serde_json::from_str(frame).map_err(|e| bad(format!("bad frame: {e}")))?;
        if f.get("v").and_then(Json::as_u64) != Some(u64::from(crate::fragment::WIRE_VERSION)) {
            return Err(bad("unsupported wire version"));
        }
        if let Some(s) = f.get("s").and_then(Json::as_object) {
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
                let anchors = entry
                    .get(1)
                    .and_then(Json::as_array)
                    .ok_or_else(|| bad("bad anchors"))?
                    .iter()
                    .map(|a| a.as_str().map(str::to_owned))
                    .collect();
                self.statics.insert(sid, Statics { parts, anchors });
            }
        }
        let ops = f
            .get("o")
            .and_then(Json::as_array)
            .ok_or_else(|| bad("no ops"))?;
        for op in ops {
            self.op(op)?;
        }
        self.seq = f.get("q").and_then(Json::as_u64).unwrap_or(self.seq);
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
                    let anchor = s.anchors.get(i).cloned().flatten();
                    for (k, b) in &l.items {
                        if let Some(a) = &anchor {
                            out.push_str(&format!("<!--[{a}:{k}-->"));
                        }
                        self.write_body(b, out);
                        if anchor.is_some() {
                            out.push_str(CLOSE);
                        }
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
        let items = keys
            .iter()
            .zip(bodies)
            .map(|(k, b)| {
                Ok((
                    k.as_str().ok_or_else(|| bad("bad key"))?.to_owned(),
                    self.decode_body(b)?,
                ))
            })
            .collect::<Result<_>>()?;
        Ok(List { items, empty: None })
    }

    fn op(&mut self, op: &Json) -> Result<()> {
        let a = op.as_array().ok_or_else(|| bad("op is not an array"))?;
        let kind = a
            .first()
            .and_then(Json::as_str)
            .ok_or_else(|| bad("op without kind"))?;
        let s = |i: usize| {
            a.get(i)
                .and_then(Json::as_str)
                .ok_or_else(|| bad("op field missing"))
        };
        match kind {
            "t" => {
                let text = s(2)?.to_owned();
                *self.slot_mut(s(1)?)? = Dyn::Text(text);
            }
            "r" => {
                let body = self.decode_body(a.get(2).ok_or_else(|| bad("no body"))?)?;
                let id = s(1)?;
                if id.is_empty() {
                    self.root = Some(body);
                } else {
                    *self.body_mut(id)? = body;
                }
            }
            "p" => {
                let pairs = a
                    .get(2)
                    .and_then(Json::as_array)
                    .ok_or_else(|| bad("no slots"))?;
                let mut decoded = Vec::new();
                for pair in pairs.chunks(2) {
                    let [n, d] = pair else {
                        return Err(bad("odd slot list"));
                    };
                    let n = n.as_u64().ok_or_else(|| bad("bad slot index"))? as usize;
                    decoded.push((n, self.decode_dyn(d)?));
                }
                let body = self.body_mut(s(1)?)?;
                for (n, d) in decoded {
                    *body
                        .slots
                        .get_mut(n)
                        .ok_or_else(|| bad("slot out of range"))? = d;
                }
            }
            "l" => {
                let list = self.decode_list(a.get(2).ok_or_else(|| bad("no list"))?)?;
                *self.slot_mut(s(1)?)? = Dyn::List(list);
            }
            "i" => {
                let body = self.decode_body(a.get(4).ok_or_else(|| bad("no body"))?)?;
                let key = s(2)?.to_owned();
                let after = a.get(3).and_then(Json::as_str).map(str::to_owned);
                let list = self.list_mut(s(1)?)?;
                let at = position_after(list, after.as_deref())?;
                list.items.insert(at, (key, body));
            }
            "x" => {
                let key = s(2)?.to_owned();
                let list = self.list_mut(s(1)?)?;
                let at = list
                    .items
                    .iter()
                    .position(|(k, _)| *k == key)
                    .ok_or_else(|| bad("no such item"))?;
                list.items.remove(at);
            }
            "m" => {
                let key = s(2)?.to_owned();
                let after = a.get(3).and_then(Json::as_str).map(str::to_owned);
                let list = self.list_mut(s(1)?)?;
                let at = list
                    .items
                    .iter()
                    .position(|(k, _)| *k == key)
                    .ok_or_else(|| bad("no such item"))?;
                let item = list.items.remove(at);
                let to = position_after(list, after.as_deref())?;
                list.items.insert(to, item);
            }
            "s" => {
                // A stream insert: replace in place if the key is held,
                // else insert at AT (0 first, -1 last, n at n); then trim
                // to LIMIT.
                let key = s(2)?.to_owned();
                let at = a
                    .get(3)
                    .and_then(Json::as_i64)
                    .filter(|n| *n >= -1)
                    .ok_or_else(|| bad("bad stream position"))?;
                let body = self.decode_body(a.get(4).ok_or_else(|| bad("no body"))?)?;
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
                let list = self.stream_mut(s(1)?)?;
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
            "d" => {
                let key = s(2)?.to_owned();
                let list = self.stream_mut(s(1)?)?;
                list.items.retain(|(k, _)| *k != key);
            }
            "c" => {
                self.stream_mut(s(1)?)?.items.clear();
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
        } else if tail.starts_with("<!--[") {
            match tail.find("-->") {
                Some(e) if is_anchor_id(&tail[5..e]) => rest = &tail[e + 3..],
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
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'%' | b'~'))
}
