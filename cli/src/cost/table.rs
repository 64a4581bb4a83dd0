//! The estimate: a usage record, the deployment's assumptions ([`Model`]) and a price table
//! ([`Prices`]) in, priced lines out, and their rendering as a table.

use std::fmt::Write as _;

use serde::Serialize;
use shared::usage::{DYNAMODB, EVENTBRIDGE, S3, SQS, Usage};

use super::prices::{Prices, Rate};

/// Lambda architecture: each has its own duration price.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
pub enum Arch {
    #[value(name = "arm64")]
    #[serde(rename = "arm64")]
    Arm64,
    #[value(name = "x86_64")]
    #[serde(rename = "x86_64")]
    X86_64,
}

impl Arch {
    pub fn name(self) -> &'static str {
        match self {
            Arch::Arm64 => "arm64",
            Arch::X86_64 => "x86_64",
        }
    }
}

/// What the usage record does not say: how the stack is configured and what the client did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Model {
    pub arch: Arch,
    pub worker_memory_mb: u32,
    pub api_memory_mb: u32,
    /// Billed time of each API (kick-off, status, download) invocation.
    pub api_ms: u32,
    /// Status requests of the client (each one invocation, one HTTP API request and one
    /// eventually consistent DynamoDB read).
    pub polls: u32,
    /// Hours the output stays in S3.
    pub keep_hours: f64,
    /// Data transfer out that the record does not see (downloads through pre-signed URLs).
    pub egress_gb: f64,
}

impl Default for Model {
    fn default() -> Model {
        Model {
            arch: Arch::Arm64,
            worker_memory_mb: 1024,
            api_memory_mb: 256,
            api_ms: 50,
            polls: 10,
            keep_hours: 48.0,
            egress_gb: 0.0,
        }
    }
}

/// Service names of the table.
pub const LAMBDA: &str = "Lambda";
pub const HTTP_API: &str = "API Gateway (HTTP API)";
pub const SQS_SERVICE: &str = "SQS";
pub const DYNAMODB_SERVICE: &str = "DynamoDB (on-demand)";
pub const S3_SERVICE: &str = "S3 Standard";
pub const EVENTBRIDGE_SERVICE: &str = "EventBridge";
pub const DATA_TRANSFER: &str = "Data transfer out";

/// Hours of the month that storage is prorated over.
pub const HOURS_PER_MONTH: f64 = 730.0;
const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

const NOTE_ESM: &str = "Lambda's SQS event source mapping (its pollers, not our code) receives and \
     deletes each message: 2 requests per message (batch size 1). Its long polling while the \
     queue is empty (until the idle pause stops it) is not in this estimate (docs/cost.md).";
const NOTE_API: &str = "Modeled, not measured: 1 kick-off, --polls status requests and the \
     downloads through the server, each --api-ms long.";
const NOTE_WALL: &str = "Worker wall time summed over messages; Lambda bills each invocation's \
     duration rounded up to 1 ms.";
const NOTE_DDB_API: &str = "Modeled: the kick-off writes the job (1 WRU) and queries once \
     (1 RRU); each status poll is one eventually consistent read (0.5 RRU).";
const NOTE_S3_FREE: &str = "DELETE (DeleteObject, DeleteObjects) and AbortMultipartUpload \
     requests are free.";
const NOTE_S3_STORAGE: &str = "bytes_written kept --keep-hours, prorated over a 730-hour month \
     (GB = 2^30 bytes).";
const NOTE_EVENTS: &str = "One event per PutEvents request (the worker puts one entry per call); \
     each 64 KB of an event is billed as one.";
const NOTE_EGRESS: &str = "bytes_sent (downloads through the server) plus --egress-gb (downloads \
     through pre-signed S3 URLs are not in the record), first-tier price (first 10 TB/month).";

/// Notes under every table.
pub const GENERAL_NOTES: &[&str] = &[
    "Free tiers are not applied: Lambda 1M requests and 400,000 GB-s/month, SQS 1M \
     requests/month, DynamoDB 25 GB storage, data transfer out 100 GB/month (all per account, \
     shared with everything else it runs).",
    "Not in the record: the standing costs of the stack (event source polling, the 5-minute \
     sweep), CloudWatch Logs, DynamoDB storage, a NAT gateway if the worker runs in a VPC. See \
     docs/cost.md.",
];

/// One priced quantity.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Line {
    pub service: &'static str,
    pub item: String,
    pub quantity: f64,
    /// What `quantity` counts.
    pub unit: &'static str,
    pub price: Rate,
    pub cost_usd: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<&'static str>,
    /// The requests behind the quantity, by operation (`PutObject 3, CopyObject 2`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl Line {
    fn new(
        service: &'static str,
        item: impl Into<String>,
        quantity: f64,
        unit: &'static str,
        price: Rate,
        note: Option<&'static str>,
    ) -> Line {
        Line {
            service,
            item: item.into(),
            quantity,
            unit,
            price,
            cost_usd: price.cost(quantity),
            note,
            detail: None,
        }
    }

    fn detail(mut self, detail: String) -> Line {
        if !detail.is_empty() {
            self.detail = Some(detail);
        }
        self
    }
}

/// A service's lines summed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Subtotal {
    pub service: &'static str,
    pub cost_usd: f64,
}

/// The price table's identity, as shown in the header.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PriceTable {
    pub name: &'static str,
    pub region: &'static str,
    pub date: &'static str,
    pub source: &'static str,
}

/// The whole estimate: what `--json` prints, and what the table shows.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Estimate {
    pub prices: PriceTable,
    pub assumptions: Model,
    /// Usage records summed into this one (an events log gives several).
    pub records: usize,
    pub resources: u64,
    pub messages: u64,
    pub chunks: u64,
    pub wall_ms: u64,
    pub cpu_ms: u64,
    /// Requests and compute: everything but data transfer out.
    pub lines: Vec<Line>,
    pub services: Vec<Subtotal>,
    pub total_usd: f64,
    pub egress: Line,
    pub total_with_egress_usd: f64,
    pub per_million_resources_usd: Option<f64>,
    pub per_million_resources_with_egress_usd: Option<f64>,
    /// Requests to services the table has no price for, e.g. `"lambda Invoke: 2"`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unpriced: Vec<String>,
    pub notes: Vec<&'static str>,
}

/// How S3 bills a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum S3Class {
    /// PUT, COPY, POST, LIST.
    Tier1,
    /// GET, HEAD, SELECT and all other requests.
    Tier2,
    /// DELETE and multipart-upload aborts.
    Free,
}

/// The request class of an S3 operation.
pub fn s3_class(operation: &str) -> S3Class {
    match operation {
        "PutObject"
        | "CopyObject"
        | "PostObject"
        | "ListObjectsV2"
        | "ListObjects"
        | "ListObjectVersions"
        | "ListBuckets"
        | "ListParts"
        | "ListMultipartUploads"
        | "CreateMultipartUpload"
        | "UploadPart"
        | "UploadPartCopy"
        | "CompleteMultipartUpload" => S3Class::Tier1,
        "DeleteObject" | "DeleteObjects" | "AbortMultipartUpload" => S3Class::Free,
        _ => S3Class::Tier2,
    }
}

/// Prices `usage` under `model` with `prices`.
pub fn estimate(usage: &Usage, model: &Model, prices: &Prices) -> Estimate {
    estimate_records(usage, 1, model, prices)
}

/// [`estimate`] of `records` usage records summed into `usage`.
pub fn estimate_records(usage: &Usage, records: usize, model: &Model, prices: &Prices) -> Estimate {
    let mut lines = Vec::new();
    let messages = usage.messages as f64;
    let polls = f64::from(model.polls);
    let api_calls = 1.0 + polls + usage.downloads as f64;

    // Lambda: the worker (one invocation per message), then the API functions.
    let worker_gb = f64::from(model.worker_memory_mb) / 1024.0;
    let api_gb = f64::from(model.api_memory_mb) / 1024.0;
    let gb_second = match model.arch {
        Arch::Arm64 => prices.lambda_gb_second_arm64,
        Arch::X86_64 => prices.lambda_gb_second_x86_64,
    };
    lines.push(Line::new(
        LAMBDA,
        "worker invocations (1 per message)",
        messages,
        "requests",
        prices.lambda_request,
        None,
    ));
    lines.push(Line::new(
        LAMBDA,
        format!(
            "worker compute ({} MB, {})",
            model.worker_memory_mb,
            model.arch.name()
        ),
        usage.wall_ms as f64 / 1000.0 * worker_gb,
        "GB-s",
        gb_second,
        Some(NOTE_WALL),
    ));
    lines.push(Line::new(
        LAMBDA,
        "API invocations (kick-off, polls, downloads)",
        api_calls,
        "requests",
        prices.lambda_request,
        Some(NOTE_API),
    ));
    lines.push(Line::new(
        LAMBDA,
        format!(
            "API compute ({} MB, {} ms each, {})",
            model.api_memory_mb,
            model.api_ms,
            model.arch.name()
        ),
        api_calls * f64::from(model.api_ms) / 1000.0 * api_gb,
        "GB-s",
        gb_second,
        Some(NOTE_API),
    ));

    lines.push(Line::new(
        HTTP_API,
        "requests (kick-off, polls, downloads)",
        api_calls,
        "requests",
        prices.http_api_request,
        Some(NOTE_API),
    ));

    // SQS: what the worker sent and changed, what the event source mapping did, the kick-off.
    lines.push(
        Line::new(
            SQS_SERVICE,
            "worker requests",
            usage.requests_to(SQS) as f64,
            "requests",
            prices.sqs_request,
            None,
        )
        .detail(operations(usage, SQS, |_| true)),
    );
    lines.push(Line::new(
        SQS_SERVICE,
        "event source receives + deletes (2 per message)",
        2.0 * messages,
        "requests",
        prices.sqs_request,
        Some(NOTE_ESM),
    ));
    lines.push(Line::new(
        SQS_SERVICE,
        "kick-off SendMessage",
        1.0,
        "requests",
        prices.sqs_request,
        None,
    ));

    // DynamoDB on-demand: request units, measured for the worker, modeled for the API.
    lines.push(
        Line::new(
            DYNAMODB_SERVICE,
            "worker write request units",
            usage.dynamodb_write_units,
            "WRU",
            prices.dynamodb_write_unit,
            None,
        )
        .detail(operations(usage, DYNAMODB, |op| !dynamodb_read(op))),
    );
    lines.push(
        Line::new(
            DYNAMODB_SERVICE,
            "worker read request units",
            usage.dynamodb_read_units,
            "RRU",
            prices.dynamodb_read_unit,
            None,
        )
        .detail(operations(usage, DYNAMODB, dynamodb_read)),
    );
    // A message's usage record cannot count its own write: one small PutItem each.
    lines.push(Line::new(
        DYNAMODB_SERVICE,
        "usage records (1 PutItem per message)",
        messages,
        "WRU",
        prices.dynamodb_write_unit,
        None,
    ));
    lines.push(Line::new(
        DYNAMODB_SERVICE,
        "API write request units (kick-off)",
        1.0,
        "WRU",
        prices.dynamodb_write_unit,
        Some(NOTE_DDB_API),
    ));
    lines.push(Line::new(
        DYNAMODB_SERVICE,
        "API read request units (kick-off, polls)",
        1.0 + 0.5 * polls,
        "RRU",
        prices.dynamodb_read_unit,
        Some(NOTE_DDB_API),
    ));

    // S3: requests by class, then storage.
    let (mut tier1, mut tier2, mut free) = (0u64, 0u64, 0u64);
    if let Some(ops) = usage.requests.get(S3) {
        for (op, n) in ops {
            match s3_class(op) {
                S3Class::Tier1 => tier1 += n,
                S3Class::Tier2 => tier2 += n,
                S3Class::Free => free += n,
            }
        }
    }
    lines.push(
        Line::new(
            S3_SERVICE,
            "PUT, COPY, POST, LIST requests",
            tier1 as f64,
            "requests",
            prices.s3_tier1_request,
            None,
        )
        .detail(operations(usage, S3, |op| s3_class(op) == S3Class::Tier1)),
    );
    lines.push(
        Line::new(
            S3_SERVICE,
            "GET, HEAD and other requests",
            tier2 as f64,
            "requests",
            prices.s3_tier2_request,
            None,
        )
        .detail(operations(usage, S3, |op| s3_class(op) == S3Class::Tier2)),
    );
    lines.push(
        Line::new(
            S3_SERVICE,
            "DELETE and abort requests",
            free as f64,
            "requests",
            Rate::new(0.0, 1.0, "request (free)"),
            Some(NOTE_S3_FREE),
        )
        .detail(operations(usage, S3, |op| s3_class(op) == S3Class::Free)),
    );
    lines.push(Line::new(
        S3_SERVICE,
        format!("storage of the output, {} h", trim(model.keep_hours, 2)),
        usage.bytes_written as f64 / GIB * model.keep_hours / HOURS_PER_MONTH,
        "GB-month",
        prices.s3_storage,
        Some(NOTE_S3_STORAGE),
    ));

    lines.push(Line::new(
        EVENTBRIDGE_SERVICE,
        "custom events (PutEvents)",
        usage.requests_of(EVENTBRIDGE, "PutEvents") as f64,
        "events",
        prices.eventbridge_event,
        Some(NOTE_EVENTS),
    ));

    let egress = Line::new(
        DATA_TRANSFER,
        "to the internet",
        usage.bytes_sent as f64 / GIB + model.egress_gb,
        "GB",
        prices.egress,
        Some(NOTE_EGRESS),
    );

    let mut services: Vec<Subtotal> = Vec::new();
    for line in &lines {
        match services.iter_mut().find(|s| s.service == line.service) {
            Some(s) => s.cost_usd += line.cost_usd,
            None => services.push(Subtotal {
                service: line.service,
                cost_usd: line.cost_usd,
            }),
        }
    }
    let total_usd: f64 = lines.iter().map(|l| l.cost_usd).sum();
    let total_with_egress_usd = total_usd + egress.cost_usd;
    let per_million =
        |usd: f64| (usage.resources > 0).then(|| usd / usage.resources as f64 * 1_000_000.0);

    let mut unpriced = Vec::new();
    for (service, ops) in &usage.requests {
        let priced = [S3, SQS, DYNAMODB];
        for (op, n) in ops {
            let known =
                priced.contains(&service.as_str()) || (service == EVENTBRIDGE && op == "PutEvents");
            if !known && *n > 0 {
                unpriced.push(format!("{service} {op}: {n}"));
            }
        }
    }

    Estimate {
        prices: PriceTable {
            name: prices.name,
            region: prices.region,
            date: prices.date,
            source: prices.source,
        },
        assumptions: model.clone(),
        records,
        resources: usage.resources,
        messages: usage.messages,
        chunks: usage.chunks,
        wall_ms: usage.wall_ms,
        cpu_ms: usage.cpu_ms,
        per_million_resources_usd: per_million(total_usd),
        per_million_resources_with_egress_usd: per_million(total_with_egress_usd),
        lines,
        services,
        total_usd,
        egress,
        total_with_egress_usd,
        unpriced,
        notes: GENERAL_NOTES.to_vec(),
    }
}

/// `PutObject 3, GetObject 2`: the operations of `service` that `pick` keeps, or nothing.
fn operations(usage: &Usage, service: &str, pick: impl Fn(&str) -> bool) -> String {
    usage
        .requests
        .get(service)
        .map(|ops| {
            ops.iter()
                .filter(|(op, n)| **n > 0 && pick(op))
                .map(|(op, n)| format!("{op} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

/// DynamoDB operations that consume read units.
fn dynamodb_read(operation: &str) -> bool {
    matches!(
        operation,
        "GetItem" | "BatchGetItem" | "Query" | "Scan" | "TransactGetItems"
    )
}

/// The estimate as a text table: a header, a block per service with its subtotal, the totals
/// and the notes.
pub fn render(e: &Estimate) -> String {
    let mut out = String::new();
    let a = &e.assumptions;
    let _ = writeln!(
        out,
        "fhir-export cost: {}, {}, prices of {}; {}, worker {} MB, API {} MB",
        e.prices.name,
        e.prices.region,
        e.prices.date,
        a.arch.name(),
        a.worker_memory_mb,
        a.api_memory_mb
    );
    let _ = writeln!(
        out,
        "usage: {} resources, {} worker messages ({} chunks), worker wall time {} s, CPU {} s{}",
        group(e.resources),
        group(e.messages),
        group(e.chunks),
        trim(e.wall_ms as f64 / 1000.0, 3),
        trim(e.cpu_ms as f64 / 1000.0, 3),
        if e.records > 1 {
            format!(" ({} usage records summed)", e.records)
        } else {
            String::new()
        }
    );

    // Footnote numbers in order of first use.
    let mut notes: Vec<&'static str> = Vec::new();
    let mut mark = |note: Option<&'static str>| -> String {
        match note {
            None => String::new(),
            Some(n) => {
                let i = match notes.iter().position(|x| *x == n) {
                    Some(i) => i,
                    None => {
                        notes.push(n);
                        notes.len() - 1
                    }
                };
                format!(" [{}]", i + 1)
            }
        }
    };

    let widths = (56usize, 18usize, 28usize, 12usize);
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<w0$} {:>w1$} {:<w2$} {:>w3$}",
        "service / item",
        "quantity",
        "  unit price",
        "cost (USD)",
        w0 = widths.0,
        w1 = widths.1,
        w2 = widths.2,
        w3 = widths.3
    );
    let rule = "-".repeat(widths.0 + widths.1 + widths.2 + widths.3 + 3);
    let _ = writeln!(out, "{rule}");
    let row = |out: &mut String, line: &Line, mark: String| {
        let _ = writeln!(
            out,
            "  {:<w0$} {:>w1$} {:<w2$} {:>w3$}",
            format!("{}{}", line.item, mark),
            format!("{} {}", quantity(line.quantity), line.unit),
            format!("  {}", rate(&line.price)),
            usd(line.cost_usd),
            w0 = widths.0 - 2,
            w1 = widths.1,
            w2 = widths.2,
            w3 = widths.3
        );
    };
    for subtotal in &e.services {
        let _ = writeln!(out, "{}", subtotal.service);
        for line in e.lines.iter().filter(|l| l.service == subtotal.service) {
            let m = mark(line.note);
            row(&mut out, line, m);
            if let Some(detail) = &line.detail {
                let _ = writeln!(out, "      {detail}");
            }
        }
        let _ = writeln!(
            out,
            "  {:<w$} {:>w3$}",
            "subtotal",
            usd(subtotal.cost_usd),
            w = widths.0 + widths.1 + widths.2,
            w3 = widths.3
        );
    }
    let total_width = widths.0 + widths.1 + widths.2 + 2;
    let _ = writeln!(out, "{rule}");
    let _ = writeln!(
        out,
        "{:<total_width$} {:>w3$}",
        "Total (requests and compute)",
        usd(e.total_usd),
        w3 = widths.3
    );
    let _ = writeln!(out);
    let _ = writeln!(out, "{} (not in the total above)", e.egress.service);
    let m = mark(e.egress.note);
    row(&mut out, &e.egress, m);
    let _ = writeln!(
        out,
        "{:<total_width$} {:>w3$}",
        "Total with egress",
        usd(e.total_with_egress_usd),
        w3 = widths.3
    );
    let _ = writeln!(out);
    match (
        e.per_million_resources_usd,
        e.per_million_resources_with_egress_usd,
    ) {
        (Some(total), Some(with_egress)) => {
            let _ = writeln!(
                out,
                "Per million resources: {} (with egress {})",
                usd(total),
                usd(with_egress)
            );
        }
        _ => {
            let _ = writeln!(out, "Per million resources: n/a (no resources exported)");
        }
    }
    if !e.unpriced.is_empty() {
        let _ = writeln!(out, "Not priced: {}", e.unpriced.join("; "));
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "Notes:");
    for (i, note) in notes.iter().enumerate() {
        let _ = writeln!(out, "  [{}] {}", i + 1, note);
    }
    for note in &e.notes {
        let _ = writeln!(out, "  - {note}");
    }
    let _ = writeln!(out, "  - Prices: {}.", e.prices.source);
    out
}

/// `$0.001234`: six decimals, thousands grouped.
pub fn usd(x: f64) -> String {
    let s = format!("{:.6}", x.abs());
    let (int, frac) = s.split_once('.').unwrap_or((s.as_str(), ""));
    let sign = if x < 0.0 && s.bytes().any(|b| (b'1'..=b'9').contains(&b)) {
        "-"
    } else {
        ""
    };
    format!("{sign}${}.{frac}", group_digits(int))
}

/// A quantity: whole numbers grouped, others with a few decimals.
pub fn quantity(x: f64) -> String {
    if x.is_finite() && x.fract() == 0.0 && x.abs() < 1e15 {
        return group_digits(&format!("{x:.0}"));
    }
    let decimals = if x.abs() >= 100.0 {
        1
    } else if x.abs() >= 1.0 {
        3
    } else {
        6
    };
    let s = trim(x, decimals);
    match s.split_once('.') {
        Some((int, frac)) => format!("{}.{frac}", group_digits(int)),
        None => group_digits(&s),
    }
}

/// `$0.20 / 1M requests`, `$0.0000133334 / GB-second`, `free`.
pub fn rate(r: &Rate) -> String {
    if r.usd == 0.0 {
        return "free".to_owned();
    }
    let mut price = format!("{}", r.usd);
    match price.split_once('.') {
        Some((_, frac)) if frac.len() == 1 => price.push('0'),
        None => price.push_str(".00"),
        _ => {}
    }
    format!("${price} / {}", r.unit)
}

fn group(n: u64) -> String {
    group_digits(&n.to_string())
}

fn group_digits(int: &str) -> String {
    let (sign, digits) = match int.strip_prefix('-') {
        Some(d) => ("-", d),
        None => ("", int),
    };
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    format!("{sign}{out}")
}

/// `x` with at most `decimals` decimals, trailing zeros dropped.
fn trim(x: f64, decimals: usize) -> String {
    let s = format!("{x:.decimals$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        s
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn s3_operations_fall_in_their_billing_class() {
        for op in [
            "PutObject",
            "CopyObject",
            "ListObjectsV2",
            "CreateMultipartUpload",
            "UploadPart",
            "CompleteMultipartUpload",
        ] {
            assert_eq!(s3_class(op), S3Class::Tier1, "{op}");
        }
        for op in ["GetObject", "HeadObject", "GetObjectTagging"] {
            assert_eq!(s3_class(op), S3Class::Tier2, "{op}");
        }
        for op in ["DeleteObject", "DeleteObjects", "AbortMultipartUpload"] {
            assert_eq!(s3_class(op), S3Class::Free, "{op}");
        }
    }

    #[test]
    fn numbers_are_formatted_for_reading() {
        assert_eq!(usd(0.0), "$0.000000");
        assert_eq!(usd(1234.5), "$1,234.500000");
        assert_eq!(usd(0.0000004), "$0.000000");
        assert_eq!(quantity(1_000_000.0), "1,000,000");
        assert_eq!(quantity(12.5), "12.5");
        assert_eq!(quantity(0.0328767), "0.032877");
        assert_eq!(quantity(123456.78), "123,456.8");
        assert_eq!(
            rate(&Rate::new(0.2, 1e6, "1M requests")),
            "$0.20 / 1M requests"
        );
        assert_eq!(
            rate(&Rate::new(0.0000133334, 1.0, "GB-second")),
            "$0.0000133334 / GB-second"
        );
        assert_eq!(rate(&Rate::new(1.0, 1e6, "1M events")), "$1.00 / 1M events");
        assert_eq!(rate(&Rate::new(0.0, 1.0, "x")), "free");
    }

    #[test]
    fn unknown_services_are_listed_as_not_priced() {
        let mut usage = Usage::default();
        usage.count("lambda", "Invoke", 2);
        usage.count(S3, "GetObject", 1);
        let e = estimate(&usage, &Model::default(), &super::super::prices::US_EAST_1);
        assert_eq!(e.unpriced, vec!["lambda Invoke: 2".to_owned()]);
        assert!(render(&e).contains("Not priced: lambda Invoke: 2"));
    }

    #[test]
    fn the_us_east_1_table_prices_a_million_requests_at_the_list_price() {
        let p = &super::super::prices::US_EAST_1;
        let close = |a: f64, b: f64| (a - b).abs() < 1e-12;
        assert!(close(p.lambda_request.cost(1e6), 0.20));
        assert!(close(p.sqs_request.cost(1e6), 0.40));
        assert!(close(p.dynamodb_write_unit.cost(1e6), 0.625));
        assert!(close(p.dynamodb_read_unit.cost(1e6), 0.125));
        assert!(close(p.s3_tier1_request.cost(1e6), 5.0));
        assert!(close(p.s3_tier2_request.cost(1e6), 0.4));
        assert!(close(p.eventbridge_event.cost(1e6), 1.0));
        assert!(close(p.http_api_request.cost(1e6), 1.0));
        assert!(close(p.lambda_gb_second_arm64.cost(1.0), 0.0000133334));
        assert!(close(p.lambda_gb_second_x86_64.cost(1.0), 0.0000166667));
        assert!(close(p.s3_storage.cost(1.0), 0.023));
        assert!(close(p.egress.cost(1.0), 0.09));
    }
}
