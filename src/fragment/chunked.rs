//! A persistent list: items in shared chunks, so that a copy with one item
//! changed, inserted or removed costs one chunk and one reference count per
//! chunk, not one per item. Rendered lists keep their items in it, so that
//! a change to one row of a 10,000-row table does not copy the other rows.

use std::sync::Arc;

use minijinja::value::{Enumerator, Object, ObjectRepr, Value};

const CHUNK: usize = 64;

/// A list of the data kept in chunks: what a list becomes once a delta
/// changes it, so that the next change copies one chunk, not the list. It
/// behaves as minijinja's own list (`Vec<Value>`) in templates.
#[derive(Debug, Clone, Default)]
pub(crate) struct Seq(pub(crate) Chunked<Value>);

impl Object for Seq {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Seq
    }

    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        self.0.get(key.as_usize()?).cloned()
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        Enumerator::Seq(self.0.len())
    }
}

/// How many chunks a group holds (at most twice this before it splits).
/// Small in unit tests, so that their lists span several groups.
const GROUP: usize = if cfg!(test) { 3 } else { 32 };

/// A list in chunks of at most `2 * CHUNK` items, the chunks in groups of
/// at most `2 * GROUP`: a copy with one item changed copies one chunk, one
/// group (a reference count per chunk of that group) and the list of
/// groups (one per group), so about 100 reference counts for a list of
/// 10,000 items, not one per chunk (157) or per item. A list of one group
/// (up to about 2,000 items) is that group alone, without the level above.
pub(crate) struct Chunked<T>(Shape<T>);

enum Shape<T> {
    One(Group<T>),
    /// Each group with the index of its first item, and the length.
    Many(Vec<(usize, Arc<Group<T>>)>, usize),
}

impl<T> Clone for Chunked<T> {
    fn clone(&self) -> Self {
        Chunked(match &self.0 {
            Shape::One(g) => Shape::One(g.clone()),
            Shape::Many(gs, len) => Shape::Many(gs.clone(), *len),
        })
    }
}

impl<T> Default for Chunked<T> {
    fn default() -> Self {
        Chunked(Shape::One(Group::default()))
    }
}

impl<T: std::fmt::Debug> std::fmt::Debug for Chunked<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl<T> FromIterator<T> for Chunked<T> {
    fn from_iter<I: IntoIterator<Item = T>>(iter: I) -> Self {
        Chunked::grouped(iter.into_iter().collect())
    }
}

impl<T> From<Vec<T>> for Chunked<T> {
    fn from(v: Vec<T>) -> Self {
        v.into_iter().collect()
    }
}

impl<T> Chunked<T> {
    /// `g` as one group, or split into groups of `GROUP` chunks when it
    /// holds more than twice that.
    fn grouped(g: Group<T>) -> Chunked<T> {
        if g.chunks.len() <= 2 * GROUP {
            return Chunked(Shape::One(g));
        }
        let len = g.len;
        let mut groups = Vec::with_capacity(g.chunks.len().div_ceil(GROUP));
        let mut chunks = g.chunks.into_iter().peekable();
        while chunks.peek().is_some() {
            let part: Vec<_> = chunks.by_ref().take(GROUP).collect();
            groups.push((part[0].0, Arc::new(Group::rebased(part))));
        }
        Chunked(Shape::Many(groups, len))
    }

    pub(crate) fn len(&self) -> usize {
        match &self.0 {
            Shape::One(g) => g.len,
            Shape::Many(_, len) => *len,
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The group holding item `i` (which must exist), and the item's place
    /// in it.
    #[inline]
    fn locate_group(groups: &[(usize, Arc<Group<T>>)], i: usize) -> (usize, usize) {
        // Groups are mostly full: guess first, as `Group::locate` does.
        let g = i / (CHUNK * GROUP);
        if let Some((s, grp)) = groups.get(g) {
            if *s <= i && i - s < grp.len {
                return (g, i - s);
            }
        }
        let g = groups.partition_point(|&(s, _)| s <= i) - 1;
        (g, i - groups[g].0)
    }

    /// Item `i` (which must exist), for a walk through the list.
    #[inline(always)]
    pub(crate) fn at(&self, i: usize) -> &T {
        match &self.0 {
            Shape::One(g) => g.at(i),
            Shape::Many(gs, _) => {
                let (g, k) = Self::locate_group(gs, i);
                gs[g].1.at(k)
            }
        }
    }

    #[inline]
    pub(crate) fn get(&self, i: usize) -> Option<&T> {
        if i >= self.len() {
            return None;
        }
        Some(self.at(i))
    }

    /// The chunk holding item `i` (which must exist): its first item's
    /// index and its items.
    pub(crate) fn chunk_of(&self, i: usize) -> (usize, &[T]) {
        match &self.0 {
            Shape::One(g) => g.chunk_of(i),
            Shape::Many(gs, _) => {
                let (g, k) = Self::locate_group(gs, i);
                let (s, items) = gs[g].1.chunk_of(k);
                (gs[g].0 + s, items)
            }
        }
    }

    pub(crate) fn iter(&self) -> impl DoubleEndedIterator<Item = &T> + '_ {
        let (one, many) = match &self.0 {
            Shape::One(g) => (Some(g), &[][..]),
            Shape::Many(gs, _) => (None, gs.as_slice()),
        };
        one.into_iter()
            .flat_map(|g| g.iter())
            .chain(many.iter().flat_map(|(_, g)| g.iter()))
    }

    /// Every chunk, in order (for tests).
    #[cfg(test)]
    fn chunks(&self) -> Vec<&Arc<Vec<T>>> {
        match &self.0 {
            Shape::One(g) => g.chunks.iter().map(|(_, c)| c).collect(),
            Shape::Many(gs, _) => gs
                .iter()
                .flat_map(|(_, g)| g.chunks.iter().map(|(_, c)| c))
                .collect(),
        }
    }
}

impl<T: Clone> Chunked<T> {
    /// Changes the list through the group holding item `i` (`i == len`:
    /// the last group): `f` gets the group and the place in it. Then splits
    /// a group grown past `2 * GROUP` chunks, drops an emptied one and
    /// renumbers the groups after it.
    fn through<R>(&mut self, i: usize, f: impl FnOnce(&mut Group<T>, usize) -> R) -> R {
        match &mut self.0 {
            Shape::One(g) => {
                let r = f(g, i);
                if g.chunks.len() > 2 * GROUP {
                    let g = std::mem::take(g);
                    *self = Chunked::grouped(g);
                }
                r
            }
            Shape::Many(gs, len) => {
                let (g, k) = if i >= *len {
                    let g = gs.len() - 1;
                    (g, i - gs[g].0)
                } else {
                    Self::locate_group(gs, i)
                };
                let grp = Arc::make_mut(&mut gs[g].1);
                let r = f(grp, k);
                if grp.chunks.len() > 2 * GROUP {
                    let tail = grp.chunks.split_off(GROUP);
                    grp.restart(0);
                    gs.insert(g + 1, (0, Arc::new(Group::rebased(tail))));
                } else if grp.len == 0 && gs.len() > 1 {
                    gs.remove(g);
                }
                let mut s = match g {
                    0 => 0,
                    n => gs[n - 1].0 + gs[n - 1].1.len,
                };
                let from = g.min(gs.len());
                for (start, grp) in &mut gs[from..] {
                    *start = s;
                    s += grp.len;
                }
                *len = s;
                r
            }
        }
    }

    /// Replaces item `i` (which must exist).
    pub(crate) fn set(&mut self, i: usize, v: T) {
        self.through(i, |g, k| g.set(k, v));
    }

    /// Inserts before position `i` (`i == len` appends).
    pub(crate) fn insert(&mut self, i: usize, v: T) {
        self.through(i, |g, k| g.insert(k, v));
    }

    /// Removes item `i` (which must exist).
    pub(crate) fn remove(&mut self, i: usize) -> T {
        self.through(i, |g, k| g.remove(k))
    }
}

/// One level of chunks: each chunk with the index of its first item
/// (relative to the group).
struct Group<T> {
    /// Each chunk with the index of its first item (one vector, so that a
    /// short list costs two allocations: this and its one chunk).
    chunks: Vec<(usize, Arc<Vec<T>>)>,
    len: usize,
}

impl<T> Clone for Group<T> {
    fn clone(&self) -> Self {
        Group {
            chunks: self.chunks.clone(),
            len: self.len,
        }
    }
}

impl<T> Default for Group<T> {
    fn default() -> Self {
        Group {
            chunks: Vec::new(),
            len: 0,
        }
    }
}

impl<T> FromIterator<T> for Group<T> {
    fn from_iter<I: IntoIterator<Item = T>>(iter: I) -> Self {
        let mut iter = iter.into_iter();
        // A chunk is sized from what the iterator says is left, so that a
        // short list does not hold a whole chunk's room (64 items of a
        // 3-item list were most of an idle session's memory).
        // (A new chunk is made with an item in hand: room for it too.)
        let room = |iter: &I::IntoIter| iter.size_hint().0.saturating_add(1).min(CHUNK);
        let mut chunks = Vec::with_capacity(iter.size_hint().0.div_ceil(CHUNK).max(1));
        let mut cur = Vec::with_capacity(iter.size_hint().0.min(CHUNK));
        let mut len = 0;
        while let Some(item) = iter.next() {
            if cur.len() == CHUNK {
                let next = Vec::with_capacity(room(&iter));
                chunks.push((len - CHUNK, Arc::new(std::mem::replace(&mut cur, next))));
            }
            cur.push(item);
            len += 1;
        }
        if !cur.is_empty() {
            cur.shrink_to_fit();
            chunks.push((len - cur.len(), Arc::new(cur)));
        }
        chunks.shrink_to_fit();
        Group { chunks, len }
    }
}

impl<T> Group<T> {
    /// A group of `chunks` whose starts count from the first one.
    fn rebased(mut chunks: Vec<(usize, Arc<Vec<T>>)>) -> Group<T> {
        let base = chunks.first().map_or(0, |c| c.0);
        let mut len = 0;
        for (s, c) in &mut chunks {
            *s -= base;
            len = *s + c.len();
        }
        Group { chunks, len }
    }

    /// The chunk holding item `i`, and the item's place in it.
    #[inline]
    fn locate(&self, i: usize) -> (usize, usize) {
        // Most chunks are full, so item `i` is most often in chunk
        // `i / CHUNK`: a guess that spares the search on a walk through
        // the list.
        let g = i / CHUNK;
        if let Some((s, c)) = self.chunks.get(g) {
            if *s <= i && i - s < c.len() {
                return (g, i - s);
            }
        }
        self.search(i)
    }

    /// [`Group::locate`] when the guess missed.
    fn search(&self, i: usize) -> (usize, usize) {
        let c = self.chunks.partition_point(|&(s, _)| s <= i) - 1;
        (c, i - self.chunks[c].0)
    }

    /// The chunk holding item `i` (which must exist): its first item's
    /// index and its items.
    fn chunk_of(&self, i: usize) -> (usize, &[T]) {
        let (c, _) = self.locate(i);
        let (s, chunk) = &self.chunks[c];
        (*s, chunk.as_slice())
    }

    /// Item `i` (which must exist), with the guess of [`Group::locate`]
    /// inlined: for a walk through the list.
    #[inline(always)]
    fn at(&self, i: usize) -> &T {
        if let Some((s, c)) = self.chunks.get(i / CHUNK) {
            if let Some(v) = i.checked_sub(*s).and_then(|k| c.get(k)) {
                return v;
            }
        }
        let (c, k) = self.search(i);
        &self.chunks[c].1[k]
    }

    fn iter(&self) -> impl DoubleEndedIterator<Item = &T> + '_ {
        self.chunks.iter().flat_map(|(_, c)| c.iter())
    }

    /// Renumbers the chunks' starts from chunk `from` on.
    fn restart(&mut self, from: usize) {
        let mut s = match from {
            0 => 0,
            n => self.chunks[n - 1].0 + self.chunks[n - 1].1.len(),
        };
        for (start, c) in &mut self.chunks[from..] {
            *start = s;
            s += c.len();
        }
        self.len = s;
    }
}

impl<T: Clone> Group<T> {
    /// Replaces item `i` (which must exist).
    fn set(&mut self, i: usize, v: T) {
        let (c, at) = self.locate(i);
        Arc::make_mut(&mut self.chunks[c].1)[at] = v;
    }

    /// Inserts before position `i` (`i == len` appends).
    fn insert(&mut self, i: usize, v: T) {
        if self.chunks.is_empty() {
            self.chunks.push((0, Arc::new(vec![v])));
            self.len = 1;
            return;
        }
        let (c, at) = if i >= self.len {
            let c = self.chunks.len() - 1;
            (c, self.chunks[c].1.len())
        } else {
            self.locate(i)
        };
        let chunk = Arc::make_mut(&mut self.chunks[c].1);
        chunk.insert(at, v);
        if chunk.len() > 2 * CHUNK {
            let tail = chunk.split_off(CHUNK);
            self.chunks.insert(c + 1, (0, Arc::new(tail)));
        }
        self.restart(c);
    }

    /// Removes item `i` (which must exist).
    fn remove(&mut self, i: usize) -> T {
        let (c, at) = self.locate(i);
        let chunk = Arc::make_mut(&mut self.chunks[c].1);
        let v = chunk.remove(at);
        if chunk.is_empty() {
            self.chunks.remove(c);
        }
        self.restart(c.min(self.chunks.len()));
        v
    }
}

impl<T> std::ops::Index<usize> for Chunked<T> {
    type Output = T;
    #[inline]
    fn index(&self, i: usize) -> &T {
        match self.get(i) {
            Some(v) => v,
            None => panic!("index {i} out of a list of {}", self.len()),
        }
    }
}

impl<'a, T> IntoIterator for &'a Chunked<T> {
    type Item = &'a T;
    type IntoIter = Box<dyn DoubleEndedIterator<Item = &'a T> + 'a>;
    fn into_iter(self) -> Self::IntoIter {
        Box::new(self.iter())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Templates see a chunked list exactly as minijinja's own list.
    #[test]
    fn renders_as_a_vec() {
        let t = r#"{{ xs|length }} {{ xs[0] }} {{ xs[-1] }} {{ xs[1:3] }} {{ xs|first }} {{ xs|last }} {{ xs|reverse|list }} {{ xs == [0,1,2,3,4] }} {{ 3 in xs }} {% for x in xs %}{{ loop.revindex }}{{ loop.last }}{% endfor %} {{ xs|join(",") }} {{ xs|sum }} {{ xs is sequence }} {{ xs|batch(2)|list }} {{ xs|sort(reverse=true) }} {{ xs }} {{ xs|unique|list }} {{ xs|map("string")|list }} {{ not xs }} {% if xs %}y{% endif %}"#;
        let mut env = minijinja::Environment::new();
        env.add_template("t", t).unwrap();
        let t = env.get_template("t").unwrap();
        for n in [0usize, 5, 200] {
            let v: Vec<Value> = (0..n as i64).map(Value::from).collect();
            let as_vec = t.render(minijinja::context! { xs => Value::from(v.clone()) });
            let as_seq = t.render(minijinja::context! {
                xs => Value::from_object(Seq(v.into_iter().collect()))
            });
            assert_eq!(as_vec.unwrap(), as_seq.unwrap());
        }
    }

    /// A list holds no room for items it does not have: a 3-item list of
    /// an idle session's page once held a whole chunk (64 items).
    #[test]
    fn holds_no_spare_room() {
        let room = |c: &Chunked<u64>| c.chunks().iter().map(|c| c.capacity()).sum::<usize>();
        for n in [0usize, 1, 3, 63, 64, 65, 200] {
            let exact: Chunked<u64> = (0..n as u64).collect();
            assert_eq!(
                (exact.len(), room(&exact)),
                (n, n),
                "exact size hint, {n} items"
            );
            let unknown: Chunked<u64> = (0..2 * n as u64).filter(|x| x % 2 == 0).collect();
            assert_eq!(
                (unknown.len(), room(&unknown)),
                (n, n),
                "no size hint, {n} items"
            );
            if let Shape::One(g) = &exact.0 {
                assert!(g.chunks.capacity() <= n.div_ceil(CHUNK).max(1));
            }
        }
    }

    /// Inserts and removes crowded in one place: chunks split, groups
    /// split, a small list becomes grouped, emptied groups go, against a
    /// `Vec`, and a copy taken before is left alone.
    #[test]
    fn crowded_edits_split_and_drop_groups() {
        for (n, at) in [
            (0usize, 0usize),
            (10, 5),
            (500, 100),
            (500, 499),
            (3000, 1500),
        ] {
            let mut v: Vec<u32> = (0..n as u32).collect();
            let mut c: Chunked<u32> = v.clone().into();
            let copy = c.clone();
            let check = |c: &Chunked<u32>, v: &Vec<u32>, what: &str| {
                assert_eq!(c.len(), v.len(), "{what}");
                if let Shape::Many(gs, _) = &c.0 {
                    assert!(
                        gs.len() == 1 || gs.iter().all(|(_, g)| g.len > 0),
                        "{what}: an empty group is kept"
                    );
                }
                assert_eq!(c.iter().copied().collect::<Vec<_>>(), *v, "{what}");
                assert_eq!(
                    c.iter().rev().copied().collect::<Vec<_>>(),
                    v.iter().rev().copied().collect::<Vec<_>>(),
                    "{what}"
                );
                for (i, x) in v.iter().enumerate() {
                    assert_eq!(c.at(i), x, "{what}: at {i}");
                    let (s, items) = c.chunk_of(i);
                    assert_eq!(&items[i - s], x, "{what}: chunk of {i}");
                }
            };
            for k in 0..1500u32 {
                let i = at.min(v.len());
                v.insert(i, 100_000 + k);
                c.insert(i, 100_000 + k);
            }
            check(&c, &v, &format!("{n} items, 1,500 inserted at {at}"));
            assert!(matches!(c.0, Shape::Many(..)), "{n}: still one group");
            for k in 0..1500u32 {
                let i = at.saturating_sub(20).min(v.len() - 1);
                c.set(i, k);
                v[i] = k;
                assert_eq!(c.remove(i), v.remove(i));
            }
            check(&c, &v, &format!("{n} items, then 1,500 removed"));
            check(&copy, &(0..n as u32).collect(), "the copy");
        }
    }

    proptest! {
        /// Against a `Vec`: every operation, and the copies it leaves alone.
        #[test]
        fn behaves_as_a_vec(
            n in 0usize..1000,
            ops in prop::collection::vec((0u8..3, any::<usize>(), any::<u32>()), 0..60),
        ) {
            let mut v: Vec<u32> = (0..n as u32).collect();
            let mut c: Chunked<u32> = v.clone().into();
            let snapshot = c.clone();
            let before = v.clone();
            for (kind, at, x) in ops {
                match kind {
                    0 if !v.is_empty() => {
                        let i = at % v.len();
                        v[i] = x;
                        c.set(i, x);
                    }
                    1 => {
                        let i = at % (v.len() + 1);
                        v.insert(i, x);
                        c.insert(i, x);
                    }
                    _ if !v.is_empty() => {
                        let i = at % v.len();
                        prop_assert_eq!(v.remove(i), c.remove(i));
                    }
                    _ => {}
                }
                prop_assert_eq!(c.len(), v.len());
                prop_assert_eq!(c.iter().copied().collect::<Vec<_>>(), v.clone());
                for (i, x) in v.iter().enumerate() {
                    prop_assert_eq!(c.get(i), Some(x));
                }
                prop_assert_eq!(c.get(v.len()), None);
            }
            prop_assert_eq!(snapshot.iter().copied().collect::<Vec<_>>(), before);
        }
    }
}
