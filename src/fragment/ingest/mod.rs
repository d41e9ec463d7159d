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

mod compound;
mod seq;
#[cfg(test)]
mod tests;

use compound::{MapB, StructB, TupleB, TupleKind};
use seq::SeqB;

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
    #[inline]
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
    #[inline(always)]
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

    /// Builds a value that has no old one to compare with. Nothing is
    /// recorded and no step pushed in that mode, so it borrows the caller's
    /// context rather than making (and dropping) one per value.
    fn fresh<T: Serialize + ?Sized>(v: &T, cx: &mut Cx) -> R<Value> {
        let before = (cx.path.len(), cx.ops.len());
        let built = v.serialize(B {
            old: Old::Fresh,
            cx: &mut *cx,
            seg: None,
        })?;
        debug_assert_eq!(
            before,
            (cx.path.len(), cx.ops.len()),
            "a fresh value recorded"
        );
        built.ok_or_else(|| Fail::Custom("internal: nothing built".into()))
    }
}

/// Whether `o` is an integer equal to `v` (any of minijinja's integer
/// kinds: they render alike). The common case, a small non-negative
/// number, takes minijinja's inlined `as_usize`.
#[inline]
fn same_u64(o: &Value, v: u64) -> bool {
    if !o.is_integer() {
        return false;
    }
    match usize::try_from(v) {
        Ok(u) => o.as_usize() == Some(u),
        Err(_) => u64::try_from(o.clone()).ok() == Some(v),
    }
}

/// [`same_u64`] for a signed integer.
#[inline]
fn same_i64(o: &Value, v: i64) -> bool {
    match u64::try_from(v) {
        Ok(u) => same_u64(o, u),
        Err(_) => o.is_integer() && i64::try_from(o.clone()).ok() == Some(v),
    }
}

/// Has minijinja build a value from values we already built.
struct Replay<'a>(ReplayKind<'a>);

enum ReplayKind<'a> {
    Tuple(&'a [Value]),
    Handle(u32),
}

impl Serialize for Replay<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use ser::{SerializeTuple, SerializeTupleStruct};
        match &self.0 {
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

/// The map minijinja's serializer makes of these entries (its own map
/// object, in its key order), built directly instead of through serde.
fn map_of(pairs: impl IntoIterator<Item = (Value, Value)>) -> Value {
    Value::from_pairs(pairs)
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
    #[inline(always)]
    fn serialize_i64(self, v: i64) -> R<Out> {
        self.cheap(|o| same_i64(o, v), || Value::from(v))
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
    #[inline(always)]
    fn serialize_u64(self, v: u64) -> R<Out> {
        self.cheap(|o| same_u64(o, v), || Value::from(v))
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
    #[inline(always)]
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
        let inner = B::fresh(v, self.cx)?;
        let pairs = [(Value::from(variant), inner)];
        self.built(map_of(pairs))
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
    #[inline(always)]
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
