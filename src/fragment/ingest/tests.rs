//! The ingest against minijinja's own conversion, and its deltas.

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

fn long_row(i: usize) -> J {
    json!({"id": i, "name": format!("r{i}"), "amount": i})
}

/// One edit of a list of rows: 0 changes a row at `at`, 1 inserts, 2
/// removes, 3 appends, 4 truncates to `at`, 5 swaps two rows.
fn edit_rows(rows: &mut Vec<J>, kind: u8, at: usize, x: i64, next_id: &mut usize) {
    let at = at % rows.len().max(1);
    match kind {
        0 if !rows.is_empty() => rows[at]["amount"] = json!(x),
        1 => {
            *next_id += 1;
            rows.insert(at.min(rows.len()), long_row(*next_id));
        }
        2 if !rows.is_empty() => {
            rows.remove(at);
        }
        3 => {
            *next_id += 1;
            rows.push(long_row(*next_id));
        }
        5 if !rows.is_empty() => {
            let to = (at + x.unsigned_abs() as usize) % rows.len();
            rows.swap(at, to);
        }
        _ => rows.truncate(at),
    }
}

/// One pass from `prev` to the page of `rows`, checked against minijinja
/// and against its own delta: the new value and the delta applied.
fn pass(prev: &Value, rows: &[J]) -> (Value, Value) {
    let data = json!({ "rows": rows });
    let next = ingest(Some(prev), &data).unwrap();
    let want = mj(&data);
    assert!(diff::same(&next.value, &want));
    let applied = next.delta.apply(prev).unwrap();
    assert!(diff::same(&applied, &want), "{:?}", next.delta);
    (next.value, applied)
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

    /// Several edits in a row on lists of more than one chunk, each checked,
    /// comparing sometimes with the chunked lists a delta makes.
    #[test]
    fn chained_edits_on_long_lists(
        n in 60usize..200,
        edits in prop::collection::vec((0u8..5, any::<usize>(), -5i64..5), 1..6),
    ) {
        let mut rows: Vec<J> = (0..n).map(long_row).collect();
        let mut prev = ingest(None, &json!({"rows": rows})).unwrap().value;
        let mut next_id = 10_000;
        for (kind, at, x) in edits {
            edit_rows(&mut rows, kind, at, x, &mut next_id);
            let (next, applied) = pass(&prev, &rows);
            // Every other step compares with the delta's result instead: a
            // list a delta changed is chunked, and the next pass reads it.
            prev = if kind % 2 == 0 { applied } else { next };
        }
    }

    /// Several edits at once (changes, inserts, removes, swaps) between two
    /// passes, on lists long enough that the ingest keeps them in chunks
    /// and builds the next one as edits of the old chunks.
    #[test]
    fn several_edits_at_once_on_chunked_lists(
        n in 128usize..260,
        steps in prop::collection::vec(
            prop::collection::vec((0u8..6, any::<usize>(), -5i64..5), 1..5),
            1..4,
        ),
    ) {
        let mut rows: Vec<J> = (0..n).map(long_row).collect();
        let mut prev = ingest(None, &json!({"rows": rows})).unwrap().value;
        // A first change makes the list a chunked one.
        rows[0]["amount"] = json!(-1);
        prev = ingest(Some(&prev), &json!({"rows": rows})).unwrap().value;
        prop_assert!(prev.get_attr("rows").unwrap().downcast_object_ref::<Seq>().is_some());
        let mut next_id = 10_000;
        for edits in steps {
            for (kind, at, x) in edits {
                edit_rows(&mut rows, kind, at, x, &mut next_id);
            }
            prev = pass(&prev, &rows).0;
        }
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

#[derive(serde::Serialize, Clone)]
struct Tail {
    a: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    b: Option<u32>,
}

/// A struct's last field skipped (or back): the fields that are left all
/// match the old ones in place, which must not pass for "unchanged".
#[test]
fn a_trailing_field_that_goes_away_is_unset() {
    let with = vec![Tail { a: 1, b: Some(2) }, Tail { a: 3, b: None }];
    let without = vec![Tail { a: 1, b: None }, Tail { a: 3, b: Some(4) }];
    for (x, y) in [(&with, &without), (&without, &with)] {
        let vx = ingest(None, x).unwrap().value;
        let next = ingest(Some(&vx), y).unwrap();
        assert!(diff::same(&next.value, &mj(y)), "{}", next.value);
        assert!(diff::same(&next.delta.apply(&vx).unwrap(), &mj(y)));
        assert_eq!(next.delta.ops().len(), 2, "{:?}", next.delta);
    }
}
