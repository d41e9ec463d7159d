//! How a [`SqliteStore`](super::SqliteStore) writes, and what it wrote.

use std::time::Duration;

/// When an acknowledged change is on disk. A render (and the answer to the
/// event that made it) returns only after [`SessionStore::append`](crate::store::SessionStore::append) returned,
/// so this decides what "acknowledged" means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Every change is its own transaction, synced to disk (`synchronous =
    /// FULL`) before the call returns. Survives a crash of the process and
    /// of the machine. The slowest: one sync per change.
    Full,
    /// Changes that arrive together share one transaction and one sync;
    /// each call returns once its transaction is synced. As durable as
    /// [`Durability::Full`]. While changes come from several writers at
    /// once, the writer waits for more before it commits, at most
    /// `max_delay` and at most as long as the last commit took, so they
    /// share the sync; a lone writer's change commits at once.
    Grouped {
        /// How long the writer waits for more changes before it commits.
        max_delay: Duration,
    },
    /// The call returns as soon as the change ran in the writer's open
    /// transaction (its version check included), before that transaction
    /// commits, which it does right after, with no sync (`synchronous =
    /// NORMAL`). A crash of the process loses the changes not yet committed
    /// (the last batch: at most a few milliseconds of renders); what was
    /// committed survives a process crash, and a power failure may lose
    /// the last commits. A failed commit is logged.
    Async,
}

/// How a [`SqliteStore`](crate::store::SqliteStore) writes. Build with [`SqliteOptions::default`] and
/// the setters.
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    pub(super) durability: Durability,
    pub(super) snapshot_deltas: u64,
    pub(super) snapshot_bytes: u64,
    pub(super) frames_kept: u64,
    pub(super) check_on_open: bool,
    pub(super) max_size: u64,
}

impl Default for SqliteOptions {
    /// Grouped commits within 2 ms, snapshots by size, 64 frames kept per
    /// session, an integrity check on open.
    fn default() -> SqliteOptions {
        SqliteOptions {
            durability: Durability::Grouped {
                max_delay: Duration::from_millis(2),
            },
            snapshot_deltas: 0,
            snapshot_bytes: 0,
            frames_kept: 64,
            check_on_open: true,
            max_size: 0,
        }
    }
}

impl SqliteOptions {
    /// When a change counts as written (see [`Durability`]).
    pub fn durability(mut self, d: Durability) -> SqliteOptions {
        self.durability = d;
        self
    }

    /// Takes a new snapshot once this many deltas were appended since the
    /// last one (0, the default: no limit by count).
    pub fn snapshot_every_deltas(mut self, k: u64) -> SqliteOptions {
        self.snapshot_deltas = k;
        self
    }

    /// Takes a new snapshot once the deltas since the last one hold this
    /// many bytes (0, the default: as many bytes as the snapshot, at least
    /// 4 KiB).
    pub fn snapshot_every_bytes(mut self, b: u64) -> SqliteOptions {
        self.snapshot_bytes = b;
        self
    }

    /// How many recent frames to keep per session for clients that
    /// reconnect after a restart (default 64, like the engine's
    /// `replay_frames`; 0 keeps none).
    pub fn frames_kept(mut self, n: u64) -> SqliteOptions {
        self.frames_kept = n;
        self
    }

    /// Caps the database file at about `bytes` (0, the default: no cap
    /// beyond the disk's). A change that would grow the file past it fails
    /// with a "database or disk is full" [`ErrorKind::Store`](crate::ErrorKind::Store) error, like a
    /// full disk: the render is undone and the session goes on.
    pub fn max_size(mut self, bytes: u64) -> SqliteOptions {
        self.max_size = bytes;
        self
    }

    /// Whether [`SqliteStore::open_with`](crate::store::SqliteStore::open_with) runs SQLite's `quick_check` over
    /// the whole file, so a damaged file is refused at start rather than
    /// when some session is read (default true; its cost grows with the
    /// file: see `docs/benchmarks.md`).
    pub fn check_on_open(mut self, yes: bool) -> SqliteOptions {
        self.check_on_open = yes;
        self
    }
}

/// What a [`SqliteStore`](crate::store::SqliteStore) wrote since it was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SqliteStats {
    /// Appends written.
    pub appends: u64,
    /// Snapshots taken by appends (each replaces a session's deltas).
    pub snapshots: u64,
    /// Transactions committed.
    pub commits: u64,
    /// Bytes of payload handed to SQLite: deltas, frames, snapshots and the
    /// small fields of each row written (SQLite itself writes whole pages;
    /// `docs/benchmarks.md` measures the file growth too).
    pub bytes: u64,
}
