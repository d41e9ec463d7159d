//! The targeted update API: the app says what changed, by path or by list
//! item key, instead of handing over the whole data.

use minijinja::value::{Value, ValueKind};
use serde::Serialize;

use super::delta::{Delta, DeltaOp};
use super::ingest;
use crate::error::{Error, ErrorKind, Result};

/// Where an inserted or moved list item goes.
#[derive(Debug, Clone)]
pub enum At {
    /// First.
    Start,
    /// Last.
    End,
    /// At this position (0 is first; the length appends).
    Index(usize),
    /// Just before the item with this key.
    Before(Value),
    /// Just after the item with this key.
    After(Value),
}

/// A set of targeted changes to a page's data, applied in order by
/// [`LivePage::edit`](crate::LivePage::edit) or
/// [`Session::edit`](crate::Session::edit).
///
/// Paths are dotted (`"user.name"`, `"rows.3.amount"`): a step into a map
/// or struct names a key, a step into a list is a position. List items are
/// found by key: the value of their `id` attribute, or of the attribute
/// [`Edit::key_attr`] names (use the one the template's `keyed` filter
/// names). The result is exactly what rendering the equivalent whole data
/// would give, frame for frame.
///
/// ```
/// # use statetemplate::Edit;
/// # use statetemplate::fragment::At;
/// let mut e = Edit::default();
/// e.assign("title", "Inbox")
///     .set("user.name", "Ann")
///     .insert("rows", At::Start, &serde_json::json!({"id": 7, "subject": "hi"}))
///     .update_item("rows", 3, "read", &true)
///     .remove("rows", 4);
/// ```
///
/// Cost: a change by path touches only the values on its path. A change by
/// key first finds the item, a scan of the list's keys (one attribute read
/// per item, far cheaper than rendering; see docs/benchmarks.md).
#[derive(Debug, Default)]
pub struct Edit {
    steps: Vec<Step>,
    key: Option<String>,
    error: Option<Error>,
}

#[derive(Debug)]
enum Step {
    Set(String, Value),
    Unset(String),
    Insert(String, At, Value),
    Remove(String, Value),
    Move(String, Value, At),
    Update(String, Value, String, Value),
}

fn value_of<T: Serialize + ?Sized>(v: &T) -> Result<Value> {
    Ok(ingest::ingest(None, v)?.value)
}

impl Edit {
    fn value<T: Serialize + ?Sized>(&mut self, v: &T) -> Value {
        match value_of(v) {
            Ok(v) => v,
            Err(e) => {
                self.error.get_or_insert(e);
                Value::UNDEFINED
            }
        }
    }

    /// Items are keyed by this attribute (default `id`).
    pub fn key_attr(&mut self, attr: &str) -> &mut Self {
        self.key = Some(attr.to_owned());
        self
    }

    /// Replaces one top-level key (LiveView's `assign`).
    pub fn assign<T: Serialize + ?Sized>(&mut self, key: &str, value: &T) -> &mut Self {
        let v = self.value(value);
        self.steps.push(Step::Set(escape_dots(key), v));
        self
    }

    /// Sets the value at a dotted path (adding the last key if missing).
    pub fn set<T: Serialize + ?Sized>(&mut self, path: &str, value: &T) -> &mut Self {
        let v = self.value(value);
        self.steps.push(Step::Set(path.to_owned(), v));
        self
    }

    /// Removes the key at a dotted path.
    pub fn unset(&mut self, path: &str) -> &mut Self {
        self.steps.push(Step::Unset(path.to_owned()));
        self
    }

    /// Inserts an item into the list at `list`.
    pub fn insert<T: Serialize + ?Sized>(&mut self, list: &str, at: At, item: &T) -> &mut Self {
        let v = self.value(item);
        self.steps.push(Step::Insert(list.to_owned(), at, v));
        self
    }

    /// Appends an item to the list at `list`.
    pub fn push<T: Serialize + ?Sized>(&mut self, list: &str, item: &T) -> &mut Self {
        self.insert(list, At::End, item)
    }

    /// Removes the item with `key` from the list at `list`.
    pub fn remove(&mut self, list: &str, key: impl Into<Value>) -> &mut Self {
        self.steps.push(Step::Remove(list.to_owned(), key.into()));
        self
    }

    /// Moves the item with `key` within the list at `list`.
    pub fn move_item(&mut self, list: &str, key: impl Into<Value>, to: At) -> &mut Self {
        self.steps.push(Step::Move(list.to_owned(), key.into(), to));
        self
    }

    /// Sets `path` (dotted, `""` for the whole item) inside the item with
    /// `key` of the list at `list`.
    pub fn update_item<T: Serialize + ?Sized>(
        &mut self,
        list: &str,
        key: impl Into<Value>,
        path: &str,
        value: &T,
    ) -> &mut Self {
        let v = self.value(value);
        self.steps.push(Step::Update(
            list.to_owned(),
            key.into(),
            path.to_owned(),
            v,
        ));
        self
    }

    /// Whether nothing was asked.
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// Turns the changes into a delta against `data`, and the data they
    /// make. Fails, changing nothing, if a path or key is not there.
    pub(crate) fn resolve(&self, data: &Value) -> Result<(Delta, Value)> {
        if let Some(e) = &self.error {
            return Err(Error::new(e.kind(), e.to_string()));
        }
        let attr = self.key.as_deref().unwrap_or("id");
        let mut cur = data.clone();
        let mut ops = Vec::with_capacity(self.steps.len());
        for step in &self.steps {
            let op_list = match step {
                Step::Set(p, v) => vec![DeltaOp::Set {
                    path: steps(&cur, p)?,
                    value: v.clone(),
                }],
                Step::Unset(p) => vec![DeltaOp::Unset {
                    path: steps(&cur, p)?,
                }],
                Step::Insert(l, at, v) => {
                    let (path, list) = list_at(&cur, l)?;
                    let index = position(&list, at, attr, None)?;
                    vec![DeltaOp::Insert {
                        path,
                        index,
                        value: v.clone(),
                    }]
                }
                Step::Remove(l, k) => {
                    let (path, list) = list_at(&cur, l)?;
                    let index = find(&list, attr, k)?;
                    vec![DeltaOp::Remove { path, index }]
                }
                Step::Move(l, k, to) => {
                    let (path, list) = list_at(&cur, l)?;
                    let from = find(&list, attr, k)?;
                    let item = list.get_item_by_index(from).map_err(Error::from_template)?;
                    let index = position(&list, to, attr, Some(from))?;
                    vec![
                        DeltaOp::Remove {
                            path: path.clone(),
                            index: from,
                        },
                        DeltaOp::Insert {
                            path,
                            index,
                            value: item,
                        },
                    ]
                }
                Step::Update(l, k, p, v) => {
                    let (mut path, list) = list_at(&cur, l)?;
                    let index = find(&list, attr, k)?;
                    path.push(Value::from(index));
                    let item = list
                        .get_item_by_index(index)
                        .map_err(Error::from_template)?;
                    if !p.is_empty() {
                        path.extend(steps(&item, p)?);
                    }
                    vec![DeltaOp::Set {
                        path,
                        value: v.clone(),
                    }]
                }
            };
            let d = Delta::new(op_list);
            cur = d.apply(&cur)?;
            ops.extend(d.ops().iter().cloned());
        }
        Ok((Delta::new(ops), cur))
    }
}

fn escape_dots(key: &str) -> String {
    // A top-level key is one step, even with a dot in it.
    format!("\u{0}{key}")
}

fn not_found(msg: String) -> Error {
    Error::new(ErrorKind::Data, format!("the edit does not apply: {msg}"))
}

/// A dotted path as steps, decided against the data: a number steps into
/// a list, anything else names a key (of a map: a string key, or a number
/// key when the map has that one).
fn steps(data: &Value, path: &str) -> Result<Vec<Value>> {
    if let Some(key) = path.strip_prefix('\u{0}') {
        return Ok(vec![Value::from(key)]);
    }
    let mut out = Vec::new();
    let mut cur = Some(data.clone());
    for part in path.split('.') {
        let step = match &cur {
            Some(c) if c.kind() == ValueKind::Seq => {
                let i: usize = part
                    .parse()
                    .map_err(|_| not_found(format!("{part:?} is not a position in {path:?}")))?;
                Value::from(i)
            }
            Some(c) if c.kind() == ValueKind::Map => {
                let s = Value::from(part);
                match (lookup(c, &s), part.parse::<i64>()) {
                    (None, Ok(n)) if lookup(c, &Value::from(n)).is_some() => Value::from(n),
                    _ => s,
                }
            }
            _ => Value::from(part),
        };
        cur = cur.as_ref().and_then(|c| lookup(c, &step));
        out.push(step);
    }
    Ok(out)
}

fn lookup(c: &Value, k: &Value) -> Option<Value> {
    c.get_item(k).ok().filter(|v| !v.is_undefined())
}

fn list_at(data: &Value, path: &str) -> Result<(Vec<Value>, Value)> {
    let steps = steps(data, path)?;
    let mut cur = data.clone();
    for s in &steps {
        cur = lookup(&cur, s).ok_or_else(|| not_found(format!("no list at {path:?}")))?;
    }
    if cur.kind() != ValueKind::Seq {
        return Err(not_found(format!(
            "{path:?} is a {}, not a list",
            cur.kind()
        )));
    }
    Ok((steps, cur))
}

/// The position of the item whose key attribute equals `key`.
fn find(list: &Value, attr: &str, key: &Value) -> Result<usize> {
    let items = list.try_iter().map_err(Error::from_template)?;
    for (i, item) in items.enumerate() {
        if item.get_attr(attr).is_ok_and(|k| k == *key) {
            return Ok(i);
        }
    }
    Err(not_found(format!("no item with {attr} {key}")))
}

/// Where `at` falls in `list`; `moving` is the position of an item taken
/// out first (for a move).
fn position(list: &Value, at: &At, attr: &str, moving: Option<usize>) -> Result<usize> {
    let len = list.len().unwrap_or(0) - usize::from(moving.is_some());
    let after_removal = |i: usize| match moving {
        Some(m) if i > m => i - 1,
        _ => i,
    };
    Ok(match at {
        At::Start => 0,
        At::End => len,
        At::Index(i) if *i <= len => *i,
        At::Index(i) => return Err(not_found(format!("position {i} is past the end ({len})"))),
        At::Before(k) => after_removal(find(list, attr, k)?),
        At::After(k) => after_removal(find(list, attr, k)?) + 1,
    })
}
