//! Sessions in SQLite across an engine restart (two engines, one after the
//! other, on one file): the session comes back with its data, its epoch and
//! its frames, so a client that held it resumes with exactly the frames it
//! missed; bad files are refused at open with a clear error; a full disk
//! fails a render cleanly and loses nothing stored.
#![cfg(feature = "sqlite")]

use std::path::{Path, PathBuf};

use minijinja::Environment;
use serde_json::{Value as Json, json};
use statetemplate::session::Catchup;
use statetemplate::store::{SessionStore, SqliteOptions, SqliteStore, conformance};
use statetemplate::testing::WireClient;
use statetemplate::token::KeyRing;
use statetemplate::{ErrorKind, StateTemplate};

const PAGE: &str = "<h1>{{ title }}</h1>\
<ul>{% for r in rows %}<li id=\"r{{ r.id }}\">{{ loop.index }}. {{ r.text }}</li>{% endfor %}</ul>";

fn env() -> Environment<'static> {
    let mut env = Environment::new();
    env.add_template("page.html", PAGE).unwrap();
    env
}

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "st-restart-{}-{name}-{:x}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("sessions.db")
}

fn engine(path: &Path, keys: &KeyRing) -> StateTemplate {
    StateTemplate::builder(env())
        .keys(keys.clone())
        .store(SqliteStore::open(path).unwrap())
        .build()
        .unwrap()
}

fn data(title: &str, n: usize) -> Json {
    json!({
        "title": title,
        "rows": (0..n).map(|i| json!({"id": i, "text": format!("row {i}")})).collect::<Vec<_>>(),
    })
}

/// A client joins, misses the last two frames of the first engine (it is
/// "disconnected"), the engine goes away; a second engine on the same file
/// gives the client exactly those two frames, then its own live frames,
/// and the client's page equals a fresh render all along.
#[tokio::test]
async fn a_client_resumes_across_a_restart_with_the_frames_it_missed() {
    let path = temp("resume");
    conformance::resume_after_restart(|| SqliteStore::open(&path).unwrap()).await;
}

/// The first engine's frames are gone (a store that keeps none): the client
/// gets a resync into the *same* session with its data, not a new one.
#[tokio::test]
async fn without_kept_frames_the_client_gets_a_resync_of_the_same_session() {
    let path = temp("noframes");
    let keys = KeyRing::generate().unwrap();
    let opts = || SqliteOptions::default().frames_kept(0);
    let a = StateTemplate::builder(env())
        .keys(keys.clone())
        .store(SqliteStore::open_with(&path, opts()).unwrap())
        .build()
        .unwrap();
    let initial = a.new_session("page.html", &data("t0", 3)).await.unwrap();
    let sid = initial.session_id.to_string();
    let s = a.get_session(&sid, &initial.token).await.unwrap();
    let (resync, sub) = s.join().await.unwrap();
    let epoch = resync.epoch().to_owned();
    s.render(&data("kept", 9)).await.unwrap();
    drop(sub);
    a.shutdown().await;
    drop((s, a));

    let b = StateTemplate::builder(env())
        .keys(keys.clone())
        .store(SqliteStore::open_with(&path, opts()).unwrap())
        .build()
        .unwrap();
    let s = b.get_session(&sid, &initial.token).await.unwrap();
    let (catchup, _sub) = s.resume(resync.seq(), &epoch).await.unwrap();
    let Catchup::Resync(r) = catchup else {
        panic!("no frames were kept: expected a resync")
    };
    let want = b
        .fragments()
        .render_html("page.html", &data("kept", 9))
        .unwrap();
    assert_eq!(r.html(), want, "the resync carries the session's own data");
    let mut client = WireClient::new();
    client.apply(r.frame()).unwrap();
    assert_eq!(client.html(), want);
    b.shutdown().await;
}

#[tokio::test]
async fn a_file_that_is_not_a_database_is_refused_and_left_alone() {
    let path = temp("garbage");
    let junk: Vec<u8> = (0..10_000u32).map(|i| (i * 7 + 3) as u8).collect();
    std::fs::write(&path, &junk).unwrap();
    let err = SqliteStore::open(&path).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Store);
    let msg = err.to_string();
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert!(msg.contains("not a database"), "{msg}");
    assert_eq!(std::fs::read(&path).unwrap(), junk, "the file is untouched");
}

#[tokio::test]
async fn a_truncated_database_is_refused_at_open() {
    let path = temp("trunc");
    let keys = KeyRing::generate().unwrap();
    {
        let a = engine(&path, &keys);
        for i in 0..200 {
            a.new_session("page.html", &data(&format!("s{i}"), 20))
                .await
                .unwrap();
        }
        a.shutdown().await;
    }
    // Let the writer thread finish and fold the WAL into the file.
    checkpoint(&path);
    let len = std::fs::metadata(&path).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(len / 2).unwrap();
    drop(f);
    let before = std::fs::read(&path).unwrap();
    let err = SqliteStore::open(&path).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Store);
    let msg = err.to_string();
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert!(
        msg.contains("damaged") || msg.contains("malformed") || msg.contains("corrupt"),
        "{msg}"
    );
    assert_eq!(std::fs::read(&path).unwrap(), before, "left as it is");
}

/// Folds the WAL into the file (once the previous store's writer thread,
/// which ends when its last handle is dropped, has let go).
fn checkpoint(path: &Path) {
    std::thread::sleep(std::time::Duration::from_millis(100));
    let c = rusqlite::Connection::open(path).unwrap();
    let (busy, _, _): (i64, i64, i64) = c
        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .unwrap();
    assert_eq!(busy, 0, "checkpoint not blocked");
}

#[tokio::test]
async fn an_older_schema_is_refused_and_nothing_is_changed() {
    let path = temp("old");
    drop(SqliteStore::open(&path).unwrap());
    std::thread::sleep(std::time::Duration::from_millis(100));
    set_user_version(&path, 0);
    // version 0 with our tables: not ours to touch.
    let err = SqliteStore::open(&path).unwrap_err();
    assert!(err.to_string().contains("did not make"), "{err}");
    set_user_version(&path, 7);
    let err = SqliteStore::open(&path).unwrap_err();
    assert!(err.to_string().contains("newer version"), "{err}");
}

fn set_user_version(path: &Path, v: i64) {
    // The store is the only SQLite user here: go through a raw statement.
    let c = rusqlite::Connection::open(path).unwrap();
    c.pragma_update(None, "user_version", v).unwrap();
}

/// A store capped in size (as a full disk): a render that cannot be
/// written fails with a clear error, the session keeps its page and data,
/// and what was stored before is all there after a reopen.
#[tokio::test]
async fn a_full_disk_fails_the_render_and_keeps_the_session() {
    let path = temp("full");
    let keys = KeyRing::generate().unwrap();
    let cap = 256 * 1024;
    let e = StateTemplate::builder(env())
        .keys(keys.clone())
        .store(SqliteStore::open_with(&path, SqliteOptions::default().max_size(cap)).unwrap())
        .build()
        .unwrap();
    let initial = e.new_session("page.html", &data("t0", 3)).await.unwrap();
    let sid = initial.session_id.to_string();
    let s = e.get_session(&sid, &initial.token).await.unwrap();
    s.render(&data("t1", 3)).await.unwrap();
    let (seq, html) = (s.seq().await, s.html().await);
    // About 1 MB of data: more than the cap.
    let err = s.render(&data("big", 20_000)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Store);
    assert!(err.to_string().contains("full"), "{err}");
    assert_eq!(s.seq().await, seq, "the render was undone");
    assert_eq!(s.html().await, html, "the page is as before");
    // The session goes on.
    s.render(&data("t2", 4)).await.unwrap();
    e.shutdown().await;
    drop((s, e));
    let store = SqliteStore::open(&path).unwrap();
    let rec = store
        .load(&initial.session_id)
        .await
        .unwrap()
        .expect("the session is stored");
    assert_eq!(serde_json::to_value(&rec.data).unwrap(), data("t2", 4));
}

#[tokio::test]
async fn stored_sessions_count_and_expire_through_the_store() {
    let path = temp("count");
    let keys = KeyRing::generate().unwrap();
    let e = engine(&path, &keys);
    for i in 0..5 {
        e.new_session("page.html", &data(&format!("s{i}"), 1))
            .await
            .unwrap();
    }
    assert_eq!(e.store().count().await.unwrap(), 5);
    e.shutdown().await;
}

/// A deploy that changed the template: the kept frames were made for the
/// old page, so a client that held it gets a resync of its session (with
/// its data), never frames for another layout.
#[tokio::test]
async fn a_changed_template_after_a_restart_gives_a_resync_not_old_frames() {
    let path = temp("deploy");
    let keys = KeyRing::generate().unwrap();
    let a = engine(&path, &keys);
    let initial = a.new_session("page.html", &data("t0", 3)).await.unwrap();
    let sid = initial.session_id.to_string();
    let s = a.get_session(&sid, &initial.token).await.unwrap();
    let (resync, sub) = s.join().await.unwrap();
    s.render(&data("t1", 4)).await.unwrap();
    drop(sub);
    a.shutdown().await;
    drop((s, a));

    let mut env = Environment::new();
    env.add_template(
        "page.html",
        "<h2>{{ title }}</h2><p>{{ rows|length }} rows</p>",
    )
    .unwrap();
    let b = StateTemplate::builder(env)
        .keys(keys.clone())
        .store(SqliteStore::open(&path).unwrap())
        .build()
        .unwrap();
    let s = b.get_session(&sid, &initial.token).await.unwrap();
    assert_ne!(
        s.epoch(),
        resync.epoch(),
        "another layout, another page epoch"
    );
    let (catchup, _sub) = s.resume(resync.seq(), resync.epoch()).await.unwrap();
    let Catchup::Resync(r) = catchup else {
        panic!("the old frames must not be replayed into a new layout")
    };
    let plain = statetemplate::testing::strip_anchors(r.html());
    assert_eq!(plain, "<h2>t1</h2><p>4 rows</p>");
    b.shutdown().await;
}

/// A new database file, and its WAL, are readable by their owner only:
/// they hold the sessions' data.
#[cfg(unix)]
#[tokio::test]
async fn a_new_database_is_private_to_its_owner() {
    use std::os::unix::fs::PermissionsExt;
    let path = temp("mode");
    let keys = KeyRing::generate().unwrap();
    let e = engine(&path, &keys);
    e.new_session("page.html", &data("t0", 1)).await.unwrap();
    for p in [
        path.clone(),
        PathBuf::from(format!("{}-wal", path.display())),
    ] {
        let mode = std::fs::metadata(&p).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "{}: mode {mode:o}", p.display());
    }
    e.shutdown().await;
}
