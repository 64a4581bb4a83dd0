//! `GET [base]/metadata`: a CapabilityStatement declaring `$export` at the three levels.

use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::MetadataState;
use super::error::FHIR_JSON;

const EXPORT: &str = "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export";
const PATIENT_EXPORT: &str = "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/patient-export";
const GROUP_EXPORT: &str = "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/group-export";

pub(super) async fn metadata(State(state): State<MetadataState>) -> Response {
    let body = json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": state.started.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "kind": "instance",
        "instantiates": ["http://hl7.org/fhir/uv/bulkdata/CapabilityStatement/bulk-data"],
        "software": { "name": "fhir-export", "version": env!("CARGO_PKG_VERSION") },
        "implementation": {
            "description": "FHIR Bulk Data $export (Bulk Data IG 2.0.0)",
            "url": state.settings.public_base_url,
        },
        "fhirVersion": "4.0.1",
        "format": ["json"],
        "rest": [{
            "mode": "server",
            "documentation": "Bulk Data export at system, Patient and Group level, by GET or by POST with a Parameters body. \
                Parameters: _outputFormat (application/fhir+ndjson, application/ndjson, ndjson), _since, _until (alias _till), \
                _type, _typeFilter (FHIR R4 search: token, reference, date, string, quantity, number and uri parameters with \
                :missing, :not, :text, :exact, :contains, :[Type], :below, :above; no chains, _has or composites), _elements, \
                patient (Patient and Group level), includeAssociatedData (LatestProvenanceResources, RelevantProvenanceResources), \
                organizeOutputBy=Patient, allowPartialManifests, _container. Unsupported parameters are refused unless \
                `Prefer: handling=lenient`, which exports without them and lists them in the manifest's error files. \
                One resource type per file, files rolled over to Type-2.ndjson, Type-3.ndjson, ... past the configured size. \
                Patient and Group exports hold the FHIR R4 Patient compartment of the exported patients (a Group's current, \
                active members), plus the Provenance of those resources; Organization and Practitioner are not included. \
                _since applies to meta.lastUpdated for every resource, Group exports included.",
            "operation": [{ "name": "export", "definition": EXPORT }],
            "resource": [
                { "type": "Patient", "operation": [{ "name": "export", "definition": PATIENT_EXPORT }] },
                { "type": "Group", "operation": [{ "name": "export", "definition": GROUP_EXPORT }] }
            ]
        }]
    });
    let mut resp = axum::Json(body).into_response();
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON));
    resp
}
