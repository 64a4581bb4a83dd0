//! The head of one NDJSON line: validated JSON, and the three fields the export needs from
//! every resource (`resourceType`, `id`, `meta.lastUpdated`) without building a tree.

use std::borrow::Cow;

use serde::Deserialize;

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

/// serde_json's message without any quoted input: "line 1 column 17" plus the category.
fn position_only(e: &serde_json::Error) -> String {
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

    #[test]
    fn messages_do_not_quote_patient_data() {
        let e = read_head(br#"{"resourceType":"Patient","id":"x","name":SECRETNAME}"#)
            .expect_err("invalid");
        assert!(!e.to_string().contains("SECRET"), "{e}");
    }
}
