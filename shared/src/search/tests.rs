//! End-to-end tests of `_typeFilter` evaluation on realistic R4 resources.

use serde_json::{Value, json};

use super::*;
use crate::model::resource_type::R4_RESOURCE_TYPES;

fn filter(query: &str) -> CompiledFilter {
    let parsed = TypeFilter::parse(query).unwrap_or_else(|e| panic!("{query}: {e}"));
    CompiledFilter::compile(&parsed).unwrap_or_else(|e| panic!("{query}: {e}"))
}

fn error(query: &str) -> FilterError {
    let parsed = TypeFilter::parse(query).unwrap_or_else(|e| panic!("{query}: {e}"));
    match CompiledFilter::compile(&parsed) {
        Ok(_) => panic!("{query} should not compile"),
        Err(e) => e,
    }
}

/// Asserts which of `resources` (named) the filter keeps.
#[track_caller]
fn keeps(query: &str, resources: &[(&str, &Value)], expected: &[&str]) {
    let f = filter(query);
    let kept: Vec<&str> = resources
        .iter()
        .filter(|(_, r)| f.matches(r))
        .map(|(n, _)| *n)
        .collect();
    assert_eq!(kept, expected, "{query}");
}

fn observation(id: &str, code: Value, extra: Value) -> Value {
    let mut o = json!({
        "resourceType": "Observation",
        "id": id,
        "meta": {"lastUpdated": "2024-03-01T10:00:00Z"},
        "status": "final",
        "code": code,
        "subject": {"reference": "Patient/p1"}
    });
    if let (Some(o), Value::Object(extra)) = (o.as_object_mut(), extra) {
        o.extend(extra);
    }
    o
}

fn loinc(code: &str, display: &str) -> Value {
    json!({"coding": [{"system": "http://loinc.org", "code": code, "display": display}], "text": display})
}

#[test]
fn token_code_forms_and_not() {
    let hr = observation(
        "hr",
        loinc("8867-4", "Heart rate"),
        json!({"category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}]}),
    );
    let local = observation("local", json!({"coding": [{"code": "8867-4"}]}), json!({}));
    let glucose = observation(
        "glucose",
        loinc("2339-0", "Glucose"),
        json!({"status": "amended"}),
    );
    let all = [("hr", &hr), ("local", &local), ("glucose", &glucose)];
    keeps("Observation?code=8867-4", &all, &["hr", "local"]);
    keeps("Observation?code=http://loinc.org|8867-4", &all, &["hr"]);
    keeps("Observation?code=%7C8867-4", &all, &["local"]);
    keeps(
        "Observation?code=http://loinc.org|",
        &all,
        &["hr", "glucose"],
    );
    keeps(
        "Observation?code=8867-4,2339-0",
        &all,
        &["hr", "local", "glucose"],
    );
    keeps("Observation?code=http://snomed.info/sct|8867-4", &all, &[]);
    keeps("Observation?status=amended", &all, &["glucose"]);
    keeps(
        "Observation?status=final,amended",
        &all,
        &["hr", "local", "glucose"],
    );
    // `:not` holds when no category matches, including when there is no category at all.
    keeps(
        "Observation?category:not=vital-signs",
        &all,
        &["local", "glucose"],
    );
    keeps("Observation?code:not=8867-4,2339-0", &all, &[]);
    keeps("Observation?code:text=heart", &all, &["hr"]);
    keeps("Observation?code:text=glu", &all, &["glucose"]);
}

#[test]
fn token_booleans_identifiers_and_telecom() {
    let active = json!({
        "resourceType": "Patient", "id": "a", "active": true,
        "identifier": [{"system": "http://hospital.example/mrn", "value": "MRN-1",
                        "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]}}],
        "telecom": [{"system": "phone", "value": "555-0100"}]
    });
    let inactive =
        json!({"resourceType": "Patient", "id": "b", "active": false, "gender": "female"});
    let unknown = json!({"resourceType": "Patient", "id": "c"});
    let all = [("a", &active), ("b", &inactive), ("c", &unknown)];
    keeps("Patient?active=true", &all, &["a"]);
    keeps("Patient?active=false", &all, &["b"]);
    keeps("Patient?active:not=true", &all, &["b", "c"]);
    keeps(
        "Patient?identifier=http://hospital.example/mrn|MRN-1",
        &all,
        &["a"],
    );
    keeps("Patient?identifier=MRN-1", &all, &["a"]);
    keeps("Patient?identifier=http://other.example|MRN-1", &all, &[]);
    keeps(
        "Patient?identifier:of-type=http://terminology.hl7.org/CodeSystem/v2-0203|MR|MRN-1",
        &all,
        &["a"],
    );
    keeps("Patient?telecom=555-0100", &all, &["a"]);
    keeps("Patient?gender=female", &all, &["b"]);
    keeps("Patient?_id=b,c", &all, &["b", "c"]);
}

#[test]
fn dates_on_datetimes_periods_and_choices() {
    let obs =
        |id: &str, effective: Value| observation(id, loinc("8867-4", "Heart rate"), effective);
    let d2019 = obs("2019-12-31", json!({"effectiveDateTime": "2019-12-31"}));
    let y2020 = obs("2020", json!({"effectiveDateTime": "2020"}));
    let m2020 = obs("2020-06", json!({"effectiveDateTime": "2020-06"}));
    let spanning = obs(
        "spanning",
        json!({"effectivePeriod": {"start": "2019-11-01T08:00:00Z", "end": "2020-02-01T08:00:00Z"}}),
    );
    let open = obs("open", json!({"effectivePeriod": {"start": "2019-11-01"}}));
    let instant = obs(
        "instant",
        json!({"effectiveInstant": "2020-03-04T10:00:30.250+01:00"}),
    );
    let none = obs("none", json!({}));
    let all = [
        ("2019-12-31", &d2019),
        ("2020", &y2020),
        ("2020-06", &m2020),
        ("spanning", &spanning),
        ("open", &open),
        ("instant", &instant),
        ("none", &none),
    ];
    keeps(
        "Observation?date=ge2020",
        &all,
        &["2020", "2020-06", "open", "instant"],
    );
    keeps(
        "Observation?date=2020",
        &all,
        &["2020", "2020-06", "instant"],
    );
    keeps(
        "Observation?date=lt2020",
        &all,
        &["2019-12-31", "spanning", "open"],
    );
    keeps("Observation?date=eb2020", &all, &["2019-12-31"]);
    keeps(
        "Observation?date=sa2019",
        &all,
        &["2020", "2020-06", "instant"],
    );
    keeps("Observation?date=2020-03-04T09:00", &all, &["instant"]);
    keeps("Observation?date=2020-03-04T10:00", &all, &[]);
    keeps(
        "Observation?date=2020-03-04T10:00%2B01:00",
        &all,
        &["instant"],
    );
    keeps(
        "Observation?date=ne2020",
        &all,
        &["2019-12-31", "spanning", "open"],
    );
    // Several values are ORed; a repeated parameter is ANDed.
    keeps(
        "Observation?date=2019-12-31,2020-06",
        &all,
        &["2019-12-31", "2020-06"],
    );
    // Ranges: `ge2020-01-01` keeps what reaches past that day, `lt2020-07` what starts
    // before July; the period from 2019-11 to 2020-02 does both.
    keeps(
        "Observation?date=ge2020-01-01&date=lt2020-07",
        &all,
        &["2020", "2020-06", "spanning", "open", "instant"],
    );
    keeps(
        "Observation?date=ge2020-01-01&date=lt2020-07&date=sa2019",
        &all,
        &["2020", "2020-06", "instant"],
    );
}

#[test]
fn dates_on_other_resources() {
    let encounter = json!({
        "resourceType": "Encounter", "id": "e1", "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "subject": {"reference": "Patient/p1"},
        "period": {"start": "2021-05-01T09:00:00-04:00", "end": "2021-05-01T10:30:00-04:00"}
    });
    let ongoing = json!({
        "resourceType": "Encounter", "id": "e2", "status": "in-progress",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
        "period": {"start": "2023-01-10"}
    });
    let encounters = [("e1", &encounter), ("e2", &ongoing)];
    keeps("Encounter?date=2021-05-01", &encounters, &["e1"]);
    keeps("Encounter?date=gt2024", &encounters, &["e2"]);
    keeps(
        "Encounter?date=le2021-05-01T14:00:00Z",
        &encounters,
        &["e1"],
    );
    keeps("Encounter?date=le2021-05-01T13:00:00Z", &encounters, &[]);
    keeps("Encounter?class=AMB", &encounters, &["e1"]);

    let patient = json!({"resourceType": "Patient", "id": "p", "birthDate": "1987-02-20"});
    let unborn = json!({"resourceType": "Patient", "id": "q"});
    let patients = [("p", &patient), ("q", &unborn)];
    keeps("Patient?birthdate=1987", &patients, &["p"]);
    keeps("Patient?birthdate=1987-02", &patients, &["p"]);
    keeps("Patient?birthdate=lt1987-02-20", &patients, &[]);
    keeps("Patient?birthdate=le1987-02-20", &patients, &["p"]);

    let imm = json!({
        "resourceType": "Immunization", "id": "i1", "status": "completed",
        "vaccineCode": {"coding": [{"system": "http://hl7.org/fhir/sid/cvx", "code": "140"}]},
        "patient": {"reference": "Patient/p1"}, "occurrenceDateTime": "2021-10-15T11:00:00Z"
    });
    let reported = json!({
        "resourceType": "Immunization", "id": "i2", "status": "completed",
        "vaccineCode": {"coding": [{"system": "http://hl7.org/fhir/sid/cvx", "code": "208"}]},
        "patient": {"reference": "Patient/p2"}, "occurrenceString": "autumn 2021"
    });
    let imms = [("i1", &imm), ("i2", &reported)];
    keeps("Immunization?date=2021", &imms, &["i1"]);
    // A string occurrence is a value no date can match, but it is not missing.
    keeps("Immunization?date:missing=true", &imms, &[]);
    keeps(
        "Immunization?vaccine-code=http://hl7.org/fhir/sid/cvx|208",
        &imms,
        &["i2"],
    );
    keeps("Immunization?patient=p2", &imms, &["i2"]);

    let procedure = json!({
        "resourceType": "Procedure", "id": "pr", "status": "completed",
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": "80146002"}]},
        "subject": {"reference": "Patient/p1"},
        "performedPeriod": {"start": "2022-03-01T10:00:00Z", "end": "2022-03-01T11:00:00Z"}
    });
    let procs = [("pr", &procedure)];
    keeps("Procedure?date=2022-03", &procs, &["pr"]);
    keeps("Procedure?date=2022-02", &procs, &[]);
    keeps(
        "Procedure?code=http://snomed.info/sct|80146002",
        &procs,
        &["pr"],
    );

    let plan = json!({
        "resourceType": "CarePlan", "id": "cp", "status": "active", "intent": "plan",
        "subject": {"reference": "Patient/p1"},
        "activity": [{"detail": {"status": "scheduled", "scheduledTiming": {
            "event": ["2024-01-05T09:00:00Z", "2024-02-05T09:00:00Z"]}}}]
    });
    let plans = [("cp", &plan)];
    keeps("CarePlan?activity-date=2024-01-20", &plans, &[]);
    keeps("CarePlan?activity-date=ge2024-01-10", &plans, &["cp"]);
    keeps("CarePlan?activity-date=ge2024-02", &plans, &[]);
    keeps("CarePlan?activity-date=lt2024-01-06", &plans, &["cp"]);
    keeps("CarePlan?activity-date=2024", &plans, &["cp"]);
}

#[test]
fn ap_is_relative_to_the_given_now() {
    let obs = |id: &str, when: &str| {
        observation(id, loinc("8867-4", "x"), json!({"effectiveDateTime": when}))
    };
    let (a, b, c) = (
        obs("a", "2016-10-15"),
        obs("b", "2016-12-15"),
        obs("c", "2014-02-20"),
    );
    let all = [("a", &a), ("b", &b), ("c", &c)];
    let now = crate::model::parse_instant("2025-01-01T00:00:00Z").expect("instant");
    let f = TypeFilter::parse("Observation?date=ap2015").expect("parse");
    let compiled = CompiledFilter::compile_at(&f, now).expect("compile");
    let kept: Vec<&str> = all
        .iter()
        .filter(|(_, r)| compiled.matches(r))
        .map(|(n, _)| *n)
        .collect();
    // 2015 ends nine years before now: the range widens by about 0.9 years on each side.
    assert_eq!(kept, ["a", "c"]);
    let set = TypeFilterSet::compile_at(&[f], now).expect("compile");
    assert!(set.matches(compiled.resource_type(), &a));
    assert!(!set.matches(compiled.resource_type(), &b));
}

#[test]
fn last_updated_tag_security_profile_source() {
    let r = json!({
        "resourceType": "Condition", "id": "c1",
        "meta": {
            "lastUpdated": "2024-03-01T10:00:00.123Z",
            "source": "http://ehr.example/fhir",
            "profile": ["http://hl7.org/fhir/us/core/StructureDefinition/us-core-condition|5.0.1"],
            "tag": [{"system": "http://example.org/tags", "code": "imported"}],
            "security": [{"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "R"}]
        },
        "subject": {"reference": "Patient/p1"},
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": "44054006"}]}
    });
    let bare =
        json!({"resourceType": "Condition", "id": "c2", "subject": {"reference": "Patient/p1"}});
    let all = [("c1", &r), ("c2", &bare)];
    keeps(
        "Condition?_lastUpdated=ge2024-03-01T10:00:00Z",
        &all,
        &["c1"],
    );
    keeps("Condition?_lastUpdated=2024-03-01", &all, &["c1"]);
    keeps("Condition?_lastUpdated=lt2024-03-01T10:00:00Z", &all, &[]);
    keeps(
        "Condition?_tag=http://example.org/tags|imported",
        &all,
        &["c1"],
    );
    keeps("Condition?_tag:not=imported", &all, &["c2"]);
    keeps("Condition?_security=R", &all, &["c1"]);
    keeps(
        "Condition?_profile=http://hl7.org/fhir/us/core/StructureDefinition/us-core-condition",
        &all,
        &["c1"],
    );
    keeps("Condition?_source=http://ehr.example/fhir", &all, &["c1"]);
    keeps("Condition?_source:below=http://ehr.example/", &all, &["c1"]);
    keeps("Condition?_profile:missing=true", &all, &["c2"]);
}

#[test]
fn strings_fold_case_and_accents() {
    let muller = json!({
        "resourceType": "Patient", "id": "m",
        "name": [{"use": "official", "family": "Müller", "given": ["Jürgen", "Otto"]}],
        "address": [{"line": ["Hauptstraße 5"], "city": "Köln", "postalCode": "50667", "country": "DE"}]
    });
    let mueller = json!({
        "resourceType": "Patient", "id": "mu",
        "name": [{"family": "Mueller", "given": ["Anna"]}],
        "address": [{"city": "Berlin"}]
    });
    let nameless = json!({"resourceType": "Patient", "id": "n"});
    let all = [("m", &muller), ("mu", &mueller), ("n", &nameless)];
    keeps("Patient?family=muller", &all, &["m"]);
    keeps("Patient?family=MÜLLER", &all, &["m"]);
    keeps("Patient?family=mu", &all, &["m", "mu"]);
    keeps("Patient?family:exact=Müller", &all, &["m"]);
    keeps("Patient?family:exact=muller", &all, &[]);
    keeps("Patient?family:exact=Mü", &all, &[]);
    keeps("Patient?name=jurg", &all, &["m"]);
    keeps("Patient?name=otto,anna", &all, &["m", "mu"]);
    keeps("Patient?given:contains=NN", &all, &["mu"]);
    keeps("Patient?given:contains=rg", &all, &["m"]);
    keeps("Patient?address-city=koln", &all, &["m"]);
    keeps("Patient?address=strasse", &all, &[]);
    keeps("Patient?address:contains=strasse", &all, &["m"]);
    keeps("Patient?address=50667", &all, &["m"]);
    keeps("Patient?name:missing=true", &all, &["n"]);
    keeps("Patient?name:missing=false", &all, &["m", "mu"]);
}

#[test]
fn quantities_honour_the_implicit_range() {
    let q = |id: &str, value: Value| {
        observation(
            id,
            loinc("2339-0", "Glucose"),
            json!({"valueQuantity": {"value": value, "unit": "mmol/L",
                                     "system": "http://unitsofmeasure.org", "code": "mmol/L"}}),
        )
    };
    let a = q("5.449", json!(5.449));
    let b = q("5.45", json!(5.45));
    let c = q("5.35", json!(5.35));
    let d = q("6", json!(6));
    let text = observation("text", loinc("8867-4", "x"), json!({"valueString": "5.4"}));
    let all = [
        ("5.449", &a),
        ("5.45", &b),
        ("5.35", &c),
        ("6", &d),
        ("text", &text),
    ];
    keeps("Observation?value-quantity=5.4", &all, &["5.449", "5.35"]);
    keeps(
        "Observation?value-quantity=5.4|http://unitsofmeasure.org|mmol/L",
        &all,
        &["5.449", "5.35"],
    );
    keeps(
        "Observation?value-quantity=5.4||mmol/L",
        &all,
        &["5.449", "5.35"],
    );
    keeps("Observation?value-quantity=5.4||mg/dL", &all, &[]);
    keeps("Observation?value-quantity=gt5.45", &all, &["6"]);
    keeps("Observation?value-quantity=ge5.45", &all, &["5.45", "6"]);
    keeps("Observation?value-quantity=lt5.4", &all, &["5.35"]);
    keeps(
        "Observation?value-quantity=ap6",
        &all,
        &["5.449", "5.45", "6"],
    );
    keeps(
        "Observation?value-quantity=ap5.4",
        &all,
        &["5.449", "5.45", "5.35"],
    );
    keeps("Observation?value-quantity=ap6.5", &all, &["6"]);
    keeps("Observation?value-quantity=ap7", &all, &[]);
    keeps(
        "Observation?value-quantity=5.4,6",
        &all,
        &["5.449", "5.35", "6"],
    );
    keeps("Observation?value-quantity:missing=true", &all, &["text"]);
    keeps("Observation?value-string=5.4", &all, &["text"]);

    let onset_range = json!({
        "resourceType": "Condition", "id": "r", "subject": {"reference": "Patient/p1"},
        "onsetRange": {"low": {"value": 40, "unit": "a", "system": "http://unitsofmeasure.org", "code": "a"},
                       "high": {"value": 50, "unit": "a", "system": "http://unitsofmeasure.org", "code": "a"}}
    });
    let onset_age = json!({
        "resourceType": "Condition", "id": "a", "subject": {"reference": "Patient/p1"},
        "onsetAge": {"value": 62, "unit": "years", "system": "http://unitsofmeasure.org", "code": "a"}
    });
    let conds = [("r", &onset_range), ("a", &onset_age)];
    keeps("Condition?onset-age=gt45||a", &conds, &["r", "a"]);
    keeps("Condition?onset-age=62", &conds, &["a"]);
    keeps("Condition?onset-age=lt45", &conds, &["r"]);
    keeps("Condition?onset-age=ge51", &conds, &["a"]);
}

#[test]
fn numbers() {
    let report = |id: &str, n: Value| {
        json!({"resourceType": "RiskAssessment", "id": id, "status": "final",
               "prediction": [{"probabilityDecimal": n}]})
    };
    let a = report("a", json!(0.25));
    let b = report("b", json!(0.3));
    let c = json!({"resourceType": "RiskAssessment", "id": "c", "status": "final",
                   "prediction": [{"probabilityRange": {"low": {"value": 0.2}, "high": {"value": 0.4}}}]});
    let all = [("a", &a), ("b", &b), ("c", &c)];
    keeps("RiskAssessment?probability=0.3", &all, &["a", "b"]);
    keeps("RiskAssessment?probability=0.30", &all, &["b"]);
    keeps("RiskAssessment?probability=0.25", &all, &["a"]);
    keeps("RiskAssessment?probability=gt0.25", &all, &["b"]);
    keeps("RiskAssessment?probability=le0.25", &all, &["a"]);
    keeps(
        "RiskAssessment?probability:missing=false",
        &all,
        &["a", "b", "c"],
    );
}

#[test]
fn references() {
    let cond = |id: &str, subject: &str| {
        json!({"resourceType": "Condition", "id": id,
               "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]},
               "code": {"coding": [{"system": "http://snomed.info/sct", "code": "38341003"}]},
               "subject": {"reference": subject}})
    };
    let rel = cond("rel", "Patient/123");
    let abs = cond("abs", "https://ehr.example/fhir/Patient/123");
    let group = cond("group", "Group/123");
    let other = cond("other", "Patient/456");
    let all = [
        ("rel", &rel),
        ("abs", &abs),
        ("group", &group),
        ("other", &other),
    ];
    keeps("Condition?subject=Patient/123", &all, &["rel", "abs"]);
    keeps("Condition?subject=123", &all, &["rel", "abs", "group"]);
    keeps("Condition?subject:Patient=123", &all, &["rel", "abs"]);
    keeps("Condition?subject:Group=123", &all, &["group"]);
    keeps(
        "Condition?subject=https://ehr.example/fhir/Patient/123",
        &all,
        &["rel", "abs"],
    );
    // `patient` is `subject.where(resolve() is Patient)`.
    keeps("Condition?patient=123", &all, &["rel", "abs"]);
    keeps("Condition?patient:missing=true", &all, &["group"]);
    keeps(
        "Condition?subject=Patient/123,Patient/456",
        &all,
        &["rel", "abs", "other"],
    );
    keeps(
        "Condition?subject=Patient/123&clinical-status=active",
        &all,
        &["rel", "abs"],
    );
    keeps(
        "Condition?subject=Patient/123&clinical-status=resolved",
        &all,
        &[],
    );

    let mr = json!({
        "resourceType": "MedicationRequest", "id": "mr", "status": "active", "intent": "order",
        "medicationCodeableConcept": {"coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "1049502"}]},
        "subject": {"reference": "Patient/p1"},
        "requester": {"reference": "Practitioner/dr1"},
        "authoredOn": "2023-07-01"
    });
    let mr_ref = json!({
        "resourceType": "MedicationRequest", "id": "mr2", "status": "stopped", "intent": "order",
        "medicationReference": {"reference": "Medication/med1"},
        "subject": {"reference": "Patient/p1"}
    });
    let mrs = [("mr", &mr), ("mr2", &mr_ref)];
    keeps("MedicationRequest?code=1049502", &mrs, &["mr"]);
    keeps(
        "MedicationRequest?medication=Medication/med1",
        &mrs,
        &["mr2"],
    );
    keeps(
        "MedicationRequest?requester=Practitioner/dr1",
        &mrs,
        &["mr"],
    );
    keeps("MedicationRequest?authoredon=2023", &mrs, &["mr"]);
    keeps("MedicationRequest?status:not=active", &mrs, &["mr2"]);

    let report = json!({
        "resourceType": "DiagnosticReport", "id": "dr", "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "58410-2"}]},
        "subject": {"reference": "Patient/p1"},
        "effectiveDateTime": "2022-11-02T08:30:00Z", "issued": "2022-11-02T12:00:00Z",
        "result": [{"reference": "Observation/o1"}, {"reference": "Observation/o2"}]
    });
    let reports = [("dr", &report)];
    keeps("DiagnosticReport?result=Observation/o2", &reports, &["dr"]);
    keeps("DiagnosticReport?result=Observation/o3", &reports, &[]);
    keeps("DiagnosticReport?issued=2022-11-02", &reports, &["dr"]);
    keeps(
        "DiagnosticReport?code=http://loinc.org|58410-2&date=2022-11",
        &reports,
        &["dr"],
    );
}

#[test]
fn missing_on_every_kind() {
    let full = observation(
        "full",
        loinc("8867-4", "x"),
        json!({"effectiveDateTime": "2020", "valueQuantity": {"value": 1}, "performer": [{"reference": "Practitioner/x"}]}),
    );
    let empty = json!({"resourceType": "Observation", "id": "empty", "status": "final",
                       "code": {"text": "x"}, "performer": [], "valueString": ""});
    let all = [("full", &full), ("empty", &empty)];
    for param in [
        "date",
        "value-quantity",
        "performer",
        "subject",
        "_lastUpdated",
    ] {
        keeps(
            &format!("Observation?{param}:missing=true"),
            &all,
            &["empty"],
        );
        keeps(
            &format!("Observation?{param}:missing=false"),
            &all,
            &["full"],
        );
    }
    keeps("Observation?code:missing=false", &all, &["full", "empty"]);
    keeps(
        "Observation?value-string:missing=true",
        &all,
        &["full", "empty"],
    );
}

#[test]
fn escapes_in_values() {
    let cond = json!({"resourceType": "Condition", "id": "c", "subject": {"reference": "Patient/p"},
                      "code": {"coding": [{"system": "http://example.org/cs", "code": "a,b"}]}});
    let all = [("c", &cond)];
    keeps(r"Condition?code=a\,b", &all, &["c"]);
    keeps("Condition?code=a,b", &all, &[]);
    keeps(r"Condition?code=http://example.org/cs|a\,b", &all, &["c"]);
}

#[test]
fn type_filter_set_ors_filters_of_a_type_and_leaves_other_types_alone() {
    let filters: Vec<TypeFilter> = [
        "Observation?code=8867-4",
        "Observation?status=amended",
        "Condition?clinical-status=active",
    ]
    .iter()
    .map(|q| TypeFilter::parse(q).expect("parse"))
    .collect();
    let set = TypeFilterSet::compile(&filters).expect("compile");
    let obs = ResourceType::parse("Observation").expect("type");
    let cond = ResourceType::parse("Condition").expect("type");
    assert!(set.is_filtered(obs));
    assert!(set.is_filtered(cond));
    assert!(!set.is_filtered(ResourceType::PATIENT));
    assert!(!set.is_empty());
    let hr = observation("hr", loinc("8867-4", "Heart rate"), json!({}));
    let amended = observation(
        "g",
        loinc("2339-0", "Glucose"),
        json!({"status": "amended"}),
    );
    let neither = observation("n", loinc("2339-0", "Glucose"), json!({}));
    assert!(set.matches(obs, &hr));
    assert!(set.matches(obs, &amended));
    assert!(!set.matches(obs, &neither));
    let inactive = json!({"resourceType": "Condition", "id": "c", "clinicalStatus": {"coding": [{"code": "inactive"}]}});
    assert!(!set.matches(cond, &inactive));
    // Unfiltered types keep everything.
    assert!(set.matches(
        ResourceType::PATIENT,
        &json!({"resourceType": "Patient", "id": "x"})
    ));
    let empty = TypeFilterSet::compile(&[]).expect("compile");
    assert!(empty.is_empty());
    assert!(empty.matches(obs, &neither));
}

#[test]
fn ored_single_parameter_filters_are_merged_into_one_set_with_the_same_answers() {
    let queries = [
        "Observation?code=http://loinc.org|8867-4",
        "Observation?code=2339-0,9999-9",
        "Observation?subject=Patient/p2",
        "Observation?code:not=2339-0",
        "Observation?code=1111-1&status=amended",
        "Observation?subject:Patient=p3",
        "Observation?subject=p1",
    ];
    let filters: Vec<TypeFilter> = queries
        .iter()
        .map(|q| TypeFilter::parse(q).expect("parse"))
        .collect();
    let set = TypeFilterSet::compile(&filters).expect("compile");
    let obs = ResourceType::parse("Observation").expect("type");
    // The two `code` filters become one, and the plain `subject` ones (not `:not`, not the
    // two-parameter one, not `subject:Patient`, a parameter of its own) become one.
    assert_eq!(set.filters_of(obs), 5);
    let each: Vec<CompiledFilter> = queries.iter().map(|q| filter(q)).collect();
    let subjects = ["Patient/p1", "Patient/p2", "Patient/p3", "Group/p3"];
    let codes = [
        loinc("8867-4", "Heart rate"),
        loinc("2339-0", "Glucose"),
        json!({"coding": [{"code": "9999-9"}]}),
        json!({"coding": [{"system": "http://other", "code": "8867-4"}]}),
        loinc("1111-1", "Other"),
    ];
    for subject in subjects {
        for code in &codes {
            for status in ["final", "amended"] {
                let mut o = observation("o", code.clone(), json!({"status": status}));
                o["subject"] = json!({"reference": subject});
                let want = each.iter().any(|f| f.matches(&o));
                assert_eq!(set.matches(obs, &o), want, "{subject} {code} {status}");
            }
        }
    }
}

#[test]
fn a_hundred_thousand_codes_are_one_lookup() {
    let codes: Vec<String> = (0..100_000).map(|i| format!("c{i}")).collect();
    let query = format!("Observation?code={}", codes.join(","));
    let set =
        TypeFilterSet::compile(&[TypeFilter::parse(&query).expect("parse")]).expect("compile");
    let obs = ResourceType::parse("Observation").expect("type");
    let hit = observation("h", json!({"coding": [{"code": "c99999"}]}), json!({}));
    let miss = observation("m", json!({"coding": [{"code": "d1"}]}), json!({}));
    // Not a timing test: the answers, over a set this size.
    assert!(set.matches(obs, &hit));
    assert!(!set.matches(obs, &miss));
    assert_eq!(
        filter_values(&TypeFilter::parse(&query).expect("parse")),
        100_000
    );
}

#[test]
fn unsupported_and_invalid_are_told_apart() {
    let unsupported = |q: &str, param: &str| match error(q) {
        FilterError::Unsupported { param: p, reason } => {
            assert_eq!(p, param, "{q}");
            assert!(!reason.is_empty());
        }
        e => panic!("{q}: expected Unsupported, got {e:?}"),
    };
    unsupported("Observation?foo=bar", "foo");
    unsupported("Observation?subject.name=peter", "subject.name");
    unsupported(
        "Observation?subject:Patient.name=peter",
        "subject:Patient.name",
    );
    unsupported(
        "Patient?_has:Observation:patient:code=1234",
        "_has:Observation:patient:code",
    );
    unsupported(
        "Observation?code-value-quantity=http://loinc.org|8867-4$gt60",
        "code-value-quantity",
    );
    unsupported("Patient?email=a@example.org", "email");
    unsupported("Patient?phone=555", "phone");
    unsupported("Patient?deceased=true", "deceased");
    unsupported("Patient?_text=cough", "_text");
    unsupported("Patient?_content=cough", "_content");
    unsupported("Patient?_list=l1", "_list");
    unsupported("Observation?code:in=http://example.org/vs", "code:in");
    unsupported("Observation?code:below=1234", "code:below");
    unsupported(
        "Observation?subject:identifier=urn:oid:1|1",
        "subject:identifier",
    );
    unsupported("Observation?date:exact=2020", "date:exact");
    unsupported("Patient?name:text=bob", "name:text");
    unsupported("Observation?subject:Nope=1", "subject:Nope");
    unsupported("Bundle?_text=x", "_text");

    let invalid = |q: &str, param: &str| match error(q) {
        FilterError::Invalid { param: p, reason } => {
            assert_eq!(p, param, "{q}");
            assert!(!reason.is_empty());
        }
        e => panic!("{q}: expected Invalid, got {e:?}"),
    };
    invalid("Observation?date=2020-13-01", "date");
    invalid("Observation?date=yesterday", "date");
    invalid("Observation?date=xx2020", "date");
    invalid("Observation?date=2020,", "date");
    invalid("Observation?value-quantity=five", "value-quantity");
    invalid("Observation?value-quantity=5|mg", "value-quantity");
    invalid("Observation?value-quantity=zz5", "value-quantity");
    invalid("RiskAssessment?probability=0.1.2", "probability");
    invalid("Observation?code=a|b|c", "code");
    invalid("Observation?subject=Foo/123", "subject");
    invalid("Observation?subject=two words", "subject");
    invalid("Observation?subject:Patient=Group/1", "subject:Patient");
    invalid("Observation?code:missing=maybe", "code:missing");
    // Invalid wins over Unsupported, whatever the order.
    invalid("Observation?foo=bar&date=2020-13", "date");

    let e = error("Observation?foo=bar");
    assert!(!e.is_invalid());
    assert_eq!(e.param(), "foo");
    assert!(e.to_string().contains("`foo`"), "{e}");
}

#[test]
fn lenient_compilation_drops_only_unsupported_parameters() {
    let f = TypeFilter::parse("Observation?foo=bar&status=final&code:in=http://x").expect("parse");
    let (compiled, skipped) = CompiledFilter::compile_lenient(&f).expect("lenient");
    assert_eq!(
        skipped.iter().map(FilterError::param).collect::<Vec<_>>(),
        ["foo", "code:in"]
    );
    let final_obs = observation("a", loinc("1", "x"), json!({}));
    let prelim = observation("b", loinc("1", "x"), json!({"status": "preliminary"}));
    assert!(compiled.matches(&final_obs));
    assert!(!compiled.matches(&prelim));
    let bad = TypeFilter::parse("Observation?foo=bar&date=2020-13").expect("parse");
    assert!(CompiledFilter::compile_lenient(&bad).is_err_and(|e| e.is_invalid()));

    let filters = [
        TypeFilter::parse("Observation?status=preliminary").expect("parse"),
        TypeFilter::parse("Observation?foo=1").expect("parse"),
    ];
    let (set, skipped) = TypeFilterSet::compile_lenient(&filters).expect("lenient");
    assert_eq!(skipped.len(), 1);
    // The second filter lost its only parameter, so it keeps every Observation.
    let obs = ResourceType::parse("Observation").expect("type");
    assert!(set.matches(obs, &final_obs));
}

/// A value for a parameter of each type that any evaluable parameter must accept.
fn sample_value(kind: SearchParamType) -> &'static str {
    match kind {
        SearchParamType::Token => "http://example.org|x",
        SearchParamType::Reference => "Patient/1",
        SearchParamType::Date => "ge2020-01-01",
        SearchParamType::String => "abc",
        SearchParamType::Quantity => "5.4|http://unitsofmeasure.org|mg",
        SearchParamType::Number => "gt5",
        SearchParamType::Uri => "http://example.org/x",
        SearchParamType::Composite | SearchParamType::Special => "x",
    }
}

/// Every parameter of every resource type is either marked unsupported, with a reason, or
/// evaluable: it compiles, its paths start at root elements of the type, and at least one of
/// them ends at a datatype the evaluator compares for the parameter's type.
#[test]
fn every_table_parameter_is_evaluable_or_marked() {
    let mut evaluable = 0;
    for ty in R4_RESOURCE_TYPES {
        for def in crate::fhir_defs::search_params(ty) {
            let query = format!("{ty}?{}={}", def.code, sample_value(def.kind));
            let filter = TypeFilter::parse(&query).unwrap_or_else(|e| panic!("{query}: {e}"));
            let compiled = CompiledFilter::compile(&filter);
            if let Some(reason) = def.unsupported {
                assert!(!reason.is_empty(), "{ty}.{}", def.code);
                assert!(
                    matches!(&compiled, Err(FilterError::Unsupported { reason: r, .. }) if r.contains(reason)),
                    "{query}: {compiled:?}"
                );
                continue;
            }
            assert!(compiled.is_ok(), "{query}: {compiled:?}");
            assert!(
                def.paths
                    .iter()
                    .any(|p| Datatype::of(def.kind, p.datatype) != Datatype::Other),
                "{ty}.{}: no comparable path",
                def.code
            );
            for p in def.paths {
                let first = p.path.split('.').next().unwrap_or_default();
                let (el, choice) = crate::fhir_defs::element_for_json_key(ty, first)
                    .unwrap_or_else(|| panic!("{ty}.{}: {} is not an element", def.code, p.path));
                if !p.path.contains('.') {
                    let ty_of_el = choice.unwrap_or(el.types[0]);
                    assert_eq!(ty_of_el, p.datatype, "{ty}.{}: {}", def.code, p.path);
                }
            }
            // An empty resource of the type matches no comparison, and is missing everything.
            let empty = json!({"resourceType": ty, "id": "x"});
            if !matches!(def.code, "_id") {
                assert!(
                    compiled.is_ok_and(|c| !c.matches(&empty)),
                    "{query} matched an empty resource"
                );
            }
            let missing = format!("{ty}?{}:missing=true", def.code);
            let m = CompiledFilter::compile(&TypeFilter::parse(&missing).expect("parse"))
                .unwrap_or_else(|e| panic!("{missing}: {e}"));
            assert_eq!(m.matches(&empty), def.code != "_id", "{missing}");
            evaluable += 1;
        }
    }
    assert!(evaluable > 1000, "{evaluable}");
}

#[test]
fn an_indexed_or_list_answers_as_trying_every_filter() {
    // Forty filters that cannot be merged (each ANDs a second parameter), with codes alone,
    // with systems, `system|` (any code of a system), and some with no code at all.
    let codes = [
        "a",
        "b",
        "c",
        "d",
        "http://loinc.org|a",
        "http://x|b",
        "http://loinc.org|",
        "|c",
    ];
    let statuses = ["final", "amended", "preliminary"];
    let mut queries = Vec::new();
    for i in 0..40 {
        let q = if i % 9 == 8 {
            format!("Observation?status={}", statuses[i % 3])
        } else {
            format!(
                "Observation?code={}&status={}",
                codes[i % codes.len()],
                statuses[(i / 3) % 3]
            )
        };
        queries.push(q);
    }
    let filters: Vec<TypeFilter> = queries
        .iter()
        .map(|q| TypeFilter::parse(q).expect("parse"))
        .collect();
    let set = TypeFilterSet::compile(&filters).expect("compile");
    let each: Vec<CompiledFilter> = queries.iter().map(|q| filter(q)).collect();
    let obs = ResourceType::parse("Observation").expect("type");
    let code_values = [
        json!({"coding": [{"system": "http://loinc.org", "code": "a"}]}),
        json!({"coding": [{"system": "http://x", "code": "b"}, {"code": "z"}]}),
        json!({"coding": [{"code": "c"}]}),
        json!({"coding": [{"system": "http://loinc.org", "code": "zz"}]}),
        json!({"coding": [{"system": "http://other", "code": "d"}]}),
        json!({"text": "no coding"}),
    ];
    let mut checked = 0;
    for code in &code_values {
        for status in ["final", "amended", "preliminary", "cancelled"] {
            let o = observation("o", code.clone(), json!({"status": status}));
            let want = each.iter().any(|f| f.matches(&o));
            assert_eq!(set.matches(obs, &o), want, "{code} {status}");
            checked += usize::from(want);
        }
    }
    assert!(checked > 5, "the cases match something");
}
