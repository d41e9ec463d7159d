//! Live template edits: a compiled program remembers the sources it was
//! compiled from (the template and what it extends, includes and imports),
//! and, at most once per interval, the engine asks the environment for them
//! again. With minijinja's auto-reload on (its default) and a loader that
//! attaches up-to-date checks (`path_loader` does), an edited file reads
//! anew; a program whose sources changed is dropped, the next render of a
//! new page compiles it again, and a live page switches to it on its next
//! render, with one frame that replaces the whole page.
//!
//! The check runs inline on whichever render finds it due (one atomic load
//! and a clock read on every other render), so it costs nothing on the hot
//! path beyond that; with auto-reload off it never runs.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::FragmentEngine;
use super::compile::Program;

/// When to look at the sources again, and how often they changed.
pub(super) struct Reload {
    /// Milliseconds between checks; `u64::MAX`: never.
    every_ms: AtomicU64,
    /// When the last check ran, in milliseconds since `start`.
    last_ms: AtomicU64,
    start: Instant,
    /// Bumped by every check that dropped a stale program: a live page
    /// whose program was current at another generation looks again.
    generation: AtomicU64,
}

/// How often sources are checked by default (with auto-reload on).
pub(super) const DEFAULT_EVERY: Duration = Duration::from_secs(1);

impl Reload {
    pub(super) fn new(every: Option<Duration>) -> Reload {
        Reload {
            every_ms: AtomicU64::new(to_ms(every)),
            last_ms: AtomicU64::new(0),
            start: Instant::now(),
            generation: AtomicU64::new(0),
        }
    }

    pub(super) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Whether a check is due now; then this caller runs it (no other
    /// caller sees it due until the interval passes again).
    fn due(&self) -> bool {
        let every = self.every_ms.load(Ordering::Relaxed);
        if every == u64::MAX {
            return false;
        }
        let now = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
        let last = self.last_ms.load(Ordering::Relaxed);
        now.saturating_sub(last) >= every
            && self
                .last_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

fn to_ms(every: Option<Duration>) -> u64 {
    every.map_or(u64::MAX, |d| {
        u64::try_from(d.as_millis()).unwrap_or(u64::MAX - 1)
    })
}

impl FragmentEngine {
    /// How often the engine looks for edited templates: `Some(interval)`
    /// (at most once per interval, on a render), or `None`, never. The
    /// default is once a second when the environment's auto-reload is on
    /// (minijinja's default), else never. Turn it off in production with
    /// `env.set_auto_reload(false)` before handing the environment over,
    /// as minijinja suggests, or with `None` here.
    ///
    /// An edited page, base layout, include or import is picked up by new
    /// pages at once (after the check), and by a live page on its next
    /// render: one frame replaces the whole page (its statics are new). A
    /// template that no longer compiles makes renders fail with its error
    /// (line and excerpt) and changes nothing, until it is fixed.
    pub fn reload_interval(&self, every: Option<Duration>) {
        self.inner
            .reload
            .every_ms
            .store(to_ms(every), Ordering::Relaxed);
    }

    /// Looks at every compiled program's sources now and drops the programs
    /// whose sources changed (recompiled when next needed). Returns their
    /// template names. For a file watcher, or a test; renders call it
    /// themselves at [`FragmentEngine::reload_interval`].
    pub fn reload(&self) -> Vec<String> {
        let programs: Vec<(String, Arc<Program>)> = self
            .inner
            .programs
            .read()
            .expect("lock")
            .iter()
            .map(|(n, p)| (n.clone(), p.clone()))
            .collect();
        let env = self.inner.env.read().expect("lock");
        let stale: Vec<(String, Arc<Program>)> = programs
            .into_iter()
            .filter(|(_, p)| {
                p.sources.iter().any(|(name, hash)| {
                    env.get_template(name).map(|t| source_hash(t.source())).ok() != Some(*hash)
                })
            })
            .collect();
        drop(env);
        if stale.is_empty() {
            return Vec::new();
        }
        let mut map = self.inner.programs.write().expect("lock");
        for (name, p) in &stale {
            if map.get(name).is_some_and(|q| Arc::ptr_eq(q, p)) {
                map.remove(name);
            }
        }
        drop(map);
        self.inner.reload.generation.fetch_add(1, Ordering::AcqRel);
        let names: Vec<String> = stale.into_iter().map(|(n, _)| n).collect();
        tracing::info!(templates = ?names, "templates changed; recompiled on their next render");
        names
    }

    /// Runs the check when it is due.
    pub(super) fn reload_if_due(&self) {
        if self.inner.reload.due() {
            self.reload();
        }
    }

    /// The program `program`'s template compiles to now, when that is not
    /// `program` (its sources changed), with the generation it is current
    /// at; `None` when `program` is still current.
    pub(super) fn newer(
        &self,
        program: &Arc<Program>,
        generation: u64,
    ) -> crate::Result<Option<(Arc<Program>, u64)>> {
        self.reload_if_due();
        let now = self.inner.reload.generation();
        if now == generation {
            return Ok(None);
        }
        let p = self.program(&program.name)?;
        Ok(Some((p, now)))
    }
}

/// The hash a program keeps of each source it was compiled from (64-bit
/// FNV-1a): enough to tell an edited template from the one compiled.
pub(crate) fn source_hash(source: &str) -> u64 {
    source.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}
