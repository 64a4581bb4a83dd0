//! The FHIR R4 Patient compartment (CompartmentDefinition/patient, 4.0.1).
//!
//! For each resource type in the compartment, the search parameters that link it to a patient,
//! resolved to the element paths of their R4 `SearchParameter` expressions. Expressions of the
//! form `X.where(resolve() is Patient)` become the path `X`: only references whose type is
//! `Patient` count anyway. A resource is in a patient's compartment when any of these paths
//! holds a reference to that patient (a Patient is in its own compartment, and in those of the
//! patients it links to).

use serde_json::Value;

use crate::model::ResourceType;
use crate::model::ids::split_reference;

/// A search parameter of the compartment and the element paths its expression selects.
pub type CompartmentParam = (&'static str, &'static [&'static str]);

/// `(resource type, [(search parameter, element paths)])`, sorted by type.
pub const PATIENT_COMPARTMENT: &[(&str, &[CompartmentParam])] = &[
    ("Account", &[("subject", &["subject"])]),
    ("AdverseEvent", &[("subject", &["subject"])]),
    (
        "AllergyIntolerance",
        &[
            ("patient", &["patient"]),
            ("recorder", &["recorder"]),
            ("asserter", &["asserter"]),
        ],
    ),
    ("Appointment", &[("actor", &["participant.actor"])]),
    ("AppointmentResponse", &[("actor", &["actor"])]),
    ("AuditEvent", &[("patient", &["agent.who", "entity.what"])]),
    (
        "Basic",
        &[("patient", &["subject"]), ("author", &["author"])],
    ),
    ("BodyStructure", &[("patient", &["patient"])]),
    (
        "CarePlan",
        &[
            ("patient", &["subject"]),
            ("performer", &["activity.detail.performer"]),
        ],
    ),
    (
        "CareTeam",
        &[
            ("patient", &["subject"]),
            ("participant", &["participant.member"]),
        ],
    ),
    ("ChargeItem", &[("subject", &["subject"])]),
    (
        "Claim",
        &[("patient", &["patient"]), ("payee", &["payee.party"])],
    ),
    ("ClaimResponse", &[("patient", &["patient"])]),
    ("ClinicalImpression", &[("subject", &["subject"])]),
    (
        "Communication",
        &[
            ("subject", &["subject"]),
            ("sender", &["sender"]),
            ("recipient", &["recipient"]),
        ],
    ),
    (
        "CommunicationRequest",
        &[
            ("subject", &["subject"]),
            ("sender", &["sender"]),
            ("recipient", &["recipient"]),
            ("requester", &["requester"]),
        ],
    ),
    (
        "Composition",
        &[
            ("subject", &["subject"]),
            ("author", &["author"]),
            ("attester", &["attester.party"]),
        ],
    ),
    (
        "Condition",
        &[("patient", &["subject"]), ("asserter", &["asserter"])],
    ),
    ("Consent", &[("patient", &["patient"])]),
    (
        "Coverage",
        &[
            ("policy-holder", &["policyHolder"]),
            ("subscriber", &["subscriber"]),
            ("beneficiary", &["beneficiary"]),
            ("payor", &["payor"]),
        ],
    ),
    ("CoverageEligibilityRequest", &[("patient", &["patient"])]),
    ("CoverageEligibilityResponse", &[("patient", &["patient"])]),
    ("DetectedIssue", &[("patient", &["patient"])]),
    (
        "DeviceRequest",
        &[("subject", &["subject"]), ("performer", &["performer"])],
    ),
    ("DeviceUseStatement", &[("subject", &["subject"])]),
    ("DiagnosticReport", &[("subject", &["subject"])]),
    (
        "DocumentManifest",
        &[
            ("subject", &["subject"]),
            ("author", &["author"]),
            ("recipient", &["recipient"]),
        ],
    ),
    (
        "DocumentReference",
        &[("subject", &["subject"]), ("author", &["author"])],
    ),
    ("Encounter", &[("patient", &["subject"])]),
    ("EnrollmentRequest", &[("subject", &["candidate"])]),
    ("EpisodeOfCare", &[("patient", &["patient"])]),
    (
        "ExplanationOfBenefit",
        &[("patient", &["patient"]), ("payee", &["payee.party"])],
    ),
    ("FamilyMemberHistory", &[("patient", &["patient"])]),
    ("Flag", &[("patient", &["subject"])]),
    ("Goal", &[("patient", &["subject"])]),
    ("Group", &[("member", &["member.entity"])]),
    ("ImagingStudy", &[("patient", &["subject"])]),
    ("Immunization", &[("patient", &["patient"])]),
    ("ImmunizationEvaluation", &[("patient", &["patient"])]),
    ("ImmunizationRecommendation", &[("patient", &["patient"])]),
    (
        "Invoice",
        &[
            ("subject", &["subject"]),
            ("patient", &["subject"]),
            ("recipient", &["recipient"]),
        ],
    ),
    (
        "List",
        &[("subject", &["subject"]), ("source", &["source"])],
    ),
    ("MeasureReport", &[("patient", &["subject"])]),
    ("Media", &[("subject", &["subject"])]),
    (
        "MedicationAdministration",
        &[
            ("patient", &["subject"]),
            ("performer", &["performer.actor"]),
            ("subject", &["subject"]),
        ],
    ),
    (
        "MedicationDispense",
        &[
            ("subject", &["subject"]),
            ("patient", &["subject"]),
            ("receiver", &["receiver"]),
        ],
    ),
    ("MedicationRequest", &[("subject", &["subject"])]),
    ("MedicationStatement", &[("subject", &["subject"])]),
    ("MolecularSequence", &[("patient", &["patient"])]),
    ("NutritionOrder", &[("patient", &["patient"])]),
    (
        "Observation",
        &[("subject", &["subject"]), ("performer", &["performer"])],
    ),
    ("Patient", &[("link", &["link.other"])]),
    ("Person", &[("patient", &["link.target"])]),
    (
        "Procedure",
        &[
            ("patient", &["subject"]),
            ("performer", &["performer.actor"]),
        ],
    ),
    ("Provenance", &[("patient", &["target"])]),
    (
        "QuestionnaireResponse",
        &[("subject", &["subject"]), ("author", &["author"])],
    ),
    ("RelatedPerson", &[("patient", &["patient"])]),
    (
        "RequestGroup",
        &[
            ("subject", &["subject"]),
            ("participant", &["action.participant"]),
        ],
    ),
    ("ResearchSubject", &[("individual", &["individual"])]),
    ("RiskAssessment", &[("subject", &["subject"])]),
    ("Schedule", &[("actor", &["actor"])]),
    (
        "ServiceRequest",
        &[("subject", &["subject"]), ("performer", &["performer"])],
    ),
    ("Specimen", &[("subject", &["subject"])]),
    ("SupplyDelivery", &[("patient", &["patient"])]),
    ("SupplyRequest", &[("subject", &["deliverTo"])]),
    ("VisionPrescription", &[("patient", &["patient"])]),
];

fn entry(t: ResourceType) -> Option<&'static [CompartmentParam]> {
    PATIENT_COMPARTMENT
        .binary_search_by(|(name, _)| name.cmp(&t.as_str()))
        .ok()
        .map(|i| PATIENT_COMPARTMENT[i].1)
}

/// The search parameters that link resources of `t` to a patient (none outside the
/// compartment).
pub fn compartment_params(t: ResourceType) -> &'static [CompartmentParam] {
    entry(t).unwrap_or(&[])
}

/// Whether resources of this type can be in a Patient compartment.
pub fn in_patient_compartment(t: ResourceType) -> bool {
    entry(t).is_some()
}

/// Every type of the Patient compartment.
pub fn patient_compartment_types() -> impl Iterator<Item = ResourceType> {
    PATIENT_COMPARTMENT
        .iter()
        .filter_map(|(name, _)| ResourceType::parse(name).ok())
}

/// The top-level elements [`for_each_patient`] looks at for a type (`id` and `link` for a
/// Patient, `subject` and `performer` for an Observation, ...).
pub fn compartment_roots(t: ResourceType) -> Vec<&'static str> {
    let mut roots: Vec<&'static str> = Vec::new();
    if t == ResourceType::PATIENT {
        roots.push("id");
    }
    for (_, paths) in entry(t).into_iter().flatten() {
        for path in *paths {
            let root = path.split('.').next().unwrap_or(path);
            if !roots.contains(&root) {
                roots.push(root);
            }
        }
    }
    roots
}

/// Calls `f` with the id of every patient whose compartment holds `resource` (possibly the
/// same id more than once). A Patient belongs to its own compartment.
pub fn for_each_patient(t: ResourceType, resource: &Value, mut f: impl FnMut(&str)) {
    if t == ResourceType::PATIENT
        && let Some(id) = resource.get("id").and_then(Value::as_str)
    {
        f(id);
    }
    let Some(params) = entry(t) else { return };
    for (_, paths) in params {
        for path in *paths {
            visit_path(resource, path, &mut |reference| {
                if let Some(("Patient", id)) = split_reference(reference) {
                    f(id);
                }
            });
        }
    }
}

/// The patient ids whose compartments hold `resource`, sorted and without repeats.
pub fn patients_of(t: ResourceType, resource: &Value) -> Vec<String> {
    let mut ids = Vec::new();
    for_each_patient(t, resource, |id| ids.push(id.to_owned()));
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// Walks a dotted element path through objects and arrays and calls `f` with every
/// `reference` string found at its end.
fn visit_path(node: &Value, path: &str, f: &mut dyn FnMut(&str)) {
    match node {
        Value::Array(items) => items.iter().for_each(|i| visit_path(i, path, f)),
        Value::Object(map) => match path.split_once('.') {
            Some((head, rest)) => {
                if let Some(child) = map.get(head) {
                    visit_path(child, rest, f);
                }
            }
            None => match map.get(path) {
                Some(Value::Array(items)) => items.iter().for_each(|i| {
                    if let Some(r) = i.get("reference").and_then(Value::as_str) {
                        f(r);
                    }
                }),
                Some(v) => {
                    if let Some(r) = v.get("reference").and_then(Value::as_str) {
                        f(r);
                    }
                }
                None => {}
            },
        },
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rt(s: &str) -> ResourceType {
        ResourceType::parse(s).expect("type")
    }

    #[test]
    fn table_is_sorted_and_types_are_r4() {
        assert!(PATIENT_COMPARTMENT.windows(2).all(|w| w[0].0 < w[1].0));
        for (name, _) in PATIENT_COMPARTMENT {
            assert!(ResourceType::parse(name).is_ok(), "{name}");
        }
        assert_eq!(PATIENT_COMPARTMENT.len(), 66);
    }

    #[test]
    fn membership() {
        assert!(in_patient_compartment(rt("Observation")));
        assert!(in_patient_compartment(rt("Patient")));
        assert!(!in_patient_compartment(rt("Organization")));
        assert!(!in_patient_compartment(rt("Practitioner")));
        assert!(!in_patient_compartment(rt("Device")));
    }

    #[test]
    fn finds_patients_through_nested_paths() {
        let obs = json!({"resourceType":"Observation","id":"o",
            "subject":{"reference":"Patient/a"},
            "performer":[{"reference":"Practitioner/x"},{"reference":"Patient/b"}]});
        assert_eq!(patients_of(rt("Observation"), &obs), vec!["a", "b"]);
        let proc_ = json!({"resourceType":"Procedure","id":"p",
            "subject":{"reference":"http://x/fhir/Patient/c"},
            "performer":[{"actor":{"reference":"Patient/d"}}]});
        assert_eq!(patients_of(rt("Procedure"), &proc_), vec!["c", "d"]);
        let group = json!({"resourceType":"Group","id":"g",
            "member":[{"entity":{"reference":"Patient/e"}},{"entity":{"reference":"Group/h"}}]});
        assert_eq!(patients_of(rt("Group"), &group), vec!["e"]);
        let pat = json!({"resourceType":"Patient","id":"p1","link":[{"other":{"reference":"Patient/p2"}}]});
        assert_eq!(patients_of(rt("Patient"), &pat), vec!["p1", "p2"]);
        let enc = json!({"resourceType":"Encounter","id":"e","subject":{"reference":"Group/1"}});
        assert!(patients_of(rt("Encounter"), &enc).is_empty());
        let org = json!({"resourceType":"Organization","id":"o"});
        assert!(patients_of(rt("Organization"), &org).is_empty());
    }
}
