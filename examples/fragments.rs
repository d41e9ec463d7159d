//! Prints a page's initial annotated render, then what each data change
//! emits: seed-style updates and the compact wire frame.
//!
//! Run: `cargo run --example fragments`

use minijinja::Environment;
use serde_json::json;
use statetemplate::FragmentEngine;

fn main() -> Result<(), statetemplate::Error> {
    let mut env = Environment::new();
    env.add_template(
        "todos.html",
        r#"<h1>{{ title }} ({{ todos|length }})</h1>
<ul>{% for t in todos %}<li class="{{ 'done' if t.done }}">{{ t.text }}</li>{% else %}<li>Nothing to do</li>{% endfor %}</ul>"#,
    )
    .expect("template parses");
    let engine = FragmentEngine::new(env);

    let steps = [
        json!({"title": "Todos", "todos": [{"id": 1, "text": "milk", "done": false}]}),
        json!({"title": "Todos", "todos": [{"id": 1, "text": "milk", "done": false}, {"id": 2, "text": "eggs", "done": false}]}),
        json!({"title": "Todos", "todos": [{"id": 2, "text": "eggs", "done": false}, {"id": 1, "text": "milk", "done": true}]}),
        json!({"title": "Todos", "todos": [{"id": 2, "text": "eggs", "done": false}, {"id": 1, "text": "milk", "done": true}]}),
        json!({"title": "Done!", "todos": []}),
    ];
    let mut page = engine.render("todos.html", &steps[0])?;
    println!(
        "initial render ({} bytes):\n{}\n",
        page.html().len(),
        page.html()
    );
    println!("join frame: {}\n", page.join_frame());
    for (n, data) in steps.iter().enumerate().skip(1) {
        let patch = page.update(data)?;
        println!("step {n}: {} operation(s)", patch.len());
        for u in patch.updates() {
            println!(
                "  update: {}",
                serde_json::to_string(&u).expect("serializes")
            );
        }
        match page.encode(&patch) {
            Some(frame) => println!("  wire ({} bytes): {frame}", frame.len()),
            None => println!("  nothing changed, nothing sent"),
        }
        println!();
    }
    Ok(())
}
