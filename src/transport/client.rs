//! The JS client, served by the crate (no build step).

use std::sync::OnceLock;

/// The client script, as written (commented).
pub const JS: &str = include_str!("../client/statetemplate.js");

/// The extras script (`extras.js`: JS hooks, live navigation and uploads;
/// served after the client to pages that use them, see
/// [`crate::Live::client_extras`]), as written.
pub const EXTRAS_JS: &str = include_str!("../client/extras.js");

/// The extras script as served (like [`served`]).
pub fn extras_served() -> &'static str {
    static SERVED: OnceLock<String> = OnceLock::new();
    SERVED.get_or_init(|| strip(EXTRAS_JS))
}

/// A strong ETag of the served extras script.
pub fn extras_etag() -> &'static str {
    static ETAG: OnceLock<String> = OnceLock::new();
    ETAG.get_or_init(|| fnv_etag(extras_served()))
}

/// The client script as served: [`JS`] without its comments and
/// indentation (the same code, line for line where code remains).
pub fn served() -> &'static str {
    static SERVED: OnceLock<String> = OnceLock::new();
    SERVED.get_or_init(|| strip(JS))
}

/// Drops `/* */` and `//` comments, leading whitespace, empty lines and
/// the spaces that separate nothing (next to an operator or a bracket),
/// leaving strings and regular expression literals as they are. Line breaks
/// between code stay, so automatic semicolon insertion is unchanged, except
/// after `;`, `{`, `,` and `(`, where a statement or expression cannot end.
fn strip(js: &str) -> String {
    let b = js.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    // The last byte of code written (not whitespace), to tell a regular
    // expression's `/` from a division.
    let mut prev = b'\n';
    let mut line_start = true;
    while i < b.len() {
        let c = b[i];
        if line_start && (c == b' ' || c == b'\t') {
            i += 1;
            continue;
        }
        match c {
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let end = js[i + 2..].find("*/").map_or(b.len(), |p| i + 2 + p + 2);
                i = end;
                continue;
            }
            b'/' if b.get(i + 1) == Some(&b'/') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
                continue;
            }
            b'\n' => {
                // A line break after `;`, `{`, `,` or `(` ends nothing that
                // automatic semicolon insertion could see: dropped.
                if !line_start && !out.last().is_some_and(|l| b";{,(".contains(l)) {
                    out.push(b'\n');
                }
                line_start = true;
                i += 1;
                continue;
            }
            b'\'' | b'"' => {
                let q = c;
                out.push(c);
                i += 1;
                while i < b.len() && b[i] != q {
                    if b[i] == b'\\' && i + 1 < b.len() {
                        out.push(b[i]);
                        i += 1;
                    }
                    out.push(b[i]);
                    i += 1;
                }
                if i < b.len() {
                    out.push(q);
                    i += 1;
                }
            }
            b'/' if b"(,=:[!&|?{};\n".contains(&prev) => {
                // A regular expression literal: to its closing `/`.
                out.push(c);
                i += 1;
                let mut class = false;
                while i < b.len() && (class || b[i] != b'/') {
                    match b[i] {
                        b'\\' if i + 1 < b.len() => {
                            out.push(b[i]);
                            i += 1;
                        }
                        b'[' => class = true,
                        b']' => class = false,
                        _ => {}
                    }
                    out.push(b[i]);
                    i += 1;
                }
                if i < b.len() {
                    out.push(b'/');
                    i += 1;
                }
            }
            b' ' | b'\t' => {
                // Spaces between code go unless both sides are parts of
                // words (`var x`, `return a`) or would join into another
                // operator (`a - -b`).
                let mut j = i;
                while j < b.len() && matches!(b[j], b' ' | b'\t') {
                    j += 1;
                }
                let next = b.get(j).copied().unwrap_or(b'\n');
                let word = |x: u8| x.is_ascii_alphanumeric() || x == b'_' || x == b'$' || x >= 0x80;
                let joins = b"+-".contains(&prev) && b"+-".contains(&next);
                if (word(prev) && word(next)) || joins {
                    out.push(b' ');
                }
                i = j;
                continue;
            }
            _ => {
                out.push(c);
                i += 1;
            }
        }
        line_start = false;
        if !matches!(c, b' ' | b'\t') {
            prev = c;
        }
    }
    // Whitespace at the ends of lines.
    let text = String::from_utf8(out).expect("only ASCII bytes were cut");
    text.lines()
        .map(str::trim_end)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("\n")
}

/// The `Content-Type` to serve the script with.
pub const CONTENT_TYPE: &str = "text/javascript; charset=utf-8";

/// A strong ETag of the [`served`] script (quoted): a 64-bit FNV-1a hash of
/// its bytes.
pub fn etag() -> &'static str {
    static ETAG: OnceLock<String> = OnceLock::new();
    ETAG.get_or_init(|| fnv_etag(served()))
}

fn fnv_etag(script: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in script.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("\"{h:016x}\"")
}

/// The `Cache-Control` for a request of the script: URLs that carry the
/// current version (`?v=<etag>`, as [`Live::mount`](crate::transport::Live::mount)
/// writes them) never change and are cached for a year; others revalidate
/// with the ETag every time.
pub fn cache_control(query: Option<&str>) -> &'static str {
    cache_control_for(etag(), query)
}

pub(crate) fn cache_control_for(etag: &str, query: Option<&str>) -> &'static str {
    let current = format!("v={}", etag.trim_matches('"'));
    if query.is_some_and(|q| q.split('&').any(|p| p == current)) {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    }
}

/// Whether an `If-None-Match` header value matches the current script.
pub fn not_modified(if_none_match: Option<&str>) -> bool {
    not_modified_for(etag(), if_none_match)
}

pub(crate) fn not_modified_for(etag: &str, if_none_match: Option<&str>) -> bool {
    if_none_match.is_some_and(|v| {
        v.split(',')
            .map(str::trim)
            .any(|t| t == "*" || t.trim_start_matches("W/") == etag)
    })
}

#[cfg(test)]
mod tests {
    use super::strip;

    #[test]
    fn strip_drops_only_the_spaces_that_separate_nothing() {
        let cases = [
            ("var x = a + b;", "var x=a+b;"),
            ("return 'x' + y;", "return'x'+y;"),
            ("if (a) { b(); } else { c(); }", "if(a){b();}else{c();}"),
            (
                "x = a - -b; y = a + +b; z = a - +b;",
                "x=a- -b;y=a+ +b;z=a- +b;",
            ),
            ("x = a++ + b;", "x=a++ +b;"),
            (
                "typeof d === 'object' && k in s",
                "typeof d==='object'&&k in s",
            ),
            ("s = ' a  b ' + \"c d\";", "s=' a  b '+\"c d\";"),
            ("t = /a b/.test(s) ? 1 : 2;", "t=/a b/.test(s)?1:2;"),
            ("x = 1; // a comment\n  y = 2;", "x=1;y=2;"),
            ("a = b\n(c)", "a=b\n(c)"),
            ("f(a,\n  b);\nif (x) {\n  y()\n}", "f(a,b);if(x){y()\n}"),
            ("a = b /* c */ + d;", "a=b+d;"),
            ("v = $a && _b", "v=$a&&_b"),
        ];
        for (src, want) in cases {
            assert_eq!(strip(src), want, "{src}");
        }
    }
}
