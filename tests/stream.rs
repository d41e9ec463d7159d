//! Streams: the oracle is not "client == fresh render" (a fresh render has
//! every stream empty) but "client == fresh render with the stream holding
//! what a reference list model holds": the items inserted, upserted in
//! place, deleted, reset and trimmed to each batch's limit, each with the
//! HTML it had when it was inserted. Checked for the Rust `WireClient`
//! (property test) and for the JS client's model in Node (the same
//! generator, batched), with joins in the middle (a client that joins gets
//! every stream empty).

mod common;

use minijinja::Environment;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;
use serde_json::{Value as Json, json};
use statetemplate::fragment::register_filters;
use statetemplate::testing::{WireClient, strip_anchors, write_out_markers};
use statetemplate::{ErrorKind, FragmentEngine, LivePage, StreamAt, StreamOps};

const PAGE: &str = "<h1>{{ title }}</h1><ul id=\"log\">{% for m in log|stream %}<li class=\"{{ m.kind }}\">{{ m.text }}{{ suffix }}</li>{% endfor %}</ul><p>{{ n }}</p>";

fn engine(src: &str) -> FragmentEngine {
    let mut env = Environment::new();
    env.add_template_owned("page.html", src.to_owned()).unwrap();
    FragmentEngine::new(env)
}

fn data(suffix: &str, n: u32) -> Json {
    json!({"title": "Log", "suffix": suffix, "n": n})
}

/// A stream item: its key (`id`, a number or a string with a space, so
/// that keys are percent-encoded) and its text.
#[derive(Debug, Clone)]
struct Item {
    id: Json,
    text: String,
    kind: &'static str,
}

#[derive(Debug, Clone)]
enum Op {
    Insert(Item, StreamAt),
    Delete(Json),
    Reset,
}

#[derive(Debug, Clone)]
enum Step {
    /// One batch of stream operations with its limit.
    Stream(Vec<Op>, Option<i64>),
    /// New page data (the items already sent must not change).
    Data(String, u32),
    /// The client drops what it holds and joins again.
    Join,
}

fn key_json() -> impl Strategy<Value = Json> {
    prop_oneof![
        3 => (0u32..12).prop_map(|n| json!(n)),
        1 => (0u32..4).prop_map(|n| json!(format!("k {n}"))),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let at = prop_oneof![
        Just(StreamAt::Start),
        Just(StreamAt::End),
        (0usize..8).prop_map(StreamAt::Index),
    ];
    let item = (key_json(), "[a-z]{1,4}", prop::bool::ANY).prop_map(|(id, text, hot)| Item {
        id,
        text,
        kind: if hot { "hot" } else { "cold" },
    });
    prop_oneof![
        6 => (item, at).prop_map(|(i, a)| Op::Insert(i, a)),
        2 => key_json().prop_map(Op::Delete),
        1 => Just(Op::Reset),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    let limit = prop_oneof![
        2 => Just(None),
        1 => (1i64..6).prop_map(Some),
        1 => (1i64..6).prop_map(|n| Some(-n)),
    ];
    prop_oneof![
        6 => (prop::collection::vec(op(), 1..6), limit).prop_map(|(o, l)| Step::Stream(o, l)),
        2 => ("[a-z]{0,2}", 0u32..5).prop_map(|(s, n)| Step::Data(s, n)),
        1 => Just(Step::Join),
    ]
}

fn steps() -> impl Strategy<Value = Vec<Step>> {
    prop::collection::vec(step(), 1..16)
}

/// Keys as the anchors carry them: bytes other than `A-Z a-z 0-9 _ . : -`
/// percent-encoded, and a `-` before another or at the end.
fn encode_key(k: &Json) -> String {
    let raw = match k {
        Json::String(s) => s.clone(),
        other => other.to_string(),
    };
    let mut out = String::new();
    let bytes = raw.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        let dash_ok = b == b'-' && bytes.get(i + 1).is_some_and(|n| *n != b'-');
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b':' || dash_ok {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The reference list model: what the client's stream holds.
#[derive(Default, Debug, Clone, PartialEq)]
struct Reference {
    items: Vec<(String, String)>,
}

impl Reference {
    fn apply(&mut self, op: &Op, limit: Option<i64>, suffix: &str) {
        match op {
            Op::Reset => self.items.clear(),
            Op::Delete(k) => {
                let k = encode_key(k);
                self.items.retain(|(key, _)| *key != k);
            }
            Op::Insert(item, at) => {
                let key = encode_key(&item.id);
                let html = format!("<li class=\"{}\">{}{suffix}</li>", item.kind, item.text);
                if let Some(held) = self.items.iter_mut().find(|(k, _)| *k == key) {
                    held.1 = html;
                } else {
                    let i = match at {
                        StreamAt::Start => 0,
                        StreamAt::End => self.items.len(),
                        StreamAt::Index(i) => (*i).min(self.items.len()),
                    };
                    self.items.insert(i, (key, html));
                }
                match limit {
                    Some(n) if n > 0 => self.items.truncate(n as usize),
                    Some(n) => {
                        let keep = n.unsigned_abs() as usize;
                        let len = self.items.len();
                        if len > keep {
                            self.items.drain(..len - keep);
                        }
                    }
                    None => {}
                }
            }
        }
    }

    /// The page a client holding this list shows: the fresh render with
    /// the items inside the stream's anchor.
    fn page(&self, fresh: &str) -> String {
        let open = "<ul id=\"log\"><!--[";
        let at = fresh.find(open).expect("the stream's anchor") + open.len();
        let end = at + fresh[at..].find("-->").unwrap();
        // Every key written out (as the JS client writes them; the engine's
        // `<!--;-->` and runs are written out before comparing).
        let mut items = String::new();
        for (k, h) in &self.items {
            items.push_str(&format!("<!--:{k}-->{h}"));
        }
        let mut out = fresh.to_owned();
        out.insert_str(end + 3, &items);
        out
    }
}

fn ops_of(batch: &[Op], limit: Option<i64>) -> StreamOps {
    let mut s = StreamOps::new("log");
    for op in batch {
        match op {
            Op::Insert(item, at) => {
                s.insert(
                    &json!({"id": item.id, "text": item.text, "kind": item.kind}),
                    *at,
                );
            }
            Op::Delete(k) => {
                s.delete(minijinja::Value::from(minijinja::value::Serde(k)));
            }
            Op::Reset => {
                s.reset();
            }
        }
    }
    if let Some(n) = limit {
        s.limit(n);
    }
    s
}

/// Runs `steps` on one page. Returns the frames (a join frame first, and
/// after each `Join`) and, after each frame, the page the client must show.
fn run(steps: &[Step]) -> (Vec<String>, Vec<String>) {
    let engine = engine(PAGE);
    let (mut suffix, mut n) = (String::new(), 0);
    let mut page: LivePage = engine.render("page.html", &data(&suffix, n)).unwrap();
    let mut frames = vec![page.join_frame()];
    let mut reference = Reference::default();
    let mut want = vec![reference.page(&page.html())];
    for step in steps {
        match step {
            Step::Join => {
                frames.push(page.join_frame());
                reference = Reference::default();
            }
            Step::Data(s, m) => {
                suffix = s.clone();
                n = *m;
                let patch = page.update(&data(&suffix, n)).unwrap();
                let Some(f) = page.encode(&patch) else {
                    continue;
                };
                frames.push(f);
            }
            Step::Stream(batch, limit) => {
                let patch = page.stream(&ops_of(batch, *limit)).unwrap();
                for op in batch {
                    reference.apply(op, *limit, &suffix);
                }
                frames.push(page.encode(&patch).expect("stream ops always send"));
            }
        }
        // The page itself never holds stream items: it equals a fresh
        // render of its data.
        let fresh = engine.render_html("page.html", &data(&suffix, n)).unwrap();
        assert_eq!(page.html(), fresh, "the page holds no stream items");
        want.push(reference.page(&fresh));
    }
    (frames, want)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(256)
    ))]

    /// The Rust `WireClient`'s page equals the reference list model's
    /// after every frame.
    #[test]
    fn wire_client_holds_the_reference_list(steps in steps()) {
        let (frames, want) = run(&steps);
        let mut client = WireClient::new();
        for (i, (f, w)) in frames.iter().zip(&want).enumerate() {
            if f.starts_with('{') {
                client = WireClient::new();
            }
            client.apply(f).map_err(|e| TestCaseError::fail(format!("frame {i} {f}: {e}")))?;
            prop_assert_eq!(&write_out_markers(&client.html()), w, "after frame {} {}", i, f);
        }
    }
}

/// The JS client's model holds the reference list too: sequences from the
/// same generator (deterministic), all in one Node run.
#[test]
fn js_model_holds_the_reference_list() {
    let mut runner = TestRunner::deterministic();
    let strategy = steps();
    let mut cases = Vec::new();
    let mut wants = Vec::new();
    for i in 0..300 {
        let steps = strategy.new_tree(&mut runner).unwrap().current();
        let (frames, want) = run(&steps);
        cases.push((format!("seq {i}: {steps:?}"), frames));
        wants.push(want);
    }
    let results = common::js_model(&cases);
    let mut compared = 0;
    for (((name, _), want), got) in cases.iter().zip(&wants).zip(&results) {
        assert_eq!(got["error"], Json::Null, "{name}: JS model failed");
        let html: Vec<String> = serde_json::from_value(got["html"].clone()).unwrap();
        assert_eq!(&html, want, "{name}: JS model differs from the reference");
        compared += html.len();
    }
    assert!(compared > 1000, "{compared} frames compared");
}

#[test]
fn wire_ops_and_bytes() {
    let engine = engine(PAGE);
    let mut page = engine.render("page.html", &data("", 0)).unwrap();
    let html = page.html();
    assert_eq!(
        html,
        "<h1><!--[1-->Log<!--]--></h1><ul id=\"log\"><!--[2--><!--]--></ul><p><!--[3-->0<!--]--></p>"
    );
    let join = page.join_frame();
    let mut client = WireClient::new();
    client.apply(&join).unwrap();
    let mut frames = Vec::new();
    let mut send = |page: &mut LivePage, ops: &StreamOps| {
        let p = page.stream(ops).unwrap();
        let f = page.encode(&p).unwrap();
        client.apply(&f).unwrap();
        frames.push(f);
        client.html()
    };
    let mut s = StreamOps::new("log");
    s.push(&json!({"id": 1, "text": "one", "kind": "hot"}));
    send(&mut page, &s);
    let mut s = StreamOps::new("log");
    s.insert(
        &json!({"id": 2, "text": "two", "kind": "cold"}),
        StreamAt::Start,
    )
    .limit(-100);
    send(&mut page, &s);
    let mut s = StreamOps::new("log");
    s.delete(1);
    send(&mut page, &s);
    let mut s = StreamOps::new("log");
    s.reset();
    let last = send(&mut page, &s);
    assert_eq!(last, html);
    assert_eq!(
        frames,
        [
            r#"[{"0":[["<li class=\"","\">","","</li>"],[0,0,0]]},["*",2,1,-1,[0,"hot","one",""]]]"#,
            r#"[["*",2,2,0,[0,"cold","two",""],-100]]"#,
            r#"[["/",2,1]]"#,
            r#"[["!",2]]"#,
        ]
    );
    let sizes: Vec<usize> = frames.iter().map(String::len).collect();
    println!("frame sizes: {sizes:?}");
    // The page kept nothing: same HTML, and a client that joins now gets
    // the stream empty.
    assert_eq!(page.html(), html);
    let mut fresh = WireClient::new();
    fresh.apply(&page.join_frame()).unwrap();
    assert_eq!(fresh.html(), html);
}

#[test]
fn items_render_once_with_the_data_of_their_insert() {
    let engine = engine(PAGE);
    let mut page = engine.render("page.html", &data("!", 0)).unwrap();
    let mut client = WireClient::new();
    client.apply(&page.join_frame()).unwrap();
    let mut s = StreamOps::new("log");
    s.push(&json!({"id": 1, "text": "a", "kind": "hot"}));
    let p = page.stream(&s).unwrap();
    client.apply(&page.encode(&p).unwrap()).unwrap();
    // The body reads `suffix`: a change to it re-renders nothing streamed
    // (the page holds no items), only the page's own fragments.
    let p = page.update(&data("?", 1)).unwrap();
    let f = page.encode(&p).unwrap();
    assert_eq!(f, r#"[[3,"1"]]"#);
    client.apply(&f).unwrap();
    assert!(client.html().contains("<li class=\"hot\">a!</li>"));
    // Inserting it again re-renders it in place with today's data.
    let p = page.stream(&s).unwrap();
    client.apply(&page.encode(&p).unwrap()).unwrap();
    assert!(
        client
            .html()
            .contains("<!--*1--><li class=\"hot\">a?</li><!--]-->")
    );
    // Plain minijinja renders the stream empty, like the page.
    let mut env = Environment::new();
    register_filters(&mut env);
    env.add_template("page.html", PAGE).unwrap();
    let bare = env
        .get_template("page.html")
        .unwrap()
        .render(minijinja::value::Serde(data("?", 1)))
        .unwrap();
    assert_eq!(strip_anchors(&page.html()), bare);
}

#[test]
fn streams_in_blocks_branches_and_with_outer_names() {
    let mut env = Environment::new();
    env.add_template(
        "base.html",
        "<main>{% block feed %}{% endblock %}</main><i>{{ n }}</i>",
    )
    .unwrap();
    env.add_template(
        "page.html",
        "{% extends \"base.html\" %}{% block feed %}{% set who = user|upper %}{% if open %}<ol>{% for e in events|keyed(\"slug\")|stream %}<li>{{ who }}: {{ e.what }}</li>{% endfor %}</ol>{% else %}closed{% endif %}{% endblock %}",
    )
    .unwrap();
    let engine = FragmentEngine::new(env);
    let d = |open: bool| json!({"user": "ann", "open": open, "n": 1});
    let mut page = engine.render("page.html", &d(true)).unwrap();
    let mut client = WireClient::new();
    client.apply(&page.join_frame()).unwrap();
    let mut s = StreamOps::new("events");
    s.push(&json!({"slug": "a b", "what": "came"}));
    let p = page.stream(&s).unwrap();
    let f = page.encode(&p).unwrap();
    client.apply(&f).unwrap();
    assert!(f.contains(r#""a%20b""#), "{f}");
    assert!(
        client.html().contains("<li>ANN: came</li>"),
        "{}",
        client.html()
    );
    let mut del = StreamOps::new("events");
    del.delete("a b");
    let p = page.stream(&del).unwrap();
    client.apply(&page.encode(&p).unwrap()).unwrap();
    assert_eq!(client.html(), page.html());
    // In a branch not taken, the stream is not on the page: nothing is sent.
    page.update(&d(false)).unwrap();
    let p = page.stream(&s).unwrap();
    assert!(p.is_empty());
    // An item without the key attribute is an error, and changes nothing.
    page.update(&d(true)).unwrap();
    let seq = page.seq();
    let mut bad = StreamOps::new("events");
    bad.push(&json!({"id": 1, "what": "no slug"}));
    let e = page.stream(&bad).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Data);
    assert!(e.to_string().contains("\"slug\""), "{e}");
    assert_eq!(page.seq(), seq);
}

#[test]
fn what_cannot_be_a_stream() {
    let cases = [
        (
            "<ul>{% for m in log|stream %}<li>{{ m }}</li>{% else %}none{% endfor %}</ul>",
            "cannot have an `else`",
        ),
        (
            "<ul>{% for m in log|stream %}<li>{{ loop.index }}</li>{% endfor %}</ul>",
            "does not read `loop`",
        ),
        (
            "<ul>{% for m in log|stream if m.ok %}<li>{{ m }}</li>{% endfor %}</ul>",
            "no `if` filter",
        ),
        (
            "<a title=\"{% for m in log|stream %}{{ m }}{% endfor %}\">x</a>",
            "comment anchor",
        ),
        (
            "{% for g in groups %}<ul>{% for m in g.log|stream %}<li>{{ m }}</li>{% endfor %}</ul>{% endfor %}",
            "comment anchor",
        ),
        (
            "<ul>{% for m in [1]|stream %}{{ m }}{% endfor %}</ul>",
            "needs a name",
        ),
        (
            "<ul>{% for m in log|stream recursive %}{{ loop(m.c) }}{% endfor %}</ul>",
            "`recursive`",
        ),
    ];
    for (src, want) in cases {
        let e = engine(src).render("page.html", &json!({})).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Template, "{src}: {e}");
        assert!(e.to_string().contains(want), "{src}: {e}");
    }
    // A named stream, and the errors of the operations themselves.
    let engine =
        engine("<ul>{% for m in [1]|stream(\"feed\") %}<li>{{ m.id }}</li>{% endfor %}</ul>");
    let mut page = engine.render("page.html", &json!({})).unwrap();
    let mut ok = StreamOps::new("feed");
    ok.push(&json!({"id": 1}));
    assert_eq!(page.stream(&ok).unwrap().len(), 1);
    let e = page.stream(&StreamOps::new("log")).unwrap_err();
    assert!(e.to_string().contains("no stream named \"log\""), "{e}");
    let mut zero = StreamOps::new("feed");
    zero.push(&json!({"id": 2})).limit(0);
    assert!(page.stream(&zero).is_err());
}

#[test]
fn clients_reject_bad_stream_ops() {
    let engine = engine(PAGE);
    let mut page = engine.render("page.html", &data("", 0)).unwrap();
    let join = page.join_frame();
    let good = r#"["*",2,"1",-1,[0,"a","b",""]]"#;
    let mut s = StreamOps::new("log");
    s.push(&json!({"id": 9, "text": "t", "kind": "k"}));
    let p = page.stream(&s).unwrap();
    let first = page.encode(&p).unwrap(); // sends statics 3
    let bad = [
        r#"["*",2,"1",-2,[0,"a","b",""]]"#,
        r#"["*",2,"1",1.5,[0,"a","b",""]]"#,
        r#"["*",2,"1",-1,[0,"a","b",""],0]"#,
        r#"["*",2,"1",-1,[0,"a","b",""],"5"]"#,
        r#"["*",2,"1",-1,[0,"a","b",""],5,1]"#,
        r#"["*",2,true,-1,[0,"a","b",""]]"#,
        r#"["*",2,-1,-1,[0,"a","b",""]]"#,
        r#"["*",4,"1",-1,[0,"a","b",""]]"#,
        r#"["*",2.5,"1",-1,[0,"a","b",""]]"#,
        r#"["/",2,null]"#,
        r#"["/",2]"#,
        r#"["!",9]"#,
    ];
    let frame = |op: &str| format!("[{op}]");
    let mut rust = WireClient::new();
    rust.apply(&join).unwrap();
    rust.apply(&first).unwrap();
    rust.apply(&frame(good)).unwrap();
    let mut input = vec![(
        "good".to_owned(),
        vec![join.clone(), first.clone(), frame(good)],
    )];
    for op in bad {
        let mut c = WireClient::new();
        c.apply(&join).unwrap();
        c.apply(&first).unwrap();
        assert!(c.apply(&frame(op)).is_err(), "Rust accepts {op}");
        input.push((op.to_owned(), vec![join.clone(), first.clone(), frame(op)]));
    }
    let results = common::js_model(&input);
    assert_eq!(results[0]["error"], Json::Null, "JS rejects {good}");
    for (r, op) in results[1..].iter().zip(bad) {
        assert_ne!(r["error"], Json::Null, "JS accepts {op}");
    }
}
