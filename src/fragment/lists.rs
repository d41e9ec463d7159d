//! Loops: a changed loop's new items against the old rendered list. Three
//! ways, cheapest first: the delta's positions (`list_hinted`), identity
//! alignment (`list_fast`), and the full keyed diff (`list`).

use std::collections::HashMap;
use std::sync::Arc;

use minijinja::value::{Value, ValueKind};

use super::compile::{ForNode, LOOP_META, LOOP_NEIGHBORS};
use super::eval::{LoopObj, Scope, eval_value};
use super::tree::{BodyOut, ItemOut, KeySet, ListOut};
use super::{Change, PatchOp, Walk, bind_target, chunked, delta, diff, ingest};
use crate::error::{Error, Result};

impl Walk<'_> {
    pub(super) fn list(
        &mut self,
        f: &ForNode,
        scope: &Scope,
        old: Option<&Arc<ListOut>>,
    ) -> Result<(Arc<ListOut>, Change)> {
        if let Some(o) = old {
            if !self.affected(&f.iter_deps) && !self.affected(&f.body_deps) {
                return Ok((o.clone(), Change::None));
            }
        }
        let iterable = eval_value(self.env, &f.iter, scope)?;
        let mut owned: Vec<Value> = Vec::new();
        let body_all = self.force || self.affected(&f.body_deps);
        // A list of the data, changed where the delta says: only those
        // items are looked at.
        if let (Some(o), false) = (old, body_all) {
            let hinted = match (&f.plain_path, self.hints) {
                (Some(p), Some(h)) if f.loop_flags == 0 && f.filter.is_none() => h.get(p),
                _ => None,
            };
            if let Some(hints) = hinted {
                if let Some(r) = self.list_hinted(f, scope, o, &iterable, hints)? {
                    return Ok(r);
                }
            }
        }
        // A list from the data: its items as they are, without iterating.
        let shared = match &f.filter {
            None => iterable.downcast_object_ref::<Vec<Value>>(),
            Some(_) => None,
        };
        let mut sized = true;
        if let (None, None, Some(c)) = (
            shared,
            &f.filter,
            iterable.downcast_object_ref::<chunked::Seq>(),
        ) {
            owned.extend(c.0.iter().cloned());
        } else if shared.is_none() && !iterable.is_undefined() && !iterable.is_none() {
            let it = iterable.try_iter().map_err(|e| {
                Error::located(
                    e,
                    &f.iter.origin.name,
                    &f.iter.origin.source,
                    f.iter.line as usize,
                )
            })?;
            let (lo, hi) = it.size_hint();
            sized = f.filter.is_some() || hi == Some(lo);
            for v in it {
                if let Some(filter) = &f.filter {
                    let s = bind_target(scope, &f.target, f.unpack, v.clone())?;
                    if !eval_value(self.env, filter, &s)?.is_true() {
                        continue;
                    }
                }
                owned.push(v);
            }
        }
        let items: &[Value] = match shared {
            Some(v) => v,
            None => &owned,
        };
        if let (Some(o), false) = (old, body_all) {
            if f.loop_flags == 0 {
                if let Some(r) = self.list_fast(f, scope, o, items)? {
                    return Ok(r);
                }
            }
        }
        let keys = item_keys(f, items);
        let len = items.len();
        let meta = f.loop_flags & LOOP_META != 0;
        let neighbors = f.loop_flags & LOOP_NEIGHBORS != 0;
        let old_index: HashMap<&str, usize> = old
            .map(|o| {
                o.items
                    .iter()
                    .enumerate()
                    .map(|(i, it)| (&*it.key, i))
                    .collect()
            })
            .unwrap_or_default();
        let mut new_items = Vec::with_capacity(len);
        let mut updates: Vec<(usize, Vec<usize>)> = Vec::new();
        for (i, (value, key)) in items.iter().zip(keys).enumerate() {
            let prev = old_index.get(&*key).map(|&j| &old.expect("old").items[j]);
            if let Some(p) = prev {
                let reuse = !body_all
                    && !neighbors
                    && diff::same(&p.value, value)
                    && (!meta || (p.index as usize == i && p.len as usize == len));
                if reuse {
                    new_items.push(p.at(i, len));
                    continue;
                }
            }
            let s = bind_target(scope, &f.target, f.unpack, value.clone())?;
            let lo = LoopObj {
                index0: i,
                len: sized.then_some(len),
                prev: i.checked_sub(1).map(|j| items[j].clone()),
                next: items.get(i + 1).cloned(),
            };
            let s = s.bind("loop", Value::from_object(lo));
            let saved = self.force;
            self.force = true;
            let r = self.body(&f.body, &s, prev.map(|p| &p.body));
            self.force = saved;
            let (body, dirty) = r?;
            if prev.is_some() && !dirty.is_empty() {
                updates.push((i, dirty));
            }
            new_items.push(ItemOut::new(key, value.clone(), body, i, len));
        }
        let empty = if len == 0
            && !(f.else_body.ops.is_empty() && f.else_body.statics.parts[0].is_empty())
        {
            let prev = old.and_then(|o| o.empty.as_ref());
            let saved = self.force;
            self.force = true;
            let r = self.body(&f.else_body, scope, prev);
            self.force = saved;
            Some(r?.0)
        } else {
            None
        };
        let relative_keys = new_items
            .iter()
            .zip(items)
            .any(|(it, v)| it.key.contains('~') || key_attr(f, v).is_none());
        let list = Arc::new(ListOut {
            anchor: f.anchor.clone(),
            items: new_items.into(),
            empty,
            relative_keys,
            key_set: KeySet::default(),
        });
        let Some(old) = old else {
            return Ok((list, Change::None));
        };
        let old_keys: Vec<&str> = old.items.iter().map(|i| &*i.key).collect();
        let new_keys: Vec<&str> = list.items.iter().map(|i| &*i.key).collect();
        let empty_changed = match (&old.empty, &list.empty) {
            (None, None) => false,
            (Some(a), Some(b)) => !Arc::ptr_eq(a, b),
            _ => true,
        };
        if updates.is_empty() && old_keys == new_keys && !empty_changed {
            let same_bodies = old
                .items
                .iter()
                .zip(&list.items)
                .all(|(a, b)| Arc::ptr_eq(&a.body, &b.body));
            if same_bodies {
                // Nothing to send. But if how the items are keyed changed
                // (an item lost its key and is keyed by its place), the page
                // must keep this list, not the old one: the fast paths
                // trust that flag. `Emitted` with no operation does that.
                let change = if list.relative_keys != old.relative_keys {
                    Change::Emitted
                } else {
                    Change::None
                };
                return Ok((list, change));
            }
        }
        let steps = diff::list_steps(&old_keys, &new_keys);
        Ok(self.emit_list(f.anchor.clone(), old, list, empty_changed, steps, updates))
    }

    /// The operations of a changed keyed list (shared with recursive
    /// loops): the whole list when it went from empty to not or back, else
    /// its keyed steps and its items' changed slots. An unanchored list
    /// leaves it to its parent.
    pub(super) fn emit_list(
        &mut self,
        anchor: Option<Arc<str>>,
        old: &ListOut,
        list: Arc<ListOut>,
        empty_changed: bool,
        steps: Vec<diff::ListStep>,
        updates: Vec<(usize, Vec<usize>)>,
    ) -> (Arc<ListOut>, Change) {
        let Some(anchor) = anchor else {
            return (list, Change::Dirty);
        };
        if empty_changed {
            self.ops.push(PatchOp::List {
                id: anchor,
                list: list.clone(),
            });
            return (list, Change::Emitted);
        }
        let key = |i: usize| list.items[i].key.clone();
        for step in steps {
            self.ops.push(match step {
                diff::ListStep::Remove(i) => PatchOp::Remove {
                    list: anchor.clone(),
                    key: old.items[i].key.clone(),
                },
                diff::ListStep::Insert { index, after } => PatchOp::Insert {
                    list: anchor.clone(),
                    key: key(index),
                    after: after.map(key),
                    body: list.items[index].body.clone(),
                },
                diff::ListStep::Move { index, after } => PatchOp::Move {
                    list: anchor.clone(),
                    key: key(index),
                    after: after.map(key),
                },
            });
        }
        self.emit_slots(&anchor, &list, updates);
        (list, Change::Emitted)
    }

    /// Each changed item's changed slots, as a sparse patch of the item.
    /// Slots that output a loop counter as it is (`{{ loop.index }}`) are
    /// left to one renumbering of the list from the first such change, which
    /// the client computes from positions: a shift costs one operation.
    fn emit_slots(&mut self, anchor: &str, list: &ListOut, updates: Vec<(usize, Vec<usize>)>) {
        // Each update's slots less those a renumbering would set (`None`:
        // all of them, the body shows no loop counter).
        let mut kept: Vec<(usize, Vec<usize>, Option<Vec<usize>>)> =
            Vec::with_capacity(updates.len());
        let mut renumbered: Vec<(Arc<str>, Arc<BodyOut>)> = Vec::new();
        let mut from = usize::MAX;
        for (i, slots) in updates {
            let item = &list.items[i];
            let counters = &item.body.statics.counters;
            if counters.is_empty() {
                kept.push((i, slots, None));
                continue;
            }
            let mut rest = slots.clone();
            rest.retain(|s| {
                let c = counters[*s];
                // Only where the render is what the client will compute.
                let computed = c != 0
                    && matches!(&item.body.slots[*s], super::tree::SlotOut::Text(t)
                        if **t == *super::compile::counter::value(c, i).to_string());
                !computed
            });
            if rest.len() < slots.len() {
                from = from.min(i);
                if rest.is_empty() {
                    // (An item with other changes gets its whole HTML
                    // from its own patch in the seed-style updates.)
                    renumbered.push((item.key.clone(), item.body.clone()));
                }
            }
            kept.push((i, slots, Some(rest)));
        }
        // When every item whose counters moved is patched anyway, its
        // counters ride along and no renumbering is sent.
        let renumber = !renumbered.is_empty();
        for (i, slots, rest) in kept {
            let slots = match rest {
                Some(rest) if renumber => rest,
                _ => slots,
            };
            if slots.is_empty() {
                continue;
            }
            self.ops.push(PatchOp::Slots {
                id: format!("{anchor}:{}", list.items[i].key),
                body: list.items[i].body.clone(),
                slots,
            });
        }
        if renumber {
            self.ops.push(PatchOp::Renumber {
                list: anchor.into(),
                from,
                items: renumbered,
            });
        }
    }

    /// A changed loop whose body reads nothing else that changed and no
    /// `loop` variable: aligns the new items with the old ones by identity
    /// (the ingest keeps unchanged items the same objects), so only the
    /// items that differ are keyed and rendered. `None` when the change is
    /// not a few inserts, removals and in-place changes (then the full
    /// keyed diff runs).
    fn list_fast(
        &mut self,
        f: &ForNode,
        scope: &Scope,
        old: &Arc<ListOut>,
        items: &[Value],
    ) -> Result<Option<(Arc<ListOut>, Change)>> {
        const BUDGET: usize = 16;
        let olds = &old.items;
        if old.empty.is_some() || items.is_empty() || olds.is_empty() {
            return Ok(None);
        }
        let len = items.len();
        let mut new_items: Vec<ItemOut> = Vec::with_capacity(len);
        let mut removes: Vec<usize> = Vec::new();
        let mut inserts: Vec<usize> = Vec::new();
        // In-place changes: (new index, old index).
        let mut changed: Vec<(usize, usize)> = Vec::new();
        let (mut i, mut j) = (0, 0);
        while i < len {
            if j < olds.len() && ingest::identical(&items[i], &olds[j].value) {
                new_items.push(olds[j].at(i, len));
                i += 1;
                j += 1;
                continue;
            }
            if removes.len() + inserts.len() + changed.len() >= BUDGET {
                return Ok(None);
            }
            if j + 1 < olds.len() && ingest::identical(&items[i], &olds[j + 1].value) {
                removes.push(j);
                j += 1;
                continue;
            }
            let insert = j >= olds.len()
                || (i + 1 < len && ingest::identical(&items[i + 1], &olds[j].value));
            let key: Arc<str> = match key_attr(f, &items[i]) {
                Some(k) => k.into(),
                None if old.relative_keys && !insert => format!("{i}").into(),
                None => return Ok(None),
            };
            if !insert && key == olds[j].key {
                changed.push((i, j));
                new_items.push(ItemOut::new(
                    key,
                    items[i].clone(),
                    olds[j].body.clone(),
                    i,
                    len,
                ));
                i += 1;
                j += 1;
                continue;
            }
            if !insert {
                removes.push(j);
                j += 1;
            }
            inserts.push(i);
            new_items.push(ItemOut::new(
                key,
                items[i].clone(),
                old.items[0].body.clone(),
                i,
                len,
            ));
            i += 1;
        }
        removes.extend(j..olds.len());
        if old.relative_keys && (!removes.is_empty() || !inserts.is_empty()) {
            return Ok(None);
        }
        // Inserted keys must be new: a key that exists elsewhere is a move,
        // or a duplicate, which the full diff handles.
        let keys = if removes.is_empty() && inserts.is_empty() {
            old.key_set.pass()
        } else {
            let mut keys = old.key_set.take(olds);
            for &n in &inserts {
                if !keys.insert(new_items[n].key.clone()) {
                    // Put back what was there: the set stays with the old
                    // list, which is still the current one.
                    for &m in inserts.iter().take_while(|&&m| m != n) {
                        keys.remove(&new_items[m].key);
                    }
                    *old.key_set.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(keys);
                    return Ok(None);
                }
            }
            for &r in &removes {
                keys.remove(&olds[r].key);
            }
            Some(keys)
        };
        // Render what is new or changed.
        let mut updates: Vec<(usize, Vec<usize>)> = Vec::new();
        let todo = inserts.iter().map(|&n| (n, None));
        for (n, was) in todo.chain(changed.iter().map(|&(n, j)| (n, Some(j)))) {
            let s = bind_target(scope, &f.target, f.unpack, items[n].clone())?;
            let lo = LoopObj {
                index0: n,
                len: Some(len),
                prev: None,
                next: None,
            };
            let s = s.bind("loop", Value::from_object(lo));
            let prev = was.map(|j| &olds[j].body);
            let saved = self.force;
            self.force = true;
            let r = self.body(&f.body, &s, prev);
            self.force = saved;
            let (body, dirty) = r?;
            if was.is_some() && !dirty.is_empty() {
                updates.push((n, dirty));
            }
            let key = new_items[n].key.clone();
            new_items[n] = ItemOut::new(key, items[n].clone(), body, n, len);
        }
        let list = Arc::new(ListOut {
            anchor: f.anchor.clone(),
            items: new_items.into(),
            empty: None,
            relative_keys: old.relative_keys,
            key_set: KeySet::new(keys),
        });
        let structural = !removes.is_empty() || !inserts.is_empty();
        if !structural
            && updates.is_empty()
            && changed
                .iter()
                .all(|&(n, j)| Arc::ptr_eq(&olds[j].body, &list.items[n].body))
        {
            // Changed values that render the same.
            return Ok(Some((list, Change::None)));
        }
        let Some(anchor) = f.anchor.clone() else {
            return Ok(Some((list, Change::Dirty)));
        };
        for &r in &removes {
            self.ops.push(PatchOp::Remove {
                list: anchor.clone(),
                key: olds[r].key.clone(),
            });
        }
        for &n in &inserts {
            self.ops.push(PatchOp::Insert {
                list: anchor.clone(),
                key: list.items[n].key.clone(),
                after: n.checked_sub(1).map(|a| list.items[a].key.clone()),
                body: list.items[n].body.clone(),
            });
        }
        self.emit_slots(&anchor, &list, updates);
        Ok(Some((list, Change::Emitted)))
    }

    /// A changed loop over a list of the data as it is, when the delta says
    /// which items changed: only those are looked at. `None` when the hints
    /// do not fit (then the identity walk runs).
    fn list_hinted(
        &mut self,
        f: &ForNode,
        scope: &Scope,
        old: &Arc<ListOut>,
        iterable: &Value,
        hints: &[delta::Hint],
    ) -> Result<Option<(Arc<ListOut>, Change)>> {
        use delta::Hint;
        if old.empty.is_some() || old.relative_keys || old.items.is_empty() {
            return Ok(None);
        }
        // An empty list renders the `else` body: the full walk does that.
        let Some(len) = iterable
            .len()
            .filter(|&n| n > 0 && iterable.kind() == ValueKind::Seq)
        else {
            return Ok(None);
        };
        let expected = hints.iter().fold(old.items.len() as isize, |n, h| match h {
            Hint::Set(_) => n,
            Hint::Insert(_) => n + 1,
            Hint::Remove(_) => n - 1,
        });
        if expected != len as isize {
            return Ok(None);
        }
        let item = |i: usize| iterable.get_item_by_index(i).map_err(Error::from_template);
        let mut items = old.items.clone();
        let mut updates: Vec<(usize, Vec<usize>)> = Vec::new();
        let mut ops: Vec<PatchOp> = Vec::new();
        let mut changed_body = false;
        let anchor = f.anchor.clone();
        let mut keys = None;
        match hints {
            [Hint::Remove(i)] => {
                let Some(gone) = old.items.get(*i) else {
                    return Ok(None);
                };
                let mut set = old.key_set.take(&old.items);
                set.remove(&gone.key);
                keys = Some(set);
                if let Some(a) = &anchor {
                    ops.push(PatchOp::Remove {
                        list: a.clone(),
                        key: gone.key.clone(),
                    });
                }
                items.remove(*i);
            }
            [Hint::Insert(i)] => {
                let v = item(*i)?;
                let Some(key) = key_attr(f, &v) else {
                    return Ok(None);
                };
                let key: Arc<str> = key.into();
                let mut set = old.key_set.take(&old.items);
                if !set.insert(key.clone()) {
                    *old.key_set.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(set);
                    return Ok(None);
                }
                keys = Some(set);
                let body = self.item_body(f, scope, &v, *i, len, None)?.0;
                if let Some(a) = &anchor {
                    ops.push(PatchOp::Insert {
                        list: a.clone(),
                        key: key.clone(),
                        after: i.checked_sub(1).map(|p| old.items[p].key.clone()),
                        body: body.clone(),
                    });
                }
                items.insert(*i, ItemOut::new(key, v, body, *i, len));
            }
            sets => {
                let mut done: Vec<usize> = Vec::new();
                for h in sets {
                    let Hint::Set(i) = *h else { return Ok(None) };
                    if done.contains(&i) {
                        continue;
                    }
                    done.push(i);
                    let Some(prev) = old.items.get(i) else {
                        return Ok(None);
                    };
                    let v = item(i)?;
                    if key_attr(f, &v).as_deref() != Some(&*prev.key) {
                        return Ok(None);
                    }
                    let (body, dirty) = self.item_body(f, scope, &v, i, len, Some(&prev.body))?;
                    if !Arc::ptr_eq(&body, &prev.body) {
                        changed_body = true;
                    }
                    if !dirty.is_empty() {
                        updates.push((i, dirty));
                    }
                    items.set(i, ItemOut::new(prev.key.clone(), v, body, i, len));
                }
                keys = keys.or_else(|| old.key_set.pass());
            }
        }
        let structural = !ops.is_empty() || matches!(hints, [Hint::Insert(_) | Hint::Remove(_)]);
        let list = Arc::new(ListOut {
            anchor: anchor.clone(),
            items,
            empty: None,
            relative_keys: false,
            key_set: KeySet::new(keys),
        });
        if !structural && updates.is_empty() && !changed_body {
            return Ok(Some((list, Change::None)));
        }
        let Some(anchor) = anchor else {
            return Ok(Some((list, Change::Dirty)));
        };
        self.ops.extend(ops);
        self.emit_slots(&anchor, &list, updates);
        Ok(Some((list, Change::Emitted)))
    }

    /// Renders one loop item's body (against `prev` when it had one).
    fn item_body(
        &mut self,
        f: &ForNode,
        scope: &Scope,
        v: &Value,
        index: usize,
        len: usize,
        prev: Option<&Arc<BodyOut>>,
    ) -> Result<(Arc<BodyOut>, Vec<usize>)> {
        let s = bind_target(scope, &f.target, f.unpack, v.clone())?;
        let lo = LoopObj {
            index0: index,
            len: Some(len),
            prev: None,
            next: None,
        };
        let s = s.bind("loop", Value::from_object(lo));
        let saved = self.force;
        self.force = true;
        let r = self.body(&f.body, &s, prev);
        self.force = saved;
        r
    }
}

/// Keys for a loop's items: the `keyed` attribute, else `id`, else the
/// position; made safe for comment markers and unique.
pub(super) fn item_keys(f: &ForNode, items: &[Value]) -> Vec<Arc<str>> {
    let mut seen: HashMap<String, u32> = HashMap::new();
    items
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let mut key = key_attr(f, v).unwrap_or_else(|| format!("{i}"));
            let n = seen.entry(key.clone()).or_insert(0);
            *n += 1;
            if *n > 1 {
                key = format!("{key}~{n}");
            }
            Arc::from(key)
        })
        .collect()
}

/// An item's own key (from its `keyed` attribute or `id`), encoded; `None`
/// when it has none and is keyed by its position.
pub(super) fn key_attr(f: &ForNode, v: &Value) -> Option<String> {
    if v.kind() != ValueKind::Map {
        return None;
    }
    let attr = f.key.as_deref().unwrap_or("id");
    v.get_attr(attr)
        .ok()
        .filter(|k| !k.is_undefined() && !k.is_none())
        .map(|k| key_text(&k))
}

/// A key value as text, encoded: what `encode_key(&k.to_string())` gives.
fn key_text(k: &Value) -> String {
    let mut out = String::new();
    push_key_value(k, &mut out);
    out
}

/// [`key_text`], appended to `out`, without the formatting machinery for
/// the common keys: a string is encoded as it is, and an integer's digits
/// never need escaping.
pub(super) fn push_key_value(k: &Value, out: &mut String) {
    if k.kind() == ValueKind::String
        && let Some(s) = k.as_str()
    {
        return push_key(s, out);
    }
    if k.is_integer()
        && let Some(i) = k.as_i64()
    {
        return push_int(i, out);
    }
    push_key(&k.to_string(), out);
}

/// An integer's decimal digits (as `Display` writes them), appended to
/// `out` without the formatting machinery: most keys are integer ids.
pub(super) fn push_int(i: i64, out: &mut String) {
    let mut buf = [0u8; 20];
    let mut at = buf.len();
    let mut n = i.unsigned_abs();
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    if i < 0 {
        out.push('-');
    }
    out.extend(buf[at..].iter().map(|&d| d as char));
}

/// A key as it travels in item markers (`<!--:KEY-->`) and frames: letters,
/// digits, `_`, `.`, `:` and `-` as they are; any other byte as `%XX`. A
/// `-` is escaped only where a comment could not hold it: before another
/// `-` or at the end (`--` and `-->`). `~` is escaped, so the `~2` that
/// makes a duplicate key unique cannot be confused with a key's own text.
pub(super) fn encode_key(k: &str) -> String {
    let mut out = String::with_capacity(k.len());
    push_key(k, &mut out);
    out
}

/// [`encode_key`], appended to `out`.
pub(super) fn push_key(k: &str, out: &mut String) {
    let b = k.as_bytes();
    if b.iter().enumerate().all(|(i, c)| plain(b, i, *c)) {
        out.push_str(k);
        return;
    }
    for (i, c) in b.iter().enumerate() {
        if plain(b, i, *c) {
            out.push(*c as char);
        } else {
            use std::fmt::Write;
            let _ = write!(out, "%{c:02X}");
        }
    }
}

fn plain(b: &[u8], i: usize, c: u8) -> bool {
    c.is_ascii_alphanumeric()
        || matches!(c, b'_' | b'.' | b':')
        || c == b'-' && i + 1 < b.len() && b[i + 1] != b'-'
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fast paths give what `Display` and `encode_key` give.
    #[test]
    fn key_text_is_the_encoded_display() {
        let values = [
            Value::from(0),
            Value::from(7),
            Value::from(-1),
            Value::from(i64::MAX),
            Value::from(i64::MIN),
            Value::from(u64::MAX),
            Value::from(1.5),
            Value::from(true),
            Value::from("todo-3"),
            Value::from("a--b~2 c"),
            Value::from(""),
            Value::from_safe_string("<b>".into()),
        ];
        for v in values {
            assert_eq!(key_text(&v), encode_key(&v.to_string()), "{v:?}");
        }
        for i in [
            0i64,
            9,
            10,
            99,
            100,
            -9,
            -10,
            1234567890123,
            i64::MIN,
            i64::MAX,
        ] {
            let mut s = String::new();
            push_int(i, &mut s);
            assert_eq!(s, i.to_string());
        }
    }
}
