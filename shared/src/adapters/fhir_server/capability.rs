//! What the upstream's CapabilityStatement says the source relies on: the types it serves,
//! each type's search parameters (compartment parameters and `_typeFilter`s are pushed down
//! only where listed), and whether it takes `_elements` and `_history`.

use std::collections::{BTreeMap, HashSet};

use serde_json::Value;

use crate::model::ResourceType;

#[derive(Debug, Clone, Default)]
pub(crate) struct Capability {
    pub types: BTreeMap<ResourceType, TypeCapability>,
    /// Search parameters the server lists for every type (`rest.searchParam`).
    pub common: HashSet<String>,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct TypeCapability {
    pub search_params: HashSet<String>,
    /// `history-type` is among its interactions.
    pub history: bool,
}

impl Capability {
    /// Reads a CapabilityStatement; `None` when it is not one.
    pub fn parse(v: &Value) -> Option<Capability> {
        if v.get("resourceType")?.as_str()? != "CapabilityStatement" {
            return None;
        }
        let rest = v
            .get("rest")?
            .as_array()?
            .iter()
            .find(|r| r.get("mode").and_then(Value::as_str) == Some("server"))?;
        let names = |list: Option<&Value>| -> HashSet<String> {
            list.and_then(Value::as_array)
                .map(|ps| {
                    ps.iter()
                        .filter_map(|p| p.get("name").and_then(Value::as_str))
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default()
        };
        let mut cap = Capability {
            common: names(rest.get("searchParam")),
            ..Capability::default()
        };
        for r in rest.get("resource").and_then(Value::as_array)? {
            let Some(t) = r
                .get("type")
                .and_then(Value::as_str)
                .and_then(|t| ResourceType::parse(t).ok())
            else {
                continue;
            };
            let history = r
                .get("interaction")
                .and_then(Value::as_array)
                .is_some_and(|is| {
                    is.iter()
                        .any(|i| i.get("code").and_then(Value::as_str) == Some("history-type"))
                });
            cap.types.insert(
                t,
                TypeCapability {
                    search_params: names(r.get("searchParam")),
                    history,
                },
            );
        }
        Some(cap)
    }

    /// Whether the server lists search parameter `name` for `t`.
    pub fn supports_param(&self, t: ResourceType, name: &str) -> bool {
        self.common.contains(name)
            || self
                .types
                .get(&t)
                .is_some_and(|c| c.search_params.contains(name))
    }

    pub fn supports_history(&self, t: ResourceType) -> bool {
        self.types.get(&t).is_some_and(|c| c.history)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_types_params_and_history() {
        let v = json!({
            "resourceType": "CapabilityStatement",
            "rest": [{
                "mode": "server",
                "searchParam": [{"name": "_lastUpdated", "type": "date"}],
                "resource": [
                    {"type": "Observation",
                     "interaction": [{"code": "read"}, {"code": "history-type"}],
                     "searchParam": [{"name": "subject"}, {"name": "code"}]},
                    {"type": "Patient", "searchParam": [{"name": "_id"}]},
                    {"type": "NotAType"}
                ]
            }]
        });
        let cap = Capability::parse(&v).expect("parsed");
        let obs = ResourceType::parse("Observation").expect("t");
        assert_eq!(cap.types.len(), 2);
        assert!(cap.supports_param(obs, "code"));
        assert!(cap.supports_param(obs, "_lastUpdated"));
        assert!(!cap.supports_param(obs, "performer"));
        assert!(cap.supports_history(obs));
        assert!(!cap.supports_history(ResourceType::PATIENT));
        assert!(Capability::parse(&json!({"resourceType": "Patient"})).is_none());
    }
}
