//! One patient and everything that belongs to it, from that patient's own random stream.

use std::io::{self, Write};

use super::json::{
    ACT_CODE, ALLERGY_CLINICAL, ALLERGY_VERIFICATION, CONDITION_CATEGORY, CONDITION_CLINICAL,
    CONDITION_VERIFICATION, CVX, Cc, Coding, Decimal, Id, Kind, LOINC, OBS_CATEGORY, RXNORM, Ref,
    SNOMED, UCUM, US_CORE, head, meta,
};
use super::providers::{address, person_name, pick_city};
use super::rng::{PATIENT_STREAM, Rng};
use super::tables::{
    ALLERGIES, CLASSES, CONDITIONS, City, Class, DOSAGES, GENDERS, Gender, LANGUAGES, MARITAL,
    MEDICATIONS, OBSERVATIONS, ObsValue, PANELS, PROCEDURES, SMOKING, VACCINES,
};
use super::time::{
    BIRTH_FIRST_DAY, BIRTH_LAST_DAY, CLINICAL_FROM, CLINICAL_UNTIL, DAY, HOUR, LAST_UPDATED_FROM,
    LAST_UPDATED_UNTIL, MINUTE, Precision, Ts, UTC, Zone,
};
use super::{Out, Plan, is_shared_observation, shared_observation_partner};

#[derive(Clone, Copy)]
struct Enc {
    start: i64,
    end: i64,
    class: Class,
    practitioner: u64,
}

/// One patient's state while its resources are written: what later resources refer to.
struct Cx<'p> {
    plan: &'p Plan,
    i: u64,
    rng: Rng,
    zone: Zone,
    gp: u64,
    org: u64,
    encs: Vec<Enc>,
    /// The encounter of each observation.
    obs_enc: Vec<u32>,
    conditions: u32,
}

impl Cx<'_> {
    fn patient_ref(&self) -> Ref {
        Ref(Id(Kind::Patient, self.i, 0))
    }

    fn sub(&self, kind: Kind, k: u32) -> Ref {
        Ref(Id(kind, self.i, k))
    }

    fn pick_encounter(&mut self) -> u32 {
        self.rng.index(self.encs.len()) as u32
    }

    fn profile(&mut self, profile: &'static str) -> Option<&'static str> {
        self.rng.percent(80).then_some(profile)
    }

    fn at(&self, ms: i64, precision: Precision) -> Ts {
        Ts(ms, self.zone, precision)
    }
}

pub(super) fn patient_resources(
    plan: &Plan,
    i: u64,
    outs: &mut [Out],
    b: &mut Vec<u8>,
) -> io::Result<()> {
    let mut rng = Rng::stream(plan.seed, PATIENT_STREAM, i);
    // Counts first, so that references to later resources can be chosen while writing
    // earlier ones.
    let encounters = 1 + rng.below(9) as u32;
    let observations = rng.below(41) as u32;
    let conditions = rng.below(7) as u32;
    let medications = rng.below(7) as u32;
    let procedures = rng.below(5) as u32;
    let immunizations = rng.below(7) as u32;
    let allergies = (0..3).filter(|_| rng.percent(10)).count() as u32;
    let reports = if observations > 0 {
        rng.below(5) as u32
    } else {
        0
    };
    let provenances = rng.below(3) as u32;

    let gender = rng.weighted(GENDERS);
    let birth_day =
        BIRTH_FIRST_DAY + rng.below((BIRTH_LAST_DAY - BIRTH_FIRST_DAY + 1) as u64) as i64;
    let city = pick_city(&mut rng);
    let gp = rng.below(plan.practitioners);
    let org = rng.below(plan.organizations);

    let first_day = (CLINICAL_FROM / DAY).max(birth_day + 1);
    let days = (CLINICAL_UNTIL / DAY - first_day) as u64;
    let mut encs: Vec<Enc> = (0..encounters)
        .map(|_| {
            let class = rng.weighted(CLASSES);
            // Local midnight of a day in the window, then office hours for ambulatory visits.
            let midnight = (first_day + rng.below(days) as i64) * DAY - city.zone.minutes * MINUTE;
            let minute = match class {
                Class::Ambulatory => 7 * 60 + rng.below(12 * 60),
                Class::Emergency | Class::Inpatient => rng.below(24 * 60),
            };
            let start = midnight + minute as i64 * MINUTE;
            let (shortest, longest) = class.duration();
            let end = start + rng.seconds_in(shortest, longest);
            let practitioner = if rng.percent(70) {
                gp
            } else {
                rng.below(plan.practitioners)
            };
            Enc {
                start,
                end,
                class,
                practitioner,
            }
        })
        .collect();
    // Chronological, so that enc-..-00 is the first visit.
    encs.sort_by_key(|e| e.start);
    let obs_enc = (0..observations)
        .map(|_| rng.below(u64::from(encounters)) as u32)
        .collect();

    let mut cx = Cx {
        plan,
        i,
        rng,
        zone: city.zone,
        gp,
        org,
        encs,
        obs_enc,
        conditions,
    };

    patient(&mut cx, gender, birth_day, city, b)?;
    outs[Kind::Patient as usize].line(b)?;
    for k in 0..encounters {
        encounter(&mut cx, k, b)?;
        outs[Kind::Encounter as usize].line(b)?;
    }
    for k in 0..observations {
        observation(&mut cx, k, b)?;
        outs[Kind::Observation as usize].line(b)?;
    }
    for k in 0..conditions {
        condition(&mut cx, k, b)?;
        outs[Kind::Condition as usize].line(b)?;
    }
    for k in 0..medications {
        medication_request(&mut cx, k, b)?;
        outs[Kind::MedicationRequest as usize].line(b)?;
    }
    for k in 0..procedures {
        procedure(&mut cx, k, b)?;
        outs[Kind::Procedure as usize].line(b)?;
    }
    for k in 0..immunizations {
        immunization(&mut cx, k, b)?;
        outs[Kind::Immunization as usize].line(b)?;
    }
    for k in 0..allergies {
        allergy(&mut cx, k, b)?;
        outs[Kind::AllergyIntolerance as usize].line(b)?;
    }
    for k in 0..reports {
        report(&mut cx, k, b)?;
        outs[Kind::DiagnosticReport as usize].line(b)?;
    }
    for k in 0..provenances {
        provenance(&mut cx, k, b)?;
        outs[Kind::Provenance as usize].line(b)?;
    }
    Ok(())
}

fn patient(
    cx: &mut Cx<'_>,
    gender: Gender,
    birth_day: i64,
    city: &City,
    b: &mut Vec<u8>,
) -> io::Result<()> {
    let rng = &mut cx.rng;
    head(b, Id(Kind::Patient, cx.i, 0))?;
    meta(b, rng, Some("us-core-patient"), false)?;
    if let Some(sex) = match gender {
        Gender::Male => Some("M"),
        Gender::Female => Some("F"),
        Gender::Other | Gender::Unknown => None,
    } {
        write!(
            b,
            ",\"extension\":[{{\"url\":\"{US_CORE}us-core-birthsex\",\"valueCode\":\"{sex}\"}}]"
        )?;
    }
    write!(
        b,
        ",\"identifier\":[{{\"use\":\"usual\",\"type\":{},\"system\":\"http://example.org/fhir/sid/mrn\",\"value\":\"MRN-{:08}\"}},{{\"type\":{},\"system\":\"http://hl7.org/fhir/sid/us-ssn\",\"value\":\"999-{:02}-{:04}\"}}],\"active\":{},",
        Cc(
            "http://terminology.hl7.org/CodeSystem/v2-0203",
            "MR",
            "Medical Record Number"
        ),
        cx.i,
        Cc(
            "http://terminology.hl7.org/CodeSystem/v2-0203",
            "SS",
            "Social Security number"
        ),
        rng.below(100),
        rng.below(10_000),
        rng.percent(90)
    )?;
    let prefix = match gender {
        Gender::Male => Some("Mr."),
        Gender::Female => Some("Ms."),
        Gender::Other | Gender::Unknown => None,
    };
    person_name(b, rng, gender, prefix)?;
    write!(
        b,
        ",\"telecom\":[{{\"system\":\"phone\",\"value\":\"555-{:03}-{:04}\",\"use\":\"home\"}}],\"gender\":\"{}\",\"birthDate\":\"{}\",",
        rng.below(1000),
        rng.below(10_000),
        gender.code(),
        Ts(birth_day * DAY, UTC, Precision::Date)
    )?;
    address(b, rng, city, "home")?;
    let (marital, marital_display) = *rng.pick(MARITAL);
    let (language, language_display) = *rng.pick(LANGUAGES);
    write!(
        b,
        ",\"maritalStatus\":{},\"communication\":[{{\"language\":{}}}],\"generalPractitioner\":[{}],\"managingOrganization\":{}}}",
        Cc(
            "http://terminology.hl7.org/CodeSystem/v3-MaritalStatus",
            marital,
            marital_display
        ),
        Cc("urn:ietf:bcp:47", language, language_display),
        Ref(Id(Kind::Practitioner, cx.gp, 0)),
        Ref(Id(Kind::Organization, cx.org, 0)),
    )
}

fn encounter(cx: &mut Cx<'_>, k: u32, b: &mut Vec<u8>) -> io::Result<()> {
    let enc = cx.encs[k as usize];
    let status = cx
        .rng
        .weighted(&[("finished", 95), ("in-progress", 3), ("cancelled", 2)]);
    let profile = cx.profile("us-core-encounter");
    head(b, Id(Kind::Encounter, cx.i, k))?;
    meta(b, &mut cx.rng, profile, false)?;
    let (class, class_display) = enc.class.coding();
    let (ty, ty_display) = *cx.rng.pick(enc.class.types());
    write!(
        b,
        ",\"status\":\"{status}\",\"class\":{},\"type\":[{}],\"subject\":{},",
        Coding(ACT_CODE, class, class_display),
        Cc(SNOMED, ty, ty_display),
        cx.patient_ref()
    )?;
    let start = cx.at(enc.start, Precision::Seconds);
    let end = cx.at(enc.end, Precision::Seconds);
    let period = |b: &mut Vec<u8>| -> io::Result<()> {
        if status == "in-progress" {
            write!(b, "\"period\":{{\"start\":\"{start}\"}}")
        } else {
            write!(b, "\"period\":{{\"start\":\"{start}\",\"end\":\"{end}\"}}")
        }
    };
    write!(
        b,
        "\"participant\":[{{\"type\":[{}],",
        Cc(
            "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
            "PPRF",
            "primary performer"
        )
    )?;
    period(b)?;
    write!(
        b,
        ",\"individual\":{}}}],",
        Ref(Id(Kind::Practitioner, enc.practitioner, 0))
    )?;
    period(b)?;
    write!(
        b,
        ",\"serviceProvider\":{}}}",
        Ref(Id(Kind::Organization, cx.org, 0))
    )
}

fn observation(cx: &mut Cx<'_>, k: u32, b: &mut Vec<u8>) -> io::Result<()> {
    let e = cx.obs_enc[k as usize];
    let enc = cx.encs[e as usize];
    let kind = cx.rng.pick(OBSERVATIONS);
    let status = cx.rng.weighted(&[
        ("final", 90),
        ("amended", 5),
        ("preliminary", 3),
        ("cancelled", 2),
    ]);
    let profile = cx.profile(kind.profile);
    head(b, Id(Kind::Observation, cx.i, k))?;
    meta(b, &mut cx.rng, profile, false)?;
    let (category, category_display) = kind.category.coding();
    write!(
        b,
        ",\"status\":\"{status}\",\"category\":[{}],\"code\":{},\"subject\":{},\"encounter\":{},",
        Cc(OBS_CATEGORY, category, category_display),
        Cc(LOINC, kind.code, kind.display),
        cx.patient_ref(),
        cx.sub(Kind::Encounter, e),
    )?;
    let effective = enc.start + cx.rng.seconds_in(0, HOUR);
    let precision = if cx.rng.percent(10) {
        Precision::Date
    } else {
        Precision::Seconds
    };
    let issued = effective + cx.rng.seconds_in(0, 6 * HOUR) + cx.rng.below(1000) as i64;
    write!(
        b,
        "\"effectiveDateTime\":\"{}\",\"issued\":\"{}\",\"performer\":[{}",
        cx.at(effective, precision),
        cx.at(issued, Precision::Millis),
        Ref(Id(Kind::Practitioner, enc.practitioner, 0))
    )?;
    if is_shared_observation(cx.i, k)
        && let Some(other) = shared_observation_partner(cx.i, cx.plan.patients)
    {
        write!(b, ",{}", Ref(Id(Kind::Patient, other, 0)))?;
    }
    b.push(b']');
    if status == "cancelled" {
        write!(
            b,
            ",\"dataAbsentReason\":{}}}",
            Cc(
                "http://terminology.hl7.org/CodeSystem/data-absent-reason",
                "not-performed",
                "Not Performed"
            )
        )?;
        return Ok(());
    }
    match kind.value {
        ObsValue::Quantity {
            unit,
            ucum,
            lo,
            hi,
            decimals,
            normal,
        } => {
            let value = Decimal(lo + cx.rng.below(hi - lo + 1), decimals);
            write!(
                b,
                ",\"valueQuantity\":{{\"value\":{value},\"unit\":\"{unit}\",\"system\":\"{UCUM}\",\"code\":\"{ucum}\"}}"
            )?;
            if let Some((low, high)) = normal {
                write!(
                    b,
                    ",\"referenceRange\":[{{\"low\":{{\"value\":{low},\"unit\":\"{unit}\",\"system\":\"{UCUM}\",\"code\":\"{ucum}\"}},\"high\":{{\"value\":{high},\"unit\":\"{unit}\",\"system\":\"{UCUM}\",\"code\":\"{ucum}\"}}}}]"
                )?;
            }
        }
        ObsValue::Smoking => {
            let (code, display) = *cx.rng.pick(SMOKING);
            write!(b, ",\"valueCodeableConcept\":{}", Cc(SNOMED, code, display))?;
        }
    }
    b.push(b'}');
    Ok(())
}

fn condition(cx: &mut Cx<'_>, k: u32, b: &mut Vec<u8>) -> io::Result<()> {
    let e = cx.pick_encounter();
    let enc = cx.encs[e as usize];
    let (category, category_display, profile) = if cx.rng.percent(60) {
        (
            "encounter-diagnosis",
            "Encounter Diagnosis",
            "us-core-condition-encounter-diagnosis",
        )
    } else {
        (
            "problem-list-item",
            "Problem List Item",
            "us-core-condition-problems-health-concerns",
        )
    };
    let profile = cx.profile(profile);
    let restricted = cx.rng.percent(5);
    head(b, Id(Kind::Condition, cx.i, k))?;
    meta(b, &mut cx.rng, profile, restricted)?;
    let (clinical, clinical_display) = cx.rng.weighted(&[
        (("active", "Active"), 50),
        (("resolved", "Resolved"), 35),
        (("inactive", "Inactive"), 8),
        (("recurrence", "Recurrence"), 4),
        (("remission", "Remission"), 3),
    ]);
    let (verification, verification_display) = cx.rng.weighted(&[
        (("confirmed", "Confirmed"), 85),
        (("provisional", "Provisional"), 8),
        (("unconfirmed", "Unconfirmed"), 4),
        (("differential", "Differential"), 3),
    ]);
    let (code, display) = *cx.rng.pick(CONDITIONS);
    write!(
        b,
        ",\"clinicalStatus\":{},\"verificationStatus\":{},\"category\":[{}],\"code\":{},\"subject\":{},\"encounter\":{},\"onsetDateTime\":\"{}\"",
        Cc(CONDITION_CLINICAL, clinical, clinical_display),
        Cc(CONDITION_VERIFICATION, verification, verification_display),
        Cc(CONDITION_CATEGORY, category, category_display),
        Cc(SNOMED, code, display),
        cx.patient_ref(),
        cx.sub(Kind::Encounter, e),
        cx.at(enc.start, Precision::Seconds),
    )?;
    if matches!(clinical, "resolved" | "inactive" | "remission") {
        let abated = (enc.start + cx.rng.seconds_in(5 * DAY, 60 * DAY)).min(CLINICAL_UNTIL);
        write!(
            b,
            ",\"abatementDateTime\":\"{}\"",
            cx.at(abated.max(enc.start), Precision::Seconds)
        )?;
    }
    write!(
        b,
        ",\"recordedDate\":\"{}\"}}",
        cx.at(enc.start, Precision::Date)
    )
}

fn medication_request(cx: &mut Cx<'_>, k: u32, b: &mut Vec<u8>) -> io::Result<()> {
    let e = cx.pick_encounter();
    let enc = cx.encs[e as usize];
    let status = cx
        .rng
        .weighted(&[("active", 40), ("completed", 45), ("stopped", 15)]);
    let profile = cx.profile("us-core-medicationrequest");
    head(b, Id(Kind::MedicationRequest, cx.i, k))?;
    meta(b, &mut cx.rng, profile, false)?;
    let (code, display) = *cx.rng.pick(MEDICATIONS);
    write!(
        b,
        ",\"status\":\"{status}\",\"intent\":\"order\",\"medicationCodeableConcept\":{},\"subject\":{},\"encounter\":{},\"authoredOn\":\"{}\",\"requester\":{}",
        Cc(RXNORM, code, display),
        cx.patient_ref(),
        cx.sub(Kind::Encounter, e),
        cx.at(enc.start, Precision::Seconds),
        Ref(Id(Kind::Practitioner, enc.practitioner, 0)),
    )?;
    if cx.conditions > 0 && cx.rng.percent(30) {
        let c = cx.rng.index(cx.conditions as usize) as u32;
        write!(b, ",\"reasonReference\":[{}]", cx.sub(Kind::Condition, c))?;
    }
    let (text, frequency) = *cx.rng.pick(DOSAGES);
    write!(
        b,
        ",\"dosageInstruction\":[{{\"sequence\":1,\"text\":\"{text}\",\"timing\":{{\"repeat\":{{\"frequency\":{frequency},\"period\":1,\"periodUnit\":\"d\"}}}},\"doseAndRate\":[{{\"doseQuantity\":{{\"value\":1,\"unit\":\"tablet\",\"system\":\"{UCUM}\",\"code\":\"{{tbl}}\"}}}}]}}]}}"
    )
}

fn procedure(cx: &mut Cx<'_>, k: u32, b: &mut Vec<u8>) -> io::Result<()> {
    let e = cx.pick_encounter();
    let enc = cx.encs[e as usize];
    let status = cx
        .rng
        .weighted(&[("completed", 90), ("in-progress", 5), ("stopped", 5)]);
    let profile = cx.profile("us-core-procedure");
    head(b, Id(Kind::Procedure, cx.i, k))?;
    meta(b, &mut cx.rng, profile, false)?;
    let (code, display) = *cx.rng.pick(PROCEDURES);
    write!(
        b,
        ",\"status\":\"{status}\",\"code\":{},\"subject\":{},\"encounter\":{},",
        Cc(SNOMED, code, display),
        cx.patient_ref(),
        cx.sub(Kind::Encounter, e),
    )?;
    let start = enc.start + cx.rng.seconds_in(0, 30 * MINUTE);
    if cx.rng.percent(50) {
        write!(
            b,
            "\"performedDateTime\":\"{}\"",
            cx.at(start, Precision::Seconds)
        )?;
    } else {
        let end = start + cx.rng.seconds_in(10 * MINUTE, 2 * HOUR);
        write!(
            b,
            "\"performedPeriod\":{{\"start\":\"{}\",\"end\":\"{}\"}}",
            cx.at(start, Precision::Seconds),
            cx.at(end, Precision::Seconds)
        )?;
    }
    write!(
        b,
        ",\"performer\":[{{\"actor\":{}}}]",
        Ref(Id(Kind::Practitioner, enc.practitioner, 0))
    )?;
    if cx.conditions > 0 && cx.rng.percent(30) {
        let c = cx.rng.index(cx.conditions as usize) as u32;
        write!(b, ",\"reasonReference\":[{}]", cx.sub(Kind::Condition, c))?;
    }
    b.push(b'}');
    Ok(())
}

fn immunization(cx: &mut Cx<'_>, k: u32, b: &mut Vec<u8>) -> io::Result<()> {
    let e = cx.pick_encounter();
    let enc = cx.encs[e as usize];
    let done = cx.rng.percent(95);
    let profile = cx.profile("us-core-immunization");
    head(b, Id(Kind::Immunization, cx.i, k))?;
    meta(b, &mut cx.rng, profile, false)?;
    let (code, display) = *cx.rng.pick(VACCINES);
    write!(
        b,
        ",\"status\":\"{}\"",
        if done { "completed" } else { "not-done" }
    )?;
    if !done {
        write!(
            b,
            ",\"statusReason\":{}",
            Cc(
                "http://terminology.hl7.org/CodeSystem/v3-ActReason",
                "PATOBJ",
                "patient objection"
            )
        )?;
    }
    write!(
        b,
        ",\"vaccineCode\":{},\"patient\":{},\"encounter\":{},\"occurrenceDateTime\":\"{}\",\"primarySource\":true,\"lotNumber\":\"LOT{:06}\",\"performer\":[{{\"actor\":{}}}]}}",
        Cc(CVX, code, display),
        cx.patient_ref(),
        cx.sub(Kind::Encounter, e),
        cx.at(enc.start, Precision::Seconds),
        cx.rng.below(1_000_000),
        Ref(Id(Kind::Practitioner, enc.practitioner, 0)),
    )
}

fn allergy(cx: &mut Cx<'_>, k: u32, b: &mut Vec<u8>) -> io::Result<()> {
    let e = cx.pick_encounter();
    let enc = cx.encs[e as usize];
    let profile = cx.profile("us-core-allergyintolerance");
    head(b, Id(Kind::AllergyIntolerance, cx.i, k))?;
    meta(b, &mut cx.rng, profile, false)?;
    let (clinical, clinical_display) = cx.rng.weighted(&[
        (("active", "Active"), 80),
        (("inactive", "Inactive"), 10),
        (("resolved", "Resolved"), 10),
    ]);
    let (verification, verification_display) = cx.rng.weighted(&[
        (("confirmed", "Confirmed"), 85),
        (("unconfirmed", "Unconfirmed"), 15),
    ]);
    let ty = if cx.rng.percent(85) {
        "allergy"
    } else {
        "intolerance"
    };
    let criticality = cx
        .rng
        .weighted(&[("low", 60), ("high", 30), ("unable-to-assess", 10)]);
    let (code, display, category) = *cx.rng.pick(ALLERGIES);
    write!(
        b,
        ",\"clinicalStatus\":{},\"verificationStatus\":{},\"type\":\"{ty}\",\"category\":[\"{category}\"],\"criticality\":\"{criticality}\",\"code\":{},\"patient\":{},\"recordedDate\":\"{}\",\"recorder\":{}}}",
        Cc(ALLERGY_CLINICAL, clinical, clinical_display),
        Cc(ALLERGY_VERIFICATION, verification, verification_display),
        Cc(SNOMED, code, display),
        cx.patient_ref(),
        cx.at(enc.start, Precision::Seconds),
        Ref(Id(Kind::Practitioner, cx.gp, 0)),
    )
}

fn report(cx: &mut Cx<'_>, k: u32, b: &mut Vec<u8>) -> io::Result<()> {
    // Report on the observations of one encounter, found through a random observation so the
    // encounter is one that has some.
    let first = cx.rng.index(cx.obs_enc.len());
    let e = cx.obs_enc[first];
    let enc = cx.encs[e as usize];
    let status = cx
        .rng
        .weighted(&[("final", 90), ("amended", 5), ("preliminary", 5)]);
    let profile = cx.profile("us-core-diagnosticreport-lab");
    head(b, Id(Kind::DiagnosticReport, cx.i, k))?;
    meta(b, &mut cx.rng, profile, false)?;
    let (code, display) = *cx.rng.pick(PANELS);
    let issued = enc.start + cx.rng.seconds_in(HOUR, 48 * HOUR) + cx.rng.below(1000) as i64;
    write!(
        b,
        ",\"status\":\"{status}\",\"category\":[{}],\"code\":{},\"subject\":{},\"encounter\":{},\"effectiveDateTime\":\"{}\",\"issued\":\"{}\",\"performer\":[{}],\"result\":[",
        Cc(
            "http://terminology.hl7.org/CodeSystem/v2-0074",
            "LAB",
            "Laboratory"
        ),
        Cc(LOINC, code, display),
        cx.patient_ref(),
        cx.sub(Kind::Encounter, e),
        cx.at(enc.start, Precision::Seconds),
        cx.at(issued, Precision::Millis),
        Ref(Id(Kind::Organization, cx.org, 0)),
    )?;
    let results = (0..cx.obs_enc.len())
        .filter(|j| cx.obs_enc[*j] == e)
        .take(6);
    for (n, j) in results.enumerate() {
        if n > 0 {
            b.push(b',');
        }
        write!(b, "{}", cx.sub(Kind::Observation, j as u32))?;
    }
    b.extend_from_slice(b"]}");
    Ok(())
}

fn provenance(cx: &mut Cx<'_>, k: u32, b: &mut Vec<u8>) -> io::Result<()> {
    let profile = cx.profile("us-core-provenance");
    head(b, Id(Kind::Provenance, cx.i, k))?;
    meta(b, &mut cx.rng, profile, false)?;
    let e = cx.pick_encounter();
    write!(
        b,
        ",\"target\":[{},{}",
        cx.patient_ref(),
        cx.sub(Kind::Encounter, e)
    )?;
    if !cx.obs_enc.is_empty() {
        let j = cx.rng.index(cx.obs_enc.len()) as u32;
        write!(b, ",{}", cx.sub(Kind::Observation, j))?;
    }
    if cx.conditions > 0 {
        let c = cx.rng.index(cx.conditions as usize) as u32;
        write!(b, ",{}", cx.sub(Kind::Condition, c))?;
    }
    let recorded =
        cx.rng.seconds_in(LAST_UPDATED_FROM, LAST_UPDATED_UNTIL) + cx.rng.below(1000) as i64;
    write!(
        b,
        "],\"recorded\":\"{}\",\"activity\":{},\"agent\":[{{\"type\":{},\"who\":{},\"onBehalfOf\":{}}}]}}",
        Ts(recorded, UTC, Precision::Millis),
        Cc(
            "http://terminology.hl7.org/CodeSystem/v3-DataOperation",
            "UPDATE",
            "revise"
        ),
        Cc(
            "http://terminology.hl7.org/CodeSystem/provenance-participant-type",
            "author",
            "Author"
        ),
        Ref(Id(Kind::Practitioner, cx.gp, 0)),
        Ref(Id(Kind::Organization, cx.org, 0)),
    )
}
