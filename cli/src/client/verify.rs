//! Verification of an NDJSON stream fed in chunks of any size, holding at most one line.
//!
//! Every line must be a JSON object with a `resourceType` that is a resource type name, and the
//! expected one when the manifest item names a type. Blank lines (also whitespace-only ones)
//! are errors; a final line without `\n` counts; a `\r` before `\n` is accepted as JSON
//! whitespace. Problems carry the line number and never the line's content: it is patient
//! data (serde_json messages are cut down to category and column for the same reason).

use shared::ndjson::head::position_only;
use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::Deserialize;

use super::error::LineProblem;

/// Longest line held: a guard against a body without newlines.
pub(crate) const MAX_LINE: usize = 256 * 1024 * 1024;

/// What the lines of a file must be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Expect {
    /// Exactly this `resourceType`.
    Type(String),
    /// Any resource type name (IG 3.0 output items without `type`).
    AnyType,
}

#[derive(Deserialize)]
struct Head<'a> {
    #[serde(rename = "resourceType", borrow, default)]
    resource_type: Option<Cow<'a, str>>,
}

/// A FHIR resource type name: an upper-case ASCII letter, then letters and digits.
pub(crate) fn is_type_name(s: &str) -> bool {
    let b = s.as_bytes();
    (1..=64).contains(&b.len())
        && b[0].is_ascii_uppercase()
        && b.iter().all(u8::is_ascii_alphanumeric)
}

#[derive(Debug)]
pub(crate) struct LineVerifier {
    expect: Expect,
    carry: Vec<u8>,
    lines: u64,
    per_type: BTreeMap<String, u64>,
}

/// A verified stream: its line count and lines per `resourceType`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Verified {
    pub lines: u64,
    pub per_type: BTreeMap<String, u64>,
}

/// The 1-based number of the offending line, and what is wrong with it.
pub(crate) type Failure = (u64, LineProblem);

impl LineVerifier {
    pub fn new(expect: Expect) -> LineVerifier {
        LineVerifier {
            expect,
            carry: Vec::new(),
            lines: 0,
            per_type: BTreeMap::new(),
        }
    }

    pub fn feed(&mut self, mut chunk: &[u8]) -> Result<(), Failure> {
        while let Some(i) = chunk.iter().position(|&b| b == b'\n') {
            let (head, rest) = chunk.split_at(i);
            if self.carry.is_empty() {
                self.line(head)?;
            } else {
                let mut line = std::mem::take(&mut self.carry);
                line.extend_from_slice(head);
                self.line(&line)?;
                line.clear();
                // Reuses the allocation for the next long line.
                self.carry = line;
            }
            chunk = &rest[1..];
        }
        if self.carry.len() + chunk.len() > MAX_LINE {
            return Err((self.lines + 1, LineProblem::TooLong(MAX_LINE)));
        }
        self.carry.extend_from_slice(chunk);
        Ok(())
    }

    pub fn finish(mut self) -> Result<Verified, Failure> {
        if !self.carry.is_empty() {
            let last = std::mem::take(&mut self.carry);
            self.line(&last)?;
        }
        Ok(Verified {
            lines: self.lines,
            per_type: self.per_type,
        })
    }

    fn line(&mut self, line: &[u8]) -> Result<(), Failure> {
        self.lines += 1;
        let n = self.lines;
        let found = resource_type(line).map_err(|p| (n, p))?;
        match &self.expect {
            Expect::Type(want) if *want != found => {
                return Err((
                    n,
                    if is_type_name(&found) {
                        LineProblem::WrongType {
                            expected: want.clone(),
                            found: found.into_owned(),
                        }
                    } else {
                        LineProblem::InvalidResourceType
                    },
                ));
            }
            Expect::AnyType if !is_type_name(&found) => {
                return Err((n, LineProblem::InvalidResourceType));
            }
            _ => {}
        }
        match self.per_type.get_mut(found.as_ref()) {
            Some(c) => *c += 1,
            None => {
                self.per_type.insert(found.into_owned(), 1);
            }
        }
        Ok(())
    }
}

/// The `resourceType` of a line that must be one JSON object.
fn resource_type(line: &[u8]) -> Result<Cow<'_, str>, LineProblem> {
    match line.iter().find(|b| !b.is_ascii_whitespace()) {
        None => Err(LineProblem::Blank),
        Some(b'{') => {
            let head: Head<'_> =
                serde_json::from_slice(line).map_err(|e| LineProblem::Json(position_only(&e)))?;
            head.resource_type.ok_or(LineProblem::NoResourceType)
        }
        Some(_) => Err(
            match serde_json::from_slice::<serde::de::IgnoredAny>(line) {
                Ok(_) => LineProblem::NotAnObject,
                Err(e) => LineProblem::Json(position_only(&e)),
            },
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(expect: Expect, body: &[u8], chunk: usize) -> Result<Verified, Failure> {
        let mut v = LineVerifier::new(expect);
        for c in body.chunks(chunk.max(1)) {
            v.feed(c)?;
        }
        v.finish()
    }

    fn patient() -> Expect {
        Expect::Type("Patient".into())
    }

    #[test]
    fn counts_lines_in_any_chunking() {
        let body = b"{\"resourceType\":\"Patient\",\"id\":\"a\"}\n{\"id\":\"b\",\"resourceType\":\"Patient\",\"x\":[1,{\"y\":\"\\n\"}]}\r\n{\"resourceType\":\"Patient\"}";
        for chunk in [1, 2, 7, 64, 1 << 20] {
            let v = run(patient(), body, chunk).unwrap();
            assert_eq!(v.lines, 3, "chunk {chunk}");
            assert_eq!(v.per_type, BTreeMap::from([("Patient".to_owned(), 3)]));
        }
        assert_eq!(run(patient(), b"", 1).unwrap().lines, 0);
        let mixed = run(
            Expect::AnyType,
            b"{\"resourceType\":\"Parameters\"}\n{\"resourceType\":\"Patient\"}\n",
            3,
        )
        .unwrap();
        assert_eq!(mixed.lines, 2);
        assert_eq!(mixed.per_type.len(), 2);
    }

    #[test]
    fn reports_the_line_and_never_its_content() {
        let ok = "{\"resourceType\":\"Patient\",\"name\":\"SECRET\"}\n";
        let cases: Vec<(String, Expect, u64, LineProblem)> = vec![
            (format!("{ok}\n{ok}"), patient(), 2, LineProblem::Blank),
            (format!("{ok}{ok}\n"), patient(), 3, LineProblem::Blank),
            (format!("{ok}   \n"), patient(), 2, LineProblem::Blank),
            (
                format!("{ok}[\"SECRET\"]\n"),
                patient(),
                2,
                LineProblem::NotAnObject,
            ),
            (
                format!("{{\"name\":\"SECRET\"}}\n{ok}"),
                patient(),
                1,
                LineProblem::NoResourceType,
            ),
            (
                format!("{ok}{{\"resourceType\":\"Observation\",\"v\":\"SECRET\"}}\n"),
                patient(),
                2,
                LineProblem::WrongType {
                    expected: "Patient".into(),
                    found: "Observation".into(),
                },
            ),
            (
                "{\"resourceType\":\"SECRET stuff\"}\n".into(),
                patient(),
                1,
                LineProblem::InvalidResourceType,
            ),
            (
                "{\"resourceType\":\"lower\"}\n".into(),
                Expect::AnyType,
                1,
                LineProblem::InvalidResourceType,
            ),
        ];
        for (body, expect, line, problem) in cases {
            for chunk in [1, 5, 1 << 20] {
                let got = run(expect.clone(), body.as_bytes(), chunk).unwrap_err();
                assert_eq!(
                    got,
                    (line, problem.clone()),
                    "{body:?} in chunks of {chunk}"
                );
            }
        }
        for body in [
            "{\"resourceType\":\"Patient\",\"name\":\"SECRET\"",
            "{\"resourceType\":\"Patient\"} SECRET",
            "SECRET",
            "{\"resourceType\":1234567}",
        ] {
            let (line, problem) = run(patient(), body.as_bytes(), 3).unwrap_err();
            assert_eq!(line, 1);
            assert!(matches!(problem, LineProblem::Json(_)), "{body}: {problem}");
            let text = problem.to_string();
            assert!(
                !text.contains("SECRET") && !text.contains("1234567"),
                "{text}"
            );
        }
    }

    #[test]
    fn type_names() {
        assert!(is_type_name("Patient"));
        assert!(is_type_name("Bundle"));
        assert!(!is_type_name(""));
        assert!(!is_type_name("patient"));
        assert!(!is_type_name("Pat ient"));
        assert!(!is_type_name("Patient/1"));
    }
}
