//! FHIR `OperationOutcome`: the body of every error response and every line of the manifest's
//! `error` files.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Fatal,
    Error,
    Warning,
    Information,
}

/// The subset of the FHIR `issue-type` value set this service uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum IssueCode {
    Invalid,
    Structure,
    Required,
    Value,
    NotSupported,
    NotFound,
    Deleted,
    Security,
    Forbidden,
    Processing,
    Exception,
    Transient,
    Throttled,
    Timeout,
    Incomplete,
    TooCostly,
    Informational,
    Conflict,
}

impl IssueCode {
    pub fn as_str(&self) -> &'static str {
        match self {
            IssueCode::Invalid => "invalid",
            IssueCode::Structure => "structure",
            IssueCode::Required => "required",
            IssueCode::Value => "value",
            IssueCode::NotSupported => "not-supported",
            IssueCode::NotFound => "not-found",
            IssueCode::Deleted => "deleted",
            IssueCode::Security => "security",
            IssueCode::Forbidden => "forbidden",
            IssueCode::Processing => "processing",
            IssueCode::Exception => "exception",
            IssueCode::Transient => "transient",
            IssueCode::Throttled => "throttled",
            IssueCode::Timeout => "timeout",
            IssueCode::Incomplete => "incomplete",
            IssueCode::TooCostly => "too-costly",
            IssueCode::Informational => "informational",
            IssueCode::Conflict => "conflict",
        }
    }
}

/// One issue of an outcome. `expression` names the parameter or element at fault.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Issue {
    pub severity: Severity,
    pub code: IssueCode,
    pub diagnostics: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expression: Option<String>,
}

impl Issue {
    pub fn error(code: IssueCode, diagnostics: impl Into<String>) -> Self {
        Issue {
            severity: Severity::Error,
            code,
            diagnostics: diagnostics.into(),
            expression: None,
        }
    }

    pub fn warning(code: IssueCode, diagnostics: impl Into<String>) -> Self {
        Issue {
            severity: Severity::Warning,
            ..Issue::error(code, diagnostics)
        }
    }

    pub fn information(diagnostics: impl Into<String>) -> Self {
        Issue {
            severity: Severity::Information,
            ..Issue::error(IssueCode::Processing, diagnostics)
        }
    }

    pub fn at(mut self, expression: impl Into<String>) -> Self {
        self.expression = Some(expression.into());
        self
    }
}

/// Renders issues as an `OperationOutcome` resource.
pub fn operation_outcome(issues: &[Issue]) -> Value {
    let issues: Vec<Value> = issues
        .iter()
        .map(|i| {
            let mut v = json!({
                "severity": i.severity,
                "code": i.code.as_str(),
                "diagnostics": i.diagnostics,
            });
            if let Some(e) = &i.expression {
                v["expression"] = json!([e]);
            }
            v
        })
        .collect();
    json!({ "resourceType": "OperationOutcome", "issue": issues })
}

/// One `OperationOutcome` with a single issue.
pub fn single(issue: Issue) -> Value {
    operation_outcome(std::slice::from_ref(&issue))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_valid_outcome() {
        let v = single(Issue::error(IssueCode::Invalid, "bad _since").at("_since"));
        assert_eq!(v["resourceType"], "OperationOutcome");
        assert_eq!(v["issue"][0]["severity"], "error");
        assert_eq!(v["issue"][0]["code"], "invalid");
        assert_eq!(v["issue"][0]["expression"][0], "_since");
        let w = single(Issue::warning(IssueCode::NotSupported, "x"));
        assert_eq!(w["issue"][0]["code"], "not-supported");
        assert!(w["issue"][0].get("expression").is_none());
    }
}
