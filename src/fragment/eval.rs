//! Running synthetic templates against a scope: the root data plus the
//! locals (loop variables, `set`s) our walk has bound.

use std::fmt;
use std::sync::Arc;

use minijinja::value::{Enumerator, Object, Value};
use minijinja::{Environment, State, machinery};

use super::compile::Synth;
use crate::error::{Error, Result};

struct Frame {
    name: Box<str>,
    value: Value,
    parent: Option<Arc<Frame>>,
}

/// Root data plus a chain of local bindings; cheap to clone and extend.
#[derive(Clone)]
pub(crate) struct Scope {
    locals: Option<Arc<Frame>>,
    root: Value,
}

impl Scope {
    pub(crate) fn new(root: Value) -> Scope {
        Scope { locals: None, root }
    }

    pub(crate) fn bind(&self, name: &str, value: Value) -> Scope {
        Scope {
            locals: Some(Arc::new(Frame {
                name: name.into(),
                value,
                parent: self.locals.clone(),
            })),
            root: self.root.clone(),
        }
    }

    pub(crate) fn lookup(&self, key: &str) -> Option<Value> {
        let mut f = self.locals.as_deref();
        while let Some(frame) = f {
            if &*frame.name == key {
                return Some(frame.value.clone());
            }
            f = frame.parent.as_deref();
        }
        match self.root.get_attr(key) {
            Ok(v) if !v.is_undefined() => Some(v),
            _ => None,
        }
    }

    fn value(&self) -> Value {
        Value::from_object(ScopeObj(self.clone()))
    }
}

struct ScopeObj(Scope);

impl fmt::Debug for ScopeObj {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<scope>")
    }
}

impl Object for ScopeObj {
    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        self.0.lookup(key.as_str()?)
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        // Enumerating the context (rare: `debug()`) shows the root data.
        match self.0.root.try_iter() {
            Ok(it) => Enumerator::Values(it.collect()),
            Err(_) => Enumerator::Empty,
        }
    }
}

/// The `loop` variable, as minijinja's loops provide it.
#[derive(Debug)]
pub(crate) struct LoopObj {
    pub index0: usize,
    /// `None` when the iterator's size is not known up front.
    pub len: Option<usize>,
    pub prev: Option<Value>,
    pub next: Option<Value>,
}

impl Object for LoopObj {
    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        let i = self.index0;
        Some(match key.as_str()? {
            "index0" => Value::from(i),
            "index" => Value::from(i + 1),
            "revindex" => self.len.map_or(Value::UNDEFINED, |n| Value::from(n - i)),
            "revindex0" => self
                .len
                .map_or(Value::UNDEFINED, |n| Value::from(n - i - 1)),
            "first" => Value::from(i == 0),
            "last" => Value::from(self.len == Some(i + 1)),
            "length" => self.len.map_or(Value::UNDEFINED, Value::from),
            "depth" => Value::from(1),
            "depth0" => Value::from(0),
            "previtem" => self.prev.clone().unwrap_or(Value::UNDEFINED),
            "nextitem" => self.next.clone().unwrap_or(Value::UNDEFINED),
            _ => return None,
        })
    }

    fn call_method(
        self: &Arc<Self>,
        _state: &mut State<'_, '_>,
        method: &str,
        args: &[Value],
    ) -> Result<Value, minijinja::Error> {
        if method == "cycle" && !args.is_empty() {
            return Ok(args[self.index0 % args.len()].clone());
        }
        Err(minijinja::Error::from(minijinja::ErrorKind::UnknownMethod))
    }
}

/// The `loop` variable of a recursive loop: a [`LoopObj`] at a depth.
#[derive(Debug)]
pub(crate) struct DeepLoop {
    pub inner: Arc<LoopObj>,
    /// 1 at the top level.
    pub depth: usize,
}

impl Object for DeepLoop {
    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        match key.as_str()? {
            "depth" => Some(Value::from(self.depth)),
            "depth0" => Some(Value::from(self.depth - 1)),
            _ => self.inner.get_value(key),
        }
    }

    fn call_method(
        self: &Arc<Self>,
        state: &mut State<'_, '_>,
        method: &str,
        args: &[Value],
    ) -> Result<Value, minijinja::Error> {
        self.inner.call_method(state, method, args)
    }
}

fn locate(err: minijinja::Error, synth: &Synth) -> Error {
    let line = synth.line as usize;
    Error::located(err, &synth.origin.name, &synth.origin.source, line)
}

/// Runs a synthetic template with the escaping of the user's template it
/// came from (not the one the environment's callback would give its
/// synthetic name); `out` receives what it prints.
fn run<'env, R>(
    env: &'env Environment<'env>,
    synth: &Synth,
    scope: &Scope,
    out: &mut String,
    then: impl FnOnce(&State<'_, 'env>) -> R,
) -> Result<R> {
    let t = env
        .get_template(&synth.name)
        .map_err(|e| locate(e, synth))?;
    let c = machinery::get_compiled_template(&t);
    out.reserve(c.buffer_size_hint);
    let mut output = machinery::make_string_output(out);
    let (_, state) = machinery::eval(
        env,
        &c.instructions,
        scope.value(),
        &c.blocks,
        &mut output,
        synth.escape.clone(),
    )
    .map_err(|e| locate(e, synth))?;
    Ok(then(&state))
}

/// Formats the leaves that print a variable path (`{{ count }}`,
/// `{{ r.name }}`, [`Synth::path`]) without running their piece: the path
/// is looked up as minijinja's `Lookup` and `GetAttr` would, and the value
/// goes through [`State::format`], which is what the piece's `Emit` does
/// (the environment's formatter, undefined behaviour and the leaf's
/// escaping). Anything else (a name that is not in the scope, so maybe a
/// global; an undefined step; an invalid value) runs the piece as before.
/// One state per escaping serves a whole walk: the states of the pieces
/// (building one is most of a piece's cost) are not made.
pub(crate) struct Formats<'a> {
    env: &'a Environment<'static>,
    states: Vec<State<'a, 'a>>,
}

/// The empty program the formatting states run.
static BLANK: std::sync::LazyLock<(
    machinery::Instructions<'static>,
    std::collections::BTreeMap<&'static str, machinery::Instructions<'static>>,
)> = std::sync::LazyLock::new(|| {
    (
        machinery::Instructions::new("", ""),
        std::collections::BTreeMap::new(),
    )
});

impl<'a> Formats<'a> {
    pub(crate) fn new(env: &'a Environment<'static>) -> Formats<'a> {
        Formats {
            env,
            states: Vec::new(),
        }
    }

    /// The leaf's text, or `None` when it must run as a piece.
    pub(crate) fn leaf(&mut self, synth: &Synth, scope: &Scope) -> Option<Result<String>> {
        let path = synth.path.as_deref()?;
        let (head, rest) = path.split_first()?;
        let mut v = scope.lookup(head)?;
        for attr in rest {
            if v.is_undefined() {
                return None;
            }
            v = v.get_attr(attr).ok()?;
        }
        if v.is_undefined() || v.kind() == minijinja::value::ValueKind::Invalid {
            return None;
        }
        let state = match self
            .states
            .iter()
            .position(|s| *s.auto_escape() == synth.escape)
        {
            Some(i) => &mut self.states[i],
            None => {
                let env: &'a Environment<'a> = self.env;
                let (code, blocks) = &*BLANK;
                let mut out = String::new();
                let mut output = machinery::make_string_output(&mut out);
                let (_, state) = machinery::eval(
                    env,
                    code,
                    Value::UNDEFINED,
                    blocks,
                    &mut output,
                    synth.escape.clone(),
                )
                .ok()?;
                self.states.push(state);
                self.states.last_mut()?
            }
        };
        Some(state.format(v).map_err(|e| locate(e, synth)))
    }
}

/// Renders a leaf to its output text.
pub(crate) fn render_leaf(
    env: &Environment<'static>,
    synth: &Synth,
    scope: &Scope,
) -> Result<String> {
    let mut out = String::new();
    run(env, synth, scope, &mut out, |_| ())?;
    Ok(out)
}

/// Runs a statement or `__st_v` assignment and reads back the named values.
pub(crate) fn eval_names(
    env: &Environment<'static>,
    synth: &Synth,
    scope: &Scope,
    names: &[&str],
) -> Result<Vec<Value>> {
    let mut out = String::new();
    run(env, synth, scope, &mut out, |state| {
        names
            .iter()
            .map(|n| state.lookup(n).unwrap_or(Value::UNDEFINED))
            .collect()
    })
}

pub(crate) fn eval_value(
    env: &Environment<'static>,
    synth: &Synth,
    scope: &Scope,
) -> Result<Value> {
    Ok(eval_names(env, synth, scope, &["__st_v"])?.remove(0))
}
