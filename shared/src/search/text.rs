//! String search (R4 search §string): by default a case- and accent-insensitive prefix match
//! (see `fold` for what folding covers), `:exact` an exact match, `:contains` a case- and
//! accent-insensitive substring match. A HumanName matches on any of `family`, `given`,
//! `prefix`, `suffix`, `text`; an Address on any of `line`, `city`, `district`, `state`,
//! `postalCode`, `country`, `text`.

use serde_json::Value;

use super::Datatype;
use super::escape::unescape;
use super::fold::{contains_folded, fold, starts_with_folded};
use super::token::each;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum StringMode {
    Prefix,
    Exact,
    Contains,
}

/// One compiled string value: folded unless `:exact`.
#[derive(Debug, Clone)]
pub(super) struct StringValue {
    mode: StringMode,
    value: String,
}

const HUMAN_NAME: &[&str] = &["family", "given", "prefix", "suffix", "text"];
const ADDRESS: &[&str] = &[
    "line",
    "city",
    "district",
    "state",
    "postalCode",
    "country",
    "text",
];

impl StringValue {
    pub(super) fn parse(raw: &str, mode: StringMode) -> StringValue {
        let value = unescape(raw);
        let value = if mode == StringMode::Exact {
            value
        } else {
            fold(&value)
        };
        StringValue { mode, value }
    }

    pub(super) fn matches(&self, dt: Datatype, v: &Value) -> bool {
        let parts = match dt {
            Datatype::Text => return v.as_str().is_some_and(|s| self.matches_str(s)),
            Datatype::HumanName => HUMAN_NAME,
            Datatype::Address => ADDRESS,
            _ => return false,
        };
        parts.iter().any(|k| {
            each(v.get(*k), |p| {
                p.as_str().is_some_and(|s| self.matches_str(s))
            })
        })
    }

    fn matches_str(&self, s: &str) -> bool {
        match self.mode {
            StringMode::Prefix => starts_with_folded(s, &self.value),
            StringMode::Exact => s == self.value,
            StringMode::Contains => contains_folded(s, &self.value),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn string_modes() {
        let name = json!({"family": "Müller", "given": ["Anna", "Lena"], "prefix": ["Dr."]});
        let h = Datatype::HumanName;
        let prefix = |s| StringValue::parse(s, StringMode::Prefix).matches(h, &name);
        assert!(prefix("muller"));
        assert!(prefix("MÜL"));
        assert!(prefix("len"));
        assert!(prefix("dr"));
        assert!(!prefix("ller"));
        assert!(!prefix("mueller"));
        let exact = |s| StringValue::parse(s, StringMode::Exact).matches(h, &name);
        assert!(exact("Müller"));
        assert!(!exact("muller"));
        assert!(!exact("Müll"));
        let contains = |s| StringValue::parse(s, StringMode::Contains).matches(h, &name);
        assert!(contains("ULL"));
        assert!(contains("ena"));
        assert!(!contains("xyz"));
        let addr =
            json!({"line": ["12 Rue de l'Église"], "city": "Besançon", "postalCode": "25000"});
        let a = Datatype::Address;
        assert!(StringValue::parse("besancon", StringMode::Prefix).matches(a, &addr));
        assert!(StringValue::parse("eglise", StringMode::Contains).matches(a, &addr));
        assert!(StringValue::parse("250", StringMode::Prefix).matches(a, &addr));
        assert!(!StringValue::parse("lyon", StringMode::Prefix).matches(a, &addr));
        assert!(
            StringValue::parse(r"a\,b", StringMode::Exact).matches(Datatype::Text, &json!("a,b"))
        );
    }
}
