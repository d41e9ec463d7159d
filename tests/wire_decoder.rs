//! The wire v2 decoders, Rust (`WireClient`) and JS (the client's model),
//! over frames drawn from the v2 grammar with every field also drawn from
//! values it must refuse: neither panics, and both accept the same frames
//! and hold the same page after each one. (The corpus tests cover frames
//! the server sends; this covers what an attacker or a bug could.)

mod common;

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;
use serde_json::{Value as Json, json};
use statetemplate::testing::WireClient;

/// A list (anchor 1) of items `a`, `b` and a text leaf (anchor 2).
const JOIN: &str = r#"{"q":0,"s":{"0":[["<ul>","</ul><p>","</p>"],[1,2]],"1":[["<li>","</li>"],[0]]},"o":[["",[0,{"k":["a","b"],"b":[[1,"x"],[1,"y"]]},"t"]]]}"#;

fn scalar() -> impl Strategy<Value = Json> {
    prop_oneof![
        Just(json!(null)),
        Just(json!(true)),
        Just(json!(-1)),
        Just(json!(0)),
        Just(json!(1)),
        Just(json!(2)),
        Just(json!(3)),
        Just(json!(1.5)),
        Just(json!(1e300)),
        Just(json!("")),
        Just(json!("a")),
        Just(json!("b")),
        Just(json!("c")),
        Just(json!("1")),
        Just(json!("1:a")),
        Just(json!("1:b")),
        Just(json!("1:zz")),
        Just(json!("<i>&amp;</i>")),
        Just(json!({})),
        Just(json!([])),
    ]
}

/// Bodies, lists and junk in a value's place.
fn dynamic() -> impl Strategy<Value = Json> {
    let leaf = prop_oneof![
        4 => scalar(),
        2 => Just(json!([1, "z"])),
        1 => Just(json!([1])),
        1 => Just(json!([9, "q"])),
        1 => Just(json!([1, [1, "n"]])),
        1 => Just(json!({"e": [1, "none"]})),
        1 => Just(json!({"k": ["a", 7], "b": [[1, "p"], [1, "q"]]})),
        1 => Just(json!({"k": ["a"], "b": []})),
    ];
    leaf.prop_recursive(2, 8, 3, |inner| {
        prop_oneof![
            (inner.clone(), inner.clone()).prop_map(|(a, b)| json!([1, a, b])),
            prop::collection::vec(inner, 0..3).prop_map(|v| {
                let keys = ["c", "d", "e"][..v.len()].to_vec();
                json!({"k": keys, "b": v})
            }),
        ]
    })
}

/// Operations that fit the join's page, some of them (keys a and b exist
/// at first; c, d, e may).
fn fitting_op() -> impl Strategy<Value = Json> {
    let key = prop_oneof![
        Just(json!("a")),
        Just(json!("b")),
        Just(json!("c")),
        Just(json!(7))
    ];
    let after = prop_oneof![Just(json!(null)), Just(json!("a")), Just(json!("b"))];
    let text = prop_oneof![Just("t2"), Just("&lt;x&gt;"), Just("")];
    prop_oneof![
        text.clone().prop_map(|t| json!([2, t])),
        (key.clone(), after.clone(), text.clone()).prop_map(|(k, a, t)| json!([
            "+",
            1,
            k,
            a,
            [1, t]
        ])),
        key.clone().prop_map(|k| json!(["-", 1, k])),
        (key.clone(), after).prop_map(|(k, a)| json!(["~", 1, k, a])),
        (key.clone(), -1i64..3, text.clone()).prop_map(|(k, at, t)| json!(["*", 1, k, at, [1, t]])),
        (
            key.clone(),
            -1i64..3,
            text.clone(),
            prop_oneof![Just(-2i64), Just(1), Just(3)]
        )
            .prop_map(|(k, at, t, n)| json!(["*", 1, k, at, [1, t], n])),
        key.clone().prop_map(|k| json!(["/", 1, k])),
        Just(json!(["!", 1])),
        (
            prop_oneof![Just("1:a"), Just("1:b"), Just("1:7")],
            text.clone()
        )
            .prop_map(|(i, t)| json!([i, 0, t])),
        text.clone().prop_map(|t| json!(["", 1, t])),
        text.prop_map(|t| json!(["", 0, {"k": ["a"], "b": [[1, t]]}, t])),
        Just(json!([1, {"e": [1, "none"]}])),
        (0i64..4).prop_map(|n| json!(["#", 1, n])),
        Just(json!(["1:a", 3])),
        Just(json!(["1:b", [3]])),
        Just(json!([1, {"k": [1, "x-y"], "b": [[1, "one"], [1, "two"]]}])),
    ]
}

fn op() -> impl Strategy<Value = Json> {
    let code = prop_oneof![
        Just("+"),
        Just("-"),
        Just("~"),
        Just("*"),
        Just("/"),
        Just("!"),
        Just("?"),
        Just("t"),
    ];
    prop_oneof![
        6 => fitting_op(),
        // Addressed: text, body, list, slot runs.
        1 => (scalar(), dynamic()).prop_map(|(a, d)| json!([a, d])),
        1 => (scalar(), prop::collection::vec(prop_oneof![scalar(), dynamic()], 1..5)).prop_map(
            |(a, rest)| {
                let mut v = vec![a];
                v.extend(rest);
                Json::Array(v)
            }
        ),
        // Coded: the right arity or not, any field.
        1 => (code, prop::collection::vec(prop_oneof![scalar(), dynamic()], 0..6)).prop_map(
            |(c, rest)| {
                let mut v = vec![json!(c)];
                v.extend(rest);
                Json::Array(v)
            }
        ),
        1 => scalar(),
    ]
}

fn statics() -> impl Strategy<Value = Json> {
    prop_oneof![
        Just(json!({"2": [["<b>", "</b>"], [0]]})),
        Just(json!({"1": [["<li class=\"", "\">", "</li>"], [0, 0]]})),
        Just(json!({"3": [["<i>"], []]})),
        Just(json!({"1": [["<li>", "</li>"], [0], [1]]})),
        Just(json!({"1": [["<li>", "</li>"], [0], [2]]})),
        Just(json!({"1": [["<li>", "</li>"], [0], [3]]})),
        Just(json!({"1": [["<li>", "</li>"], [0], []]})),
        Just(json!({"4": [["a", "b"], []]})),
        Just(json!({"x": [["a"], []]})),
        Just(json!({"5": [["a", "b"], ["9"]]})),
        Just(json!({"6": [["a", "b"], [-1]]})),
    ]
}

fn frame() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => prop::collection::vec(fitting_op(), 1..4).prop_map(|ops| Json::Array(ops).to_string()),
        4 => (prop::option::of(statics()), prop::collection::vec(op(), 0..4)).prop_map(|(s, ops)| {
            let mut v = Vec::new();
            if let Some(s) = s {
                v.push(s);
            }
            v.extend(ops);
            Json::Array(v).to_string()
        }),
        1 => (prop::option::of(statics()), scalar(), prop::collection::vec(op(), 0..3)).prop_map(|(s, q, ops)| {
            let mut f = json!({"q": q, "o": ops});
            if let Some(s) = s {
                f["s"] = s;
            }
            f.to_string()
        }),
        1 => Just("{\"q\":3,\"s\":{\"0\":[[\"[\",\"]\"],[0]]},\"o\":[[\"\",[0,\"j\"]]]}".to_owned()),
        1 => Just("not json".to_owned()),
    ]
}

#[test]
fn rust_and_js_decoders_agree_on_any_frames() {
    let n: usize = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(400)
        .min(5000);
    let mut runner = TestRunner::deterministic();
    let seqs = prop::collection::vec(frame(), 1..6);
    let mut cases = Vec::new();
    let mut rust = Vec::new();
    for i in 0..n {
        let frames = seqs.new_tree(&mut runner).unwrap().current();
        let mut c = WireClient::new();
        c.apply(JOIN).unwrap();
        let mut html = vec![c.html()];
        let mut failed = false;
        for f in &frames {
            match c.apply(f) {
                Ok(()) => html.push(c.html()),
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
        let mut all = vec![JOIN.to_owned()];
        all.extend(frames);
        cases.push((format!("case {i}"), all));
        rust.push((html, failed, c.seq()));
    }
    let js = common::js_model(&cases);
    let (mut accepted, mut refused) = (0, 0);
    for (((name, frames), (html, failed, seq)), r) in cases.iter().zip(&rust).zip(&js) {
        let got: Vec<String> = serde_json::from_value(r["html"].clone()).unwrap();
        assert_eq!(
            (got, r["error"] != Json::Null),
            (common::written_out(html), *failed),
            "{name}: Rust and JS differ on {frames:#?}\nJS error: {}",
            r["error"]
        );
        if !failed {
            assert_eq!(r["seq"], *seq, "{name}: seq");
        }
        accepted += html.len() - 1;
        refused += usize::from(*failed);
    }
    println!("{accepted} frames accepted and {refused} refused alike");
    assert!(
        accepted > n / 3 && refused > n / 4,
        "the grammar reaches both sides: {accepted} accepted, {refused} refused"
    );
}
