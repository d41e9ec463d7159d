//! The JS client: its model mirrors the Rust reference applier frame by
//! frame over the whole template corpus (run in Node), and it stays small.

mod common;

use std::io::Write;

use serde_json::{Value as Json, json};
use statetemplate::testing::WireClient;
use statetemplate::transport::client;

/// Every corpus case, both orders, as frames, with the reference HTML.
fn cases() -> Vec<(String, Vec<String>, Vec<String>)> {
    let out = common::corpus_frames();
    let files = std::fs::read_dir("tests/corpus").unwrap().count();
    assert!(files >= 20, "{files} corpus cases");
    assert_eq!(out.len(), 2 * files);
    let mut out = out;
    out.push(common::edit_frames());
    out
}

#[test]
fn js_model_mirrors_the_rust_applier() {
    let cases = cases();
    let input: Vec<(String, Vec<String>)> = cases
        .iter()
        .map(|(n, f, _)| (n.clone(), f.clone()))
        .collect();
    let results = common::js_model(&input);
    let mut frames = 0;
    for ((name, f, want), got) in cases.iter().zip(&results) {
        assert_eq!(got["error"], Json::Null, "{name}: JS model failed");
        let got_html: Vec<String> = serde_json::from_value(got["html"].clone()).unwrap();
        assert_eq!(got_html.len(), f.len(), "{name}: one HTML per frame");
        assert_eq!(
            got_html,
            common::written_out(want),
            "{name}: JS model and WireClient differ"
        );
        frames += f.len();
    }
    assert!(frames > 100, "{frames} frames compared");
    // The browser tests replay the same frames through the DOM layer.
    // With what a client served the page gets in its hello (null: a join).
    let mut statics = common::corpus_page_statics();
    statics.push(None); // the live edits start from a join
    assert_eq!(statics.len(), cases.len());
    let fixture = json!({"cases": cases.iter().zip(&statics).map(|((n, f, h), s)| json!({"name": n, "frames": f, "html": h, "statics": s})).collect::<Vec<_>>()});
    std::fs::create_dir_all("target/browser").unwrap();
    std::fs::write("target/browser/corpus-frames.json", fixture.to_string()).unwrap();
}

#[test]
fn js_model_rejects_what_the_rust_applier_rejects() {
    let frames = [
        // Not a frame, or no operations.
        "3",
        "[]",
        r#"[{"0":[["a"],[]]}]"#,
        r#"{"q":1,"o":[]}"#,
        r#"{"q":-1,"o":[["",[0]]]}"#,
        r#"{"o":[["",[0]]]}"#,
        // A version 1 frame.
        r#"{"v":1,"q":1,"o":[["t","1","x"]]}"#,
        // Nothing to apply to yet; unknown statics; statics that do not fit.
        r#"[[1,"x"]]"#,
        r#"[["zz","1"]]"#,
        r#"{"q":1,"o":[["",[9,"x"]]]}"#,
        r#"{"q":1,"s":{"0":[["a","b"],[0]]},"o":[["",[0]]]}"#,
        r#"{"q":1,"s":{"x":[["a"],[]]},"o":[["",[0]]]}"#,
        r#"{"q":1,"s":{"0":[["a","b"],[]]},"o":[["",[0,"x"]]]}"#,
        r#"{"q":1,"s":{"0":[["a","b"],[true]]},"o":[["",[0,"x"]]]}"#,
        // Slot runs: a number without a value, past the end, no number.
        r#"{"q":1,"s":{"0":[["a","b"],[0]]},"o":[["",[0,"x"]],["",0]]}"#,
        r#"{"q":1,"s":{"0":[["a","b"],[0]]},"o":[["",[0,"x"]],["",5,"y"]]}"#,
        r#"{"q":1,"s":{"0":[["a","b"],[0]]},"o":[["",[0,"x"]],["",0,"y","z"]]}"#,
        r#"{"q":1,"s":{"0":[["a","b"],[0]]},"o":[["",[0,"x"]],["",0,"y",-1,"z"]]}"#,
        // List operations on what is not a list, or malformed.
        r#"{"q":1,"s":{"0":[["a","b"],[4]]},"o":[["",[0,"x"]],["+",4,1,null,[0,"y"]]]}"#,
        r#"{"q":1,"s":{"0":[["a","b"],[4]],"1":[[""],[]]},"o":[["",[0,{"k":[],"b":[]}]],["+",4,1,null]]}"#,
        r#"{"q":1,"s":{"0":[["a","b"],[4]],"1":[[""],[]]},"o":[["",[0,{"k":[],"b":[]}]],["-",4,1]]}"#,
        r#"{"q":1,"s":{"0":[["a","b"],[4]],"1":[[""],[]]},"o":[["",[0,{"k":[true],"b":[[1]]}]]]}"#,
        r#"{"q":1,"s":{"0":[["a","b"],[4]],"1":[[""],[]]},"o":[["",[0,{"k":[],"b":[]}]],["*",4,1,-2,[1]]]}"#,
        r#"{"q":1,"s":{"0":[["a","b"],[4]],"1":[[""],[]]},"o":[["",[0,{"e":[1]}]],["!",4]]}"#,
        r#"{"q":1,"s":{"0":[["a","b"],[4]],"1":[[""],[]]},"o":[["",[0,{"k":[],"b":[]}]],["?",4]]}"#,
    ];
    for f in frames {
        assert!(WireClient::new().apply(f).is_err(), "Rust accepts {f}");
    }
    let input: Vec<(String, Vec<String>)> = frames
        .iter()
        .map(|f| (f.to_string(), vec![f.to_string()]))
        .collect();
    let results = common::js_model(&input);
    assert_eq!(results.len(), frames.len());
    for (f, r) in frames.iter().zip(results) {
        assert_ne!(r["error"], Json::Null, "JS accepts {f}");
    }
}

fn gzipped(s: &str) -> usize {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(s.as_bytes()).unwrap();
    gz.finish().unwrap().len()
}

/// The budget: 8 KiB gzipped was issue 13's goal and held until the client
/// read its model from the page it was served (no join frame on connect);
/// that reader and the implied item keys cost about 1.8 KiB gzipped, so the
/// core client is now held under 10 KiB (the goal missed; see
/// docs/benchmarks.md).
#[test]
fn client_is_under_10_kb_gzipped() {
    let n = gzipped(client::served());
    println!(
        "client: {} bytes, {} gzipped as written; served {} bytes, {n} gzipped",
        client::JS.len(),
        gzipped(client::JS),
        client::served().len()
    );
    assert!(n < 10 * 1024, "client is {n} bytes gzipped");
}

/// The extras script (loaded only by pages that use hooks, navigation or
/// uploads) stays small too,
/// and parses.
#[test]
fn extras_script_is_small_and_parses() {
    let n = gzipped(client::extras_served());
    println!(
        "extras: {} bytes as written; served {} bytes, {n} gzipped",
        client::EXTRAS_JS.len(),
        client::extras_served().len()
    );
    assert!(n < 3 * 1024, "extras.js is {n} bytes gzipped");
    node_check("extras", client::extras_served());
}

/// Node parses `script` (`node --check`).
fn node_check(name: &str, script: &str) {
    let file = std::env::temp_dir().join(format!("st-{name}-{}.js", std::process::id()));
    std::fs::write(&file, script).unwrap();
    let out = std::process::Command::new("node")
        .arg("--check")
        .arg(&file)
        .output()
        .expect("node is required (scripts/test.sh installs it)");
    let _ = std::fs::remove_file(&file);
    assert!(
        out.status.success(),
        "node --check {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The served script is the written one without comments: Node parses it,
/// it keeps every string literal of the source, and the browser tests run
/// it (the examples load it from the server).
#[test]
fn the_served_client_is_the_script_without_comments() {
    let served = client::served();
    assert!(
        served.len() < client::JS.len() * 17 / 20,
        "{} of {} bytes",
        served.len(),
        client::JS.len()
    );
    assert!(
        !served.contains("/*") && !served.contains("\n  "),
        "comments or indentation left"
    );
    for lit in [
        "'wss://'",
        "'ws://'",
        "'http://www.w3.org/2000/svg'",
        "/^\\d+$/",
        "'[st-'",
    ] {
        assert!(served.contains(lit), "{lit} lost");
    }
    node_check("served", served);
    // The browser tests run this script (and check the examples serve it).
    std::fs::create_dir_all("target/browser").unwrap();
    std::fs::write("target/browser/client.served.js", served).unwrap();
}

#[test]
fn client_etag_and_caching() {
    let etag = client::etag();
    assert!(etag.starts_with('"') && etag.ends_with('"') && etag.len() == 18);
    assert!(client::not_modified(Some(etag)));
    assert!(client::not_modified(Some(&format!("W/{etag}, \"x\""))));
    assert!(!client::not_modified(Some("\"0000000000000000\"")));
    assert!(!client::not_modified(None));
    let v = format!("v={}", etag.trim_matches('"'));
    assert_eq!(
        client::cache_control(Some(&v)),
        "public, max-age=31536000, immutable"
    );
    assert_eq!(client::cache_control(Some("v=old")), "no-cache");
    assert_eq!(client::cache_control(None), "no-cache");
}
