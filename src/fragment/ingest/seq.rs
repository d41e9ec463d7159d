//! Sequences: aligned with the old one as they stream.

use super::*;

/// A sequence, aligned with the old one so that an insert or a removal
/// keeps the identity of the items after it.
pub(super) struct SeqB<'a, 'c> {
    b: B<'a, 'c>,
    /// The old items, when there is an old sequence to compare with.
    old: Option<OldItems<'a>>,
    /// How many old items there are.
    old_len: usize,
    /// Where the last old item was found: the whole old slice, or the
    /// chunk that held it, and the index of its first item. A walk through
    /// a chunked list reads its items from here and steps to the next
    /// chunk once per chunk. Empty for an old list held by value.
    win: &'a [Value],
    win_at: usize,
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
    /// For an old list kept in chunks: what to do to a copy of it to get
    /// the new one, in order, instead of building the new one item by
    /// item (so one changed row copies one chunk, not the list). Each
    /// index is a place in the list as the edits before it left it: the
    /// first `n` items are the new ones, the rest the old from `j` on.
    edits: Option<Vec<Edit>>,
}

enum Edit {
    Set(usize, Value),
    Insert(usize, Value),
    Remove(usize),
}

/// A changed list this long or longer is kept in chunks, so that its next
/// change copies a chunk instead of the list.
const CHUNKED_FROM: usize = 128;

#[derive(Clone)]
enum OldItems<'a> {
    Shared(&'a [Value]),
    Chunked(&'a Seq),
    Owned(Arc<[Value]>),
}

impl OldItems<'_> {
    #[inline(always)]
    fn len(&self) -> usize {
        match self {
            OldItems::Shared(s) => s.len(),
            OldItems::Chunked(c) => c.0.len(),
            OldItems::Owned(v) => v.len(),
        }
    }

    #[inline(always)]
    fn at(&self, i: usize) -> &Value {
        match self {
            OldItems::Shared(s) => &s[i],
            OldItems::Chunked(c) => c.0.at(i),
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
    #[inline(always)]
    fn index(&self, i: usize) -> &Value {
        self.at(i)
    }
}

impl<'a, 'c> SeqB<'a, 'c> {
    pub(super) fn new(mut b: B<'a, 'c>, len: Option<usize>) -> SeqB<'a, 'c> {
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
        let old_len = old.as_ref().map_or(0, OldItems::len);
        let win: &'a [Value] = match old {
            Some(OldItems::Shared(s)) => s,
            _ => &[],
        };
        let pushed = old.is_some() && b.enter();
        let edits = matches!(old, Some(OldItems::Chunked(_))).then(Vec::new);
        SeqB {
            b,
            old,
            old_len,
            win,
            win_at: 0,
            j: 0,
            out: Vec::with_capacity(if own { len.unwrap_or(0).min(4096) } else { 0 }),
            n: 0,
            own,
            pending: None,
            pushed,
            edits,
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
    #[inline]
    fn push_old(&mut self, v: &Value, in_place: bool) {
        if (!in_place || self.own) && self.edits.is_none() {
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

    /// Old item `j` (which must exist) from the window, or from the chunk
    /// that holds it, which becomes the window; `None` for an old list held
    /// by value.
    #[inline(always)]
    fn old_ref(&mut self, j: usize) -> Option<&'a Value> {
        match self.win.get(j.wrapping_sub(self.win_at)) {
            Some(v) => Some(v),
            None => self.slide(j),
        }
    }

    #[inline(never)]
    fn slide(&mut self, j: usize) -> Option<&'a Value> {
        let Some(OldItems::Chunked(c)) = &self.old else {
            return None;
        };
        let c: &'a Seq = c;
        let (at, items) = c.0.chunk_of(j);
        self.win = items;
        self.win_at = at;
        items.get(j - at)
    }

    /// Old item `i` (which must exist), off the common path.
    fn old_at(&self, i: usize) -> Value {
        match &self.old {
            Some(items) => items.at(i).clone(),
            None => Value::UNDEFINED,
        }
    }

    #[inline(always)]
    fn element<T: Serialize + ?Sized>(&mut self, v: &T) -> R<()> {
        if self.old.is_none() {
            let v = B::fresh(v, self.b.cx)?;
            self.push(v);
            return Ok(());
        }
        let dry = matches!(self.b.old, Old::Dry(_));
        let j = self.j;
        if j >= self.old_len {
            if dry {
                return Err(Fail::Differs);
            }
            let nv = B::fresh(v, self.b.cx)?;
            self.record_insert(self.n, &nv);
            self.put(Edit::Insert(self.n, nv));
            self.pending = None;
            return Ok(());
        }
        let held;
        let o: &Value = match self.old_ref(j) {
            Some(o) => o,
            None => {
                held = self.old.clone().expect("old");
                &held[j]
            }
        };
        if dry {
            v.serialize(B {
                old: Old::Dry(o),
                cx: self.b.cx,
                seg: None,
            })?;
            self.j += 1;
            self.n += 1;
            return Ok(());
        }
        let mark = self.b.cx.ops.len();
        let r = v.serialize(B {
            old: Old::Cmp(o),
            cx: self.b.cx,
            seg: Some(Seg::Index(self.n)),
        });
        let nv = match r? {
            None => {
                self.j += 1;
                let in_place = j == self.n;
                self.push_old(o, in_place);
                self.pending = None;
                return Ok(());
            }
            Some(nv) => nv,
        };
        self.changed_element(v, j, mark, nv)
    }

    /// Item `j` of the old list is not the new one: a removal before it,
    /// an insert, or a change in place.
    fn changed_element<T: Serialize + ?Sized>(
        &mut self,
        v: &T,
        j: usize,
        mark: usize,
        nv: Value,
    ) -> R<()> {
        // Not the old item at this place: was that one removed?
        if j + 1 < self.old_len && Self::dry_eq(v, &self.old_at(j + 1))? {
            self.b.cx.ops.truncate(mark);
            let path = self.b.cx.path();
            self.b.cx.ops.push(DeltaOp::Remove {
                path,
                index: self.n,
            });
            self.j += 2;
            match &mut self.edits {
                Some(e) => {
                    e.push(Edit::Remove(self.n));
                    self.n += 1;
                }
                None => {
                    let o = self.old_at(j + 1);
                    self.push(o);
                }
            }
            self.pending = None;
            return Ok(());
        }
        // Or was the previous new item inserted before this old one?
        if let Some(start) = self.pending {
            if Self::dry_eq(v, &self.old_at(j - 1))? {
                self.b.cx.ops.truncate(start);
                match &mut self.edits {
                    Some(e) => {
                        // The last edit took it for a change of that one.
                        let Some(Edit::Set(at, prev)) = e.pop() else {
                            return Err(Fail::Custom("internal: no pending change".into()));
                        };
                        e.push(Edit::Insert(at, prev.clone()));
                        self.record_insert(at, &prev);
                        self.n += 1;
                    }
                    None => {
                        let prev = self.out[self.n - 1].clone();
                        self.record_insert(self.n - 1, &prev);
                        let o = self.old_at(j - 1);
                        self.push(o);
                    }
                }
                self.pending = None;
                return Ok(());
            }
        }
        // A change of the old item in place.
        self.pending = Some(mark);
        self.j += 1;
        self.put(Edit::Set(self.n, nv));
        Ok(())
    }

    /// A new item at place `n`: an edit of the old chunks, or pushed.
    fn put(&mut self, edit: Edit) {
        match (&mut self.edits, edit) {
            (Some(e), edit) => {
                e.push(edit);
                self.n += 1;
            }
            (None, Edit::Set(_, v) | Edit::Insert(_, v)) => self.push(v),
            (None, Edit::Remove(_)) => {}
        }
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
        if let (Some(edits), OldItems::Chunked(c)) = (self.edits.take(), &old) {
            if edits.is_empty() && left == 0 && self.n == old_items.len() {
                return Ok(None);
            }
            let mut list = c.0.clone();
            for e in edits {
                match e {
                    Edit::Set(i, v) => list.set(i, v),
                    Edit::Insert(i, v) => list.insert(i, v),
                    Edit::Remove(i) => drop(list.remove(i)),
                }
            }
            for _ in 0..left {
                drop(list.remove(self.n));
            }
            return Ok(Some(Value::from_object(Seq(list))));
        }
        if !self.own && left == 0 && self.n == old_items.len() {
            return Ok(None);
        }
        if !self.own {
            let n = self.n;
            self.out = old_items.prefix_vec(n);
        }
        let out = std::mem::take(&mut self.out);
        if out.len() >= CHUNKED_FROM {
            return Ok(Some(Value::from_object(Seq(out.into()))));
        }
        Ok(Some(Value::from_object(out)))
    }
}

impl ser::SerializeSeq for SeqB<'_, '_> {
    type Ok = Out;
    type Error = Fail;
    #[inline]
    fn serialize_element<T: Serialize + ?Sized>(&mut self, v: &T) -> R<()> {
        self.element(v)
    }
    fn end(self) -> R<Out> {
        self.finish()
    }
}
