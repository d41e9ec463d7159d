//! The JS client, served by the crate (no build step).

use std::sync::OnceLock;

/// The client script.
pub const JS: &str = include_str!("../client/statetemplate.js");

/// The `Content-Type` to serve [`JS`] with.
pub const CONTENT_TYPE: &str = "text/javascript; charset=utf-8";

/// A strong ETag of [`JS`] (quoted): a 64-bit FNV-1a hash of its bytes.
pub fn etag() -> &'static str {
    static ETAG: OnceLock<String> = OnceLock::new();
    ETAG.get_or_init(|| {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in JS.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        format!("\"{h:016x}\"")
    })
}

/// The `Cache-Control` for a request of the script: URLs that carry the
/// current version (`?v=<etag>`, as [`Live::mount`](crate::transport::Live::mount)
/// writes them) never change and are cached for a year; others revalidate
/// with the ETag every time.
pub fn cache_control(query: Option<&str>) -> &'static str {
    let current = format!("v={}", etag().trim_matches('"'));
    if query.is_some_and(|q| q.split('&').any(|p| p == current)) {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    }
}

/// Whether an `If-None-Match` header value matches the current script.
pub fn not_modified(if_none_match: Option<&str>) -> bool {
    if_none_match.is_some_and(|v| {
        v.split(',')
            .map(str::trim)
            .any(|t| t == "*" || t.trim_start_matches("W/") == etag())
    })
}
