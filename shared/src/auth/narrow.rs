//! Scopes narrow an export. A type the caller may not read is refused (strict handling, 403)
//! or dropped with a warning in the manifest's `error` files (lenient); with no `_type` the
//! export covers exactly the permitted types. What was permitted is stored on the job
//! (`ExportRequest::scope`) and asked of the caller's scopes again at status, cancel and
//! file time.

use std::collections::BTreeSet;

use super::Grant;
use crate::compartment::in_patient_compartment;
use crate::model::ResourceType;
use crate::outcome::{Issue, IssueCode};
use crate::request::{ExportRequest, Handling};

fn names<'a>(ts: impl IntoIterator<Item = &'a ResourceType>) -> String {
    ts.into_iter()
        .map(|t| t.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Narrows `req` to what `grant` permits; `Err` is the text of a 403.
pub fn narrow_to_grant(req: &mut ExportRequest, grant: &Grant) -> Result<(), String> {
    let Some(permitted) = grant.types() else {
        return Ok(());
    };
    if permitted.is_empty() {
        return Err("the access token's scopes permit reading no resource type: a bulk export needs system/*.read, system/*.rs or system/<Type>.rs scopes".into());
    }
    let strict = req.handling == Handling::Strict;
    let refuse = |what: String| -> String {
        format!(
            "the access token's scopes do not permit {what} (permitted: {})",
            grant.describe()
        )
    };
    if let Some(types) = &mut req.types {
        let denied: Vec<ResourceType> = types
            .iter()
            .copied()
            .filter(|t| !permitted.contains(t))
            .collect();
        if !denied.is_empty() {
            if strict {
                return Err(refuse(format!("_type {}", names(&denied))));
            }
            types.retain(|t| permitted.contains(t));
            req.ignored.push(
                Issue::warning(
                    IssueCode::Forbidden,
                    format!(
                        "not exported: the access token's scopes do not permit {}",
                        names(&denied)
                    ),
                )
                .at("_type"),
            );
            if types.is_empty() {
                return Err(refuse(format!("any type asked for ({})", names(&denied))));
            }
        }
    }
    let denied_filters: Vec<String> = req
        .type_filters
        .iter()
        .filter(|f| !permitted.contains(&f.resource_type))
        .map(|f| f.raw.clone())
        .collect();
    if !denied_filters.is_empty() {
        if strict {
            return Err(refuse(format!("_typeFilter {}", denied_filters.join(", "))));
        }
        req.type_filters
            .retain(|f| permitted.contains(&f.resource_type));
        req.ignored.push(
            Issue::warning(
                IssueCode::Forbidden,
                format!(
                    "ignored: the access token's scopes do not permit the types of {}",
                    denied_filters.join(", ")
                ),
            )
            .at("_typeFilter"),
        );
    }
    if !req.include_associated.is_empty() && !permitted.contains(&ResourceType::PROVENANCE) {
        if strict {
            return Err(refuse(
                "Provenance, which includeAssociatedData asks for".into(),
            ));
        }
        req.include_associated.clear();
        req.ignored.push(
            Issue::warning(
                IssueCode::Forbidden,
                "ignored: the access token's scopes do not permit Provenance",
            )
            .at("includeAssociatedData"),
        );
    }
    if req.is_patient_level()
        && req.types.is_none()
        && !permitted.iter().any(|t| in_patient_compartment(*t))
    {
        return Err(refuse("any type of the Patient compartment".into()));
    }
    req.scope = Some(permitted.clone());
    Ok(())
}

/// What a caller must be permitted to see an export: the types it may hold.
pub fn needed_grant(req: &ExportRequest) -> Grant {
    let mut needed: Option<BTreeSet<ResourceType>> = req.scope.clone();
    if let Some(types) = &req.types {
        let mut asked: BTreeSet<ResourceType> = types.iter().copied().collect();
        if !req.include_associated.is_empty() {
            asked.insert(ResourceType::PROVENANCE);
        }
        needed = Some(match needed {
            Some(scope) => asked.intersection(&scope).copied().collect(),
            None => asked,
        });
    }
    match needed {
        Some(ts) => Grant::Types(ts),
        None => Grant::All,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::{ExportLevel, TypeFilter};

    fn request(types: Option<&[&str]>, handling: Handling) -> ExportRequest {
        let mut r =
            crate::testkit::sample_job(crate::job::JobState::Accepted, chrono::Utc::now()).request;
        r.types = types.map(|ts| {
            ts.iter()
                .map(|t| ResourceType::parse(t).expect("type"))
                .collect()
        });
        r.handling = handling;
        r
    }

    fn grant(scope: &str) -> Grant {
        Grant::from_scopes(scope)
    }

    #[test]
    fn strict_refuses_lenient_drops() {
        let g = grant("system/Patient.rs system/Observation.read");
        let mut r = request(Some(&["Patient", "Condition"]), Handling::Strict);
        let e = narrow_to_grant(&mut r, &g).expect_err("403");
        assert!(
            e.contains("Condition") && !e.contains("_type Patient"),
            "{e}"
        );

        let mut r = request(Some(&["Patient", "Condition"]), Handling::Lenient);
        narrow_to_grant(&mut r, &g).expect("narrowed");
        assert_eq!(r.types, Some(vec![ResourceType::PATIENT]));
        assert_eq!(r.ignored.len(), 1);
        assert!(r.ignored[0].diagnostics.contains("Condition"));
        assert_eq!(needed_grant(&r), grant("system/Patient.rs"));

        let mut r = request(Some(&["Condition"]), Handling::Lenient);
        assert!(narrow_to_grant(&mut r, &g).is_err(), "nothing left");
    }

    #[test]
    fn no_type_means_the_permitted_types() {
        let g = grant("system/Patient.rs system/Observation.rs");
        let mut r = request(None, Handling::Strict);
        narrow_to_grant(&mut r, &g).expect("ok");
        assert_eq!(needed_grant(&r), g);
        let mut r = request(None, Handling::Strict);
        narrow_to_grant(&mut r, &Grant::All).expect("ok");
        assert_eq!(r.scope, None);
        assert_eq!(needed_grant(&r), Grant::All);
        let mut r = request(None, Handling::Strict);
        assert!(narrow_to_grant(&mut r, &grant("system/*.write")).is_err());
        let mut r = request(None, Handling::Strict);
        r.level = ExportLevel::Patient;
        assert!(
            narrow_to_grant(&mut r, &grant("system/Organization.rs")).is_err(),
            "nothing of the compartment"
        );
    }

    #[test]
    fn filters_and_provenance() {
        let g = grant("system/Patient.rs");
        let mut r = request(None, Handling::Lenient);
        r.type_filters = vec![
            TypeFilter::parse("Observation?status=final").expect("filter"),
            TypeFilter::parse("Patient?gender=female").expect("filter"),
        ];
        r.include_associated = vec![crate::request::AssociatedData::LatestProvenanceResources];
        narrow_to_grant(&mut r, &g).expect("ok");
        assert_eq!(r.type_filters.len(), 1);
        assert!(r.include_associated.is_empty());
        assert_eq!(r.ignored.len(), 2);
        let mut r = request(None, Handling::Strict);
        r.type_filters = vec![TypeFilter::parse("Observation?status=final").expect("filter")];
        assert!(narrow_to_grant(&mut r, &g).is_err());
    }
}
