//! `_elements`: keep only the listed root elements of a resource, plus the mandatory ones
//! (cardinality 1..), `resourceType`, `id` and `meta`, and tag the result `SUBSETTED`.

use std::collections::HashMap;

#[cfg(test)]
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

/// Element names are few: a linear scan of a short list beats hashing each key.
#[derive(Debug, Clone, Default)]
pub struct ElementsFilter {
    global: Vec<String>,
    by_type: HashMap<ResourceType, Vec<String>>,
}

impl ElementsFilter {
    /// `None` when there is nothing to subset.
    pub fn new(selectors: &[ElementSelector]) -> Option<Self> {
        if selectors.is_empty() {
            return None;
        }
        let mut f = ElementsFilter::default();
        for s in selectors {
            let list = match s.resource_type {
                Some(t) => f.by_type.entry(t).or_default(),
                None => &mut f.global,
            };
            if !list.contains(&s.element) {
                list.push(s.element.clone());
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
            || self.global.iter().any(|e| e == element.name)
            || self
                .by_type
                .get(&t)
                .is_some_and(|s| s.iter().any(|e| e == element.name))
    }

    /// The subset of one type, with the decision for every JSON key the type can have worked
    /// out once, so that subsetting a line is a binary search per member.
    pub fn for_type(&self, t: ResourceType) -> Option<TypeSubset> {
        if !self.applies_to(t) {
            return None;
        }
        let mut keys: Vec<(Box<[u8]>, bool)> = Vec::new();
        for el in root_elements(t.as_str()) {
            let mut names = Vec::new();
            if el.is_choice() {
                for ty in el.types {
                    let mut cap = ty.chars();
                    let suffix: String = cap
                        .next()
                        .map(|c| c.to_ascii_uppercase().to_string() + cap.as_str())
                        .unwrap_or_default();
                    names.push(format!("{}{suffix}", el.name));
                }
            } else {
                names.push(el.name.to_owned());
            }
            for n in names {
                for key in [n.clone(), format!("_{n}")] {
                    if element_for_json_key(t.as_str(), &key).is_some() {
                        let keep = self.keeps(t, &key);
                        keys.push((key.into_bytes().into_boxed_slice(), keep));
                    }
                }
            }
        }
        keys.sort();
        keys.dedup_by(|a, b| a.0 == b.0);
        Some(TypeSubset { keys })
    }

    /// Subsets one line of type `t` (see [`TypeSubset::apply`]).
    pub fn apply_raw(&self, t: ResourceType, line: &[u8]) -> Result<Vec<u8>, SubsetError> {
        match self.for_type(t) {
            Some(subset) => subset.apply(line),
            None => Ok(line.to_vec()),
        }
    }
}

/// [`ElementsFilter`] for one resource type.
#[derive(Debug, Clone)]
pub struct TypeSubset {
    /// Every JSON key of the type, sorted, with whether it is kept.
    keys: Vec<(Box<[u8]>, bool)>,
}

impl TypeSubset {
    fn keeps(&self, key: &[u8]) -> bool {
        matches!(key, b"resourceType" | b"id")
            || self
                .keys
                .binary_search_by(|(k, _)| k.as_ref().cmp(key))
                .is_ok_and(|i| self.keys[i].1)
    }

    /// The `_elements` subset of a resource line, built from the line's top-level members
    /// without parsing them into a tree: a member is copied as it is or left out, and only
    /// `meta` is rewritten (spliced) to carry the `SUBSETTED` tag.
    pub fn apply(&self, line: &[u8]) -> Result<Vec<u8>, SubsetError> {
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
            if key == b"meta" {
                push(&mut out, key, &tagged_meta(&line[v.clone()])?);
                wrote_meta = true;
            } else if self.keeps(key) {
                push(&mut out, key, &line[v.clone()]);
            }
            if key == b"id"
                && !wrote_meta
                && !members.iter().any(|(k, _)| &line[k.clone()] == b"meta")
            {
                push(&mut out, b"meta", &tagged_meta(b"{}")?);
                wrote_meta = true;
            }
        }
        if !wrote_meta {
            push(&mut out, b"meta", &tagged_meta(b"{}")?);
        }
        out.push(b'}');
        Ok(out)
    }
}

/// A line that cannot be subset (it is not a JSON object with an object `meta`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot subset the resource: {0}")]
pub struct SubsetError(&'static str);

const SUBSETTED_TAG: &[u8] = br#"{"system":"http://terminology.hl7.org/CodeSystem/v3-ObservationValue","code":"SUBSETTED","display":"Resource encoded in summary mode"}"#;

/// `meta` (raw JSON) with the `SUBSETTED` tag added once, spliced into the bytes rather
/// than parsed and written again.
fn tagged_meta(meta: &[u8]) -> Result<Vec<u8>, SubsetError> {
    let cap = scan_members(meta).map_err(|e| SubsetError(e.what))?;
    if !cap.is_object {
        return Err(SubsetError("meta is not an object"));
    }
    let members = cap.members.unwrap_or_default();
    let close = meta
        .iter()
        .rposition(|&c| c == b'}')
        .ok_or(SubsetError("meta is not an object"))?;
    let mut out = Vec::with_capacity(meta.len() + SUBSETTED_TAG.len() + 16);
    match members.iter().find(|(k, _)| &meta[k.clone()] == b"tag") {
        Some((_, v)) => {
            let tags = &meta[v.clone()];
            if tags.first() != Some(&b'[') {
                return Err(SubsetError("meta.tag is not an array"));
            }
            if memchr::memmem::find(tags, b"\"SUBSETTED\"").is_some()
                && memchr::memmem::find(tags, SUBSETTED_SYSTEM.as_bytes()).is_some()
            {
                return Ok(meta.to_vec());
            }
            let end = v.start
                + tags
                    .iter()
                    .rposition(|&c| c == b']')
                    .ok_or(SubsetError("meta.tag is not an array"))?;
            let empty = tags[1..tags.len() - 1].iter().all(u8::is_ascii_whitespace);
            out.extend_from_slice(&meta[..end]);
            if !empty {
                out.push(b',');
            }
            out.extend_from_slice(SUBSETTED_TAG);
            out.extend_from_slice(&meta[end..]);
        }
        None => {
            out.extend_from_slice(&meta[..close]);
            if !members.is_empty() {
                out.push(b',');
            }
            out.extend_from_slice(b"\"tag\":[");
            out.extend_from_slice(SUBSETTED_TAG);
            out.push(b']');
            out.extend_from_slice(&meta[close..]);
        }
    }
    Ok(out)
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
    fn subsetted_tag_is_added_once_whatever_meta_holds() {
        let f = ElementsFilter::new(&[sel("Patient.birthDate")]).expect("filter");
        for (meta, tags) in [
            (r#"{}"#, 1),
            (r#"{"lastUpdated":"2024-01-01T00:00:00Z"}"#, 1),
            (r#"{"tag":[]}"#, 1),
            (r#"{"tag":[{"code":"x"}],"versionId":"2"}"#, 2),
            (
                r#"{"tag":[{"system":"http://terminology.hl7.org/CodeSystem/v3-ObservationValue","code":"SUBSETTED"}]}"#,
                1,
            ),
        ] {
            let line = format!(
                r#"{{"resourceType":"Patient","id":"p","meta":{meta},"birthDate":"2000"}}"#
            );
            let out: Value = serde_json::from_slice(
                &f.apply_raw(ResourceType::PATIENT, line.as_bytes())
                    .expect("subset"),
            )
            .expect("valid JSON");
            let t = out["meta"]["tag"].as_array().expect("tags");
            assert_eq!(t.len(), tags, "{meta}");
            assert_eq!(
                t.iter().filter(|t| t["code"] == "SUBSETTED").count(),
                1,
                "{meta}"
            );
        }
        assert!(
            f.apply_raw(
                ResourceType::PATIENT,
                br#"{"resourceType":"Patient","id":"p","meta":[]}"#
            )
            .is_err()
        );
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
