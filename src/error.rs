//! The crate's one error type.

use std::fmt;

/// What went wrong, broadly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A template failed to load, parse or render.
    Template,
    /// The data could not be turned into template values.
    Data,
    /// A template uses a construct the fragment engine cannot split
    /// (it is then rendered as one fragment; this kind is reported only
    /// where no such fallback exists).
    Unsupported,
    /// A wire frame or update could not be decoded or applied.
    Protocol,
    /// A session could not be opened: the token is not authentic, has
    /// expired, names another session, or the session is gone. Every such
    /// failure gives the same error, so it tells an attacker nothing.
    InvalidSession,
    /// The session was closed, expired or evicted; it renders no more.
    SessionClosed,
    /// The session store failed (I/O, serialization, a backend error).
    Store,
    /// A store refused a write that expected another version of the record
    /// (compare-and-set, see [`SessionStore::append`]): another writer got
    /// there first, or the record is gone.
    ///
    /// [`SessionStore::append`]: crate::store::SessionStore::append
    Conflict,
    /// The configuration is invalid (a malformed key, a bad option).
    Config,
    /// No room for a new session: every slot up to `max_sessions` is held
    /// by a session a client has joined. Try again later (HTTP 503).
    Capacity,
    /// A message for the person using the page: a handler refused an
    /// event (see [`Error::user`]). The client shows it as it is.
    User,
    /// An event handler failed with the app's own error (see
    /// [`HandlerError`]): logged with its source, and the page is told
    /// that something went wrong, without the details.
    Handler,
}

/// An app's own error type, usable with `?` in event handlers (and
/// anywhere a [`crate::Result`] is returned): implement it, and `From`
/// turns the error into an [`Error`] that keeps it as its source.
///
/// ```
/// use statetemplate::{ErrorKind, HandlerError};
///
/// #[derive(Debug)]
/// enum ShopError { OutOfStock(String), Db(std::io::Error) }
///
/// impl std::fmt::Display for ShopError {
///     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
///         match self {
///             ShopError::OutOfStock(item) => write!(f, "{item} is out of stock"),
///             ShopError::Db(e) => write!(f, "database: {e}"),
///         }
///     }
/// }
/// impl std::error::Error for ShopError {}
///
/// impl HandlerError for ShopError {
///     // Shown to the person on the page; the rest is logged, and the page
///     // gets "Something went wrong".
///     fn user_message(&self) -> Option<String> {
///         matches!(self, ShopError::OutOfStock(_)).then(|| self.to_string())
///     }
/// }
///
/// fn buy(stock: u32) -> statetemplate::Result<u32> {
///     if stock == 0 {
///         Err(ShopError::OutOfStock("ink".into()))?;
///     }
///     Ok(stock - 1)
/// }
/// let e = buy(0).unwrap_err();
/// assert_eq!(e.kind(), ErrorKind::User);
/// assert_eq!(e.to_string(), "ink is out of stock");
/// let e: statetemplate::Error = ShopError::Db(std::io::Error::other("gone")).into();
/// assert_eq!(e.kind(), ErrorKind::Handler);
/// assert!(std::error::Error::source(&e).is_some());
/// ```
pub trait HandlerError: std::error::Error + Send + Sync + 'static {
    /// What the person using the page should read: `Some` makes the error
    /// a [`ErrorKind::User`] one (the client shows the message as it is, as
    /// for [`Error::user`]); `None`, the default, an internal
    /// [`ErrorKind::Handler`] one.
    fn user_message(&self) -> Option<String> {
        None
    }
}

impl<E: HandlerError> From<E> for Error {
    fn from(err: E) -> Error {
        match err.user_message() {
            Some(m) => Error::with_source(ErrorKind::User, m, err),
            None => Error::with_source(ErrorKind::Handler, err.to_string(), err),
        }
    }
}

/// The crate's error: a kind, a message and, for template errors, the
/// template name, the line in *the user's* template and a source excerpt.
///
/// `{}` prints one line; `{:#}` adds the source excerpt, like minijinja.
pub struct Error {
    repr: Box<Repr>,
}

struct Repr {
    kind: ErrorKind,
    message: String,
    template: Option<String>,
    line: Option<usize>,
    excerpt: Option<String>,
    minijinja: Option<minijinja::Error>,
    other: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

impl Error {
    pub(crate) fn new(kind: ErrorKind, message: impl Into<String>) -> Error {
        Error {
            repr: Box::new(Repr {
                kind,
                message: message.into(),
                template: None,
                line: None,
                excerpt: None,
                minijinja: None,
                other: None,
            }),
        }
    }

    /// Wraps a minijinja error that arose in the user's template itself
    /// (its own name and line are kept).
    pub(crate) fn from_template(err: minijinja::Error) -> Error {
        let mut e = Error::new(ErrorKind::Template, err.to_string());
        e.repr.template = err.name().map(str::to_owned);
        e.repr.line = err.line();
        let info = err.display_debug_info().to_string();
        e.repr.excerpt = (!info.is_empty()).then_some(info);
        e.repr.minijinja = Some(err);
        e
    }

    /// Wraps an error raised while rendering one piece of `template`, whose
    /// source starts at `line` there. `offset_line` is the line within the
    /// rendered piece minijinja reported, counted from the piece's start.
    pub(crate) fn located(
        err: minijinja::Error,
        template: &str,
        source: &str,
        line: usize,
    ) -> Error {
        let mut e = Error::new(ErrorKind::Template, describe(&err));
        e.repr.template = Some(template.to_owned());
        e.repr.line = Some(line);
        e.repr.excerpt = Some(excerpt(source, line));
        e.repr.minijinja = Some(err);
        e
    }

    /// An error of `kind` caused by another error (kept as the source).
    pub(crate) fn with_source(
        kind: ErrorKind,
        message: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> Error {
        let mut e = Error::new(kind, message);
        e.repr.other = Some(source.into());
        e
    }

    /// The one error every failed session lookup or token check gives.
    pub(crate) fn invalid_session() -> Error {
        Error::new(ErrorKind::InvalidSession, "invalid or expired session")
    }

    /// Bad input from a client (an event payload of the wrong shape, say):
    /// the client receives it as a `bad_payload` error frame.
    pub fn protocol(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::Protocol, message)
    }

    /// A message for the person using the page, from an event handler:
    /// `Err(Error::user("That email is taken"))`. The client receives it as
    /// a `user` error frame and shows it (see `docs/protocol.md`). Other
    /// errors from handlers are logged and shown as a generic message, so
    /// nothing internal reaches the page.
    pub fn user(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::User, message)
    }

    /// A setting that cannot work ([`ErrorKind::Config`]): for an app that
    /// checks its own configuration with the crate's error type.
    pub fn config(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::Config, message)
    }

    /// A store backend failure.
    pub fn store(
        message: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> Error {
        Error::with_source(ErrorKind::Store, message, source)
    }

    /// A store write refused because the stored record is not the version
    /// it expected (see [`ErrorKind::Conflict`]).
    pub fn conflict(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::Conflict, message)
    }

    pub(crate) fn data(err: impl fmt::Display) -> Error {
        Error::new(ErrorKind::Data, format!("data cannot be rendered: {err}"))
    }

    /// The kind of error.
    pub fn kind(&self) -> ErrorKind {
        self.repr.kind
    }

    /// The name of the user's template the error points at, if any.
    pub fn template_name(&self) -> Option<&str> {
        self.repr.template.as_deref()
    }

    /// The 1-based line in the user's template, if known.
    pub fn line(&self) -> Option<usize> {
        self.repr.line
    }

    /// A few lines of the template source around the error, if known.
    pub fn excerpt(&self) -> Option<&str> {
        self.repr.excerpt.as_deref()
    }
}

/// minijinja's message without its own (internal) location suffix.
fn describe(err: &minijinja::Error) -> String {
    let mut s = err.kind().to_string();
    if let Some(detail) = err.detail() {
        s.push_str(": ");
        s.push_str(detail);
    }
    s
}

fn excerpt(source: &str, line: usize) -> String {
    let lines: Vec<&str> = source.lines().collect();
    let first = line.saturating_sub(3).max(1);
    let last = (line + 2).min(lines.len());
    let mut out = String::new();
    for n in first..=last {
        let marker = if n == line { ">" } else { " " };
        out.push_str(&format!("{marker}{n:>4} | {}\n", lines[n - 1]));
    }
    out
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.repr.template, self.repr.line) {
            (Some(t), Some(l))
                if self.repr.kind == ErrorKind::Template
                    && self
                        .repr
                        .minijinja
                        .as_ref()
                        .is_none_or(|s| s.name() != Some(t.as_str())) =>
            {
                write!(f, "{} (in {t}:{l})", self.repr.message)?
            }
            _ => write!(f, "{}", self.repr.message)?,
        }
        if f.alternate() {
            if let Some(x) = &self.repr.excerpt {
                write!(f, "\n{x}")?;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Error")
            .field("kind", &self.repr.kind)
            .field("message", &self.repr.message)
            .field("template", &self.repr.template)
            .field("line", &self.repr.line)
            .finish()
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        if let Some(e) = &self.repr.minijinja {
            return Some(e);
        }
        self.repr
            .other
            .as_ref()
            .map(|e| e.as_ref() as &(dyn std::error::Error + 'static))
    }
}

impl From<minijinja::Error> for Error {
    fn from(err: minijinja::Error) -> Error {
        Error::from_template(err)
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
