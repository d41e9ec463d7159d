//! File uploads: `<input type="file" st-upload="NAME">` in a live page sends
//! each chosen file over HTTP (`POST {prefix}/upload/NAME?sid=…&token=…`,
//! the session's token as for the socket, the page's own origin only), with
//! progress and cancel in the browser (the extras script). The server
//! checks the app's limits (size, type) before and while it reads, writes
//! the bytes to a temporary file, and hands a complete file to the upload's
//! handler; a refused, oversize or truncated upload leaves no file behind.
//! See `docs/uploads.md`.

use std::path::{Path, PathBuf};

use serde::Serialize;
use tokio::io::AsyncWriteExt;

use std::future::Future;
use std::sync::Arc;

use super::Live;
use super::handlers::BoxFuture;
use crate::{Error, ErrorKind, Result};

pub(super) type UploadHandler = dyn Fn(super::EventCtx, Upload) -> BoxFuture + Send + Sync;

/// One upload name: its limits and its handler.
#[cfg_attr(not(feature = "axum"), allow(dead_code))]
pub(super) struct UploadEntry {
    pub opts: UploadOptions,
    pub handler: Arc<UploadHandler>,
    /// Uploads in flight (at most `opts.max_parallel`).
    pub in_flight: Arc<tokio::sync::Semaphore>,
    /// Recent uploads' outcomes, for cancels.
    pub outcomes: Arc<super::upload_cancel::Outcomes>,
}

impl Live {
    /// Accepts files for `<input type="file" st-upload="NAME">` (the
    /// extras script sends them, see [`Live::client_extras`]) within
    /// `opts`' limits, and runs `f` with each complete file and the
    /// context of the session that sent it (the app's state, the session
    /// to render the result to). A file over the size limit, of a type not
    /// accepted, cut short or refused by `f` leaves nothing behind; the
    /// page shows why (`f`'s [`Error::user`] message, or the limit it
    /// broke). The file is removed after `f` unless `f` keeps it
    /// ([`Upload::persist`]). Served by [`Live::router`] (axum).
    pub fn on_upload<F, Fut>(mut self, name: &str, opts: UploadOptions, f: F) -> Live
    where
        F: Fn(super::EventCtx, Upload) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<()>> + Send + 'static,
    {
        let handler: Arc<UploadHandler> =
            Arc::new(move |ctx, up| Box::pin(f(ctx, up)) as BoxFuture);
        let in_flight = Arc::new(tokio::sync::Semaphore::new(opts.max_parallel));
        Arc::make_mut(&mut self.uploads).insert(
            name.to_owned(),
            Arc::new(UploadEntry {
                opts,
                handler,
                in_flight,
                outcomes: Arc::default(),
            }),
        );
        self
    }

    /// Runs one upload request: the session from `sid` and `token`, the
    /// limits of upload `name`, the body, the handler. The answer is JSON:
    /// `{"ok":true}` (and the handler's `"reply"`), or `{"error":…}` with
    /// the status.
    #[cfg(feature = "axum")]
    pub(crate) async fn upload<S, B, E>(
        &self,
        name: &str,
        params: &super::ConnectParams,
        head: UploadHead<'_>,
        body: S,
    ) -> (u16, String)
    where
        S: futures_util::Stream<Item = std::result::Result<B, E>> + Unpin,
        B: AsRef<[u8]>,
        E: std::fmt::Display,
    {
        match self.upload_inner(name, params, head, body).await {
            Ok(answer) => answer,
            Err(r) => r.answer(),
        }
    }

    /// Answers a cancel of upload `id` (the client aborted it): whether
    /// it was stopped before its handler, or the handler's answer (see
    /// `upload_cancel`).
    #[cfg(feature = "axum")]
    pub(crate) async fn upload_cancel(
        &self,
        name: &str,
        params: &super::ConnectParams,
        id: Option<&str>,
    ) -> (u16, String) {
        let Some(entry) = self.uploads.get(name).cloned() else {
            return Refusal::new(404, "No such upload.").answer();
        };
        let Ok(session) = self.engine.get_session(&params.sid, &params.token).await else {
            return Refusal::new(401, "The page has expired; reload it.").answer();
        };
        let Some(id) = id.filter(|id| super::upload_cancel::valid_id(id)) else {
            return Refusal::new(400, "A bad upload id.").answer();
        };
        let wait = session.reserve_event(self.config.rate_per_sec, self.config.rate_burst);
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        entry.outcomes.cancel(&params.sid, id).await
    }

    #[cfg(feature = "axum")]
    async fn upload_inner<S, B, E>(
        &self,
        name: &str,
        params: &super::ConnectParams,
        head: UploadHead<'_>,
        body: S,
    ) -> std::result::Result<(u16, String), Refusal>
    where
        S: futures_util::Stream<Item = std::result::Result<B, E>> + Unpin,
        B: AsRef<[u8]>,
        E: std::fmt::Display,
    {
        let entry = self
            .uploads
            .get(name)
            .cloned()
            .ok_or_else(|| Refusal::new(404, "No such upload."))?;
        let session = self
            .engine
            .get_session(&params.sid, &params.token)
            .await
            .map_err(|_| Refusal::new(401, "The page has expired; reload it."))?;
        // The id a cancel asks about (see `upload_cancel`).
        let mut ticket = match head.id {
            None => None,
            Some(id) if !super::upload_cancel::valid_id(id) => {
                return Err(Refusal::new(400, "A bad upload id."));
            }
            Some(id) => Some(
                entry
                    .outcomes
                    .begin(&params.sid, id)
                    .map_err(|why| Refusal::new(409, why))?,
            ),
        };
        let file_name = clean_name(head.file_name);
        let content_type = head
            .content_type
            .unwrap_or("application/octet-stream")
            .to_owned();
        if !entry.opts.accepts(&file_name, &content_type) {
            return Err(Refusal::new(
                415,
                format!(
                    "That type of file is not accepted (only {}).",
                    entry.opts.accept.join(", ")
                ),
            ));
        }
        if head.length.is_some_and(|n| n > entry.opts.max_bytes) {
            return Err(too_big(entry.opts.max_bytes));
        }
        let Ok(_slot) = entry.in_flight.clone().try_acquire_owned() else {
            return Err(Refusal::new(
                503,
                "Too many uploads at once; try again in a moment.",
            ));
        };
        // An upload is an event: it takes the session's events budget.
        let wait = session.reserve_event(self.config.rate_per_sec, self.config.rate_burst);
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        let _ = session.touch().await;
        let up = receive(&entry.opts, head.length, body, file_name, content_type).await?;
        if ticket.as_mut().is_some_and(|t| !t.handling()) {
            // Cancelled while it arrived: dropping `up` removes the file.
            return Err(Refusal::new(409, "The upload was cancelled."));
        }
        let payload = serde_json::json!({"file": up.file_name(), "type": up.content_type(), "size": up.size()});
        let ctx = super::handlers::new_ctx(self, name, payload, &session);
        let name = name.to_owned();
        // The handler runs to its end even when the browser goes away (an
        // abort after the file was sent whole): a cancel may be waiting
        // for its answer, and a handler stopped half-way could keep the
        // file without showing it.
        let run = tokio::spawn(async move {
            let _slot = _slot;
            let answer = run_handler(&entry, &name, ctx, up).await;
            if let Some(t) = ticket {
                t.finish(answer.0, &answer.1);
            }
            answer
        });
        run.await
            .map_err(|_| Refusal::new(500, super::handlers::HANDLER_FAILED))
    }
}

/// Runs an upload's handler with its file: its answer as (status, JSON).
#[cfg(feature = "axum")]
async fn run_handler(
    entry: &UploadEntry,
    name: &str,
    ctx: super::EventCtx,
    up: Upload,
) -> (u16, String) {
    use futures_util::FutureExt;
    let reply = ctx.reply_slot();
    let run = std::panic::AssertUnwindSafe((entry.handler)(ctx, up)).catch_unwind();
    match run.await {
        Ok(Ok(())) => {
            let mut j = serde_json::json!({"ok": true});
            if let Some(r) = reply.lock().unwrap_or_else(|p| p.into_inner()).take() {
                j["reply"] = r;
            }
            return (200, j.to_string());
        }
        Ok(Err(e)) if e.kind() == ErrorKind::User => Refusal::new(422, e.to_string()),
        Ok(Err(e)) if e.kind() == ErrorKind::Protocol => Refusal::new(400, e.to_string()),
        Ok(Err(e)) => {
            tracing::warn!(upload = name, error = %e, "upload handler failed");
            Refusal::new(500, super::handlers::HANDLER_FAILED)
        }
        Err(_) => {
            tracing::error!(upload = name, "upload handler panicked");
            Refusal::new(500, super::handlers::HANDLER_FAILED)
        }
    }
    .answer()
}

/// What an upload request says of its file.
#[cfg_attr(not(feature = "axum"), allow(dead_code))]
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct UploadHead<'a> {
    /// `Content-Length`.
    pub length: Option<u64>,
    /// `Content-Type`.
    pub content_type: Option<&'a str>,
    /// `X-St-File` (percent-encoded).
    pub file_name: Option<&'a str>,
    /// `X-St-Upload-Id`: what a cancel names (see `upload_cancel`).
    pub id: Option<&'a str>,
}

/// The limits of one upload name (see [`crate::Live::on_upload`]).
#[derive(Debug, Clone)]
pub struct UploadOptions {
    pub(crate) max_bytes: u64,
    pub(crate) accept: Vec<String>,
    pub(crate) dir: PathBuf,
    pub(crate) max_parallel: usize,
}

impl UploadOptions {
    /// Files of at most `max_bytes`, of any type, kept while the handler
    /// runs in the system's temporary directory.
    pub fn new(max_bytes: u64) -> UploadOptions {
        UploadOptions {
            max_bytes,
            accept: Vec::new(),
            dir: std::env::temp_dir(),
            max_parallel: 8,
        }
    }

    /// How many files of this upload may arrive at once, from all sessions
    /// together (default 8): with the size limit, it bounds the disk that
    /// uploads in flight can take. Beyond it a request is refused at once
    /// (503), before a byte is read.
    pub fn max_parallel(mut self, n: usize) -> UploadOptions {
        self.max_parallel = n.max(1);
        self
    }

    /// Only these types: media types (`image/png`), families (`image/*`)
    /// or file name endings (`.pdf`), as in an `accept` attribute. A file
    /// matches when its `Content-Type` or its name does. Default: any.
    pub fn accept<I, S>(mut self, types: I) -> UploadOptions
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.accept = types
            .into_iter()
            .map(|t| t.into().trim().to_ascii_lowercase())
            .collect();
        self
    }

    /// Where files are written while they arrive and while the handler
    /// runs (use a directory on the disk the handler moves them to, so
    /// [`Upload::persist`] is a rename).
    pub fn dir(mut self, dir: impl Into<PathBuf>) -> UploadOptions {
        self.dir = dir.into();
        self
    }

    /// Whether a file named `file_name` of type `content_type` may come.
    #[cfg_attr(not(feature = "axum"), allow(dead_code))]
    pub(crate) fn accepts(&self, file_name: &str, content_type: &str) -> bool {
        if self.accept.is_empty() {
            return true;
        }
        let ct = content_type
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        let name = file_name.to_ascii_lowercase();
        self.accept.iter().any(|a| {
            if let Some(ext) = a.strip_prefix('.') {
                name.rsplit_once('.').is_some_and(|(_, e)| e == ext)
            } else if let Some(family) = a.strip_suffix("/*") {
                ct.split_once('/').is_some_and(|(f, _)| f == family)
            } else {
                *a == ct
            }
        })
    }
}

/// A file that arrived whole, for the upload's handler. Its temporary file
/// is removed when the `Upload` is dropped, unless the handler kept it with
/// [`Upload::persist`].
#[derive(Debug)]
pub struct Upload {
    file_name: String,
    content_type: String,
    size: u64,
    path: PathBuf,
    kept: bool,
}

impl Upload {
    /// The file's name as the browser gave it, without any directory part
    /// (at most 255 bytes; never `..`, never empty). Treat it as text from
    /// the user: do not build paths from it unchecked.
    pub fn file_name(&self) -> &str {
        &self.file_name
    }

    /// The `Content-Type` the browser sent (what it guessed from the name).
    pub fn content_type(&self) -> &str {
        &self.content_type
    }

    /// The file's size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Where the file is now (a temporary file, removed after the handler).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file's bytes.
    pub async fn bytes(&self) -> Result<Vec<u8>> {
        tokio::fs::read(&self.path)
            .await
            .map_err(|e| Error::with_source(ErrorKind::Store, "reading an upload", e))
    }

    /// Keeps the file at `dest` (a rename; a copy when `dest` is on
    /// another disk), so it outlives the handler.
    pub async fn persist(mut self, dest: impl AsRef<Path>) -> Result<PathBuf> {
        let dest = dest.as_ref().to_path_buf();
        if tokio::fs::rename(&self.path, &dest).await.is_err() {
            tokio::fs::copy(&self.path, &dest)
                .await
                .map_err(|e| Error::with_source(ErrorKind::Store, "keeping an upload", e))?;
            let _ = tokio::fs::remove_file(&self.path).await;
        }
        self.kept = true;
        Ok(dest)
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        if !self.kept {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Why an upload was refused: the HTTP status and what the page shows.
#[derive(Debug, Serialize)]
#[cfg_attr(not(feature = "axum"), allow(dead_code))]
pub(crate) struct Refusal {
    #[serde(skip)]
    pub status: u16,
    pub error: String,
}

#[cfg_attr(not(feature = "axum"), allow(dead_code))]
impl Refusal {
    pub(crate) fn new(status: u16, error: impl Into<String>) -> Refusal {
        Refusal {
            status,
            error: error.into(),
        }
    }

    /// The refusal as an answer: its status and its JSON body.
    pub(crate) fn answer(&self) -> (u16, String) {
        (self.status, serde_json::to_string(self).unwrap_or_default())
    }
}

/// The file name a browser sent (percent-encoded in `X-St-File`), made
/// safe to show: its last path part, control characters dropped, at most
/// 255 bytes.
#[cfg_attr(not(feature = "axum"), allow(dead_code))]
pub(crate) fn clean_name(raw: Option<&str>) -> String {
    let decoded = super::frames::percent_decode(raw.unwrap_or(""));
    let base = decoded
        .rsplit(['/', '\\'])
        .next()
        .unwrap_or("")
        .chars()
        .filter(|c| !c.is_control())
        .collect::<String>();
    let mut name = base.trim().to_owned();
    while name.len() > 255 {
        name.pop();
    }
    if name.is_empty() || name == "." || name == ".." {
        "upload".to_owned()
    } else {
        name
    }
}

/// Writes a body's chunks to a new temporary file in `opts.dir`, to at most
/// `opts.max_bytes` (and exactly `length` when the request declared one).
/// Any failure removes the file: nothing partial is left.
#[cfg_attr(not(feature = "axum"), allow(dead_code))]
pub(crate) async fn receive<S, B, E>(
    opts: &UploadOptions,
    length: Option<u64>,
    mut body: S,
    file_name: String,
    content_type: String,
) -> std::result::Result<Upload, Refusal>
where
    S: futures_util::Stream<Item = std::result::Result<B, E>> + Unpin,
    B: AsRef<[u8]>,
    E: std::fmt::Display,
{
    use futures_util::StreamExt;
    let mut id = [0u8; 12];
    getrandom::fill(&mut id).map_err(|_| Refusal::new(500, "The upload failed."))?;
    let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
    let path = opts.dir.join(format!("st-upload-{hex}.part"));
    let mut up = Upload {
        file_name,
        content_type,
        size: 0,
        path,
        kept: false,
    };
    let mut file = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&up.path)
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, dir = %opts.dir.display(), "upload: cannot write a temporary file");
            Refusal::new(500, "The upload failed.")
        })?;
    // From here on, dropping `up` removes the file.
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| {
            tracing::debug!(error = %e, "upload cut short");
            Refusal::new(400, "The upload was cut short.")
        })?;
        let chunk = chunk.as_ref();
        up.size += chunk.len() as u64;
        if up.size > opts.max_bytes {
            return Err(too_big(opts.max_bytes));
        }
        file.write_all(chunk).await.map_err(|e| {
            tracing::warn!(error = %e, "upload: write failed");
            Refusal::new(500, "The upload failed.")
        })?;
    }
    if length.is_some_and(|n| n != up.size) {
        return Err(Refusal::new(400, "The upload was cut short."));
    }
    file.flush()
        .await
        .and(file.sync_all().await)
        .map_err(|_| Refusal::new(500, "The upload failed."))?;
    Ok(up)
}

#[cfg_attr(not(feature = "axum"), allow(dead_code))]
pub(crate) fn too_big(max: u64) -> Refusal {
    Refusal::new(
        413,
        format!("The file is too big (at most {}).", human(max)),
    )
}

#[cfg_attr(not(feature = "axum"), allow(dead_code))]
fn human(n: u64) -> String {
    match n {
        n if n >= 1 << 20 && n % (1 << 20) == 0 => format!("{} MiB", n >> 20),
        n if n >= 1 << 10 && n % (1 << 10) == 0 => format!("{} KiB", n >> 10),
        n => format!("{n} bytes"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_types() {
        assert_eq!(clean_name(Some("..%2F..%2Fetc%2Fpasswd")), "passwd");
        assert_eq!(clean_name(Some("C%3A%5Cfake%5Cphoto.png")), "photo.png");
        assert_eq!(clean_name(Some("..")), "upload");
        assert_eq!(clean_name(None), "upload");
        assert_eq!(clean_name(Some("a%0Ab.txt")), "ab.txt");
        assert_eq!(clean_name(Some(&"x".repeat(400))).len(), 255);
        let o = UploadOptions::new(10).accept(["image/*", ".PDF", "text/plain"]);
        assert!(o.accepts("a.png", "image/png"));
        assert!(o.accepts("a.pdf", "application/octet-stream"));
        assert!(o.accepts("a.txt", "text/plain; charset=utf-8"));
        assert!(!o.accepts("a.exe", "application/x-msdownload"));
        assert!(!o.accepts("pdf", "application/octet-stream"));
        assert!(UploadOptions::new(1).accepts("x", ""));
        assert_eq!(
            too_big(256 << 10).error,
            "The file is too big (at most 256 KiB)."
        );
    }
}
