//! The per-resource hot loops of a worker: validating a line and reading its head (the
//! pass-through path), and on the filtered path parsing it, evaluating `_typeFilter` and
//! writing the `_elements` subset. `serde_json` validation is measured beside the scanner as
//! the baseline it replaced. Run with `cargo bench -p shared`.

#![allow(clippy::expect_used)]

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use serde_json::{Value, json};
use shared::elements::ElementsFilter;
use shared::model::ResourceType;
use shared::ndjson::head::{read_head, read_head_serde};
use shared::request::{ElementSelector, TypeFilter};
use shared::search::TypeFilterSet;

/// Observations shaped like the generated and Synthea ones (about 900 bytes each).
fn observations(n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            json!({
                "resourceType": "Observation",
                "id": format!("obs-{i:06}"),
                "meta": {"lastUpdated": "2023-04-05T06:07:08.090Z",
                    "profile": ["http://hl7.org/fhir/us/core/StructureDefinition/us-core-vital-signs"],
                    "tag": [{"system": "http://example.org/tags", "code": "synthetic"}]},
                "status": if i % 7 == 0 { "amended" } else { "final" },
                "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                    "code": "vital-signs", "display": "Vital Signs"}]}],
                "code": {"coding": [{"system": "http://loinc.org",
                    "code": if i % 2 == 0 { "8867-4" } else { "2339-0" }, "display": "Heart rate"}],
                    "text": "Heart rate"},
                "subject": {"reference": format!("Patient/pat-{:06}", i / 20)},
                "encounter": {"reference": format!("Encounter/enc-{:06}-01", i / 20)},
                "effectiveDateTime": format!("20{:02}-03-04T10:11:12-05:00", 5 + i % 20),
                "issued": "2023-04-05T06:07:08.090Z",
                "performer": [{"reference": "Practitioner/prac-000001"}],
                "valueQuantity": {"value": 60.0 + (i % 40) as f64 * 1.25, "unit": "/min",
                    "system": "http://unitsofmeasure.org", "code": "/min"}
            })
            .to_string()
            .into_bytes()
        })
        .collect()
}

fn hot_loops(c: &mut Criterion) {
    let lines = observations(2000);
    let bytes: u64 = lines.iter().map(|l| l.len() as u64).sum();
    let obs = ResourceType::parse("Observation").expect("type");

    let mut g = c.benchmark_group("validate+head");
    g.throughput(Throughput::Bytes(bytes));
    g.bench_function("scanner", |b| {
        b.iter(|| {
            for l in &lines {
                black_box(read_head(black_box(l)).is_ok());
            }
        })
    });
    g.bench_function("serde_json", |b| {
        b.iter(|| {
            for l in &lines {
                black_box(read_head_serde(black_box(l)).is_ok());
            }
        })
    });
    g.finish();

    let filters = TypeFilterSet::compile(&[
        TypeFilter::parse("Observation?code=http://loinc.org|8867-4&date=ge2010").expect("filter"),
        TypeFilter::parse("Observation?status=amended").expect("filter"),
    ])
    .expect("compile");
    let elements = ElementsFilter::new(&[
        ElementSelector::parse("Observation.subject").expect("selector"),
        ElementSelector::parse("Observation.valueQuantity").expect("selector"),
    ])
    .expect("elements")
    .for_type(obs)
    .expect("Observation is subset");
    let mut g = c.benchmark_group("filtered");
    g.throughput(Throughput::Elements(lines.len() as u64));
    g.bench_function("parse+typeFilter", |b| {
        b.iter(|| {
            for l in &lines {
                let v: Value = serde_json::from_slice(l).expect("json");
                black_box(filters.matches(obs, &v));
            }
        })
    });
    g.bench_function("elements subset", |b| {
        b.iter(|| {
            for l in &lines {
                black_box(elements.apply(l).expect("subset"));
            }
        })
    });
    g.bench_function("head+parse+typeFilter+elements", |b| {
        b.iter(|| {
            for l in &lines {
                let _ = black_box(read_head(l).expect("head"));
                let v: Value = serde_json::from_slice(l).expect("json");
                if filters.matches(obs, &v) {
                    black_box(elements.apply(l).expect("subset"));
                }
            }
        })
    });
    g.finish();
}

criterion_group!(benches, hot_loops);
criterion_main!(benches);
