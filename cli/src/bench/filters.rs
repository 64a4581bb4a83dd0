//! `fhir-export bench --filters`: what large `_typeFilter`s cost.
//!
//! For each size, one server exports `_type=Observation`: unfiltered (the baseline), with one
//! query listing 100,000 codes (POST, a `Parameters` body), with 5,000 one-code queries, and
//! with 1,000 two-parameter queries (which cannot be merged into one set). The codes are
//! half of those the data uses, so about half the Observations are kept, plus made-up ones.
//! Each figure is the median of the rounds; the ratios are against the unfiltered export of
//! the same round.

use std::collections::BTreeSet;

use serde_json::{Value, json};

use super::{BenchArgs, BenchError, Server, dataset, median, run_request};

struct Case {
    name: &'static str,
    /// The `_typeFilter` values (none: the unfiltered baseline).
    filters: Vec<String>,
}

pub(super) async fn run(args: &BenchArgs) -> Result<(), BenchError> {
    for size in &args.sizes {
        let data = args.dir.join(format!("data-{size}"));
        let (resources, _) = dataset(&data, *size).await?;
        let codes = observation_codes(&data)?;
        let real: Vec<&String> = codes.iter().step_by(2).collect();
        let mut many: Vec<String> = real.iter().map(|c| (*c).clone()).collect();
        many.extend((many.len()..100_000).map(|i| format!("bench-{i}")));
        let cases = [
            Case {
                name: "unfiltered",
                filters: Vec::new(),
            },
            Case {
                name: "one query, 100,000 codes",
                filters: vec![format!("Observation?code={}", many.join(","))],
            },
            Case {
                name: "5,000 queries of one code",
                filters: many
                    .iter()
                    .take(5_000)
                    .map(|c| format!("Observation?code={c}"))
                    .collect(),
            },
            Case {
                name: "1,000 queries of two parameters",
                filters: many
                    .iter()
                    .take(1_000)
                    .map(|c| format!("Observation?code={c}&status=final"))
                    .collect(),
            },
        ];
        let server = Server::start(
            args,
            &data,
            &[
                ("FHIR_EXPORT_MAX_FILTER_VALUES", "200000"),
                ("FHIR_EXPORT_MAX_TYPE_FILTERS", "5000"),
            ],
        )
        .await?;
        let mut times: Vec<Vec<f64>> = vec![Vec::new(); cases.len()];
        let mut kept = vec![0u64; cases.len()];
        if !args.cold {
            export(&server, &cases[0]).await?;
        }
        for _ in 0..args.rounds {
            for (i, case) in cases.iter().enumerate() {
                let (secs, manifest) = export(&server, case).await?;
                times[i].push(secs);
                kept[i] = super::exported(&manifest);
            }
        }
        server.stop().await?;
        let baseline = median(times[0].clone());
        println!(
            "{resources} resources ({} Observation codes in the data), {} rounds (medians):",
            codes.len(),
            args.rounds
        );
        for (i, case) in cases.iter().enumerate() {
            let t = median(times[i].clone());
            println!(
                "  {:<34} {:>8.3} s  {:>5.2}x the unfiltered export  kept {}",
                case.name,
                t,
                t / baseline,
                kept[i]
            );
        }
    }
    Ok(())
}

async fn export(server: &Server, case: &Case) -> Result<(f64, Value), BenchError> {
    let mut parameter = vec![json!({"name": "_type", "valueString": "Observation"})];
    parameter.extend(
        case.filters
            .iter()
            .map(|f| json!({"name": "_typeFilter", "valueString": f})),
    );
    let body = json!({"resourceType": "Parameters", "parameter": parameter}).to_string();
    let request = server
        .http
        .post(format!("{}/$export", server.base))
        .header("Content-Type", "application/fhir+json")
        .body(body);
    // Every poll reads the job, which holds the filters (a megabyte for 100,000 codes): a
    // poll every millisecond would cost more than the export. Ten keeps the error within 2%.
    run_request(&server.http, request, std::time::Duration::from_millis(10)).await
}

/// The distinct Observation codes of a generated dataset.
fn observation_codes(data: &std::path::Path) -> Result<Vec<String>, BenchError> {
    let text = std::fs::read_to_string(data.join("Observation.ndjson"))?;
    let mut codes = BTreeSet::new();
    for line in text.lines() {
        let v: Value =
            serde_json::from_str(line).map_err(|e| BenchError::Protocol(e.to_string()))?;
        for c in v["code"]["coding"].as_array().into_iter().flatten() {
            if let Some(code) = c["code"].as_str() {
                codes.insert(code.to_owned());
            }
        }
    }
    Ok(codes.into_iter().collect())
}
