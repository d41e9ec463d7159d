//! Tuples, maps and structs.

use super::*;

pub(super) enum TupleKind {
    Tuple,
    Seq,
    Handle,
    Variant(&'static str),
}

/// Tuples, tuple structs, tuple variants and embedded values: rare, so
/// built fresh (by minijinja where its own types are involved) and
/// compared whole.
pub(super) struct TupleB<'a, 'c> {
    b: B<'a, 'c>,
    kind: TupleKind,
    items: Vec<Value>,
}

impl<'a, 'c> TupleB<'a, 'c> {
    pub(super) fn new(b: B<'a, 'c>, kind: TupleKind, len: usize) -> TupleB<'a, 'c> {
        TupleB {
            b,
            kind,
            items: Vec::with_capacity(len.min(4096)),
        }
    }

    fn field<T: Serialize + ?Sized>(&mut self, v: &T) -> R<()> {
        self.items.push(B::fresh(v, self.b.cx)?);
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
                map_of(pairs)
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
pub(super) struct MapB<'a, 'c> {
    pub(super) b: B<'a, 'c>,
    pub(super) pairs: Vec<(Value, Value)>,
    pub(super) key: Option<Value>,
    /// Entries whose key the old map has.
    pub(super) matched: usize,
    /// Every entry so far is the old one.
    pub(super) reused: bool,
    /// The map's own step is on the path.
    pub(super) pushed: bool,
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
            let v = B::fresh(v, self.b.cx)?;
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
                let nv = B::fresh(v, self.b.cx)?;
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
            let v = map_of(pairs);
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
        Ok(Some(map_of(pairs)))
    }
}

impl ser::SerializeMap for MapB<'_, '_> {
    type Ok = Out;
    type Error = Fail;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> R<()> {
        self.key = Some(B::fresh(key, self.b.cx)?);
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
pub(super) struct StructB<'a, 'c> {
    b: B<'a, 'c>,
    /// What the fields are compared with, or the variant's name. One
    /// field, so that the builder stays small enough to move in registers
    /// (it is moved into `end` for every struct in the data).
    src: Src<'a>,
    fields: Vec<(&'static str, Value)>,
    n: usize,
    cap: u32,
    own: bool,
    /// The struct's own step is on the path.
    pushed: bool,
}

#[derive(Clone, Copy)]
enum Src<'a> {
    /// Nothing to compare with: a fresh struct.
    None,
    /// The old fields, when the old value is a struct we built.
    Fields(&'a [(&'static str, Value)]),
    /// An old value of another kind that still has fields (a map).
    Map(&'a Value),
    /// A struct variant (built fresh, compared whole).
    Variant(&'static str),
}

impl<'a, 'c> StructB<'a, 'c> {
    #[inline(always)]
    pub(super) fn new(
        mut b: B<'a, 'c>,
        len: usize,
        variant: Option<&'static str>,
    ) -> StructB<'a, 'c> {
        let src = match (b.old, variant) {
            (_, Some(name)) => Src::Variant(name),
            (Old::Cmp(o) | Old::Dry(o), None) => match o.downcast_object_ref::<Fields>() {
                Some(f) => Src::Fields(f.0.as_slice()),
                None if o.kind() == ValueKind::Map => Src::Map(o),
                None => Src::None,
            },
            _ => Src::None,
        };
        let own = !matches!(src, Src::Fields(_));
        let pushed = matches!(src, Src::Fields(_) | Src::Map(_)) && b.enter();
        StructB {
            b,
            src,
            fields: Vec::with_capacity(if own { len.min(4096) } else { 0 }),
            n: 0,
            cap: u32::try_from(len).unwrap_or(u32::MAX),
            own,
            pushed,
        }
    }

    /// The old fields, when the old value is a struct we built.
    fn old(&self) -> Option<&'a [(&'static str, Value)]> {
        match self.src {
            Src::Fields(f) => Some(f),
            _ => None,
        }
    }

    /// An old map standing for the struct.
    fn old_any(&self) -> Option<&'a Value> {
        match self.src {
            Src::Map(o) => Some(o),
            _ => None,
        }
    }

    fn variant(&self) -> Option<&'static str> {
        match self.src {
            Src::Variant(name) => Some(name),
            _ => None,
        }
    }

    fn materialize(&mut self) {
        if !self.own {
            let old = self.old().expect("old fields");
            self.fields = Vec::with_capacity((self.cap as usize).max(old.len()));
            self.fields.extend_from_slice(&old[..self.n]);
            self.own = true;
        }
    }

    #[inline(always)]
    fn field<T: Serialize + ?Sized>(&mut self, key: &'static str, v: &T) -> R<()> {
        // The common case first: the old struct has this field at this
        // place, and nothing before it changed.
        if let (Some(old), false, Old::Cmp(_)) = (self.old(), self.own, self.b.old) {
            if let Some((k, p)) = old.get(self.n) {
                if std::ptr::eq(*k, key) || *k == key {
                    let r = v.serialize(B {
                        old: Old::Cmp(p),
                        cx: self.b.cx,
                        seg: Some(Seg::Field(key)),
                    });
                    if let Some(nv) = r? {
                        self.changed(key, nv);
                    }
                    self.n += 1;
                    return Ok(());
                }
            }
        }
        self.field_slow(key, v)
    }

    /// A field of the old struct found changed in place.
    #[cold]
    fn changed(&mut self, key: &'static str, nv: Value) {
        self.materialize();
        self.fields.push((key, nv));
    }

    /// `field` off the common path: a fresh struct, a dry run, an old map,
    /// or fields out of their old order.
    fn field_slow<T: Serialize + ?Sized>(&mut self, key: &'static str, v: &T) -> R<()> {
        let dry = matches!(self.b.old, Old::Dry(_));
        let same_key = |k: &'static str| std::ptr::eq(k, key) || k == key;
        // The old value of this field: borrowed from the old struct (by
        // position, else by name), or looked up in an old map.
        let mut in_place = false;
        let looked_up: Option<Value>;
        let prev: Option<&Value> = match (self.old(), self.old_any()) {
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
        let compared = matches!(self.b.old, Old::Cmp(_) | Old::Dry(_)) && self.variant().is_none();
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
                let nv = B::fresh(v, self.b.cx)?;
                self.b.cx.set(Some(Seg::Field(key)), &nv);
                Some(nv)
            }
            _ => Some(B::fresh(v, self.b.cx)?),
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

    #[inline(always)]
    fn finish(self) -> R<Out> {
        // The common case: every field is the old one, in its old place.
        if let (Some(old), false, true) = (self.old(), self.own, self.pushed) {
            if self.n == old.len() {
                self.b.cx.path.pop();
                // Nothing was built (`fields` never allocated, and nothing
                // else here owns anything): skip the drop call.
                debug_assert_eq!(self.fields.capacity(), 0);
                std::mem::forget(self);
                return Ok(None);
            }
        }
        self.finish_slow()
    }

    fn finish_slow(mut self) -> R<Out> {
        if self.pushed {
            let r = self.finish_compared();
            self.b.cx.path.pop();
            return r;
        }
        let dry = matches!(self.b.old, Old::Dry(_));
        if let Some(old) = self.old() {
            if !self.own && self.n == old.len() {
                return Ok(None);
            }
            if dry {
                return Err(Fail::Differs);
            }
            self.materialize();
        }
        // Old fields the new struct no longer has.
        let old_keys: Vec<Value> = match (self.old(), self.old_any()) {
            (Some(old), _) => old.iter().map(|(k, _)| Value::from(*k)).collect(),
            (None, Some(o)) => o.try_iter().map(|i| i.collect()).unwrap_or_default(),
            _ => Vec::new(),
        };
        if self.variant().is_none() {
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
        let (variant, fresh) = (self.variant(), matches!(self.src, Src::None));
        let v = Value::from_object(Fields(self.fields));
        match variant {
            None => {
                if dry {
                    return Err(Fail::Differs);
                }
                // A struct whose old value was another kind records itself.
                if let (Old::Cmp(_), true) = (self.b.old, fresh) {
                    self.b.cx.set(self.b.seg, &v);
                }
                Ok(Some(v))
            }
            Some(name) => {
                let pairs = [(Value::from(name), v)];
                self.b.built(map_of(pairs))
            }
        }
    }
}

impl StructB<'_, '_> {
    /// `finish` for a struct compared with an old struct or map (its step
    /// is on the path, so what it records lands under it).
    fn finish_compared(&mut self) -> R<Out> {
        if let Some(old) = self.old() {
            if !self.own && self.n == old.len() {
                return Ok(None);
            }
            self.materialize();
        }
        let old_keys: Vec<Value> = match (self.old(), self.old_any()) {
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
    #[inline(always)]
    fn serialize_field<T: Serialize + ?Sized>(&mut self, key: &'static str, v: &T) -> R<()> {
        self.field(key, v)
    }
    fn skip_field(&mut self, _: &'static str) -> R<()> {
        Ok(())
    }
    #[inline(always)]
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
