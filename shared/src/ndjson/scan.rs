//! A validating single-pass JSON scanner for resource lines.
//!
//! Every exported line must be valid JSON, so every line is validated; on the pass-through path
//! (no per-resource filter) that validation is most of the work. A general-purpose parser builds
//! values (or drives a visitor for every token); this scanner only checks the grammar and
//! captures the three top-level fields the export needs (`resourceType`, `id`,
//! `meta.lastUpdated`), several times faster. It accepts exactly RFC 8259 JSON (UTF-8, no
//! trailing commas, no leading zeros, valid escapes, no control characters in strings), with the
//! same nesting limit as `serde_json` (128); the differential test below holds it to
//! `serde_json`'s verdict on mutated real lines.

/// Why a line is not JSON, with the byte column (from 1) where the scanner stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanError {
    pub column: usize,
    pub what: &'static str,
}

/// The raw (still escaped) bytes of the captured fields, as ranges into the line.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Captured {
    pub resource_type: Option<Str>,
    pub id: Option<Str>,
    pub last_updated: Option<Str>,
    /// A captured field held something else than a string (or `meta` was not an object).
    pub wrong_type: Option<&'static str>,
    pub duplicate: Option<&'static str>,
    pub is_object: bool,
    /// Top-level members `(key content, value)` as byte ranges, when asked for.
    pub members: Option<Vec<(std::ops::Range<usize>, std::ops::Range<usize>)>>,
}

/// A string's content range and whether it holds escapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Str {
    pub start: usize,
    pub end: usize,
    pub escaped: bool,
}

const MAX_DEPTH: usize = 128;

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGH: u64 = 0x8080_8080_8080_8080;

/// Bytes before the first `"`, `\`, control character or non-ASCII byte. Eight bytes at a time ("SWAR"):
/// most FHIR strings are short keys and codes, where a vectorised search costs more to set
/// up than it saves. Each test sets the high bit of the first byte that matches exactly
/// (borrows can only mark bytes after it), so `trailing_zeros` finds the first stop.
#[inline]
fn plain_run(b: &[u8]) -> usize {
    let mut i = 0;
    while let Some(word) = b.get(i..i + 8) {
        let mut w = [0u8; 8];
        w.copy_from_slice(word);
        let w = u64::from_le_bytes(w);
        let q = w ^ (ONES * u64::from(b'"'));
        let bs = w ^ (ONES * u64::from(b'\\'));
        // Non-ASCII bytes stop the run too: strings check their UTF-8 where it occurs
        // instead of the whole line taking a second pass.
        let stop = (q.wrapping_sub(ONES) & !q)
            | (bs.wrapping_sub(ONES) & !bs)
            | (w.wrapping_sub(ONES * 0x20) & !w)
            | w;
        let stop = stop & HIGH;
        if stop != 0 {
            return i + (stop.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while let Some(&c) = b.get(i) {
        if c == b'"' || c == b'\\' || !(0x20..0x80).contains(&c) {
            break;
        }
        i += 1;
    }
    i
}

struct Scanner<'a> {
    b: &'a [u8],
    i: usize,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Field {
    Other,
    ResourceType,
    Id,
    Meta,
    LastUpdated,
}

impl<'a> Scanner<'a> {
    fn err(&self, what: &'static str) -> ScanError {
        ScanError {
            column: self.i + 1,
            what,
        }
    }

    #[inline]
    fn ws(&mut self) {
        while let Some(c) = self.b.get(self.i) {
            if matches!(c, b' ' | b'\t' | b'\n' | b'\r') {
                self.i += 1;
            } else {
                break;
            }
        }
    }

    #[inline]
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    /// At a `"`: scans the string, returns its content range. Inlined: a `Result` this wide
    /// comes back through memory, and reading it whole right after the callee wrote it in
    /// parts stalls store forwarding (it was most of `value`'s time).
    #[inline(always)]
    fn string(&mut self) -> Result<Str, ScanError> {
        self.i += 1;
        let start = self.i;
        let mut escaped = false;
        loop {
            self.i += plain_run(&self.b[self.i..]);
            match self.peek() {
                None => return Err(self.err("unterminated string")),
                Some(b'"') => {
                    let end = self.i;
                    self.i += 1;
                    return Ok(Str {
                        start,
                        end,
                        escaped,
                    });
                }
                Some(b'\\') => {
                    escaped = true;
                    self.i += 1;
                    match self.peek() {
                        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => self.i += 1,
                        Some(b'u') => {
                            self.i += 1;
                            for _ in 0..4 {
                                match self.peek() {
                                    Some(c) if c.is_ascii_hexdigit() => self.i += 1,
                                    _ => return Err(self.err("invalid unicode escape")),
                                }
                            }
                        }
                        _ => return Err(self.err("invalid escape")),
                    }
                }
                Some(c) if c >= 0x80 => {
                    // Every byte of a multi-byte UTF-8 sequence is non-ASCII, so a run of
                    // such bytes is valid exactly when it is valid on its own.
                    let run = self.b[self.i..].iter().take_while(|c| **c >= 0x80).count();
                    if let Err(e) = std::str::from_utf8(&self.b[self.i..self.i + run]) {
                        self.i += e.valid_up_to();
                        return Err(self.err("invalid UTF-8"));
                    }
                    self.i += run;
                }
                Some(_) => return Err(self.err("control character in string")),
            }
        }
    }

    fn digits(&mut self) -> usize {
        let from = self.i;
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.i += 1;
        }
        self.i - from
    }

    fn number(&mut self) -> Result<(), ScanError> {
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        match self.peek() {
            Some(b'0') => {
                self.i += 1;
                if matches!(self.peek(), Some(b'0'..=b'9')) {
                    return Err(self.err("leading zero"));
                }
            }
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return Err(self.err("invalid number")),
        }
        if self.peek() == Some(b'.') {
            self.i += 1;
            if self.digits() == 0 {
                return Err(self.err("invalid number"));
            }
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.i += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.i += 1;
            }
            if self.digits() == 0 {
                return Err(self.err("invalid number"));
            }
        }
        Ok(())
    }

    fn literal(&mut self, word: &'static [u8]) -> Result<(), ScanError> {
        if self.b.get(self.i..self.i + word.len()) == Some(word) {
            self.i += word.len();
            Ok(())
        } else {
            Err(self.err("invalid literal"))
        }
    }

    /// Scans any value; `field` says which captured field it is the value of.
    fn value(&mut self, depth: usize, field: Field, cap: &mut Captured) -> Result<(), ScanError> {
        self.ws();
        let wants_string = matches!(field, Field::ResourceType | Field::Id | Field::LastUpdated);
        match self.peek() {
            Some(b'"') => {
                let s = self.string()?;
                match field {
                    Field::ResourceType => cap.resource_type = Some(s),
                    Field::Id => cap.id = Some(s),
                    Field::LastUpdated => cap.last_updated = Some(s),
                    Field::Meta => cap.wrong_type = Some("meta"),
                    Field::Other => {}
                }
                Ok(())
            }
            Some(b'{') => {
                if wants_string {
                    cap.wrong_type.get_or_insert(field_name(field));
                }
                self.object(depth + 1, field == Field::Meta, cap)
            }
            Some(b'[') => {
                if wants_string || field == Field::Meta {
                    cap.wrong_type.get_or_insert(field_name(field));
                }
                self.array(depth + 1, cap)
            }
            Some(c) => {
                if wants_string || field == Field::Meta {
                    cap.wrong_type.get_or_insert(field_name(field));
                }
                match c {
                    b'-' | b'0'..=b'9' => self.number(),
                    b't' => self.literal(b"true"),
                    b'f' => self.literal(b"false"),
                    b'n' => self.literal(b"null"),
                    _ => Err(self.err("expected a value")),
                }
            }
            None => Err(self.err("unexpected end of line")),
        }
    }

    fn array(&mut self, depth: usize, cap: &mut Captured) -> Result<(), ScanError> {
        if depth > MAX_DEPTH {
            return Err(self.err("nested too deeply"));
        }
        self.i += 1;
        self.ws();
        if self.peek() == Some(b']') {
            self.i += 1;
            return Ok(());
        }
        loop {
            self.value(depth, Field::Other, cap)?;
            self.ws();
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b']') => {
                    self.i += 1;
                    return Ok(());
                }
                _ => return Err(self.err("expected , or ]")),
            }
        }
    }

    /// `depth` 1 is the resource itself; `in_meta` is the top-level `meta` object.
    fn object(&mut self, depth: usize, in_meta: bool, cap: &mut Captured) -> Result<(), ScanError> {
        if depth > MAX_DEPTH {
            return Err(self.err("nested too deeply"));
        }
        self.i += 1;
        self.ws();
        if self.peek() == Some(b'}') {
            self.i += 1;
            return Ok(());
        }
        loop {
            if self.peek() != Some(b'"') {
                return Err(self.err("expected a key"));
            }
            let key = self.string()?;
            let raw = &self.b[key.start..key.end];
            let field = if depth == 1 {
                match raw {
                    b"resourceType" => Field::ResourceType,
                    b"id" => Field::Id,
                    b"meta" => Field::Meta,
                    _ => Field::Other,
                }
            } else if in_meta && depth == 2 && raw == b"lastUpdated" {
                Field::LastUpdated
            } else {
                Field::Other
            };
            let seen = match field {
                Field::ResourceType => cap.resource_type.is_some(),
                Field::Id => cap.id.is_some(),
                Field::LastUpdated => cap.last_updated.is_some(),
                Field::Meta | Field::Other => false,
            };
            if seen {
                cap.duplicate.get_or_insert(field_name(field));
            }
            self.ws();
            if self.peek() != Some(b':') {
                return Err(self.err("expected :"));
            }
            self.i += 1;
            self.ws();
            let value_start = self.i;
            self.value(depth, field, cap)?;
            if depth == 1
                && let Some(members) = cap.members.as_mut()
            {
                members.push((key.start..key.end, value_start..self.i));
            }
            self.ws();
            match self.peek() {
                Some(b',') => {
                    self.i += 1;
                    self.ws();
                }
                Some(b'}') => {
                    self.i += 1;
                    return Ok(());
                }
                _ => return Err(self.err("expected , or }")),
            }
        }
    }
}

fn field_name(f: Field) -> &'static str {
    match f {
        Field::ResourceType => "resourceType",
        Field::Id => "id",
        Field::Meta => "meta",
        Field::LastUpdated => "meta.lastUpdated",
        Field::Other => "",
    }
}

/// Validates `line` as one JSON value and captures the resource's head fields.
pub fn scan(line: &[u8]) -> Result<Captured, ScanError> {
    scan_with(line, Captured::default())
}

/// As [`scan`], also recording the spans of the top-level members.
pub fn scan_members(line: &[u8]) -> Result<Captured, ScanError> {
    scan_with(
        line,
        Captured {
            members: Some(Vec::new()),
            ..Captured::default()
        },
    )
}

fn scan_with(line: &[u8], cap: Captured) -> Result<Captured, ScanError> {
    let mut s = Scanner { b: line, i: 0 };
    let mut cap = cap;
    s.ws();
    if s.peek() == Some(b'{') {
        cap.is_object = true;
        s.object(1, false, &mut cap)?;
    } else {
        s.value(0, Field::Other, &mut cap)?;
    }
    s.ws();
    if s.i != line.len() {
        return Err(s.err("trailing characters"));
    }
    Ok(cap)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broken_utf8_in_a_string_is_named_where_it_starts() {
        let ok = "{\"a\":\"caf\u{e9} \u{1f600}\"}".as_bytes();
        assert!(scan(ok).is_ok());
        // A lone continuation byte, a truncated sequence, an overlong form, a surrogate.
        for (bad, column) in [
            (&b"{\"a\":\"x\x80\"}"[..], 8),
            (&b"{\"a\":\"\xc3\"}"[..], 7),
            (&b"{\"a\":\"ab\xc0\xaf\"}"[..], 9),
            (&b"{\"a\":\"\xed\xa0\x80\"}"[..], 7),
        ] {
            let e = scan(bad).expect_err("not UTF-8");
            assert_eq!((e.what, e.column), ("invalid UTF-8", column), "{bad:?}");
        }
        // Outside strings a non-ASCII byte is not JSON at all.
        assert!(scan(b"{\"a\":\xc3\xa9}").is_err());
    }

    #[test]
    fn plain_run_finds_the_first_stop_byte() {
        let naive = |b: &[u8]| {
            b.iter()
                .position(|&c| c == b'"' || c == b'\\' || !(0x20..0x80).contains(&c))
                .unwrap_or(b.len())
        };
        let mut state: u64 = 7;
        for len in 0..40 {
            for _ in 0..500 {
                let bytes: Vec<u8> = (0..len)
                    .map(|_| {
                        state = state
                            .wrapping_mul(6364136223846793005)
                            .wrapping_add(1442695040888963407);
                        // Mostly ordinary bytes (ASCII and UTF-8 high bytes), some stops.
                        match (state >> 33) % 40 {
                            0 => b'"',
                            1 => b'\\',
                            2 => (state >> 40) as u8 % 0x20,
                            3 => 0x80 | (state >> 41) as u8,
                            _ => b'!' + ((state >> 42) as u8 % 90),
                        }
                    })
                    .collect();
                assert_eq!(plain_run(&bytes), naive(&bytes), "{bytes:?}");
            }
        }
    }
}
