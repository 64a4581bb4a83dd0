//! The generator's contract, checked through its public API on small datasets.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeSet, HashMap, HashSet};
use std::io::Read;

use serde_json::Value;

use super::*;

fn run(opts: &GenOptions) -> (tempfile::TempDir, GenSummary) {
    let dir = tempfile::tempdir().unwrap();
    let summary = generate(opts, dir.path()).unwrap();
    (dir, summary)
}

fn opts(patients: u64) -> GenOptions {
    GenOptions {
        patients,
        ..GenOptions::default()
    }
}

/// The text of one type's single plain file.
fn text(dir: &Path, ty: &str) -> String {
    fs::read_to_string(dir.join(format!("{ty}.ndjson"))).unwrap()
}

/// Every resource of a plain single-file run, by type.
fn load(dir: &Path) -> BTreeMap<&'static str, Vec<Value>> {
    RESOURCE_TYPES
        .iter()
        .map(|ty| {
            let resources = text(dir, ty)
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect();
            (*ty, resources)
        })
        .collect()
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer).and_then(Value::as_str).unwrap()
}

fn references(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for (key, child) in map {
                match (key.as_str(), child) {
                    ("reference", Value::String(r)) => out.push(r.clone()),
                    _ => references(child, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|i| references(i, out)),
        _ => {}
    }
}

fn is_fhir_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'.')
}

/// FHIR date or dateTime with seconds and a zone; instants are the latter with millis.
fn is_date_or_date_time(s: &str) -> bool {
    if s.len() == 10 {
        chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").is_ok()
    } else {
        s.as_bytes().get(10) == Some(&b'T') && chrono::DateTime::parse_from_rfc3339(s).is_ok()
    }
}

fn is_last_updated(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 24
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            10 => *c == b'T',
            13 | 16 => *c == b':',
            19 => *c == b'.',
            23 => *c == b'Z',
            _ => c.is_ascii_digit(),
        })
        && chrono::DateTime::parse_from_rfc3339(s).is_ok()
}

#[test]
fn same_options_give_the_same_bytes_and_another_seed_does_not() {
    let o = GenOptions {
        patients: 25,
        seed: 7,
        ..GenOptions::default()
    };
    let (a, sa) = run(&o);
    let (b, sb) = run(&o);
    let (c, _) = run(&GenOptions {
        seed: 8,
        ..o.clone()
    });
    assert_eq!(sa.counts, sb.counts);
    assert_eq!(sa.bytes, sb.bytes);
    for ty in RESOURCE_TYPES {
        assert_eq!(text(a.path(), ty), text(b.path(), ty), "{ty}");
    }
    for ty in ["Patient", "Observation", "Encounter", "Practitioner"] {
        assert_ne!(text(a.path(), ty), text(c.path(), ty), "{ty}");
    }
}

#[test]
fn every_line_is_a_resource_of_its_file_type_with_a_unique_valid_id() {
    let (dir, summary) = run(&opts(60));
    for ty in RESOURCE_TYPES {
        let text = text(dir.path(), ty);
        assert!(text.is_empty() || text.ends_with('\n'), "{ty}");
        assert!(!text.contains("\n\n") && !text.contains('\r'), "{ty}");
        let mut ids = HashSet::new();
        for line in text.lines() {
            let prefix = format!("{{\"resourceType\":\"{ty}\",\"id\":\"");
            assert!(line.starts_with(&prefix), "{line}");
            let v: Value = serde_json::from_str(line).unwrap();
            assert_eq!(str_at(&v, "/resourceType"), ty);
            let id = str_at(&v, "/id");
            assert!(is_fhir_id(id), "{id}");
            assert!(ids.insert(id.to_owned()), "duplicate {ty}/{id}");
            assert!(line[prefix.len() + id.len()..].starts_with("\",\"meta\":{\"lastUpdated\":\""));
            let tags = v.pointer("/meta/tag").and_then(Value::as_array).unwrap();
            assert!(tags.iter().any(|t| t["code"] == "synthetic"));
        }
        assert_eq!(ids.len() as u64, summary.counts[ty], "{ty}");
    }
}

#[test]
fn every_reference_resolves_and_clinical_ones_stay_with_their_patient() {
    let (dir, _) = run(&opts(80));
    let all = load(dir.path());
    let mut known = HashSet::new();
    for (ty, resources) in &all {
        for r in resources {
            known.insert(format!("{ty}/{}", str_at(r, "/id")));
        }
    }
    let mut subject_of = HashMap::new();
    for (ty, resources) in &all {
        for r in resources {
            let patient = r.get("subject").or_else(|| r.get("patient"));
            if let Some(p) = patient {
                let id = format!("{ty}/{}", str_at(r, "/id"));
                subject_of.insert(id, str_at(p, "/reference").to_owned());
            }
        }
    }
    let mut total = 0;
    for (ty, resources) in &all {
        for r in resources {
            let mut refs = Vec::new();
            references(r, &mut refs);
            total += refs.len();
            for reference in &refs {
                assert!(
                    known.contains(reference),
                    "{ty}: {reference} does not resolve"
                );
            }
            let Some(subject) = r.get("subject").or_else(|| r.get("patient")) else {
                continue;
            };
            let subject = str_at(subject, "/reference");
            let mut same_patient = Vec::new();
            if let Some(e) = r.get("encounter") {
                same_patient.push(str_at(e, "/reference").to_owned());
            }
            for key in ["result", "reasonReference"] {
                for item in r.get(key).and_then(Value::as_array).into_iter().flatten() {
                    same_patient.push(str_at(item, "/reference").to_owned());
                }
            }
            for other in same_patient {
                assert_eq!(subject_of[&other], subject, "{ty} {} -> {other}", r["id"]);
            }
        }
    }
    for prov in &all["Provenance"] {
        let targets = prov["target"].as_array().unwrap();
        let patient = str_at(&targets[0], "/reference");
        assert!(patient.starts_with("Patient/"));
        for t in &targets[1..] {
            assert_eq!(subject_of[str_at(t, "/reference")], patient);
        }
        let who = str_at(prov, "/agent/0/who/reference");
        assert!(who.starts_with("Practitioner/"));
        assert!(prov.get("patient").is_none());
    }
    for p in &all["Patient"] {
        assert!(str_at(p, "/generalPractitioner/0/reference").starts_with("Practitioner/"));
        assert!(str_at(p, "/managingOrganization/reference").starts_with("Organization/"));
    }
    assert!(total > 10_000, "{total}");
}

#[test]
fn counts_match_the_lines_and_the_documented_averages() {
    let n = 200;
    let (dir, summary) = run(&opts(n));
    let mut bytes = 0;
    for ty in RESOURCE_TYPES {
        let text = text(dir.path(), ty);
        bytes += text.len() as u64;
        assert_eq!(summary.counts[ty], text.lines().count() as u64, "{ty}");
    }
    assert_eq!(summary.bytes, bytes);
    assert_eq!(summary.counts.len(), RESOURCE_TYPES.len());
    assert_eq!(summary.files.len(), RESOURCE_TYPES.len());
    assert_eq!(summary.counts["Patient"], n);
    assert_eq!(summary.counts["Practitioner"], 4);
    assert_eq!(summary.counts["Organization"], 1);
    assert_eq!(summary.counts["Group"], 4);
    let per_patient = |ty: &str| summary.counts[ty] as f64 / n as f64;
    for (ty, mean, tolerance) in [
        ("Encounter", 5.0, 0.5),
        ("Observation", 20.0, 2.5),
        ("Condition", 3.0, 0.5),
        ("MedicationRequest", 3.0, 0.5),
        ("Procedure", 2.0, 0.4),
        ("Immunization", 3.0, 0.5),
        ("AllergyIntolerance", 0.3, 0.15),
        ("DiagnosticReport", 2.0, 0.4),
        ("Provenance", 1.0, 0.25),
    ] {
        let got = per_patient(ty);
        assert!((got - mean).abs() <= tolerance, "{ty}: {got} per patient");
    }
    let total: u64 = summary.counts.values().sum();
    let mean = total as f64 / n as f64;
    assert!(
        (36.0..=44.0).contains(&mean),
        "{mean} resources per patient"
    );
    let size = bytes as f64 / total as f64;
    assert!(
        (400.0..=1500.0).contains(&size),
        "{size} bytes per resource"
    );
}

#[test]
fn last_updated_is_exactly_formatted_and_spread_over_2019_to_2025() {
    let (dir, _) = run(&opts(60));
    let all = load(dir.path());
    let mut years = BTreeSet::new();
    for (ty, resources) in &all {
        for r in resources {
            let at = str_at(r, "/meta/lastUpdated");
            assert!(is_last_updated(at), "{ty}: {at}");
            assert!(("2019-01-01T00:00:00.000Z"..="2025-12-31T23:59:59.999Z").contains(&at));
            if *ty == "Group" {
                assert_eq!(at, "2025-06-01T00:00:00.000Z");
            } else {
                years.insert(at[..4].to_owned());
            }
        }
    }
    let expected: BTreeSet<String> = (2019..=2025).map(|y| y.to_string()).collect();
    assert_eq!(years, expected);
}

#[test]
fn resources_carry_searchable_content() {
    let (dir, _) = run(&opts(200));
    let all = load(dir.path());
    let mut genders = BTreeSet::new();
    let mut active = BTreeSet::new();
    let mut accented = 0;
    for p in &all["Patient"] {
        genders.insert(str_at(p, "/gender").to_owned());
        active.insert(p["active"].as_bool().unwrap());
        let birth = str_at(p, "/birthDate");
        assert!(birth.len() == 10 && is_date_or_date_time(birth), "{birth}");
        assert!(("1930-01-01"..="2020-12-31").contains(&birth));
        let name = &p["name"][0];
        if !name.to_string().is_ascii() {
            accented += 1;
        }
        assert!(!str_at(name, "/family").is_empty());
        for key in ["city", "postalCode"] {
            assert!(!str_at(&p["address"][0], &format!("/{key}")).is_empty());
        }
        assert!(!str_at(p, "/identifier/0/system").is_empty());
        assert_eq!(
            str_at(p, "/meta/profile/0"),
            "http://hl7.org/fhir/us/core/StructureDefinition/us-core-patient"
        );
    }
    assert_eq!(
        genders,
        ["female", "male", "other", "unknown"]
            .map(str::to_owned)
            .into()
    );
    assert_eq!(active.len(), 2);
    assert!(accented > 0);

    let mut statuses = BTreeSet::new();
    let mut categories = BTreeSet::new();
    let (mut date_only, mut with_zone, mut coded) = (0, 0, 0);
    for o in &all["Observation"] {
        statuses.insert(str_at(o, "/status").to_owned());
        categories.insert(str_at(o, "/category/0/coding/0/code").to_owned());
        assert_eq!(
            str_at(o, "/category/0/coding/0/system"),
            "http://terminology.hl7.org/CodeSystem/observation-category"
        );
        assert_eq!(str_at(o, "/code/coding/0/system"), "http://loinc.org");
        let effective = str_at(o, "/effectiveDateTime");
        assert!(is_date_or_date_time(effective), "{effective}");
        assert!(
            ("2000"..="2025-12-31T99").contains(&effective),
            "{effective}"
        );
        if effective.len() == 10 {
            date_only += 1;
        } else {
            with_zone += 1;
        }
        if let Some(q) = o.get("valueQuantity") {
            assert_eq!(q["system"], "http://unitsofmeasure.org");
            assert!(q["value"].is_number() && q["code"].is_string());
        } else if o.get("valueCodeableConcept").is_some() {
            coded += 1;
        } else {
            assert_eq!(str_at(o, "/status"), "cancelled");
        }
    }
    assert!(
        statuses.contains("final") && statuses.len() >= 3,
        "{statuses:?}"
    );
    assert!(categories.contains("vital-signs") && categories.contains("laboratory"));
    assert!(date_only > 0 && with_zone > date_only * 3 && coded > 0);

    let classes: BTreeSet<&str> = all["Encounter"]
        .iter()
        .map(|e| str_at(e, "/class/code"))
        .collect();
    assert_eq!(classes, ["AMB", "EMER", "IMP"].into());
    for e in &all["Encounter"] {
        assert!(is_date_or_date_time(str_at(e, "/period/start")));
    }
    let restricted = all["Condition"]
        .iter()
        .filter(|c| c.pointer("/meta/security/0/code") == Some(&Value::from("R")))
        .count();
    let conditions = all["Condition"].len();
    assert!(
        restricted > 0 && restricted * 8 < conditions,
        "{restricted}"
    );
    for c in &all["Condition"] {
        assert_eq!(
            str_at(c, "/clinicalStatus/coding/0/system"),
            "http://terminology.hl7.org/CodeSystem/condition-clinical"
        );
    }
    let research = all
        .values()
        .flatten()
        .filter(|r| r["meta"]["tag"].as_array().unwrap().len() == 2)
        .count();
    let resources = all.values().map(Vec::len).sum::<usize>();
    assert!(
        research * 20 > resources && research * 6 < resources,
        "{research}"
    );
    for m in &all["MedicationRequest"] {
        assert_eq!(m["intent"], "order");
        assert!(is_date_or_date_time(str_at(m, "/authoredOn")));
    }
    for i in &all["Immunization"] {
        assert_eq!(
            str_at(i, "/vaccineCode/coding/0/system"),
            "http://hl7.org/fhir/sid/cvx"
        );
    }
    for d in &all["DiagnosticReport"] {
        let issued = str_at(d, "/issued");
        assert!(is_date_or_date_time(issued) && issued.as_bytes()[19] == b'.');
    }
}

fn groups(patients: u64) -> HashMap<String, Value> {
    let (dir, _) = run(&opts(patients));
    load(dir.path())["Group"]
        .iter()
        .map(|g| (str_at(g, "/id").to_owned(), g.clone()))
        .collect()
}

/// `(patient id, current)` of every listed member.
fn members(group: &Value) -> Vec<(String, bool)> {
    let listed = group.get("member").and_then(Value::as_array);
    assert_eq!(group["quantity"], listed.map_or(0, Vec::len));
    assert_eq!(group["type"], "person");
    assert_eq!(group["actual"], true);
    listed
        .into_iter()
        .flatten()
        .map(|m| {
            let id = str_at(m, "/entity/reference")
                .strip_prefix("Patient/")
                .unwrap();
            let inactive = m.get("inactive") == Some(&Value::Bool(true));
            let ended = m
                .pointer("/period/end")
                .and_then(Value::as_str)
                .is_some_and(|end| end < "2025");
            (id.to_owned(), !inactive && !ended)
        })
        .collect()
}

#[test]
fn groups_hold_the_documented_members() {
    for n in [0, 5, 11, 15] {
        let g = groups(n);
        assert_eq!(g.len(), 4);
        let current = |i: u64| (patient_id(i), true);
        let all: Vec<_> = (0..n).map(current).collect();
        let even: Vec<_> = (0..n).step_by(2).map(current).collect();
        let mut small: Vec<_> = (0..n.min(10)).map(current).collect();
        if n >= 12 {
            small.push((patient_id(10), false));
            small.push((patient_id(11), false));
        }
        assert_eq!(members(&g[GROUP_ALL]), all, "{n}");
        assert_eq!(members(&g[GROUP_EVEN]), even, "{n}");
        assert_eq!(members(&g[GROUP_SMALL]), small, "{n}");
        assert_eq!(members(&g[GROUP_EMPTY]), [], "{n}");
        if n >= 12 {
            let listed = g[GROUP_SMALL]["member"].as_array().unwrap();
            assert_eq!(listed[10]["inactive"], true);
            assert_eq!(listed[11]["period"]["end"], "2020-01-01");
        }
    }
}

#[test]
fn shared_observations_name_a_second_patient_as_performer() {
    let n = 150;
    let (dir, _) = run(&opts(n));
    let index: HashMap<String, (u64, u32)> = (0..n)
        .flat_map(|i| (0..41).map(move |j| (observation_id(i, j), (i, j))))
        .collect();
    let mut shared = 0;
    for o in &load(dir.path())["Observation"] {
        let (i, j) = index[str_at(o, "/id")];
        assert_eq!(
            str_at(o, "/subject/reference"),
            format!("Patient/{}", patient_id(i))
        );
        let patients: Vec<&str> = o["performer"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| str_at(p, "/reference"))
            .filter(|r| r.starts_with("Patient/"))
            .collect();
        if is_shared_observation(i, j) {
            shared += 1;
            let partner = shared_observation_partner(i, n).unwrap();
            assert_ne!(partner, i);
            assert_eq!(patients, [format!("Patient/{}", patient_id(partner))]);
        } else {
            assert!(patients.is_empty());
        }
    }
    assert!(shared >= 20, "{shared}");
    // The next patient, wrapping; with a single patient there is nobody to share with.
    assert_eq!(shared_observation_partner(1, 5), Some(2));
    assert_eq!(shared_observation_partner(4, 5), Some(0));
    assert_eq!(shared_observation_partner(0, 1), None);
    let pairs = (0..1000u64)
        .flat_map(|i| (0..40).map(move |j| is_shared_observation(i, j)))
        .filter(|s| *s)
        .count();
    assert!((600..=1000).contains(&pairs), "{pairs} of 40000");
}

fn gunzip(path: &Path) -> String {
    let mut text = String::new();
    flate2::read::MultiGzDecoder::new(File::open(path).unwrap())
        .read_to_string(&mut text)
        .unwrap();
    text
}

#[test]
fn gzip_output_decompresses_to_the_plain_output() {
    for files_per_type in [1, 2] {
        let plain = GenOptions {
            patients: 30,
            files_per_type,
            ..GenOptions::default()
        };
        let gz = GenOptions {
            gzip: true,
            ..plain.clone()
        };
        let (p, ps) = run(&plain);
        let (g, gs) = run(&gz);
        assert_eq!(ps.counts, gs.counts);
        assert_eq!(ps.bytes, gs.bytes);
        assert_eq!(ps.files.len(), gs.files.len());
        for (pf, gf) in ps.files.iter().zip(&gs.files) {
            let name = gf.file_name().unwrap().to_str().unwrap();
            assert!(name.ends_with(".ndjson.gz"));
            assert_eq!(gf.parent(), Some(g.path()));
            assert_eq!(p.path().join(name.strip_suffix(".gz").unwrap()), *pf);
            assert_eq!(gunzip(gf), fs::read_to_string(pf).unwrap(), "{name}");
        }
    }
}

#[test]
fn split_files_concatenate_to_the_single_file() {
    let (single, ss) = run(&opts(40));
    let out = tempfile::tempdir().unwrap();
    // A folder that does not exist yet is created.
    let nested = out.path().join("a").join("b");
    let split = generate(
        &GenOptions {
            files_per_type: 3,
            ..opts(40)
        },
        &nested,
    )
    .unwrap();
    assert_eq!(split.counts, ss.counts);
    assert_eq!(split.bytes, ss.bytes);
    assert_eq!(split.files.len(), 3 * RESOURCE_TYPES.len());
    assert!(split.files.windows(2).all(|w| w[0] < w[1]));
    for ty in RESOURCE_TYPES {
        assert!(!nested.join(format!("{ty}.ndjson")).exists());
        let joined: String = (1..=3)
            .map(|k| fs::read_to_string(nested.join(format!("{ty}-{k}.ndjson"))).unwrap())
            .collect();
        assert_eq!(joined, text(single.path(), ty), "{ty}");
    }
    // Fewer Practitioners than files: the extra files exist, empty.
    let sizes: Vec<u64> = (1..=3)
        .map(|k| {
            fs::metadata(nested.join(format!("Practitioner-{k}.ndjson")))
                .unwrap()
                .len()
        })
        .collect();
    assert_eq!(sizes.iter().filter(|s| **s == 0).count(), 2);
}

#[test]
fn zero_files_per_type_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let err = generate(
        &GenOptions {
            files_per_type: 0,
            ..GenOptions::default()
        },
        dir.path(),
    )
    .unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
}
