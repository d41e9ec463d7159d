//! The targeted update API ([`Edit`]) against whole-data renders: random
//! edits go to one page through `LivePage::edit`, and the same edits, made
//! to a plain JSON model, go to a second page through `LivePage::update`.
//! After every step both pages send the same frame, byte for byte, hold the
//! same HTML, which equals a fresh render of the model, and the edit's delta
//! turns the previous snapshot into the model.

use minijinja::Environment;
use minijinja::value::{Serde, Value};
use proptest::prelude::*;
use serde_json::{Value as Json, json};
use statetemplate::fragment::At;
use statetemplate::{Edit, FragmentEngine};

const PAGE: &str = r#"<h1>{{ title }}</h1><p>{{ rows|length }} rows, {{ user.name }}</p>
<ul>{% for r in rows %}<li class="{{ 'hi' if r.amount > 50 else 'lo' }}">{{ r.id }} {{ r.name }} {{ r.amount }}</li>{% else %}<li>no rows</li>{% endfor %}</ul>
<ol>{% for r in rows|sort(attribute="amount") %}<li>{{ r.name }}</li>{% endfor %}</ol>
<div>{% for r in rows|selectattr("amount", "gt", 50)|reverse %}<i>{{ r.id }}</i>{% endfor %}</div>"#;

fn engine() -> FragmentEngine {
    let mut env = Environment::new();
    env.add_template("page.html", PAGE).unwrap();
    FragmentEngine::new(env)
}

#[derive(Debug, Clone)]
enum Op {
    Title(String),
    UserName(String),
    Amount(usize, i64),
    Name(usize, String),
    Insert(u8, i64),
    Remove(usize),
    Move(usize, u8),
    ReplaceItem(usize, i64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        "[a-c]{1,3}".prop_map(Op::Title),
        "[a-c]{1,3}".prop_map(Op::UserName),
        (any::<usize>(), 0i64..100).prop_map(|(i, a)| Op::Amount(i, a)),
        (any::<usize>(), "[x-z]{1,2}").prop_map(|(i, n)| Op::Name(i, n)),
        (0u8..5, 0i64..100).prop_map(|(w, a)| Op::Insert(w, a)),
        any::<usize>().prop_map(Op::Remove),
        (any::<usize>(), 0u8..5).prop_map(|(i, w)| Op::Move(i, w)),
        (any::<usize>(), 0i64..100).prop_map(|(i, a)| Op::ReplaceItem(i, a)),
    ]
}

fn row(id: u64, amount: i64) -> Json {
    json!({"id": id, "name": format!("r{id}"), "amount": amount})
}

/// Where `w` puts an item, for the edit and for the model (`len` is the
/// list's length without the item; `ids` its ids).
fn place(w: u8, ids: &[u64], len: usize) -> (At, usize) {
    match (w, ids.first(), ids.last()) {
        (0, ..) => (At::Start, 0),
        (1, ..) => (At::End, len),
        (2, ..) => (At::Index(len / 2), len / 2),
        (3, Some(_), _) => {
            let k = ids[ids.len() / 2];
            (At::Before(Value::from(k)), ids.len() / 2)
        }
        (_, Some(_), _) => {
            let k = ids[ids.len() / 2];
            (At::After(Value::from(k)), ids.len() / 2 + 1)
        }
        _ => (At::End, len),
    }
}

/// Makes one edit and the same change to the model; `None` when it does
/// not apply (an empty list).
fn step(model: &mut Json, op: &Op, next_id: &mut u64) -> Option<Edit> {
    let mut e = Edit::default();
    let rows = model["rows"].as_array_mut().unwrap();
    let n = rows.len();
    let ids: Vec<u64> = rows.iter().map(|r| r["id"].as_u64().unwrap()).collect();
    match op {
        Op::Title(t) => {
            e.assign("title", t);
            model["title"] = json!(t);
        }
        Op::UserName(t) => {
            e.set("user.name", t);
            model["user"]["name"] = json!(t);
        }
        Op::Amount(i, a) if n > 0 => {
            let i = i % n;
            e.update_item("rows", ids[i], "amount", a);
            rows[i]["amount"] = json!(a);
        }
        Op::Name(i, s) if n > 0 => {
            // By path this time, not by key.
            let i = i % n;
            e.set(&format!("rows.{i}.name"), s);
            rows[i]["name"] = json!(s);
        }
        Op::Insert(w, a) => {
            *next_id += 1;
            let r = row(*next_id, *a);
            let (at, idx) = place(*w, &ids, n);
            e.insert("rows", at, &r);
            rows.insert(idx, r);
        }
        Op::Remove(i) if n > 0 => {
            let i = i % n;
            e.remove("rows", ids[i]);
            rows.remove(i);
        }
        Op::Move(i, w) if n > 1 => {
            let i = i % n;
            let item = rows.remove(i);
            let rest: Vec<u64> = rows.iter().map(|r| r["id"].as_u64().unwrap()).collect();
            let (at, idx) = place(*w, &rest, n - 1);
            e.move_item("rows", ids[i], at);
            rows.insert(idx, item);
        }
        Op::ReplaceItem(i, a) if n > 0 => {
            let i = i % n;
            let r = row(ids[i], *a);
            e.update_item("rows", ids[i], "", &r);
            rows[i] = r;
        }
        _ => return None,
    }
    Some(e)
}

fn initial(n: u64) -> Json {
    json!({
        "title": "t",
        "user": {"name": "ann"},
        "rows": (1..=n).map(|i| row(i, (i as i64 * 37) % 100)).collect::<Vec<_>>(),
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn edits_equal_whole_data_renders(n in 0u64..8, ops in prop::collection::vec(op(), 1..12)) {
        let engine = engine();
        let mut model = initial(n);
        let mut next_id = 1000;
        let mut targeted = engine.render("page.html", &model).unwrap();
        let mut whole = engine.render("page.html", &model).unwrap();
        prop_assert_eq!(targeted.join_frame(), whole.join_frame());
        for op in &ops {
            let before = Value::from(Serde(&model));
            let Some(edit) = step(&mut model, op, &mut next_id) else { continue };
            let a = targeted.edit(&edit).unwrap();
            let b = whole.update(&model).unwrap();
            let (fa, fb) = (targeted.encode(&a), whole.encode(&b));
            prop_assert_eq!(&fa, &fb, "{:?}", op);
            prop_assert_eq!(targeted.html(), whole.html());
            prop_assert_eq!(targeted.html(), engine.render_html("page.html", &model).unwrap());
            let applied = a.delta().apply(&before).unwrap();
            prop_assert_eq!(serde_json::to_value(&applied).unwrap(), model.clone());
        }
    }
}

#[test]
fn an_edit_that_does_not_fit_changes_nothing() {
    let engine = engine();
    let model = initial(3);
    let mut page = engine.render("page.html", &model).unwrap();
    let html = page.html();
    let mut e = Edit::default();
    e.assign("title", "new").remove("rows", 99);
    let err = page.edit(&e).unwrap_err();
    assert!(err.to_string().contains("no item with id 99"), "{err}");
    assert_eq!(page.html(), html);
    let mut e = Edit::default();
    e.insert("title", At::End, &1);
    let err = page.edit(&e).unwrap_err();
    assert!(err.to_string().contains("not a list"), "{err}");
    let mut e = Edit::default();
    e.set("rows.7.name", "x");
    let err = page.edit(&e).unwrap_err();
    assert!(err.to_string().contains("past the end"), "{err}");
    assert_eq!(page.html(), html);
    assert_eq!(page.seq(), 0);
}
