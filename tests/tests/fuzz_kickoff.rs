//! A bounded-time fuzz test of kick-off parsing that runs under plain `cargo test` on stable
//! Rust: no cargo-fuzz, no nightly, no extra dependency.
//!
//! # What it does
//!
//! 1. Loads every `*.json` file in `tests/fuzz/kickoff/` (the seed corpus) and runs each case
//!    unmutated: the outcome must be the one the file records, so the corpus doubles as a
//!    regression set.
//! 2. Mutates the cases for a bounded wall time and feeds every result through the kick-off
//!    path the HTTP layer runs (`LogicalId::parse` of a Group id, `parse_kickoff`,
//!    `check_limits`, `narrow_patients`, the error's `Display` and `expression`), inside
//!    `catch_unwind`. A panic, or a broken invariant of an accepted request (see
//!    [`invariants`]), fails the test and prints the input, Rust-escaped and as a corpus file,
//!    so it can be added to the corpus.
//!
//! Mutations: byte flips and overwrites, byte insertion and deletion, range deletion and
//! truncation, interesting tokens (bad percent escapes, `&&`, `==`, parameter names,
//! instants, unicode, NUL, numbers such as `1e999`, JSON fragments), long repeats, deeply
//! nested JSON, splicing and crossover between cases, `&`-aware query edits and JSON-aware
//! body edits; applied to the query string, the POST body, the `Content-Type`, `Accept` and
//! `Prefer` headers, the method and the level (Group ids). Inputs that reach an outcome not
//! seen before (an error kind and message shape, or the set of fields an accepted request
//! fills) join the pool that later mutations start from.
//!
//! # Environment
//!
//! - `FHIR_EXPORT_FUZZ_SECS`: fuzzing time in seconds (default 8; `0` runs only the corpus).
//! - `FHIR_EXPORT_FUZZ_SEED`: the RNG seed (decimal or `0x` hex). Without it the seed is a
//!   fixed constant mixed with the current time; it is printed, and a failure can be replayed
//!   by setting it (the run is deterministic up to the failing execution, which is printed).
//!
//! # Corpus format
//!
//! One JSON object per file:
//!
//! ```json
//! {
//!   "note": "free text (optional)",
//!   "level": "system" | "patient" | "group:ID",
//!   "method": "GET" | "POST",                 (optional, default GET)
//!   "query": "raw query string, no `?`",       (optional; absent or null: no query string)
//!   "body": "raw text" | {any JSON value},     (optional; a JSON value is sent serialized)
//!   "body_hex": "7b7d",                        (optional, instead of body: arbitrary bytes)
//!   "content_type": "application/fhir+json",   (optional; absent or null: no header)
//!   "accept": ["application/fhir+json"],       (optional; one entry per header line)
//!   "prefer": ["respond-async"],               (optional; one entry per header line)
//!   "expect": "ok" | "err",                    (outcome of parse_kickoff then check_limits)
//!   "error": "UnknownParameter",               (optional, with err: the KickoffError variant)
//!   "at": "_since" | null                      (optional, with err: KickoffError::expression)
//! }
//! ```

use std::cell::RefCell;
use std::collections::HashSet;
use std::fmt::Write as _;
use std::panic::{self, AssertUnwindSafe};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value, json};
use shared::compartment::in_patient_compartment;
use shared::layout::valid_container;
use shared::model::{LogicalId, ResourceType};
use shared::request::{
    Capabilities, ExportLevel, ExportRequest, KickoffError, KickoffInput, Limits, Method,
    check_limits, narrow_patients, parse_kickoff,
};

const DEFAULT_SECS: f64 = 8.0;
const DEFAULT_SEED: u64 = 0x5eed_f41c_0ff5_2024;
/// Mutated fields are cut back to this size, so that one execution stays short.
const MAX_FIELD: usize = 96 * 1024;
/// Mutated cases kept to start from, besides the seeds.
const MAX_POOL: usize = 4096;
/// Larger mutated cases are run but not kept: they slow every later execution down.
const MAX_POOLED: usize = 16 * 1024;
const URL_BASE: &str = "http://fuzz.example/fhir";

// ---------------------------------------------------------------------------------------------
// Cases

#[derive(Debug, Clone, PartialEq)]
enum Level {
    System,
    Patient,
    /// The id as the client sent it; the HTTP layer refuses one that is not a logical id.
    Group(String),
}

#[derive(Clone)]
struct Case {
    level: Level,
    method: Method,
    query: Option<String>,
    body: Vec<u8>,
    content_type: Option<String>,
    accept: Vec<String>,
    prefer: Vec<String>,
}

/// `b"..."`, as Rust source.
fn rust_bytes(b: &[u8]) -> String {
    format!("b\"{}\"", b.escape_ascii())
}

impl std::fmt::Debug for Case {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Case")
            .field("level", &self.level)
            .field("method", &self.method)
            .field("query", &self.query)
            .field("body", &format_args!("{}", rust_bytes(&self.body)))
            .field("content_type", &self.content_type)
            .field("accept", &self.accept)
            .field("prefer", &self.prefer)
            .finish()
    }
}

impl Case {
    /// The case as a corpus file (with `expect` left for the reader to fill in).
    fn to_corpus_json(&self) -> String {
        let mut o = Map::new();
        let level = match &self.level {
            Level::System => "system".to_owned(),
            Level::Patient => "patient".to_owned(),
            Level::Group(id) => format!("group:{id}"),
        };
        o.insert("level".into(), level.into());
        let method = if self.method == Method::Post {
            "POST"
        } else {
            "GET"
        };
        o.insert("method".into(), method.into());
        if let Some(q) = &self.query {
            o.insert("query".into(), q.clone().into());
        }
        match std::str::from_utf8(&self.body) {
            Ok("") => {}
            Ok(s) => {
                o.insert("body".into(), s.into());
            }
            Err(_) => {
                let hex = self.body.iter().fold(String::new(), |mut s, b| {
                    let _ = write!(s, "{b:02x}");
                    s
                });
                o.insert("body_hex".into(), hex.into());
            }
        }
        if let Some(ct) = &self.content_type {
            o.insert("content_type".into(), ct.clone().into());
        }
        o.insert("accept".into(), json!(self.accept));
        o.insert("prefer".into(), json!(self.prefer));
        o.insert("expect".into(), "FILL IN: ok or err".into());
        serde_json::to_string_pretty(&Value::Object(o)).unwrap_or_default()
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Expect {
    Ok,
    Err {
        /// The `KickoffError` variant, if the file names it.
        error: Option<String>,
        /// `KickoffError::expression()`, if the file gives `at` (`null` for none).
        at: Option<Option<String>>,
    },
}

struct Seed {
    file: String,
    case: Case,
    expect: Expect,
}

const CASE_KEYS: &[&str] = &[
    "note",
    "level",
    "method",
    "query",
    "body",
    "body_hex",
    "content_type",
    "accept",
    "prefer",
    "expect",
    "error",
    "at",
];

fn opt_string(o: &Map<String, Value>, key: &str) -> Result<Option<String>, String> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(v) => Err(format!("`{key}` must be a string or null, not {v}")),
    }
}

fn string_list(o: &Map<String, Value>, key: &str) -> Result<Vec<String>, String> {
    match o.get(key) {
        None => Ok(Vec::new()),
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| format!("`{key}` must hold strings only"))
            })
            .collect(),
        Some(v) => Err(format!("`{key}` must be an array of strings, not {v}")),
    }
}

fn from_hex(s: &str) -> Result<Vec<u8>, String> {
    let digits: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    digits
        .chunks(2)
        .map(|pair| {
            std::str::from_utf8(pair)
                .ok()
                .filter(|p| p.len() == 2)
                .and_then(|p| u8::from_str_radix(p, 16).ok())
                .ok_or_else(|| "`body_hex` is not pairs of hex digits".to_owned())
        })
        .collect()
}

fn parse_seed(text: &str) -> Result<(Case, Expect), String> {
    let doc: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let o = doc.as_object().ok_or("not a JSON object")?;
    if let Some(k) = o.keys().find(|k| !CASE_KEYS.contains(&k.as_str())) {
        return Err(format!("unknown key `{k}` (known: {CASE_KEYS:?})"));
    }
    let level = match o.get("level").and_then(Value::as_str) {
        Some("system") => Level::System,
        Some("patient") => Level::Patient,
        Some(l) if l.starts_with("group:") => Level::Group(l["group:".len()..].to_owned()),
        other => return Err(format!("bad `level` {other:?}")),
    };
    let method = match o.get("method").and_then(Value::as_str) {
        None | Some("GET") => Method::Get,
        Some("POST") => Method::Post,
        Some(m) => return Err(format!("bad `method` {m:?}")),
    };
    let body = match (o.get("body"), o.get("body_hex")) {
        (Some(_), Some(_)) => return Err("give `body` or `body_hex`, not both".into()),
        (None, None) | (Some(Value::Null), None) => Vec::new(),
        (Some(Value::String(s)), None) => s.clone().into_bytes(),
        (Some(v), None) => serde_json::to_vec(v).map_err(|e| e.to_string())?,
        (None, Some(h)) => from_hex(h.as_str().ok_or("`body_hex` must be a string")?)?,
    };
    let case = Case {
        level,
        method,
        query: opt_string(o, "query")?,
        body,
        content_type: opt_string(o, "content_type")?,
        accept: string_list(o, "accept")?,
        prefer: string_list(o, "prefer")?,
    };
    let expect = match o.get("expect").and_then(Value::as_str) {
        Some("ok") => {
            if o.contains_key("error") || o.contains_key("at") {
                return Err("`error` and `at` go with `\"expect\": \"err\"`".into());
            }
            Expect::Ok
        }
        Some("err") => Expect::Err {
            error: opt_string(o, "error")?,
            at: match o.get("at") {
                None => None,
                Some(Value::Null) => Some(None),
                Some(Value::String(s)) => Some(Some(s.clone())),
                Some(v) => return Err(format!("`at` must be a string or null, not {v}")),
            },
        },
        other => return Err(format!("`expect` must be \"ok\" or \"err\", not {other:?}")),
    };
    Ok((case, expect))
}

fn load_corpus() -> Vec<Seed> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/kickoff");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus folder {}: {e}", dir.display()))
        .map(|entry| {
            entry
                .unwrap_or_else(|e| panic!("corpus folder {}: {e}", dir.display()))
                .path()
        })
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    paths.sort();
    paths
        .iter()
        .map(|p| {
            let file = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let text = std::fs::read_to_string(p)
                .unwrap_or_else(|e| panic!("corpus file {}: {e}", p.display()));
            let (case, expect) =
                parse_seed(&text).unwrap_or_else(|e| panic!("corpus file {file}: {e}"));
            Seed { file, case, expect }
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Running one case

/// What the kick-off path made of a case.
type Outcome = Result<ExportRequest, KickoffError>;

/// The kick-off path of the HTTP layer, minus the store: a Group id that is not a logical id
/// is refused before parsing, as `shared::http::kickoff::group` does.
fn kickoff(case: &Case) -> Outcome {
    let (level, path) = match &case.level {
        Level::System => (ExportLevel::System, "/$export".to_owned()),
        Level::Patient => (ExportLevel::Patient, "/Patient/$export".to_owned()),
        Level::Group(id) => match LogicalId::parse(id) {
            Ok(lid) => (ExportLevel::Group(lid), format!("/Group/{id}/$export")),
            Err(_) => return Err(KickoffError::GroupNotFound { id: id.clone() }),
        },
    };
    let input = KickoffInput {
        level,
        method: case.method,
        query: case.query.as_deref(),
        body: &case.body,
        content_type: case.content_type.as_deref(),
        accept: case.accept.iter().map(String::as_str).collect(),
        prefer: case.prefer.iter().map(String::as_str).collect(),
        url: format!("{URL_BASE}{path}"),
    };
    let req = parse_kickoff(&input, &Capabilities::CURRENT)?;
    check_limits(&req, &Limits::default())?;
    Ok(req)
}

fn variant(e: &KickoffError) -> String {
    format!("{e:?}")
        .chars()
        .take_while(char::is_ascii_alphanumeric)
        .collect()
}

fn describe(o: &Outcome) -> String {
    match o {
        Ok(_) => "ok".into(),
        Err(e) => format!("err {} at {:?}: {e}", variant(e), e.expression()),
    }
}

/// What must hold of every request the kick-off accepts, whatever the input.
fn invariants(case: &Case, req: &ExportRequest) -> Result<(), String> {
    let expected_level = match &case.level {
        Level::System => ExportLevel::System,
        Level::Patient => ExportLevel::Patient,
        Level::Group(id) => ExportLevel::Group(LogicalId::parse(id).map_err(|e| e.to_string())?),
    };
    if req.level != expected_level {
        return Err(format!("level {:?} became {:?}", expected_level, req.level));
    }
    if !case
        .prefer
        .iter()
        .any(|p| p.to_ascii_lowercase().contains("respond-async"))
    {
        return Err("accepted without `Prefer: respond-async`".into());
    }
    if let (Some(s), Some(u)) = (req.since, req.until)
        && u <= s
    {
        return Err(format!("accepted `_until` {u} not after `_since` {s}"));
    }
    if !req.request_url.starts_with(URL_BASE) {
        return Err(format!("request_url {:?}", req.request_url));
    }
    if case.method == Method::Post {
        if req.request_url.contains('?') {
            return Err(format!(
                "POST request_url has a query: {:?}",
                req.request_url
            ));
        }
        if case.body.iter().all(u8::is_ascii_whitespace) {
            return Err("POST accepted with an empty body".into());
        }
        if let Some(ct) = &case.content_type {
            let media = ct
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            if media != "application/fhir+json" && media != "application/json" {
                return Err(format!("POST accepted with Content-Type {ct:?}"));
            }
        }
    }
    if req.level == ExportLevel::System && !req.patients.is_empty() {
        return Err("`patient` accepted at system level".into());
    }
    if req.is_patient_level()
        && let Some(types) = &req.types
        && let Some(t) = types.iter().find(|t| !in_patient_compartment(**t))
    {
        return Err(format!("{t} kept at a patient-level export"));
    }
    if let Some(c) = &req.container
        && !valid_container(c)
    {
        return Err(format!("invalid `_container` {c:?} accepted"));
    }
    if let Some(t) = req.organize_output_by
        && t != ResourceType::PATIENT
    {
        return Err(format!("organizeOutputBy {t} accepted"));
    }
    for f in &req.type_filters {
        if f.params.is_empty() {
            return Err(format!("filter {:?} accepted without parameters", f.raw));
        }
    }
    // The request is stored with the job and read back by the workers.
    let stored = serde_json::to_string(req).map_err(|e| format!("does not serialize: {e}"))?;
    let read: ExportRequest = serde_json::from_str(&stored)
        .map_err(|e| format!("does not deserialize: {e}: {stored}"))?;
    if &read != req {
        return Err(format!("changes through serde: {stored}"));
    }
    Ok(())
}

/// Every text of a case, lowercased, to tell input echoed in a message from the message.
fn case_text(case: &Case) -> String {
    let mut t = String::from_utf8_lossy(&case.body).to_ascii_lowercase();
    for part in case
        .query
        .iter()
        .chain(&case.content_type)
        .chain(&case.accept)
        .chain(&case.prefer)
    {
        t.push('\n');
        t.push_str(&part.to_ascii_lowercase());
    }
    if let Level::Group(id) = &case.level {
        t.push('\n');
        t.push_str(&id.to_ascii_lowercase());
    }
    t
}

/// What a [`KickoffError::expression`] may name, besides input echoed back.
const KNOWN_NAMES: &[&str] = &[
    "_outputFormat",
    "_since",
    "_until",
    "_till",
    "_type",
    "_elements",
    "_typeFilter",
    "patient",
    "includeAssociatedData",
    "_container",
    "organizeOutputBy",
    "allowPartialManifests",
    "Accept",
    "Prefer",
    "Content-Type",
    "Group",
];

/// A coarse stand-in for coverage: the error kind, where it points (if a known name) and the
/// words of its message that do not come from the input, or which fields an accepted request
/// fills.
fn signature(case: &Case, o: &Outcome) -> String {
    match o {
        Ok(r) => format!(
            "ok {:?} {:?} {}",
            std::mem::discriminant(&r.level),
            r.handling,
            [
                r.since.is_some(),
                r.until.is_some(),
                r.types.is_some(),
                r.types.as_ref().is_some_and(Vec::is_empty),
                !r.type_filters.is_empty(),
                !r.elements.is_empty(),
                !r.patients.is_empty(),
                !r.include_associated.is_empty(),
                r.container.is_some(),
                r.organize_output_by.is_some(),
                r.allow_partial_manifests,
                !r.ignored.is_empty(),
            ]
            .map(|b| if b { '1' } else { '0' })
            .iter()
            .collect::<String>(),
        ),
        Err(e) => {
            let at = e.expression().unwrap_or_default();
            let at = if KNOWN_NAMES.contains(&at.as_str()) {
                at
            } else {
                "?".into()
            };
            let mut shape = format!("{} {at}", variant(e));
            if matches!(
                e,
                KickoffError::GroupNotFound { .. }
                    | KickoffError::NotAcceptable { .. }
                    | KickoffError::UnsupportedMediaType { .. }
                    | KickoffError::UnknownParameter { .. }
            ) {
                // Their message is the input echoed.
                return shape;
            }
            // Words of the message that are not echoed input: the message's template.
            let input = case_text(case);
            let text = e.to_string();
            let words = text
                .split(|c: char| !c.is_ascii_lowercase())
                .filter(|w| w.len() >= 3)
                .take(40)
                .filter(|w| !input.contains(w))
                .take(8);
            for w in words {
                shape.push(' ');
                shape.push_str(w);
            }
            shape
        }
    }
}

thread_local! {
    /// The last panic's message and location, from the panic hook.
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

fn install_panic_hook() {
    panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "(non-string panic payload)".into());
        let at = info
            .location()
            .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()))
            .unwrap_or_default();
        let text = format!("{msg} (at {at})");
        eprintln!("panic: {text}");
        LAST_PANIC.with(|p| *p.borrow_mut() = Some(text));
    }));
}

/// Runs a case through the kick-off path and everything done with its result. `Err` is a
/// failure: a panic or a broken invariant, described.
fn execute(case: &Case, check_determinism: bool) -> Result<Outcome, String> {
    LAST_PANIC.with(|p| p.borrow_mut().take());
    let run = panic::catch_unwind(AssertUnwindSafe(|| {
        let outcome = kickoff(case);
        match &outcome {
            Ok(req) => {
                invariants(case, req)?;
                let mut narrowed = req.clone();
                // Keep the patients whose id has an even length: some stay, some go.
                let _ = narrow_patients(&mut narrowed, &|p| p.len().is_multiple_of(2), "fuzz");
            }
            Err(e) => {
                if e.to_string().is_empty() {
                    return Err("an error with an empty message".to_owned());
                }
                let _ = e.expression();
            }
        }
        if check_determinism {
            let again = kickoff(case);
            if again != outcome {
                return Err(format!(
                    "not deterministic: {} then {}",
                    describe(&outcome),
                    describe(&again)
                ));
            }
        }
        Ok(outcome)
    }));
    match run {
        Ok(r) => r,
        Err(_) => Err(format!(
            "PANIC: {}",
            LAST_PANIC
                .with(|p| p.borrow_mut().take())
                .unwrap_or_else(|| "(no message)".into())
        )),
    }
}

// ---------------------------------------------------------------------------------------------
// Randomness and mutation

/// xorshift64*: small, fast, deterministic.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        // SplitMix64 scramble, so that close seeds diverge and zero is not a fixed point.
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Rng((z ^ (z >> 31)) | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `0..n` (`n > 0`).
    fn below(&mut self, n: usize) -> usize {
        ((self.next() >> 32) as usize * n) >> 32
    }

    /// In `0..=n`.
    fn upto(&mut self, n: usize) -> usize {
        self.below(n + 1)
    }

    fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    /// A small number most of the time, now and then a large one.
    fn count(&mut self) -> usize {
        match self.below(8) {
            0..=4 => 1 + self.below(8),
            5 | 6 => 1 + self.below(200),
            _ => 1 + self.below(5_000),
        }
    }
}

const TOKENS: &[&str] = &[
    "%",
    "%z",
    "%zz",
    "%0",
    "%00",
    "%2C",
    "%2c",
    "%3F",
    "%3D",
    "%26",
    "%25",
    "%20",
    "%FF",
    "%C3%28",
    "%E2%82",
    "%F0%9F%98%80",
    "&",
    "&&",
    "=",
    "==",
    ",",
    ",,",
    "?",
    "??",
    ":",
    ";",
    ".",
    "/",
    "|",
    "+",
    "-",
    " ",
    "\t",
    "_type=",
    "_type=Patient",
    "_typeFilter=",
    "_typeFilter=Patient?",
    "_typeFilter=Observation%3Fcode%3D",
    "_typeFilter=Observation?status=final",
    "_since=",
    "_since=2024-01-01T00:00:00Z",
    "_until=",
    "_till=",
    "_elements=",
    "_elements=id",
    "_outputFormat=",
    "_outputFormat=ndjson",
    "_container=",
    "patient=",
    "patient=Patient/p1",
    "includeAssociatedData=",
    "organizeOutputBy=",
    "allowPartialManifests=",
    "_include=",
    "_count=",
    "code:not=",
    ":missing=true",
    ":exact=",
    "Patient",
    "Patient/",
    "Observation",
    "Group",
    "Provenance",
    "Organization",
    "MedicationRequest",
    "birthDate",
    "LatestProvenanceResources",
    "RelevantProvenanceResources",
    "respond-async",
    "handling=lenient",
    "handling=strict",
    "handling=",
    "handling=\"lenient\"",
    "q=0",
    ";q=0.5",
    ";q=-1",
    ";q=NaN",
    "application/fhir+json",
    "application/json",
    "application/*",
    "*/*",
    "text/html",
    "charset=utf-8",
    "\u{0}",
    "\u{7f}",
    "\u{FFFD}",
    "\u{FEFF}",
    "\u{202E}",
    "\u{10FFFF}",
    "é",
    "ß",
    "İ",
    "Ω",
    "😀",
    "\r\n",
    "1e999",
    "-1e999",
    "1e-999",
    "18446744073709551616",
    "-9223372036854775809",
    "0",
    "-0",
    "NaN",
    "9999-12-31T23:59:59Z",
    "0000-01-01T00:00:00Z",
    "262143-12-31T23:59:59Z",
    "2024-02-30T00:00:00Z",
    "2024-02-29T24:00:00Z",
    "2024-01-01T00:00:60Z",
    "2024-01-01T00:00:00.1234567890123456789Z",
    "2024-01-01T00:00:00+14:00",
    "2024-01-01T00:00:00-23:59",
    "+99:99",
    "2024",
    "2024-01",
    "T",
    "Z",
    "\"resourceType\":\"Parameters\"",
    "{\"resourceType\":\"Parameters\"}",
    "\"parameter\":[",
    "\"parameter\":{}",
    "{\"name\":\"_type\",\"valueString\":\"Patient\"}",
    "{\"name\":\"patient\",\"valueReference\":{\"reference\":\"Patient/p1\"}}",
    "\"valueReference\":{\"reference\":",
    "\"valueReference\":{}",
    "\"valueBoolean\":true",
    "\"valueInteger\":1",
    "\"valueString\":",
    "\"valueInstant\":",
    "\"name\":",
    "null",
    "true",
    "[]",
    "{}",
    "[",
    "]",
    "{",
    "}",
    "\"",
    "\\",
    "\\u0000",
    "\\ud800",
    "\\udc00\\ud800",
    "\\uFFFF",
];

/// Bytes worth setting more often than chance would.
const BYTES: &[u8] = b"\0\x01\x7f\x80\xbf\xc0\xc3\xe2\xf0\xff%&=,?:;\"\\{}[] \t\n/+-.#0129aAzZT";

/// Text that nests JSON `depth` levels deep, opened and maybe closed.
fn nested(rng: &mut Rng, depth: usize) -> Vec<u8> {
    let (open, close): (&[u8], &[u8]) = match rng.below(3) {
        0 => (b"[", b"]"),
        1 => (b"{\"a\":", b"}"),
        _ => (b"{\"parameter\":[", b"]}"),
    };
    let mut out = open.repeat(depth);
    if rng.chance(2) {
        out.extend_from_slice(b"1");
        out.extend(close.repeat(depth));
    }
    out
}

fn trim_to_max(b: &mut Vec<u8>) {
    if b.len() > MAX_FIELD {
        b.truncate(MAX_FIELD);
    }
}

/// One byte-level mutation of `b`. `donors` are the same field of other cases.
fn mutate_bytes(rng: &mut Rng, b: &mut Vec<u8>, donors: &[&[u8]]) {
    let len = b.len();
    let pos = rng.upto(len);
    match rng.below(14) {
        0 if len > 0 => {
            let i = rng.below(len);
            b[i] ^= 1 << rng.below(8);
        }
        1 if len > 0 => {
            let i = rng.below(len);
            b[i] = if rng.chance(2) {
                *rng.pick(BYTES)
            } else {
                rng.next() as u8
            };
        }
        2 => {
            let v = if rng.chance(2) {
                *rng.pick(BYTES)
            } else {
                rng.next() as u8
            };
            b.insert(pos, v);
        }
        3 if len > 0 => {
            let start = rng.below(len);
            let n = 1 + rng.below((len - start).min(32));
            b.drain(start..start + n);
        }
        4 | 5 => {
            let t = rng.pick(TOKENS).as_bytes();
            b.splice(pos..pos, t.iter().copied());
        }
        6 if len > 0 => {
            // Overwrite a range with a token.
            let start = rng.below(len);
            let n = rng.upto((len - start).min(16));
            let t = rng.pick(TOKENS).as_bytes();
            b.splice(start..start + n, t.iter().copied());
        }
        7 => {
            // A long repeat of a token or of a slice of the input.
            let unit: Vec<u8> = if len > 0 && rng.chance(2) {
                let start = rng.below(len);
                let n = 1 + rng.below((len - start).min(48));
                b[start..start + n].to_vec()
            } else {
                rng.pick(TOKENS).as_bytes().to_vec()
            };
            let times = rng.count();
            let rep = unit.repeat(times.min(MAX_FIELD / unit.len().max(1)));
            b.splice(pos..pos, rep);
        }
        8 => {
            let depth = rng.count() * 2;
            let n = nested(rng, depth.min(20_000));
            b.splice(pos..pos, n);
        }
        9 if !donors.is_empty() => {
            // Splice: this case's head, another case's tail.
            let d = *rng.pick(donors);
            let cut = rng.upto(d.len());
            b.truncate(pos);
            b.extend_from_slice(&d[cut..]);
        }
        10 if !donors.is_empty() => {
            // Crossover: a piece of another case inserted here.
            let d = *rng.pick(donors);
            if !d.is_empty() {
                let start = rng.below(d.len());
                let n = 1 + rng.below((d.len() - start).min(64));
                b.splice(pos..pos, d[start..start + n].iter().copied());
            }
        }
        11 => b.truncate(pos),
        12 if len > 0 => {
            // Nudge a digit (dates, numbers).
            let start = rng.below(len);
            if let Some(i) = (start..len).find(|&i| b[i].is_ascii_digit()) {
                b[i] = b'0' + rng.below(10) as u8;
            }
        }
        13 if len > 1 => {
            // Swap two bytes.
            let i = rng.below(len);
            let j = rng.below(len);
            b.swap(i, j);
        }
        _ => b.insert(pos, *rng.pick(BYTES)),
    }
    trim_to_max(b);
}

fn to_text(b: Vec<u8>) -> String {
    String::from_utf8(b).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

fn mutate_text(rng: &mut Rng, s: &mut String, donors: &[&[u8]]) {
    let mut b = std::mem::take(s).into_bytes();
    mutate_bytes(rng, &mut b, donors);
    *s = to_text(b);
}

/// A `name=value` pair from some query string of the pool, or a token.
fn pair_donor(rng: &mut Rng, pool: &[Case]) -> String {
    let c = rng.pick(pool);
    if let Some(q) = &c.query {
        let pairs: Vec<&str> = q.split('&').filter(|p| !p.is_empty()).collect();
        if !pairs.is_empty() {
            return (*rng.pick(&pairs)).to_owned();
        }
    }
    rng.pick(TOKENS).to_string()
}

/// A query-aware edit: whole `&`-separated pairs duplicated, dropped, swapped, borrowed.
fn mutate_query(rng: &mut Rng, q: &mut String, pool: &[Case]) {
    let mut pairs: Vec<String> = q.split('&').map(str::to_owned).collect();
    let n = pairs.len();
    match rng.below(6) {
        0 => {
            let p = pairs[rng.below(n)].clone();
            for _ in 0..rng.count().min(2_000) {
                pairs.push(p.clone());
            }
        }
        1 if n > 1 => {
            pairs.remove(rng.below(n));
        }
        2 if n > 1 => {
            let (i, j) = (rng.below(n), rng.below(n));
            pairs.swap(i, j);
        }
        3 => {
            // Keep the name, mutate the value.
            let i = rng.below(n);
            let (name, value) = pairs[i]
                .split_once('=')
                .map(|(a, b)| (a.to_owned(), b.to_owned()))
                .unwrap_or_else(|| (pairs[i].clone(), String::new()));
            let mut value = value;
            mutate_text(rng, &mut value, &[]);
            pairs[i] = format!("{name}={value}");
        }
        _ => {
            let d = pair_donor(rng, pool);
            pairs.insert(rng.upto(n), d);
        }
    }
    let mut b = pairs.join("&").into_bytes();
    trim_to_max(&mut b);
    *q = to_text(b);
}

/// How many strings a JSON value holds (object keys left out).
fn count_strings(v: &Value) -> usize {
    match v {
        Value::String(_) => 1,
        Value::Array(a) => a.iter().map(count_strings).sum(),
        Value::Object(o) => o.values().map(count_strings).sum(),
        _ => 0,
    }
}

/// The `k`th string of a JSON value, in the order of [`count_strings`].
fn nth_string<'a>(v: &'a mut Value, k: &mut usize) -> Option<&'a mut String> {
    match v {
        Value::String(s) => {
            if *k == 0 {
                return Some(s);
            }
            *k -= 1;
            None
        }
        Value::Array(a) => a.iter_mut().find_map(|x| nth_string(x, k)),
        Value::Object(o) => o.values_mut().find_map(|x| nth_string(x, k)),
        _ => None,
    }
}

const VALUE_KEYS: &[&str] = &[
    "valueString",
    "valueCode",
    "valueInstant",
    "valueDateTime",
    "valueUri",
    "valueUrl",
    "valueCanonical",
    "valueId",
    "valueBoolean",
    "valueReference",
    "valueInteger",
    "valueDecimal",
    "value",
    "valueCoding",
];

/// A JSON-aware edit of a Parameters body, so that mutations reach past the JSON parser.
/// Returns false when the body is not JSON.
fn mutate_json_body(rng: &mut Rng, body: &mut Vec<u8>, pool: &[Case]) -> bool {
    let Ok(mut doc) = serde_json::from_slice::<Value>(body) else {
        return false;
    };
    let choice = rng.below(6);
    let has_params = doc
        .get("parameter")
        .and_then(Value::as_array)
        .is_some_and(|p| !p.is_empty());
    let params = if choice < 4 && has_params {
        doc.get_mut("parameter").and_then(Value::as_array_mut)
    } else {
        None
    };
    match (choice, params) {
        (0, Some(p)) => {
            let i = rng.below(p.len());
            let item = p[i].clone();
            for _ in 0..rng.count().min(2_000) {
                p.push(item.clone());
            }
        }
        (1, Some(p)) => {
            p.remove(rng.below(p.len()));
        }
        (2, Some(p)) => {
            // Change the value[x] kind, keeping the value.
            let i = rng.below(p.len());
            if let Some(o) = p[i].as_object_mut() {
                let key = o.keys().find(|k| k.starts_with("value")).cloned();
                let new_key = rng.pick(VALUE_KEYS).to_string();
                match key.and_then(|k| o.remove(&k)) {
                    Some(v) => o.insert(new_key, v),
                    None => o.insert(new_key, Value::String("Patient".into())),
                };
            }
        }
        (3, Some(p)) => {
            // A query-string pair as a parameter.
            let pair = pair_donor(rng, pool);
            let (name, value) = pair.split_once('=').unwrap_or((&pair, ""));
            let key = if name == "patient" {
                "valueReference"
            } else {
                "valueString"
            };
            let value = if key == "valueReference" {
                json!({ "reference": value })
            } else {
                Value::String(value.to_owned())
            };
            let at = rng.upto(p.len());
            p.insert(at, json!({ "name": name, key: value }));
        }
        _ => {
            // Mutate one string in place (names and values alike).
            let n = count_strings(&doc);
            if n == 0 {
                return false;
            }
            let mut k = rng.below(n);
            if let Some(s) = nth_string(&mut doc, &mut k) {
                mutate_text(rng, s, &[]);
            }
        }
    }
    match serde_json::to_vec(&doc) {
        Ok(b) => {
            *body = b;
            trim_to_max(body);
            true
        }
        Err(_) => false,
    }
}

/// A header list edit: a value mutated, added, dropped or cleared.
fn mutate_header(rng: &mut Rng, values: &mut Vec<String>, donors: &[&[u8]]) {
    match rng.below(6) {
        0..=2 if !values.is_empty() => {
            let i = rng.below(values.len());
            mutate_text(rng, &mut values[i], donors);
        }
        3 => {
            let v = if !donors.is_empty() && rng.chance(2) {
                to_text(rng.pick(donors).to_vec())
            } else {
                rng.pick(TOKENS).to_string()
            };
            let at = rng.upto(values.len());
            values.insert(at, v);
        }
        4 if !values.is_empty() => {
            values.remove(rng.below(values.len()));
        }
        _ => values.clear(),
    }
}

const GROUP_IDS: &[&str] = &[
    "g1",
    "G-1.a",
    "",
    "a",
    "0123456789012345678901234567890123456789012345678901234567890123",
    "01234567890123456789012345678901234567890123456789012345678901234",
    "a/b",
    "..",
    "%2e",
    "é",
    "\u{0}",
];

/// Mutates one field of `case`.
fn mutate(rng: &mut Rng, case: &mut Case, pool: &[Case]) {
    match rng.below(20) {
        0..=5 => {
            let donors: Vec<&[u8]> = pool
                .iter()
                .filter_map(|c| c.query.as_deref().map(str::as_bytes))
                .collect();
            let q = case.query.get_or_insert_with(String::new);
            if rng.chance(3) {
                mutate_query(rng, q, pool);
            } else {
                mutate_text(rng, q, &donors);
            }
            if rng.chance(50) {
                case.query = None;
            }
        }
        6..=11 => {
            if case.body.is_empty() && rng.chance(2) {
                case.body = rng.pick(pool).body.clone();
            }
            if rng.chance(2) && mutate_json_body(rng, &mut case.body, pool) {
                return;
            }
            let donors: Vec<&[u8]> = pool.iter().map(|c| c.body.as_slice()).collect();
            mutate_bytes(rng, &mut case.body, &donors);
        }
        12 | 13 => {
            let donors: Vec<&[u8]> = pool
                .iter()
                .filter_map(|c| c.content_type.as_deref().map(str::as_bytes))
                .collect();
            if rng.chance(8) {
                case.content_type = None;
            } else {
                let ct = case
                    .content_type
                    .get_or_insert_with(|| "application/fhir+json".into());
                mutate_text(rng, ct, &donors);
            }
        }
        14 | 15 => {
            let donors: Vec<&[u8]> = pool
                .iter()
                .flat_map(|c| c.accept.iter().map(String::as_bytes))
                .collect();
            mutate_header(rng, &mut case.accept, &donors);
        }
        16 | 17 => {
            let donors: Vec<&[u8]> = pool
                .iter()
                .flat_map(|c| c.prefer.iter().map(String::as_bytes))
                .collect();
            mutate_header(rng, &mut case.prefer, &donors);
        }
        18 => {
            case.level = match rng.below(4) {
                0 => Level::System,
                1 => Level::Patient,
                2 => Level::Group(rng.pick(GROUP_IDS).to_string()),
                _ => {
                    let mut id = match &case.level {
                        Level::Group(id) => id.clone(),
                        _ => "g1".into(),
                    };
                    mutate_text(rng, &mut id, &[]);
                    Level::Group(id)
                }
            };
        }
        _ => {
            case.method = if case.method == Method::Get {
                Method::Post
            } else {
                Method::Get
            };
            if case.method == Method::Post && rng.chance(2) {
                case.query = None;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The test

fn env_seed() -> u64 {
    match std::env::var("FHIR_EXPORT_FUZZ_SEED") {
        Ok(s) => {
            let s = s.trim();
            let parsed = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => s.parse(),
            };
            parsed.unwrap_or_else(|e| panic!("FHIR_EXPORT_FUZZ_SEED={s:?}: {e}"))
        }
        Err(_) => {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or_default();
            DEFAULT_SEED ^ now
        }
    }
}

fn env_secs() -> f64 {
    match std::env::var("FHIR_EXPORT_FUZZ_SECS") {
        Ok(s) => {
            let secs: f64 = s
                .trim()
                .parse()
                .unwrap_or_else(|e| panic!("FHIR_EXPORT_FUZZ_SECS={s:?}: {e}"));
            assert!(
                secs.is_finite() && secs >= 0.0,
                "FHIR_EXPORT_FUZZ_SECS={s:?}: want seconds >= 0"
            );
            secs
        }
        Err(_) => DEFAULT_SECS,
    }
}

/// Every corpus case gets the outcome its file records (and breaks no invariant).
fn check_corpus(seeds: &[Seed]) {
    let mut failures = Vec::new();
    for s in seeds {
        let outcome = match execute(&s.case, true) {
            Ok(o) => o,
            Err(why) => {
                failures.push(format!("{}: {why}\n  input: {:?}", s.file, s.case));
                continue;
            }
        };
        // Shown with `--nocapture`, or when the test fails.
        println!("corpus {}: {}", s.file, describe(&outcome));
        let matches = match (&s.expect, &outcome) {
            (Expect::Ok, Ok(_)) => true,
            (Expect::Err { error, at }, Err(e)) => {
                error.as_ref().is_none_or(|v| *v == variant(e))
                    && at.as_ref().is_none_or(|a| *a == e.expression())
            }
            _ => false,
        };
        if !matches {
            failures.push(format!(
                "{}: expected {:?}, got {}",
                s.file,
                s.expect,
                describe(&outcome)
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} corpus cases went wrong:\n{}",
        failures.len(),
        seeds.len(),
        failures.join("\n")
    );
}

#[test]
fn kickoff_parsing_survives_mutated_inputs() {
    install_panic_hook();
    let seeds = load_corpus();
    assert!(
        seeds.len() >= 20,
        "the corpus in tests/fuzz/kickoff holds {} cases; expected at least 20",
        seeds.len()
    );
    check_corpus(&seeds);
    let (ok, err) = seeds
        .iter()
        .partition::<Vec<_>, _>(|s| s.expect == Expect::Ok);
    assert!(
        !ok.is_empty() && !err.is_empty(),
        "the corpus needs accepted and refused cases"
    );

    let seed = env_seed();
    let secs = env_secs();
    println!(
        "fuzz_kickoff: {} corpus cases ({} ok, {} err); seed {seed:#x} \
         (replay with FHIR_EXPORT_FUZZ_SEED={seed:#x}), {secs} s",
        seeds.len(),
        ok.len(),
        err.len()
    );
    let mut rng = Rng::new(seed);
    let mut pool: Vec<Case> = seeds.iter().map(|s| s.case.clone()).collect();
    let n_seeds = pool.len();
    let mut seen: HashSet<String> = HashSet::new();
    for c in &pool {
        if let Ok(o) = execute(c, false) {
            seen.insert(signature(c, &o));
        }
    }
    let budget = Duration::from_secs_f64(secs);
    let started = Instant::now();
    let mut execs: u64 = 0;
    let mut accepted: u64 = 0;
    let mut slowest = (Duration::ZERO, String::new());
    while started.elapsed() < budget {
        let mut case = rng.pick(&pool).clone();
        for _ in 0..1 + rng.below(4) {
            mutate(&mut rng, &mut case, &pool);
        }
        let t0 = Instant::now();
        let result = execute(&case, execs.is_multiple_of(16));
        let took = t0.elapsed();
        execs += 1;
        if took > slowest.0 {
            slowest = (took, format!("{case:?}").chars().take(300).collect());
        }
        match result {
            Ok(outcome) => {
                accepted += u64::from(outcome.is_ok());
                let size = case.query.as_ref().map_or(0, String::len) + case.body.len();
                if seen.insert(signature(&case, &outcome)) && size <= MAX_POOLED {
                    if pool.len() < n_seeds + MAX_POOL {
                        pool.push(case);
                    } else {
                        let i = n_seeds + rng.below(MAX_POOL);
                        pool[i] = case;
                    }
                }
            }
            Err(why) => panic!(
                "kick-off fuzzing failed after {execs} executions \
                 (seed {seed:#x}; replay with FHIR_EXPORT_FUZZ_SEED={seed:#x}):\n{why}\n\n\
                 input (Rust):\n{case:?}\n\ninput as a corpus file for tests/fuzz/kickoff/:\n{}",
                case.to_corpus_json()
            ),
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "fuzz_kickoff: {execs} executions in {elapsed:.1} s ({:.0}/s), {accepted} accepted, \
         {} outcome shapes, pool {} (+{} seeds); slowest {:?}: {}",
        execs as f64 / elapsed.max(1e-9),
        seen.len(),
        pool.len() - n_seeds,
        n_seeds,
        slowest.0,
        slowest.1
    );
    if secs >= 1.0 {
        assert!(execs > 100, "only {execs} executions in {elapsed:.1} s");
    }
}
