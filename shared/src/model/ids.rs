//! Identifiers: export job ids, FHIR logical ids and references.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::resource_type::ResourceType;

/// The id of an export job. Random (UUID v4): the status URL is handed to the client and must
/// not be guessable from another job's.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct JobId(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not an export job id")]
pub struct InvalidJobId(pub String);

impl JobId {
    pub fn new() -> Self {
        JobId(uuid::Uuid::new_v4().simple().to_string())
    }

    pub fn parse(s: &str) -> Result<Self, InvalidJobId> {
        let ok = s.len() == 32 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if ok {
            Ok(JobId(s.to_owned()))
        } else {
            Err(InvalidJobId(s.to_owned()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for JobId {
    fn default() -> Self {
        Self::new()
    }
}

impl TryFrom<String> for JobId {
    type Error = InvalidJobId;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        JobId::parse(&s)
    }
}

impl From<JobId> for String {
    fn from(id: JobId) -> String {
        id.0
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "JobId({})", self.0)
    }
}

/// A FHIR logical id: `[A-Za-z0-9\-\.]{1,64}`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct LogicalId(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a FHIR logical id ([A-Za-z0-9-.], 1 to 64 characters)")]
pub struct InvalidLogicalId(pub String);

impl LogicalId {
    pub fn parse(s: &str) -> Result<Self, InvalidLogicalId> {
        if is_logical_id(s) {
            Ok(LogicalId(s.to_owned()))
        } else {
            Err(InvalidLogicalId(s.to_owned()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

pub fn is_logical_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

impl TryFrom<String> for LogicalId {
    type Error = InvalidLogicalId;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        LogicalId::parse(&s)
    }
}

impl From<LogicalId> for String {
    fn from(id: LogicalId) -> String {
        id.0
    }
}

impl fmt::Display for LogicalId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for LogicalId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

/// A literal reference to a resource, `Type/id`, as found in `Reference.reference`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ResourceRef {
    pub resource_type: ResourceType,
    pub id: LogicalId,
}

impl ResourceRef {
    /// Parses `Type/id`, `Type/id/_history/v` or an absolute URL ending in one of those.
    /// Contained (`#x`), logical (`urn:`) and malformed references give `None`.
    pub fn parse(reference: &str) -> Option<ResourceRef> {
        let (ty, id) = split_reference(reference)?;
        Some(ResourceRef {
            resource_type: ResourceType::parse(ty).ok()?,
            id: LogicalId::parse(id).ok()?,
        })
    }
}

/// The `(type, id)` of a literal reference without allocating or validating the type.
pub fn split_reference(reference: &str) -> Option<(&str, &str)> {
    if reference.starts_with('#') || reference.starts_with("urn:") {
        return None;
    }
    let reference = reference.split(['?', '#']).next().unwrap_or(reference);
    let mut parts: Vec<&str> = reference.rsplitn(5, '/').collect();
    parts.reverse();
    // parts ends with [..., Type, id] or [..., Type, id, "_history", version]
    let n = parts.len();
    let (ty, id) = if n >= 4 && parts[n - 2] == "_history" {
        (parts[n - 4], parts[n - 3])
    } else if n >= 2 {
        (parts[n - 2], parts[n - 1])
    } else {
        return None;
    };
    if ty.is_empty() || !ty.as_bytes()[0].is_ascii_uppercase() || !is_logical_id(id) {
        return None;
    }
    Some((ty, id))
}

impl fmt::Display for ResourceRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.resource_type, self.id)
    }
}

impl fmt::Debug for ResourceRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.resource_type, self.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_ids_are_random_and_validated() {
        let a = JobId::new();
        let b = JobId::new();
        assert_ne!(a, b);
        assert_eq!(JobId::parse(a.as_str()), Ok(a.clone()));
        assert!(JobId::parse("../etc/passwd").is_err());
        assert!(JobId::parse("").is_err());
    }

    #[test]
    fn logical_ids() {
        assert!(LogicalId::parse("abc-123.x").is_ok());
        assert!(LogicalId::parse("").is_err());
        assert!(LogicalId::parse("a/b").is_err());
        assert!(LogicalId::parse(&"x".repeat(65)).is_err());
    }

    #[test]
    fn references() {
        let r = ResourceRef::parse("Patient/123").expect("relative");
        assert_eq!(r.to_string(), "Patient/123");
        let r = ResourceRef::parse("https://ex.org/fhir/Patient/9/_history/2").expect("abs");
        assert_eq!(r.to_string(), "Patient/9");
        assert!(ResourceRef::parse("#contained").is_none());
        assert!(ResourceRef::parse("urn:uuid:1234").is_none());
        assert!(ResourceRef::parse("Patient").is_none());
        assert!(ResourceRef::parse("Nope/1").is_none());
        assert_eq!(split_reference("Patient/a"), Some(("Patient", "a")));
    }
}
