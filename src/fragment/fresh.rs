//! Fresh renders in one minijinja pass.
//!
//! A fresh render (a new page, a session restored from a store) needs every
//! leaf of the program. Rendering each leaf as its own synthetic template
//! costs a minijinja state per leaf; this renders a *skeleton* instead: one
//! synthetic template per program that runs every expression, condition,
//! loop and `set` of the program in the program's own structure, and prints
//! nothing but the leaves' output and a one-byte *marker* after each leaf,
//! at the start of each branch and of each loop item. The skeleton renders
//! with [`Template::render_with_spans`](minijinja::Template::render_with_spans),
//! so a marker is told apart from leaf output by the span minijinja records
//! for it (raw template text at the marker's offset in the skeleton), never
//! by its byte: leaf output may contain anything. The walk then cuts the
//! output into the slots of the render tree, following the program.
//!
//! Values the tree keeps (a loop's iterable or its filtered items, what a
//! `set` bound) are handed out of the render by two functions registered in
//! the environment, `__st_it` and `__st_rec`, into a thread-local list.
//!
//! What the skeleton cannot express exactly (a condition or loop source that
//! calls a macro, an escaping that has no `autoescape` literal) leaves the
//! program without a plan; a render that fails, or whose spans do not match
//! the plan, falls back to the leaf-by-leaf walk (`render_fresh` in
//! `mod.rs`). So errors are reported exactly as before, and the result is
//! the same tree either way: `check_fresh_render` compares the two, and the
//! test harness runs it on every step of every oracle.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;

use minijinja::machinery::get_compiled_template;
use minijinja::value::{Rest, Value, ValueKind};
use minijinja::{AutoEscape, Environment, OutputSpan, OutputSpanKind};
use serde::Serialize;

use super::compile::{Body, ForNode, Op, Program, Synth};
use super::tree::{BodyOut, ItemOut, ListOut, SlotOut, Text};

/// The marker: raw text of the skeleton, one byte.
const MARK: &str = "\u{1}";

thread_local! {
    /// Values recorded by the skeleton being rendered on this thread.
    static RECORDED: RefCell<Vec<Value>> = const { RefCell::new(Vec::new()) };
}

/// Registers the recording functions the skeletons call.
pub(crate) fn register(env: &mut Environment<'_>) {
    env.add_function("__st_it", |v: Value| {
        RECORDED.with(|r| r.borrow_mut().push(v.clone()));
        v
    });
    env.add_function("__st_rec", |args: Rest<Value>| {
        RECORDED.with(|r| r.borrow_mut().extend(args.0));
        Value::UNDEFINED
    });
}

/// A program's skeleton: its template's name and, mirroring the program's
/// bodies, where each marker sits in it.
#[derive(Debug)]
pub(crate) struct Plan {
    name: Box<str>,
    root: PBody,
}

#[derive(Debug)]
struct PBody {
    /// One per op of the body, in order.
    ops: Vec<POp>,
}

#[derive(Debug)]
enum POp {
    /// A `{{ … }}` leaf: where it sits in the skeleton. It prints one
    /// expression span, or none when its output is empty.
    Expr(u32, u32),
    /// A leaf rendered whole (`{% … %}`): the marker after its output.
    Leaf(u32),
    /// The marker at the start of each branch, and the branches.
    If(Vec<u32>, Vec<PBody>),
    For(Box<PFor>),
    Sub(PBody),
    Set,
}

#[derive(Debug)]
struct PFor {
    /// The marker at the start of each item.
    item: u32,
    /// The marker at the start of the `else` body.
    empty: u32,
    /// The loop has a filter: its items are recorded one by one (else they
    /// are the recorded iterable's).
    filtered: bool,
    body: PBody,
    else_body: PBody,
}

/// Builds the skeleton of `program` (the compiled template `name`), adds it
/// to the environment and returns its plan; `None` if the program has a
/// piece the skeleton cannot express.
pub(crate) fn plan(name: &str, program: &Program, env: &mut Environment<'static>) -> Option<Plan> {
    // Like the synthetic templates, the name ends with the user's, so the
    // auto-escape callback decides the same; read what it decided.
    let skel_name = format!("{name}\u{1}fresh/{name}");
    env.add_template_owned(skel_name.clone(), String::new())
        .ok()?;
    let base = {
        let t = env.get_template(&skel_name).ok()?;
        get_compiled_template(&t).initial_auto_escape.clone()
    };
    let mut b = Build {
        env,
        src: String::new(),
    };
    let root = b.body(&program.root, &base, false)?;
    let mut src = b.src;
    // minijinja sizes the output buffer by the raw text a template holds;
    // the skeleton holds only markers. Text that never runs, as long as
    // the page's statics, gives it the original template's size hint.
    src.push_str("{% if false %}");
    src.extend(std::iter::repeat_n('.', statics_len(&program.root)));
    src.push_str("{% endif %}");
    env.add_template_owned(skel_name.clone(), src).ok()?;
    Some(Plan {
        name: skel_name.into(),
        root,
    })
}

/// The bytes of static text in a body and all bodies below it.
fn statics_len(b: &Body) -> usize {
    let own: usize = b.statics.parts.iter().map(|p| p.len()).sum();
    own + b
        .ops
        .iter()
        .map(|op| match op {
            Op::If { branches, .. } => branches.iter().map(statics_len).sum(),
            Op::For(f) => statics_len(&f.body) + statics_len(&f.else_body),
            Op::Sub { body, .. } | Op::Region { body } => statics_len(body),
            Op::Recursive(r) => statics_len(&r.node.body) + statics_len(&r.node.else_body),
            Op::Leaf { .. } | Op::Set { .. } | Op::Recurse { .. } => 0,
        })
        .sum::<usize>()
}

struct Build<'e> {
    env: &'e Environment<'static>,
    src: String,
}

impl Build<'_> {
    /// A synth's source split into its prelude and the piece itself.
    fn split(&self, s: &Synth) -> Option<(String, String)> {
        let t = self.env.get_template(&s.name).ok()?;
        let src = t.source();
        let at = s.piece_at as usize;
        Some((src.get(..at)?.to_owned(), src.get(at..)?.to_owned()))
    }

    /// The expression of a value synth (`{% set __st_v = (EXPR) %}`), if it
    /// needs no prelude.
    fn value_expr(&self, s: &Synth) -> Option<String> {
        let (prelude, piece) = self.split(s)?;
        if !prelude.is_empty() {
            return None;
        }
        piece
            .strip_prefix("{% set __st_v = (")?
            .strip_suffix(") %}")
            .map(str::to_owned)
    }

    fn mark(&mut self) -> u32 {
        let at = self.src.len() as u32;
        self.src.push_str(MARK);
        at
    }

    /// Switches to the escaping `want` if it is not the current one
    /// (`None`: it cannot be written as an `autoescape` value).
    fn open_escape(&mut self, want: &AutoEscape, cur: &AutoEscape) -> Option<bool> {
        if want == cur {
            return Some(false);
        }
        let lit = match want {
            AutoEscape::Html => "\"html\"",
            AutoEscape::None => "false",
            _ => return None,
        };
        write!(self.src, "{{% autoescape {lit} %}}").ok()?;
        Some(true)
    }

    fn close_escape(&mut self, opened: bool) {
        if opened {
            self.src.push_str("{% endautoescape %}");
        }
    }

    /// `scoped`: the body's `set`s must not outlive it (minijinja's `if`
    /// and an inlined include have no scope of their own; a loop body and
    /// a `with` do).
    fn body(&mut self, b: &Body, cur: &AutoEscape, scoped: bool) -> Option<PBody> {
        let wrap = scoped && b.ops.iter().any(|o| matches!(o, Op::Set { .. }));
        if wrap {
            self.src.push_str("{% with %}");
        }
        let mut ops = Vec::with_capacity(b.ops.len());
        for op in &b.ops {
            ops.push(self.op(op, cur)?);
        }
        if wrap {
            self.src.push_str("{% endwith %}");
        }
        Some(PBody { ops })
    }

    fn op(&mut self, op: &Op, cur: &AutoEscape) -> Option<POp> {
        Some(match op {
            // Shared state and recursion: no plan (rendered leaf by leaf).
            Op::Region { .. } | Op::Recursive(_) | Op::Recurse { .. } => return None,
            Op::Leaf { synth, .. } => {
                let (prelude, piece) = self.split(synth)?;
                let opened = self.open_escape(&synth.escape, cur)?;
                let start = self.src.len() as u32;
                if prelude.is_empty() {
                    self.src.push_str(&piece);
                } else {
                    // The prelude's macros and imports are defined for this
                    // piece only, as in its own synthetic template.
                    self.src.push_str("{% with %}");
                    self.src.push_str(&prelude);
                    self.src.push_str(&piece);
                    self.src.push_str("{% endwith %}");
                }
                self.close_escape(opened);
                if piece.starts_with("{{") {
                    // One `Emit`: one span (minijinja does not record an
                    // empty one), with a source range inside the piece.
                    POp::Expr(start, self.src.len() as u32)
                } else {
                    POp::Leaf(self.mark())
                }
            }
            Op::If { conds, branches } => {
                let want = &conds.first()?.0.escape;
                if conds.iter().any(|(s, _)| s.escape != *want) {
                    return None;
                }
                let opened = self.open_escape(want, cur)?;
                let mut marks = Vec::with_capacity(branches.len());
                let mut bodies = Vec::with_capacity(branches.len());
                for (i, branch) in branches.iter().enumerate() {
                    match conds.get(i) {
                        Some((synth, _)) => {
                            let expr = self.value_expr(synth)?;
                            let kw = if i == 0 { "if" } else { "elif" };
                            write!(self.src, "{{% {kw} ({expr}) %}}").ok()?;
                        }
                        None => self.src.push_str("{% else %}"),
                    }
                    marks.push(self.mark());
                    bodies.push(self.body(branch, want, true)?);
                }
                self.src.push_str("{% endif %}");
                self.close_escape(opened);
                POp::If(marks, bodies)
            }
            Op::For(f) => {
                let want = &f.iter.escape;
                if f.filter.as_ref().is_some_and(|s| s.escape != *want) {
                    return None;
                }
                let iter = self.value_expr(&f.iter)?;
                let filter = match &f.filter {
                    Some(s) => Some(self.value_expr(s)?),
                    None => None,
                };
                if filter.is_some() && f.unpack {
                    // Items are recorded as the loop variable: an unpacked
                    // item is not.
                    return None;
                }
                let target = names(&f.target, f.unpack);
                let opened = self.open_escape(want, cur)?;
                write!(self.src, "{{% for {target} in __st_it(({iter}))").ok()?;
                if let Some(filter) = &filter {
                    write!(self.src, " if ({filter})").ok()?;
                }
                self.src.push_str(" %}");
                let item = self.mark();
                if filter.is_some() {
                    write!(self.src, "{{% do __st_rec({target}) %}}").ok()?;
                }
                let body = self.body(&f.body, want, false)?;
                self.src.push_str("{% else %}");
                let empty = self.mark();
                let else_body = self.body(&f.else_body, want, true)?;
                self.src.push_str("{% endfor %}");
                self.close_escape(opened);
                POp::For(Box::new(PFor {
                    item,
                    empty,
                    filtered: filter.is_some(),
                    body,
                    else_body,
                }))
            }
            Op::Sub { with, body } => {
                let Some(first) = with.first() else {
                    return Some(POp::Sub(self.body(body, cur, true)?));
                };
                let want = &first.1.escape;
                if with.iter().any(|(_, s, _)| s.escape != *want) {
                    return None;
                }
                let opened = self.open_escape(want, cur)?;
                self.src.push_str("{% with ");
                for (i, (targets, synth, _)) in with.iter().enumerate() {
                    let expr = self.value_expr(synth)?;
                    let sep = if i == 0 { "" } else { ", " };
                    let target = names(targets, targets.len() > 1);
                    write!(self.src, "{sep}{target} = ({expr})").ok()?;
                }
                self.src.push_str(" %}");
                let body = self.body(body, want, false)?;
                self.src.push_str("{% endwith %}");
                self.close_escape(opened);
                POp::Sub(body)
            }
            Op::Set {
                names: n, synth, ..
            } => {
                let (prelude, piece) = self.split(synth)?;
                if !prelude.is_empty() {
                    return None;
                }
                let opened = self.open_escape(&synth.escape, cur)?;
                self.src.push_str(&piece);
                write!(self.src, "{{% do __st_rec({}) %}}", n.join(", ")).ok()?;
                self.close_escape(opened);
                POp::Set
            }
        })
    }
}

/// The keys `super::item_keys` gives, with one allocation per key (the
/// oracle harness compares the two through `check_fresh_render`), and
/// whether any is relative: an item without a key of its own (keyed by its
/// position) or a duplicate (`~N`; an encoded key never holds a `~`).
fn item_keys(f: &ForNode, items: &[Value]) -> (Vec<Arc<str>>, bool) {
    let attr = f.key.as_deref().unwrap_or("id");
    let mut seen: HashMap<Arc<str>, u32> = HashMap::with_capacity(items.len());
    let mut key = String::new();
    let mut relative = false;
    let keys = items
        .iter()
        .enumerate()
        .map(|(i, v)| {
            key.clear();
            let k = if v.kind() == ValueKind::Map {
                v.get_attr(attr)
                    .ok()
                    .filter(|k| !k.is_undefined() && !k.is_none())
            } else {
                None
            };
            match k {
                Some(k) => super::lists::push_key_value(&k, &mut key),
                None => {
                    relative = true;
                    let _ = write!(key, "{i}");
                }
            }
            let base: Arc<str> = Arc::from(key.as_str());
            let n = seen.entry(base.clone()).or_insert(0);
            *n += 1;
            if *n > 1 {
                relative = true;
                Arc::from(format!("{base}~{n}"))
            } else {
                base
            }
        })
        .collect();
    (keys, relative)
}

/// A loop or `with` target: one name, or a tuple to unpack into.
fn names(n: &[Box<str>], unpack: bool) -> String {
    if unpack {
        format!("({},)", n.join(", "))
    } else {
        n[0].to_string()
    }
}

/// Renders `program` fresh in one pass. `None`: no plan, the render failed
/// or did not match the plan; the caller then walks leaf by leaf.
pub(crate) fn render(
    env: &Environment<'static>,
    program: &Program,
    data: &Value,
) -> Option<Arc<BodyOut>> {
    let plan = program.fresh.as_deref()?;
    let t = env.get_template(&plan.name).ok()?;
    // A render nested in a render on this thread (a function that renders
    // a page) records into its own list.
    let outer = RECORDED.with(|r| std::mem::take(&mut *r.borrow_mut()));
    let rendered = t.render_with_spans(data.clone());
    let recorded = RECORDED.with(|r| std::mem::replace(&mut *r.borrow_mut(), outer));
    let (out, spans) = rendered.ok()?;
    let mut run = Run {
        out: &out,
        spans: &spans,
        name: &plan.name,
        name_at: Cell::new(std::ptr::null()),
        next: 0,
        pos: 0,
        recorded: recorded.into_iter(),
    };
    let root = run.body(&program.root, &plan.root);
    let complete = run.next == spans.len() && run.pos == out.len() && run.recorded.len() == 0;
    debug_assert!(
        root.is_some() && complete,
        "a fresh render did not follow its plan"
    );
    root.filter(|_| complete)
}

struct Run<'a> {
    out: &'a str,
    spans: &'a [OutputSpan],
    /// The skeleton's name: markers are its raw text.
    name: &'a str,
    /// Where the spans' copy of that name was last seen (they share one
    /// while the skeleton's own instructions run).
    name_at: Cell<*const u8>,
    /// The next span to read.
    next: usize,
    /// Where in the output the next slot's text starts.
    pos: usize,
    recorded: std::vec::IntoIter<Value>,
}

impl Run<'_> {
    fn ours(&self, s: &OutputSpan) -> bool {
        let n = s.name();
        if n.as_ptr() == self.name_at.get() {
            return true;
        }
        if n == self.name {
            self.name_at.set(n.as_ptr());
            return true;
        }
        false
    }

    fn is_mark(&self, s: &OutputSpan, at: u32) -> bool {
        s.kind() == OutputSpanKind::Raw && s.source_range().start == at as usize && self.ours(s)
    }

    /// A `{{ … }}` leaf's text: the next span if the leaf printed it.
    fn expr(&mut self, start: u32, end: u32) -> Text {
        if let Some(s) = self.spans.get(self.next) {
            let src = s.source_range().start;
            let out = s.output_range();
            if s.kind() == OutputSpanKind::Expression
                && (start as usize..end as usize).contains(&src)
                && out.start == self.pos
                && self.ours(s)
            {
                self.next += 1;
                self.pos = out.end;
                return self.out[out].into();
            }
        }
        Text::default()
    }

    /// The text up to the marker at `at` (a leaf's output).
    fn until(&mut self, at: u32) -> Option<&str> {
        let q = (self.next..self.spans.len()).find(|&q| self.is_mark(&self.spans[q], at))?;
        let r = self.spans[q].output_range();
        let text = self.out.get(self.pos..r.start)?;
        self.pos = r.end;
        self.next = q + 1;
        Some(text)
    }

    /// Takes the next span if it is the marker at `at`, printed right where
    /// the last one ended.
    fn take(&mut self, at: u32) -> bool {
        match self.spans.get(self.next) {
            Some(s) if self.is_mark(s, at) && s.output_range().start == self.pos => {
                self.pos = s.output_range().end;
                self.next += 1;
                true
            }
            _ => false,
        }
    }

    fn body(&mut self, b: &Body, pb: &PBody) -> Option<Arc<BodyOut>> {
        let mut slots = Vec::with_capacity(b.statics.anchors.len());
        let mut sets = Vec::new();
        for (op, pop) in b.ops.iter().zip(&pb.ops) {
            let slot = match (op, pop) {
                (Op::Set { names, .. }, POp::Set) => {
                    for _ in names {
                        sets.push(self.recorded.next()?);
                    }
                    continue;
                }
                (Op::Leaf { .. }, POp::Expr(start, end)) => SlotOut::Text(self.expr(*start, *end)),
                (Op::Leaf { .. }, POp::Leaf(at)) => SlotOut::Text(self.until(*at)?.into()),
                (Op::If { branches, .. }, POp::If(marks, bodies)) => {
                    let index = marks.iter().position(|&m| self.take(m))?;
                    let body = self.body(&branches[index], &bodies[index])?;
                    SlotOut::Branch {
                        index: index as u16,
                        body,
                    }
                }
                (Op::Sub { body, .. }, POp::Sub(pb)) => SlotOut::Sub(self.body(body, pb)?),
                (Op::For(f), POp::For(pf)) => {
                    let iterable = self.recorded.next()?;
                    let mut items = Vec::new();
                    if !pf.filtered && !iterable.is_undefined() && !iterable.is_none() {
                        items = iterable.try_iter().ok()?.collect();
                    }
                    let mut bodies = Vec::with_capacity(items.len());
                    while self.take(pf.item) {
                        if pf.filtered {
                            items.push(self.recorded.next()?);
                        }
                        bodies.push(self.body(&f.body, &pf.body)?);
                    }
                    if bodies.len() != items.len() {
                        return None;
                    }
                    let mut empty = None;
                    if items.is_empty() {
                        if !self.take(pf.empty) {
                            return None;
                        }
                        let e = self.body(&f.else_body, &pf.else_body)?;
                        let trivial =
                            f.else_body.ops.is_empty() && f.else_body.statics.parts[0].is_empty();
                        empty = (!trivial).then_some(e);
                    }
                    let (keys, relative_keys) = item_keys(f, &items);
                    let len = items.len();
                    let items = items
                        .into_iter()
                        .zip(keys)
                        .zip(bodies)
                        .enumerate()
                        .map(|(i, ((value, key), body))| ItemOut::new(key, value, body, i, len))
                        .collect();
                    SlotOut::List(Arc::new(ListOut {
                        anchor: f.anchor.clone(),
                        items,
                        empty,
                        relative_keys,
                        key_set: Default::default(),
                    }))
                }
                _ => return None,
            };
            slots.push(slot);
        }
        Some(Arc::new(BodyOut {
            statics: b.statics.clone(),
            slots,
            sets,
        }))
    }
}

impl super::FragmentEngine {
    /// Renders `template` both ways, in one pass and leaf by leaf, and
    /// describes the first difference between the two trees (for tests:
    /// the one-pass render must give exactly the leaf-by-leaf tree).
    #[doc(hidden)]
    pub fn check_fresh_render<S: Serialize + ?Sized>(
        &self,
        template: &str,
        data: &S,
    ) -> std::result::Result<(), String> {
        let program = self.program(template).map_err(|e| format!("{e:#}"))?;
        let data = super::ingest::ingest(None, data)
            .map_err(|e| format!("{e:#}"))?
            .value;
        let env = self.inner.env.read().expect("lock");
        let slow = super::render_fresh(&env, &program.root, &data);
        if program.fresh.is_none() {
            return Ok(());
        }
        let fast = render(&env, &program, &data);
        match (fast, slow) {
            (None, _) => Ok(()),
            (Some(_), Err(e)) => Err(format!(
                "the one-pass render succeeded where the walk fails: {e:#}"
            )),
            (Some(f), Ok(s)) => same_body(&f, &s, "root"),
        }
    }
}

fn same_body(a: &BodyOut, b: &BodyOut, at: &str) -> std::result::Result<(), String> {
    if !Arc::ptr_eq(&a.statics, &b.statics) {
        return Err(format!("{at}: other statics"));
    }
    if a.sets.len() != b.sets.len()
        || a.sets
            .iter()
            .zip(&b.sets)
            .any(|(x, y)| !super::diff::same(x, y))
    {
        return Err(format!("{at}: sets {:?} != {:?}", a.sets, b.sets));
    }
    if a.slots.len() != b.slots.len() {
        return Err(format!(
            "{at}: {} slots != {}",
            a.slots.len(),
            b.slots.len()
        ));
    }
    for (i, (x, y)) in a.slots.iter().zip(&b.slots).enumerate() {
        let at = format!("{at}/{i}");
        match (x, y) {
            (SlotOut::Text(x), SlotOut::Text(y)) if x == y => {}
            (SlotOut::Branch { index: i, body: x }, SlotOut::Branch { index: j, body: y })
                if i == j =>
            {
                same_body(x, y, &at)?
            }
            (SlotOut::Sub(x), SlotOut::Sub(y)) => same_body(x, y, &at)?,
            (SlotOut::List(x), SlotOut::List(y)) => {
                if x.anchor != y.anchor || x.items.len() != y.items.len() {
                    return Err(format!("{at}: lists differ"));
                }
                for (p, q) in x.items.iter().zip(&y.items) {
                    if p.key != q.key
                        || p.index != q.index
                        || p.len != q.len
                        || !super::diff::same(&p.value, &q.value)
                    {
                        return Err(format!("{at}: items {} and {} differ", p.key, q.key));
                    }
                    same_body(&p.body, &q.body, &format!("{at}:{}", p.key))?;
                }
                match (&x.empty, &y.empty) {
                    (None, None) => {}
                    (Some(x), Some(y)) => same_body(x, y, &format!("{at}:else"))?,
                    _ => return Err(format!("{at}: else bodies differ")),
                }
            }
            _ => return Err(format!("{at}: {x:?} != {y:?}")),
        }
    }
    Ok(())
}
