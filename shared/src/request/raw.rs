//! Kick-off parameters as the client sent them, before validation: from a GET query string or
//! from a POST `Parameters` body, into one list of `(name, values)`.

use percent_encoding::percent_decode_str;
use serde_json::Value;

use super::KickoffError;

/// One parameter occurrence. `values` is already split where the wire format splits it
/// (`_typeFilter` in a query string); list parameters are split on commas later.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawParam {
    pub name: String,
    pub values: Vec<String>,
}

/// Why a query component cannot be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("`{0}` is not a percent-encoded byte (`%` and two hex digits)")]
    BadEscape(String),
    #[error("it is not valid UTF-8 once percent-decoded")]
    NotUtf8,
}

/// Percent-decodes a query component. `+` stays `+`: FHIR instants carry a `+` zone sign that
/// clients often leave unencoded, and FHIR servers read it literally. A `%` not followed by
/// two hex digits is an error, not a literal `%`: read literally it would match nothing
/// while the client believes it filtered on something.
pub fn decode(s: &str) -> Result<String, DecodeError> {
    let b = s.as_bytes();
    if let Some(i) = memchr::memchr_iter(b'%', b).find(|&i| {
        !(b.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
            && b.get(i + 2).is_some_and(u8::is_ascii_hexdigit))
    }) {
        let end = (i + 3).min(s.len());
        let shown = s.get(i..end).unwrap_or("%");
        return Err(DecodeError::BadEscape(shown.to_owned()));
    }
    percent_decode_str(s)
        .decode_utf8()
        .map(|c| c.into_owned())
        .map_err(|_| DecodeError::NotUtf8)
}

/// Splits a raw query string. `_typeFilter` values are split on literal commas *before*
/// decoding (IG STU2: sub-queries are URL-encoded, then joined with `,`), so an encoded `%2C`
/// stays inside its sub-query.
pub fn from_query(query: &str) -> Result<Vec<RawParam>, KickoffError> {
    let mut out = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (raw_name, raw_value) = pair.split_once('=').unwrap_or((pair, ""));
        let name = decode(raw_name).map_err(|e| KickoffError::InvalidParameter {
            name: raw_name.to_owned(),
            message: format!("the parameter's name cannot be read: {e}"),
        })?;
        let invalid = |name: &str, e: DecodeError| KickoffError::InvalidParameter {
            name: name.to_owned(),
            message: format!("the value cannot be read: {e}"),
        };
        let values = if name == "_typeFilter" {
            raw_value
                .split(',')
                .map(|v| decode(v).map_err(|e| invalid(&name, e)))
                .collect::<Result<Vec<_>, _>>()?
        } else {
            vec![decode(raw_value).map_err(|e| invalid(&name, e))?]
        };
        out.push(RawParam { name, values });
    }
    Ok(out)
}

/// Reads a FHIR `Parameters` resource. Each `parameter` needs a `name` and exactly one
/// `value[x]` of a type the kick-off accepts.
pub fn from_parameters(body: &[u8]) -> Result<Vec<RawParam>, KickoffError> {
    let invalid_body = |message: String| KickoffError::InvalidBody { message };
    let doc: Value = serde_json::from_slice(body)
        .map_err(|e| invalid_body(format!("the body is not valid JSON: {e}")))?;
    if doc.get("resourceType").and_then(Value::as_str) != Some("Parameters") {
        return Err(invalid_body(
            "the body must be a FHIR Parameters resource".into(),
        ));
    }
    let params = match doc.get("parameter") {
        None => return Ok(Vec::new()),
        Some(Value::Array(a)) => a,
        Some(_) => {
            return Err(invalid_body("Parameters.parameter must be an array".into()));
        }
    };
    let mut out = Vec::with_capacity(params.len());
    for (i, p) in params.iter().enumerate() {
        let obj = p
            .as_object()
            .ok_or_else(|| invalid_body(format!("Parameters.parameter[{i}] is not an object")))?;
        let name = obj
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid_body(format!("Parameters.parameter[{i}] has no name")))?;
        let values: Vec<(&String, &Value)> =
            obj.iter().filter(|(k, _)| k.starts_with("value")).collect();
        let [(kind, value)] = values.as_slice() else {
            return Err(KickoffError::InvalidParameter {
                name: name.to_owned(),
                message: format!(
                    "Parameters.parameter[{i}] must have exactly one value[x] (it has {})",
                    values.len()
                ),
            });
        };
        let text = match (kind.as_str(), value) {
            (
                "valueString" | "valueCode" | "valueInstant" | "valueDateTime" | "valueUri"
                | "valueUrl" | "valueCanonical" | "valueId",
                Value::String(s),
            ) => s.clone(),
            ("valueBoolean", Value::Bool(b)) => b.to_string(),
            ("valueReference", Value::Object(r)) => r
                .get("reference")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| KickoffError::InvalidParameter {
                    name: name.to_owned(),
                    message: format!("Parameters.parameter[{i}].valueReference has no reference"),
                })?,
            _ => {
                return Err(KickoffError::InvalidParameter {
                    name: name.to_owned(),
                    message: format!(
                        "Parameters.parameter[{i}].{kind} is not a supported value type for this parameter"
                    ),
                });
            }
        };
        out.push(RawParam {
            name: name.to_owned(),
            values: vec![text],
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_splits_type_filter_before_decoding() {
        let q = "_type=Patient,Observation&_typeFilter=Observation%3Fcode%3Da%252Cb,Patient%3Fgender%3Dmale&_since=2024-01-01T00:00:00+01:00";
        let p = from_query(q).expect("parse");
        assert_eq!(p[0].values, vec!["Patient,Observation"]);
        assert_eq!(
            p[1].values,
            vec!["Observation?code=a%2Cb", "Patient?gender=male"]
        );
        assert_eq!(p[2].values, vec!["2024-01-01T00:00:00+01:00"]);
    }

    #[test]
    fn parameters_body() {
        let body = br#"{"resourceType":"Parameters","parameter":[
            {"name":"_type","valueString":"Patient"},
            {"name":"patient","valueReference":{"reference":"Patient/1"}},
            {"name":"allowPartialManifests","valueBoolean":true},
            {"name":"_since","valueInstant":"2024-01-01T00:00:00Z"}]}"#;
        let p = from_parameters(body).expect("parse");
        assert_eq!(p.len(), 4);
        assert_eq!(p[1].values, vec!["Patient/1"]);
        assert_eq!(p[2].values, vec!["true"]);
    }

    #[test]
    fn bad_bodies() {
        assert!(matches!(
            from_parameters(b"{"),
            Err(KickoffError::InvalidBody { .. })
        ));
        assert!(matches!(
            from_parameters(br#"{"resourceType":"Patient"}"#),
            Err(KickoffError::InvalidBody { .. })
        ));
        assert!(matches!(
            from_parameters(br#"{"resourceType":"Parameters","parameter":[{"name":"_type"}]}"#),
            Err(KickoffError::InvalidParameter { .. })
        ));
        assert!(matches!(
            from_parameters(
                br#"{"resourceType":"Parameters","parameter":[{"name":"_type","valueInteger":3}]}"#
            ),
            Err(KickoffError::InvalidParameter { .. })
        ));
    }
}
