//! `_elements`: keep only the listed root elements of a resource, plus the mandatory ones
//! (cardinality 1..), `resourceType`, `id` and `meta`, and tag the result `SUBSETTED`.

use std::collections::{HashMap, HashSet};

use serde_json::{Value, json};

use crate::fhir_defs::{element_for_json_key, root_elements};
use crate::model::ResourceType;
use crate::ndjson::scan::scan_members;
use crate::request::ElementSelector;

pub const SUBSETTED_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/v3-ObservationValue";

/// Why a selector cannot be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ElementError {
    #[error("`{element}` is not an element of {resource_type}")]
    NotAnElement {
        resource_type: ResourceType,
        element: String,
    },
    #[error("`{0}` is not an element of any exported type")]
    NotAnElementOfAny(String),
}

/// Checks selectors against the types they apply to: `Type.element` against `Type`, a bare
/// `element` against the exported types (`types`, or every R4 type when `_type` is absent).
pub fn check(
    selector: &ElementSelector,
    types: Option<&[ResourceType]>,
) -> Result<(), ElementError> {
    let has = |t: ResourceType| {
        root_elements(t.as_str())
            .iter()
            .any(|e| e.name == selector.element)
    };
    match selector.resource_type {
        Some(t) if has(t) => Ok(()),
        Some(t) => Err(ElementError::NotAnElement {
            resource_type: t,
            element: selector.element.clone(),
        }),
        None => {
            let found = match types {
                Some(ts) => ts.iter().any(|t| has(*t)),
                None => ResourceType::all().any(has),
            };
            if found {
                Ok(())
            } else {
                Err(ElementError::NotAnElementOfAny(selector.element.clone()))
            }
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct ElementsFilter {
    global: HashSet<String>,
    by_type: HashMap<ResourceType, HashSet<String>>,
}

impl ElementsFilter {
    /// `None` when there is nothing to subset.
    pub fn new(selectors: &[ElementSelector]) -> Option<Self> {
        if selectors.is_empty() {
            return None;
        }
        let mut f = ElementsFilter::default();
        for s in selectors {
            match s.resource_type {
                Some(t) => {
                    f.by_type.entry(t).or_default().insert(s.element.clone());
                }
                None => {
                    f.global.insert(s.element.clone());
                }
            }
        }
        Some(f)
    }

    /// Types named by no selector are left whole, unless some selector names no type.
    pub fn applies_to(&self, t: ResourceType) -> bool {
        !self.global.is_empty() || self.by_type.contains_key(&t)
    }

    fn keeps(&self, t: ResourceType, key: &str) -> bool {
        if matches!(key, "resourceType" | "id" | "meta") {
            return true;
        }
        let Some((element, _)) = element_for_json_key(t.as_str(), key) else {
            return false;
        };
        element.min > 0
            || self.global.contains(element.name)
            || self
                .by_type
                .get(&t)
                .is_some_and(|s| s.contains(element.name))
    }

    /// The `_elements` subset of a resource line (of type `t`), built from the line's
    /// top-level members without parsing them into a tree: a member is copied as it is or
    /// left out, and only `meta` (small) is rewritten to carry the `SUBSETTED` tag.
    pub fn apply_raw(&self, t: ResourceType, line: &[u8]) -> Result<Vec<u8>, SubsetError> {
        let cap = scan_members(line).map_err(|e| SubsetError(e.what))?;
        let members = cap.members.unwrap_or_default();
        let mut out = Vec::with_capacity(line.len() / 2);
        out.push(b'{');
        let mut first = true;
        let mut wrote_meta = false;
        let mut push = |out: &mut Vec<u8>, key: &[u8], value: &[u8]| {
            if !std::mem::take(&mut first) {
                out.push(b',');
            }
            out.push(b'"');
            out.extend_from_slice(key);
            out.extend_from_slice(b"\":");
            out.extend_from_slice(value);
        };
        for (k, v) in &members {
            let key = &line[k.clone()];
            let Ok(name) = std::str::from_utf8(key) else {
                continue;
            };
            if name == "meta" {
                let meta: Value = serde_json::from_slice(&line[v.clone()])
                    .map_err(|_| SubsetError("meta is not JSON"))?;
                push(&mut out, key, &tagged_meta(meta)?);
                wrote_meta = true;
            } else if self.keeps(t, name) {
                push(&mut out, key, &line[v.clone()]);
            }
            if name == "id"
                && !wrote_meta
                && !members.iter().any(|(k, _)| &line[k.clone()] == b"meta")
            {
                push(
                    &mut out,
                    b"meta",
                    &tagged_meta(Value::Object(Default::default()))?,
                );
                wrote_meta = true;
            }
        }
        if !wrote_meta {
            push(
                &mut out,
                b"meta",
                &tagged_meta(Value::Object(Default::default()))?,
            );
        }
        out.push(b'}');
        Ok(out)
    }
}

/// A line that cannot be subset (it is not a JSON object with an object `meta`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot subset the resource: {0}")]
pub struct SubsetError(&'static str);

/// `meta` with the `SUBSETTED` tag added (once).
fn tagged_meta(mut meta: Value) -> Result<Vec<u8>, SubsetError> {
    let Value::Object(m) = &mut meta else {
        return Err(SubsetError("meta is not an object"));
    };
    let tags = m.entry("tag").or_insert_with(|| Value::Array(Vec::new()));
    let Value::Array(tags) = tags else {
        return Err(SubsetError("meta.tag is not an array"));
    };
    let present = tags.iter().any(|t| {
        t.get("system").and_then(Value::as_str) == Some(SUBSETTED_SYSTEM)
            && t.get("code").and_then(Value::as_str) == Some("SUBSETTED")
    });
    if !present {
        tags.push(json!({
            "system": SUBSETTED_SYSTEM,
            "code": "SUBSETTED",
            "display": "Resource encoded in summary mode",
        }));
    }
    serde_json::to_vec(&meta).map_err(|_| SubsetError("meta cannot be written"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sel(s: &str) -> ElementSelector {
        ElementSelector::parse(s).expect("selector")
    }

    #[test]
    fn keeps_listed_and_mandatory_elements() {
        let f = ElementsFilter::new(&[sel("Observation.subject"), sel("Patient.birthDate")])
            .expect("filter");
        let obs_t = ResourceType::parse("Observation").expect("t");
        let obs = json!({"resourceType":"Observation","id":"o","meta":{"lastUpdated":"2024-01-01T00:00:00Z"},
            "status":"final","code":{"text":"x"},"subject":{"reference":"Patient/p"},
            "valueQuantity":{"value":1},"note":[{"text":"n"}],"_status":{"extension":[]}});
        let obs: Value = serde_json::from_slice(
            &f.apply_raw(obs_t, obs.to_string().as_bytes())
                .expect("subset"),
        )
        .expect("json");
        let keys: Vec<&String> = obs.as_object().expect("object").keys().collect();
        assert_eq!(
            keys,
            vec![
                "resourceType",
                "id",
                "meta",
                "status",
                "code",
                "subject",
                "_status"
            ]
        );
        assert_eq!(obs["meta"]["lastUpdated"], "2024-01-01T00:00:00Z");
        assert_eq!(obs["meta"]["tag"][0]["code"], "SUBSETTED");
        assert!(!f.applies_to(ResourceType::parse("Condition").expect("t")));
        let p = json!({"resourceType":"Patient","id":"p","birthDate":"2000-01-01","name":[{"family":"X"}]});
        let p: Value = serde_json::from_slice(
            &f.apply_raw(ResourceType::PATIENT, p.to_string().as_bytes())
                .expect("subset"),
        )
        .expect("json");
        let keys: Vec<&String> = p.as_object().expect("object").keys().collect();
        assert_eq!(
            keys,
            vec!["resourceType", "id", "meta", "birthDate"],
            "meta added after id"
        );
        assert_eq!(p["meta"]["tag"][0]["code"], "SUBSETTED");
        assert!(p.get("name").is_none());
        assert_eq!(p["birthDate"], "2000-01-01");
    }

    #[test]
    fn choice_elements_by_base_name() {
        let f = ElementsFilter::new(&[sel("value")]).expect("filter");
        let t = ResourceType::parse("Observation").expect("t");
        let obs = json!({"resourceType":"Observation","id":"o","status":"final","code":{},
            "valueQuantity":{"value":1},"effectiveDateTime":"2020"});
        let obs: Value =
            serde_json::from_slice(&f.apply_raw(t, obs.to_string().as_bytes()).expect("subset"))
                .expect("json");
        assert!(obs.get("valueQuantity").is_some());
        assert!(obs.get("effectiveDateTime").is_none());
        assert!(
            f.applies_to(ResourceType::PATIENT),
            "a bare element applies to every type"
        );
    }

    #[test]
    fn checks_names_against_types() {
        let obs = ResourceType::parse("Observation").expect("t");
        assert!(check(&sel("Observation.status"), None).is_ok());
        assert!(matches!(
            check(&sel("Observation.birthDate"), None),
            Err(ElementError::NotAnElement { .. })
        ));
        assert!(check(&sel("birthDate"), Some(&[ResourceType::PATIENT, obs])).is_ok());
        assert!(matches!(
            check(&sel("birthDate"), Some(&[obs])),
            Err(ElementError::NotAnElementOfAny(_))
        ));
        assert!(matches!(
            check(&sel("nonsense"), None),
            Err(ElementError::NotAnElementOfAny(_))
        ));
    }
}
