//! Walking a recursive loop (`Op::Recursive`) and its `{{ loop(x) }}`
//! calls (`Op::Recurse`). Each level is a list like any loop's (keyed
//! items, the same operations at the top level), but an item that changed
//! is not re-rendered whole: its body is walked with two pseudo paths
//! marked changed, the item's (if its value changed) and its `loop`'s (if
//! its place or neighbours changed), so only what reads them runs again.
//! A `loop(node.children)` reads the item, so it runs, and compares each
//! child with the old one: unchanged subtrees are reused. A change deep in
//! a tree re-renders the path from the root to it.
//!
//! Nested levels live inside items, which carry no anchors, so what
//! changed there is sent as the changed slots of the top-level item that
//! holds it (its subtree's dynamic values, never the statics or the page).

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, Weak};

use minijinja::value::Value;

use super::compile::{Deps, RecLoop, Synth};
use super::eval::{DeepLoop, Formats, LoopObj, Scope, eval_value};
use super::tree::{ItemOut, ListOut, SlotOut};
use super::{Change, Walk, bind_target, diff, item_keys};
use crate::error::{Error, Result};

impl Walk<'_> {
    /// The top level of a recursive loop.
    pub(super) fn recursive(
        &mut self,
        r: &RecLoop,
        scope: &Scope,
        prev: Option<&SlotOut>,
    ) -> Result<(SlotOut, Change)> {
        let f = &r.node;
        let old = match prev {
            Some(SlotOut::List(l)) => Some(l),
            _ => None,
        };
        if let Some(o) = old {
            if !self.affected(&f.iter_deps) && !self.affected(&f.body_deps) {
                return Ok((SlotOut::List(o.clone()), Change::None));
            }
        }
        let iterable = eval_value(self.env, &f.iter, scope)?;
        let (list, change) = self.level(r, &f.iter, iterable, 1, scope, old)?;
        Ok((SlotOut::List(list), change))
    }

    /// `{{ loop(arg) }}`: one level deeper.
    pub(super) fn recurse(
        &mut self,
        arg: &Synth,
        deps: &Deps,
        target: &OnceLock<Weak<RecLoop>>,
        scope: &Scope,
        prev: Option<&SlotOut>,
    ) -> Result<(SlotOut, Change)> {
        let old = match prev {
            Some(SlotOut::List(l)) => Some(l),
            _ => None,
        };
        if let Some(o) = old {
            if !self.affected(deps) {
                return Ok((SlotOut::List(o.clone()), Change::None));
            }
        }
        let r = target
            .get()
            .and_then(Weak::upgrade)
            .expect("`loop(…)` runs inside its loop");
        let depth = scope
            .lookup("loop")
            .and_then(|l| l.downcast_object_ref::<DeepLoop>().map(|d| d.depth))
            .unwrap_or(1);
        let iterable = eval_value(self.env, arg, scope)?;
        let (list, change) = self.level(&r, arg, iterable, depth + 1, scope, old)?;
        Ok((SlotOut::List(list), change))
    }

    /// One level of a recursive loop over `iterable`.
    fn level(
        &mut self,
        r: &RecLoop,
        origin: &Synth,
        iterable: Value,
        depth: usize,
        scope: &Scope,
        old: Option<&Arc<ListOut>>,
    ) -> Result<(Arc<ListOut>, Change)> {
        let f = &r.node;
        let anchor = if depth == 1 { f.anchor.clone() } else { None };
        let mut items: Vec<Value> = Vec::new();
        let mut sized = true;
        if !iterable.is_undefined() && !iterable.is_none() {
            let it = iterable.try_iter().map_err(|e| {
                Error::located(
                    e,
                    &origin.origin.name,
                    &origin.origin.source,
                    origin.line as usize,
                )
            })?;
            // As in minijinja, the loop filter applies to the top level
            // only: `loop(…)` re-enters the loop after it.
            let filter = f.filter.as_ref().filter(|_| depth == 1);
            let (lo, hi) = it.size_hint();
            sized = filter.is_some() || hi == Some(lo);
            for v in it {
                if let Some(filter) = filter {
                    let s = bind_target(scope, &f.target, f.unpack, v.clone())?;
                    if !eval_value(self.env, filter, &s)?.is_true() {
                        continue;
                    }
                }
                items.push(v);
            }
        }
        let keys = item_keys(f, &items);
        let len = items.len();
        let old_index: HashMap<&str, usize> = old
            .map(|o| {
                o.items
                    .iter()
                    .enumerate()
                    .map(|(i, it)| (&*it.key, i))
                    .collect()
            })
            .unwrap_or_default();
        let prev_of = |i: usize| {
            old_index
                .get(&*keys[i])
                .map(|&j| (j, &old.expect("old").items[j]))
        };
        // Which items changed value (a deep comparison: their subtrees).
        let changed_value: Vec<bool> = (0..len)
            .map(|i| prev_of(i).is_none_or(|(_, p)| !diff::same(&p.value, &items[i])))
            .collect();
        // What changed outside the loop. The pseudo paths of a level above
        // are shadowed here: this level's items are other items.
        let base: Vec<String> = self
            .changed
            .iter()
            .filter(|c| **c != *r.item_path && **c != *r.meta_path)
            .cloned()
            .collect();
        let roots_changed = f.body_deps.affected(&base);
        let mut new_items = Vec::with_capacity(len);
        let mut updates: Vec<(usize, Vec<usize>)> = Vec::new();
        for (i, (value, key)) in items.iter().zip(keys.iter()).enumerate() {
            let prev = prev_of(i);
            // Its place: index, length, and the neighbours `loop` shows.
            let moved = prev.is_none_or(|(j, p)| {
                let o = &old.expect("old").items;
                let same_neighbour = |new: Option<usize>, old: Option<usize>| match (new, old) {
                    (None, None) => true,
                    (Some(n), Some(m)) => keys[n] == o[m].key && !changed_value[n],
                    _ => false,
                };
                p.index as usize != i
                    || p.len as usize != len
                    || !same_neighbour(i.checked_sub(1), j.checked_sub(1))
                    || !same_neighbour(
                        (i + 1 < len).then_some(i + 1),
                        (j + 1 < o.len()).then_some(j + 1),
                    )
            });
            if let Some((_, p)) = prev {
                if !self.force && !changed_value[i] && !moved && !roots_changed {
                    new_items.push(ItemOut {
                        index: i as u32,
                        len: len as u32,
                        ..p.clone()
                    });
                    continue;
                }
            }
            let s = bind_target(scope, &f.target, f.unpack, value.clone())?;
            let lo = DeepLoop {
                inner: Arc::new(LoopObj {
                    index0: i,
                    len: sized.then_some(len),
                    prev: i.checked_sub(1).map(|j| items[j].clone()),
                    next: items.get(i + 1).cloned(),
                }),
                depth,
            };
            let s = s.bind("loop", Value::from_object(lo));
            let mut changed = base.clone();
            if changed_value[i] {
                changed.push(r.item_path.to_string());
            }
            if moved {
                changed.push(r.meta_path.to_string());
            }
            let mut w = Walk {
                env: self.env,
                fmt: Formats::new(self.env),
                changed: &changed,
                force: self.force || prev.is_none(),
                ops: Vec::new(),
                hints: None,
            };
            let res = w.body(&f.body, &s, prev.map(|(_, p)| &p.body));
            self.ops.append(&mut w.ops);
            let (body, dirty) = res?;
            if prev.is_some() && !dirty.is_empty() {
                updates.push((i, dirty));
            }
            new_items.push(ItemOut::new(key.clone(), value.clone(), body, i, len));
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
        let list = Arc::new(ListOut {
            anchor: anchor.clone(),
            items: new_items.into(),
            empty,
            // Recursive levels always take the full keyed diff.
            relative_keys: true,
            key_set: Default::default(),
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
        if updates.is_empty()
            && old_keys == new_keys
            && !empty_changed
            && old
                .items
                .iter()
                .zip(&list.items)
                .all(|(a, b)| Arc::ptr_eq(&a.body, &b.body))
        {
            return Ok((list, Change::None));
        }
        let steps = diff::list_steps(&old_keys, &new_keys);
        Ok(self.emit_list(anchor, old, list, empty_changed, steps, updates))
    }
}
