//! From a minijinja template to a [`Program`]: a tree of bodies whose static
//! text is fixed and whose dynamic slots are leaves, conditionals, loops and
//! sub-bodies. Each leaf, condition and loop source becomes a tiny synthetic
//! template in the user's environment, so expressions, filters, macros and
//! escaping behave exactly as minijinja renders them.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};

use minijinja::machinery::ast::{self, CallArg, Expr, Stmt};
use minijinja::machinery::{get_compiled_template, parse};
use minijinja::{AutoEscape, Environment};

use super::html::{Ctx, open_tag, scan_until};
use super::reload::source_hash;
use crate::error::{Error, ErrorKind, Result};

/// The data paths a piece of template reads.
#[derive(Clone, Debug, Default)]
pub(crate) struct Deps {
    /// Reads something we cannot track: re-render on any change.
    pub all: bool,
    /// Dotted paths into the root data (`user.name`).
    pub roots: Vec<Box<str>>,
    /// `(loop id, LOOP_* flags)`: which loops' `loop` object is read.
    pub loops: Vec<(u32, u8)>,
}

pub(crate) const LOOP_META: u8 = 1;
pub(crate) const LOOP_NEIGHBORS: u8 = 2;

impl Deps {
    fn merge(&mut self, o: &Deps) {
        self.all |= o.all;
        for r in &o.roots {
            if !self.roots.contains(r) {
                self.roots.push(r.clone());
            }
        }
        for l in &o.loops {
            self.loops.push(*l);
        }
    }

    pub(crate) fn loop_flags(&self, id: u32) -> u8 {
        self.loops
            .iter()
            .filter(|(i, _)| *i == id)
            .fold(0, |a, (_, f)| a | f)
    }

    /// Whether any of `changed` (dotted paths, `""` meaning everything)
    /// touches these dependencies.
    pub(crate) fn affected(&self, changed: &[String]) -> bool {
        if changed.is_empty() {
            return false;
        }
        if self.all {
            return true;
        }
        changed
            .iter()
            .any(|c| c.is_empty() || self.roots.iter().any(|r| overlaps(r, c)))
    }
}

fn overlaps(a: &str, b: &str) -> bool {
    let (short, long) = if a.len() <= b.len() { (a, b) } else { (b, a) };
    long.starts_with(short) && (long.len() == short.len() || long.as_bytes()[short.len()] == b'.')
}

/// A synthetic template: one leaf, value or statement of a user template.
#[derive(Debug)]
pub(crate) struct Synth {
    /// Its name in the environment.
    pub name: Box<str>,
    /// The user's template it came from, and that template's source.
    pub origin: Arc<Origin>,
    /// Line in the user's template where the piece starts.
    pub line: u32,
    /// The escaping it runs with: that of the user's template whose
    /// execution it belongs to (the rendered template for its own text and
    /// its layouts, an included template for what it includes), decided by
    /// the environment's callback on that template's real name.
    pub escape: AutoEscape,
    /// Where the piece itself starts in the synthetic source (after the
    /// prelude of macros and imports, if one was prepended).
    pub piece_at: u32,
    /// For a leaf that prints a variable or an attribute path of one
    /// (`{{ count }}`, `{{ r.name }}`), without a prelude: the path, which
    /// `eval::Formats` reads and formats without running the piece.
    pub path: Option<Box<[Box<str>]>>,
}

/// The variable path an expression is (`a`, `a.b.c`), if it is one.
fn path_of(e: &ast::Expr<'_>) -> Option<Vec<Box<str>>> {
    match e {
        ast::Expr::Var(v) => Some(vec![v.id.into()]),
        ast::Expr::GetAttr(g) => {
            let mut p = path_of(&g.expr)?;
            p.push(g.name.into());
            Some(p)
        }
        _ => None,
    }
}

#[derive(Debug)]
pub(crate) struct Origin {
    pub name: Box<str>,
    pub source: Arc<str>,
}

/// The static text of one body: `parts.len() == anchors.len() + 1`.
#[derive(Debug)]
pub(crate) struct Statics {
    pub sid: u32,
    pub parts: Vec<Box<str>>,
    /// For each slot, the fragment id it is anchored as, if any.
    pub anchors: Vec<Option<Arc<str>>>,
    /// For each slot, which loop counter it outputs as it is (`{{
    /// loop.index }}` and the like, see [`Counter`]), or empty when none
    /// does: in a loop's item body a client can recompute these from the
    /// item's position, so a shift costs one operation for the whole list.
    pub counters: Vec<u8>,
    /// The whitespace around the one element a body of these statics is
    /// when its slots hold inert values (see [`super::markers::run_shape`]):
    /// what a run needs to know of an item without scanning its HTML.
    pub run: Option<(Box<str>, Box<str>)>,
    /// Whether the parts hold nothing a run's scan looks at (`<`, `>`,
    /// quotes, `/`): a body nested in an item is inert if these are and
    /// its own slots are.
    pub inert: bool,
}

/// The loop counters a client can compute from an item's position `i` (the
/// values in `Statics::counters`).
pub(crate) mod counter {
    /// `loop.index`: `i + 1`.
    pub(crate) const INDEX: u8 = 1;
    /// `loop.index0`: `i`.
    pub(crate) const INDEX0: u8 = 2;

    /// The counter's value at position `i`.
    pub(crate) fn value(c: u8, i: usize) -> usize {
        match c {
            INDEX => i + 1,
            _ => i,
        }
    }
}

#[derive(Debug)]
pub(crate) struct Body {
    pub statics: Arc<Statics>,
    pub ops: Vec<Op>,
    /// Everything any op in this body (recursively) reads.
    pub deps: Deps,
}

#[derive(Debug)]
pub(crate) enum Op {
    /// `{{ expr }}` or a statement rendered whole: one text slot.
    Leaf {
        synth: Synth,
        deps: Deps,
    },
    /// `if`/`elif`/`else`: `branches.len() == conds.len() + 1`.
    If {
        conds: Vec<(Synth, Deps)>,
        branches: Vec<Body>,
    },
    For(Box<ForNode>),
    /// A body of its own: a block, an include, `super()`, or `with`.
    Sub {
        with: Vec<(Vec<Box<str>>, Synth, Deps)>,
        body: Body,
    },
    /// A run of statements that share a mutable value (a `namespace()`):
    /// when anything it reads changes, all of it is re-rendered in order, as
    /// minijinja runs it, and compared with the old tree, so only what
    /// changed is sent. See `effects.rs`.
    Region {
        body: Body,
    },
    /// A `recursive` loop (its top level).
    Recursive(Arc<RecLoop>),
    /// `{{ loop(arg) }}` in a recursive loop's body: the loop again over
    /// `arg`, one level deeper.
    Recurse {
        arg: Synth,
        deps: Deps,
        target: Arc<OnceLock<Weak<RecLoop>>>,
    },
    /// `set`: binds names, outputs nothing, takes no slot. With no names it
    /// is a statement run for its effect only: `set ns.attr = …` on a
    /// namespace, or `do`.
    Set {
        names: Vec<Box<str>>,
        synth: Synth,
        deps: Deps,
    },
}

#[derive(Debug)]
pub(crate) struct ForNode {
    pub target: Vec<Box<str>>,
    pub unpack: bool,
    pub iter: Synth,
    pub iter_deps: Deps,
    pub filter: Option<Synth>,
    pub key: Option<Box<str>>,
    pub body: Body,
    pub else_body: Body,
    /// Dependencies of the body and filter on the root data.
    pub body_deps: Deps,
    pub loop_flags: u8,
    pub anchor: Option<Arc<str>>,
    /// The loop iterates a list of the data as it is (`rows`, `page.rows`,
    /// `rows|keyed(..)`): item `i` of the loop is item `i` of the list at
    /// this dotted path, so a data delta at that path says which items
    /// changed.
    pub plain_path: Option<Box<str>>,
    /// The stream's name when the loop iterates `…|stream` (`stream.rs`).
    pub stream: Option<Box<str>>,
}

/// A recursive loop. Its loop variable and its `loop` object are compiled
/// as two pseudo root paths (they cannot collide with data paths), so that
/// the walk can say which parts of an item read the item, which read its
/// place, and re-render only those: a change deep in a tree re-renders the
/// path to it, not the tree.
#[derive(Debug)]
pub(crate) struct RecLoop {
    pub node: ForNode,
    /// What reads the loop variable depends on this path.
    pub item_path: Box<str>,
    /// What reads `loop` (index, neighbours, depth) depends on this path.
    pub meta_path: Box<str>,
}

impl Op {
    pub(crate) fn has_slot(&self) -> bool {
        !matches!(self, Op::Set { .. })
    }
}

/// A compiled template.
#[derive(Debug)]
pub(crate) struct Program {
    pub root: Body,
    /// The one-pass plan for fresh renders (`fresh.rs`), when the program
    /// has one.
    pub fresh: Option<Arc<super::fresh::Plan>>,
    /// A fingerprint of what a client holds of this program: the same for
    /// the same template sources in any process (see [`Layout`]).
    pub layout: u64,
    /// The template's name.
    pub name: Arc<str>,
    /// Every template the program was compiled from (the template, what it
    /// extends, includes and imports by a constant name), with a hash of
    /// the source it was compiled from: the program is stale once any of
    /// them reads otherwise (`reload.rs`).
    pub sources: Vec<(Arc<str>, u64)>,
}

/// Hands out synthetic template names, engine-wide: they must be unique in
/// the environment. Statics ids and fragment ids are per program (see
/// [`Compiler`]), so a program's ids do not depend on what else the
/// process compiled before it.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub synth: AtomicU64,
}

/// A program's layout fingerprint: 64-bit FNV-1a over every statics it
/// creates (id, parts, anchors, counters) in creation order, the source of
/// every synthetic template it makes, and the root template's name. No
/// random seed, so it is the same in every process for the same sources: a
/// session restored into a new process may keep a client that holds the old
/// page exactly when the fingerprint matches.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Layout(u64);

impl Layout {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;

    pub(crate) fn new() -> Layout {
        Layout(Self::OFFSET)
    }

    fn bytes(&mut self, b: &[u8]) {
        for &x in b {
            self.0 ^= u64::from(x);
            self.0 = self.0.wrapping_mul(Self::PRIME);
        }
    }

    fn tag(&mut self, t: u8) {
        self.bytes(&[t]);
    }

    fn u64(&mut self, n: u64) {
        self.bytes(&n.to_le_bytes());
    }

    /// A string, length first, so that consecutive strings cannot run into
    /// each other.
    fn str(&mut self, s: &str) {
        self.u64(s.len() as u64);
        self.bytes(s.as_bytes());
    }

    fn statics(&mut self, s: &Statics) {
        self.tag(b'S');
        self.u64(u64::from(s.sid));
        self.u64(s.parts.len() as u64);
        for p in &s.parts {
            self.str(p);
        }
        self.u64(s.anchors.len() as u64);
        for a in &s.anchors {
            match a {
                Some(a) => {
                    self.tag(1);
                    self.str(a);
                }
                None => self.tag(0),
            }
        }
        self.u64(s.counters.len() as u64);
        self.bytes(&s.counters);
    }

    pub(crate) fn finish(self) -> u64 {
        self.0
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    VarStart,
    VarEnd,
    BlockStart,
    BlockEnd,
    Ident(String),
    Open,
    Close,
    Comma,
    Assign,
    Other,
}

/// The tokens of a template with their byte ranges. minijinja's expression
/// spans are not exact (they may start at `{{` or inside a filter chain), but
/// statement spans and token spans are: expression text is cut by tokens.
struct Tokens(Vec<(Tok, u32, u32)>);

impl Tokens {
    fn new(source: &str, syntax: minijinja::syntax::SyntaxConfig) -> Tokens {
        use minijinja::machinery::{Token, tokenize};
        let mut v = Vec::new();
        for t in tokenize(source, false, syntax) {
            let Ok((t, sp)) = t else { break };
            let k = match t {
                Token::VariableStart => Tok::VarStart,
                Token::VariableEnd => Tok::VarEnd,
                Token::BlockStart => Tok::BlockStart,
                Token::BlockEnd => Tok::BlockEnd,
                Token::Ident(i) => Tok::Ident(i.to_owned()),
                Token::ParenOpen | Token::BracketOpen | Token::BraceOpen => Tok::Open,
                Token::ParenClose | Token::BracketClose | Token::BraceClose => Tok::Close,
                Token::Comma => Tok::Comma,
                Token::Assign => Tok::Assign,
                _ => Tok::Other,
            };
            v.push((k, sp.start_offset, sp.end_offset));
        }
        Tokens(v)
    }

    /// Index of the last `start` token at or before `offset`.
    fn opening(&self, start: &Tok, offset: u32) -> Option<usize> {
        self.0
            .iter()
            .rposition(|(t, s, _)| t == start && *s <= offset)
    }

    /// The text of the `{{ … }}` that contains `offset`.
    fn emit_expr<'s>(&self, source: &'s str, offset: u32) -> Option<&'s str> {
        let i = self.opening(&Tok::VarStart, offset)?;
        let end = self.0[i..].iter().find(|(t, _, _)| *t == Tok::VarEnd)?;
        Some(source[self.0[i].2 as usize..end.1 as usize].trim())
    }

    /// The tokens of the `{% … %}` that contains `offset`, the keyword first
    /// and the closing `%}` last.
    fn block(&self, offset: u32) -> Option<&[(Tok, u32, u32)]> {
        let i = self.opening(&Tok::BlockStart, offset)?;
        let n = self.0[i..]
            .iter()
            .position(|(t, _, _)| *t == Tok::BlockEnd)?;
        Some(&self.0[i + 1..i + n + 1])
    }
}

/// Source text between token `a`'s end and token `b`'s start.
fn between<'s>(source: &'s str, toks: &[(Tok, u32, u32)], a: usize, b: usize) -> &'s str {
    source[toks[a].2 as usize..toks[b].1 as usize].trim()
}

/// `if`/`elif` condition text.
fn cond_text<'s>(source: &'s str, tokens: &Tokens, offset: u32) -> Option<&'s str> {
    let b = tokens.block(offset)?;
    Some(between(source, b, 0, b.len() - 1))
}

/// `for` loop iterable and filter texts.
fn for_texts<'s>(
    source: &'s str,
    tokens: &Tokens,
    offset: u32,
) -> Option<(&'s str, Option<&'s str>)> {
    let b = tokens.block(offset)?;
    let mut depth = 0i32;
    let (mut in_at, mut if_at, mut end_at) = (None, None, b.len() - 1);
    for (i, (t, _, _)) in b.iter().enumerate() {
        match t {
            Tok::Open => depth += 1,
            Tok::Close => depth -= 1,
            Tok::Ident(w) if depth == 0 => match w.as_str() {
                "in" if in_at.is_none() => in_at = Some(i),
                "if" if in_at.is_some() && if_at.is_none() => if_at = Some(i),
                "recursive" if in_at.is_some() => end_at = i,
                _ => {}
            },
            _ => {}
        }
    }
    let in_at = in_at?;
    Some(match if_at {
        Some(f) => (
            between(source, b, in_at, f),
            Some(between(source, b, f, end_at)),
        ),
        None => (between(source, b, in_at, end_at), None),
    })
}

/// `with` assignment value texts, in order.
fn with_texts<'s>(source: &'s str, tokens: &Tokens, offset: u32) -> Option<Vec<&'s str>> {
    let b = tokens.block(offset)?;
    let mut out = Vec::new();
    let mut depth = 0i32;
    let mut value_from: Option<usize> = None;
    for (i, (t, _, _)) in b.iter().enumerate().skip(1) {
        match t {
            Tok::Open => depth += 1,
            Tok::Close => depth -= 1,
            Tok::Assign if depth == 0 && value_from.is_none() => value_from = Some(i),
            Tok::Comma | Tok::BlockEnd if depth == 0 => {
                if let Some(v) = value_from.take() {
                    out.push(between(source, b, v, i));
                }
            }
            _ => {}
        }
    }
    Some(out)
}

/// A template source with what its bodies need from it.
struct Src {
    tokens: Tokens,
    origin: Arc<Origin>,
    prelude: String,
    prelude_names: HashSet<String>,
    prelude_vars: HashSet<String>,
}

#[derive(Clone)]
enum Local {
    LoopVar,
    LoopObj(u32),
    Set(Deps),
}

pub(crate) struct Compiler<'e> {
    env: &'e Environment<'static>,
    /// Statements rendered whole by minijinja (one leaf each): what and
    /// where, logged once per template.
    notes: Vec<String>,
    /// The next body compiled is a region's: its first statement opens it.
    region_open: bool,
    /// The recursive loops being compiled: the scope index of their `loop`
    /// and the handle their `loop(…)` calls point to.
    recursion: Vec<(usize, Arc<OnceLock<Weak<RecLoop>>>)>,
    /// `loop(…)` calls compiled as [`Op::Recurse`] so far.
    recursions: usize,
    counters: &'e Counters,
    /// Synthetic templates to add to the environment.
    pub synths: Vec<(String, String)>,
    /// Every template read, with a hash of the source read (see
    /// [`Program::sources`]).
    pub sources: Vec<(Arc<str>, u64)>,
    next_node: u32,
    /// The next statics id to hand out (per program, like `next_node`).
    next_sid: u32,
    /// The fingerprint of the statics created so far.
    layout: Layout,
    scope: Vec<(String, Local)>,
    depth: usize,
    /// The escaping of the template whose execution is being compiled.
    escape: AutoEscape,
}

type Chain = Vec<Arc<Src>>;

struct BodyCx<'c> {
    src: &'c Arc<Src>,
    in_item: bool,
    /// For a block body: the remaining chain for `super()`.
    block: Option<(&'c str, &'c [Arc<Src>])>,
    overrides: &'c HashMap<String, Chain>,
}

fn unsupported(what: &str, origin: &Origin, line: u16) -> Error {
    Error::new(
        ErrorKind::Unsupported,
        format!(
            "{what} is not split into fragments (in {}:{line})",
            origin.name
        ),
    )
}

impl<'e> Compiler<'e> {
    pub(crate) fn new(env: &'e Environment<'static>, counters: &'e Counters) -> Self {
        Compiler {
            env,
            notes: Vec::new(),
            region_open: false,
            recursion: Vec::new(),
            recursions: 0,
            counters,
            synths: Vec::new(),
            sources: Vec::new(),
            next_node: 0,
            next_sid: 0,
            layout: Layout::new(),
            scope: Vec::new(),
            depth: 0,
            escape: AutoEscape::None,
        }
    }

    /// The escaping minijinja gives template `name` (the environment's
    /// auto-escape callback on its real name).
    fn initial_escape(&self, name: &str) -> Result<AutoEscape> {
        let t = self.env.get_template(name)?;
        Ok(get_compiled_template(&t).initial_auto_escape.clone())
    }

    pub(crate) fn compile(&mut self, name: &str) -> Result<Program> {
        self.escape = self.initial_escape(name)?;
        let root = self.template(name, &HashMap::new(), Ctx::Text, false)?.0;
        if !self.notes.is_empty() {
            tracing::warn!(
                template = name,
                constructs = %self.notes.join(", "),
                "statements rendered as single fragments"
            );
        }
        Ok(Program {
            root,
            fresh: None,
            layout: self.layout(name),
            name: name.into(),
            sources: std::mem::take(&mut self.sources),
        })
    }

    /// The layout fingerprint of what this compiler made for template
    /// `name`: its statics so far, then its synthetic templates' sources,
    /// then the name.
    fn layout(&self, name: &str) -> u64 {
        let mut l = self.layout;
        l.tag(b'T');
        l.u64(self.synths.len() as u64);
        for (_, source) in &self.synths {
            l.str(source);
        }
        l.tag(b'R');
        l.str(name);
        l.finish()
    }

    /// A program that renders the whole template as one leaf: used when a
    /// template needs something the splitter does not model.
    pub(crate) fn whole(&mut self, name: &str) -> Result<Program> {
        self.escape = self.initial_escape(name)?;
        let source: Arc<str> = self.env.get_template(name)?.source().into();
        self.sources.push((name.into(), source_hash(&source)));
        let origin = Arc::new(Origin {
            name: name.into(),
            source: source.clone(),
        });
        let synth = self.add_synth(&origin, source.to_string(), 1);
        let statics = self.statics(vec!["".into(), "".into()], vec![None]);
        Ok(Program {
            root: Body {
                statics,
                ops: vec![Op::Leaf {
                    synth,
                    deps: Deps {
                        all: true,
                        ..Deps::default()
                    },
                }],
                deps: Deps {
                    all: true,
                    ..Deps::default()
                },
            },
            fresh: None,
            layout: self.layout(name),
            name: name.into(),
            sources: std::mem::take(&mut self.sources),
        })
    }

    fn load(&mut self, name: &str) -> Result<Arc<Src>> {
        let source: Arc<str> = self.env.get_template(name)?.source().into();
        if !self.sources.iter().any(|(n, _)| &**n == name) {
            self.sources.push((name.into(), source_hash(&source)));
        }
        let origin = Arc::new(Origin {
            name: name.into(),
            source: source.clone(),
        });
        let ast = parse(&source, name, self.env.syntax().clone()).map_err(Error::from_template)?;
        let mut prelude = String::new();
        let mut names = HashSet::new();
        collect_prelude(&ast, &source, &mut prelude, &mut names);
        let mut prelude_vars = HashSet::new();
        if !prelude.is_empty() {
            if let Ok(t) = self.env.template_from_str(&prelude) {
                prelude_vars = t.undeclared_variables(true);
            }
            collect_import_vars(&ast, self.env, &mut prelude_vars, &mut self.sources);
        }
        Ok(Arc::new(Src {
            tokens: Tokens::new(&source, self.env.syntax().clone()),
            origin,
            prelude,
            prelude_names: names,
            prelude_vars,
        }))
    }

    fn template(
        &mut self,
        name: &str,
        overrides: &HashMap<String, Chain>,
        ctx: Ctx,
        in_item: bool,
    ) -> Result<(Body, Ctx, i32)> {
        self.depth += 1;
        if self.depth > 32 {
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!("templates nest too deeply at {name} (recursive include?)"),
            ));
        }
        let src = self.load(name)?;
        let source = src.origin.source.clone();
        let ast = parse(&source, name, self.env.syntax().clone()).map_err(Error::from_template)?;
        let Stmt::Template(t) = &ast else {
            unreachable!("parse returns a template")
        };
        let parent = t.children.iter().find_map(|s| match s {
            Stmt::Extends(e) => Some(e),
            _ => None,
        });
        let out = if let Some(ext) = parent {
            let Some(parent_name) = const_str(&ext.name) else {
                return Err(unsupported(
                    "a computed `extends`",
                    &src.origin,
                    ext.span().start_line,
                ));
            };
            // This template's blocks override the parent's; more derived
            // templates (already in `overrides`) come first in each chain.
            let mut merged = overrides.clone();
            let mut blocks = Vec::new();
            collect_blocks(&t.children, &mut blocks);
            for b in blocks {
                merged.entry(b.to_owned()).or_default().push(src.clone());
            }
            // Top-level `set`s of a child run before the parent's body.
            let mut sets = Vec::new();
            let mut namespace = false;
            for s in &t.children {
                if let Stmt::Set(_) = s {
                    namespace |= stmt_tokens(&src.tokens, s).is_none_or(names_namespace);
                    let cx = BodyCx {
                        src: &src,
                        in_item,
                        block: None,
                        overrides,
                    };
                    // One `set` (no region of its own: see below).
                    self.region_open = true;
                    let b = self.body(std::slice::from_ref(s), &cx, ctx);
                    self.region_open = false;
                    let mut b = b?;
                    sets.append(&mut b.0.ops);
                }
            }
            let (mut body, c, d) = self.template(&parent_name, &merged, ctx, in_item)?;
            if !sets.is_empty() {
                for op in &sets {
                    if let Op::Set { deps, .. } = op {
                        body.deps.merge(deps);
                    }
                }
                sets.append(&mut body.ops);
                body.ops = sets;
            }
            if namespace {
                // A namespace made here may be changed by any block: the
                // whole page is its region.
                let deps = body.deps.clone();
                body = Body {
                    statics: self.statics(vec!["".into(), "".into()], vec![None]),
                    ops: vec![Op::Region { body }],
                    deps,
                };
            }
            (body, c, d)
        } else {
            let cx = BodyCx {
                src: &src,
                in_item,
                block: None,
                overrides,
            };
            self.body(&t.children, &cx, ctx)?
        };
        self.depth -= 1;
        Ok(out)
    }

    fn statics(&mut self, parts: Vec<Box<str>>, anchors: Vec<Option<Arc<str>>>) -> Arc<Statics> {
        self.statics_with(parts, anchors, Vec::new())
    }

    fn statics_with(
        &mut self,
        parts: Vec<Box<str>>,
        anchors: Vec<Option<Arc<str>>>,
        mut counters: Vec<u8>,
    ) -> Arc<Statics> {
        if counters.iter().all(|c| *c == 0) {
            counters = Vec::new();
        }
        let statics = Statics {
            sid: self.next_sid,
            run: super::markers::run_shape(&parts),
            inert: parts.iter().all(|p| super::markers::inert(p)),
            parts,
            anchors,
            counters,
        };
        self.next_sid += 1;
        self.layout.statics(&statics);
        Arc::new(statics)
    }

    /// Which loop counter `{{ e }}` outputs as it is, if it is one of the
    /// innermost loop's (`loop.index`, …): see [`counter`].
    fn counter_of(&self, e: &Expr<'_>) -> u8 {
        let Expr::GetAttr(g) = e else { return 0 };
        let Expr::Var(v) = &g.expr else { return 0 };
        let innermost = self.scope.iter().rev().find(|(n, _)| n == "loop");
        if v.id != "loop" || !matches!(innermost, Some((_, Local::LoopObj(_)))) {
            return 0;
        }
        // Not `revindex`, `revindex0` or `length`: a loop over an iterator
        // of unknown length has none.
        match g.name {
            "index" => counter::INDEX,
            "index0" => counter::INDEX0,
            _ => 0,
        }
    }

    fn add_synth(&mut self, origin: &Arc<Origin>, source: String, line: u16) -> Synth {
        let n = self.counters.synth.fetch_add(1, Ordering::Relaxed);
        // The escaping is passed in when the piece runs (`escape`), not left
        // to the callback on this name. The name still starts and ends with
        // the user's, for what minijinja decides by name at run time (the
        // `escape` filter inside `{% autoescape false %}`).
        let name = format!("{0}\u{1}st{n}/{0}", origin.name);
        self.synths.push((name.clone(), source));
        Synth {
            name: name.into(),
            origin: origin.clone(),
            line: line as u32,
            escape: self.escape.clone(),
            piece_at: 0,
            path: None,
        }
    }

    fn synth_for(&mut self, src: &Src, piece: String, vars: &HashSet<String>, line: u16) -> Synth {
        let needs_prelude = vars.iter().any(|v| src.prelude_names.contains(head(v)));
        let (source, at) = if needs_prelude {
            (format!("{}{piece}", src.prelude), src.prelude.len())
        } else {
            (piece, 0)
        };
        let mut synth = self.add_synth(&src.origin, source, line);
        synth.piece_at = at as u32;
        synth
    }

    fn vars_of(&self, piece: &str) -> Result<HashSet<String>> {
        Ok(self
            .env
            .template_from_str(piece)
            .map_err(Error::from_template)?
            .undeclared_variables(true))
    }

    fn classify(&self, vars: &HashSet<String>, src: &Src) -> Deps {
        let mut deps = Deps::default();
        let mut extra: Vec<&String> = Vec::new();
        if vars.iter().any(|v| src.prelude_names.contains(head(v))) {
            extra.extend(src.prelude_vars.iter());
        }
        for v in vars.iter().chain(extra) {
            let h = head(v);
            if src.prelude_names.contains(h) {
                continue;
            }
            match self.scope.iter().rev().find(|(n, _)| n == h) {
                Some((_, Local::LoopVar)) => {}
                Some((_, Local::LoopObj(id))) => {
                    let attr = v.split('.').nth(1);
                    let flags = match attr {
                        Some(
                            "index" | "index0" | "first" | "revindex" | "revindex0" | "last"
                            | "length" | "cycle" | "depth" | "depth0",
                        ) => LOOP_META,
                        _ => LOOP_META | LOOP_NEIGHBORS,
                    };
                    deps.loops.push((*id, flags));
                }
                Some((_, Local::Set(d))) => deps.merge(d),
                None => match h {
                    "super" | "self" | "caller" | "varargs" | "kwargs" => deps.all = true,
                    _ => deps.roots.push(v.as_str().into()),
                },
            }
        }
        deps
    }

    fn node_id(&mut self) -> u32 {
        self.next_node += 1;
        self.next_node
    }

    fn body(
        &mut self,
        stmts: &[Stmt<'_>],
        cx: &BodyCx<'_>,
        mut ctx: Ctx,
    ) -> Result<(Body, Ctx, i32)> {
        let src = cx.src;
        let source = src.origin.source.clone();
        let mut parts: Vec<String> = vec![String::new()];
        let mut anchors: Vec<Option<Arc<str>>> = Vec::new();
        let mut counters: Vec<u8> = Vec::new();
        let mut ops = Vec::new();
        let mut deps = Deps::default();
        let mut depth = 0i32;
        // Elements with a dynamic attribute whose end is not yet reached
        // (outside list items): each becomes an anchored fragment of its
        // own when it ends in this body, so an attribute change patches
        // that element, not the fragment around it.
        let mut elems: Vec<ElemOpen> = Vec::new();
        // The context where the current (last) part began.
        let mut part_ctx = ctx;
        let scope_mark = self.scope.len();
        let region_here = std::mem::take(&mut self.region_open);
        let mut next = 0;
        while next < stmts.len() {
            let at = next;
            let stmt = &stmts[at];
            next += 1;
            let anchorable = ctx == Ctx::Text && !cx.in_item;
            if !(region_here && at == 0) {
                if let Some(end) = region_end(src, stmts, at) {
                    // From the namespace's creation to its last use: one
                    // region, compiled as a body of its own.
                    self.region_open = true;
                    let r = self.body(&stmts[at..=end], cx, ctx);
                    self.region_open = false;
                    let (body, c2, d2) = r?;
                    deps.merge(&body.deps);
                    let anchor: Option<Arc<str>> = (anchorable && c2 == ctx && d2 == 0)
                        .then(|| self.node_id().to_string().into());
                    push_slot(&mut parts, &mut anchors, anchor);
                    counters.push(0);
                    ops.push(Op::Region { body });
                    ctx = c2;
                    depth += d2;
                    part_ctx = ctx;
                    elems.clear();
                    next = end + 1;
                    continue;
                }
            }
            let mut slot_counter = 0;
            let stmt_ctx = ctx;
            if !cx.in_item
                && !matches!(stmt, Stmt::EmitRaw(_))
                && matches!(ctx, Ctx::Tag { .. } | Ctx::Attr { .. } | Ctx::Raw(_))
            {
                let last = parts.last().expect("parts");
                if let Some((off, Ctx::Text, name, void)) = open_tag(part_ctx, last) {
                    let fresh = elems
                        .last()
                        .is_none_or(|e| (e.part, e.off) != (parts.len() - 1, off));
                    if fresh && !matches!(name.as_str(), "html" | "head" | "body") {
                        elems.push(ElemOpen {
                            part: parts.len() - 1,
                            off,
                            slot: anchors.len(),
                            op: ops.len(),
                            depth: depth - i32::from(!void),
                        });
                    }
                }
            }
            let (op, anchor_name): (Op, Option<String>) = match stmt {
                Stmt::EmitRaw(r) => {
                    let mut rest: &str = r.raw;
                    loop {
                        let until = elems.last().map(|e| e.depth);
                        let (c, closed) = scan_until(ctx, rest, &mut depth, until);
                        ctx = c;
                        let Some(n) = closed else {
                            parts.last_mut().expect("parts").push_str(rest);
                            break;
                        };
                        parts.last_mut().expect("parts").push_str(&rest[..n]);
                        rest = &rest[n..];
                        let e = elems.pop().expect("an open element");
                        if self.close_element(e, &mut parts, &mut anchors, &mut counters, &mut ops)
                        {
                            part_ctx = ctx;
                        }
                    }
                    continue;
                }
                Stmt::EmitExpr(e) => {
                    if let Some(op) = self.recurse(e, src)? {
                        (op, None)
                    } else if is_super_call(&e.expr) {
                        let Some((block, chain)) = cx.block.filter(|(_, c)| !c.is_empty()) else {
                            return Err(unsupported(
                                "`super()` outside an overriding block",
                                &src.origin,
                                e.span().start_line,
                            ));
                        };
                        let (body, c2, d2) = self.block_body(block, chain, cx, ctx)?;
                        let ok = c2 == ctx && d2 == 0;
                        (
                            Op::Sub {
                                with: Vec::new(),
                                body,
                            },
                            (anchorable && ok).then(|| self.node_id().to_string()),
                        )
                    } else {
                        let piece = src
                            .tokens
                            .emit_expr(&source, e.span().start_offset)
                            .ok_or_else(|| {
                                unsupported("this expression", &src.origin, e.span().start_line)
                            })?;
                        let text = format!("{{{{ {piece} }}}}");
                        let vars = self.vars_of(&text)?;
                        let deps = self.classify(&vars, src);
                        let mut synth = self.synth_for(src, text, &vars, e.span().start_line);
                        if synth.piece_at == 0 {
                            synth.path = path_of(&e.expr).map(Vec::into_boxed_slice);
                        }
                        slot_counter = self.counter_of(&e.expr);
                        (
                            Op::Leaf { synth, deps },
                            anchorable.then(|| self.node_id().to_string()),
                        )
                    }
                }
                Stmt::IfCond(i) => {
                    let mut conds = Vec::new();
                    let mut branches = Vec::new();
                    let mut cur: &ast::Spanned<ast::IfCond<'_>> = i;
                    let mut balanced = true;
                    loop {
                        let piece = cond_text(&source, &src.tokens, cur.span().start_offset)
                            .ok_or_else(|| {
                                unsupported("this condition", &src.origin, cur.span().start_line)
                            })?;
                        let (synth, d) = self.value_synth(src, piece, cur.span().start_line)?;
                        conds.push((synth, d));
                        let (b, c2, d2) = self.body(&cur.true_body, cx, ctx)?;
                        balanced &= c2 == ctx && d2 == 0;
                        branches.push(b);
                        match cur.false_body.as_slice() {
                            [Stmt::IfCond(next)] => cur = next,
                            rest => {
                                let (b, c2, d2) = self.body(rest, cx, ctx)?;
                                balanced &= c2 == ctx && d2 == 0;
                                branches.push(b);
                                break;
                            }
                        }
                    }
                    (
                        Op::If { conds, branches },
                        (anchorable && balanced).then(|| self.node_id().to_string()),
                    )
                }
                Stmt::ForLoop(f) => {
                    if f.recursive {
                        match self.rec_loop(f, stmt, cx, ctx, anchorable)? {
                            Some(r) => {
                                let a = r.node.anchor.as_ref().map(|a| a.to_string());
                                (Op::Recursive(r), a)
                            }
                            None => self.opaque(
                                "a `recursive` loop (`loop(…)` other than `{{ loop(x) }}`)",
                                stmt,
                                src,
                                anchorable,
                            )?,
                        }
                    } else if loop_control(&f.body) {
                        self.opaque("a loop with `break`/`continue`", stmt, src, anchorable)?
                    } else {
                        let node = self.for_loop(f, cx, ctx, anchorable)?;
                        let a = node.anchor.as_ref().map(|a| a.to_string());
                        (Op::For(Box::new(node)), a)
                    }
                }
                Stmt::Set(_) | Stmt::SetBlock(_) => {
                    let target = match stmt {
                        Stmt::Set(s) => &s.target,
                        Stmt::SetBlock(s) => &s.target,
                        _ => unreachable!(),
                    };
                    let span = stmt_span(stmt);
                    let names = match target {
                        // `set ns.attr = …`: an effect on a namespace, which
                        // only exists inside its region (see `region_end`).
                        Expr::GetAttr(_) if matches!(stmt, Stmt::Set(_)) => Vec::new(),
                        t => target_names(t).ok_or_else(|| {
                            unsupported("this `set` target", &src.origin, span.start_line)
                        })?,
                    };
                    let piece = format!("{{% {} %}}", slice(&source, span));
                    let vars = self.vars_of(&piece)?;
                    let d = self.classify(&vars, src);
                    let synth = self.synth_for(src, piece, &vars, span.start_line);
                    for n in &names {
                        self.scope.push((n.to_string(), Local::Set(d.clone())));
                    }
                    (
                        Op::Set {
                            names,
                            synth,
                            deps: d,
                        },
                        None,
                    )
                }
                Stmt::WithBlock(w) => {
                    let mut with = Vec::new();
                    let mark = self.scope.len();
                    let mut pending = Vec::new();
                    let texts = with_texts(&source, &src.tokens, w.span().start_offset)
                        .filter(|t| t.len() == w.assignments.len())
                        .ok_or_else(|| {
                            unsupported("this `with`", &src.origin, w.span().start_line)
                        })?;
                    for ((target, _), piece) in w.assignments.iter().zip(texts) {
                        let names = target_names(target).ok_or_else(|| {
                            unsupported("this `with` target", &src.origin, w.span().start_line)
                        })?;
                        let (synth, d) = self.value_synth(src, piece, w.span().start_line)?;
                        for n in &names {
                            pending.push((n.to_string(), Local::Set(d.clone())));
                        }
                        with.push((names, synth, d));
                    }
                    self.scope.extend(pending);
                    let r = self.body(&w.body, cx, ctx);
                    self.scope.truncate(mark);
                    let (body, c2, d2) = r?;
                    let ok = c2 == ctx && d2 == 0;
                    (
                        Op::Sub { with, body },
                        (anchorable && ok).then(|| self.node_id().to_string()),
                    )
                }
                Stmt::Block(b) => {
                    let mut chain: Vec<Arc<Src>> =
                        cx.overrides.get(b.name).cloned().unwrap_or_default();
                    chain.push(src.clone());
                    let (body, c2, d2) = self.block_body(b.name, &chain, cx, ctx)?;
                    let ok = c2 == ctx && d2 == 0;
                    (
                        Op::Sub {
                            with: Vec::new(),
                            body,
                        },
                        (anchorable && ok).then(|| b.name.to_string()),
                    )
                }
                Stmt::Include(inc) => match const_str(&inc.name) {
                    Some(name) if !inc.ignore_missing => {
                        // An included template runs with its own escaping.
                        let inner = self.initial_escape(&name)?;
                        let outer = std::mem::replace(&mut self.escape, inner);
                        let included = self.template(&name, &HashMap::new(), ctx, cx.in_item);
                        self.escape = outer;
                        let (body, c2, d2) = included?;
                        let ok = c2 == ctx && d2 == 0;
                        (
                            Op::Sub {
                                with: Vec::new(),
                                body,
                            },
                            (anchorable && ok).then(|| self.node_id().to_string()),
                        )
                    }
                    _ => self.opaque("a computed or optional `include`", stmt, src, anchorable)?,
                },
                Stmt::Macro(_) | Stmt::Import(_) | Stmt::FromImport(_) | Stmt::Extends(_) => {
                    continue;
                }
                Stmt::AutoEscape(_) => {
                    self.opaque("an `autoescape` block", stmt, src, anchorable)?
                }
                Stmt::FilterBlock(_) => self.opaque("a `filter` block", stmt, src, anchorable)?,
                Stmt::CallBlock(_) => self.opaque("a `call` block", stmt, src, anchorable)?,
                Stmt::Do(_) => {
                    // Run for its effect, outputs nothing: a `set` of no names.
                    let span = stmt_span(stmt);
                    let piece = format!("{{% {} %}}", slice(&source, span));
                    let vars = self.vars_of(&piece)?;
                    let deps = self.classify(&vars, src);
                    let synth = self.synth_for(src, piece, &vars, span.start_line);
                    (
                        Op::Set {
                            names: Vec::new(),
                            synth,
                            deps,
                        },
                        None,
                    )
                }
                Stmt::Continue(c) => {
                    return Err(unsupported("`continue`", &src.origin, c.span().start_line));
                }
                Stmt::Break(c) => {
                    return Err(unsupported("`break`", &src.origin, c.span().start_line));
                }
                Stmt::Template(_) => continue,
            };
            op_deps(&op, &mut deps);
            // Only values and anchored (balanced) fragments may sit inside
            // an element made a fragment of its own.
            if !(matches!(op, Op::Leaf { .. })
                || anchor_name.is_some()
                || in_tag_and_balanced(&op, stmt_ctx))
            {
                elems.clear();
            }
            if op.has_slot() {
                push_slot(&mut parts, &mut anchors, anchor_name.map(Into::into));
                counters.push(slot_counter);
                part_ctx = ctx;
            }
            ops.push(op);
        }
        self.scope.truncate(scope_mark);
        let statics = self.statics_with(
            parts.into_iter().map(Into::into).collect(),
            anchors,
            counters,
        );
        Ok((Body { statics, ops, deps }, ctx, depth))
    }

    /// Makes the element `e`, which just ended at the end of the last part,
    /// an anchored sub-body in its body's place. `false` (and nothing
    /// changes) when the element holds something other than slots.
    fn close_element(
        &mut self,
        e: ElemOpen,
        parts: &mut Vec<String>,
        anchors: &mut Vec<Option<Arc<str>>>,
        counters: &mut Vec<u8>,
        ops: &mut Vec<Op>,
    ) -> bool {
        if e.part + 1 >= parts.len() || ops[e.op..].iter().any(|o| !o.has_slot()) {
            return false;
        }
        let mut inner: Vec<String> = parts.split_off(e.part + 1);
        inner.insert(0, parts[e.part].split_off(e.off));
        let inner_anchors = anchors.split_off(e.slot);
        let inner_counters = counters.split_off(e.slot);
        let inner_ops = ops.split_off(e.op);
        debug_assert_eq!(inner.len(), inner_anchors.len() + 1);
        let mut inner_deps = Deps::default();
        for op in &inner_ops {
            op_deps(op, &mut inner_deps);
        }
        let body = Body {
            statics: self.statics_with(
                inner.into_iter().map(Into::into).collect(),
                inner_anchors,
                inner_counters,
            ),
            ops: inner_ops,
            deps: inner_deps,
        };
        let id = self.node_id().to_string();
        push_slot(parts, anchors, Some(id.into()));
        counters.push(0);
        ops.push(Op::Sub {
            with: Vec::new(),
            body,
        });
        true
    }

    fn block_body(
        &mut self,
        name: &str,
        chain: &[Arc<Src>],
        cx: &BodyCx<'_>,
        ctx: Ctx,
    ) -> Result<(Body, Ctx, i32)> {
        let src = chain[0].clone();
        let source = src.origin.source.clone();
        let ast = parse(&source, &src.origin.name, self.env.syntax().clone())
            .map_err(Error::from_template)?;
        let Some(block) = find_block(&ast, name) else {
            return Err(Error::new(
                ErrorKind::Template,
                format!("block {name} not found in {}", src.origin.name),
            ));
        };
        let inner = BodyCx {
            src: &src,
            in_item: cx.in_item,
            block: Some((name, &chain[1..])),
            overrides: cx.overrides,
        };
        self.body(&block.body, &inner, ctx)
    }

    /// A statement rendered whole by minijinja, as one leaf (noted for the
    /// template's log line).
    fn opaque(
        &mut self,
        what: &str,
        stmt: &Stmt<'_>,
        src: &Arc<Src>,
        anchorable: bool,
    ) -> Result<(Op, Option<String>)> {
        let span = stmt_span(stmt);
        self.notes
            .push(format!("{what} at {}:{}", src.origin.name, span.start_line));
        let piece = format!("{{% {} %}}", slice(&src.origin.source, span));
        let vars = self.vars_of(&piece)?;
        let deps = self.classify(&vars, src);
        let synth = self.synth_for(src, piece, &vars, span.start_line);
        Ok((
            Op::Leaf { synth, deps },
            anchorable.then(|| self.node_id().to_string()),
        ))
    }

    /// A synthetic template that evaluates `expr` into `__st_v`.
    fn value_synth(&mut self, src: &Src, expr: &str, line: u16) -> Result<(Synth, Deps)> {
        let piece = format!("{{% set __st_v = ({expr}) %}}");
        let vars = self.vars_of(&piece)?;
        let d = self.classify(&vars, src);
        Ok((self.synth_for(src, piece, &vars, line), d))
    }

    /// `{{ loop(x) }}` right inside the recursive loop being compiled.
    fn recurse(&mut self, e: &ast::Spanned<ast::EmitExpr<'_>>, src: &Src) -> Result<Option<Op>> {
        let Expr::Call(c) = &e.expr else {
            return Ok(None);
        };
        let (Expr::Var(v), [CallArg::Pos(_)]) = (&c.expr, c.args.as_slice()) else {
            return Ok(None);
        };
        let Some((at, target)) = self.recursion.last() else {
            return Ok(None);
        };
        let here = self.scope.iter().rposition(|(n, _)| n == "loop");
        if v.id != "loop" || here != Some(*at) {
            return Ok(None);
        }
        let target = target.clone();
        let source = src.origin.source.clone();
        let arg = src
            .tokens
            .emit_expr(&source, e.span().start_offset)
            .and_then(|t| t.strip_prefix("loop"))
            .and_then(|t| t.trim_start().strip_prefix('('))
            .and_then(|t| t.strip_suffix(')'));
        let Some(arg) = arg else {
            return Ok(None);
        };
        let (arg, deps) = self.value_synth(src, arg, e.span().start_line)?;
        self.recursions += 1;
        Ok(Some(Op::Recurse { arg, deps, target }))
    }

    /// A recursive loop, split like any loop, its `{{ loop(x) }}` calls
    /// as [`Op::Recurse`]; `None` if the body uses `loop(…)` in another way
    /// (the loop is then one leaf).
    fn rec_loop(
        &mut self,
        f: &ast::Spanned<ast::ForLoop<'_>>,
        stmt: &Stmt<'_>,
        cx: &BodyCx<'_>,
        ctx: Ctx,
        anchorable: bool,
    ) -> Result<Option<Arc<RecLoop>>> {
        let src = cx.src;
        let source = src.origin.source.clone();
        let line = f.span().start_line;
        let id = self.node_id();
        let (target, unpack) = match &f.target {
            Expr::Var(v) => (vec![Box::<str>::from(v.id)], false),
            t => match target_names(t) {
                Some(t) => (t, true),
                None => return Ok(None),
            },
        };
        let key = match &f.iter {
            Expr::Filter(fl) if fl.name == "keyed" => match fl.args.as_slice() {
                [CallArg::Pos(e)] => const_str(e).map(Into::into),
                _ => None,
            },
            _ => None,
        };
        super::stream::not_recursive(&f.iter, &src.origin, line)?;
        let Some((iter_piece, filter_piece)) =
            for_texts(&source, &src.tokens, f.span().start_offset)
        else {
            return Ok(None);
        };
        let (iter, iter_deps) = self.value_synth(src, iter_piece, line)?;
        let item_path: Box<str> = format!("\u{1}item{id}").into();
        let meta_path: Box<str> = format!("\u{1}loop{id}").into();
        let path = |p: &str| Deps {
            roots: vec![p.into()],
            ..Deps::default()
        };
        let mark = self.scope.len();
        for t in &target {
            self.scope
                .push((t.to_string(), Local::Set(path(&item_path))));
        }
        self.scope
            .push(("loop".into(), Local::Set(path(&meta_path))));
        let filter = match filter_piece {
            Some(piece) => Some(self.value_synth(src, piece, line)?),
            None => None,
        };
        let handle = Arc::new(OnceLock::new());
        self.recursion.push((self.scope.len() - 1, handle.clone()));
        let before = self.recursions;
        let item_cx = BodyCx {
            src,
            in_item: true,
            block: cx.block,
            overrides: cx.overrides,
        };
        let body = self.body(&f.body, &item_cx, ctx);
        self.recursion.pop();
        self.scope.truncate(mark);
        let (body, c1, d1) = body?;
        let (else_body, c2, d2) = self.body(&f.else_body, &item_cx, ctx)?;
        // Every `loop(` of the statement must be one we compiled.
        let calls = stmt_tokens(&src.tokens, stmt).map_or(usize::MAX, |t| {
            t.windows(2)
                .filter(|w| matches!(&w[0].0, Tok::Ident(i) if i == "loop") && w[1].0 == Tok::Open)
                .count()
        });
        if calls != self.recursions - before {
            return Ok(None);
        }
        let balanced = c1 == ctx && c2 == ctx && d1 == 0 && d2 == 0;
        let mut body_deps = Deps::default();
        body_deps.merge(&body.deps);
        body_deps.merge(&else_body.deps);
        let filter = filter.map(|(s, d)| {
            body_deps.merge(&d);
            s
        });
        // A `loop(…)` renders the body again: it, and every body on the way
        // to it, reads what the body reads outside the loop.
        let outside = Deps {
            all: body_deps.all,
            roots: body_deps
                .roots
                .iter()
                .filter(|r| **r != item_path && **r != meta_path)
                .cloned()
                .collect(),
            loops: Vec::new(),
        };
        let mut body = body;
        widen_recursion(&mut body, &outside);
        let r = Arc::new(RecLoop {
            node: ForNode {
                target,
                unpack,
                iter,
                iter_deps,
                filter,
                key,
                body,
                else_body,
                body_deps,
                loop_flags: 0,
                anchor: (anchorable && balanced).then(|| id.to_string().into()),
                plain_path: None,
                stream: None,
            },
            item_path,
            meta_path,
        });
        handle
            .set(Arc::downgrade(&r))
            .expect("a loop's handle is set once");
        Ok(Some(r))
    }

    fn for_loop(
        &mut self,
        f: &ast::Spanned<ast::ForLoop<'_>>,
        cx: &BodyCx<'_>,
        ctx: Ctx,
        anchorable: bool,
    ) -> Result<ForNode> {
        let src = cx.src;
        let source = src.origin.source.clone();
        let id = self.node_id();
        let (target, unpack) = match &f.target {
            Expr::Var(v) => (vec![Box::<str>::from(v.id)], false),
            t => (
                target_names(t).ok_or_else(|| {
                    unsupported("this loop target", &src.origin, f.span().start_line)
                })?,
                true,
            ),
        };
        let key = match &f.iter {
            Expr::Filter(fl) if fl.name == "keyed" => match fl.args.as_slice() {
                [CallArg::Pos(e)] => const_str(e).map(Into::into),
                _ => None,
            },
            _ => None,
        };
        let (iter_piece, filter_piece) = for_texts(&source, &src.tokens, f.span().start_offset)
            .ok_or_else(|| unsupported("this loop", &src.origin, f.span().start_line))?;
        let (iter, iter_deps) = self.value_synth(src, iter_piece, f.span().start_line)?;
        let plain_path = self
            .plain_path(&f.iter)
            .filter(|p| {
                !iter_deps.all
                    && iter_deps.loops.is_empty()
                    && iter_deps.roots.len() == 1
                    && *iter_deps.roots[0] == **p
            })
            .map(Into::into);
        let mark = self.scope.len();
        for t in &target {
            self.scope.push((t.to_string(), Local::LoopVar));
        }
        self.scope.push(("loop".into(), Local::LoopObj(id)));
        let filter = match filter_piece {
            Some(piece) => Some(self.value_synth(src, piece, f.span().start_line)?),
            None => None,
        };
        let item_cx = BodyCx {
            src,
            in_item: true,
            block: cx.block,
            overrides: cx.overrides,
        };
        let body = self.body(&f.body, &item_cx, ctx);
        self.scope.truncate(mark);
        let (body, c1, d1) = body?;
        let (else_body, c2, d2) = self.body(&f.else_body, &item_cx, ctx)?;
        let balanced = c1 == ctx && c2 == ctx && d1 == 0 && d2 == 0;
        let mut body_deps = Deps::default();
        body_deps.merge(&body.deps);
        body_deps.merge(&else_body.deps);
        let loop_flags = body_deps.loop_flags(id);
        let filter = filter.map(|(s, d)| {
            body_deps.merge(&d);
            s
        });
        let mut node = ForNode {
            target,
            unpack,
            iter,
            iter_deps,
            filter,
            key,
            body,
            else_body,
            body_deps,
            loop_flags,
            anchor: (anchorable && balanced).then(|| id.to_string().into()),
            plain_path,
            stream: None,
        };
        super::stream::mark(f, &mut node, &src.origin, f.span().start_line)?;
        Ok(node)
    }

    /// The dotted data path an expression names, when it is one: a root
    /// variable (not a local) and attribute steps, through `keyed`.
    fn plain_path(&self, e: &Expr<'_>) -> Option<String> {
        match e {
            Expr::Var(v) if !self.scope.iter().any(|(n, _)| n == v.id) => Some(v.id.to_owned()),
            Expr::GetAttr(g) => Some(format!("{}.{}", self.plain_path(&g.expr)?, g.name)),
            Expr::Filter(fl) if fl.name == "keyed" => self.plain_path(fl.expr.as_ref()?),
            _ => None,
        }
    }
}

/// The tokens of a statement, its tags included (`None`: not found).
fn stmt_tokens<'t>(tokens: &'t Tokens, stmt: &Stmt<'_>) -> Option<&'t [(Tok, u32, u32)]> {
    let span = stmt_span(stmt);
    let t = &tokens.0;
    match stmt {
        Stmt::EmitRaw(_) => Some(&[]),
        Stmt::EmitExpr(_) => {
            let i = tokens.opening(&Tok::VarStart, span.start_offset)?;
            let n = t[i..].iter().position(|(k, _, _)| *k == Tok::VarEnd)?;
            Some(&t[i..=i + n])
        }
        _ => {
            let i = tokens.opening(&Tok::BlockStart, span.start_offset)?;
            let n = t[i..]
                .iter()
                .position(|(k, s, _)| *k == Tok::BlockEnd && *s >= span.end_offset)?;
            Some(&t[i..=i + n])
        }
    }
}

fn names_namespace(toks: &[(Tok, u32, u32)]) -> bool {
    toks.iter()
        .any(|(t, _, _)| matches!(t, Tok::Ident(i) if i == "namespace"))
}

/// Whether `stmt` may read one of `names`: its text names one, or it runs
/// code whose text is elsewhere (an include, a block, `super()`, a macro of
/// the prelude that reads one of them). Errs on the side of yes.
fn mentions(src: &Src, stmt: &Stmt<'_>, names: &HashSet<String>) -> bool {
    if matches!(stmt, Stmt::Include(_) | Stmt::Block(_)) {
        return true;
    }
    let Some(toks) = stmt_tokens(&src.tokens, stmt) else {
        return true;
    };
    let prelude_reads = src.prelude_vars.iter().any(|v| names.contains(head(v)));
    toks.iter().any(|(t, _, _)| match t {
        Tok::Ident(i) => {
            names.contains(i)
                || i == "super"
                || i == "self"
                || (prelude_reads && src.prelude_names.contains(i))
        }
        _ => false,
    })
}

/// Where the region that statement `at` opens ends, if it opens one: a
/// `set` that binds a `namespace()` opens a region up to the last statement
/// of the same body that may read it (or any name the region's own `set`s
/// bind, since those go out of scope with the region); a `with` or `for`
/// whose header makes a namespace is a region by itself. Mutations of a
/// namespace (`set ns.attr`, a macro it is passed to) are thus always
/// inside the region that made it, and re-run with it.
fn region_end(src: &Src, stmts: &[Stmt<'_>], at: usize) -> Option<usize> {
    let stmt = &stmts[at];
    let mut names: HashSet<String> = HashSet::new();
    match stmt {
        Stmt::Set(s) => {
            if !names_namespace(stmt_tokens(&src.tokens, stmt)?) {
                return None;
            }
            names.extend(target_names(&s.target)?.iter().map(|n| n.to_string()));
        }
        Stmt::WithBlock(_) | Stmt::ForLoop(_) => {
            let head = src.tokens.block(stmt_span(stmt).start_offset)?;
            return names_namespace(head).then_some(at);
        }
        _ => return None,
    }
    let mut end = at;
    loop {
        let last = (at + 1..stmts.len())
            .rev()
            .find(|&j| mentions(src, &stmts[j], &names))
            .unwrap_or(at)
            .max(end);
        let before = names.len();
        for s in &stmts[at + 1..=last] {
            let target = match s {
                Stmt::Set(x) => &x.target,
                Stmt::SetBlock(x) => &x.target,
                _ => continue,
            };
            if let Some(t) = target_names(target) {
                names.extend(t.iter().map(|n| n.to_string()));
            }
        }
        if last == end && names.len() == before {
            return Some(end);
        }
        end = last;
    }
}

/// Whether a loop body has a `break` or `continue` that acts on it.
fn loop_control(stmts: &[Stmt<'_>]) -> bool {
    stmts.iter().any(|s| match s {
        Stmt::Break(_) | Stmt::Continue(_) => true,
        // A nested loop's body is its own; its `else` is not (erring on yes).
        Stmt::ForLoop(f) => loop_control(&f.else_body),
        Stmt::Macro(_) | Stmt::CallBlock(_) => false,
        _ => children(s).iter().any(|c| loop_control(c)),
    })
}

/// Adds `extra` to every `loop(…)` of a recursive loop's body and to the
/// bodies that hold one (not into nested recursive loops: theirs is
/// theirs). Returns whether `body` holds one.
fn widen_recursion(body: &mut Body, extra: &Deps) -> bool {
    let mut found = false;
    for op in &mut body.ops {
        found |= match op {
            Op::Recurse { deps, .. } => {
                deps.merge(extra);
                true
            }
            Op::If { branches, .. } => branches
                .iter_mut()
                .fold(false, |f, b| widen_recursion(b, extra) | f),
            Op::Sub { body, .. } | Op::Region { body } => widen_recursion(body, extra),
            Op::For(f) => {
                let found = widen_recursion(&mut f.body, extra);
                if found {
                    f.body_deps.merge(extra);
                }
                found
            }
            Op::Leaf { .. } | Op::Set { .. } | Op::Recursive(_) => false,
        };
    }
    if found {
        body.deps.merge(extra);
    }
    found
}

/// An element with a dynamic attribute, from its `<` on, not yet ended.
struct ElemOpen {
    /// Where its `<` is: the part and the byte in it.
    part: usize,
    off: usize,
    /// The first slot and op inside it.
    slot: usize,
    op: usize,
    /// The nesting depth it ends at.
    depth: i32,
}

/// An `if` inside a tag (`{% if on %} checked{% endif %}`) whose branches
/// are text and values only and leave the tag as they found it.
fn in_tag_and_balanced(op: &Op, ctx: Ctx) -> bool {
    let Op::If { branches, .. } = op else {
        return false;
    };
    matches!(ctx, Ctx::Tag { .. } | Ctx::Attr { .. })
        && branches.iter().all(|b| {
            let mut depth = 0;
            b.ops.iter().all(|o| matches!(o, Op::Leaf { .. }))
                && super::html::scan(ctx, &b.statics.parts.concat(), &mut depth) == ctx
                && depth == 0
        })
}

/// Adds what `op` reads to `deps`.
fn op_deps(op: &Op, deps: &mut Deps) {
    match op {
        Op::Leaf { deps: d, .. } | Op::Set { deps: d, .. } => deps.merge(d),
        Op::Region { body } => deps.merge(&body.deps),
        Op::Recursive(r) => {
            deps.merge(&r.node.iter_deps);
            deps.merge(&r.node.body_deps);
        }
        Op::Recurse { deps: d, .. } => deps.merge(d),
        Op::If { conds, branches } => {
            for (_, d) in conds {
                deps.merge(d);
            }
            for b in branches {
                deps.merge(&b.deps);
            }
        }
        Op::For(f) => {
            deps.merge(&f.iter_deps);
            deps.merge(&f.body_deps);
        }
        Op::Sub { with, body } => {
            for (_, _, d) in with {
                deps.merge(d);
            }
            deps.merge(&body.deps);
        }
    }
}

/// Adds a slot to a body's statics, with its anchor markers if anchored.
fn push_slot(
    parts: &mut Vec<String>,
    anchors: &mut Vec<Option<Arc<str>>>,
    anchor: Option<Arc<str>>,
) {
    if let Some(a) = &anchor {
        parts
            .last_mut()
            .expect("parts")
            .push_str(&format!("<!--[{a}-->"));
    }
    parts.push(if anchor.is_some() {
        "<!--]-->".into()
    } else {
        String::new()
    });
    anchors.push(anchor);
}

fn head(path: &str) -> &str {
    path.split('.').next().unwrap_or(path)
}

fn slice(source: &str, span: minijinja::machinery::Span) -> String {
    source[span.start_offset as usize..span.end_offset as usize].to_owned()
}

fn const_str(e: &Expr<'_>) -> Option<String> {
    match e {
        Expr::Const(c) => c.value.as_str().map(str::to_owned),
        _ => None,
    }
}

fn is_super_call(e: &Expr<'_>) -> bool {
    matches!(e, Expr::Call(c) if c.args.is_empty() && matches!(&c.expr, Expr::Var(v) if v.id == "super"))
}

fn target_names(e: &Expr<'_>) -> Option<Vec<Box<str>>> {
    match e {
        Expr::Var(v) => Some(vec![v.id.into()]),
        Expr::List(l) => {
            let mut out = Vec::new();
            for i in &l.items {
                out.extend(target_names(i)?);
            }
            Some(out)
        }
        _ => None,
    }
}

fn stmt_span(s: &Stmt<'_>) -> minijinja::machinery::Span {
    match s {
        Stmt::Template(s) => s.span(),
        Stmt::EmitExpr(s) => s.span(),
        Stmt::EmitRaw(s) => s.span(),
        Stmt::ForLoop(s) => s.span(),
        Stmt::IfCond(s) => s.span(),
        Stmt::WithBlock(s) => s.span(),
        Stmt::Set(s) => s.span(),
        Stmt::SetBlock(s) => s.span(),
        Stmt::AutoEscape(s) => s.span(),
        Stmt::FilterBlock(s) => s.span(),
        Stmt::Block(s) => s.span(),
        Stmt::Import(s) => s.span(),
        Stmt::FromImport(s) => s.span(),
        Stmt::Extends(s) => s.span(),
        Stmt::Include(s) => s.span(),
        Stmt::Macro(s) => s.span(),
        Stmt::CallBlock(s) => s.span(),
        Stmt::Continue(s) => s.span(),
        Stmt::Break(s) => s.span(),
        Stmt::Do(s) => s.span(),
    }
}

fn children<'a, 'b>(s: &'b Stmt<'a>) -> Vec<&'b [Stmt<'a>]> {
    match s {
        Stmt::Template(t) => vec![&t.children],
        Stmt::ForLoop(f) => vec![&f.body, &f.else_body],
        Stmt::IfCond(i) => vec![&i.true_body, &i.false_body],
        Stmt::WithBlock(w) => vec![&w.body],
        Stmt::SetBlock(b) => vec![&b.body],
        Stmt::AutoEscape(b) => vec![&b.body],
        Stmt::FilterBlock(b) => vec![&b.body],
        Stmt::Block(b) => vec![&b.body],
        _ => vec![],
    }
}

/// Macros and imports of a template, verbatim, in source order: prepended
/// to the synthetic templates that call them.
fn collect_prelude(s: &Stmt<'_>, source: &str, out: &mut String, names: &mut HashSet<String>) {
    match s {
        Stmt::Macro(m) => {
            out.push_str(&format!("{{% {} %}}", slice(source, m.span())));
            names.insert(m.name.to_owned());
        }
        Stmt::Import(i) => {
            out.push_str(&format!("{{% {} %}}", slice(source, i.span())));
            if let Expr::Var(v) = &i.name {
                names.insert(v.id.to_owned());
            }
        }
        Stmt::FromImport(i) => {
            out.push_str(&format!("{{% {} %}}", slice(source, i.span())));
            for (n, alias) in &i.names {
                if let Expr::Var(v) = alias.as_ref().unwrap_or(n) {
                    names.insert(v.id.to_owned());
                }
            }
        }
        _ => {
            for c in children(s) {
                for s in c {
                    collect_prelude(s, source, out, names);
                }
            }
        }
    }
}

/// Undeclared variables of imported templates: what their macros may read.
fn collect_import_vars(
    s: &Stmt<'_>,
    env: &Environment<'static>,
    out: &mut HashSet<String>,
    sources: &mut Vec<(Arc<str>, u64)>,
) {
    let name = match s {
        Stmt::Import(i) => const_str(&i.expr),
        Stmt::FromImport(i) => const_str(&i.expr),
        _ => {
            for c in children(s) {
                for s in c {
                    collect_import_vars(s, env, out, sources);
                }
            }
            return;
        }
    };
    let Some(n) = name else { return };
    if let Ok(t) = env.get_template(&n) {
        if !sources.iter().any(|(s, _)| **s == *n) {
            sources.push((n.as_str().into(), source_hash(t.source())));
        }
        out.extend(t.undeclared_variables(true));
    }
}

fn collect_blocks<'a>(stmts: &[Stmt<'a>], out: &mut Vec<&'a str>) {
    for s in stmts {
        if let Stmt::Block(b) = s {
            out.push(b.name);
        }
        for c in children(s) {
            collect_blocks(c, out);
        }
    }
}

fn find_block<'a, 'b>(s: &'b Stmt<'a>, name: &str) -> Option<&'b ast::Block<'a>> {
    if let Stmt::Block(b) = s {
        if b.name == name {
            return Some(b);
        }
    }
    children(s)
        .into_iter()
        .flat_map(|c| c.iter())
        .find_map(|s| find_block(s, name))
}

#[cfg(test)]
mod tests {
    use super::overlaps;

    #[test]
    fn path_overlap() {
        assert!(overlaps("user", "user.name"));
        assert!(overlaps("user.name", "user"));
        assert!(overlaps("a.b", "a.b"));
        assert!(!overlaps("user", "username"));
        assert!(!overlaps("a.b", "a.c"));
    }
}
