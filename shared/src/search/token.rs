//! Token search (R4 search §token) and uri search (§uri).
//!
//! Token values are `code`, `system|code`, `|code` (no system) or `system|` (any code in the
//! system), compared case-sensitively. Per datatype: Coding and each `CodeableConcept.coding`
//! match on `system`/`code`; Identifier on `system`/`value`; ContactPoint on `value` (it has no
//! system: `|value` and `value` match, `system|value` does not). Elements of type `code`,
//! `string`, `id`, `uri` and `boolean` hold only the code: their system is implicit (the
//! element's binding, which the tables do not carry), so the system part of a search value is
//! not checked against them and `system|` matches any value. Booleans compare as `true` and
//! `false`.
//!
//! `:text` matches, like a string search (case- and accent-insensitive prefix), the text that
//! goes with a code: `CodeableConcept.text`, `Coding.display`, `Identifier.type.text`.
//! `:of-type` takes `system|code|value` and matches an Identifier whose `type` has that coding
//! and whose value is `value`.

use std::collections::HashMap;

use serde_json::Value;

use super::Datatype;
use super::escape::{split_unescaped, unescape};
use super::fold::{fold, starts_with_folded};

#[derive(Debug, Clone)]
enum System {
    /// `code`: any system, or none.
    Any,
    /// `|code`: the element must have no system.
    Absent,
    Is(String),
}

/// One compiled token value.
#[derive(Debug, Clone)]
pub(super) struct TokenValue {
    system: System,
    /// `None` for `system|`.
    code: Option<String>,
}

impl TokenValue {
    pub(super) fn parse(raw: &str) -> Result<TokenValue, String> {
        let parts = split_unescaped(raw, '|');
        match parts.as_slice() {
            [code] => Ok(TokenValue {
                system: System::Any,
                code: Some(unescape(code)),
            }),
            [system, code] if !(system.is_empty() && code.is_empty()) => Ok(TokenValue {
                system: if system.is_empty() {
                    System::Absent
                } else {
                    System::Is(unescape(system))
                },
                code: (!code.is_empty()).then(|| unescape(code)),
            }),
            _ => Err(format!(
                "`{raw}` is not a token (`code`, `system|code`, `|code` or `system|`)"
            )),
        }
    }

    /// Whether the value alone matches: what [`TokenSet`] must agree with (its tests check).
    #[cfg(test)]
    pub(super) fn matches(&self, dt: Datatype, v: &Value) -> bool {
        match dt {
            Datatype::Text => v.as_str().is_some_and(|c| self.code_ok(Some(c))),
            Datatype::Boolean => v
                .as_bool()
                .is_some_and(|b| self.code_ok(Some(if b { "true" } else { "false" }))),
            Datatype::Coding => self.coding(v),
            Datatype::CodeableConcept => each(v.get("coding"), |c| self.coding(c)),
            Datatype::Identifier => self.pair(str_field(v, "system"), str_field(v, "value")),
            Datatype::ContactPoint => self.pair(None, str_field(v, "value")),
            _ => false,
        }
    }

    #[cfg(test)]
    fn coding(&self, c: &Value) -> bool {
        self.pair(str_field(c, "system"), str_field(c, "code"))
    }

    #[cfg(test)]
    fn pair(&self, system: Option<&str>, code: Option<&str>) -> bool {
        let system_ok = match &self.system {
            System::Any => true,
            System::Absent => system.is_none(),
            System::Is(s) => system == Some(s.as_str()),
        };
        system_ok && self.code_ok(code)
    }

    #[cfg(test)]
    fn code_ok(&self, code: Option<&str>) -> bool {
        match &self.code {
            None => code.is_some(),
            Some(c) => code == Some(c.as_str()),
        }
    }
}

/// The values of one token parameter (ORed), looked up by code rather than tried one by one:
/// a filter with a hundred thousand codes costs one hash lookup per coding of a resource.
/// Matches exactly what trying each [`TokenValue`] would.
#[derive(Debug, Clone, Default)]
pub(super) struct TokenSet {
    /// Values with a code: the systems each code is asked for with.
    by_code: HashMap<String, Vec<System>>,
    /// `system|` values: any code of these systems.
    any_code: Vec<System>,
}

impl TokenSet {
    pub(super) fn new(values: Vec<TokenValue>) -> TokenSet {
        let mut set = TokenSet::default();
        for v in values {
            match v.code {
                Some(code) => set.by_code.entry(code).or_default().push(v.system),
                None => set.any_code.push(v.system),
            }
        }
        set
    }

    /// Adds `other`'s values: the set then matches what either matched.
    pub(super) fn absorb(&mut self, other: TokenSet) {
        for (code, systems) in other.by_code {
            self.by_code.entry(code).or_default().extend(systems);
        }
        self.any_code.extend(other.any_code);
    }

    pub(super) fn matches(&self, dt: Datatype, v: &Value) -> bool {
        match dt {
            // The system is implicit (see the module docs): only the code counts.
            Datatype::Text => v.as_str().is_some_and(|c| self.implicit(c)),
            Datatype::Boolean => v
                .as_bool()
                .is_some_and(|b| self.implicit(if b { "true" } else { "false" })),
            Datatype::Coding => self.coding(v),
            Datatype::CodeableConcept => each(v.get("coding"), |c| self.coding(c)),
            Datatype::Identifier => self.pair(str_field(v, "system"), str_field(v, "value")),
            Datatype::ContactPoint => self.pair(None, str_field(v, "value")),
            _ => false,
        }
    }

    /// The codes a value must have one of to match, unless the set takes any code of a
    /// system (`system|`): then `None`.
    pub(super) fn required_codes(&self) -> Option<impl Iterator<Item = &str>> {
        self.any_code
            .is_empty()
            .then(|| self.by_code.keys().map(String::as_str))
    }

    fn implicit(&self, code: &str) -> bool {
        !self.any_code.is_empty() || self.by_code.contains_key(code)
    }

    fn coding(&self, c: &Value) -> bool {
        self.pair(str_field(c, "system"), str_field(c, "code"))
    }

    fn pair(&self, system: Option<&str>, code: Option<&str>) -> bool {
        let Some(code) = code else { return false };
        let fits = |s: &System| match s {
            System::Any => true,
            System::Absent => system.is_none(),
            System::Is(want) => system == Some(want.as_str()),
        };
        self.by_code
            .get(code)
            .is_some_and(|systems| systems.iter().any(fits))
            || self.any_code.iter().any(fits)
    }
}

/// Calls `f` with every code a value of datatype `dt` holds, as [`TokenSet::matches`] reads
/// them: a value can only match a set with no `system|` value if one of these is among the
/// set's codes.
pub(super) fn codes_of<'v>(dt: Datatype, v: &'v Value, f: &mut dyn FnMut(&'v str)) {
    match dt {
        Datatype::Text => {
            if let Some(c) = v.as_str() {
                f(c);
            }
        }
        Datatype::Boolean => {
            if let Some(b) = v.as_bool() {
                f(if b { "true" } else { "false" });
            }
        }
        Datatype::Coding => {
            if let Some(c) = str_field(v, "code") {
                f(c);
            }
        }
        Datatype::CodeableConcept => {
            // Every coding: `false` goes on to the next.
            each(v.get("coding"), |c| {
                codes_of(Datatype::Coding, c, f);
                false
            });
        }
        Datatype::Identifier | Datatype::ContactPoint => {
            if let Some(c) = str_field(v, "value") {
                f(c);
            }
        }
        _ => {}
    }
}

/// One compiled `:text` value (folded).
#[derive(Debug, Clone)]
pub(super) struct TokenText(String);

impl TokenText {
    pub(super) fn parse(raw: &str) -> TokenText {
        TokenText(fold(&unescape(raw)))
    }

    pub(super) fn matches(&self, dt: Datatype, v: &Value) -> bool {
        let text = |s: Option<&str>| s.is_some_and(|s| starts_with_folded(s, &self.0));
        match dt {
            Datatype::Coding => text(str_field(v, "display")),
            Datatype::CodeableConcept => {
                text(str_field(v, "text"))
                    || each(v.get("coding"), |c| text(str_field(c, "display")))
            }
            Datatype::Identifier => text(v.get("type").and_then(|t| str_field(t, "text"))),
            _ => false,
        }
    }
}

/// One compiled `:of-type` value, `system|code|value`.
#[derive(Debug, Clone)]
pub(super) struct OfType {
    type_system: String,
    type_code: String,
    value: String,
}

impl OfType {
    pub(super) fn parse(raw: &str) -> Result<OfType, String> {
        match split_unescaped(raw, '|').as_slice() {
            [system, code, value]
                if !system.is_empty() && !code.is_empty() && !value.is_empty() =>
            {
                Ok(OfType {
                    type_system: unescape(system),
                    type_code: unescape(code),
                    value: unescape(value),
                })
            }
            _ => Err(format!("`{raw}` is not `system|code|value` (`:of-type`)")),
        }
    }

    pub(super) fn matches(&self, dt: Datatype, v: &Value) -> bool {
        dt == Datatype::Identifier
            && str_field(v, "value") == Some(self.value.as_str())
            && each(v.get("type").and_then(|t| t.get("coding")), |c| {
                str_field(c, "system") == Some(self.type_system.as_str())
                    && str_field(c, "code") == Some(self.type_code.as_str())
            })
    }
}

/// How a uri search compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum UriMode {
    Exact,
    /// `:below`: the resource's uri starts with the search value.
    Below,
    /// `:above`: the search value starts with the resource's uri.
    Above,
}

/// Uri search on `uri`/`url`/`canonical` values. A canonical's `|version` is ignored when the
/// search value has none (`_profile=http://x/StructureDefinition/p` finds `...p|2.0`).
pub(super) fn uri_matches(mode: UriMode, search: &str, dt: Datatype, v: &Value) -> bool {
    let Some(s) = v.as_str() else { return false };
    let s = if dt == Datatype::Canonical && !search.contains('|') {
        s.split('|').next().unwrap_or(s)
    } else {
        s
    };
    match mode {
        UriMode::Exact => s == search,
        UriMode::Below => s.starts_with(search),
        UriMode::Above => !s.is_empty() && search.starts_with(s),
    }
}

pub(super) fn str_field<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

/// Whether `f` holds for the value or, for an array, any of its items.
pub(super) fn each<'v>(v: Option<&'v Value>, mut f: impl FnMut(&'v Value) -> bool) -> bool {
    match v {
        Some(Value::Array(items)) => items.iter().any(f),
        Some(v) => f(v),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Sets answer what trying each of their values answers, for every datatype, with codes
    /// and systems present, absent and mixed, and after sets are merged.
    #[test]
    fn a_token_set_matches_exactly_what_its_values_match() {
        let values = [
            "a", "b", "s|a", "s|c", "|d", "t|", "|", "true", "x\\|y", "s|",
        ];
        let parsed: Vec<TokenValue> = values
            .iter()
            .filter_map(|v| TokenValue::parse(v).ok())
            .collect();
        let inputs = [
            json!("a"),
            json!("c"),
            json!("x|y"),
            json!(true),
            json!(false),
            json!({"system": "s", "code": "a"}),
            json!({"system": "s", "code": "z"}),
            json!({"system": "t", "code": "q"}),
            json!({"code": "d"}),
            json!({"system": "u", "code": "d"}),
            json!({"system": "s"}),
            json!({"coding": [{"system": "u", "code": "c"}, {"code": "b"}]}),
            json!({"coding": [{"system": "u", "code": "c"}]}),
            json!({"system": "s", "value": "c"}),
            json!({"value": "d"}),
            json!({"value": "a"}),
            json!(42),
        ];
        let dts = [
            Datatype::Text,
            Datatype::Boolean,
            Datatype::Coding,
            Datatype::CodeableConcept,
            Datatype::Identifier,
            Datatype::ContactPoint,
            Datatype::Quantity,
        ];
        // Every contiguous run of the values, as one set and as two merged halves.
        for start in 0..parsed.len() {
            for end in start + 1..=parsed.len() {
                let chosen = &parsed[start..end];
                let set = TokenSet::new(chosen.to_vec());
                let mid = start + (end - start) / 2;
                let mut merged = TokenSet::new(parsed[start..mid].to_vec());
                merged.absorb(TokenSet::new(parsed[mid..end].to_vec()));
                for dt in dts {
                    for v in &inputs {
                        let want = chosen.iter().any(|t| t.matches(dt, v));
                        assert_eq!(set.matches(dt, v), want, "{chosen:?} {dt:?} {v}");
                        assert_eq!(merged.matches(dt, v), want, "merged {chosen:?} {dt:?} {v}");
                    }
                }
            }
        }
    }

    fn tok(s: &str) -> TokenValue {
        TokenValue::parse(s).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn token_forms() {
        let loinc =
            json!({"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"});
        let bare = json!({"code": "8867-4"});
        let c = Datatype::Coding;
        assert!(tok("8867-4").matches(c, &loinc));
        assert!(tok("8867-4").matches(c, &bare));
        assert!(tok("http://loinc.org|8867-4").matches(c, &loinc));
        assert!(!tok("http://loinc.org|8867-4").matches(c, &bare));
        assert!(!tok("|8867-4").matches(c, &loinc));
        assert!(tok("|8867-4").matches(c, &bare));
        assert!(tok("http://loinc.org|").matches(c, &loinc));
        assert!(!tok("http://snomed.info/sct|").matches(c, &loinc));
        assert!(!tok("8867-5").matches(c, &loinc));
        assert!(!tok("ABC").matches(c, &json!({"code": "abc"})));
        assert!(tok(r"a\|b").matches(c, &json!({"code": "a|b"})));
        for bad in ["|", "a|b|c"] {
            assert!(TokenValue::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn token_datatypes() {
        let cc = json!({"coding": [{"system": "http://snomed.info/sct", "code": "1"},
                                    {"system": "http://loinc.org", "code": "2"}], "text": "Thing"});
        assert!(tok("http://loinc.org|2").matches(Datatype::CodeableConcept, &cc));
        assert!(!tok("http://loinc.org|1").matches(Datatype::CodeableConcept, &cc));
        let id = json!({"system": "urn:oid:1.2.3", "value": "MRN-7"});
        assert!(tok("urn:oid:1.2.3|MRN-7").matches(Datatype::Identifier, &id));
        assert!(tok("MRN-7").matches(Datatype::Identifier, &id));
        assert!(!tok("urn:oid:9|MRN-7").matches(Datatype::Identifier, &id));
        let phone = json!({"system": "phone", "value": "555-1234"});
        assert!(tok("555-1234").matches(Datatype::ContactPoint, &phone));
        assert!(tok("|555-1234").matches(Datatype::ContactPoint, &phone));
        assert!(!tok("phone|555-1234").matches(Datatype::ContactPoint, &phone));
        assert!(tok("true").matches(Datatype::Boolean, &json!(true)));
        assert!(!tok("true").matches(Datatype::Boolean, &json!(false)));
        assert!(tok("false").matches(Datatype::Boolean, &json!(false)));
        assert!(tok("final").matches(Datatype::Text, &json!("final")));
        assert!(
            tok("http://hl7.org/fhir/observation-status|final")
                .matches(Datatype::Text, &json!("final"))
        );
        assert!(!tok("Final").matches(Datatype::Text, &json!("final")));
    }

    #[test]
    fn text_and_of_type() {
        let cc =
            json!({"coding": [{"code": "1", "display": "Blood pressure panel"}], "text": "BP"});
        let t = TokenText::parse("blood pres");
        assert!(t.matches(Datatype::CodeableConcept, &cc));
        assert!(TokenText::parse("bp").matches(Datatype::CodeableConcept, &cc));
        assert!(!TokenText::parse("pressure").matches(Datatype::CodeableConcept, &cc));
        let id = json!({"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}], "text": "Medical record"}, "value": "446053"});
        assert!(TokenText::parse("médical").matches(Datatype::Identifier, &id));
        let of = OfType::parse("http://terminology.hl7.org/CodeSystem/v2-0203|MR|446053")
            .expect("parse");
        assert!(of.matches(Datatype::Identifier, &id));
        let other = OfType::parse("http://terminology.hl7.org/CodeSystem/v2-0203|SS|446053")
            .expect("parse");
        assert!(!other.matches(Datatype::Identifier, &id));
        assert!(OfType::parse("MR|446053").is_err());
    }

    #[test]
    fn uris() {
        let v = json!("http://example.org/fhir/StructureDefinition/bp|2.0");
        let c = Datatype::Canonical;
        assert!(uri_matches(
            UriMode::Exact,
            "http://example.org/fhir/StructureDefinition/bp",
            c,
            &v
        ));
        assert!(uri_matches(
            UriMode::Exact,
            "http://example.org/fhir/StructureDefinition/bp|2.0",
            c,
            &v
        ));
        assert!(!uri_matches(
            UriMode::Exact,
            "http://example.org/fhir/StructureDefinition/bp|1.0",
            c,
            &v
        ));
        assert!(!uri_matches(
            UriMode::Exact,
            "http://example.org/fhir/StructureDefinition/b",
            c,
            &v
        ));
        let u = json!("http://acme.org/fhir/ValueSet/123");
        let t = Datatype::Text;
        assert!(uri_matches(
            UriMode::Exact,
            "http://acme.org/fhir/ValueSet/123",
            t,
            &u
        ));
        assert!(!uri_matches(
            UriMode::Exact,
            "http://acme.org/fhir/ValueSet/12",
            t,
            &u
        ));
        assert!(uri_matches(UriMode::Below, "http://acme.org/fhir/", t, &u));
        assert!(!uri_matches(
            UriMode::Below,
            "http://acme.org/other/",
            t,
            &u
        ));
        assert!(uri_matches(
            UriMode::Above,
            "http://acme.org/fhir/ValueSet/123/_history/5",
            t,
            &u
        ));
        assert!(!uri_matches(UriMode::Above, "http://acme.org/fhir/", t, &u));
    }
}
