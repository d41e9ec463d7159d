//! The data path: what one render changes in the data (its delta), and the
//! targeted API that states a change instead of handing over the whole
//! data. Two pages start alike; one gets whole data, the other edits; after
//! each step both send the same frame, and the delta is printed as JSON.
//!
//! Run: `cargo run --example edits`

use minijinja::Environment;
use serde::Serialize;
use statetemplate::fragment::At;
use statetemplate::{Edit, FragmentEngine};

#[derive(Serialize, Clone)]
struct Row {
    id: u32,
    name: String,
    amount: i64,
}

#[derive(Serialize, Clone)]
struct Page {
    title: String,
    rows: Vec<Row>,
}

fn main() -> Result<(), statetemplate::Error> {
    let mut env = Environment::new();
    env.add_template(
        "accounts.html",
        r#"<h1>{{ title }}</h1><p>{{ rows|length }} accounts</p>
<table><tbody>{% for r in rows %}<tr class="{{ 'big' if r.amount > 500 }}"><td>{{ r.name }}</td><td>{{ r.amount }}</td></tr>{% endfor %}</tbody></table>"#,
    )
    .expect("template parses");
    let engine = FragmentEngine::new(env);
    let mut data = Page {
        title: "Accounts".into(),
        rows: (1..=1000)
            .map(|id| Row {
                id,
                name: format!("Customer {id:04}"),
                amount: (id as i64 * 37) % 1000,
            })
            .collect(),
    };
    let mut whole = engine.render("accounts.html", &data)?;
    let mut edited = engine.render("accounts.html", &data)?;
    let _ = (whole.join_frame(), edited.join_frame());

    // Each step: the change made to the app's data, and the same change as
    // an edit.
    type Step = (&'static str, fn(&mut Page), fn(&mut Edit));
    let steps: [Step; 4] = [
        (
            "one amount changes",
            |d| d.rows[499].amount = 999,
            |e| {
                e.update_item("rows", 500, "amount", &999);
            },
        ),
        (
            "a row is added at the top",
            |d| {
                d.rows.insert(
                    0,
                    Row {
                        id: 5000,
                        name: "New customer".into(),
                        amount: 1,
                    },
                )
            },
            |e| {
                e.insert(
                    "rows",
                    At::Start,
                    &Row {
                        id: 5000,
                        name: "New customer".into(),
                        amount: 1,
                    },
                );
            },
        ),
        (
            "a row is removed",
            |d| d.rows.retain(|r| r.id != 250),
            |e| {
                e.remove("rows", 250);
            },
        ),
        (
            "the title changes (LiveView's assign)",
            |d| d.title = "Accounts (live)".into(),
            |e| {
                e.assign("title", "Accounts (live)");
            },
        ),
    ];
    for (what, change, edit) in steps {
        change(&mut data);
        let a = whole.update(&data)?;
        let mut e = Edit::default();
        edit(&mut e);
        let b = edited.edit(&e)?;
        let (fa, fb) = (whole.encode(&a), edited.encode(&b));
        assert_eq!(fa, fb, "an edit sends what the whole data sends");
        assert_eq!(
            edited.html(),
            engine.render_html("accounts.html", &data)?,
            "and the page equals a fresh render"
        );
        println!("{what}:");
        println!(
            "  delta ({} op): {}",
            a.delta().ops().len(),
            serde_json::to_string(a.delta()).expect("serializes")
        );
        let frame = fa.unwrap_or_default();
        println!("  frame ({} bytes): {frame}\n", frame.len());
    }
    Ok(())
}
