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

pub(crate) struct Chunked<T> {
    /// Each chunk with the index of its first item (one vector, so that a
    /// short list costs two allocations: this and its one chunk).
    chunks: Vec<(usize, Arc<Vec<T>>)>,
    len: usize,
}

impl<T> Clone for Chunked<T> {
    fn clone(&self) -> Self {
        Chunked {
            chunks: self.chunks.clone(),
            len: self.len,
        }
    }
}

impl<T> Default for Chunked<T> {
    fn default() -> Self {
        Chunked {
            chunks: Vec::new(),
            len: 0,
        }
    }
}

impl<T: std::fmt::Debug> std::fmt::Debug for Chunked<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl<T> FromIterator<T> for Chunked<T> {
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
        Chunked { chunks, len }
    }
}

impl<T> From<Vec<T>> for Chunked<T> {
    fn from(v: Vec<T>) -> Self {
        v.into_iter().collect()
    }
}

impl<T> Chunked<T> {
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
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

    /// [`Chunked::locate`] when the guess missed.
    fn search(&self, i: usize) -> (usize, usize) {
        let c = self.chunks.partition_point(|&(s, _)| s <= i) - 1;
        (c, i - self.chunks[c].0)
    }

    /// The chunk holding item `i` (which must exist): its first item's
    /// index and its items.
    pub(crate) fn chunk_of(&self, i: usize) -> (usize, &[T]) {
        let (c, _) = self.locate(i);
        let (s, chunk) = &self.chunks[c];
        (*s, chunk.as_slice())
    }

    /// Item `i` (which must exist), with the guess of [`Chunked::locate`]
    /// inlined: for a walk through the list.
    #[inline(always)]
    pub(crate) fn at(&self, i: usize) -> &T {
        if let Some((s, c)) = self.chunks.get(i / CHUNK) {
            if let Some(v) = i.checked_sub(*s).and_then(|k| c.get(k)) {
                return v;
            }
        }
        let (c, k) = self.search(i);
        &self.chunks[c].1[k]
    }

    #[inline]
    pub(crate) fn get(&self, i: usize) -> Option<&T> {
        if i >= self.len {
            return None;
        }
        let (c, at) = self.locate(i);
        self.chunks[c].1.get(at)
    }

    pub(crate) fn iter(&self) -> impl DoubleEndedIterator<Item = &T> + '_ {
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

impl<T: Clone> Chunked<T> {
    /// Replaces item `i` (which must exist).
    pub(crate) fn set(&mut self, i: usize, v: T) {
        let (c, at) = self.locate(i);
        Arc::make_mut(&mut self.chunks[c].1)[at] = v;
    }

    /// Inserts before position `i` (`i == len` appends).
    pub(crate) fn insert(&mut self, i: usize, v: T) {
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
    pub(crate) fn remove(&mut self, i: usize) -> T {
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
            None => panic!("index {i} out of a list of {}", self.len),
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
        let room = |c: &Chunked<u64>| c.chunks.iter().map(|(_, c)| c.capacity()).sum::<usize>();
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
            assert!(exact.chunks.capacity() <= n.div_ceil(CHUNK).max(1));
        }
    }

    proptest! {
        /// Against a `Vec`: every operation, and the copies it leaves alone.
        #[test]
        fn behaves_as_a_vec(
            n in 0usize..300,
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
