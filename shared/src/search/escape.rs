//! FHIR search value escaping (R4 search §Escaping Search Parameters): in a value, `\,`, `\|`,
//! `\$` and `\\` stand for the literal character; unescaped `,` separates ORed values and
//! unescaped `|` separates the parts of a token or quantity.

/// Splits on `sep` where it is not escaped; the parts keep their escapes, so that they can be
/// split again on another separator before [`unescape`].
pub(super) fn split_unescaped(s: &str, sep: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut start = 0;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        if escaped {
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == sep {
            parts.push(&s[start..i]);
            start = i + c.len_utf8();
        }
    }
    parts.push(&s[start..]);
    parts
}

/// Resolves the escapes. A backslash before any other character is kept: R4 defines escapes
/// only for the separators, and a stray backslash in a value is more likely data than syntax.
pub(super) fn unescape(s: &str) -> String {
    if !s.contains('\\') {
        return s.to_owned();
    }
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some(n @ (',' | '|' | '$' | '\\')) => out.push(n),
            Some(n) => {
                out.push('\\');
                out.push(n);
            }
            None => out.push('\\'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_on_unescaped_separators_only() {
        assert_eq!(split_unescaped("a,b", ','), ["a", "b"]);
        assert_eq!(split_unescaped(r"a\,b,c", ','), [r"a\,b", "c"]);
        assert_eq!(split_unescaped(r"a\\,b", ','), [r"a\\", "b"]);
        assert_eq!(split_unescaped("a", ','), ["a"]);
        assert_eq!(split_unescaped("a,", ','), ["a", ""]);
        assert_eq!(split_unescaped(r"s\|x|c", '|'), [r"s\|x", "c"]);
    }

    #[test]
    fn unescapes() {
        assert_eq!(unescape(r"a\,b"), "a,b");
        assert_eq!(unescape(r"a\|b\$c\\d"), r"a|b$c\d");
        assert_eq!(unescape(r"a\nb"), r"a\nb");
        assert_eq!(unescape(r"a\"), r"a\");
        assert_eq!(unescape("plain"), "plain");
    }
}
