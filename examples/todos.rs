//! Todos: a keyed list with add (a form), remove, toggle and reorder; each
//! change travels as one keyed insert, remove, move or item patch.
//!
//! Run: `cargo run --example todos`, then open the URL it prints.

#[path = "common/mod.rs"]
mod common;

use minijinja::Environment;
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use statetemplate::Error;

#[derive(Debug, Default, Serialize, Deserialize)]
struct Todos {
    todos: Vec<Todo>,
    next: u64,
    note: String,
    clock: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct Todo {
    id: u64,
    text: String,
    done: bool,
}

#[derive(Deserialize)]
struct NewTodo {
    text: String,
}

impl Todos {
    fn index(&self, p: &Json) -> statetemplate::Result<usize> {
        let id = common::id_of(p)?;
        self.todos
            .iter()
            .position(|t| t.id == id)
            .ok_or_else(|| Error::protocol(format!("no todo {id}")))
    }
}

#[tokio::main]
async fn main() -> Result<(), statetemplate::Error> {
    let mut env = Environment::new();
    common::templates(
        &mut env,
        &[("todos.html", include_str!("../templates/todos.html"))],
    )?;
    let engine = common::engine(env, "todos")?;
    let live = common::live(&engine)
        .on_update("add", |d: &mut Todos, p: NewTodo| {
            let text = p.text.trim();
            if text.is_empty() {
                return Err(Error::protocol("a todo needs some text"));
            }
            d.next += 1;
            d.todos.push(Todo {
                id: d.next,
                text: text.to_owned(),
                done: false,
            });
            Ok(())
        })
        .on_update("remove", |d: &mut Todos, p: Json| {
            let i = d.index(&p)?;
            d.todos.remove(i);
            Ok(())
        })
        .on_update("toggle", |d: &mut Todos, p: Json| {
            let i = d.index(&p)?;
            d.todos[i].done = !d.todos[i].done;
            Ok(())
        })
        .on_update("up", |d: &mut Todos, p: Json| {
            let i = d.index(&p)?;
            if i > 0 {
                d.todos.swap(i, i - 1);
            }
            Ok(())
        })
        .on_update("down", |d: &mut Todos, p: Json| {
            let i = d.index(&p)?;
            if i + 1 < d.todos.len() {
                d.todos.swap(i, i + 1);
            }
            Ok(())
        });
    let app = common::app(live, "todos.html", "Todos", || {
        let todos = vec![
            Todo {
                id: 1,
                text: "Buy milk".into(),
                done: false,
            },
            Todo {
                id: 2,
                text: "Write the report".into(),
                done: true,
            },
            Todo {
                id: 3,
                text: "Call Ada".into(),
                done: false,
            },
        ];
        Todos {
            todos,
            next: 3,
            clock: common::clock_text(),
            ..Todos::default()
        }
    });
    common::serve(app, 3001).await;
    Ok(())
}
