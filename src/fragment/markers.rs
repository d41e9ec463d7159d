//! The markers of a list's keyed items in a page's HTML: `<!--:KEY-->`,
//! `<!--;-->` (the previous key plus one) and runs (`<!--*KEY-->`, then
//! items that are one element each with no marker), written the same way
//! by the engine, `WireClient` and `apply_updates`. See docs/protocol.md
//! ("Anchors in the HTML").

pub(crate) use super::html::element_len;

/// The markers that start the keyed items of a list, in order:
/// `<!--:KEY-->`, or `<!--;-->` for an item whose key is the previous
/// item's plus one (both integers written plainly: `7` after `6`). An item
/// runs to the next marker at its depth or to its list's close; its list is
/// the fragment the marker sits in.
///
/// An item that is one element (its HTML, see
/// [`crate::fragment::html::element_len`]), with only whitespace before
/// and after it, and an integer key starts a run, `<!--*KEY-->`: each
/// element right after it is the next item, key plus one, with no marker
/// at all, for as long as the items are single elements with the same
/// whitespace around them (`L` before, `T` after) and consecutive keys.
/// Between two elements of a run stands `T` then `L`. A table's rows cost
/// nothing beyond their HTML.
#[derive(Default)]
pub(crate) struct ItemMarkers {
    prev: Option<u64>,
    /// The whitespace around the elements of the open run.
    run: Option<(String, String)>,
}

impl ItemMarkers {
    /// Writes the marker (if any) of the item `key` whose HTML is `html`;
    /// the caller writes `html` after it.
    pub(crate) fn push(&mut self, key: &str, html: &str, out: &mut String) {
        self.mark(key, || one_element(html), out);
    }

    /// Writes the marker (if any) of the item `key`; `one` tells whether
    /// its HTML is one element, and the whitespace around it (called only
    /// for an integer key).
    pub(crate) fn mark<'a>(
        &mut self,
        key: &str,
        one: impl FnOnce() -> Option<(&'a str, &'a str)>,
        out: &mut String,
    ) {
        let k = plain_int(key);
        let next = k.is_some() && k == self.prev.and_then(|p| p.checked_add(1));
        let around = k.and_then(|_| one());
        self.prev = k;
        if let (Some((l, t)), true) = (around, next)
            && self.run.as_ref().is_some_and(|(a, b)| a == l && b == t)
        {
            return;
        }
        match around {
            Some(_) => out.push_str("<!--*"),
            None if next => out.push_str("<!--;-->"),
            None => out.push_str("<!--:"),
        }
        if around.is_some() || !next {
            out.push_str(key);
            out.push_str("-->");
        }
        self.run = around.map(|(l, t)| (l.to_owned(), t.to_owned()));
    }
}

/// The whitespace around the one element that a body of statics `parts`
/// is whenever its slots hold inert values ([`inert`]), or `None` when
/// that is not known without scanning the item (no slot, a slot in a
/// comment, next to a tag's name or `<`, `!` or `/`, after the element's
/// end, or the parts are not one element). With inert values the scan
/// of [`element_len`] sees the same tags, quotes and ends whatever the
/// values are, so this is the scan of the parts with `x` for each slot.
pub(crate) fn run_shape(parts: &[Box<str>]) -> Option<(Box<str>, Box<str>)> {
    use crate::fragment::html::{Ctx, scan};
    let (last, slotted) = parts.split_last()?;
    if slotted.is_empty() {
        return None;
    }
    let mut ctx = Ctx::Text;
    for p in slotted {
        ctx = scan(ctx, p, &mut 0);
        let b = p.as_bytes();
        let name = b
            .iter()
            .rev()
            .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b':'))
            .count();
        let before = &b[..b.len() - name];
        if ctx == Ctx::Comment
            || matches!(b.last(), Some(b'/' | b'!' | b'<'))
            || before.ends_with(b"<")
            || before.ends_with(b"</")
            || before.ends_with(b"<!")
        {
            return None;
        }
    }
    let joined = parts.join("x");
    let l = ws_len(&joined);
    if l >= parts[0].len() {
        return None;
    }
    let e = l + element_len(&joined[l..])?;
    if e < joined.len() - last.len() {
        return None;
    }
    let t = &joined[e..];
    (ws_len(t) == t.len()).then(|| (joined[..l].into(), t.into()))
}

/// Whether `s` holds nothing a run's scan looks at in a slot's value.
/// (Escaped text never does: minijinja writes `"`, `'` and `/` as
/// entities.)
pub(crate) fn inert(s: &str) -> bool {
    !s.bytes()
        .any(|b| matches!(b, b'<' | b'>' | b'"' | b'\'' | b'/'))
}

/// Whether `html` is one element with only whitespace (space, tab, line
/// feed) around it: the whitespace before and after it.
pub(crate) fn one_element(html: &str) -> Option<(&str, &str)> {
    let l = ws_len(html);
    let e = l + element_len(&html[l..])?;
    let t = &html[e..];
    (ws_len(t) == t.len()).then(|| (&html[..l], t))
}

/// The length of the whitespace `s` starts with.
pub(crate) fn ws_len(s: &str) -> usize {
    s.bytes()
        .take_while(|b| matches!(b, b' ' | b'\t' | b'\n'))
        .count()
}

/// `key` as an integer when it is written as one plainly (no sign, no
/// leading zero, at most 15 digits, so that a client's numbers hold it).
pub(crate) fn plain_int(key: &str) -> Option<u64> {
    let b = key.as_bytes();
    let plain = !b.is_empty()
        && b.len() <= 15
        && b.iter().all(u8::is_ascii_digit)
        && (b[0] != b'0' || b.len() == 1);
    plain.then(|| key.parse().ok()).flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(parts: &[&str]) -> Option<(String, String)> {
        let parts: Vec<Box<str>> = parts.iter().map(|p| (*p).into()).collect();
        run_shape(&parts).map(|(l, t)| (l.into(), t.into()))
    }

    /// A row with its slots inside: known from the parts, whitespace
    /// around it included; a slot that could change the tags is not.
    #[test]
    fn run_shape_is_known_only_where_values_cannot_change_the_tags() {
        let row = |l: &str, t: &str| Some((l.to_owned(), t.to_owned()));
        assert_eq!(
            shape(&["<tr class=\"", "\"><td>", "</td></tr>\n"]),
            row("", "\n")
        );
        assert_eq!(shape(&["\n  <li title=", ">", "</li>"]), row("\n  ", ""));
        for parts in [
            &["<li>a</li>"][..],         // no slot: scanned
            &["", "<li></li>"],          // a slot before the element
            &["<li></li>", ""],          // a slot after it
            &["<h", ">x</h1>"],          // a slot in a tag's name
            &["<li></", ">"],            // in an end tag's name
            &["<li><", "/li>"],          // after `<`
            &["<li>a/", "></li>"],       // after `/`
            &["<li><!", "--></li>"],     // after `<!`
            &["<li><!-- ", " --></li>"], // in a comment
            &["<li>", "</li><li></li>"], // two elements
        ] {
            assert_eq!(shape(parts), None, "{parts:?}");
        }
        assert!(inert("Ann &amp; Bob &#34;x&#34; 12:00") && !inert("a/b") && !inert("<b>"));
    }
}
