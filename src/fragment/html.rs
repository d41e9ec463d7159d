//! A small HTML context scanner, run over a template's static text at compile
//! time. It says where a dynamic value lands (text, inside a tag, in a raw-text
//! element) and whether a region is balanced, which decides where comment
//! anchors may go without changing the document's structure.

/// Where the scanner stands after some static text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ctx {
    /// Between tags: a comment anchor is safe here.
    Text,
    /// Between tags right inside `<table>`, before any row group: the HTML
    /// parser would put a comment here in the table but the rows that follow
    /// in an implied `tbody`, so anchors here would not be siblings.
    TableText,
    /// Inside a start or end tag, outside quotes (`table`: a `<table>` tag).
    Tag {
        raw: Option<RawKind>,
        closing: bool,
        table: bool,
    },
    /// Inside a quoted attribute value.
    Attr {
        quote: u8,
        raw: Option<RawKind>,
        table: bool,
    },
    /// Inside `<!-- ... -->`.
    Comment,
    /// Inside `<script>`, `<style>`, `<textarea>` or `<title>`.
    Raw(RawKind),
}

/// Elements whose content is not parsed as markup.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RawKind {
    Script,
    Style,
    Textarea,
    Title,
}

impl RawKind {
    fn name(self) -> &'static str {
        match self {
            RawKind::Script => "script",
            RawKind::Style => "style",
            RawKind::Textarea => "textarea",
            RawKind::Title => "title",
        }
    }

    fn from_name(name: &str) -> Option<RawKind> {
        Some(match name {
            "script" => RawKind::Script,
            "style" => RawKind::Style,
            "textarea" => RawKind::Textarea,
            "title" => RawKind::Title,
            _ => return None,
        })
    }
}

const VOID: &[&str] = &[
    "area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track",
    "wbr",
];

/// Scans `text` from `ctx`; returns the new context and adds the change in
/// element nesting depth to `depth`.
pub(crate) fn scan(mut ctx: Ctx, text: &str, depth: &mut i32) -> Ctx {
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match ctx {
            Ctx::Text | Ctx::TableText => {
                let Some(p) = memchr(b'<', &b[i..]) else {
                    return ctx;
                };
                i += p + 1;
                if b[i..].starts_with(b"!--") {
                    ctx = Ctx::Comment;
                    i += 3;
                } else if b.get(i) == Some(&b'/') {
                    let (name, n) = tag_name(&b[i + 1..]);
                    if !name.is_empty() {
                        if !VOID.contains(&name.as_str()) {
                            *depth -= 1;
                        }
                        ctx = Ctx::Tag {
                            raw: None,
                            closing: true,
                            table: false,
                        };
                    }
                    i += 1 + n;
                } else {
                    let (name, n) = tag_name(&b[i..]);
                    if !name.is_empty() {
                        let void = VOID.contains(&name.as_str());
                        if !void {
                            *depth += 1;
                        }
                        // A void element is never open: treat it like an end
                        // tag for `/>` and raw text.
                        ctx = Ctx::Tag {
                            raw: RawKind::from_name(&name),
                            closing: void,
                            table: name == "table",
                        };
                    }
                    i += n;
                }
            }
            Ctx::Tag {
                raw,
                closing,
                table,
            } => {
                match b[i] {
                    b'"' | b'\'' => {
                        ctx = Ctx::Attr {
                            quote: b[i],
                            raw,
                            table,
                        }
                    }
                    b'>' => {
                        let self_closing = i > 0 && b[i - 1] == b'/';
                        if self_closing && !closing {
                            *depth -= 1;
                        }
                        ctx = match raw {
                            Some(k) if !closing && !self_closing => Ctx::Raw(k),
                            _ if table && !closing && !self_closing => Ctx::TableText,
                            _ => Ctx::Text,
                        };
                    }
                    _ => {}
                }
                i += 1;
            }
            Ctx::Attr { quote, raw, table } => {
                match memchr(quote, &b[i..]) {
                    Some(p) => i += p + 1,
                    None => return ctx,
                }
                ctx = Ctx::Tag {
                    raw,
                    closing: false,
                    table,
                };
            }
            Ctx::Comment => match find(&b[i..], b"-->") {
                Some(p) => {
                    i += p + 3;
                    ctx = Ctx::Text;
                }
                None => return ctx,
            },
            Ctx::Raw(k) => {
                let end = format!("</{}", k.name());
                match find_ci(&b[i..], end.as_bytes()) {
                    Some(p) => {
                        i += p + end.len();
                        *depth -= 1;
                        ctx = Ctx::Tag {
                            raw: None,
                            closing: true,
                            table: false,
                        };
                    }
                    None => return ctx,
                }
            }
        }
    }
    ctx
}

fn tag_name(b: &[u8]) -> (String, usize) {
    let n = b
        .iter()
        .take_while(|c| c.is_ascii_alphanumeric() || **c == b'-' || **c == b':')
        .count();
    if n == 0 || !b[0].is_ascii_alphabetic() {
        return (String::new(), 0);
    }
    (String::from_utf8_lossy(&b[..n]).to_ascii_lowercase(), n)
}

fn memchr(c: u8, b: &[u8]) -> Option<usize> {
    b.iter().position(|x| *x == c)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn find_ci(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len())
        .position(|w| w.eq_ignore_ascii_case(needle))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(s: &str) -> (Ctx, i32) {
        let mut d = 0;
        (scan(Ctx::Text, s, &mut d), d)
    }

    #[test]
    fn contexts() {
        assert_eq!(run("<p>hi</p>"), (Ctx::Text, 0));
        assert_eq!(run("<ul><li>"), (Ctx::Text, 2));
        assert!(matches!(run("<a href=\"").0, Ctx::Attr { .. }));
        assert!(matches!(run("<a ").0, Ctx::Tag { .. }));
        assert_eq!(run("<title>").0, Ctx::Raw(RawKind::Title));
        assert_eq!(run("<title>x</title>"), (Ctx::Text, 0));
        assert_eq!(run("<br><img src=x><hr/>"), (Ctx::Text, 0));
        assert_eq!(run("<!-- <b> -->"), (Ctx::Text, 0));
        assert_eq!(run("<svg><path d=\"m0\"/></svg>"), (Ctx::Text, 0));
        assert_eq!(run("<script>if (a<b) {}</script>"), (Ctx::Text, 0));
        assert_eq!(run("<table class=\"t\">"), (Ctx::TableText, 1));
        assert_eq!(run("<table><tbody>"), (Ctx::Text, 2));
        assert_eq!(run("<table><tr>"), (Ctx::Text, 2));
    }
}
