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
    /// Inside a quoted attribute value (`closing` as in the tag's `Tag`).
    Attr {
        quote: u8,
        raw: Option<RawKind>,
        closing: bool,
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

    fn from_name(name: &[u8]) -> Option<RawKind> {
        if name.len() < 5 {
            return None;
        }
        [
            RawKind::Script,
            RawKind::Style,
            RawKind::Textarea,
            RawKind::Title,
        ]
        .into_iter()
        .find(|k| k.name().as_bytes().eq_ignore_ascii_case(name))
    }
}

const VOID: &[&str] = &[
    "area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track",
    "wbr",
];

fn is_void(name: &[u8]) -> bool {
    (2..=6).contains(&name.len()) && VOID.iter().any(|v| v.as_bytes().eq_ignore_ascii_case(name))
}

/// The length of the element `html` starts with (`<li …>…</li>`, a void
/// element, a raw-text one), or `None` if it does not start with a tag or
/// the element does not close in it. Run over rendered HTML: an item that
/// is exactly one element needs no marker in a run of them
/// ([`crate::fragment::markers::ItemMarkers`]).
///
/// Run for every item of a list when a page is written, so it skips from
/// `<` to `<` and from quote to quote rather than walking every byte.
pub(crate) fn element_len(html: &str) -> Option<usize> {
    let b = html.as_bytes();
    if b.first() != Some(&b'<') || !b.get(1).is_some_and(u8::is_ascii_alphabetic) {
        return None;
    }
    let mut depth = 0usize;
    let mut i = 0;
    loop {
        // b[i] is a `<`.
        let rest = &b[i + 1..];
        if rest.starts_with(b"!--") {
            i += 4 + find(&b[i + 4..], b"-->")? + 3;
        } else if let Some(r) = rest.strip_prefix(b"/") {
            let (name, n) = tag_name(r);
            if name.is_empty() {
                i += 1;
            } else {
                i = tag_end(b, i + 2 + n)?;
                if !is_void(name) {
                    depth = depth.checked_sub(1)?;
                    if depth == 0 {
                        return Some(i);
                    }
                }
            }
        } else {
            let (name, n) = tag_name(rest);
            if name.is_empty() {
                i += 1;
            } else {
                let end = tag_end(b, i + 1 + n)?;
                let closed = is_void(name) || b[end - 2] == b'/';
                if closed {
                    if depth == 0 {
                        return Some(end);
                    }
                    i = end;
                } else if let Some(raw) = RawKind::from_name(name) {
                    // Its text is not markup: on to its end tag.
                    let close = raw.name().as_bytes();
                    let mut at = end;
                    loop {
                        at += memchr(b'<', &b[at..])?;
                        let t = &b[at + 1..];
                        if t.first() == Some(&b'/')
                            && t.len() > close.len()
                            && t[1..=close.len()].eq_ignore_ascii_case(close)
                        {
                            break;
                        }
                        at += 1;
                    }
                    i = tag_end(b, at + 2 + close.len())?;
                    if depth == 0 {
                        return Some(i);
                    }
                } else {
                    depth += 1;
                    i = end;
                }
            }
        }
        i += memchr(b'<', &b[i..])?;
    }
}

/// Where the tag whose name ends at `from` ends: after its `>`, skipping
/// quoted attribute values.
fn tag_end(b: &[u8], mut from: usize) -> Option<usize> {
    loop {
        let p = from
            + b[from..]
                .iter()
                .position(|c| matches!(c, b'>' | b'"' | b'\''))?;
        if b[p] == b'>' {
            return Some(p + 1);
        }
        from = p + 1 + memchr(b[p], &b[p + 1..])? + 1;
    }
}

/// Scans `text` from `ctx`; returns the new context and adds the change in
/// element nesting depth to `depth`.
pub(crate) fn scan(ctx: Ctx, text: &str, depth: &mut i32) -> Ctx {
    scan_until(ctx, text, depth, None).0
}

/// An opening tag that `text` (scanned from `ctx`) leaves open, inside it,
/// in one of its attribute values, or in its raw text (`<textarea>…`): where its `<` is, the context before
/// it, its name, and whether it is void. `None` if `text` ends elsewhere.
/// (Compile time only: quadratic in the length of `text`.)
pub(crate) fn open_tag(ctx: Ctx, text: &str) -> Option<(usize, Ctx, String, bool)> {
    let end = scan(ctx, text, &mut 0);
    if !matches!(end, Ctx::Tag { .. } | Ctx::Attr { .. } | Ctx::Raw(_)) {
        return None;
    }
    let b = text.as_bytes();
    // The last `<` in text context starts the tag text ends in: an opening
    // tag if a name follows it (not `</`).
    for p in (0..b.len()).rev().filter(|p| b[*p] == b'<') {
        let before = scan(ctx, &text[..p], &mut 0);
        if matches!(before, Ctx::Text | Ctx::TableText) {
            let (name, _) = tag_name(&b[p + 1..]);
            if name.is_empty() {
                return None;
            }
            let void = is_void(name);
            let name = String::from_utf8_lossy(name).to_ascii_lowercase();
            return Some((p, before, name, void));
        }
    }
    None
}

/// Scans like [`scan`]; with `until = Some(d)`, stops right after the first
/// `>` that leaves text context at depth `d` (an element that began at
/// depth `d` has closed), returning the offset after it.
pub(crate) fn scan_until(
    mut ctx: Ctx,
    text: &str,
    depth: &mut i32,
    until: Option<i32>,
) -> (Ctx, Option<usize>) {
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match ctx {
            Ctx::Text | Ctx::TableText => {
                let Some(p) = memchr(b'<', &b[i..]) else {
                    return (ctx, None);
                };
                i += p + 1;
                if b[i..].starts_with(b"!--") {
                    ctx = Ctx::Comment;
                    i += 3;
                } else if b.get(i) == Some(&b'/') {
                    let (name, n) = tag_name(&b[i + 1..]);
                    if !name.is_empty() {
                        if !is_void(name) {
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
                        let void = is_void(name);
                        if !void {
                            *depth += 1;
                        }
                        // A void element is never open: treat it like an end
                        // tag for `/>` and raw text.
                        ctx = Ctx::Tag {
                            raw: RawKind::from_name(name),
                            closing: void,
                            table: name.eq_ignore_ascii_case(b"table"),
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
                            closing,
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
                        if ctx == Ctx::Text && until == Some(*depth) && (closing || self_closing) {
                            return (ctx, Some(i + 1));
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
            Ctx::Attr {
                quote,
                raw,
                closing,
                table,
            } => {
                match memchr(quote, &b[i..]) {
                    Some(p) => i += p + 1,
                    None => return (ctx, None),
                }
                ctx = Ctx::Tag {
                    raw,
                    closing,
                    table,
                };
            }
            Ctx::Comment => match find(&b[i..], b"-->") {
                Some(p) => {
                    i += p + 3;
                    ctx = Ctx::Text;
                }
                None => return (ctx, None),
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
                    None => return (ctx, None),
                }
            }
        }
    }
    (ctx, None)
}

/// The tag name `b` starts with, as written (compare it ignoring case).
fn tag_name(b: &[u8]) -> (&[u8], usize) {
    let n = b
        .iter()
        .take_while(|c| c.is_ascii_alphanumeric() || **c == b'-' || **c == b':')
        .count();
    if n == 0 || !b[0].is_ascii_alphabetic() {
        return (&[], 0);
    }
    (&b[..n], n)
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

    /// The element a string starts with: nested ones, attributes with `>`
    /// in quotes, void and raw-text elements, comments inside; nothing when
    /// it starts with text or a comment or does not close.
    #[test]
    fn element_len_finds_the_first_element() {
        let one = |h: &str| element_len(h) == Some(h.len());
        assert!(one("<li>a</li>"));
        assert!(one("<LI class=\"a>b\">x<b>y</b><!-- </li> --></Li>"));
        assert!(one("<tr><td><!--[2--><!--*7--><i>x</i><!--]--></td></tr>"));
        assert!(one("<br>") && one("<img src=x/>") && one("<svg/>"));
        assert!(one("<script>if (a < b) { x = '</div>' }</script>"));
        assert!(one("<textarea><b></TEXTAREA >") && one("<p>a < b, c <= d</p>"));
        assert!(one("<ul><li><ul><li>x</li></ul></li></ul>") && one("<a title='>'></a>"));
        assert_eq!(element_len("<li>a</li><li>b</li>"), Some(10));
        assert_eq!(element_len("<li>a</li> "), Some(10));
        for h in [
            "a<li></li>",
            "<!--x--><li></li>",
            "<li>open",
            "",
            "<",
            "< li></li>",
            "</li>",
            "<li title=\"x>",
            "<script>x",
            "<li><!-- x</li>",
        ] {
            assert!(!one(h), "{h:?}");
        }
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

    #[test]
    fn open_tags_and_element_ends() {
        let t = |s: &str| open_tag(Ctx::Text, s);
        assert_eq!(
            t("<p>hi</p><a class=\"x "),
            Some((9, Ctx::Text, "a".into(), false))
        );
        assert_eq!(
            t("<a title=\"x<b\" class=\""),
            Some((0, Ctx::Text, "a".into(), false))
        );
        assert_eq!(
            t("<input type=\"checkbox\" "),
            Some((0, Ctx::Text, "input".into(), true))
        );
        assert_eq!(t("<p>hi</p>"), None);
        assert_eq!(t("<p>hi</p "), None);
        assert_eq!(t("<img src=\"a\" alt=\"").map(|x| x.3), Some(true));
        // A void element's attributes do not make it open.
        assert_eq!(
            run("<img src=\"a.png\"/><input value=\"x\">"),
            (Ctx::Text, 0)
        );
        assert_eq!(t("<script>a = \"<b ").map(|x| x.2), Some("script".into()));
        assert_eq!(t("<p><textarea name=\"n\">a<b").map(|x| x.0), Some(3));
        assert_eq!(t("<!-- <a href=\" -->"), None);
        assert_eq!(t("<table><tr class=\"").map(|x| x.1), Some(Ctx::TableText));
        // The element that began at depth 0 ends after its end tag.
        let mut d = 1;
        let s = "<b>x</b> more</p> after";
        assert_eq!(
            scan_until(Ctx::Text, s, &mut d, Some(0)),
            (Ctx::Text, Some(17))
        );
        let mut d = 0;
        assert_eq!(
            scan_until(
                Ctx::Tag {
                    raw: None,
                    closing: true,
                    table: false
                },
                ">rest",
                &mut d,
                Some(0)
            ),
            (Ctx::Text, Some(1))
        );
        let mut d = 0;
        assert_eq!(
            scan_until(
                Ctx::Tag {
                    raw: None,
                    closing: false,
                    table: false
                },
                "/>rest",
                &mut d,
                Some(-1)
            ),
            (Ctx::Text, Some(2))
        );
    }
}
