//! Streams (Phoenix LiveView's `stream`): a list whose items the server
//! renders once, sends, and forgets. The client keeps them.
//!
//! In the template, a loop over `NAME|stream` is a stream:
//! `{% for m in messages|stream %}<li>{{ m.text }}</li>{% endfor %}`.
//! The `stream` filter always gives an empty sequence, so a fresh render
//! (and plain minijinja) renders the loop with no items, and the page's
//! tree holds none. [`StreamOps`] insert, delete and reset items; each
//! insert renders the loop body once with the item and the page's current
//! data and goes out as one wire operation (`docs/protocol.md`).
//!
//! How it plugs in: a stream loop depends on the pseudo root path
//! `\x01stream/NAME`, so a walk with only that path changed goes down
//! exactly the bodies that lead to the loop, reusing everything else, and
//! builds the loop's scope (`set`s, `with`s, blocks, includes) as any walk
//! does. The operations to render travel in that scope, bound to a name no
//! template can spell, and the loop's slot ([`Walk::stream_slot`]) turns
//! them into patch operations. The loop's own tree value stays the empty
//! list it always is.

use std::fmt;
use std::sync::Arc;

use minijinja::machinery::ast::{CallArg, Expr, ForLoop};
use minijinja::value::{Object, Value};
use serde::Serialize;

use super::compile::{Body, ForNode, Op, Origin};
use super::eval::{Formats, Scope};
use super::ingest;
use super::tree::{self, BodyOut, SlotOut, WireWriter};
use super::{Change, Delta, LivePage, Patch, PatchOp, Walk, encode_key, key_attr};
use crate::error::{Error, ErrorKind, Result};
use crate::protocol::{Action, Update};

/// The pseudo root path a stream loop named `NAME` depends on.
const PSEUDO: &str = "\u{1}stream/";
/// The scope name the pending operations are bound to.
const PENDING: &str = "\u{1}stream";

/// Where [`StreamOps::insert`] puts an item that the client does not hold
/// yet. An item whose key the client already holds is replaced where it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamAt {
    /// First.
    Start,
    /// Last.
    End,
    /// At this position among the items the client holds (0 is first; past
    /// the end appends).
    Index(usize),
}

impl StreamAt {
    /// On the wire: `0` first, `-1` last, `n` at position `n`.
    fn wire(self) -> i64 {
        match self {
            StreamAt::Start => 0,
            StreamAt::End => -1,
            StreamAt::Index(i) => i64::try_from(i).unwrap_or(i64::MAX),
        }
    }
}

/// Operations on one stream of a page, applied in order by
/// [`LivePage::stream`] or [`Session::stream`](crate::Session::stream).
///
/// A stream is a loop over `NAME|stream` in the template
/// (`{% for m in messages|stream %}`). Its items are not part of the
/// page's data and the server keeps none of them after it has sent them:
/// not the items, not their keys, not their HTML. The client keeps them.
///
/// ```
/// # use statetemplate::{StreamOps, StreamAt};
/// # use serde_json::json;
/// let mut s = StreamOps::new("messages");
/// s.insert(&json!({"id": 7, "text": "hi"}), StreamAt::End)
///     .delete(3)
///     .limit(-100); // the client keeps the last 100 items
/// ```
///
/// - **Keys.** Items are keyed by their `id` attribute, or by the attribute
///   a `keyed` filter on the loop names (`messages|keyed("slug")|stream`).
///   An item without a key is an error.
/// - **Insert is an upsert.** If the client holds an item with the same
///   key, that item is re-rendered in place (it keeps its position);
///   otherwise the item goes where [`StreamAt`] says.
/// - **Limit.** With [`limit`](Self::limit), after each insert of this
///   batch the client trims its list: `n > 0` keeps the first `n` items,
///   `n < 0` the last `-n` (as in LiveView).
/// - **Delete** removes the item with that key if the client holds it (it
///   may have been trimmed away: that is not an error).
/// - **Reset** removes every item the client holds; inserts after it in
///   the same batch fill the stream again.
///
/// What a stream cannot do: an item is rendered once, when it is inserted,
/// with the data the page has then; later data changes do not re-render
/// it (insert it again to re-render it). A client that joins (a new tab, a
/// reconnect that cannot resume, a restart) gets the page with every
/// stream empty: re-insert what it should show. The same happens when a
/// fragment around the stream is replaced whole (a branch of an `if`
/// around it flips). So "the client equals a fresh render" does not hold
/// for streams; what holds is that the client's list equals the list its
/// operations make (see `docs/architecture.md`).
#[derive(Debug, Clone)]
pub struct StreamOps {
    name: String,
    steps: Vec<Step>,
    limit: Option<i64>,
    error: Option<Arc<Error>>,
}

#[derive(Debug, Clone)]
enum Step {
    Insert(Value, StreamAt),
    Delete(Value),
    Reset,
}

impl StreamOps {
    /// Operations on the stream `name` (the variable the template's
    /// `…|stream` loop iterates, or the name given as `stream("name")`).
    pub fn new(name: &str) -> StreamOps {
        StreamOps {
            name: name.to_owned(),
            steps: Vec::new(),
            limit: None,
            error: None,
        }
    }

    /// The stream's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Inserts `item` at `at`, or re-renders it in place if the client
    /// holds its key.
    pub fn insert<T: Serialize + ?Sized>(&mut self, item: &T, at: StreamAt) -> &mut Self {
        match ingest::ingest(None, item) {
            Ok(v) => self.steps.push(Step::Insert(v.value, at)),
            Err(e) => {
                self.error.get_or_insert(Arc::new(e));
            }
        }
        self
    }

    /// Inserts `item` last ([`insert`](Self::insert) at [`StreamAt::End`]).
    pub fn push<T: Serialize + ?Sized>(&mut self, item: &T) -> &mut Self {
        self.insert(item, StreamAt::End)
    }

    /// Removes the item with this key from the client's list, if there.
    pub fn delete(&mut self, key: impl Into<Value>) -> &mut Self {
        self.steps.push(Step::Delete(key.into()));
        self
    }

    /// Removes every item from the client's list (LiveView's `reset`).
    pub fn reset(&mut self) -> &mut Self {
        self.steps.push(Step::Reset);
        self
    }

    /// After each insert of this batch, the client keeps the first `n`
    /// items (`n > 0`) or the last `-n` (`n < 0`). `0` is an error.
    pub fn limit(&mut self, n: i64) -> &mut Self {
        self.limit = Some(n);
        self
    }

    /// Whether no operation was asked.
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }
}

/// The operations being rendered, bound in the walk's scope.
struct Pending(StreamOps);

impl fmt::Debug for Pending {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<stream operations>")
    }
}

impl Object for Pending {}

/// One stream operation of a patch.
#[derive(Debug, Clone)]
pub(crate) enum StreamOp {
    Insert {
        list: Arc<str>,
        key: Arc<str>,
        at: i64,
        limit: Option<i64>,
        body: Arc<BodyOut>,
    },
    Delete {
        list: Arc<str>,
        key: Arc<str>,
    },
    Reset {
        list: Arc<str>,
    },
}

impl StreamOp {
    /// Writes the operation as wire JSON, without its closing bracket.
    pub(super) fn encode(&self, w: &mut WireWriter<'_>, out: &mut String) {
        match self {
            StreamOp::Insert {
                list,
                key,
                at,
                limit,
                body,
            } => {
                out.push_str("[\"*\",");
                tree::json_addr(list, out);
                out.push(',');
                tree::json_key(key, out);
                out.push(',');
                out.push_str(&at.to_string());
                out.push(',');
                w.body(body, out);
                if let Some(n) = limit {
                    out.push(',');
                    out.push_str(&n.to_string());
                }
            }
            StreamOp::Delete { list, key } => {
                out.push_str("[\"/\",");
                tree::json_addr(list, out);
                out.push(',');
                tree::json_key(key, out);
            }
            StreamOp::Reset { list } => {
                out.push_str("[\"!\",");
                tree::json_addr(list, out);
            }
        }
    }

    /// The operation as a seed-style update, where one can say it: inserts
    /// at the start or end (as prepend and append, without the limit and
    /// without replacing an item the client holds), deletes and resets.
    /// An insert at an index has none.
    pub(super) fn update(&self, timestamp: u64, seq: u64) -> Option<Update> {
        let mk = |fragment_id: String, html: String, action: Action| Update {
            fragment_id,
            html,
            action,
            target: None,
            timestamp,
            seq,
        };
        Some(match self {
            StreamOp::Insert {
                list,
                key,
                at,
                body,
                ..
            } => {
                let action = match at {
                    0 => Action::Prepend,
                    -1 => Action::Append,
                    _ => return None,
                };
                let mut h = String::new();
                tree::write_body(body, &mut h);
                mk(format!("{list}:{key}"), h, action)
            }
            StreamOp::Delete { list, key } => {
                mk(format!("{list}:{key}"), String::new(), Action::Remove)
            }
            StreamOp::Reset { list } => mk(list.to_string(), String::new(), Action::Replace),
        })
    }
}

/// The stream a loop iterates, if its iterable ends in the `stream` filter
/// (`messages|stream`, `x|keyed("slug")|stream`, `y|stream("name")`):
/// `Some((name, key attribute))`.
fn stream_of(iter: &Expr<'_>) -> Option<(Option<String>, Option<String>)> {
    let mut e = iter;
    let mut name: Option<Option<String>> = None;
    let mut key = None;
    while let Expr::Filter(fl) = e {
        let arg = match fl.args.as_slice() {
            [CallArg::Pos(Expr::Const(c))] => c.value.as_str().map(str::to_owned),
            _ => None,
        };
        match fl.name {
            "stream" if name.is_none() => name = Some(arg),
            "keyed" if key.is_none() => key = arg,
            _ => {}
        }
        match &fl.expr {
            Some(inner) => e = inner,
            None => break,
        }
    }
    let name = name?;
    Some((name.or_else(|| dotted(e)), key))
}

fn dotted(e: &Expr<'_>) -> Option<String> {
    match e {
        Expr::Var(v) => Some(v.id.to_owned()),
        Expr::GetAttr(g) => Some(format!("{}.{}", dotted(&g.expr)?, g.name)),
        _ => None,
    }
}

fn template_error(origin: &Origin, line: u16, msg: &str) -> Error {
    Error::new(
        ErrorKind::Template,
        format!("{msg} (in {}:{line})", origin.name),
    )
}

/// Marks a compiled loop as a stream when it iterates `…|stream`, after
/// checking that it can be one.
pub(super) fn mark(f: &ForLoop<'_>, node: &mut ForNode, origin: &Origin, line: u16) -> Result<()> {
    let Some((name, key)) = stream_of(&f.iter) else {
        return Ok(());
    };
    let err = |msg: &str| template_error(origin, line, msg);
    let name = name.ok_or_else(|| {
        err("a stream loop needs a name: iterate a variable (`messages|stream`) or name it (`x|stream(\"name\")`)")
    })?;
    if node.anchor.is_none() {
        return Err(err(&format!(
            "the stream {name:?} must be where a comment anchor can go: between tags, not inside an attribute, a raw-text element or another loop"
        )));
    }
    if !f.else_body.is_empty() {
        return Err(err(&format!(
            "the stream {name:?} cannot have an `else`: the server does not know whether the client holds items"
        )));
    }
    if node.unpack || f.filter_expr.is_some() || node.loop_flags != 0 {
        return Err(err(&format!(
            "the stream {name:?}: a stream loop binds one name, has no `if` filter and does not read `loop` (items have no position the server knows)"
        )));
    }
    node.key = key.map(Into::into).or(node.key.take());
    node.iter_deps.roots.push(format!("{PSEUDO}{name}").into());
    node.stream = Some(name.into());
    Ok(())
}

/// A recursive loop cannot be a stream.
pub(super) fn not_recursive(iter: &Expr<'_>, origin: &Origin, line: u16) -> Result<()> {
    match stream_of(iter) {
        Some(_) => Err(template_error(
            origin,
            line,
            "a stream loop cannot be `recursive`",
        )),
        None => Ok(()),
    }
}

/// Whether the program has a stream loop named `name` (outside loop items,
/// where stream loops are).
fn has_stream(b: &Body, name: &str) -> bool {
    b.ops.iter().any(|op| match op {
        Op::For(f) => f.stream.as_deref() == Some(name),
        Op::If { branches, .. } => branches.iter().any(|b| has_stream(b, name)),
        Op::Sub { body, .. } | Op::Region { body } => has_stream(body, name),
        _ => false,
    })
}

impl Walk<'_> {
    /// The slot of a stream loop: its list never holds items. When the
    /// walk carries operations for this stream, each becomes a patch
    /// operation (an insert renders the body once, with the item).
    pub(super) fn stream_slot(
        &mut self,
        f: &ForNode,
        scope: &Scope,
        prev: Option<&SlotOut>,
    ) -> Result<(SlotOut, Change)> {
        let Some(SlotOut::List(list)) = prev else {
            // A fresh render: the iterable (the `stream` filter) is empty.
            let (list, _) = self.list(f, scope, None)?;
            return Ok((SlotOut::List(list), Change::None));
        };
        let pending = scope.lookup(PENDING);
        let ops = pending
            .as_ref()
            .and_then(|p| p.downcast_object_ref::<Pending>())
            .map(|p| &p.0)
            .filter(|o| f.stream.as_deref() == Some(o.name.as_str()));
        let (Some(ops), Some(anchor)) = (ops, &f.anchor) else {
            return Ok((SlotOut::List(list.clone()), Change::None));
        };
        for step in &ops.steps {
            let op = match step {
                Step::Reset => StreamOp::Reset {
                    list: anchor.clone(),
                },
                Step::Delete(k) => StreamOp::Delete {
                    list: anchor.clone(),
                    key: encode_key(&k.to_string()).into(),
                },
                Step::Insert(item, at) => {
                    let key = key_attr(f, item).ok_or_else(|| {
                        Error::new(
                            ErrorKind::Data,
                            format!(
                                "an item of the stream {:?} has no {:?} to key it by",
                                ops.name,
                                f.key.as_deref().unwrap_or("id")
                            ),
                        )
                    })?;
                    let s = scope.bind(&f.target[0], item.clone());
                    let saved = self.force;
                    self.force = true;
                    let r = self.body(&f.body, &s, None);
                    self.force = saved;
                    StreamOp::Insert {
                        list: anchor.clone(),
                        key: key.into(),
                        at: at.wire(),
                        limit: ops.limit,
                        body: r?.0,
                    }
                }
            };
            self.ops.push(PatchOp::Stream(op));
        }
        // The list is unchanged (empty): nothing on the way up changes, so
        // the page's tree stays the very same tree.
        Ok((SlotOut::List(list.clone()), Change::None))
    }
}

impl LivePage {
    /// Applies operations to one of the page's streams (see [`StreamOps`])
    /// and returns the patch that sends them. The page's data and tree do
    /// not change; the sequence number does when anything is sent.
    /// Operations for a stream that is not on the page now (in a branch not
    /// taken) send nothing. On error the page is left as it was.
    pub fn stream(&mut self, ops: &StreamOps) -> Result<Patch> {
        if let Some(e) = &ops.error {
            return Err(Error::new(e.kind(), e.to_string()));
        }
        if ops.limit == Some(0) {
            return Err(Error::new(
                ErrorKind::Data,
                "a stream limit is a positive or negative number of items, not 0",
            ));
        }
        if !has_stream(&self.program.root, &ops.name) {
            return Err(Error::new(
                ErrorKind::Data,
                format!(
                    "the template has no stream named {:?} (a loop over `{}|stream`)",
                    ops.name, ops.name
                ),
            ));
        }
        let seq = self.seq;
        let empty = || Patch {
            ops: Vec::new(),
            seq,
            delta: Delta::default(),
        };
        if ops.steps.is_empty() {
            return Ok(empty());
        }
        let changed = [format!("{PSEUDO}{}", ops.name)];
        self.wake()?;
        let env = self.engine.inner.env.read().expect("lock");
        let mut w = Walk {
            env: &env,
            fmt: Formats::new(&env),
            changed: &changed,
            force: false,
            ops: Vec::new(),
            hints: None,
        };
        let scope =
            Scope::new(self.data.clone()).bind(PENDING, Value::from_object(Pending(ops.clone())));
        let (root, dirty) = w.body(&self.program.root, &scope, self.root.as_ref())?;
        let mut out = w.ops;
        drop(env);
        if !dirty.is_empty() {
            // Something the walk went past that reads what we cannot track
            // rendered differently: sent like any render's change.
            out.push(PatchOp::Slots {
                id: String::new(),
                body: root.clone(),
                slots: dirty,
            });
        }
        self.root = Some(root);
        if out.is_empty() {
            return Ok(empty());
        }
        self.seq += 1;
        Ok(Patch {
            ops: out,
            seq: self.seq,
            delta: Delta::default(),
        })
    }
}
