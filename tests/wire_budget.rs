//! Byte budgets of wire v2, as structural rules over every frame of the
//! template corpus (both orders of its steps), not timings:
//!
//! - no frame re-sends a statics entry the client holds;
//! - an update frame's framing is at most 4 bytes beyond its operations
//!   (`[` and `]`; commas between operations count with them);
//! - a changed text costs its JSON string plus its address plus 3 bytes
//!   (`[ID,"V"]`: V + 6 for a one-digit id);
//! - a constant body (a branch without values) travels as its statics id
//!   alone: `[ID,SID]`, at most 8 bytes while ids have up to 3 digits;
//! - a loop counter shift is one operation per list: no item patch carries a
//!   slot that shows `loop.index`/`loop.index0`, and each list is
//!   renumbered at most once per frame.

mod common;

use std::collections::{HashMap, HashSet};

use serde_json::Value as Json;

const CODES: [&str; 7] = ["+", "-", "~", "*", "/", "!", "#"];

/// Statics entries by id: (anchors, counters).
type Held = HashMap<String, Json>;

fn all_frames() -> Vec<(String, Vec<String>)> {
    common::corpus_frames()
        .into_iter()
        .map(|(name, frames, _)| (name, frames))
        .collect()
}

fn len(j: &Json) -> usize {
    j.to_string().len()
}

#[test]
fn every_corpus_frame_keeps_the_byte_rules() {
    let mut counted = HashMap::<&str, usize>::new();
    for (name, frames) in all_frames() {
        let mut held: Held = HashMap::new();
        for (n, text) in frames.iter().enumerate() {
            let f: Json = serde_json::from_str(text).unwrap();
            // serde_json writes what the server writes (no spaces, same
            // escaping; it may order object keys otherwise): lengths of
            // parts are exact.
            assert_eq!(
                f.to_string().len(),
                text.len(),
                "{name} frame {n}: canonical JSON"
            );
            let ops: Vec<Json> = if let Some(o) = f.as_object() {
                held.clear(); // a join: the client starts over
                for (k, v) in o["s"].as_object().into_iter().flatten() {
                    held.insert(k.clone(), v.clone());
                }
                o["o"].as_array().unwrap().clone()
            } else {
                let mut ops = f.as_array().unwrap().clone();
                let mut statics_len = 0;
                if ops[0].is_object() {
                    let s = ops.remove(0);
                    statics_len = len(&s) + 1;
                    for (k, v) in s.as_object().unwrap() {
                        assert!(
                            !held.contains_key(k),
                            "{name} frame {n}: statics {k} sent again: {text}"
                        );
                        held.insert(k.clone(), v.clone());
                    }
                }
                let op_bytes: usize = ops.iter().map(len).sum::<usize>() + ops.len() - 1;
                let framing = text.len() - statics_len - op_bytes;
                assert!(
                    framing <= 4,
                    "{name} frame {n}: {framing} B of framing: {text}"
                );
                *counted.entry("frames").or_default() += 1;
                ops
            };
            let mut renumbered = HashSet::new();
            for op in &ops {
                let a = op.as_array().unwrap();
                let code = a[0].as_str().filter(|c| CODES.contains(c));
                match (code, a.len(), &a.get(1)) {
                    (Some("#"), _, _) => {
                        assert!(
                            renumbered.insert(a[1].to_string()),
                            "{name} frame {n}: list {} renumbered twice: {text}",
                            a[1]
                        );
                        *counted.entry("renumbers").or_default() += 1;
                    }
                    (Some(_), _, _) => {}
                    (None, 2, Some(Json::String(v))) => {
                        let want = len(&Json::String(v.clone())) + len(&a[0]) + 3;
                        assert_eq!(len(op), want, "{name} frame {n}: text op {op}");
                        *counted.entry("texts").or_default() += 1;
                    }
                    (None, 2, Some(Json::Array(b))) => {
                        assert!(
                            b.len() > 1 || a[0] == "",
                            "{name} frame {n}: a constant body not by its id: {op}"
                        );
                    }
                    (None, 2, Some(Json::Number(sid))) => {
                        if len(&a[0]) <= 3 && sid.as_u64().unwrap() < 1000 {
                            assert!(len(op) <= 8, "{name} frame {n}: {op}");
                        }
                        *counted.entry("constant bodies").or_default() += 1;
                    }
                    _ => {}
                }
            }
        }
    }
    println!("{counted:?}");
    for k in ["frames", "texts", "constant bodies", "renumbers"] {
        assert!(
            counted.get(k).copied().unwrap_or(0) > 0,
            "the corpus has {k}"
        );
    }
}

/// Corpus case 33: `<li><b>{{ loop.index }}.</b> {{ t.text }} <i>#{{
/// loop.index0 }}</i></li>`. Inserts, removals and moves shift every later
/// item's counters; each frame still has one operation per structural
/// change, one per changed text, and one renumbering.
#[test]
fn a_loop_counter_shift_is_one_operation() {
    let (name, frames) = all_frames()
        .into_iter()
        .find(|(n, _)| n == "33_index_shift")
        .unwrap();
    let mut shifted = 0;
    for (n, text) in frames.iter().enumerate().skip(1) {
        let ops: Vec<Json> = serde_json::from_str(text).unwrap();
        let mut renumbers = 0;
        for op in &ops {
            let a = op.as_array().unwrap();
            match a[0].as_str() {
                Some("#") => renumbers += 1,
                Some(c) if CODES.contains(&c) => {}
                Some(_) => panic!("{name} frame {n}: {op}"),
                // An item's own change ([LIST,KEY,runs]): only its text (slot 1).
                None => assert_eq!(&a[2..3], &[Json::from(1)], "{name} frame {n}: {op}"),
            }
        }
        assert!(renumbers <= 1, "{name} frame {n}: {text}");
        shifted += renumbers;
    }
    assert!(shifted >= 4, "{shifted} shifts");
}

/// Corpus case 34: dynamic attributes on a wrapper, a heading, void
/// elements, a table row, an option, an SVG circle. Each change addresses
/// the element's own fragment, never the page.
#[test]
fn an_attribute_change_addresses_its_element() {
    for (name, frames) in all_frames()
        .into_iter()
        .filter(|(n, _)| n.starts_with("34_element_attrs"))
    {
        let mut attrs = 0;
        for (n, text) in frames.iter().enumerate().skip(1) {
            let ops: Vec<Json> = serde_json::from_str(text).unwrap();
            for op in ops.iter().filter(|o| !o.is_object()) {
                let a = op.as_array().unwrap();
                assert_ne!(a[0], "", "{name} frame {n}: a page patch: {op}");
                if a.len() >= 3 && a[1].is_number() {
                    attrs += 1;
                }
            }
        }
        assert!(attrs >= 10, "{name}: {attrs} element patches");
    }
}
