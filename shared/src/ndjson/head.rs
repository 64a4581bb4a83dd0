//! The head of one NDJSON line: validated JSON, and the three fields the export needs from
//! every resource (`resourceType`, `id`, `meta.lastUpdated`) without building a tree.

use std::borrow::Cow;

use serde::Deserialize;

use super::scan::{Str, scan};
use crate::model::fhir_time::instant_micros;

#[derive(Deserialize)]
struct Head<'a> {
    #[serde(rename = "resourceType", borrow, default)]
    resource_type: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    meta: Option<MetaHead<'a>>,
}

#[derive(Deserialize)]
struct MetaHead<'a> {
    #[serde(rename = "lastUpdated", borrow, default)]
    last_updated: Option<Cow<'a, str>>,
}

/// What the export needs to know of a resource line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineHead<'a> {
    pub resource_type: Cow<'a, str>,
    pub id: Cow<'a, str>,
    /// `meta.lastUpdated` in microseconds since the epoch, if present.
    pub last_updated: Option<i64>,
}

/// Why a line is not an exportable resource. Messages never quote the line: it is patient data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    #[error("not valid JSON ({0})")]
    Json(String),
    #[error("not a JSON object")]
    NotAnObject,
    #[error("has no resourceType")]
    NoResourceType,
    #[error("has no id")]
    NoId,
    #[error("meta.lastUpdated is not a valid instant")]
    BadLastUpdated,
}

/// Parses and validates one line (without its terminator).
pub fn read_head(line: &[u8]) -> Result<LineHead<'_>, LineError> {
    let cap =
        scan(line).map_err(|e| LineError::Json(format!("{} at column {}", e.what, e.column)))?;
    if !cap.is_object {
        return Err(LineError::NotAnObject);
    }
    if let Some(field) = cap.duplicate {
        return Err(LineError::Json(format!("duplicate field `{field}`")));
    }
    if let Some(field) = cap.wrong_type {
        return Err(LineError::Json(format!("`{field}` has the wrong type")));
    }
    let text = |s: Str| -> Result<Cow<'_, str>, LineError> {
        let raw = &line[s.start..s.end];
        if s.escaped {
            serde_json::from_slice::<String>(&line[s.start - 1..s.end + 1])
                .map(Cow::Owned)
                .map_err(|e| LineError::Json(position_only(&e)))
        } else {
            // The scanner has checked the line is UTF-8.
            std::str::from_utf8(raw)
                .map(Cow::Borrowed)
                .map_err(|_| LineError::Json("invalid UTF-8".into()))
        }
    };
    let resource_type = text(cap.resource_type.ok_or(LineError::NoResourceType)?)?;
    let id = text(cap.id.ok_or(LineError::NoId)?)?;
    let last_updated = match cap.last_updated {
        Some(s) => Some(instant_micros(text(s)?.as_bytes()).ok_or(LineError::BadLastUpdated)?),
        None => None,
    };
    Ok(LineHead {
        resource_type,
        id,
        last_updated,
    })
}

/// The same as [`read_head`] through `serde_json`: the reference the scanner is tested
/// against.
pub fn read_head_serde(line: &[u8]) -> Result<LineHead<'_>, LineError> {
    let first = line.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'{') {
        return Err(match first {
            Some(b'[' | b'"' | b't' | b'f' | b'n' | b'-' | b'0'..=b'9')
                if serde_json::from_slice::<serde::de::IgnoredAny>(line).is_ok() =>
            {
                LineError::NotAnObject
            }
            _ => LineError::Json(
                serde_json::from_slice::<serde::de::IgnoredAny>(line)
                    .err()
                    .map(|e| position_only(&e))
                    .unwrap_or_else(|| "unexpected content".into()),
            ),
        });
    }
    let head: Head<'_> =
        serde_json::from_slice(line).map_err(|e| LineError::Json(position_only(&e)))?;
    let resource_type = head.resource_type.ok_or(LineError::NoResourceType)?;
    let id = head.id.ok_or(LineError::NoId)?;
    let last_updated = match head.meta.and_then(|m| m.last_updated) {
        Some(s) => Some(instant_micros(s.as_bytes()).ok_or(LineError::BadLastUpdated)?),
        None => None,
    };
    Ok(LineHead {
        resource_type,
        id,
        last_updated,
    })
}

/// serde_json's message without any quoted input (it is patient data): the category and the
/// column.
pub fn position_only(e: &serde_json::Error) -> String {
    let what = match e.classify() {
        serde_json::error::Category::Io => "I/O error",
        serde_json::error::Category::Syntax => "syntax error",
        serde_json::error::Category::Data => "unexpected data",
        serde_json::error::Category::Eof => "unexpected end of line",
    };
    format!("{what} at column {}", e.column())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_head_fields() {
        let h = read_head(
            br#"{"resourceType":"Patient","id":"p1","meta":{"versionId":"1","lastUpdated":"2024-01-01T00:00:00Z"},"name":[{"family":"X"}]}"#,
        )
        .expect("valid");
        assert_eq!(h.resource_type, "Patient");
        assert_eq!(h.id, "p1");
        assert_eq!(h.last_updated, Some(1_704_067_200_000_000));
        let h = read_head(br#"{"id":"a\u0062","resourceType":"Observation"}"#).expect("valid");
        assert_eq!(h.id, "ab");
        assert_eq!(h.last_updated, None);
    }

    #[test]
    fn classifies_bad_lines() {
        assert!(matches!(
            read_head(b"{\"resourceType\":"),
            Err(LineError::Json(_))
        ));
        assert!(matches!(read_head(b"not json"), Err(LineError::Json(_))));
        assert!(matches!(read_head(b"[1,2]"), Err(LineError::NotAnObject)));
        assert!(matches!(
            read_head(br#"{"id":"x"}"#),
            Err(LineError::NoResourceType)
        ));
        assert!(matches!(
            read_head(br#"{"resourceType":"Patient"}"#),
            Err(LineError::NoId)
        ));
        assert!(matches!(
            read_head(br#"{"resourceType":"Patient","id":"x","meta":{"lastUpdated":"2024"}}"#),
            Err(LineError::BadLastUpdated)
        ));
        assert!(matches!(
            read_head(br#"{"resourceType":"Patient","id":"x"} trailing"#),
            Err(LineError::Json(_))
        ));
        assert!(matches!(
            read_head(br#"{"resourceType":1,"id":"x"}"#),
            Err(LineError::Json(_))
        ));
    }

    /// Verdicts and captured fields of the scanner and of serde_json agree on real lines and
    /// on many mutations of them.
    #[test]
    fn scanner_agrees_with_serde_json() {
        let seeds: Vec<Vec<u8>> = vec![
            br#"{"resourceType":"Patient","id":"p1","meta":{"versionId":"1","lastUpdated":"2024-01-01T00:00:00Z"},"name":[{"family":"M\u00fcller","given":["J"]}],"active":true,"multipleBirthInteger":2,"extension":[{"url":"x","valueDecimal":-1.5e-3}]}"#.to_vec(),
            "{\"resourceType\":\"Patient\",\"id\":\"p\",\"name\":[{\"family\":\"\u{e9}\u{20ac}\u{1f600}\u{e9}x\"}]}".as_bytes().to_vec(),
            br#"{"id":"o\/1","resourceType":"Observation","valueQuantity":{"value":0.0,"unit":"mg"},"note":[],"x":null,"y":false}"#.to_vec(),
            br#" { "resourceType" : "Encounter" , "id" : "e" , "meta" : { "lastUpdated" : "2021-06-01T00:00:00.000+02:00" } } "#.to_vec(),
            "{\"resourceType\":\"Patient\",\"id\":\"\u{e9}t\u{e9}\",\"text\":{\"div\":\"<div>caf\u{e9} \\\"x\\\"</div>\"}}".as_bytes().to_vec(),
        ];
        // Pieces of UTF-8 too (lead and continuation bytes, a surrogate's and an overlong
        // form's leads), so that strings holding broken sequences are tried.
        let alphabet = b"{}[]\":,\\ 0-1eE.+tfnul\"x\x01\xff\xc3\xa9\xe2\x82\xac\xed\xc0";
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut rnd = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut checked = 0;
        for seed in &seeds {
            for round in 0..4000 {
                let mut line = seed.clone();
                let edits = if round == 0 { 0 } else { 1 + rnd() % 3 };
                for _ in 0..edits {
                    let at = (rnd() as usize) % (line.len() + 1);
                    let c = alphabet[(rnd() as usize) % alphabet.len()];
                    match rnd() % 3 {
                        0 if at < line.len() => {
                            line.remove(at);
                        }
                        1 if at < line.len() => line[at] = c,
                        _ => line.insert(at, c),
                    }
                }
                let fast = read_head(&line);
                checked += 1;
                if std::str::from_utf8(&line).is_err() {
                    // serde_json skips ignored strings without checking their UTF-8; a line
                    // that is not UTF-8 is not JSON, and would not be valid NDJSON output.
                    assert!(fast.is_err(), "{}", String::from_utf8_lossy(&line));
                    continue;
                }
                let slow = read_head_serde(&line);
                match (&fast, &slow) {
                    (Ok(a), Ok(b)) => assert_eq!(a, b, "{}", String::from_utf8_lossy(&line)),
                    (Err(_), Err(_)) => {}
                    _ => panic!(
                        "disagree on {:?}: scanner {fast:?}, serde {slow:?}",
                        String::from_utf8_lossy(&line)
                    ),
                }
            }
        }
        assert_eq!(checked, 20_000);
    }

    #[test]
    fn deep_nesting_is_refused_not_overflowed() {
        let mut line = br#"{"resourceType":"Basic","id":"b","x":"#.to_vec();
        line.extend(std::iter::repeat_n(b'[', 100_000));
        assert!(read_head(&line).is_err());
    }

    #[test]
    fn messages_do_not_quote_patient_data() {
        let e = read_head(br#"{"resourceType":"Patient","id":"x","name":SECRETNAME}"#)
            .expect_err("invalid");
        assert!(!e.to_string().contains("SECRET"), "{e}");
    }
}
