//! What the bench binaries share: their tokio runtime, and the process's
//! resident memory.
#![allow(dead_code)]

/// A runtime with `workers` worker threads, or a current-thread one for 0.
pub(crate) fn runtime(workers: usize) -> tokio::runtime::Runtime {
    let mut b = if workers == 0 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(workers);
        b
    };
    b.enable_all().build().expect("a tokio runtime")
}

/// This process's resident set size in bytes (`/proc/self/statm`).
pub(crate) fn rss() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
    let pages: usize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("resident pages");
    pages * 4096
}
