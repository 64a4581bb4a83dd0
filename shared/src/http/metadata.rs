//! `GET [base]/metadata`: the CapabilityStatement. It lists every resource type the source
//! can export (and Patient and Group, which carry the Patient and Group level operations),
//! each with the search parameters `_typeFilter` evaluates for it, `_lastUpdated` among them.
//!
//! Clients decide from it what to ask for: smart-fetch exports only the types listed in
//! `rest[0].resource`, and uses `_since` only when `_lastUpdated` is listed on Patient. The
//! statement is rebuilt when the source's types change, looked at no more often than
//! `Settings::metadata_ttl`, so a poll costs no listing of the source.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Value, json};
use tokio::sync::Mutex;

use super::MetadataState;
use super::error::{ApiError, FHIR_JSON};
use crate::model::ResourceType;
use crate::ports::ResourceSource;
use crate::settings::Settings;

const EXPORT: &str = "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export";
const PATIENT_EXPORT: &str = "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/patient-export";
const GROUP_EXPORT: &str = "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/group-export";
const BULK_DATA: &str = "http://hl7.org/fhir/uv/bulkdata/CapabilityStatement/bulk-data";

/// The statement last built, and the types it was built from.
struct Built {
    types: Vec<ResourceType>,
    body: Bytes,
    etag: HeaderValue,
    checked: Instant,
}

/// The CapabilityStatement of one deployment, rebuilt when its source's types change.
pub struct Capability {
    settings: Arc<Settings>,
    source: Arc<dyn ResourceSource>,
    built: Mutex<Option<Built>>,
}

impl Capability {
    pub fn new(settings: Arc<Settings>, source: Arc<dyn ResourceSource>) -> Capability {
        Capability {
            settings,
            source,
            built: Mutex::new(None),
        }
    }

    /// The statement's body and entity tag, from the cache while it is fresh. A source that
    /// cannot be listed is answered with the last statement built, if there is one.
    async fn current(&self) -> Result<(Bytes, HeaderValue), ApiError> {
        let mut built = self.built.lock().await;
        if let Some(b) = built.as_ref()
            && b.checked.elapsed() < self.settings.metadata_ttl
        {
            return Ok((b.body.clone(), b.etag.clone()));
        }
        let types = match self.source.types().await {
            Ok(t) => exportable(t),
            Err(e) => {
                return match built.as_mut() {
                    Some(b) => {
                        tracing::warn!(error = %crate::error_chain(&e), "source types unavailable; serving the last CapabilityStatement");
                        b.checked = Instant::now();
                        Ok((b.body.clone(), b.etag.clone()))
                    }
                    None => Err(e.into()),
                };
            }
        };
        if let Some(b) = built.as_mut()
            && b.types == types
        {
            b.checked = Instant::now();
            return Ok((b.body.clone(), b.etag.clone()));
        }
        let body = Bytes::from(statement(&self.settings, &types, Utc::now()).to_string());
        let etag = etag_of(&body);
        tracing::info!(types = types.len(), "CapabilityStatement built");
        *built = Some(Built {
            types,
            body: body.clone(),
            etag: etag.clone(),
            checked: Instant::now(),
        });
        Ok((body, etag))
    }
}

/// The source's types plus Patient and Group, sorted by name, once each.
fn exportable(mut types: Vec<ResourceType>) -> Vec<ResourceType> {
    types.extend([ResourceType::PATIENT, ResourceType::GROUP]);
    types.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    types.dedup();
    types
}

/// A weak entity tag from a hash of the body (FNV-1a: stable across processes, unlike std's
/// hasher, so every function instance gives the same tag).
fn etag_of(body: &[u8]) -> HeaderValue {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in body {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    HeaderValue::from_str(&format!("W/\"{h:016x}\"")).unwrap_or(HeaderValue::from_static("W/\"0\""))
}

/// One `rest.resource` entry: the type, its `_typeFilter` parameters, and the export
/// operation of its level.
fn resource_entry(t: ResourceType) -> Value {
    let params: Vec<Value> = crate::search::filterable_params(t)
        .map(|p| json!({ "name": p.code, "type": p.kind.as_str() }))
        .collect();
    let mut entry = json!({
        "type": t.as_str(),
        "searchParam": params,
    });
    let operation = if t == ResourceType::PATIENT {
        Some(PATIENT_EXPORT)
    } else if t == ResourceType::GROUP {
        Some(GROUP_EXPORT)
    } else {
        None
    };
    if let Some(definition) = operation {
        entry["operation"] = json!([{ "name": "export", "definition": definition }]);
    }
    entry
}

fn statement(settings: &Settings, types: &[ResourceType], date: DateTime<Utc>) -> Value {
    json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": date.to_rfc3339_opts(SecondsFormat::Secs, true),
        "kind": "instance",
        "instantiates": [BULK_DATA],
        "software": { "name": "fhir-export", "version": env!("CARGO_PKG_VERSION") },
        "implementation": {
            "description": "FHIR Bulk Data $export (Bulk Data IG 2.0.0)",
            "url": settings.public_base_url,
        },
        "fhirVersion": "4.0.1",
        "format": ["json"],
        "rest": [{
            "mode": "server",
            "documentation": "Bulk Data export at system, Patient and Group level, by GET or by POST with a Parameters body. \
                The resource types listed are those the source holds, and each lists the search parameters `_typeFilter` \
                evaluates for it (FHIR R4 search: token, reference, date, string, quantity, number and uri parameters with \
                :missing, :not, :text, :exact, :contains, :[Type], :below, :above; no chains, _has or composites); the \
                types support no REST interaction. \
                Parameters: _outputFormat (application/fhir+ndjson, application/ndjson, ndjson), _since, _until (alias _till), \
                _type, _typeFilter, _elements, patient (Patient and Group level), includeAssociatedData \
                (LatestProvenanceResources, RelevantProvenanceResources), organizeOutputBy=Patient, allowPartialManifests, \
                _container. Unsupported parameters are refused unless `Prefer: handling=lenient`, which exports without them \
                and lists them in the manifest's error files. At Patient and Group level, `_type` values outside the Patient \
                compartment are left out with a warning in the error files (a list with none in the compartment is refused). \
                One resource type per file, files rolled over to Type-2.ndjson, Type-3.ndjson, ... past the configured size; \
                downloads are gzip-compressed for clients that accept it. \
                Patient and Group exports hold the FHIR R4 Patient compartment of the exported patients (a Group's current, \
                active members), plus the Provenance of those resources; Organization and Practitioner are not included. \
                _since applies to meta.lastUpdated for every resource, Group exports included.",
            "operation": [{ "name": "export", "definition": EXPORT }],
            "resource": types.iter().map(|t| resource_entry(*t)).collect::<Vec<_>>(),
        }]
    })
}

pub(super) async fn metadata(State(state): State<MetadataState>, headers: HeaderMap) -> Response {
    let (body, etag) = match state.capability.current().await {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let unchanged = headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim() == "*" || t.trim() == etag.to_str().unwrap_or(""));
    let mut resp = if unchanged {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        body.into_response()
    };
    let h = resp.headers_mut();
    if !unchanged {
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON));
    }
    h.insert(header::ETAG, etag);
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_type_lists_its_filter_parameters_and_patient_and_group_their_operations() {
        let settings = Settings::new("http://x/fhir");
        let types = exportable(vec![
            ResourceType::parse("Observation").expect("type"),
            ResourceType::PATIENT,
        ]);
        let cs = statement(&settings, &types, Utc::now());
        let resources = cs["rest"][0]["resource"].as_array().expect("resources");
        let names: Vec<&str> = resources
            .iter()
            .map(|r| r["type"].as_str().expect("type"))
            .collect();
        assert_eq!(names, ["Group", "Observation", "Patient"]);
        let obs = &resources[1];
        let params: Vec<&str> = obs["searchParam"]
            .as_array()
            .expect("params")
            .iter()
            .map(|p| p["name"].as_str().expect("name"))
            .collect();
        for p in ["_lastUpdated", "_id", "code", "category", "subject", "date"] {
            assert!(params.contains(&p), "Observation lacks {p}: {params:?}");
        }
        // Composite parameters cannot be used in `_typeFilter`, so they are not listed.
        assert!(!params.contains(&"code-value-quantity"), "{params:?}");
        assert!(obs.get("operation").is_none());
        assert_eq!(resources[2]["operation"][0]["definition"], PATIENT_EXPORT);
        assert_eq!(resources[0]["operation"][0]["definition"], GROUP_EXPORT);
        assert_eq!(cs["instantiates"][0], BULK_DATA);
    }

    #[test]
    fn entity_tags_follow_the_body() {
        assert_eq!(etag_of(b"a"), etag_of(b"a"));
        assert_ne!(etag_of(b"a"), etag_of(b"b"));
    }
}
