//! `_typeFilter`: syntax of one filter, `Type?param[:modifier]=value&...`.
//!
//! What a filter means is decided by the search evaluator; here it is only checked to be a
//! FHIR search on one resource type that uses no search *result* parameters.

use serde::{Deserialize, Serialize};

use super::raw::decode;
use crate::model::ResourceType;

/// One `param[:modifier]=value` of a filter, percent-decoded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilterParam {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modifier: Option<String>,
    pub value: String,
}

/// One `_typeFilter` query. Parameters are ANDed; several filters for one type are ORed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TypeFilter {
    pub resource_type: ResourceType,
    pub params: Vec<FilterParam>,
    /// The query as the client wrote it, for messages.
    pub raw: String,
}

/// Parameters that shape a search's result set rather than select resources. The IG forbids
/// them in `_typeFilter`.
const RESULT_PARAMETERS: &[&str] = &[
    "_include",
    "_revinclude",
    "_sort",
    "_count",
    "_elements",
    "_summary",
    "_total",
    "_contained",
    "_containedType",
    "_format",
    "_pretty",
];

/// Why a `_typeFilter` value cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TypeFilterSyntaxError {
    #[error("`{0}` is not of the form `ResourceType?search-parameters`")]
    NotAQuery(String),
    #[error("`{0}` in `{1}` is not a FHIR R4 resource type")]
    UnknownType(String, String),
    #[error("`{0}` has no search parameters")]
    Empty(String),
    #[error("`{param}` in `{query}` is not a valid search parameter")]
    BadParameter { param: String, query: String },
    #[error("`{param}` in `{query}` cannot be read: {reason}")]
    BadEncoding {
        param: String,
        query: String,
        reason: super::raw::DecodeError,
    },
    #[error(
        "`{param}` is a search result parameter and is not allowed in `_typeFilter` (`{query}`)"
    )]
    ResultParameter { param: String, query: String },
}

impl TypeFilter {
    pub fn parse(value: &str) -> Result<TypeFilter, TypeFilterSyntaxError> {
        let (ty, query) = value
            .split_once('?')
            .ok_or_else(|| TypeFilterSyntaxError::NotAQuery(value.to_owned()))?;
        let resource_type = ResourceType::parse(ty)
            .map_err(|_| TypeFilterSyntaxError::UnknownType(ty.to_owned(), value.to_owned()))?;
        let mut params = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let bad = || TypeFilterSyntaxError::BadParameter {
                param: pair.to_owned(),
                query: value.to_owned(),
            };
            let (raw_name, raw_value) = pair.split_once('=').ok_or_else(bad)?;
            let unreadable = |reason| TypeFilterSyntaxError::BadEncoding {
                param: pair.to_owned(),
                query: value.to_owned(),
                reason,
            };
            let full = decode(raw_name).map_err(unreadable)?;
            let val = decode(raw_value).map_err(unreadable)?;
            let (name, modifier) = match full.split_once(':') {
                Some((n, m)) => (n.to_owned(), Some(m.to_owned())),
                None => (full.clone(), None),
            };
            let name_ok = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
            if !name_ok || modifier.as_deref() == Some("") || val.is_empty() {
                return Err(bad());
            }
            if RESULT_PARAMETERS.contains(&name.as_str()) {
                return Err(TypeFilterSyntaxError::ResultParameter {
                    param: name,
                    query: value.to_owned(),
                });
            }
            params.push(FilterParam {
                name,
                modifier,
                value: val,
            });
        }
        if params.is_empty() {
            return Err(TypeFilterSyntaxError::Empty(value.to_owned()));
        }
        Ok(TypeFilter {
            resource_type,
            params,
            raw: value.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_filter() {
        let f =
            TypeFilter::parse("Observation?code:not=http://loinc.org%7C1234&status=final,amended")
                .expect("parse");
        assert_eq!(f.resource_type.as_str(), "Observation");
        assert_eq!(f.params.len(), 2);
        assert_eq!(f.params[0].name, "code");
        assert_eq!(f.params[0].modifier.as_deref(), Some("not"));
        assert_eq!(f.params[0].value, "http://loinc.org|1234");
        assert_eq!(f.params[1].value, "final,amended");
    }

    #[test]
    fn rejects_bad_filters() {
        use TypeFilterSyntaxError as E;
        assert!(matches!(
            TypeFilter::parse("Observation"),
            Err(E::NotAQuery(_))
        ));
        assert!(matches!(
            TypeFilter::parse("Obs?code=1"),
            Err(E::UnknownType(..))
        ));
        assert!(matches!(
            TypeFilter::parse("Observation?"),
            Err(E::Empty(_))
        ));
        assert!(matches!(
            TypeFilter::parse("Observation?code"),
            Err(E::BadParameter { .. })
        ));
        assert!(matches!(
            TypeFilter::parse("Observation?code="),
            Err(E::BadParameter { .. })
        ));
        assert!(matches!(
            TypeFilter::parse("Observation?_include=Observation:subject"),
            Err(E::ResultParameter { .. })
        ));
    }
}
