//! Comparing data snapshots, and ordering a keyed list's changes.

use std::collections::HashMap;

use minijinja::value::{Value, ValueKind};

/// Strict deep equality: equal values that would render differently
/// (`1` and `1.0`, a string and a safe string) count as different.
pub(crate) fn same(a: &Value, b: &Value) -> bool {
    if a.kind() != b.kind() {
        return false;
    }
    match a.kind() {
        ValueKind::Map => {
            let (Some(la), Some(lb)) = (a.len(), b.len()) else {
                return a == b;
            };
            if la != lb {
                return false;
            }
            let Ok(keys) = a.try_iter() else {
                return a == b;
            };
            for k in keys {
                match (a.get_item(&k), b.get_item(&k)) {
                    (Ok(x), Ok(y)) if same(&x, &y) => {}
                    _ => return false,
                }
            }
            true
        }
        ValueKind::Seq | ValueKind::Iterable => {
            if a.len() != b.len() {
                return false;
            }
            match (a.try_iter(), b.try_iter()) {
                (Ok(x), Ok(y)) => x.zip(y).all(|(x, y)| same(&x, &y)),
                _ => a == b,
            }
        }
        ValueKind::Number => a == b && a.is_integer() == b.is_integer(),
        ValueKind::String => a == b && a.is_safe() == b.is_safe(),
        _ => a == b,
    }
}

/// The dotted paths at which `new` differs from `old`. Maps are walked;
/// anything else that differs is reported whole. `""` means everything.
#[cfg(test)]
pub(crate) fn changed_paths(old: &Value, new: &Value) -> Vec<String> {
    let mut out = Vec::new();
    if old.kind() == ValueKind::Map && new.kind() == ValueKind::Map {
        walk(old, new, &mut String::new(), &mut out);
    } else if !same(old, new) {
        out.push(String::new());
    }
    out
}

#[cfg(test)]
fn walk(old: &Value, new: &Value, prefix: &mut String, out: &mut Vec<String>) {
    let keys = |v: &Value| -> Vec<Value> { v.try_iter().map(|i| i.collect()).unwrap_or_default() };
    let old_keys = keys(old);
    let mut new_keys = keys(new);
    new_keys.retain(|k| !old_keys.contains(k));
    for k in old_keys.iter().chain(new_keys.iter()) {
        let a = old.get_item(k).unwrap_or(Value::UNDEFINED);
        let b = new.get_item(k).unwrap_or(Value::UNDEFINED);
        let len = prefix.len();
        if !prefix.is_empty() {
            prefix.push('.');
        }
        prefix.push_str(&k.to_string());
        if a.kind() == ValueKind::Map && b.kind() == ValueKind::Map {
            walk(&a, &b, prefix, out);
        } else if !same(&a, &b) {
            out.push(prefix.clone());
        }
        prefix.truncate(len);
    }
}

/// One step that turns an old key order into a new one. Applied in order:
/// removals first, then inserts and moves left to right.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ListStep {
    Remove(usize),
    /// Insert new item `index` after new item `after` (or first).
    Insert {
        index: usize,
        after: Option<usize>,
    },
    /// Move new item `index` (which existed before) after new item `after`.
    Move {
        index: usize,
        after: Option<usize>,
    },
}

/// Keyed list diff. Returns steps naming old indices (removals) and new
/// indices (inserts and moves). Items kept in place are those on a longest
/// increasing subsequence of old positions, so the number of moves is minimal.
pub(crate) fn list_steps(old: &[&str], new: &[&str]) -> Vec<ListStep> {
    let new_pos: HashMap<&str, usize> = new.iter().enumerate().map(|(i, k)| (*k, i)).collect();
    let old_pos: HashMap<&str, usize> = old.iter().enumerate().map(|(i, k)| (*k, i)).collect();
    let mut steps: Vec<ListStep> = old
        .iter()
        .enumerate()
        .filter(|(_, k)| !new_pos.contains_key(*k))
        .map(|(i, _)| ListStep::Remove(i))
        .collect();
    // Old positions of surviving items, in new order.
    let survivors: Vec<(usize, usize)> = new
        .iter()
        .enumerate()
        .filter_map(|(i, k)| old_pos.get(k).map(|o| (i, *o)))
        .collect();
    let keep = lis(&survivors.iter().map(|(_, o)| *o).collect::<Vec<_>>());
    let mut stays = vec![false; new.len()];
    for idx in keep {
        stays[survivors[idx].0] = true;
    }
    for (i, k) in new.iter().enumerate() {
        let after = i.checked_sub(1);
        if !old_pos.contains_key(k) {
            steps.push(ListStep::Insert { index: i, after });
        } else if !stays[i] {
            steps.push(ListStep::Move { index: i, after });
        }
    }
    steps
}

/// Indices of one longest strictly increasing subsequence.
fn lis(seq: &[usize]) -> Vec<usize> {
    let mut tails: Vec<usize> = Vec::new();
    let mut prev = vec![usize::MAX; seq.len()];
    for (i, &x) in seq.iter().enumerate() {
        let p = tails.partition_point(|&t| seq[t] < x);
        if p > 0 {
            prev[i] = tails[p - 1];
        }
        if p == tails.len() {
            tails.push(i);
        } else {
            tails[p] = i;
        }
    }
    let mut out = Vec::with_capacity(tails.len());
    let mut cur = tails.last().copied();
    while let Some(i) = cur {
        out.push(i);
        cur = (prev[i] != usize::MAX).then_some(prev[i]);
    }
    out.reverse();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Applies steps the way the client does and returns the resulting order.
    fn apply(old: &[&str], new: &[&str]) -> Vec<String> {
        let mut cur: Vec<String> = old.iter().map(|s| s.to_string()).collect();
        let steps = list_steps(old, new);
        let mut removed: Vec<usize> = steps
            .iter()
            .filter_map(|s| match s {
                ListStep::Remove(i) => Some(*i),
                _ => None,
            })
            .collect();
        removed.sort_unstable();
        for i in removed.into_iter().rev() {
            cur.remove(i);
        }
        for s in &steps {
            let (index, after) = match s {
                ListStep::Remove(_) => continue,
                ListStep::Insert { index, after } => (*index, *after),
                ListStep::Move { index, after } => {
                    let at = cur.iter().position(|k| k == new[*index]).unwrap();
                    cur.remove(at);
                    (*index, *after)
                }
            };
            let at = match after {
                None => 0,
                Some(a) => cur.iter().position(|k| k == new[a]).unwrap() + 1,
            };
            cur.insert(at, new[index].to_string());
        }
        cur
    }

    fn check(old: &[&str], new: &[&str]) {
        assert_eq!(apply(old, new), new, "{old:?} -> {new:?}");
    }

    fn moves(old: &[&str], new: &[&str]) -> usize {
        list_steps(old, new)
            .iter()
            .filter(|s| matches!(s, ListStep::Move { .. }))
            .count()
    }

    #[test]
    fn insert_remove_move() {
        check(&["a", "b", "c"], &["a", "x", "b", "c"]);
        check(&["a", "b", "c"], &["x", "a", "b", "c"]);
        check(&["a", "b", "c"], &["a", "b", "c", "x"]);
        check(&["a", "b", "c"], &["a", "c"]);
        check(&["a", "b", "c"], &["c", "b", "a"]);
        check(&["a", "b", "c", "d", "e"], &["e", "a", "b", "c", "d"]);
        check(&["a", "b", "c", "d"], &["b", "x", "d", "a"]);
    }

    #[test]
    fn empty_to_full_and_back() {
        check(&[], &["a", "b"]);
        check(&["a", "b"], &[]);
        check(&[], &[]);
    }

    #[test]
    fn minimal_moves() {
        assert_eq!(
            moves(&["a", "b", "c", "d", "e"], &["e", "a", "b", "c", "d"]),
            1
        );
        assert_eq!(moves(&["a", "b", "c"], &["a", "b", "c"]), 0);
        assert_eq!(moves(&["a", "b", "c", "d"], &["b", "a", "d", "c"]), 2);
    }

    #[test]
    fn paths() {
        let a = Value::from(minijinja::value::Serde(
            serde_json::json!({"u": {"n": 1, "m": 2}, "l": [1, 2], "x": 1}),
        ));
        let b = Value::from(minijinja::value::Serde(
            serde_json::json!({"u": {"n": 1, "m": 3}, "l": [1, 2], "y": 1}),
        ));
        let mut p = changed_paths(&a, &b);
        p.sort();
        assert_eq!(p, vec!["u.m", "x", "y"]);
        assert!(changed_paths(&a, &a).is_empty());
        let c = Value::from(minijinja::value::Serde(serde_json::json!({"x": 1.0})));
        let d = Value::from(minijinja::value::Serde(serde_json::json!({"x": 1})));
        assert_eq!(changed_paths(&c, &d), vec!["x"]);
    }
}
