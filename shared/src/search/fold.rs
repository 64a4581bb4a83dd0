//! Case- and accent-insensitive comparison for string search (R4: "case-insensitive and
//! accent-insensitive").
//!
//! No Unicode normalization crate is available, so folding is a table: every letter of Latin-1
//! Supplement (U+00C0–U+00FF) and Latin Extended-A (U+0100–U+017F) maps to its base letter in
//! lower case, as NFD decomposition followed by dropping combining marks would (`Ü` -> `u`,
//! `é` -> `e`, `Ő` -> `o`), plus the letters NFD leaves alone but users type without their
//! stroke or ligature: `ß` -> `ss`, `æ` -> `ae`, `œ` -> `oe`, `ø` -> `o`, `đ` -> `d`,
//! `ħ` -> `h`, `ł` -> `l`, `ŧ` -> `t`, `ı` -> `i`, `ĳ` -> `ij`, `ŀ` -> `l`, `ŉ` -> `n`,
//! `ſ` -> `s`. Combining diacritical marks (U+0300–U+036F) are dropped, so decomposed input
//! folds like precomposed input. Every other character is only lower-cased (Unicode simple
//! case mapping): accented letters of other scripts and blocks (Vietnamese, Greek tonos, ...)
//! keep their accents.

/// Folded forms of U+00C0..=U+017F.
#[rustfmt::skip]
const LATIN: [&str; 192] = [
    "a", "a", "a", "a", "a", "a", "ae", "c", "e", "e", "e", "e", "i", "i", "i", "i", // U+00C0
    "ð", "n", "o", "o", "o", "o", "o", "×", "o", "u", "u", "u", "u", "y", "þ", "ss", // U+00D0
    "a", "a", "a", "a", "a", "a", "ae", "c", "e", "e", "e", "e", "i", "i", "i", "i", // U+00E0
    "ð", "n", "o", "o", "o", "o", "o", "÷", "o", "u", "u", "u", "u", "y", "þ", "y", // U+00F0
    "a", "a", "a", "a", "a", "a", "c", "c", "c", "c", "c", "c", "c", "c", "d", "d", // U+0100
    "d", "d", "e", "e", "e", "e", "e", "e", "e", "e", "e", "e", "g", "g", "g", "g", // U+0110
    "g", "g", "g", "g", "h", "h", "h", "h", "i", "i", "i", "i", "i", "i", "i", "i", // U+0120
    "i", "i", "ij", "ij", "j", "j", "k", "k", "ĸ", "l", "l", "l", "l", "l", "l", "l", // U+0130
    "l", "l", "l", "n", "n", "n", "n", "n", "n", "n", "ŋ", "ŋ", "o", "o", "o", "o", // U+0140
    "o", "o", "oe", "oe", "r", "r", "r", "r", "r", "r", "s", "s", "s", "s", "s", "s", // U+0150
    "s", "s", "t", "t", "t", "t", "t", "t", "u", "u", "u", "u", "u", "u", "u", "u", // U+0160
    "u", "u", "u", "u", "w", "w", "y", "y", "y", "z", "z", "z", "z", "z", "z", "s", // U+0170
];

enum Fold {
    Str(std::str::Chars<'static>),
    Lower(std::char::ToLowercase),
}

impl Iterator for Fold {
    type Item = char;
    fn next(&mut self) -> Option<char> {
        match self {
            Fold::Str(c) => c.next(),
            Fold::Lower(l) => l.next(),
        }
    }
}

fn fold_char(c: char) -> Fold {
    let cp = u32::from(c);
    match cp {
        0x300..=0x36F => Fold::Str("".chars()),
        0xC0..=0x17F => Fold::Str(LATIN[(cp - 0xC0) as usize].chars()),
        _ => Fold::Lower(c.to_lowercase()),
    }
}

fn folded(s: &str) -> impl Iterator<Item = char> + '_ {
    s.chars().flat_map(fold_char)
}

/// The folded form of a string; search values are folded once, at compile time.
pub(super) fn fold(s: &str) -> String {
    folded(s).collect()
}

/// Whether the folded `hay` starts with `prefix` (already folded). Does not allocate.
pub(super) fn starts_with_folded(hay: &str, prefix: &str) -> bool {
    let mut want = prefix.chars();
    for c in folded(hay) {
        match want.next() {
            None => return true,
            Some(w) if w == c => {}
            Some(_) => return false,
        }
    }
    want.next().is_none()
}

/// Whether the folded `hay` contains `needle` (already folded). Allocates only for non-ASCII
/// `hay`.
pub(super) fn contains_folded(hay: &str, needle: &str) -> bool {
    if hay.is_ascii() {
        // ASCII folds to ASCII of the same length, so a byte-window search suffices.
        let n = needle.as_bytes();
        return needle.is_ascii()
            && (n.is_empty()
                || hay
                    .as_bytes()
                    .windows(n.len())
                    .any(|w| w.eq_ignore_ascii_case(n)));
    }
    fold(hay).contains(needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folds_case_and_accents() {
        assert_eq!(fold("Müller"), "muller");
        assert_eq!(fold("ÉLODIE Çà"), "elodie ca");
        assert_eq!(fold("Straße"), "strasse");
        assert_eq!(fold("Łódź"), "lodz");
        assert_eq!(fold("Œuvre Ærø"), "oeuvre aero");
        assert_eq!(fold("Dvořák Şahin Ğ"), "dvorak sahin g");
        assert_eq!(fold("Mu\u{308}ller"), "muller");
        assert_eq!(fold("ΣΊΣΥΦΟΣ"), "σίσυφοσ");
    }

    #[test]
    fn table_agrees_with_case_mapping() {
        // Upper- and lower-case forms of one letter fold alike.
        for cp in 0xC0u32..=0x17F {
            let Some(c) = char::from_u32(cp) else {
                continue;
            };
            let lower: String = c.to_lowercase().collect();
            if lower.chars().count() == 1 && lower != c.to_string() {
                assert_eq!(fold(&c.to_string()), fold(&lower), "U+{cp:04X}");
            }
        }
    }

    #[test]
    fn prefix_and_substring() {
        assert!(starts_with_folded("Müller-Lüdenscheidt", "mull"));
        assert!(starts_with_folded("Müller", "muller"));
        assert!(!starts_with_folded("Müller", "mullerx"));
        assert!(!starts_with_folded("Mueller", "mul"));
        assert!(starts_with_folded("ß", "s"));
        assert!(contains_folded("Anna Müller", "ull"));
        assert!(contains_folded("PETERSON", "ters"));
        assert!(!contains_folded("PETERSON", "tērs"));
        assert!(!contains_folded("Peterson", "xyz"));
        assert!(contains_folded("Straße 5", "asse"));
    }
}
