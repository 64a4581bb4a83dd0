//! The kick-off request: parsed and validated once, at the edge, into an [`ExportRequest`].
//!
//! Bad input becomes a [`KickoffError`] naming the header or parameter at fault; the HTTP layer
//! turns it into an `OperationOutcome` with the right 4xx. Nothing is created before parsing
//! succeeds.

pub mod elements;
mod headers;
mod parse;
pub mod raw;
pub mod type_filter;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub use elements::ElementSelector;
pub use headers::{Preferences, check_accept, parse_prefer};
pub use parse::{KickoffInput, Method, narrow_patients, parse_kickoff};
pub use type_filter::{FilterParam, TypeFilter};

use crate::model::{LogicalId, ResourceType};
use crate::outcome::Issue;

/// Which data the export covers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "group", rename_all = "snake_case")]
pub enum ExportLevel {
    /// `[base]/$export`: everything.
    System,
    /// `[base]/Patient/$export`: the compartments of all patients.
    Patient,
    /// `[base]/Group/[id]/$export`: the compartments of the group's members.
    Group(LogicalId),
}

/// `Prefer: handling=...` (FHIR R4 search.html#errors). Without the header we act strictly:
/// silently dropping a filter would export more patient data than was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Handling {
    Strict,
    Lenient,
}

/// `includeAssociatedData` values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AssociatedData {
    LatestProvenanceResources,
    RelevantProvenanceResources,
}

/// A validated kick-off.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportRequest {
    pub level: ExportLevel,
    /// The kick-off URL for the manifest's `request` (without parameters for a POST).
    pub request_url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<DateTime<Utc>>,
    /// `_type`; `None` exports every type the level allows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub types: Option<Vec<ResourceType>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub type_filters: Vec<TypeFilter>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub elements: Vec<ElementSelector>,
    /// `patient` (POST): narrows a Patient or Group export to these patients.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub patients: Vec<LogicalId>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub include_associated: Vec<AssociatedData>,
    /// `_container`: the folder (container, prefix) the export is written under.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub organize_output_by: Option<ResourceType>,
    #[serde(default)]
    pub allow_partial_manifests: bool,
    pub handling: Handling,
    /// The types the caller's scopes permitted at kick-off; `None`: every type. The export
    /// never holds a type outside them, and status, cancel and files ask the caller's scopes
    /// to cover them again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<std::collections::BTreeSet<ResourceType>>,
    /// What lenient handling ignored, one issue per parameter; written to the manifest's
    /// `error` files.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ignored: Vec<Issue>,
}

impl ExportRequest {
    /// Whether `t` passes `_type` (filters may still drop every resource of it).
    pub fn wants_type(&self, t: ResourceType) -> bool {
        self.types.as_ref().is_none_or(|ts| ts.contains(&t))
    }

    pub fn is_patient_level(&self) -> bool {
        !matches!(self.level, ExportLevel::System)
    }
}

/// Which optional features the deployment implements. A request that uses a missing one is
/// refused under strict handling and stripped (with an issue) under lenient handling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    pub type_filter: bool,
    pub elements: bool,
    pub patient_param: bool,
    pub include_associated_data: bool,
    pub organize_output_by: bool,
    pub partial_manifests: bool,
}

impl Capabilities {
    /// What this build implements.
    pub const CURRENT: Capabilities = Capabilities {
        type_filter: true,
        elements: true,
        patient_param: true,
        include_associated_data: true,
        organize_output_by: true,
        partial_manifests: true,
    };

    /// Nothing optional (for tests of the refusal path).
    pub const NONE: Capabilities = Capabilities {
        type_filter: false,
        elements: false,
        patient_param: false,
        include_associated_data: false,
        organize_output_by: false,
        partial_manifests: false,
    };
}

/// Why a kick-off was refused. Each variant names the header or parameter at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KickoffError {
    #[error("`Accept: {accept}` cannot be served; this server answers with application/fhir+json")]
    NotAcceptable { accept: String },
    #[error("the `Prefer` header must include `respond-async`: $export only runs asynchronously")]
    MissingRespondAsync,
    #[error("invalid `{header}` header: {message}")]
    InvalidHeader {
        header: &'static str,
        message: String,
    },
    #[error(
        "`Content-Type: {content_type}` is not supported; send a FHIR Parameters resource as application/fhir+json"
    )]
    UnsupportedMediaType { content_type: String },
    #[error("invalid request body: {message}")]
    InvalidBody { message: String },
    #[error("invalid `{name}`: {message}")]
    InvalidParameter { name: String, message: String },
    #[error(
        "unknown parameter `{name}` (send `Prefer: handling=lenient` to have unknown parameters ignored)"
    )]
    UnknownParameter { name: String },
    #[error(
        "`{name}` is not supported: {message} (send `Prefer: handling=lenient` to export without it)"
    )]
    UnsupportedParameter { name: String, message: String },
    #[error("Group/{id} is not known to this server")]
    GroupNotFound { id: String },
    /// Over a documented limit on what one request may ask of the workers.
    #[error("`{name}` asks too much: {message}")]
    TooCostly { name: String, message: String },
}

/// Bounds on what one kick-off may ask of the workers: every resource of a filtered type is
/// tried against the request's filters, so their size is what an export costs beyond its
/// data. Documented in `docs/configuration.md`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// `_typeFilter` queries per request.
    pub type_filters: usize,
    /// Values in all of them together (`code=a,b,c` is three).
    pub filter_values: usize,
    /// Characters of one `_typeFilter` query.
    pub type_filter_chars: usize,
    /// `patient` references of a POST kick-off.
    pub patients: usize,
    /// Bytes of a kick-off's query string.
    pub query_bytes: usize,
    /// Bytes of a POST kick-off's body.
    pub body_bytes: usize,
    /// Exports one client may have running at once.
    pub active_exports: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            type_filters: 1_000,
            filter_values: 200_000,
            // A 100,000-value token list is about 1 MB; the body and query bounds hold
            // anything longer anyway.
            type_filter_chars: 1 << 20,
            patients: 100_000,
            query_bytes: 64 * 1024,
            body_bytes: 8 * 1024 * 1024,
            active_exports: 10,
        }
    }
}

/// Refuses a request whose filters go past `limits`, naming the limit.
pub fn check_limits(req: &ExportRequest, limits: &Limits) -> Result<(), KickoffError> {
    if req.patients.len() > limits.patients {
        return Err(KickoffError::TooCostly {
            name: "patient".into(),
            message: format!(
                "{} patients; at most {} are accepted per request (FHIR_EXPORT_MAX_PATIENTS): export a Group, or split the list",
                req.patients.len(),
                limits.patients
            ),
        });
    }
    let queries = req.type_filters.len();
    if queries > limits.type_filters {
        return Err(KickoffError::TooCostly {
            name: "_typeFilter".into(),
            message: format!(
                "{queries} queries; at most {} are accepted per request (FHIR_EXPORT_MAX_TYPE_FILTERS): merge queries on the same parameter into one comma-separated list",
                limits.type_filters
            ),
        });
    }
    let values: usize = req
        .type_filters
        .iter()
        .map(crate::search::filter_values)
        .sum();
    if values > limits.filter_values {
        return Err(KickoffError::TooCostly {
            name: "_typeFilter".into(),
            message: format!(
                "{values} values; at most {} are accepted per request (FHIR_EXPORT_MAX_FILTER_VALUES)",
                limits.filter_values
            ),
        });
    }
    if let Some(long) = req
        .type_filters
        .iter()
        .map(|f| f.raw.chars().count())
        .find(|n| *n > limits.type_filter_chars)
    {
        return Err(KickoffError::TooCostly {
            name: "_typeFilter".into(),
            message: format!(
                "a query of {long} characters; at most {} are accepted (FHIR_EXPORT_MAX_TYPE_FILTER_CHARS)",
                limits.type_filter_chars
            ),
        });
    }
    Ok(())
}

impl KickoffError {
    /// The header or parameter an `OperationOutcome` should point at.
    pub fn expression(&self) -> Option<String> {
        match self {
            KickoffError::NotAcceptable { .. } => Some("Accept".into()),
            KickoffError::MissingRespondAsync => Some("Prefer".into()),
            KickoffError::InvalidHeader { header, .. } => Some((*header).into()),
            KickoffError::UnsupportedMediaType { .. } => Some("Content-Type".into()),
            KickoffError::InvalidBody { .. } => None,
            KickoffError::InvalidParameter { name, .. }
            | KickoffError::UnknownParameter { name }
            | KickoffError::UnsupportedParameter { name, .. }
            | KickoffError::TooCostly { name, .. } => Some(name.clone()),
            KickoffError::GroupNotFound { .. } => Some("Group".into()),
        }
    }
}
