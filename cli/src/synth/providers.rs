//! Practitioners and Organizations, and the person and address parts Patients share with them.

use std::io::{self, Write};

use super::Plan;
use super::json::{Cc, Id, Kind, NPI, head, meta};
use super::rng::{ORGANIZATION_STREAM, PRACTITIONER_STREAM, Rng};
use super::tables::{CITIES, City, FAMILY, Gender, STREETS, US_CITIES};

/// `"name":[..]` of a person.
pub(super) fn person_name(
    b: &mut Vec<u8>,
    rng: &mut Rng,
    gender: Gender,
    prefix: Option<&str>,
) -> io::Result<()> {
    let family = rng.pick(FAMILY);
    let given = rng.pick(gender.given());
    write!(
        b,
        "\"name\":[{{\"use\":\"official\",\"text\":\"{given} {family}\",\"family\":\"{family}\",\"given\":[\"{given}\""
    )?;
    if rng.percent(30) {
        write!(b, ",\"{}\"", rng.pick(gender.given()))?;
    }
    b.push(b']');
    if let Some(prefix) = prefix {
        write!(b, ",\"prefix\":[\"{prefix}\"]")?;
    }
    b.extend_from_slice(b"}]");
    Ok(())
}

/// `"address":[..]` in `city`.
pub(super) fn address(b: &mut Vec<u8>, rng: &mut Rng, city: &City, use_: &str) -> io::Result<()> {
    write!(
        b,
        "\"address\":[{{\"use\":\"{use_}\",\"line\":[\"{} {}\"],\"city\":\"{}\"",
        1 + rng.below(9999),
        rng.pick(STREETS),
        city.name
    )?;
    if !city.state.is_empty() {
        write!(b, ",\"state\":\"{}\"", city.state)?;
    }
    write!(
        b,
        ",\"postalCode\":\"{}{:0w$}\",\"country\":\"{}\"}}]",
        city.zip_prefix,
        rng.below(10u64.pow(city.zip_digits)),
        city.country,
        w = city.zip_digits as usize
    )
}

pub(super) fn pick_city(rng: &mut Rng) -> &'static City {
    if rng.percent(85) {
        &CITIES[rng.index(US_CITIES)]
    } else {
        &CITIES[US_CITIES + rng.index(CITIES.len() - US_CITIES)]
    }
}

pub(super) fn practitioner(plan: &Plan, j: u64, b: &mut Vec<u8>) -> io::Result<()> {
    let rng = &mut Rng::stream(plan.seed, PRACTITIONER_STREAM, j);
    let gender = if rng.percent(50) {
        Gender::Female
    } else {
        Gender::Male
    };
    let city = pick_city(rng);
    head(b, Id(Kind::Practitioner, j, 0))?;
    meta(b, rng, Some("us-core-practitioner"), false)?;
    write!(
        b,
        ",\"identifier\":[{{\"system\":\"{NPI}\",\"value\":\"{}\"}}],\"active\":{},",
        1_000_000_000 + j,
        rng.percent(95)
    )?;
    person_name(b, rng, gender, Some("Dr."))?;
    write!(
        b,
        ",\"telecom\":[{{\"system\":\"email\",\"value\":\"{}@example.org\",\"use\":\"work\"}}],\"gender\":\"{}\",",
        Id(Kind::Practitioner, j, 0),
        gender.code()
    )?;
    address(b, rng, city, "work")?;
    write!(
        b,
        ",\"qualification\":[{{\"code\":{}}}]}}",
        Cc(
            "http://terminology.hl7.org/CodeSystem/v2-0360",
            "MD",
            "Doctor of Medicine"
        )
    )
}

pub(super) fn organization(plan: &Plan, j: u64, b: &mut Vec<u8>) -> io::Result<()> {
    let rng = &mut Rng::stream(plan.seed, ORGANIZATION_STREAM, j);
    let city = pick_city(rng);
    let kind = rng.pick(&[
        "General Hospital",
        "Community Health Center",
        "Family Practice",
        "Medical Group",
    ]);
    head(b, Id(Kind::Organization, j, 0))?;
    meta(b, rng, Some("us-core-organization"), false)?;
    write!(
        b,
        ",\"identifier\":[{{\"system\":\"{NPI}\",\"value\":\"{}\"}}],\"active\":true,\"type\":[{}],\"name\":\"{} {kind}\",\"telecom\":[{{\"system\":\"phone\",\"value\":\"555-{:03}-{:04}\",\"use\":\"work\"}}],",
        1_500_000_000 + j,
        Cc(
            "http://terminology.hl7.org/CodeSystem/organization-type",
            "prov",
            "Healthcare Provider"
        ),
        city.name,
        rng.below(1000),
        rng.below(10_000),
    )?;
    address(b, rng, city, "work")?;
    b.push(b'}');
    Ok(())
}
