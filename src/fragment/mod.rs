//! The fragment engine: pure and synchronous. From a template and a sequence
//! of data values to an initial annotated render and, for each next value,
//! the smallest set of operations that turns the old page into the new one.
//!
//! See `docs/architecture.md` for the model and `docs/protocol.md` for the wire.

mod chunked;
mod compile;
pub(crate) mod delta;
pub(crate) mod diff;
mod edit;
mod effects;
mod eval;
mod fresh;
mod html;
pub(crate) mod ingest;
mod lists;
pub(crate) mod markers;
mod recursive;
mod reload;
mod stream;
pub(crate) mod tree;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, RwLock};

use minijinja::Environment;
use minijinja::value::Value;
use serde::Serialize;

use crate::error::{Error, ErrorKind, Result};
use crate::protocol::{Action, Update};
pub(crate) use compile::counter;
use compile::{Body, Compiler, Counters, Op, Program};
pub use delta::{Delta, DeltaOp};
pub use edit::{At, Edit};
use eval::{Formats, Scope, eval_names, eval_value, render_leaf};
use lists::{encode_key, item_keys, key_attr};
pub use stream::{StreamAt, StreamOps};
use tree::{BodyOut, ListOut, SlotOut, Text, WireWriter};

/// The version of the wire format written by [`LivePage::encode`].
pub const WIRE_VERSION: u32 = 2;

/// Compiles templates into fragment programs and renders them.
///
/// Cheap to clone; clones share the environment and the compiled programs.
/// It registers one filter in the environment, `keyed(attr)`, which leaves a
/// sequence unchanged and tells the engine which attribute keys a loop's
/// items: `{% for row in rows|keyed("slug") %}`. Without it, items are keyed
/// by their `id` attribute when they have one, else by position.
/// It also registers `stream`, which marks a loop as a stream
/// (`{% for m in messages|stream %}`, see [`StreamOps`]): it always gives
/// an empty sequence, since a stream's items are sent, never kept.
#[derive(Clone)]
pub struct FragmentEngine {
    inner: Arc<Inner>,
}

struct Inner {
    env: RwLock<Environment<'static>>,
    programs: RwLock<HashMap<String, Arc<Program>>>,
    counters: Counters,
    reload: reload::Reload,
}

impl fmt::Debug for FragmentEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FragmentEngine").finish_non_exhaustive()
    }
}

/// Registers the `keyed` filter on an environment (the engine does this
/// itself; call it to render the same templates with plain minijinja).
pub fn register_filters(env: &mut Environment<'_>) {
    env.add_filter("keyed", |v: Value, _attr: String| v);
    // A stream's items never come from the data: the loop renders empty
    // (see `StreamOps`).
    env.add_filter("stream", |_v: Value, _name: Option<String>| {
        Value::from(Vec::<Value>::new())
    });
}

impl FragmentEngine {
    /// Takes the user's environment (loaders, filters, globals all apply).
    pub fn new(mut env: Environment<'static>) -> FragmentEngine {
        register_filters(&mut env);
        fresh::register(&mut env);
        let reload = reload::Reload::new(env.auto_reload().then_some(reload::DEFAULT_EVERY));
        FragmentEngine {
            inner: Arc::new(Inner {
                env: RwLock::new(env),
                programs: RwLock::new(HashMap::new()),
                counters: Counters::default(),
                reload,
            }),
        }
    }

    fn program(&self, name: &str) -> Result<Arc<Program>> {
        if let Some(p) = self.inner.programs.read().expect("lock").get(name) {
            return Ok(p.clone());
        }
        let mut env = self.inner.env.write().expect("lock");
        // Another thread may have compiled it while we waited.
        if let Some(p) = self.inner.programs.read().expect("lock").get(name) {
            return Ok(p.clone());
        }
        let mut c = Compiler::new(&env, &self.inner.counters);
        let (program, whole) = match c.compile(name) {
            Ok(p) => (p, false),
            Err(e) if e.kind() == ErrorKind::Unsupported => {
                tracing::warn!(template = name, reason = %e, "rendering the template as one fragment");
                c = Compiler::new(&env, &self.inner.counters);
                (c.whole(name)?, true)
            }
            Err(e) => return Err(e),
        };
        let synths = std::mem::take(&mut c.synths);
        for (n, s) in synths {
            env.add_template_owned(n, s).map_err(Error::from_template)?;
        }
        let mut program = program;
        // A program of one leaf gains nothing from a one-pass plan, and its
        // leaf is the whole template: inlined in a skeleton, an `extends` in
        // it would swallow the markers after it.
        if !whole {
            program.fresh = fresh::plan(name, &program, &mut env).map(Arc::new);
        }
        let p = Arc::new(program);
        self.inner
            .programs
            .write()
            .expect("lock")
            .insert(name.to_owned(), p.clone());
        Ok(p)
    }

    /// Renders `template` with `data` and returns the page, which keeps what
    /// the client now holds so that [`LivePage::update`] can diff against it.
    pub fn render<S: Serialize + ?Sized>(&self, template: &str, data: &S) -> Result<LivePage> {
        self.reload_if_due();
        let generation = self.inner.reload.generation();
        let program = self.program(template)?;
        let data = ingest::ingest(None, data)?.value;
        let env = self.inner.env.read().expect("lock");
        let root = match fresh::render(&env, &program, &data) {
            Some(root) => root,
            None => render_fresh(&env, &program.root, &data)?,
        };
        drop(env);
        Ok(LivePage {
            engine: self.clone(),
            program,
            data,
            root: Some(root),
            sent: HashSet::new(),
            seq: 0,
            typed: None,
            generation,
        })
    }

    /// The layout fingerprint of `template` (compiling it if it is not yet):
    /// a hash of everything that decides what a client holds of its pages
    /// (the statics, with their ids, anchors and loop counters, and the
    /// pieces the template is split into). It is the same for the same
    /// template sources in any process, whatever else that process compiled
    /// first; it differs when a template's source changes (the template or
    /// any template it extends, includes or imports by a constant name),
    /// unless the change leaves all of that as it was (a `{# comment #}`).
    /// A page restored in another process can keep a client that holds the
    /// old page when the two fingerprints are equal: its statics ids and
    /// fragment ids mean the same there.
    pub fn layout(&self, template: &str) -> Result<u64> {
        Ok(self.program(template)?.layout)
    }

    /// The annotated HTML of a fresh render: what [`LivePage::html`] gives
    /// for a new page. The oracle every diff is checked against.
    pub fn render_html<S: Serialize + ?Sized>(&self, template: &str, data: &S) -> Result<String> {
        Ok(self.render(template, data)?.html())
    }

    /// Runs `f` with the environment (for example, to render a template with
    /// plain minijinja for comparison).
    pub fn with_env<R>(&self, f: impl FnOnce(&Environment<'static>) -> R) -> R {
        f(&self.inner.env.read().expect("lock"))
    }
}

fn render_fresh(env: &Environment<'static>, body: &Body, data: &Value) -> Result<Arc<BodyOut>> {
    let all = [String::new()];
    let mut w = Walk {
        env,
        fmt: Formats::new(env),
        changed: &all,
        force: true,
        ops: Vec::new(),
        hints: None,
    };
    Ok(w.body(body, &Scope::new(data.clone()), None)?.0)
}

/// One page as one client holds it: the last data and the rendered tree.
pub struct LivePage {
    engine: FragmentEngine,
    program: Arc<Program>,
    data: Value,
    /// The rendered tree; `None` while the page rests (see
    /// [`LivePage::rest`]).
    root: Option<Arc<BodyOut>>,
    sent: HashSet<u32>,
    seq: u64,
    /// The app's own typed data that `data` was made from, kept by
    /// `Session::update` so that the next update need not rebuild it;
    /// dropped whenever the data changes another way.
    typed: Option<Box<dyn std::any::Any + Send>>,
    /// The engine's reload generation at which `program` was current.
    generation: u64,
}

impl fmt::Debug for LivePage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LivePage")
            .field("seq", &self.seq)
            .finish_non_exhaustive()
    }
}

/// The changes one render produced, not yet encoded.
#[derive(Debug, Clone, Default)]
pub struct Patch {
    ops: Vec<PatchOp>,
    seq: u64,
    delta: Delta,
}

#[derive(Debug, Clone)]
pub(crate) enum PatchOp {
    Text {
        id: Arc<str>,
        text: Text,
    },
    Body {
        id: String,
        body: Arc<BodyOut>,
    },
    Slots {
        id: String,
        body: Arc<BodyOut>,
        slots: Vec<usize>,
    },
    List {
        id: Arc<str>,
        list: Arc<ListOut>,
    },
    Insert {
        list: Arc<str>,
        key: Arc<str>,
        after: Option<Arc<str>>,
        body: Arc<BodyOut>,
    },
    Remove {
        list: Arc<str>,
        key: Arc<str>,
    },
    Move {
        list: Arc<str>,
        key: Arc<str>,
        after: Option<Arc<str>>,
    },
    /// An insert, delete or reset of a stream (`stream.rs`).
    Stream(stream::StreamOp),
    /// The items of `list` from position `from` on recompute their loop
    /// counter slots from their positions (`items`: those whose counters
    /// changed, for the HTML updates).
    Renumber {
        list: Arc<str>,
        from: usize,
        items: Vec<(Arc<str>, Arc<BodyOut>)>,
    },
}

impl Patch {
    /// Whether the render changed nothing.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// The number of operations.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// The sequence number of the render that produced this patch.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// What the render changed in the data (empty when nothing did).
    /// Applied to the previous snapshot it gives the new one.
    pub fn delta(&self) -> &Delta {
        &self.delta
    }

    /// The operations as seed-compatible [`Update`]s, each carrying the full
    /// HTML of its fragment (for apps that stream JSON themselves).
    pub fn updates(&self) -> Vec<Update> {
        let ts = crate::protocol::now_millis();
        let mk =
            |fragment_id: String, html: String, action: Action, target: Option<String>| Update {
                fragment_id,
                html,
                action,
                target,
                timestamp: ts,
                seq: self.seq,
            };
        let item = |l: &str, k: &str| format!("{l}:{k}");
        self.ops
            .iter()
            .flat_map(|op| -> Vec<Update> {
                vec![match op {
                    PatchOp::Stream(s) => return s.update(ts, self.seq).into_iter().collect(),
                    PatchOp::Renumber { list, items, .. } => {
                        return items
                            .iter()
                            .map(|(key, body)| {
                                let mut h = String::new();
                                tree::write_body(body, &mut h);
                                mk(item(list, key), h, Action::Replace, None)
                            })
                            .collect();
                    }
                    PatchOp::Text { id, text } => {
                        mk(id.to_string(), text.to_string(), Action::Replace, None)
                    }
                    PatchOp::Body { id, body } | PatchOp::Slots { id, body, .. } => {
                        let mut h = String::new();
                        tree::write_body(body, &mut h);
                        mk(id.clone(), h, Action::Replace, None)
                    }
                    PatchOp::List { id, list } => {
                        let mut h = String::new();
                        tree::write_list(list, &mut h);
                        mk(id.to_string(), h, Action::Replace, None)
                    }
                    PatchOp::Insert {
                        list,
                        key,
                        after,
                        body,
                    } => {
                        let mut h = String::new();
                        tree::write_body(body, &mut h);
                        match after {
                            Some(a) => {
                                mk(item(list, key), h, Action::InsertAfter, Some(item(list, a)))
                            }
                            None => mk(item(list, key), h, Action::Prepend, None),
                        }
                    }
                    PatchOp::Remove { list, key } => {
                        mk(item(list, key), String::new(), Action::Remove, None)
                    }
                    PatchOp::Move { list, key, after } => match after {
                        Some(a) => mk(
                            item(list, key),
                            String::new(),
                            Action::MoveAfter,
                            Some(item(list, a)),
                        ),
                        None => mk(item(list, key), String::new(), Action::MoveFirst, None),
                    },
                }]
            })
            .collect()
    }
}

/// What [`LivePage::checkpoint`] saved: enough to undo one `update`.
#[derive(Debug)]
pub(crate) struct Checkpoint {
    data: Value,
    root: Option<Arc<BodyOut>>,
    seq: u64,
    program: Arc<Program>,
    generation: u64,
}

impl LivePage {
    /// The data of the last successful render.
    pub(crate) fn data(&self) -> &Value {
        &self.data
    }

    /// Takes the typed data kept with the page, if it is a `T`.
    pub(crate) fn take_typed<T: 'static>(&mut self) -> Option<Box<T>> {
        self.typed.take()?.downcast::<T>().ok()
    }

    /// Keeps typed data that the page's data was just made from.
    pub(crate) fn keep_typed<T: Send + 'static>(&mut self, t: Box<T>) {
        self.typed = Some(t);
    }

    /// Continues numbering from `seq` (a page restored from a store).
    pub(crate) fn set_seq(&mut self, seq: u64) {
        self.seq = seq;
    }

    /// Saves the state one `update` changes (cheap: reference counts).
    pub(crate) fn checkpoint(&self) -> Checkpoint {
        Checkpoint {
            data: self.data.clone(),
            root: self.root.clone(),
            seq: self.seq,
            program: self.program.clone(),
            generation: self.generation,
        }
    }

    /// Undoes the updates since `cp` (none of them may have been encoded).
    pub(crate) fn restore(&mut self, cp: Checkpoint) {
        self.typed = None;
        self.data = cp.data;
        self.root = cp.root;
        self.seq = cp.seq;
        if !Arc::ptr_eq(&self.program, &cp.program) {
            // Undoing a switch to an edited template: what the client
            // holds of either program is unknown, so all statics go again.
            self.program = cp.program;
            self.generation = cp.generation;
            self.sent.clear();
        }
    }

    /// Drops what the page keeps only to diff against: the rendered tree
    /// and the app's typed copy of the data. For a page no client holds (a
    /// session nobody joined): its memory is then its data. The next call
    /// that needs the tree ([`LivePage::update`] and the others, a join
    /// frame, the HTML) renders it again from the data, which gives the
    /// tree the page had, since the program and the data are the ones it
    /// was rendered from.
    #[doc(hidden)]
    pub fn rest(&mut self) {
        self.root = None;
        self.typed = None;
    }

    /// Whether the page is resting (see [`LivePage::rest`]).
    pub(crate) fn is_resting(&self) -> bool {
        self.root.is_none()
    }

    /// The rendered tree, rendered again from the data if the page rests.
    pub(crate) fn wake(&mut self) -> Result<&Arc<BodyOut>> {
        if self.root.is_none() {
            let root = self.render_tree()?;
            tracing::trace!(template = %self.program.name, "a resting page is rendered again");
            self.root = Some(root);
        }
        Ok(self.root.as_ref().expect("just rendered"))
    }

    /// A fresh render of the page's data with its program.
    fn render_tree(&self) -> Result<Arc<BodyOut>> {
        let env = self.engine.inner.env.read().expect("lock");
        match fresh::render(&env, &self.program, &self.data) {
            Some(root) => Ok(root),
            None => render_fresh(&env, &self.program.root, &self.data),
        }
    }

    /// The annotated HTML of the page as it is now.
    pub fn html(&self) -> String {
        let mut s = String::new();
        match &self.root {
            Some(root) => tree::write_body(root, &mut s),
            None => match self.render_tree() {
                Ok(root) => tree::write_body(&root, &mut s),
                Err(e) => {
                    tracing::error!(error = %e, "a resting page no longer renders");
                }
            },
        }
        s
    }

    /// The sequence number of the last render that changed something.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Diffs `data` against the last data and returns what changed. On error
    /// the page is left exactly as it was.
    pub fn update<S: Serialize + ?Sized>(&mut self, data: &S) -> Result<Patch> {
        let ingested = ingest::ingest(Some(&self.data), data)?;
        let changed = ingested.delta.touched(&self.data);
        self.walk(ingested.value, changed, ingested.delta)
    }

    /// Applies a delta (what the app says changed) and returns what changed
    /// on the page: the same patch as [`LivePage::update`] with the data
    /// the delta makes. On error the page is left exactly as it was.
    pub fn apply(&mut self, delta: Delta) -> Result<Patch> {
        let data = delta.apply(&self.data)?;
        let changed = delta.touched(&self.data);
        self.walk(data, changed, delta)
    }

    /// Applies targeted changes (see [`Edit`]) and returns what changed on
    /// the page: the same patch as [`LivePage::update`] with the whole data
    /// the edit makes. On error the page is left exactly as it was.
    pub fn edit(&mut self, edit: &Edit) -> Result<Patch> {
        let (delta, data) = edit.resolve(&self.data)?;
        let changed = delta.touched(&self.data);
        self.walk(data, changed, delta)
    }

    fn walk(&mut self, data: Value, changed: Vec<String>, delta: Delta) -> Result<Patch> {
        if let Some((program, generation)) = self.engine.newer(&self.program, self.generation)? {
            if !Arc::ptr_eq(&program, &self.program) {
                return self.switch(program, generation, data, delta);
            }
            self.generation = generation;
        }
        if !delta.is_empty() {
            self.typed = None;
        }
        if changed.is_empty() {
            self.data = data;
            return Ok(Patch {
                ops: Vec::new(),
                seq: self.seq,
                delta,
            });
        }
        self.wake()?;
        let hints = delta.list_hints(&self.data);
        let env = self.engine.inner.env.read().expect("lock");
        let mut w = Walk {
            env: &env,
            fmt: Formats::new(&env),
            changed: &changed,
            force: false,
            ops: Vec::new(),
            hints: Some(&hints),
        };
        let (root, dirty) = w.body(
            &self.program.root,
            &Scope::new(data.clone()),
            self.root.as_ref(),
        )?;
        let mut ops = w.ops;
        drop(env);
        if !dirty.is_empty() {
            ops.push(PatchOp::Slots {
                id: String::new(),
                body: root.clone(),
                slots: dirty,
            });
        }
        self.root = Some(root);
        self.data = data;
        if !ops.is_empty() {
            self.seq += 1;
        }
        Ok(Patch {
            ops,
            seq: self.seq,
            delta,
        })
    }

    /// Renders `data` with another template and replaces the whole page
    /// with it (one operation on the root; see `Session::navigate`). On
    /// error the page is left exactly as it was.
    pub(crate) fn switch_to<S: Serialize + ?Sized>(
        &mut self,
        template: &str,
        data: &S,
    ) -> Result<Patch> {
        let generation = self.engine.inner.reload.generation();
        let program = self.engine.program(template)?;
        let ingested = ingest::ingest(Some(&self.data), data)?;
        self.switch(program, generation, ingested.value, ingested.delta)
    }

    /// Renders `data` with `program` (the page's template, edited) and
    /// replaces the whole page with it: one operation on the root, with
    /// every statics entry sent again (the new program's ids overwrite the
    /// old ones the client holds).
    fn switch(
        &mut self,
        program: Arc<Program>,
        generation: u64,
        data: Value,
        delta: Delta,
    ) -> Result<Patch> {
        let env = self.engine.inner.env.read().expect("lock");
        let root = match fresh::render(&env, &program, &data) {
            Some(root) => root,
            None => render_fresh(&env, &program.root, &data)?,
        };
        drop(env);
        tracing::debug!(template = %program.name, "a live page switches to its edited template");
        self.program = program;
        self.generation = generation;
        self.sent.clear();
        self.typed = None;
        self.root = Some(root.clone());
        self.data = data;
        self.seq += 1;
        Ok(Patch {
            ops: vec![PatchOp::Body {
                id: String::new(),
                body: root,
            }],
            seq: self.seq,
            delta,
        })
    }

    /// Encodes a patch as a compact wire frame (see `docs/protocol.md`): a
    /// JSON array of operations, led by the statics table entries first used
    /// in it. Its sequence number is implicit: one more than the frame
    /// before. Statics go out once per page: this records which the client
    /// now holds. Returns `None` for an empty patch.
    pub fn encode(&mut self, patch: &Patch) -> Option<String> {
        self.encode_sent(patch).map(|(f, _)| f)
    }

    /// [`LivePage::encode`], also giving the statics ids this frame sends
    /// for the first time: [`LivePage::unsend`] them if the frame is never
    /// sent (a store refused the change).
    pub(crate) fn encode_sent(&mut self, patch: &Patch) -> Option<(String, Vec<u32>)> {
        if patch.ops.is_empty() {
            return None;
        }
        let mut w = WireWriter {
            sent: &mut self.sent,
            new_statics: Vec::new(),
        };
        let mut ops = String::new();
        for (i, op) in patch.ops.iter().enumerate() {
            if i > 0 {
                ops.push(',');
            }
            encode_op(&mut w, op, &mut ops);
        }
        let mut out = String::with_capacity(ops.len() + 2);
        out.push('[');
        if !w.new_statics.is_empty() {
            w.statics_json(&mut out);
            out.push(',');
        }
        out.push_str(&ops);
        out.push(']');
        let first = w.new_statics.iter().map(|st| st.sid).collect();
        Some((out, first))
    }

    /// Forgets that the client holds these statics (their frame was not
    /// sent after all).
    pub(crate) fn unsend(&mut self, sids: &[u32]) {
        for sid in sids {
            self.sent.remove(sid);
        }
    }

    /// The frame a client that holds nothing needs: every statics table entry
    /// and the whole tree, with the sequence number stated
    /// (`{"q":SEQ,"s":{…},"o":[["",ROOT]]}`). Resets what the page believes
    /// the client holds.
    pub fn join_frame(&mut self) -> String {
        let root = match self.wake() {
            Ok(root) => root.clone(),
            Err(e) => {
                // Only a page that rests can fail here, and only with a
                // template that renders the same data differently (a
                // function that fails at random): the client cannot take
                // a join without operations, and reconnects.
                tracing::error!(error = %e, "a resting page no longer renders");
                return format!("{{\"q\":{},\"o\":[]}}", self.seq);
            }
        };
        self.sent.clear();
        let mut w = WireWriter {
            sent: &mut self.sent,
            new_statics: Vec::new(),
        };
        let mut ops = String::from("[\"\",");
        w.body(&root, &mut ops);
        ops.push(']');
        let mut out = format!("{{\"q\":{}", self.seq);
        if !w.new_statics.is_empty() {
            out.push_str(",\"s\":");
            w.statics_json(&mut out);
        }
        out.push_str(",\"o\":[");
        out.push_str(&ops);
        out.push_str("]}");
        out
    }

    /// What a client that starts from this page's HTML (as [`LivePage::html`]
    /// gives it) needs beyond the page: the statics table entries the page
    /// uses (`{"SID":[…],…}`, as in a join frame), from which it reads the
    /// tree's values out of the HTML. Like [`LivePage::join_frame`], it
    /// resets what the page believes a client holds to those entries. `None`
    /// when the HTML does not tell its values apart (a slot without an anchor
    /// holds markup: a body or a list; see `docs/protocol.md`, "Connect") or
    /// the page no longer renders (see `join_frame`): a join frame then.
    pub fn page_statics(&mut self) -> Option<String> {
        let root = self.wake().ok()?.clone();
        let mut sent = HashSet::new();
        let mut w = WireWriter {
            sent: &mut sent,
            new_statics: Vec::new(),
        };
        if !readable(&root, &mut w) {
            return None;
        }
        let mut out = String::new();
        w.statics_json(&mut out);
        self.sent = sent;
        Some(out)
    }
}

/// Whether a client can read this body's values back from its HTML with
/// the statics alone (see [`LivePage::page_statics`]), taking the statics
/// it uses into `w` on the way: every slot without an anchor holds text
/// without markup, or a body of constant text without markup. Any other
/// body or a list there is markup whose statics the HTML does not tell
/// apart (an include's wrapper around a row, a loop in a cell), so such a
/// page gets a join frame instead.
fn readable(b: &tree::BodyOut, w: &mut WireWriter<'_>) -> bool {
    w.mark(b);
    b.slots.iter().enumerate().all(|(i, s)| {
        let anchored = b.statics.anchors.get(i).is_some_and(Option::is_some);
        match s {
            // Markup in a text without an anchor (a macro's output, a
            // `safe` value) cannot be told from the statics around it.
            tree::SlotOut::Text(t) => anchored || !t.contains('<'),
            // A constant text without markup (`{% if x %} checked{% endif %}`
            // in a tag) is read as its text.
            tree::SlotOut::Branch { body, .. } | tree::SlotOut::Sub(body) => {
                if anchored {
                    readable(body, w)
                } else {
                    w.mark(body);
                    body.slots.is_empty() && body.statics.parts.iter().all(|p| !p.contains('<'))
                }
            }
            tree::SlotOut::List(l) => {
                anchored
                    && l.empty.as_deref().is_none_or(|e| readable(e, w))
                    && l.items.iter().all(|it| readable(&it.body, w))
            }
        }
    })
}

fn encode_op(w: &mut WireWriter<'_>, op: &PatchOp, out: &mut String) {
    let s = tree::json_str;
    let addr = tree::json_addr;
    let key = tree::json_key;
    match op {
        PatchOp::Stream(op) => op.encode(w, out),
        PatchOp::Renumber { list, from, .. } => {
            out.push_str("[\"#\",");
            addr(list, out);
            out.push(',');
            out.push_str(&from.to_string());
        }
        PatchOp::Text { id, text } => {
            out.push('[');
            addr(id, out);
            out.push(',');
            s(text, out);
        }
        PatchOp::Body { id, body } => {
            out.push('[');
            addr(id, out);
            out.push(',');
            if body.slots.is_empty() && !id.is_empty() {
                // A constant branch: its statics id alone.
                w.constant(body, out);
            } else {
                w.body(body, out);
            }
        }
        PatchOp::Slots { id, body, slots } => {
            // Runs of consecutive slots: a number starts a run, each value
            // after it fills the next slot. An item is addressed as
            // `LIST,KEY` (its list is anchored by a node number).
            out.push('[');
            match id.split_once(':') {
                Some((list, k)) => {
                    addr(list, out);
                    out.push(',');
                    key(k, out);
                }
                None => addr(id, out),
            }
            let mut next = usize::MAX;
            for n in slots {
                if *n != next {
                    out.push(',');
                    out.push_str(&n.to_string());
                }
                out.push(',');
                w.slot(&body.slots[*n], out);
                next = n + 1;
            }
        }
        PatchOp::List { id, list } => {
            out.push('[');
            addr(id, out);
            out.push(',');
            w.list(list, out);
        }
        PatchOp::Insert {
            list,
            key: k,
            after,
            body,
        } => {
            out.push_str("[\"+\",");
            addr(list, out);
            out.push(',');
            key(k, out);
            out.push(',');
            match after {
                Some(a) => key(a, out),
                None => out.push_str("null"),
            }
            out.push(',');
            w.body(body, out);
        }
        PatchOp::Remove { list, key: k } => {
            out.push_str("[\"-\",");
            addr(list, out);
            out.push(',');
            key(k, out);
        }
        PatchOp::Move {
            list,
            key: k,
            after,
        } => {
            out.push_str("[\"~\",");
            addr(list, out);
            out.push(',');
            key(k, out);
            out.push(',');
            match after {
                Some(a) => key(a, out),
                None => out.push_str("null"),
            }
        }
    }
    out.push(']');
}

/// How a slot compares with its previous value.
#[derive(PartialEq, Eq)]
enum Change {
    None,
    /// Changed, and operations saying how were emitted.
    Emitted,
    /// Changed, and the enclosing anchored fragment must carry it.
    Dirty,
}

struct Walk<'a> {
    env: &'a Environment<'static>,
    /// Formats the leaves that print a variable path.
    fmt: Formats<'a>,
    changed: &'a [String],
    /// Re-render everything (while still comparing with the old tree).
    force: bool,
    ops: Vec<PatchOp>,
    /// What the data delta says about its lists, by position.
    hints: Option<&'a delta::ListHints>,
}

impl Walk<'_> {
    fn affected(&self, d: &compile::Deps) -> bool {
        self.force || d.affected(self.changed)
    }

    /// Renders a body, reusing what did not change. Returns the new body and
    /// the slots that changed without an operation of their own.
    fn body(
        &mut self,
        b: &Body,
        scope: &Scope,
        old: Option<&Arc<BodyOut>>,
    ) -> Result<(Arc<BodyOut>, Vec<usize>)> {
        if let Some(o) = old {
            if !self.affected(&b.deps) {
                return Ok((o.clone(), Vec::new()));
            }
        }
        let mut scope = scope.clone();
        let mut slots = Vec::with_capacity(b.statics.anchors.len());
        let mut sets = Vec::new();
        let mut dirty = Vec::new();
        let mut any = false;
        for op in &b.ops {
            if let Op::Set { names, synth, deps } = op {
                let at = sets.len();
                let vals = match old {
                    Some(o) if !self.affected(deps) && o.sets.len() >= at + names.len() => {
                        o.sets[at..at + names.len()].to_vec()
                    }
                    _ => {
                        let n: Vec<&str> = names.iter().map(|n| &**n).collect();
                        eval_names(self.env, synth, &scope, &n)?
                    }
                };
                if let Some(o) = old {
                    let prev = o.sets.get(at..at + names.len());
                    if prev.is_none_or(|p| p.iter().zip(&vals).any(|(a, b)| !diff::same(a, b))) {
                        any = true;
                    }
                }
                for (n, v) in names.iter().zip(vals) {
                    scope = scope.bind(n, v.clone());
                    sets.push(v);
                }
                continue;
            }
            let i = slots.len();
            let anchor = b.statics.anchors[i].clone();
            let prev = old.map(|o| &o.slots[i]);
            let (slot, change) = self.slot(op, &scope, prev, anchor.as_ref())?;
            match change {
                Change::None => {}
                Change::Emitted => any = true,
                Change::Dirty => {
                    any = true;
                    dirty.push(i);
                }
            }
            slots.push(slot);
        }
        if let (Some(o), false) = (old, any) {
            return Ok((o.clone(), dirty));
        }
        Ok((
            Arc::new(BodyOut {
                statics: b.statics.clone(),
                slots,
                sets,
            }),
            dirty,
        ))
    }

    fn slot(
        &mut self,
        op: &Op,
        scope: &Scope,
        prev: Option<&SlotOut>,
        anchor: Option<&Arc<str>>,
    ) -> Result<(SlotOut, Change)> {
        match op {
            Op::Set { .. } => unreachable!("sets take no slot"),
            Op::Leaf { synth, deps } => {
                if let Some(p) = prev {
                    if !self.affected(deps) {
                        return Ok((p.clone(), Change::None));
                    }
                }
                let text: Text = match self.fmt.leaf(synth, scope) {
                    Some(text) => text?,
                    None => render_leaf(self.env, synth, scope)?,
                }
                .into();
                let change = match prev {
                    Some(SlotOut::Text(t)) if *t == text => Change::None,
                    None => Change::None,
                    Some(_) => match anchor {
                        Some(a) => {
                            self.ops.push(PatchOp::Text {
                                id: a.clone(),
                                text: text.clone(),
                            });
                            Change::Emitted
                        }
                        None => Change::Dirty,
                    },
                };
                Ok((SlotOut::Text(text), change))
            }
            Op::If { conds, branches } => {
                let old = match prev {
                    Some(SlotOut::Branch { index, body }) => Some((*index as usize, body)),
                    _ => None,
                };
                let index = match old {
                    Some((i, _)) if !conds.iter().any(|(_, d)| self.affected(d)) => i,
                    _ => {
                        let mut chosen = conds.len();
                        for (n, (synth, _)) in conds.iter().enumerate() {
                            if eval_value(self.env, synth, scope)?.is_true() {
                                chosen = n;
                                break;
                            }
                        }
                        chosen
                    }
                };
                let same_branch = old.filter(|(i, _)| *i == index).map(|(_, b)| b);
                let (body, dirty) = self.body(&branches[index], scope, same_branch)?;
                let change = self.sub_change(prev.is_some(), same_branch, &body, dirty, anchor);
                Ok((
                    SlotOut::Branch {
                        index: index as u16,
                        body,
                    },
                    change,
                ))
            }
            Op::Sub { with, body: b } => {
                let old = match prev {
                    Some(SlotOut::Sub(body)) => Some(body),
                    _ => None,
                };
                if let Some(o) = old {
                    if !self.affected(&b.deps) && with.iter().all(|(_, _, d)| !self.affected(d)) {
                        return Ok((SlotOut::Sub(o.clone()), Change::None));
                    }
                }
                let mut inner = scope.clone();
                for (names, synth, _) in with {
                    let v = eval_value(self.env, synth, scope)?;
                    inner = bind_target(&inner, names, names.len() > 1, v)?;
                }
                let (body, dirty) = self.body(b, &inner, old)?;
                let change = self.sub_change(prev.is_some(), old, &body, dirty, anchor);
                Ok((SlotOut::Sub(body), change))
            }
            Op::Region { body } => self.region(body, scope, prev, anchor),
            Op::Recursive(r) => self.recursive(r, scope, prev),
            Op::Recurse { arg, deps, target } => self.recurse(arg, deps, target, scope, prev),
            Op::For(f) if f.stream.is_some() => self.stream_slot(f, scope, prev),
            Op::For(f) => {
                let old = match prev {
                    Some(SlotOut::List(l)) => Some(l),
                    _ => None,
                };
                let (list, change) = self.list(f, scope, old)?;
                Ok((SlotOut::List(list), change))
            }
        }
    }

    /// How a re-rendered sub-body (branch, block, include) changed, emitting
    /// its operation when it is anchored.
    fn sub_change(
        &mut self,
        had_prev: bool,
        same: Option<&Arc<BodyOut>>,
        body: &Arc<BodyOut>,
        dirty: Vec<usize>,
        anchor: Option<&Arc<str>>,
    ) -> Change {
        if !had_prev {
            return Change::None;
        }
        let Some(old) = same else {
            return match anchor {
                Some(a) => {
                    self.ops.push(PatchOp::Body {
                        id: a.to_string(),
                        body: body.clone(),
                    });
                    Change::Emitted
                }
                None => Change::Dirty,
            };
        };
        if !dirty.is_empty() {
            return match anchor {
                Some(a) => {
                    self.ops.push(PatchOp::Slots {
                        id: a.to_string(),
                        body: body.clone(),
                        slots: dirty,
                    });
                    Change::Emitted
                }
                None => Change::Dirty,
            };
        }
        if Arc::ptr_eq(old, body) {
            Change::None
        } else {
            Change::Emitted
        }
    }
}

fn bind_target(scope: &Scope, names: &[Box<str>], unpack: bool, value: Value) -> Result<Scope> {
    if !unpack {
        return Ok(scope.bind(&names[0], value));
    }
    let parts: Vec<Value> = value.try_iter().map_err(Error::from_template)?.collect();
    if parts.len() != names.len() {
        return Err(Error::new(
            ErrorKind::Template,
            format!(
                "cannot unpack {} values into {} names",
                parts.len(),
                names.len()
            ),
        ));
    }
    let mut s = scope.clone();
    for (n, v) in names.iter().zip(parts) {
        s = s.bind(n, v);
    }
    Ok(s)
}
