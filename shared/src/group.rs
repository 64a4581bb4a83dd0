//! Group membership: who is a current member of a Group.

use serde_json::Value;

use crate::model::fhir_time::instant_micros;
use crate::model::ids::split_reference;

/// Current Patient members of a Group: `member.entity` references to Patients that are not
/// `inactive` and whose `period` holds `at_micros`. Sorted, without repeats. Members that are
/// other Groups are not expanded.
pub fn current_members(group: &Value, at_micros: i64) -> Vec<String> {
    let mut ids: Vec<String> = group
        .get("member")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|m| m.get("inactive").and_then(Value::as_bool) != Some(true))
        .filter(|m| {
            let bound = |k: &str| {
                m.get("period")
                    .and_then(|p| p.get(k))
                    .and_then(Value::as_str)
                    .and_then(|s| instant_micros(s.as_bytes()).or_else(|| date_start_micros(s)))
            };
            bound("start").is_none_or(|s| s <= at_micros)
                && bound("end").is_none_or(|e| e >= at_micros)
        })
        .filter_map(|m| m.get("entity")?.get("reference")?.as_str())
        .filter_map(|r| match split_reference(r) {
            Some(("Patient", id)) => Some(id.to_owned()),
            _ => None,
        })
        .collect();
    ids.sort();
    ids.dedup();
    ids
}

/// `YYYY-MM-DD` period bounds, read as the start of that day in UTC.
fn date_start_micros(s: &str) -> Option<i64> {
    instant_micros(format!("{s}T00:00:00Z").as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn members_exclude_inactive_expired_and_non_patients() {
        let g = json!({"resourceType":"Group","id":"g","member":[
            {"entity":{"reference":"Patient/b"}},
            {"entity":{"reference":"Patient/a"}},
            {"entity":{"reference":"Patient/c"},"inactive":true},
            {"entity":{"reference":"Patient/d"},"period":{"end":"2020-01-01"}},
            {"entity":{"reference":"Patient/e"},"period":{"start":"2030-01-01T00:00:00Z"}},
            {"entity":{"reference":"Group/x"}},
            {"entity":{"reference":"Patient/a"}}
        ]});
        let at = instant_micros(b"2024-06-01T00:00:00Z").expect("t");
        assert_eq!(current_members(&g, at), vec!["a", "b"]);
        assert!(current_members(&json!({"resourceType":"Group","id":"e"}), at).is_empty());
    }
}
