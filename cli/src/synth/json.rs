//! Ids, references and the JSON fragments every resource shares, written straight into the
//! line buffer.

use std::fmt;
use std::io::{self, Write};

use super::RESOURCE_TYPES;
use super::rng::Rng;
use super::time::{LAST_UPDATED_FROM, LAST_UPDATED_UNTIL, Precision, Ts, UTC};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Kind {
    Patient,
    Encounter,
    Observation,
    Condition,
    MedicationRequest,
    Procedure,
    Immunization,
    AllergyIntolerance,
    DiagnosticReport,
    Provenance,
    Practitioner,
    Organization,
    Group,
}

impl Kind {
    /// The types written per patient; their position is their index in the writers of a block.
    pub(super) const PER_PATIENT: [Kind; 10] = [
        Kind::Patient,
        Kind::Encounter,
        Kind::Observation,
        Kind::Condition,
        Kind::MedicationRequest,
        Kind::Procedure,
        Kind::Immunization,
        Kind::AllergyIntolerance,
        Kind::DiagnosticReport,
        Kind::Provenance,
    ];

    pub(super) fn name(self) -> &'static str {
        RESOURCE_TYPES[self as usize]
    }

    pub(super) fn prefix(self) -> &'static str {
        match self {
            Kind::Patient => "pat",
            Kind::Encounter => "enc",
            Kind::Observation => "obs",
            Kind::Condition => "cond",
            Kind::MedicationRequest => "medrx",
            Kind::Procedure => "proc",
            Kind::Immunization => "imm",
            Kind::AllergyIntolerance => "alg",
            Kind::DiagnosticReport => "dr",
            Kind::Provenance => "prov",
            Kind::Practitioner => "prac",
            Kind::Organization => "org",
            Kind::Group => "group",
        }
    }
}

/// `(kind, number, index within the patient)`; the index is ignored for the kinds that are not
/// per-patient sub-resources.
#[derive(Clone, Copy)]
pub(super) struct Id(pub(super) Kind, pub(super) u64, pub(super) u32);

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Id(kind, n, k) = *self;
        match kind {
            Kind::Patient | Kind::Practitioner | Kind::Organization | Kind::Group => {
                write!(f, "{}-{n:06}", kind.prefix())
            }
            Kind::Observation => write!(f, "{}-{n:06}-{k:03}", kind.prefix()),
            _ => write!(f, "{}-{n:06}-{k:02}", kind.prefix()),
        }
    }
}

/// `{"reference":"Type/id"}`.
pub(super) struct Ref(pub(super) Id);

impl fmt::Display for Ref {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{{\"reference\":\"{}/{}\"}}", self.0.0.name(), self.0)
    }
}

/// A Coding: `{"system":..,"code":..,"display":..}`.
pub(super) struct Coding<'a>(pub(super) &'a str, pub(super) &'a str, pub(super) &'a str);

impl fmt::Display for Coding<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Coding(system, code, display) = self;
        write!(
            f,
            "{{\"system\":\"{system}\",\"code\":\"{code}\",\"display\":\"{display}\"}}"
        )
    }
}

/// A CodeableConcept with one Coding and the display as text.
pub(super) struct Cc<'a>(pub(super) &'a str, pub(super) &'a str, pub(super) &'a str);

impl fmt::Display for Cc<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Cc(system, code, display) = *self;
        write!(
            f,
            "{{\"coding\":[{}],\"text\":\"{display}\"}}",
            Coding(system, code, display)
        )
    }
}

/// A decimal stored as an integer scaled by `10^decimals`, so values print with exactly that
/// many decimals and no float rounding noise.
pub(super) struct Decimal(pub(super) u64, pub(super) u32);

impl fmt::Display for Decimal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Decimal(v, decimals) = *self;
        if decimals == 0 {
            return write!(f, "{v}");
        }
        let scale = 10u64.pow(decimals);
        write!(f, "{}.{:0w$}", v / scale, v % scale, w = decimals as usize)
    }
}

// Every string spliced into the JSON below comes from the constants here and in `tables`, none
// of which holds a character JSON must escape; the tests parse every line to keep it that way.

pub(super) const US_CORE: &str = "http://hl7.org/fhir/us/core/StructureDefinition/";
pub(super) const TAG_SYNTHETIC: &str =
    r#"{"system":"http://example.org/tags","code":"synthetic","display":"Synthetic data"}"#;
pub(super) const TAG_RESEARCH: &str =
    r#"{"system":"http://example.org/tags","code":"research","display":"Research cohort"}"#;
pub(super) const SECURITY_R: &str = r#"{"system":"http://terminology.hl7.org/CodeSystem/v3-Confidentiality","code":"R","display":"restricted"}"#;

pub(super) const LOINC: &str = "http://loinc.org";
pub(super) const SNOMED: &str = "http://snomed.info/sct";
pub(super) const RXNORM: &str = "http://www.nlm.nih.gov/research/umls/rxnorm";
pub(super) const CVX: &str = "http://hl7.org/fhir/sid/cvx";
pub(super) const UCUM: &str = "http://unitsofmeasure.org";
pub(super) const NPI: &str = "http://hl7.org/fhir/sid/us-npi";
pub(super) const OBS_CATEGORY: &str = "http://terminology.hl7.org/CodeSystem/observation-category";
pub(super) const CONDITION_CLINICAL: &str =
    "http://terminology.hl7.org/CodeSystem/condition-clinical";
pub(super) const CONDITION_VERIFICATION: &str =
    "http://terminology.hl7.org/CodeSystem/condition-ver-status";
pub(super) const CONDITION_CATEGORY: &str =
    "http://terminology.hl7.org/CodeSystem/condition-category";
pub(super) const ALLERGY_CLINICAL: &str =
    "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical";
pub(super) const ALLERGY_VERIFICATION: &str =
    "http://terminology.hl7.org/CodeSystem/allergyintolerance-verification";
pub(super) const ACT_CODE: &str = "http://terminology.hl7.org/CodeSystem/v3-ActCode";

/// `{"resourceType":"T","id":"..",` — the fields every resource starts with, before `meta`.
pub(super) fn head(b: &mut Vec<u8>, id: Id) -> io::Result<()> {
    write!(b, "{{\"resourceType\":\"{}\",\"id\":\"{id}\",", id.0.name())
}

/// `"meta":{..}` with a uniform lastUpdated, the optional US Core profile and security label,
/// and the tags.
pub(super) fn meta(
    b: &mut Vec<u8>,
    rng: &mut Rng,
    profile: Option<&str>,
    restricted: bool,
) -> io::Result<()> {
    let at = rng.seconds_in(LAST_UPDATED_FROM, LAST_UPDATED_UNTIL) + rng.below(1000) as i64;
    write!(
        b,
        "\"meta\":{{\"lastUpdated\":\"{}\"",
        Ts(at, UTC, Precision::Millis)
    )?;
    if let Some(profile) = profile {
        write!(b, ",\"profile\":[\"{US_CORE}{profile}\"]")?;
    }
    if restricted {
        write!(b, ",\"security\":[{SECURITY_R}]")?;
    }
    write!(b, ",\"tag\":[{TAG_SYNTHETIC}")?;
    if rng.percent(10) {
        write!(b, ",{TAG_RESEARCH}")?;
    }
    b.extend_from_slice(b"]}");
    Ok(())
}
