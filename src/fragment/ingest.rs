//! From the app's data to minijinja values in one pass that compares with
//! the previous snapshot while it serializes.
//!
//! What did not change is not converted again: the old value is returned
//! (the same reference-counted object), so the walk can tell unchanged list
//! items by identity instead of comparing them. What changed is recorded as
//! a [`Delta`]. The values built are those minijinja's own serializer builds
//! (structs are a [`Fields`] object that behaves as minijinja's struct map;
//! maps, tuples and embedded `Value`s are built by minijinja itself), so a
//! template renders exactly as it would from `Value::from_serialize`.

use std::cell::RefCell;
use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;

use minijinja::value::{Enumerator, Object, Serde, Value, ValueKind};
use serde::ser::{self, Serialize, Serializer};

use super::chunked::Seq;
use super::delta::{Delta, DeltaOp};
use super::diff;
use crate::error::{Error, Result};

/// A struct's fields, as minijinja's serializer keeps them.
pub(crate) struct Fields(pub(crate) Vec<(&'static str, Value)>);

impl fmt::Debug for Fields {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|(k, v)| (k, v)))
            .finish()
    }
}

impl Object for Fields {
    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        self.get_value_by_str(key.as_str()?)
    }

    fn get_value_by_str(self: &Arc<Self>, key: &str) -> Option<Value> {
        self.0
            .iter()
            .find_map(|(k, v)| (*k == key).then(|| v.clone()))
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        Enumerator::Values(self.0.iter().map(|(k, _)| Value::from(*k)).collect())
    }

    fn enumerator_len(self: &Arc<Self>) -> Option<usize> {
        Some(self.0.len())
    }
}

/// Whether `a` and `b` are the same object (or equal plain values): the
/// cheap test the list walk uses to reuse an item. `false` may be wrong
/// (equal but not shared); `true` never is.
pub(crate) fn identical(a: &Value, b: &Value) -> bool {
    if let (Some(x), Some(y)) = (
        a.downcast_object_ref::<Fields>(),
        b.downcast_object_ref::<Fields>(),
    ) {
        return std::ptr::eq(x, y);
    }
    if let (Some(x), Some(y)) = (
        a.downcast_object_ref::<Vec<Value>>(),
        b.downcast_object_ref::<Vec<Value>>(),
    ) {
        return std::ptr::eq(x, y);
    }
    if let (Some(x), Some(y)) = (
        a.downcast_object_ref::<Seq>(),
        b.downcast_object_ref::<Seq>(),
    ) {
        return std::ptr::eq(x, y);
    }
    type Map = std::collections::BTreeMap<Value, Value>;
    if let (Some(x), Some(y)) = (
        a.downcast_object_ref::<Map>(),
        b.downcast_object_ref::<Map>(),
    ) {
        return std::ptr::eq(x, y);
    }
    match a.kind() {
        ValueKind::Map | ValueKind::Seq | ValueKind::Iterable | ValueKind::Plain => false,
        _ => diff::same(a, b),
    }
}

/// What one pass over new data gave.
pub(crate) struct Ingested {
    /// The new snapshot, sharing every unchanged part with the old one.
    pub value: Value,
    /// What changed, from the old snapshot to the new one.
    pub delta: Delta,
}

/// Serializes `new`, comparing with `old` (none for a first render).
pub(crate) fn ingest<T: Serialize + ?Sized>(old: Option<&Value>, new: &T) -> Result<Ingested> {
    // Run inside minijinja's own conversion so that `Value`s embedded in the
    // data serialize as handles that minijinja can turn back into themselves.
    struct Outer<'a, T: ?Sized> {
        old: Option<&'a Value>,
        new: &'a T,
        out: RefCell<Option<std::result::Result<Ingested, String>>>,
    }
    impl<T: Serialize + ?Sized> Serialize for Outer<'_, T> {
        fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
            let mut cx = Cx::default();
            let old = match self.old {
                Some(v) => Old::Cmp(v),
                None => Old::Fresh,
            };
            let r = match self.new.serialize(B {
                old,
                cx: &mut cx,
                seg: None,
            }) {
                Ok(None) => Ok(Ingested {
                    value: self.old.cloned().unwrap_or_default(),
                    delta: Delta::default(),
                }),
                Ok(Some(value)) => {
                    if matches!(old, Old::Cmp(_)) && cx.ops.is_empty() {
                        // A container that changed kind records itself.
                        cx.ops.push(DeltaOp::Set {
                            path: Vec::new(),
                            value: value.clone(),
                        });
                    }
                    Ok(Ingested {
                        value,
                        delta: Delta::from_ops(cx.ops),
                    })
                }
                Err(Fail::Custom(m)) => Err(m),
                Err(Fail::Differs) => Err("internal: comparison escaped".into()),
            };
            *self.out.borrow_mut() = Some(r);
            s.serialize_unit()
        }
    }
    let outer = Outer {
        old,
        new,
        out: RefCell::new(None),
    };
    let _ = Value::from(Serde(&outer));
    match outer.out.into_inner() {
        Some(Ok(i)) => Ok(i),
        Some(Err(m)) => Err(Error::data(m)),
        None => Err(Error::data("the data was not serialized")),
    }
}

const HANDLE: &str = "\x01__minijinja_ValueHandle";

#[derive(Debug)]
enum Fail {
    /// A dry comparison found a difference (never escapes a dry run).
    Differs,
    Custom(String),
}

impl fmt::Display for Fail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fail::Differs => f.write_str("values differ"),
            Fail::Custom(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for Fail {}

impl ser::Error for Fail {
    fn custom<T: fmt::Display>(msg: T) -> Fail {
        Fail::Custom(msg.to_string())
    }
}

type R<T> = std::result::Result<T, Fail>;

/// What the new value is compared with.
#[derive(Clone, Copy)]
enum Old<'a> {
    /// Nothing: build, record nothing (an ancestor records the whole).
    Fresh,
    /// The previous value here: reuse it if equal, record what differs.
    Cmp(&'a Value),
    /// Dry run: fail with `Differs` at the first difference, record and
    /// build nothing new (the old value is returned when equal).
    Dry(&'a Value),
}

#[derive(Clone, Copy)]
enum Seg {
    Field(&'static str),
    Index(usize),
}

/// The recording side of a pass: where we are and what changed.
#[derive(Default)]
struct Cx {
    path: Vec<PathSeg>,
    ops: Vec<DeltaOp>,
}

enum PathSeg {
    Seg(Seg),
    Key(Value),
}

impl Cx {
    fn path(&self) -> Vec<Value> {
        self.path
            .iter()
            .map(|s| match s {
                PathSeg::Seg(Seg::Field(f)) => Value::from(*f),
                PathSeg::Seg(Seg::Index(i)) => Value::from(*i),
                PathSeg::Key(k) => k.clone(),
            })
            .collect()
    }

    /// Records a new value at the current path, plus `seg` (the place of a
    /// value that did not push its own step).
    fn set(&mut self, seg: Option<Seg>, value: &Value) {
        let mut path = self.path();
        match seg {
            Some(Seg::Field(f)) => path.push(Value::from(f)),
            Some(Seg::Index(i)) => path.push(Value::from(i)),
            None => {}
        }
        self.ops.push(DeltaOp::Set {
            path,
            value: value.clone(),
        });
    }
}

/// The serializer: `Ok` is the new value, or `None` when it is the old one
/// (no copy is made of what did not change).
struct B<'a, 'c> {
    old: Old<'a>,
    cx: &'c mut Cx,
    /// Where this value is in its parent. Plain values do not push it onto
    /// the path (most values are plain and unchanged); containers do.
    seg: Option<Seg>,
}

impl B<'_, '_> {
    /// A container about to compare its children: its own step goes onto
    /// the path. Returns whether it pushed.
    fn enter(&mut self) -> bool {
        match (self.old, self.seg) {
            (Old::Cmp(_), Some(seg)) => {
                self.cx.path.push(PathSeg::Seg(seg));
                true
            }
            _ => false,
        }
    }
}

type Out = Option<Value>;

impl B<'_, '_> {
    /// A plain value: reuse the old one when strictly equal.
    fn plain(self, v: Value) -> R<Out> {
        self.finish_plain(v, diff::same)
    }

    /// A plain value with a cheap equality test that does not build it.
    fn cheap(self, eq: impl Fn(&Value) -> bool, make: impl FnOnce() -> Value) -> R<Out> {
        match self.old {
            Old::Cmp(o) | Old::Dry(o) if eq(o) => Ok(None),
            Old::Dry(_) => Err(Fail::Differs),
            _ => self.finish_plain(make(), |_, _| false),
        }
    }

    fn finish_plain(self, v: Value, eq: impl FnOnce(&Value, &Value) -> bool) -> R<Out> {
        match self.old {
            Old::Fresh => Ok(Some(v)),
            Old::Cmp(o) => {
                if eq(o, &v) {
                    Ok(None)
                } else {
                    self.cx.set(self.seg, &v);
                    Ok(Some(v))
                }
            }
            Old::Dry(o) => {
                if eq(o, &v) {
                    Ok(None)
                } else {
                    Err(Fail::Differs)
                }
            }
        }
    }

    /// A value minijinja built for us (maps, tuples, handles, variants):
    /// compared whole with the old one.
    fn built(self, v: Value) -> R<Out> {
        if v.kind() == ValueKind::Invalid {
            return Err(Fail::Custom(v.to_string()));
        }
        self.plain(v)
    }

    fn fresh<T: Serialize + ?Sized>(v: &T) -> R<Value> {
        let mut cx = Cx::default();
        v.serialize(B {
            old: Old::Fresh,
            cx: &mut cx,
            seg: None,
        })?
        .ok_or_else(|| Fail::Custom("internal: nothing built".into()))
    }
}

/// Whether `o` is an integer equal to `v` (any of minijinja's integer
/// kinds: they render alike). The common case, a small non-negative
/// number, takes minijinja's inlined `as_usize`.
fn same_int(o: &Value, v: i128) -> bool {
    if !o.is_integer() {
        return false;
    }
    match usize::try_from(v) {
        Ok(u) => o.as_usize() == Some(u),
        Err(_) => i128::try_from(o.clone()).ok() == Some(v),
    }
}

/// Has minijinja build a value from values we already built.
struct Replay<'a>(ReplayKind<'a>);

enum ReplayKind<'a> {
    Map(&'a [(Value, Value)]),
    Tuple(&'a [Value]),
    Handle(u32),
}

impl Serialize for Replay<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use ser::{SerializeMap, SerializeTuple, SerializeTupleStruct};
        match &self.0 {
            ReplayKind::Map(pairs) => {
                let mut m = s.serialize_map(Some(pairs.len()))?;
                for (k, v) in pairs.iter() {
                    m.serialize_entry(k, v)?;
                }
                m.end()
            }
            ReplayKind::Tuple(items) => {
                let mut t = s.serialize_tuple(items.len())?;
                for v in items.iter() {
                    t.serialize_element(v)?;
                }
                t.end()
            }
            ReplayKind::Handle(h) => {
                let mut t = s.serialize_tuple_struct(HANDLE, 1)?;
                t.serialize_field(h)?;
                t.end()
            }
        }
    }
}

fn replay(r: ReplayKind<'_>) -> Value {
    Value::from(Serde(Replay(r)))
}

impl<'a, 'c> Serializer for B<'a, 'c> {
    type Ok = Out;
    type Error = Fail;
    type SerializeSeq = SeqB<'a, 'c>;
    type SerializeTuple = TupleB<'a, 'c>;
    type SerializeTupleStruct = TupleB<'a, 'c>;
    type SerializeTupleVariant = TupleB<'a, 'c>;
    type SerializeMap = MapB<'a, 'c>;
    type SerializeStruct = StructB<'a, 'c>;
    type SerializeStructVariant = StructB<'a, 'c>;

    fn serialize_bool(self, v: bool) -> R<Out> {
        self.cheap(
            |o| o.kind() == ValueKind::Bool && o.is_true() == v,
            || Value::from(v),
        )
    }
    fn serialize_i8(self, v: i8) -> R<Out> {
        self.serialize_i64(v as i64)
    }
    fn serialize_i16(self, v: i16) -> R<Out> {
        self.serialize_i64(v as i64)
    }
    fn serialize_i32(self, v: i32) -> R<Out> {
        self.serialize_i64(v as i64)
    }
    fn serialize_i64(self, v: i64) -> R<Out> {
        self.cheap(|o| same_int(o, v as i128), || Value::from(v))
    }
    fn serialize_i128(self, v: i128) -> R<Out> {
        self.plain(Value::from(v))
    }
    fn serialize_u8(self, v: u8) -> R<Out> {
        self.serialize_u64(v as u64)
    }
    fn serialize_u16(self, v: u16) -> R<Out> {
        self.serialize_u64(v as u64)
    }
    fn serialize_u32(self, v: u32) -> R<Out> {
        self.serialize_u64(v as u64)
    }
    fn serialize_u64(self, v: u64) -> R<Out> {
        self.cheap(|o| same_int(o, v as i128), || Value::from(v))
    }
    fn serialize_u128(self, v: u128) -> R<Out> {
        self.plain(Value::from(v))
    }
    fn serialize_f32(self, v: f32) -> R<Out> {
        self.serialize_f64(v as f64)
    }
    fn serialize_f64(self, v: f64) -> R<Out> {
        self.cheap(
            |o| o.is_number() && !o.is_integer() && f64::try_from(o.clone()).ok() == Some(v),
            || Value::from(v),
        )
    }
    fn serialize_char(self, v: char) -> R<Out> {
        self.plain(Value::from(v))
    }
    fn serialize_str(self, v: &str) -> R<Out> {
        // Compare before allocating: most strings did not change.
        self.cheap(
            |o| o.kind() == ValueKind::String && !o.is_safe() && o.as_str() == Some(v),
            || Value::from(v),
        )
    }
    fn serialize_bytes(self, v: &[u8]) -> R<Out> {
        self.cheap(
            |o| o.kind() == ValueKind::Bytes && o.as_bytes() == Some(v),
            || Value::from_bytes(v.to_vec()),
        )
    }
    fn serialize_none(self) -> R<Out> {
        self.plain(Value::from(()))
    }
    fn serialize_some<T: Serialize + ?Sized>(self, v: &T) -> R<Out> {
        v.serialize(self)
    }
    fn serialize_unit(self) -> R<Out> {
        self.plain(Value::from(()))
    }
    fn serialize_unit_struct(self, _: &'static str) -> R<Out> {
        self.plain(Value::from(()))
    }
    fn serialize_unit_variant(self, _: &'static str, _: u32, variant: &'static str) -> R<Out> {
        self.plain(Value::from(variant))
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(self, _: &'static str, v: &T) -> R<Out> {
        v.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        v: &T,
    ) -> R<Out> {
        let inner = B::fresh(v)?;
        let pairs = [(Value::from(variant), inner)];
        self.built(replay(ReplayKind::Map(&pairs)))
    }
    fn serialize_seq(self, len: Option<usize>) -> R<SeqB<'a, 'c>> {
        Ok(SeqB::new(self, len))
    }
    fn serialize_tuple(self, len: usize) -> R<TupleB<'a, 'c>> {
        Ok(TupleB::new(self, TupleKind::Tuple, len))
    }
    fn serialize_tuple_struct(self, name: &'static str, len: usize) -> R<TupleB<'a, 'c>> {
        let kind = if name == HANDLE {
            TupleKind::Handle
        } else {
            TupleKind::Seq
        };
        Ok(TupleB::new(self, kind, len))
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        len: usize,
    ) -> R<TupleB<'a, 'c>> {
        Ok(TupleB::new(self, TupleKind::Variant(variant), len))
    }
    fn serialize_map(mut self, len: Option<usize>) -> R<MapB<'a, 'c>> {
        let pushed = matches!(self.old, Old::Cmp(o) if o.kind() == ValueKind::Map) && self.enter();
        Ok(MapB {
            pushed,
            b: self,
            pairs: Vec::with_capacity(len.unwrap_or(0).min(4096)),
            key: None,
            matched: 0,
            reused: true,
        })
    }
    fn serialize_struct(self, _: &'static str, len: usize) -> R<StructB<'a, 'c>> {
        Ok(StructB::new(self, len, None))
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        len: usize,
    ) -> R<StructB<'a, 'c>> {
        Ok(StructB::new(self, len, Some(variant)))
    }
}

/// A sequence, aligned with the old one so that an insert or a removal
/// keeps the identity of the items after it.
struct SeqB<'a, 'c> {
    b: B<'a, 'c>,
    /// The old items, when there is an old sequence to compare with.
    old: Option<OldItems<'a>>,
    /// Cursor in the old items.
    j: usize,
    /// New items so far (only counted while they are the old prefix).
    out: Vec<Value>,
    n: usize,
    /// Materialized: `out` holds every new item.
    own: bool,
    /// The previous item was taken as a change of `old[j - 1]`; where its
    /// operations start, in case it turns out to be an insert.
    pending: Option<usize>,
    /// The list's own step is on the path.
    pushed: bool,
}

#[derive(Clone)]
enum OldItems<'a> {
    Shared(&'a [Value]),
    Chunked(&'a Seq),
    Owned(Arc<[Value]>),
}

impl OldItems<'_> {
    fn len(&self) -> usize {
        match self {
            OldItems::Shared(s) => s.len(),
            OldItems::Chunked(c) => c.0.len(),
            OldItems::Owned(v) => v.len(),
        }
    }

    fn at(&self, i: usize) -> &Value {
        match self {
            OldItems::Shared(s) => &s[i],
            OldItems::Chunked(c) => &c.0[i],
            OldItems::Owned(v) => &v[i],
        }
    }

    fn prefix_vec(&self, n: usize) -> Vec<Value> {
        let mut out = Vec::with_capacity(n);
        self.prefix(n, &mut out);
        out
    }

    fn prefix(&self, n: usize, out: &mut Vec<Value>) {
        match self {
            OldItems::Shared(s) => out.extend_from_slice(&s[..n]),
            OldItems::Chunked(c) => out.extend(c.0.iter().take(n).cloned()),
            OldItems::Owned(v) => out.extend_from_slice(&v[..n]),
        }
    }
}

impl std::ops::Index<usize> for OldItems<'_> {
    type Output = Value;
    fn index(&self, i: usize) -> &Value {
        self.at(i)
    }
}

impl<'a, 'c> SeqB<'a, 'c> {
    fn new(mut b: B<'a, 'c>, len: Option<usize>) -> SeqB<'a, 'c> {
        let old = match b.old {
            Old::Cmp(o) | Old::Dry(o) => {
                if let Some(v) = o.downcast_object_ref::<Vec<Value>>() {
                    Some(OldItems::Shared(v.as_slice()))
                } else if let Some(c) = o.downcast_object_ref::<Seq>() {
                    Some(OldItems::Chunked(c))
                } else if o.kind() == ValueKind::Seq {
                    o.try_iter().ok().map(|i| OldItems::Owned(i.collect()))
                } else {
                    None
                }
            }
            Old::Fresh => None,
        };
        let own = old.is_none();
        let pushed = old.is_some() && b.enter();
        SeqB {
            b,
            old,
            j: 0,
            out: Vec::with_capacity(if own { len.unwrap_or(0).min(4096) } else { 0 }),
            n: 0,
            own,
            pending: None,
            pushed,
        }
    }

    fn materialize(&mut self) {
        if !self.own {
            let items = self.old.clone().expect("old");
            self.out = Vec::with_capacity(items.len() + 1);
            items.prefix(self.n, &mut self.out);
            self.own = true;
        }
    }

    fn push(&mut self, v: Value) {
        self.materialize();
        self.out.push(v);
        self.n += 1;
    }

    /// An old item kept: nothing to copy while the new list is still the
    /// old one's prefix.
    fn push_old(&mut self, v: &Value, in_place: bool) {
        if !in_place || self.own {
            self.materialize();
            self.out.push(v.clone());
        }
        self.n += 1;
    }

    fn dry_eq<T: Serialize + ?Sized>(v: &T, old: &Value) -> R<bool> {
        let mut cx = Cx::default();
        match v.serialize(B {
            old: Old::Dry(old),
            cx: &mut cx,
            seg: None,
        }) {
            Ok(_) => Ok(true),
            Err(Fail::Differs) => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn element<T: Serialize + ?Sized>(&mut self, v: &T) -> R<()> {
        let Some(items) = self.old.clone() else {
            let v = B::fresh(v)?;
            self.push(v);
            return Ok(());
        };
        let old = &items;
        let dry = matches!(self.b.old, Old::Dry(_));
        let j = self.j;
        if j >= old.len() {
            if dry {
                return Err(Fail::Differs);
            }
            let nv = B::fresh(v)?;
            self.record_insert(self.n, &nv);
            self.push(nv);
            self.pending = None;
            return Ok(());
        }
        if dry {
            v.serialize(B {
                old: Old::Dry(&old[j]),
                cx: self.b.cx,
                seg: None,
            })?;
            self.j += 1;
            self.n += 1;
            return Ok(());
        }
        let mark = self.b.cx.ops.len();
        let r = v.serialize(B {
            old: Old::Cmp(&old[j]),
            cx: self.b.cx,
            seg: Some(Seg::Index(self.n)),
        });
        let nv = match r? {
            None => {
                self.j += 1;
                let in_place = j == self.n;
                self.push_old(&old[j], in_place);
                self.pending = None;
                return Ok(());
            }
            Some(nv) => nv,
        };
        // Not the old item at this place: was that one removed?
        if j + 1 < old.len() && Self::dry_eq(v, &old[j + 1])? {
            self.b.cx.ops.truncate(mark);
            let path = self.b.cx.path();
            self.b.cx.ops.push(DeltaOp::Remove {
                path,
                index: self.n,
            });
            self.j += 2;
            let o = old[j + 1].clone();
            self.push(o);
            self.pending = None;
            return Ok(());
        }
        // Or was the previous new item inserted before this old one?
        if let Some(start) = self.pending {
            if Self::dry_eq(v, &old[j - 1])? {
                self.b.cx.ops.truncate(start);
                let prev = self.out[self.n - 1].clone();
                self.record_insert(self.n - 1, &prev);
                let o = old[j - 1].clone();
                self.push(o);
                self.pending = None;
                return Ok(());
            }
        }
        // A change of the old item in place.
        self.pending = Some(mark);
        self.j += 1;
        self.push(nv);
        Ok(())
    }

    fn record_insert(&mut self, index: usize, v: &Value) {
        let path = self.b.cx.path();
        self.b.cx.ops.push(DeltaOp::Insert {
            path,
            index,
            value: v.clone(),
        });
    }

    fn finish(mut self) -> R<Out> {
        if self.old.is_none() {
            // No old list (a first render, or the value was something
            // else): a new list.
            let v = Value::from_object(std::mem::take(&mut self.out));
            return self.b.finish_plain(v, |_, _| false);
        }
        let r = self.finish_against_old();
        if self.pushed {
            self.b.cx.path.pop();
        }
        r
    }

    fn finish_against_old(&mut self) -> R<Out> {
        let Some(old) = self.old.take() else {
            return Err(Fail::Custom("internal: no old list".into()));
        };
        let old_items = &old;
        let left = old_items.len() - self.j.min(old_items.len());
        if matches!(self.b.old, Old::Dry(_)) {
            if left > 0 {
                return Err(Fail::Differs);
            }
        } else if left > 0 {
            let path = self.b.cx.path();
            for _ in 0..left {
                self.b.cx.ops.push(DeltaOp::Remove {
                    path: path.clone(),
                    index: self.n,
                });
            }
        }
        if !self.own && left == 0 && self.n == old_items.len() {
            return Ok(None);
        }
        if !self.own {
            let n = self.n;
            self.out = old_items.prefix_vec(n);
        }
        Ok(Some(Value::from_object(std::mem::take(&mut self.out))))
    }
}

impl ser::SerializeSeq for SeqB<'_, '_> {
    type Ok = Out;
    type Error = Fail;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, v: &T) -> R<()> {
        self.element(v)
    }
    fn end(self) -> R<Out> {
        self.finish()
    }
}

enum TupleKind {
    Tuple,
    Seq,
    Handle,
    Variant(&'static str),
}

/// Tuples, tuple structs, tuple variants and embedded values: rare, so
/// built fresh (by minijinja where its own types are involved) and
/// compared whole.
struct TupleB<'a, 'c> {
    b: B<'a, 'c>,
    kind: TupleKind,
    items: Vec<Value>,
}

impl<'a, 'c> TupleB<'a, 'c> {
    fn new(b: B<'a, 'c>, kind: TupleKind, len: usize) -> TupleB<'a, 'c> {
        TupleB {
            b,
            kind,
            items: Vec::with_capacity(len.min(4096)),
        }
    }

    fn field<T: Serialize + ?Sized>(&mut self, v: &T) -> R<()> {
        self.items.push(B::fresh(v)?);
        Ok(())
    }

    fn finish(self) -> R<Out> {
        let v = match self.kind {
            TupleKind::Tuple => replay(ReplayKind::Tuple(&self.items)),
            TupleKind::Seq => Value::from_object(self.items),
            TupleKind::Handle => {
                let h = self
                    .items
                    .first()
                    .and_then(|v| u32::try_from(v.clone()).ok())
                    .ok_or_else(|| Fail::Custom("bad value handle".into()))?;
                replay(ReplayKind::Handle(h))
            }
            TupleKind::Variant(name) => {
                let pairs = [(Value::from(name), Value::from_object(self.items))];
                replay(ReplayKind::Map(&pairs))
            }
        };
        self.b.built(v)
    }
}

macro_rules! tuple_like {
    ($trait:ident, $method:ident) => {
        impl ser::$trait for TupleB<'_, '_> {
            type Ok = Out;
            type Error = Fail;
            fn $method<T: Serialize + ?Sized>(&mut self, v: &T) -> R<()> {
                self.field(v)
            }
            fn end(self) -> R<Out> {
                self.finish()
            }
        }
    };
}
tuple_like!(SerializeTuple, serialize_element);
tuple_like!(SerializeTupleStruct, serialize_field);
tuple_like!(SerializeTupleVariant, serialize_field);

/// A map: entries compared with the old map's by key; minijinja builds the
/// new map so that its order and key rules are its own.
struct MapB<'a, 'c> {
    b: B<'a, 'c>,
    pairs: Vec<(Value, Value)>,
    key: Option<Value>,
    /// Entries whose key the old map has.
    matched: usize,
    /// Every entry so far is the old one.
    reused: bool,
    /// The map's own step is on the path.
    pushed: bool,
}

fn lookup(map: &Value, key: &Value) -> Option<Value> {
    map.get_item(key).ok().filter(|v| !v.is_undefined())
}

impl MapB<'_, '_> {
    fn entry<T: Serialize + ?Sized>(&mut self, key: Value, v: &T) -> R<()> {
        let old_map = match self.b.old {
            Old::Cmp(o) | Old::Dry(o) if o.kind() == ValueKind::Map => Some(o),
            _ => None,
        };
        let Some(om) = old_map else {
            let v = B::fresh(v)?;
            self.pairs.push((key, v));
            return Ok(());
        };
        let prev = lookup(om, &key);
        if prev.is_some() {
            self.matched += 1;
        }
        let dry = matches!(self.b.old, Old::Dry(_));
        let nv = match (&prev, dry) {
            (Some(p), true) => v.serialize(B {
                old: Old::Dry(p),
                cx: self.b.cx,
                seg: None,
            })?,
            (None, true) => return Err(Fail::Differs),
            (Some(p), false) => {
                self.b.cx.path.push(PathSeg::Key(key.clone()));
                let r = v.serialize(B {
                    old: Old::Cmp(p),
                    cx: self.b.cx,
                    seg: None,
                });
                self.b.cx.path.pop();
                r?
            }
            (None, false) => {
                let nv = B::fresh(v)?;
                self.b.cx.path.push(PathSeg::Key(key.clone()));
                self.b.cx.set(None, &nv);
                self.b.cx.path.pop();
                Some(nv)
            }
        };
        self.reused &= nv.is_none();
        let nv = match (nv, prev) {
            (Some(nv), _) => nv,
            (None, Some(p)) => p,
            (None, None) => return Err(Fail::Custom("internal: no old entry".into())),
        };
        self.pairs.push((key, nv));
        Ok(())
    }

    fn finish(self) -> R<Out> {
        let MapB {
            b,
            pairs,
            matched,
            reused,
            pushed,
            ..
        } = self;
        let om = match b.old {
            Old::Cmp(o) | Old::Dry(o) if o.kind() == ValueKind::Map => Some(o),
            _ => None,
        };
        let Some(om) = om else {
            let v = replay(ReplayKind::Map(&pairs));
            return b.built(v);
        };
        let dry = matches!(b.old, Old::Dry(_));
        // Keys of the old map that the new one lacks.
        let old_len = om.len().unwrap_or(0);
        let mut removed = Vec::new();
        if matched < old_len {
            if dry {
                return Err(Fail::Differs);
            }
            let new_keys: HashSet<&Value> = pairs.iter().map(|(k, _)| k).collect();
            if let Ok(keys) = om.try_iter() {
                removed.extend(keys.filter(|k| !new_keys.contains(k)));
            }
        }
        for k in removed {
            b.cx.path.push(PathSeg::Key(k));
            let path = b.cx.path();
            b.cx.path.pop();
            b.cx.ops.push(DeltaOp::Unset { path });
        }
        if pushed {
            b.cx.path.pop();
        }
        if reused && matched == old_len && pairs.len() == old_len {
            return Ok(None);
        }
        if dry {
            return Err(Fail::Differs);
        }
        let v = replay(ReplayKind::Map(&pairs));
        if v.kind() == ValueKind::Invalid {
            return Err(Fail::Custom(v.to_string()));
        }
        Ok(Some(v))
    }
}

impl ser::SerializeMap for MapB<'_, '_> {
    type Ok = Out;
    type Error = Fail;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> R<()> {
        self.key = Some(B::fresh(key)?);
        Ok(())
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, v: &T) -> R<()> {
        let key = self
            .key
            .take()
            .ok_or_else(|| Fail::Custom("a map value came without its key".into()))?;
        self.entry(key, v)
    }
    fn end(self) -> R<Out> {
        self.finish()
    }
}

/// A struct (or struct variant): fields compared with the old struct's in
/// order, and nothing allocated while they are all unchanged.
struct StructB<'a, 'c> {
    b: B<'a, 'c>,
    variant: Option<&'static str>,
    /// The old fields when the old value is a struct we built.
    old: Option<&'a [(&'static str, Value)]>,
    /// An old value of another kind that still has fields (a map).
    old_any: Option<&'a Value>,
    fields: Vec<(&'static str, Value)>,
    n: usize,
    own: bool,
    cap: usize,
    /// The struct's own step is on the path.
    pushed: bool,
}

impl<'a, 'c> StructB<'a, 'c> {
    fn new(mut b: B<'a, 'c>, len: usize, variant: Option<&'static str>) -> StructB<'a, 'c> {
        let (old, old_any) = match (b.old, variant) {
            (Old::Cmp(o) | Old::Dry(o), None) => match o.downcast_object_ref::<Fields>() {
                Some(f) => (Some(f.0.as_slice()), None),
                None if o.kind() == ValueKind::Map => (None, Some(o)),
                None => (None, None),
            },
            _ => (None, None),
        };
        let own = old.is_none();
        let pushed = (old.is_some() || old_any.is_some()) && b.enter();
        StructB {
            b,
            variant,
            old,
            old_any,
            fields: Vec::with_capacity(if own { len.min(4096) } else { 0 }),
            n: 0,
            own,
            cap: len,
            pushed,
        }
    }

    fn materialize(&mut self) {
        if !self.own {
            let old = self.old.expect("old fields");
            self.fields = Vec::with_capacity(self.cap.max(old.len()));
            self.fields.extend_from_slice(&old[..self.n]);
            self.own = true;
        }
    }

    fn field<T: Serialize + ?Sized>(&mut self, key: &'static str, v: &T) -> R<()> {
        // The common case first: the old struct has this field at this
        // place, and nothing before it changed.
        if let (Some(old), false, Old::Cmp(_)) = (self.old, self.own, self.b.old) {
            if let Some((k, p)) = old.get(self.n) {
                if std::ptr::eq(*k, key) || *k == key {
                    let r = v.serialize(B {
                        old: Old::Cmp(p),
                        cx: self.b.cx,
                        seg: Some(Seg::Field(key)),
                    });
                    if let Some(nv) = r? {
                        self.materialize();
                        self.fields.push((key, nv));
                    }
                    self.n += 1;
                    return Ok(());
                }
            }
        }
        let dry = matches!(self.b.old, Old::Dry(_));
        let same_key = |k: &'static str| std::ptr::eq(k, key) || k == key;
        // The old value of this field: borrowed from the old struct (by
        // position, else by name), or looked up in an old map.
        let mut in_place = false;
        let looked_up: Option<Value>;
        let prev: Option<&Value> = match (self.old, self.old_any) {
            (Some(old), _) => match old.get(self.n) {
                Some((k, v)) if same_key(k) => {
                    in_place = true;
                    Some(v)
                }
                _ => old.iter().find(|(k, _)| *k == key).map(|(_, v)| v),
            },
            (None, Some(o)) => {
                looked_up = o.get_attr(key).ok().filter(|v| !v.is_undefined());
                looked_up.as_ref()
            }
            (None, None) => None,
        };
        let compared = matches!(self.b.old, Old::Cmp(_) | Old::Dry(_)) && self.variant.is_none();
        let nv = match (prev, dry) {
            (Some(p), true) => v.serialize(B {
                old: Old::Dry(p),
                cx: self.b.cx,
                seg: None,
            })?,
            (None, true) => return Err(Fail::Differs),
            (Some(p), false) if compared => v.serialize(B {
                old: Old::Cmp(p),
                cx: self.b.cx,
                seg: Some(Seg::Field(key)),
            })?,
            (None, false) if compared => {
                let nv = B::fresh(v)?;
                self.b.cx.set(Some(Seg::Field(key)), &nv);
                Some(nv)
            }
            _ => Some(B::fresh(v)?),
        };
        match nv {
            None if in_place && !self.own => {}
            None => {
                let p = prev
                    .cloned()
                    .ok_or_else(|| Fail::Custom("internal: no old field".into()))?;
                self.materialize();
                self.fields.push((key, p));
            }
            Some(nv) => {
                self.materialize();
                self.fields.push((key, nv));
            }
        }
        self.n += 1;
        Ok(())
    }

    fn finish(mut self) -> R<Out> {
        if self.pushed {
            let r = self.finish_compared();
            self.b.cx.path.pop();
            return r;
        }
        let dry = matches!(self.b.old, Old::Dry(_));
        if let Some(old) = self.old {
            if !self.own && self.n == old.len() {
                return Ok(None);
            }
            if dry {
                return Err(Fail::Differs);
            }
            self.materialize();
        }
        // Old fields the new struct no longer has.
        let old_keys: Vec<Value> = match (self.old, self.old_any) {
            (Some(old), _) => old.iter().map(|(k, _)| Value::from(*k)).collect(),
            (None, Some(o)) => o.try_iter().map(|i| i.collect()).unwrap_or_default(),
            _ => Vec::new(),
        };
        if self.variant.is_none() {
            for k in old_keys {
                if !self.fields.iter().any(|(f, _)| Some(*f) == k.as_str()) {
                    if dry {
                        return Err(Fail::Differs);
                    }
                    self.b.cx.path.push(PathSeg::Key(k));
                    let path = self.b.cx.path();
                    self.b.cx.path.pop();
                    self.b.cx.ops.push(DeltaOp::Unset { path });
                }
            }
        }
        let v = Value::from_object(Fields(self.fields));
        match self.variant {
            None => {
                if dry {
                    return Err(Fail::Differs);
                }
                // A struct whose old value was another kind records itself.
                if let (Old::Cmp(_), None, None) = (self.b.old, self.old, self.old_any) {
                    self.b.cx.set(self.b.seg, &v);
                }
                Ok(Some(v))
            }
            Some(name) => {
                let pairs = [(Value::from(name), v)];
                self.b.built(replay(ReplayKind::Map(&pairs)))
            }
        }
    }
}

impl StructB<'_, '_> {
    /// `finish` for a struct compared with an old struct or map (its step
    /// is on the path, so what it records lands under it).
    fn finish_compared(&mut self) -> R<Out> {
        if let Some(old) = self.old {
            if !self.own && self.n == old.len() {
                return Ok(None);
            }
            self.materialize();
        }
        let old_keys: Vec<Value> = match (self.old, self.old_any) {
            (Some(old), _) => old.iter().map(|(k, _)| Value::from(*k)).collect(),
            (None, Some(o)) => o.try_iter().map(|i| i.collect()).unwrap_or_default(),
            _ => Vec::new(),
        };
        for k in old_keys {
            if !self.fields.iter().any(|(f, _)| Some(*f) == k.as_str()) {
                self.b.cx.path.push(PathSeg::Key(k));
                let path = self.b.cx.path();
                self.b.cx.path.pop();
                self.b.cx.ops.push(DeltaOp::Unset { path });
            }
        }
        Ok(Some(Value::from_object(Fields(std::mem::take(
            &mut self.fields,
        )))))
    }
}

impl ser::SerializeStruct for StructB<'_, '_> {
    type Ok = Out;
    type Error = Fail;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, key: &'static str, v: &T) -> R<()> {
        self.field(key, v)
    }
    fn skip_field(&mut self, _: &'static str) -> R<()> {
        Ok(())
    }
    fn end(self) -> R<Out> {
        self.finish()
    }
}

impl ser::SerializeStructVariant for StructB<'_, '_> {
    type Ok = Out;
    type Error = Fail;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, key: &'static str, v: &T) -> R<()> {
        self.field(key, v)
    }
    fn end(self) -> R<Out> {
        self.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::{Value as J, json};

    fn mj<T: Serialize + ?Sized>(v: &T) -> Value {
        Value::from(Serde(v))
    }

    /// Ingest agrees with minijinja's own conversion, its delta turns the
    /// old snapshot into the new one, it touches every path that changed,
    /// and it keeps what did not change.
    fn check(a: &J, b: &J) {
        let first = ingest(None, a).unwrap();
        assert!(diff::same(&first.value, &mj(a)), "fresh {a}");
        let va = first.value;
        let next = ingest(Some(&va), b).unwrap();
        let want = mj(b);
        assert!(diff::same(&next.value, &want), "{a} -> {b}");
        let applied = next.delta.apply(&va).unwrap();
        assert!(
            diff::same(&applied, &want),
            "delta {:?} applied to {a} gave {applied}, want {b}",
            next.delta
        );
        let touched = next.delta.touched(&va);
        for p in diff::changed_paths(&va, &want) {
            assert!(
                touched.iter().any(|t| t.is_empty()
                    || t == &p
                    || p.starts_with(&format!("{t}."))
                    || t.starts_with(&format!("{p}."))),
                "{p} changed but the delta touches only {touched:?}"
            );
        }
        // Through JSON and back, the delta still applies.
        let wire = serde_json::to_string(&next.delta).unwrap();
        let back: Delta = serde_json::from_str(&wire).unwrap();
        let applied = back.apply(&va).unwrap();
        assert_eq!(
            serde_json::to_value(&applied).unwrap(),
            serde_json::to_value(&want).unwrap(),
            "{wire}"
        );
        if a == b {
            assert!(next.delta.is_empty(), "{a}: {:?}", next.delta);
            assert!(identical(&next.value, &va) || va.kind() != ValueKind::Map);
        }
    }

    fn leaf() -> impl Strategy<Value = J> {
        prop_oneof![
            Just(J::Null),
            any::<bool>().prop_map(J::from),
            (-3i64..3).prop_map(J::from),
            (0u8..3).prop_map(|n| J::from(n as f64 + 0.5)),
            "[a-c]{0,2}".prop_map(J::from),
        ]
    }

    fn tree() -> impl Strategy<Value = J> {
        leaf().prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5).prop_map(J::from),
                prop::collection::btree_map("[a-d]", inner, 0..4)
                    .prop_map(|m| J::Object(m.into_iter().collect())),
            ]
        })
    }

    /// A table-like page and an edit of it: the shapes the list alignment
    /// has to get right.
    fn table_edit() -> impl Strategy<Value = (J, J)> {
        (2usize..8, 0usize..8, 0u8..6, tree()).prop_map(|(n, at, kind, v)| {
            let row = |i: usize| json!({"id": i, "name": format!("r{i}"), "amount": i * 10});
            let rows: Vec<J> = (0..n).map(row).collect();
            let at = at % n;
            let mut new = rows.clone();
            match kind {
                0 => new[at]["amount"] = v,
                1 => new.insert(at, json!({"id": 100, "name": "new"})),
                2 => {
                    new.remove(at);
                }
                3 => new.push(row(200)),
                4 => new.swap(0, at),
                _ => new[at] = v,
            }
            (
                json!({"title": "t", "rows": rows}),
                json!({"title": "t", "rows": new}),
            )
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

        #[test]
        fn random_trees(a in tree(), b in tree()) {
            check(&a, &b);
            check(&a, &a);
        }

        #[test]
        fn table_edits((a, b) in table_edit()) {
            check(&a, &b);
        }
    }

    #[derive(serde::Serialize, Clone)]
    struct Row {
        id: u32,
        name: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        note: Option<String>,
        tag: Tag,
        pair: (u8, char),
        html: Value,
    }

    #[derive(serde::Serialize, Clone)]
    enum Tag {
        Plain,
        Count(u32),
        Span { from: u8, to: u8 },
        Pair(u8, u8),
    }

    #[derive(serde::Serialize, Clone)]
    struct Page {
        rows: Vec<Row>,
        total: i128,
    }

    fn row(i: u32) -> Row {
        Row {
            id: i,
            name: format!("n{i}"),
            note: (i % 2 == 0).then(|| "even".into()),
            tag: match i % 4 {
                0 => Tag::Plain,
                1 => Tag::Count(i),
                2 => Tag::Span { from: 1, to: 2 },
                _ => Tag::Pair(3, 4),
            },
            pair: (i as u8, 'x'),
            html: Value::from_safe_string(format!("<b>{i}</b>")),
        }
    }

    #[test]
    fn typed_data_matches_minijinja_and_keeps_identity() {
        let a = Page {
            rows: (0..6).map(row).collect(),
            total: 1 << 70,
        };
        let va = ingest(None, &a).unwrap().value;
        assert!(diff::same(&va, &mj(&a)));
        let rows = |v: &Value| v.get_attr("rows").unwrap();
        // Embedded values come back as themselves: the safe string is safe.
        let html = rows(&va)
            .get_item_by_index(1)
            .unwrap()
            .get_attr("html")
            .unwrap();
        assert!(html.is_safe());
        assert!(
            rows(&va)
                .get_item_by_index(1)
                .unwrap()
                .get_attr("pair")
                .unwrap()
                .is_true()
        );
        // Unchanged: the same objects, and nothing in the delta.
        let same = ingest(Some(&va), &a).unwrap();
        assert!(same.delta.is_empty());
        assert!(identical(&same.value, &va));
        // One field changes: one op, and every other row is shared.
        let mut b = a.clone();
        b.rows[3].name = "changed".into();
        b.rows[4].note = Some("now".into());
        b.rows[2].note = None;
        let next = ingest(Some(&va), &b).unwrap();
        assert!(diff::same(&next.value, &mj(&b)));
        let ops: Vec<String> = next
            .delta
            .ops()
            .iter()
            .map(|o| serde_json::to_string(o).unwrap())
            .collect();
        assert_eq!(
            ops,
            [
                r#"{"op":"unset","path":["rows",2,"note"]}"#,
                r#"{"op":"set","path":["rows",3,"name"],"value":"changed"}"#,
                r#"{"op":"set","path":["rows",4,"note"],"value":"now"}"#,
            ]
        );
        for i in [0, 1, 5] {
            assert!(identical(
                &rows(&next.value).get_item_by_index(i).unwrap(),
                &rows(&va).get_item_by_index(i).unwrap()
            ));
        }
        assert!(diff::same(&next.delta.apply(&va).unwrap(), &next.value));
        // An insert at the front keeps every old row shared.
        let mut c = a.clone();
        c.rows.insert(0, row(99));
        let next = ingest(Some(&va), &c).unwrap();
        assert_eq!(next.delta.ops().len(), 1, "{:?}", next.delta);
        for i in 0..6 {
            assert!(identical(
                &rows(&next.value).get_item_by_index(i + 1).unwrap(),
                &rows(&va).get_item_by_index(i).unwrap()
            ));
        }
    }

    #[test]
    fn errors_are_reported() {
        struct Bad;
        impl Serialize for Bad {
            fn serialize<S: Serializer>(&self, _: S) -> std::result::Result<S::Ok, S::Error> {
                Err(ser::Error::custom("no way"))
            }
        }
        let e = ingest(None, &vec![Bad]).err().unwrap();
        assert!(e.to_string().contains("no way"), "{e}");
        let old = ingest(None, &json!([1])).unwrap().value;
        let e = ingest(Some(&old), &vec![Bad]).err().unwrap();
        assert!(e.to_string().contains("no way"), "{e}");
    }

    #[test]
    fn deltas_that_do_not_fit_are_errors() {
        let v = ingest(None, &json!({"rows": [1, 2]})).unwrap().value;
        let bad = |op: DeltaOp| Delta::new([op]).apply(&v).unwrap_err().to_string();
        let p = |s: &[J]| s.iter().map(mj).collect::<Vec<_>>();
        assert!(
            bad(DeltaOp::Remove {
                path: p(&[json!("rows")]),
                index: 2
            })
            .contains("past the end")
        );
        assert!(
            bad(DeltaOp::Insert {
                path: p(&[json!("rows")]),
                index: 3,
                value: Value::from(1)
            })
            .contains("past the end")
        );
        assert!(
            bad(DeltaOp::Unset {
                path: p(&[json!("nope")])
            })
            .contains("no key")
        );
        assert!(
            bad(DeltaOp::Set {
                path: p(&[json!("rows"), json!("x")]),
                value: Value::from(1)
            })
            .contains("not a position")
        );
        assert!(
            bad(DeltaOp::Insert {
                path: p(&[json!("rows"), json!(0)]),
                index: 0,
                value: Value::from(1)
            })
            .contains("not a list")
        );
    }
}
