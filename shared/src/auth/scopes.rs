//! SMART scopes, reduced to what a bulk export needs: which resource types the caller may
//! read. Only system-level read scopes grant anything here (`system/*.read`,
//! `system/Observation.read`, SMART v2 `system/*.rs`, `system/Observation.r`,
//! `system/*.cruds`); `patient/` and `user/` scopes, write-only scopes and v2 granular scopes
//! (`system/Observation.rs?category=...`, which permit only part of a type) grant no type.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::model::ResourceType;

/// The resource types a caller may read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Grant {
    /// Every type (`system/*.read`, or a deployment without authentication).
    All,
    /// These types only (possibly none).
    Types(BTreeSet<ResourceType>),
}

impl Grant {
    /// The grant of a space-separated `scope` claim.
    pub fn from_scopes(scope: &str) -> Grant {
        let mut types = BTreeSet::new();
        for s in scope.split_ascii_whitespace() {
            match read_scope(s) {
                Some(Target::All) => return Grant::All,
                Some(Target::Type(t)) => {
                    types.insert(t);
                }
                None => {}
            }
        }
        Grant::Types(types)
    }

    pub fn none() -> Grant {
        Grant::Types(BTreeSet::new())
    }

    pub fn permits(&self, t: ResourceType) -> bool {
        match self {
            Grant::All => true,
            Grant::Types(ts) => ts.contains(&t),
        }
    }

    pub fn is_empty(&self) -> bool {
        matches!(self, Grant::Types(ts) if ts.is_empty())
    }

    /// Whether everything `other` permits, this permits too.
    pub fn covers(&self, other: &Grant) -> bool {
        match (self, other) {
            (Grant::All, _) => true,
            (Grant::Types(_), Grant::All) => false,
            (Grant::Types(mine), Grant::Types(theirs)) => theirs.is_subset(mine),
        }
    }

    /// The permitted types, `None` for all.
    pub fn types(&self) -> Option<&BTreeSet<ResourceType>> {
        match self {
            Grant::All => None,
            Grant::Types(ts) => Some(ts),
        }
    }

    /// For messages: `all types`, or the list.
    pub fn describe(&self) -> String {
        match self {
            Grant::All => "all types".into(),
            Grant::Types(ts) if ts.is_empty() => "no type".into(),
            Grant::Types(ts) => ts.iter().map(|t| t.as_str()).collect::<Vec<_>>().join(", "),
        }
    }
}

enum Target {
    All,
    Type(ResourceType),
}

/// What one scope lets a system client read, if anything.
fn read_scope(scope: &str) -> Option<Target> {
    let rest = scope.strip_prefix("system/")?;
    let (resource, perms) = rest.split_once('.')?;
    let reads = match perms {
        // SMART v1.
        "read" | "*" => true,
        // SMART v2: a subset of `cruds` in that order; a `?` query narrows it (granular).
        p if !p.is_empty() && is_v2_permissions(p) => p.contains('r'),
        _ => false,
    };
    if !reads {
        return None;
    }
    match resource {
        "*" => Some(Target::All),
        name => ResourceType::parse(name).ok().map(Target::Type),
    }
}

fn is_v2_permissions(p: &str) -> bool {
    let mut order = "cruds".chars();
    p.chars().all(|c| order.any(|o| o == c))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn types(names: &[&str]) -> Grant {
        Grant::Types(
            names
                .iter()
                .map(|n| ResourceType::parse(n).expect("type"))
                .collect(),
        )
    }

    #[test]
    fn v1_and_v2_read_scopes() {
        assert_eq!(Grant::from_scopes("system/*.read"), Grant::All);
        assert_eq!(Grant::from_scopes("system/*.rs"), Grant::All);
        assert_eq!(Grant::from_scopes("system/*.cruds"), Grant::All);
        assert_eq!(Grant::from_scopes("system/*.*"), Grant::All);
        assert_eq!(
            Grant::from_scopes("system/Observation.rs system/Patient.read"),
            types(&["Observation", "Patient"])
        );
        assert_eq!(
            Grant::from_scopes("system/Encounter.r launch"),
            types(&["Encounter"])
        );
    }

    #[test]
    fn scopes_that_grant_no_read() {
        for s in [
            "",
            "system/*.write",
            "system/*.cud",
            "system/*.sr", // not in cruds order
            "patient/*.read",
            "user/*.rs",
            "system/Observation.rs?category=laboratory",
            "system/NotAType.rs",
            "system/*",
            "openid fhirUser",
        ] {
            assert!(Grant::from_scopes(s).is_empty(), "{s:?}");
        }
    }

    #[test]
    fn covering() {
        assert!(Grant::All.covers(&types(&["Patient"])));
        assert!(!types(&["Patient"]).covers(&Grant::All));
        assert!(types(&["Patient", "Observation"]).covers(&types(&["Patient"])));
        assert!(!types(&["Patient"]).covers(&types(&["Patient", "Observation"])));
    }
}
