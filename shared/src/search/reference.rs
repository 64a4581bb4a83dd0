//! Reference search (R4 search §reference).
//!
//! A search value is `id`, `Type/id` (optionally `/_history/v`, which is ignored), or an
//! absolute URL. It is compared with `Reference.reference` by type and id: `Type/id` matches
//! `Type/id` whatever base either side is written against (the server's own base is not known
//! here, so `http://any/fhir/Patient/1` and `Patient/1` match each other), and a bare `id`
//! matches a reference to any type with that id, or only to the type of the `:Type` modifier or
//! of the parameter's `resolve() is Type` restriction. Contained (`#x`) and logical references,
//! and references given only by `identifier`, match only a search value written identically.
//! `canonical` and `uri` elements match the search value exactly (a canonical's `|version`
//! ignored when the search value has none).

use std::collections::{HashMap, HashSet};

use serde_json::Value;

use super::Datatype;
use crate::model::ResourceType;
use crate::model::ids::{is_logical_id, split_reference};

#[derive(Debug, Clone)]
pub(super) struct RefValue {
    /// The value as written.
    full: String,
    /// Its type, from `Type/id` or the `:Type` modifier.
    ty: Option<ResourceType>,
    /// Its id, when it names one.
    id: Option<String>,
}

impl RefValue {
    pub(super) fn parse(
        value: &str,
        modifier_type: Option<ResourceType>,
    ) -> Result<RefValue, String> {
        let absolute = value.contains("://") || value.starts_with("urn:");
        let (ty, id) = match split_reference(value) {
            Some((ty, id)) => match ResourceType::parse(ty) {
                Ok(ty) => (Some(ty), Some(id.to_owned())),
                // Any URL is a valid reference; only relative ones must name a type.
                Err(_) if absolute => (None, None),
                Err(_) => {
                    return Err(format!(
                        "`{ty}` in `{value}` is not a FHIR R4 resource type"
                    ));
                }
            },
            None if absolute => (None, None),
            None if is_logical_id(value) => (None, Some(value.to_owned())),
            None => {
                return Err(format!(
                    "`{value}` is not a reference (`id`, `Type/id` or an absolute URL)"
                ));
            }
        };
        let ty = match (ty, modifier_type) {
            (Some(t), Some(m)) if t != m => {
                return Err(format!("`{value}` is not a reference to a {m}"));
            }
            (t, m) => t.or(m),
        };
        Ok(RefValue {
            full: value.to_owned(),
            ty,
            id,
        })
    }

    /// Whether the value alone matches: what [`RefSet`] must agree with (its tests check).
    #[cfg(test)]
    pub(super) fn matches(&self, dt: Datatype, v: &Value) -> bool {
        match dt {
            Datatype::Reference => {
                let Some(r) = v.get("reference").and_then(Value::as_str) else {
                    return false;
                };
                if r == self.full {
                    return true;
                }
                let Some(id) = &self.id else { return false };
                split_reference(r).is_some_and(|(rty, rid)| {
                    rid == id && self.ty.is_none_or(|t| t.as_str() == rty)
                })
            }
            Datatype::Canonical => v.as_str().is_some_and(|s| {
                s == self.full
                    || (!self.full.contains('|') && s.split('|').next() == Some(self.full.as_str()))
            }),
            _ => false,
        }
    }
}

/// The values of one reference parameter (ORed), looked up rather than tried one by one: a
/// filter listing a hundred thousand patients costs a hash lookup or two per reference.
/// Matches exactly what trying each [`RefValue`] would.
#[derive(Debug, Clone, Default)]
pub(super) struct RefSet {
    /// Every value as written (`Reference.reference` equal to it matches).
    full: HashSet<String>,
    /// The values without a `|version`, which a versioned canonical also matches.
    unversioned: HashSet<String>,
    /// Values that name an id: the types each id is asked for with (`None`: any type).
    by_id: HashMap<String, Vec<Option<ResourceType>>>,
}

impl RefSet {
    pub(super) fn new(values: Vec<RefValue>) -> RefSet {
        let mut set = RefSet::default();
        for v in values {
            if !v.full.contains('|') {
                set.unversioned.insert(v.full.clone());
            }
            if let Some(id) = v.id {
                set.by_id.entry(id).or_default().push(v.ty);
            }
            set.full.insert(v.full);
        }
        set
    }

    /// Adds `other`'s values: the set then matches what either matched.
    pub(super) fn absorb(&mut self, other: RefSet) {
        self.full.extend(other.full);
        self.unversioned.extend(other.unversioned);
        for (id, types) in other.by_id {
            self.by_id.entry(id).or_default().extend(types);
        }
    }

    pub(super) fn matches(&self, dt: Datatype, v: &Value) -> bool {
        match dt {
            Datatype::Reference => {
                let Some(r) = v.get("reference").and_then(Value::as_str) else {
                    return false;
                };
                if self.full.contains(r) {
                    return true;
                }
                split_reference(r).is_some_and(|(rty, rid)| {
                    self.by_id.get(rid).is_some_and(|types| {
                        types.iter().any(|t| t.is_none_or(|t| t.as_str() == rty))
                    })
                })
            }
            Datatype::Canonical => v.as_str().is_some_and(|s| {
                self.full.contains(s)
                    || s.split('|')
                        .next()
                        .is_some_and(|base| self.unversioned.contains(base))
            }),
            _ => false,
        }
    }
}

/// The resource type a Reference points to, when its `reference` is literal.
pub(super) fn reference_type(v: &Value) -> Option<&str> {
    let r = v.get("reference").and_then(Value::as_str)?;
    split_reference(r).map(|(ty, _)| ty)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Sets answer what trying each of their values answers.
    #[test]
    fn a_reference_set_matches_exactly_what_its_values_match() {
        let parsed: Vec<RefValue> = [
            ("Patient/1", None),
            ("2", None),
            ("3", Some(ResourceType::PATIENT)),
            ("http://x/fhir/Group/4", None),
            ("http://x/Questionnaire/q", None),
            ("http://x/Questionnaire/r|2", None),
            ("urn:uuid:abc", None),
            ("Patient/1", Some(ResourceType::PATIENT)),
        ]
        .iter()
        .map(|(v, t)| RefValue::parse(v, *t).expect("parse"))
        .collect();
        let inputs = [
            r("Patient/1"),
            r("Group/1"),
            r("Patient/2"),
            r("Group/2"),
            r("Patient/3"),
            r("Group/3"),
            r("Group/4"),
            r("https://y/fhir/Group/4"),
            r("urn:uuid:abc"),
            r("#2"),
            json!({"display": "no reference"}),
            json!("http://x/Questionnaire/q"),
            json!("http://x/Questionnaire/q|7"),
            json!("http://x/Questionnaire/r|2"),
            json!("http://x/Questionnaire/r|3"),
            json!("http://x/Questionnaire/r"),
        ];
        for start in 0..parsed.len() {
            for end in start + 1..=parsed.len() {
                let chosen = &parsed[start..end];
                let set = RefSet::new(chosen.to_vec());
                let mid = start + (end - start) / 2;
                let mut merged = RefSet::new(parsed[start..mid].to_vec());
                merged.absorb(RefSet::new(parsed[mid..end].to_vec()));
                for dt in [Datatype::Reference, Datatype::Canonical, Datatype::Text] {
                    for v in &inputs {
                        let want = chosen.iter().any(|x| x.matches(dt, v));
                        assert_eq!(set.matches(dt, v), want, "{chosen:?} {dt:?} {v}");
                        assert_eq!(merged.matches(dt, v), want, "merged {chosen:?} {dt:?} {v}");
                    }
                }
            }
        }
    }

    fn rv(s: &str) -> RefValue {
        RefValue::parse(s, None).unwrap_or_else(|e| panic!("{e}"))
    }

    fn r(s: &str) -> Value {
        json!({"reference": s})
    }

    #[test]
    fn typed_and_bare_ids() {
        let d = Datatype::Reference;
        assert!(rv("Patient/123").matches(d, &r("Patient/123")));
        assert!(!rv("Patient/123").matches(d, &r("Group/123")));
        assert!(!rv("Patient/123").matches(d, &r("Patient/1234")));
        assert!(rv("123").matches(d, &r("Patient/123")));
        assert!(rv("123").matches(d, &r("Group/123")));
        assert!(rv("Patient/123").matches(d, &r("Patient/123/_history/2")));
        assert!(!rv("Patient/123").matches(d, &json!({"identifier": {"value": "123"}})));
        assert!(!rv("123").matches(d, &r("#123")));
        let typed = RefValue::parse("123", Some(ResourceType::PATIENT)).expect("parse");
        assert!(typed.matches(d, &r("Patient/123")));
        assert!(!typed.matches(d, &r("Group/123")));
        assert!(RefValue::parse("Group/123", Some(ResourceType::PATIENT)).is_err());
    }

    #[test]
    fn absolute_urls_match_relative_references() {
        let d = Datatype::Reference;
        let abs = rv("http://example.org/fhir/Patient/123");
        assert!(abs.matches(d, &r("Patient/123")));
        assert!(abs.matches(d, &r("http://example.org/fhir/Patient/123")));
        assert!(!abs.matches(d, &r("Patient/124")));
        assert!(rv("Patient/123").matches(d, &r("https://other.example/fhir/Patient/123")));
        let urn = rv("urn:uuid:9d5f1c48-7d0c-4a3e-9b55-3b3a1f0c9a1e");
        assert!(urn.matches(d, &r("urn:uuid:9d5f1c48-7d0c-4a3e-9b55-3b3a1f0c9a1e")));
        assert!(!urn.matches(d, &r("Patient/9d5f1c48-7d0c-4a3e-9b55-3b3a1f0c9a1e")));
    }

    #[test]
    fn canonicals_and_bad_values() {
        let q = rv("http://example.org/Questionnaire/phq9");
        assert!(q.matches(
            Datatype::Canonical,
            &json!("http://example.org/Questionnaire/phq9|3")
        ));
        assert!(!q.matches(
            Datatype::Canonical,
            &json!("http://example.org/Questionnaire/phq")
        ));
        assert!(RefValue::parse("Foo/123", None).is_err());
        assert!(RefValue::parse("not an id", None).is_err());
        let other = rv("http://example.org/Foo/bar");
        assert!(other.matches(Datatype::Reference, &r("http://example.org/Foo/bar")));
        assert!(!other.matches(Datatype::Reference, &r("Foo/bar")));
        assert_eq!(reference_type(&r("Patient/1")), Some("Patient"));
        assert_eq!(reference_type(&r("http://x/fhir/Group/1")), Some("Group"));
        assert_eq!(reference_type(&r("#c1")), None);
    }
}
