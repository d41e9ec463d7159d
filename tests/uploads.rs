//! File uploads over real HTTP on loopback: a whole file reaches its
//! handler; a file too big (declared or streamed), of a type not accepted,
//! cut short, refused by the handler, or sent with a bad token or from
//! another origin gets a clear error, and no file is left behind.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use statetemplate::transport::UploadOptions;
use statetemplate::{Error, EventCtx, InitialRender, Live, StateTemplate};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Default, Serialize, Deserialize)]
struct Page {
    files: Vec<String>,
}

/// What the handler saw: (file name, type, bytes).
type Seen = Arc<Mutex<Vec<(String, String, Vec<u8>)>>>;

struct App {
    addr: String,
    dir: PathBuf,
    seen: Seen,
    engine: StateTemplate,
    initial: InitialRender,
}

async fn app() -> App {
    let dir =
        std::env::temp_dir().join(format!("st-uploads-{}-{}", std::process::id(), rand_u32()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut env = minijinja::Environment::new();
    env.add_template(
        "p.html",
        "<ul>{% for f in files %}<li>{{ f }}</li>{% endfor %}</ul>",
    )
    .unwrap();
    let engine = StateTemplate::builder(env).build().unwrap();
    let seen: Seen = Arc::default();
    let s2 = seen.clone();
    let live = Live::new(engine.clone()).on_upload(
        "doc",
        UploadOptions::new(1000)
            .accept(["text/plain", ".md"])
            .dir(&dir),
        move |ctx: EventCtx, up| {
            let seen = s2.clone();
            async move {
                let bytes = up.bytes().await?;
                if bytes.starts_with(b"virus") {
                    return Err(Error::user("That file is refused."));
                }
                assert_eq!(ctx.event.payload["size"], bytes.len());
                seen.lock().unwrap().push((
                    up.file_name().to_owned(),
                    up.content_type().to_owned(),
                    bytes,
                ));
                let name = up.file_name().to_owned();
                ctx.session
                    .update(|p: &mut Page| {
                        p.files.push(name);
                        Ok(())
                    })
                    .await?;
                ctx.reply(&"thanks")?;
                Ok(())
            }
        },
    );
    let s3 = seen.clone();
    let live = live.on_upload(
        "slow",
        UploadOptions::new(1000).dir(&dir),
        move |_ctx: EventCtx, up| {
            let seen = s3.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(400)).await;
                let bytes = up.bytes().await?;
                seen.lock()
                    .unwrap()
                    .push((up.file_name().to_owned(), "slow".to_owned(), bytes));
                Ok(())
            }
        },
    );
    let live = live.on_upload(
        "one",
        UploadOptions::new(1000).max_parallel(1).dir(&dir),
        |_ctx: EventCtx, _up| async { Ok(()) },
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let router: axum::Router = live.router();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    let initial = engine
        .new_session("p.html", &Page::default())
        .await
        .unwrap();
    App {
        addr,
        dir,
        seen,
        engine,
        initial,
    }
}

fn rand_u32() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// How a request sends its body.
enum Body<'a> {
    /// With a Content-Length of the body's length.
    Whole(&'a [u8]),
    /// Chunked, no length.
    Chunked(&'a [u8]),
    /// Declares `n` bytes, sends these, and closes.
    CutShort(usize, &'a [u8]),
}

async fn post(
    app: &App,
    name: &str,
    token: &str,
    origin: &str,
    headers: &[(&str, &str)],
    body: Body<'_>,
) -> (u16, Json) {
    let mut s = TcpStream::connect(&app.addr).await.unwrap();
    let mut req = format!(
        "POST /statetemplate/upload/{name}?sid={}&token={} HTTP/1.1\r\nHost: {}\r\nOrigin: {origin}\r\nConnection: close\r\n",
        app.initial.session_id, token, app.addr
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    match &body {
        Body::Whole(b) => req.push_str(&format!("Content-Length: {}\r\n\r\n", b.len())),
        Body::Chunked(_) => req.push_str("Transfer-Encoding: chunked\r\n\r\n"),
        Body::CutShort(n, _) => req.push_str(&format!("Content-Length: {n}\r\n\r\n")),
    }
    s.write_all(req.as_bytes()).await.unwrap();
    match body {
        Body::Whole(b) => s.write_all(b).await.unwrap(),
        Body::Chunked(b) => {
            for c in b.chunks(300) {
                s.write_all(format!("{:x}\r\n", c.len()).as_bytes())
                    .await
                    .unwrap();
                s.write_all(c).await.unwrap();
                s.write_all(b"\r\n").await.unwrap();
            }
            s.write_all(b"0\r\n\r\n").await.unwrap();
        }
        Body::CutShort(_, b) => {
            s.write_all(b).await.unwrap();
            s.shutdown().await.unwrap();
            return (0, Json::Null);
        }
    }
    answer(&mut s).await
}

/// Asks what became of upload `id` of upload `name`.
async fn cancel(app: &App, name: &str, token: &str, origin: &str, id: Option<&str>) -> (u16, Json) {
    let mut s = TcpStream::connect(&app.addr).await.unwrap();
    let id = id.map_or(String::new(), |id| format!("X-St-Upload-Id: {id}\r\n"));
    let req = format!(
        "POST /statetemplate/upload/{name}/cancel?sid={}&token={token} HTTP/1.1\r\nHost: {}\r\nOrigin: {origin}\r\nConnection: close\r\n{id}Content-Length: 0\r\n\r\n",
        app.initial.session_id, app.addr
    );
    s.write_all(req.as_bytes()).await.unwrap();
    answer(&mut s).await
}

/// A response's status and JSON body.
async fn answer(s: &mut TcpStream) -> (u16, Json) {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status: u16 = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
    (status, serde_json::from_str(body).unwrap_or(Json::Null))
}

/// The temporary files left in `dir`.
fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

#[tokio::test]
async fn a_whole_file_reaches_its_handler_and_the_page() {
    let a = app().await;
    let origin = format!("http://{}", a.addr);
    let token = a.initial.token.clone();
    let file = b"# Notes\nhello\n".repeat(10);
    let (status, j) = post(
        &a,
        "doc",
        &token,
        &origin,
        &[
            ("Content-Type", "text/plain"),
            ("X-St-File", "..%2F..%2Fnotes.txt"),
        ],
        Body::Whole(&file),
    )
    .await;
    assert_eq!(status, 200, "{j}");
    assert_eq!(j, serde_json::json!({"ok": true, "reply": "thanks"}));
    let (status, _) = post(
        &a,
        "doc",
        &token,
        &origin,
        &[
            ("Content-Type", "application/octet-stream"),
            ("X-St-File", "readme.md"),
        ],
        Body::Chunked(&file),
    )
    .await;
    assert_eq!(status, 200, "a chunked body, accepted by its name");
    {
        let seen = a.seen.lock().unwrap();
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[0].0, "notes.txt", "only the name's last part");
        assert_eq!(seen[0].1, "text/plain");
        assert_eq!(seen[0].2, file, "every byte");
        assert_eq!(seen[1].2, file);
    }
    let s = a
        .engine
        .get_session(&a.initial.session_id.to_string(), &token)
        .await
        .unwrap();
    let page: Page = s.data().await.unwrap();
    assert_eq!(page.files, ["notes.txt", "readme.md"]);
    assert!(
        leftovers(&a.dir).is_empty(),
        "the handler kept nothing: {:?}",
        leftovers(&a.dir)
    );
    let _ = std::fs::remove_dir_all(&a.dir);
}

#[tokio::test]
async fn refused_uploads_leave_nothing_and_say_why() {
    let a = app().await;
    let origin = format!("http://{}", a.addr);
    let token = a.initial.token.clone();
    let text = [("Content-Type", "text/plain"), ("X-St-File", "a.txt")];
    let big = vec![b'x'; 1001];
    let cases: Vec<(&str, u16, &str, (u16, Json))> = vec![
        (
            "declared too big",
            413,
            "too big",
            post(&a, "doc", &token, &origin, &text, Body::Whole(&big)).await,
        ),
        (
            "streamed too big",
            413,
            "too big",
            post(&a, "doc", &token, &origin, &text, Body::Chunked(&big)).await,
        ),
        (
            "wrong type",
            415,
            "not accepted",
            post(
                &a,
                "doc",
                &token,
                &origin,
                &[
                    ("Content-Type", "application/x-msdownload"),
                    ("X-St-File", "a.exe"),
                ],
                Body::Whole(b"MZ"),
            )
            .await,
        ),
        (
            "refused by the handler",
            422,
            "refused",
            post(&a, "doc", &token, &origin, &text, Body::Whole(b"virus!")).await,
        ),
        (
            "bad token",
            401,
            "expired",
            post(&a, "doc", "forged", &origin, &text, Body::Whole(b"hi")).await,
        ),
        (
            "unknown upload",
            404,
            "No such",
            post(&a, "nope", &token, &origin, &text, Body::Whole(b"hi")).await,
        ),
    ];
    for (what, want, says, (status, j)) in cases {
        assert_eq!(status, want, "{what}: {j}");
        assert!(
            j["error"].as_str().unwrap_or("").contains(says),
            "{what}: {j}"
        );
    }
    let (status, _) = post(
        &a,
        "doc",
        &token,
        "http://evil.example",
        &text,
        Body::Whole(b"hi"),
    )
    .await;
    assert_eq!(status, 403, "another origin");
    // Cut short: the connection closes before the declared length.
    post(
        &a,
        "doc",
        &token,
        &origin,
        &text,
        Body::CutShort(900, &[b'y'; 400]),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        a.seen.lock().unwrap().is_empty(),
        "no handler saw any of them"
    );
    assert!(
        leftovers(&a.dir).is_empty(),
        "nothing partial: {:?}",
        leftovers(&a.dir)
    );
    // And the session is as it was, and still takes a good file.
    let (status, _) = post(&a, "doc", &token, &origin, &text, Body::Whole(b"fine")).await;
    assert_eq!(status, 200);
    assert_eq!(a.seen.lock().unwrap().len(), 1);
    let _ = std::fs::remove_dir_all(&a.dir);
}

#[tokio::test]
async fn uploads_in_flight_are_bounded() {
    let a = app().await;
    let origin = format!("http://{}", a.addr);
    let token = a.initial.token.clone();
    // One upload in flight: headers and half its body sent, then a pause.
    let mut slow = TcpStream::connect(&a.addr).await.unwrap();
    let head = format!(
        "POST /statetemplate/upload/one?sid={}&token={token} HTTP/1.1\r\nHost: {}\r\nOrigin: {origin}\r\nConnection: close\r\nContent-Type: text/plain\r\nContent-Length: 10\r\n\r\nhello",
        a.initial.session_id, a.addr
    );
    slow.write_all(head.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, j) = post(
        &a,
        "one",
        &token,
        &origin,
        &[("Content-Type", "text/plain")],
        Body::Whole(b"x"),
    )
    .await;
    assert_eq!(status, 503, "a second one at once: {j}");
    slow.write_all(b"world").await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), slow.read_to_end(&mut out)).await;
    assert!(
        String::from_utf8_lossy(&out).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&out)
    );
    let (status, _) = post(
        &a,
        "one",
        &token,
        &origin,
        &[("Content-Type", "text/plain")],
        Body::Whole(b"x"),
    )
    .await;
    assert_eq!(status, 200, "then the next one");
    assert!(leftovers(&a.dir).is_empty());
    let _ = std::fs::remove_dir_all(&a.dir);
}

#[tokio::test]
async fn a_cancel_says_what_became_of_the_upload() {
    let a = app().await;
    let origin = format!("http://{}", a.addr);
    let token = a.initial.token.clone();
    let cancelled = serde_json::json!({"cancelled": true});

    // Cancelled while it arrives: the rest of the body is refused.
    let mut s = TcpStream::connect(&a.addr).await.unwrap();
    let head = format!(
        "POST /statetemplate/upload/doc?sid={}&token={token} HTTP/1.1\r\nHost: {}\r\nOrigin: {origin}\r\nConnection: close\r\nContent-Type: text/plain\r\nX-St-Upload-Id: arriving\r\nContent-Length: 10\r\n\r\nhello",
        a.initial.session_id, a.addr
    );
    s.write_all(head.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, j) = cancel(&a, "doc", &token, &origin, Some("arriving")).await;
    assert_eq!((status, &j), (200, &cancelled), "while it arrives");
    s.write_all(b"world").await.unwrap();
    let (status, j) = answer(&mut s).await;
    assert_eq!(status, 409, "the rest came after the cancel: {j}");
    assert_eq!(j["error"], "The upload was cancelled.");

    // Cancelled before it arrived (the cancel overtook it).
    let (status, j) = cancel(&a, "doc", &token, &origin, Some("late")).await;
    assert_eq!((status, &j), (200, &cancelled), "before it arrives");
    let with = [("Content-Type", "text/plain"), ("X-St-Upload-Id", "late")];
    let (status, j) = post(&a, "doc", &token, &origin, &with, Body::Whole(b"hi")).await;
    assert_eq!(status, 409, "{j}");
    assert!(a.seen.lock().unwrap().is_empty(), "no handler ran");

    // Cancelled after its handler ran: the handler's answer, not a lie.
    let with = [("Content-Type", "text/plain"), ("X-St-Upload-Id", "kept")];
    let (status, j) = post(&a, "doc", &token, &origin, &with, Body::Whole(b"hi")).await;
    assert_eq!(status, 200, "{j}");
    let (status, j) = cancel(&a, "doc", &token, &origin, Some("kept")).await;
    assert_eq!(status, 200);
    assert_eq!(j, serde_json::json!({"ok": true, "reply": "thanks"}));
    let (status, j) = post(&a, "doc", &token, &origin, &with, Body::Whole(b"hi")).await;
    assert_eq!(status, 409, "an id is used once: {j}");
    let refused = [("Content-Type", "text/plain"), ("X-St-Upload-Id", "virus")];
    let (status, _) = post(&a, "doc", &token, &origin, &refused, Body::Whole(b"virus")).await;
    assert_eq!(status, 422);
    let (status, j) = cancel(&a, "doc", &token, &origin, Some("virus")).await;
    assert_eq!(
        (status, j["error"].as_str()),
        (422, Some("That file is refused."))
    );

    // The browser goes away once the whole file is sent, while the handler
    // runs: the handler still runs to its end, and the cancel waits for it.
    let mut s = TcpStream::connect(&a.addr).await.unwrap();
    let head = format!(
        "POST /statetemplate/upload/slow?sid={}&token={token} HTTP/1.1\r\nHost: {}\r\nOrigin: {origin}\r\nConnection: close\r\nX-St-Upload-Id: gone\r\nContent-Length: 4\r\n\r\nslow",
        a.initial.session_id, a.addr
    );
    s.write_all(head.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(s);
    let (status, j) = cancel(&a, "slow", &token, &origin, Some("gone")).await;
    assert_eq!(
        (status, &j),
        (200, &serde_json::json!({"ok": true})),
        "waited for the handler"
    );
    assert!(
        a.seen
            .lock()
            .unwrap()
            .iter()
            .any(|(_, kind, b)| kind == "slow" && b == b"slow"),
        "the handler ran to its end"
    );

    // Bad cancels.
    let (status, _) = cancel(&a, "doc", &token, &origin, None).await;
    assert_eq!(status, 400, "no id");
    let (status, _) = cancel(&a, "doc", &token, &origin, Some("a/b")).await;
    assert_eq!(status, 400, "a bad id");
    let (status, _) = cancel(&a, "doc", &token, &origin, Some(&"x".repeat(65))).await;
    assert_eq!(status, 400, "a long id");
    let (status, _) = cancel(&a, "doc", "bad", &origin, Some("x")).await;
    assert_eq!(status, 401, "a bad token");
    let (status, _) = cancel(&a, "doc", &token, "http://evil.example", Some("x")).await;
    assert_eq!(status, 403, "another origin");
    let (status, _) = cancel(&a, "nope", &token, &origin, Some("x")).await;
    assert_eq!(status, 404, "no such upload");
    let (status, j) = post(
        &a,
        "doc",
        &token,
        &origin,
        &[("X-St-Upload-Id", "a b")],
        Body::Whole(b"x"),
    )
    .await;
    assert_eq!(status, 400, "an upload with a bad id: {j}");
    assert!(leftovers(&a.dir).is_empty(), "{:?}", leftovers(&a.dir));
    let _ = std::fs::remove_dir_all(&a.dir);
}
