//! `fhir-export cost`: the estimate against a price table of round numbers (each line's amount
//! is exact), and the command end to end on usage files (bare, and a manifest's
//! `extension.usage`), as a table and as JSON, and its refusals.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::process::{Command, Output, Stdio};

use fhir_export::cost::table::{
    DATA_TRANSFER, DYNAMODB_SERVICE, EVENTBRIDGE_SERVICE, HTTP_API, LAMBDA, S3_SERVICE,
    SQS_SERVICE, estimate_records, usd,
};
use fhir_export::cost::{Arch, Estimate, Model, PRICES_DATE, Prices, Rate, US_EAST_1, estimate};
use serde_json::{Value, json};
use shared::usage::Usage;

const EXE: &str = env!("CARGO_BIN_EXE_fhir-export");
const GIB: u64 = 1 << 30;

/// Round prices, a different one per line, so that every amount below is exact and a line
/// priced with the wrong rate shows.
fn round_prices() -> Prices {
    Prices {
        name: "round test prices",
        region: "test-1",
        date: "2000-01-01",
        source: "the test",
        lambda_request: Rate::new(1.0, 1.0, "request"),
        lambda_gb_second_arm64: Rate::new(2.0, 1.0, "GB-second"),
        lambda_gb_second_x86_64: Rate::new(3.0, 1.0, "GB-second"),
        http_api_request: Rate::new(10.0, 1.0, "request"),
        sqs_request: Rate::new(100.0, 1.0, "request"),
        dynamodb_write_unit: Rate::new(1_000.0, 1.0, "WRU"),
        dynamodb_read_unit: Rate::new(10_000.0, 1.0, "RRU"),
        // Per 1,000, as the real table: $7 a request.
        s3_tier1_request: Rate::new(7_000.0, 1_000.0, "1,000 requests"),
        s3_tier2_request: Rate::new(3.0, 1.0, "request"),
        // 1 GB kept 1 hour of a 730-hour month costs $1.
        s3_storage: Rate::new(730.0, 1.0, "GB-month"),
        eventbridge_event: Rate::new(20.0, 1.0, "event"),
        egress: Rate::new(50.0, 1.0, "GB"),
    }
}

fn usage() -> Usage {
    let mut u = Usage {
        messages: 4,
        chunks: 2,
        resources: 500_000,
        wall_ms: 8_000,
        max_wall_ms: 5_000,
        cpu_ms: 6_000,
        max_cpu_ms: 4_000,
        dynamodb_write_units: 12.5,
        dynamodb_read_units: 3.0,
        bytes_downloaded: 3 * GIB,
        bytes_uploaded: 2 * GIB,
        bytes_written: 2 * GIB,
        bytes_sent: GIB,
        ..Usage::default()
    };
    for (op, n) in [("SendMessage", 3), ("ChangeMessageVisibility", 1)] {
        u.count("sqs", op, n);
    }
    // Tier 1: 9 requests; tier 2: 7; free: 6.
    for (op, n) in [
        ("PutObject", 2),
        ("UploadPart", 3),
        ("CopyObject", 1),
        ("ListObjectsV2", 1),
        ("CreateMultipartUpload", 1),
        ("CompleteMultipartUpload", 1),
        ("GetObject", 5),
        ("HeadObject", 2),
        ("DeleteObject", 4),
        ("DeleteObjects", 1),
        ("AbortMultipartUpload", 1),
    ] {
        u.count("s3", op, n);
    }
    u.count("dynamodb", "UpdateItem", 10);
    u.count("dynamodb", "Query", 2);
    u.count("eventbridge", "PutEvents", 1);
    u
}

fn model(arch: Arch) -> Model {
    Model {
        arch,
        worker_memory_mb: 2048,
        api_memory_mb: 512,
        api_ms: 500,
        polls: 3,
        keep_hours: 1.0,
        egress_gb: 0.5,
    }
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * b.abs().max(1.0)
}

fn line<'a>(e: &'a Estimate, service: &str, item_starts: &str) -> &'a fhir_export::cost::Line {
    e.lines
        .iter()
        .find(|l| l.service == service && l.item.starts_with(item_starts))
        .unwrap_or_else(|| panic!("no line {service} / {item_starts}: {:#?}", e.lines))
}

fn subtotal(e: &Estimate, service: &str) -> f64 {
    e.services
        .iter()
        .find(|s| s.service == service)
        .unwrap_or_else(|| panic!("no subtotal for {service}"))
        .cost_usd
}

#[test]
fn every_line_is_priced_exactly_with_the_given_table() {
    let e = estimate(&usage(), &model(Arch::Arm64), &round_prices());
    let check = |service: &str, item: &str, quantity: f64, cost: f64| {
        let l = line(&e, service, item);
        assert!(
            close(l.quantity, quantity) && close(l.cost_usd, cost),
            "{service} / {item}: {} for ${}, expected {quantity} for ${cost}",
            l.quantity,
            l.cost_usd
        );
    };
    // Lambda: 4 worker invocations; 8 s at 2 GB = 16 GB-s at $2; the API: 1 kick-off + 3
    // polls, 0.5 s each at 0.5 GB = 1 GB-s.
    check(LAMBDA, "worker invocations", 4.0, 4.0);
    check(LAMBDA, "worker compute", 16.0, 32.0);
    check(LAMBDA, "API invocations", 4.0, 4.0);
    check(LAMBDA, "API compute", 1.0, 2.0);
    check(HTTP_API, "requests", 4.0, 40.0);
    // SQS: the worker's 4, the event source's receive and delete of each message, the
    // kick-off's send.
    check(SQS_SERVICE, "worker requests", 4.0, 400.0);
    check(SQS_SERVICE, "event source", 8.0, 800.0);
    check(SQS_SERVICE, "kick-off", 1.0, 100.0);
    // DynamoDB: units, not requests; the kick-off's write and read, 0.5 RRU per poll.
    check(DYNAMODB_SERVICE, "worker write", 12.5, 12_500.0);
    check(DYNAMODB_SERVICE, "worker read", 3.0, 30_000.0);
    // Each message's usage record is one write the record cannot count itself.
    check(DYNAMODB_SERVICE, "usage records", 4.0, 4_000.0);
    check(DYNAMODB_SERVICE, "API write", 1.0, 1_000.0);
    check(DYNAMODB_SERVICE, "API read", 2.5, 25_000.0);
    // S3: tier 1 at $7, tier 2 at $3, deletes and the abort free; 2 GB for 1 hour.
    check(S3_SERVICE, "PUT, COPY, POST, LIST", 9.0, 63.0);
    check(S3_SERVICE, "GET, HEAD", 7.0, 21.0);
    check(S3_SERVICE, "DELETE", 6.0, 0.0);
    check(S3_SERVICE, "storage", 2.0 / 730.0, 2.0);
    check(EVENTBRIDGE_SERVICE, "custom events", 1.0, 20.0);

    assert!(close(subtotal(&e, LAMBDA), 42.0));
    assert!(close(subtotal(&e, SQS_SERVICE), 1_300.0));
    assert!(close(subtotal(&e, DYNAMODB_SERVICE), 72_500.0));
    assert!(close(subtotal(&e, S3_SERVICE), 86.0));
    assert!(close(e.total_usd, 73_988.0), "{}", e.total_usd);

    // Egress: 1 GB sent through the server + 0.5 GB given, apart from the total.
    assert_eq!(e.egress.service, DATA_TRANSFER);
    assert!(close(e.egress.quantity, 1.5) && close(e.egress.cost_usd, 75.0));
    assert!(e.lines.iter().all(|l| l.service != DATA_TRANSFER));
    assert!(close(e.total_with_egress_usd, 74_063.0));

    assert!(close(e.per_million_resources_usd.unwrap(), 147_976.0));
    assert!(close(
        e.per_million_resources_with_egress_usd.unwrap(),
        148_126.0
    ));
}

#[test]
fn the_architecture_changes_only_the_lambda_compute() {
    let prices = round_prices();
    let arm = estimate(&usage(), &model(Arch::Arm64), &prices);
    let x86 = estimate(&usage(), &model(Arch::X86_64), &prices);
    // 16 + 1 GB-s at $3 instead of $2.
    assert!(close(line(&x86, LAMBDA, "worker compute").cost_usd, 48.0));
    assert!(close(line(&x86, LAMBDA, "API compute").cost_usd, 3.0));
    assert!(close(x86.total_usd - arm.total_usd, 17.0));
    for (a, x) in arm.lines.iter().zip(&x86.lines) {
        if !a.item.contains("compute") {
            assert_eq!(a.cost_usd, x.cost_usd, "{}", a.item);
        }
    }
    // And with the real table: x86_64 costs 25 % more per GB-s.
    let arm = estimate(&usage(), &model(Arch::Arm64), &US_EAST_1);
    let x86 = estimate(&usage(), &model(Arch::X86_64), &US_EAST_1);
    let ratio = line(&x86, LAMBDA, "worker compute").cost_usd
        / line(&arm, LAMBDA, "worker compute").cost_usd;
    assert!((ratio - 1.25).abs() < 1e-4, "{ratio}");
}

#[test]
fn deletes_are_free_and_egress_stays_out_of_the_total() {
    let prices = round_prices();
    let base = estimate(&usage(), &model(Arch::Arm64), &prices);

    let mut more_deletes = usage();
    more_deletes.count("s3", "DeleteObject", 1_000);
    more_deletes.count("s3", "AbortMultipartUpload", 10);
    let e = estimate(&more_deletes, &model(Arch::Arm64), &prices);
    assert!(close(line(&e, S3_SERVICE, "DELETE").quantity, 1_016.0));
    assert_eq!(e.total_usd, base.total_usd);

    let mut more_egress = model(Arch::Arm64);
    more_egress.egress_gb = 100.5;
    let e = estimate(&usage(), &more_egress, &prices);
    assert_eq!(e.total_usd, base.total_usd);
    assert!(close(e.egress.cost_usd, 101.5 * 50.0));
    assert!(close(
        e.total_with_egress_usd,
        base.total_usd + 101.5 * 50.0
    ));
}

#[test]
fn the_per_million_figure_scales_with_resources_and_is_absent_without_any() {
    let prices = round_prices();
    let mut u = usage();
    u.resources = 1_000_000;
    let e = estimate(&u, &model(Arch::Arm64), &prices);
    assert!(close(e.per_million_resources_usd.unwrap(), e.total_usd));
    u.resources = 0;
    let e = estimate(&u, &model(Arch::Arm64), &prices);
    assert_eq!(e.per_million_resources_usd, None);
    assert_eq!(e.per_million_resources_with_egress_usd, None);
}

// ---- the command ----

fn record() -> Value {
    serde_json::to_value(usage()).unwrap()
}

fn cost(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(EXE)
        .arg("cost")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.unwrap_or("").as_bytes()).unwrap();
    drop(input);
    child.wait_with_output().unwrap()
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "status {:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn failed(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "expected a failure, got stdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

/// The line of `table` that starts with `label`.
fn row<'a>(table: &'a str, label: &str) -> &'a str {
    table
        .lines()
        .find(|l| l.starts_with(label))
        .unwrap_or_else(|| panic!("no {label} in\n{table}"))
}

#[test]
fn the_command_prices_a_bare_record_and_a_manifest_alike() {
    let dir = tempfile::tempdir().unwrap();
    let bare = dir.path().join("usage.json");
    std::fs::write(&bare, record().to_string()).unwrap();
    let manifest = dir.path().join("manifest.json");
    let wrapped = json!({
        "transactionTime": "2026-12-07T10:00:00Z",
        "request": "https://example.org/fhir/$export",
        "requiresAccessToken": true,
        "output": [{"type": "Patient", "url": "https://example.org/files/1.ndjson"}],
        "error": [],
        "extension": {"usage": record()}
    });
    std::fs::write(&manifest, wrapped.to_string()).unwrap();

    // What the library computes with the real table and the command's defaults.
    let defaults = Model::default();
    let expected = estimate(&usage(), &defaults, &US_EAST_1);
    assert!(expected.total_usd > 0.0);

    let mut tables = Vec::new();
    for file in [&bare, &manifest] {
        let table = ok(&cost(&[file.to_str().unwrap()], None));
        let header = table.lines().next().unwrap();
        for part in [
            PRICES_DATE,
            "us-east-1",
            "arm64",
            "worker 1024 MB",
            "API 256 MB",
        ] {
            assert!(header.contains(part), "{part} not in {header}");
        }
        assert!(
            row(&table, "Total (requests and compute)").ends_with(&usd(expected.total_usd)),
            "{table}"
        );
        assert!(
            row(&table, "Total with egress").ends_with(&usd(expected.total_with_egress_usd)),
            "{table}"
        );
        assert!(
            row(&table, "Per million resources:")
                .contains(&usd(expected.per_million_resources_usd.unwrap()))
        );
        for service in [
            LAMBDA,
            SQS_SERVICE,
            DYNAMODB_SERVICE,
            S3_SERVICE,
            EVENTBRIDGE_SERVICE,
        ] {
            assert!(table.lines().any(|l| l == service), "{service}:\n{table}");
        }
        tables.push(table);
    }
    assert_eq!(tables[0], tables[1]);

    // Standard input, as `-`.
    let table = ok(&cost(&["-"], Some(&record().to_string())));
    assert_eq!(table, tables[0]);
}

/// `a` and `b` are the same JSON, numbers to 1e-12 (JSON text is not always parsed back to
/// the very same f64).
fn same(a: &Value, b: &Value, at: &str) {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            assert!(
                (x - y).abs() <= 1e-12 * y.abs().max(1e-300),
                "{at}: {x} != {y}"
            );
        }
        (Value::Array(x), Value::Array(y)) => {
            assert_eq!(x.len(), y.len(), "{at}: lengths");
            for (i, (x, y)) in x.iter().zip(y).enumerate() {
                same(x, y, &format!("{at}[{i}]"));
            }
        }
        (Value::Object(x), Value::Object(y)) => {
            assert_eq!(
                x.keys().collect::<Vec<_>>(),
                y.keys().collect::<Vec<_>>(),
                "{at}: members"
            );
            for (k, x) in x {
                same(x, &y[k], &format!("{at}.{k}"));
            }
        }
        _ => assert_eq!(a, b, "{at}"),
    }
}

#[test]
fn the_command_prints_the_same_lines_as_json() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("event.json");
    let event = json!({"type": "completed", "job": "j1", "usage": record()});
    std::fs::write(&file, event.to_string()).unwrap();
    let path = file.to_str().unwrap();

    let args = [
        path,
        "--json",
        "--worker-memory-mb",
        "2048",
        "--api-memory-mb",
        "512",
        "--api-ms",
        "500",
        "--polls",
        "3",
        "--keep-hours",
        "1",
        "--egress-gb",
        "0.5",
    ];
    let arm: Value = serde_json::from_str(&ok(&cost(&args, None))).unwrap();
    let mut x86_args = args.to_vec();
    x86_args.extend(["--arch", "x86_64"]);
    let x86: Value = serde_json::from_str(&ok(&cost(&x86_args, None))).unwrap();

    let expected = estimate_records(&usage(), 1, &model(Arch::Arm64), &US_EAST_1);
    same(&arm, &serde_json::to_value(&expected).unwrap(), "");
    assert_eq!(arm["prices"]["date"], PRICES_DATE);
    assert_eq!(arm["assumptions"]["arch"], "arm64");
    assert_eq!(x86["assumptions"]["arch"], "x86_64");
    assert_eq!(arm["lines"].as_array().unwrap().len(), expected.lines.len());
    assert_eq!(arm["egress"]["service"], DATA_TRANSFER);
    let total = |v: &Value| v["total_usd"].as_f64().unwrap();
    assert!(total(&x86) > total(&arm));
    assert!(arm["total_with_egress_usd"].as_f64().unwrap() > total(&arm));
}

#[test]
fn bad_input_fails_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.json");
    let stderr = failed(&cost(&[missing.to_str().unwrap()], None));
    assert!(
        stderr.contains("cannot read") && stderr.contains("missing.json"),
        "{stderr}"
    );

    let not_json = dir.path().join("not.json");
    std::fs::write(&not_json, "{\"messages\": 3,").unwrap();
    let stderr = failed(&cost(&[not_json.to_str().unwrap()], None));
    assert!(stderr.contains("is not JSON"), "{stderr}");

    let no_usage = dir.path().join("manifest.json");
    std::fs::write(&no_usage, r#"{"transactionTime": "x", "output": []}"#).unwrap();
    let stderr = failed(&cost(&[no_usage.to_str().unwrap()], None));
    assert!(stderr.contains("no usage record found"), "{stderr}");

    let malformed = dir.path().join("malformed.json");
    std::fs::write(&malformed, r#"{"usage": {"messages": -1}}"#).unwrap();
    let stderr = failed(&cost(&[malformed.to_str().unwrap()], None));
    assert!(stderr.contains("malformed"), "{stderr}");

    let good = dir.path().join("usage.json");
    std::fs::write(&good, record().to_string()).unwrap();
    let good = good.to_str().unwrap();
    let stderr = failed(&cost(&[good, "--region", "eu-west-1"], None));
    assert!(
        stderr.contains("eu-west-1") && stderr.contains("us-east-1"),
        "{stderr}"
    );
    let stderr = failed(&cost(&[good, "--egress-gb=-1"], None));
    assert!(stderr.contains("egress-gb"), "{stderr}");
    let stderr = failed(&cost(&[good, "--arch", "sparc"], None));
    assert!(stderr.contains("arm64"), "{stderr}");
}
