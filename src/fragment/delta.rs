//! The data delta: what one render changed in a page's data, as paths with
//! their new values and list operations. Small, serializable, and enough to
//! turn the old snapshot into the new one ([`Delta::apply`]).

use minijinja::value::{Value, ValueKind};
use serde::{Deserialize, Serialize};

use super::chunked::{Chunked, Seq};
use super::ingest::Fields;
use crate::error::{Error, ErrorKind, Result};

/// What changed in a page's data from one render to the next.
///
/// Operations apply in order. A path is a list of steps from the root: a
/// step into a map or struct is its key, a step into a list is the item's
/// position (a number), counted in the list as the earlier operations left
/// it. As JSON (serde), a delta is an array of operations:
///
/// ```json
/// [{"op":"set","path":["rows",3,"amount"],"value":12},
///  {"op":"insert","path":["rows"],"index":0,"value":{"id":7,"name":"new"}},
///  {"op":"remove","path":["rows"],"index":41},
///  {"op":"unset","path":["banner"]}]
/// ```
///
/// Values go through serde as plain data: a safe string (from
/// `Value::from_safe_string`) comes back from JSON as a plain string.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Delta {
    ops: Vec<DeltaOp>,
}

/// One change to a page's data. See [`Delta`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum DeltaOp {
    /// Sets the value at `path` (adding the key to its map if missing;
    /// an empty path replaces the whole data).
    Set {
        /// Where.
        path: Vec<Value>,
        /// The new value.
        value: Value,
    },
    /// Removes the key at `path` from its map.
    Unset {
        /// Where.
        path: Vec<Value>,
    },
    /// Inserts `value` into the list at `path`, before position `index`
    /// (`index` equal to the length appends).
    Insert {
        /// The list.
        path: Vec<Value>,
        /// The position the new item takes.
        index: usize,
        /// The new item.
        value: Value,
    },
    /// Removes the item at position `index` from the list at `path`.
    Remove {
        /// The list.
        path: Vec<Value>,
        /// The position of the item removed.
        index: usize,
    },
}

impl DeltaOp {
    /// The path the operation names (for a list operation, the list's).
    pub fn path(&self) -> &[Value] {
        match self {
            DeltaOp::Set { path, .. }
            | DeltaOp::Unset { path }
            | DeltaOp::Insert { path, .. }
            | DeltaOp::Remove { path, .. } => path,
        }
    }
}

impl Delta {
    pub(crate) fn from_ops(ops: Vec<DeltaOp>) -> Delta {
        Delta { ops }
    }

    /// A delta from operations (for an app that states what changed).
    pub fn new(ops: impl IntoIterator<Item = DeltaOp>) -> Delta {
        Delta {
            ops: ops.into_iter().collect(),
        }
    }

    /// The operations, in order.
    pub fn ops(&self) -> &[DeltaOp] {
        &self.ops
    }

    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Adds the operations of `other` after these.
    pub fn extend(&mut self, other: Delta) {
        self.ops.extend(other.ops);
    }

    /// Applies the delta to `data` (the snapshot it was made against) and
    /// returns the new snapshot. `data` itself is not changed: the result
    /// shares every part the delta does not touch.
    pub fn apply(&self, data: &Value) -> Result<Value> {
        let mut cur = data.clone();
        for op in &self.ops {
            cur = apply_op(&cur, op, 0)?;
        }
        Ok(cur)
    }

    /// The dotted data paths the delta touches, in the form the template
    /// dependencies use: map keys from the root, up to the first list.
    /// `""` stands for the whole data.
    pub(crate) fn touched(&self, old: &Value) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for op in &self.ops {
            let path = op.path();
            let mut dotted = String::new();
            let mut cur = Some(old.clone());
            let mut whole = true;
            for (n, step) in path.iter().enumerate() {
                let Some(c) = cur.take() else { break };
                if c.kind() != ValueKind::Map {
                    break;
                }
                whole = false;
                if !dotted.is_empty() {
                    dotted.push('.');
                }
                push_step(&mut dotted, step);
                // The value at the last step is not looked at.
                if n + 1 < path.len() {
                    cur = c.get_item(step).ok().filter(|v| !v.is_undefined());
                }
            }
            if whole && !path.is_empty() && old.kind() != ValueKind::Map {
                dotted.clear();
            }
            if !out.contains(&dotted) {
                out.push(dotted);
            }
        }
        if out.iter().any(|p| p.is_empty()) {
            return vec![String::new()];
        }
        out
    }
}

/// Appends one step of a path to a dotted path: a key as it is (without the
/// formatting machinery, which cost most of a small page's update), other
/// values as they print.
fn push_step(dotted: &mut String, step: &Value) {
    match step.as_str() {
        Some(s) => dotted.push_str(s),
        None => {
            use std::fmt::Write;
            let _ = write!(dotted, "{step}");
        }
    }
}

/// What a delta says about the lists of the data: for each list (by dotted
/// path), its operations by position, when they are simple enough for the
/// walk to follow them without looking at the other items.
#[derive(Debug, Default)]
pub(crate) struct ListHints {
    lists: Vec<(String, Vec<Hint>)>,
    /// Paths set whole: no list at or under them has hints.
    whole: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Hint {
    /// Something inside item `i` changed, or the item was replaced.
    Set(usize),
    Insert(usize),
    Remove(usize),
}

impl ListHints {
    /// The operations on the list at `path`, if they are known and simple:
    /// in-place changes only, or one insert, or one removal.
    pub(crate) fn get(&self, path: &str) -> Option<&[Hint]> {
        if self
            .whole
            .iter()
            .any(|w| w.is_empty() || w == path || path.starts_with(&format!("{w}.")))
        {
            return None;
        }
        let (_, ops) = self.lists.iter().find(|(p, _)| p == path)?;
        let simple = ops.iter().all(|h| matches!(h, Hint::Set(_))) || ops.len() == 1;
        simple.then_some(ops.as_slice())
    }
}

impl Delta {
    /// The list operations of this delta against `old`, the data it
    /// applies to.
    pub(crate) fn list_hints(&self, old: &Value) -> ListHints {
        let mut h = ListHints::default();
        for op in &self.ops {
            let path = op.path();
            let mut dotted = String::new();
            let mut cur = old.clone();
            let mut list_at = None;
            for (n, step) in path.iter().enumerate() {
                if cur.kind() == ValueKind::Seq {
                    list_at = Some(n);
                    break;
                }
                if cur.kind() != ValueKind::Map {
                    break;
                }
                if !dotted.is_empty() {
                    dotted.push('.');
                }
                push_step(&mut dotted, step);
                // Only an insert or a remove looks at what the last step
                // leads to (a list, or not).
                let last = n + 1 == path.len();
                if last && matches!(op, DeltaOp::Set { .. } | DeltaOp::Unset { .. }) {
                    break;
                }
                match cur.get_item(step).ok().filter(|v| !v.is_undefined()) {
                    Some(v) => cur = v,
                    None => {
                        cur = Value::UNDEFINED;
                    }
                }
            }
            let ends_on_list = list_at.is_none() && cur.kind() == ValueKind::Seq;
            let hint = match (op, list_at, ends_on_list) {
                (DeltaOp::Insert { index, .. }, None, true) => Some(Hint::Insert(*index)),
                (DeltaOp::Remove { index, .. }, None, true) => Some(Hint::Remove(*index)),
                (DeltaOp::Set { .. } | DeltaOp::Unset { .. }, Some(n), _) => {
                    usize::try_from(path[n].clone()).ok().map(Hint::Set)
                }
                (_, Some(n), _) => usize::try_from(path[n].clone()).ok().map(Hint::Set),
                _ => None,
            };
            match hint {
                Some(hint) => match h.lists.iter_mut().find(|(p, _)| *p == dotted) {
                    Some((_, ops)) => ops.push(hint),
                    None => h.lists.push((dotted, vec![hint])),
                },
                None => h.whole.push(dotted),
            }
        }
        h
    }
}

fn bad(msg: String) -> Error {
    Error::new(ErrorKind::Data, format!("the delta does not apply: {msg}"))
}

fn index_of(step: &Value, len: usize, what: &str) -> Result<usize> {
    let i = usize::try_from(step.clone())
        .map_err(|_| bad(format!("{step} is not a position in a list")))?;
    if i >= len {
        return Err(bad(format!(
            "{what} {i} is past the end of a list of {len}"
        )));
    }
    Ok(i)
}

/// A list's items, to change: kept in chunks, so that a list changed by a
/// delta once is copied chunk by chunk afterwards, not item by item.
fn items(v: &Value) -> Result<Chunked<Value>> {
    if let Some(items) = v.downcast_object_ref::<Seq>() {
        return Ok(items.0.clone());
    }
    if let Some(items) = v.downcast_object_ref::<Vec<Value>>() {
        return Ok(items.iter().cloned().collect());
    }
    if v.kind() != ValueKind::Seq {
        return Err(bad(format!("a {} is not a list", v.kind())));
    }
    Ok(v.try_iter().map_err(Error::from_template)?.collect())
}

fn seq(items: Chunked<Value>) -> Value {
    Value::from_object(Seq(items))
}

/// Rebuilds `container` with the entry at `step` replaced by what `f`
/// makes of the old entry (`None` when absent); `f` returning `None`
/// removes the entry.
fn with_entry(
    container: &Value,
    step: &Value,
    f: impl FnOnce(Option<Value>) -> Result<Option<Value>>,
) -> Result<Value> {
    match container.kind() {
        ValueKind::Map => {
            if let Some(fields) = container.downcast_object_ref::<Fields>() {
                if let Some(at) = step
                    .as_str()
                    .and_then(|k| fields.0.iter().position(|(f, _)| *f == k))
                {
                    let mut out = fields.0.clone();
                    match f(Some(out[at].1.clone()))? {
                        Some(v) => out[at].1 = v,
                        None => {
                            out.remove(at);
                        }
                    }
                    return Ok(Value::from_object(Fields(out)));
                }
            }
            // Any other map (or a struct gaining a key): minijinja's map.
            let mut pairs: Vec<(Value, Value)> = Vec::new();
            let mut found = None;
            for k in container.try_iter().map_err(Error::from_template)? {
                let v = container.get_item(&k).map_err(Error::from_template)?;
                if k == *step {
                    found = Some(pairs.len());
                }
                pairs.push((k, v));
            }
            match found {
                Some(at) => match f(Some(pairs[at].1.clone()))? {
                    Some(v) => pairs[at].1 = v,
                    None => {
                        pairs.remove(at);
                    }
                },
                None => {
                    if let Some(v) = f(None)? {
                        pairs.push((step.clone(), v));
                    }
                }
            }
            Ok(map_value(pairs))
        }
        ValueKind::Seq => {
            let mut out = items(container)?;
            let i = index_of(step, out.len(), "position")?;
            match f(Some(out[i].clone()))? {
                Some(v) => out.set(i, v),
                None => {
                    out.remove(i);
                }
            }
            Ok(seq(out))
        }
        k => Err(bad(format!("cannot step into a {k} with {step}"))),
    }
}

fn map_value(pairs: Vec<(Value, Value)>) -> Value {
    struct Pairs(Vec<(Value, Value)>);
    impl Serialize for Pairs {
        fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
            use serde::ser::SerializeMap;
            let mut m = s.serialize_map(Some(self.0.len()))?;
            for (k, v) in &self.0 {
                m.serialize_entry(k, v)?;
            }
            m.end()
        }
    }
    Value::from(minijinja::value::Serde(Pairs(pairs)))
}

fn apply_op(cur: &Value, op: &DeltaOp, depth: usize) -> Result<Value> {
    let path = op.path();
    if depth < path.len() {
        let last = depth + 1 == path.len();
        let step = &path[depth];
        return with_entry(cur, step, |old| match (op, last) {
            (DeltaOp::Set { value, .. }, true) => Ok(Some(value.clone())),
            (DeltaOp::Unset { .. }, true) => {
                if old.is_none() {
                    return Err(bad(format!("no key {step} to unset")));
                }
                Ok(None)
            }
            _ => {
                let old = old.ok_or_else(|| bad(format!("no key {step} on the path")))?;
                apply_op(&old, op, depth + 1).map(Some)
            }
        });
    }
    // At the end of the path: the value itself.
    match op {
        DeltaOp::Set { value, .. } => Ok(value.clone()),
        DeltaOp::Unset { .. } => Err(bad("cannot unset the whole data".into())),
        DeltaOp::Insert { index, value, .. } => {
            let mut out = items(cur)?;
            if *index > out.len() {
                return Err(bad(format!(
                    "insert at {index} is past the end of a list of {}",
                    out.len()
                )));
            }
            out.insert(*index, value.clone());
            Ok(seq(out))
        }
        DeltaOp::Remove { index, .. } => {
            let mut out = items(cur)?;
            let i = index_of(&Value::from(*index), out.len(), "remove at")?;
            out.remove(i);
            Ok(seq(out))
        }
    }
}
