//! smart-fetch 1.0.3 (PyPI), a Bulk Data client nobody here wrote, against a real
//! `fhir-export serve`: system, Group, `--since` (its default since mode) and `--type` exports
//! give the source's resources, type by type and id by id, the same JSON.
//!
//! smart-fetch decides what to ask for from `GET [base]/metadata`: the types listed there
//! (cut to its own clinical list) and `_since` only when `_lastUpdated` is a search parameter
//! of Patient. It sends its whole type list at every level, and by default filters
//! Observation by category. What it writes is read back whatever its files are called or
//! where it put them: every NDJSON (or gzip NDJSON) file under its folder but its own log.
//!
//! The test command installs it (scripts/stand-ins.sh) and names it in
//! `FHIR_EXPORT_SMART_FETCH`; without that the tests say SKIPPED.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use integration_tests::{
    Options, TestServer, current_members, files_under, patient_refs, read_ndjson_file, read_source,
};
use serde_json::Value;

/// smart-fetch 1.0.3's default Observation filter (`category=...`), which it adds when
/// `--type-filter` is not given.
const DEFAULT_OBSERVATION_CATEGORIES: &[&str] = &[
    "social-history",
    "vital-signs",
    "imaging",
    "laboratory",
    "survey",
    "exam",
    "procedure",
    "therapy",
    "activity",
];

fn smart_fetch() -> Option<PathBuf> {
    match std::env::var_os("FHIR_EXPORT_SMART_FETCH") {
        Some(p) => {
            let p = PathBuf::from(p);
            assert!(
                p.exists(),
                "FHIR_EXPORT_SMART_FETCH names {p:?}, which is missing"
            );
            Some(p)
        }
        None => {
            eprintln!("SKIPPED: smart-fetch not installed (run scripts/test)");
            None
        }
    }
}

/// The clinical types smart-fetch exports when not told otherwise, from its own module.
fn client_types(bin: &Path) -> BTreeSet<String> {
    let python = bin.with_file_name("python");
    let out = std::process::Command::new(python)
        .args([
            "-c",
            "from smart_fetch import resources; print(','.join(sorted(resources.PATIENT_TYPES)))",
        ])
        .output()
        .expect("run smart-fetch's python");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .split(',')
        .map(str::to_owned)
        .collect()
}

/// Runs `smart-fetch bulk <dir> --fhir-url <base> <args>` to completion; `held` are the
/// types of the source, none of which it may skip as unsupported.
async fn bulk(bin: &Path, base: &str, args: &[&str], held: &BTreeSet<String>) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = tokio::process::Command::new(bin);
    cmd.arg("bulk")
        .arg(dir.path())
        .args(["--fhir-url", base])
        .args(args)
        // Its progress display needs no terminal.
        .env("TERM", "dumb")
        .env("NO_COLOR", "1")
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(180), cmd.output())
        .await
        .expect("smart-fetch finished in time")
        .expect("smart-fetch runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "smart-fetch {args:?} failed: {}\n{stdout}\n{stderr}",
        out.status
    );
    for line in stdout.lines() {
        if let Some(t) = line
            .strip_prefix("Skipping ")
            .and_then(|l| l.strip_suffix(" because the server does not support it."))
        {
            assert!(
                !held.contains(t),
                "smart-fetch skipped {t}, which the server holds"
            );
        }
    }
    dir
}

/// Every resource smart-fetch wrote, by type and id; each at most once.
fn written(dir: &Path) -> BTreeMap<String, BTreeMap<String, Value>> {
    let mut out: BTreeMap<String, BTreeMap<String, Value>> = BTreeMap::new();
    for rel in files_under(dir) {
        // its own bookkeeping: hidden folders and files, and its log
        let mut parts = rel.split('/');
        if parts.clone().any(|part| part.starts_with('.'))
            || parts.next_back() == Some("log.ndjson")
        {
            continue;
        }
        let Some(text) = read_ndjson_file(&dir.join(&rel)) else {
            continue;
        };
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let v: Value = serde_json::from_str(line).unwrap();
            let t = v["resourceType"].as_str().unwrap().to_owned();
            let id = v["id"].as_str().unwrap().to_owned();
            let again = out.entry(t.clone()).or_default().insert(id.clone(), v);
            assert!(again.is_none(), "{t}/{id} written twice ({rel})");
        }
    }
    out
}

/// The source's resources of `types` that `keep` selects, by type and id.
fn expected(
    source: &BTreeMap<String, Vec<Value>>,
    types: &BTreeSet<String>,
    keep: impl Fn(&str, &Value) -> bool,
) -> BTreeMap<String, BTreeMap<String, Value>> {
    let mut out: BTreeMap<String, BTreeMap<String, Value>> = BTreeMap::new();
    for (t, resources) in source {
        if !types.contains(t) {
            continue;
        }
        for r in resources.iter().filter(|r| keep(t, r)) {
            out.entry(t.clone())
                .or_default()
                .insert(r["id"].as_str().unwrap().to_owned(), r.clone());
        }
    }
    out
}

/// Asserts the two are the same, naming the first type that differs.
fn assert_same(
    got: &BTreeMap<String, BTreeMap<String, Value>>,
    want: &BTreeMap<String, BTreeMap<String, Value>>,
) {
    let types = |m: &BTreeMap<String, BTreeMap<String, Value>>| -> Vec<String> {
        m.keys().cloned().collect()
    };
    assert_eq!(types(got), types(want), "types");
    for (t, resources) in want {
        let got_ids: BTreeSet<&String> = got[t].keys().collect();
        let want_ids: BTreeSet<&String> = resources.keys().collect();
        assert_eq!(got_ids, want_ids, "{t}: ids");
        for (id, r) in resources {
            assert_eq!(&got[t][id], r, "{t}/{id}: content");
        }
    }
}

fn held(source: &BTreeMap<String, Vec<Value>>) -> BTreeSet<String> {
    source.keys().cloned().collect()
}

fn in_default_categories(r: &Value) -> bool {
    r["category"].as_array().is_some_and(|cats| {
        cats.iter().any(|c| {
            c["coding"].as_array().is_some_and(|codings| {
                codings.iter().any(|coding| {
                    coding["code"]
                        .as_str()
                        .is_some_and(|code| DEFAULT_OBSERVATION_CATEGORIES.contains(&code))
                })
            })
        })
    })
}

async fn server() -> TestServer {
    TestServer::start(
        Options {
            patients: 120,
            ..Options::default()
        }
        .env("FHIR_EXPORT_RETRY_AFTER_SECS", "1"),
    )
    .await
}

#[tokio::test]
async fn smart_fetch_system_export_gets_every_resource_of_its_types() {
    let Some(bin) = smart_fetch() else { return };
    let t = server().await;
    let source = read_source(t.source_dir());
    let types = client_types(&bin);
    let dir = bulk(&bin, &t.base, &[], &held(&source)).await;
    let want = expected(&source, &types, |t, r| {
        t != "Observation" || in_default_categories(r)
    });
    assert!(want.len() >= 8, "too few types to tell: {:?}", want.keys());
    assert_same(&written(dir.path()), &want);
    t.server.stop().await;
}

#[tokio::test]
async fn smart_fetch_group_export_gets_the_members_compartments() {
    let Some(bin) = smart_fetch() else { return };
    let t = server().await;
    let source = read_source(t.source_dir());
    let types = client_types(&bin);
    let group = source["Group"]
        .iter()
        .find(|g| g["id"] == "even-patients")
        .expect("the group");
    let members = current_members(group);
    assert!(members.len() >= 10);
    // Its whole type list, Group level: the types outside the compartment (if any of its
    // list) are left out with a warning, which it does not stop on.
    let dir = bulk(&bin, &t.base, &["--group", "even-patients"], &held(&source)).await;
    let want = expected(&source, &types, |t, r| {
        let mine = if t == "Patient" {
            members.contains(r["id"].as_str().unwrap())
        } else {
            let mut refs = BTreeSet::new();
            patient_refs(r, &mut refs);
            refs.iter().any(|p| members.contains(p))
        };
        mine && (t != "Observation" || in_default_categories(r))
    });
    assert_same(&written(dir.path()), &want);
    t.server.stop().await;
}

#[tokio::test]
async fn smart_fetch_since_export_gets_what_changed_after_it() {
    let Some(bin) = smart_fetch() else { return };
    let t = server().await;
    let source = read_source(t.source_dir());
    let types = client_types(&bin);
    let since = "2024-01-01T00:00:00Z";
    let cut = chrono::DateTime::parse_from_rfc3339(since).unwrap();
    let dir = bulk(&bin, &t.base, &["--since", since], &held(&source)).await;
    let want = expected(&source, &types, |t, r| {
        let updated =
            chrono::DateTime::parse_from_rfc3339(r["meta"]["lastUpdated"].as_str().unwrap())
                .unwrap();
        updated > cut && (t != "Observation" || in_default_categories(r))
    });
    let got = written(dir.path());
    // Less than everything, or `_since` was not applied.
    let all: usize = expected(&source, &types, |_, _| true)
        .values()
        .map(BTreeMap::len)
        .sum();
    assert!(got.values().map(BTreeMap::len).sum::<usize>() < all);
    assert_same(&got, &want);
    t.server.stop().await;
}

#[tokio::test]
async fn smart_fetch_type_export_gets_just_those_types() {
    let Some(bin) = smart_fetch() else { return };
    let t = server().await;
    let source = read_source(t.source_dir());
    let dir = bulk(
        &bin,
        &t.base,
        &["--type", "Patient,Condition,Immunization"],
        &held(&source),
    )
    .await;
    let types: BTreeSet<String> = ["Patient", "Condition", "Immunization"]
        .map(str::to_owned)
        .into();
    assert_same(
        &written(dir.path()),
        &expected(&source, &types, |_, _| true),
    );
    t.server.stop().await;
}

#[tokio::test]
async fn smart_fetch_system_export_of_the_synthea_dataset() {
    let Some(bin) = smart_fetch() else { return };
    let Some(dir) = integration_tests::synthea_dir() else {
        eprintln!("SKIPPED: the Synthea dataset (../shared/data) is not present");
        return;
    };
    let t = TestServer::start(
        Options {
            source: Some(dir.clone()),
            ..Options::default()
        }
        .env("FHIR_EXPORT_RETRY_AFTER_SECS", "1"),
    )
    .await;
    let source = read_source(&dir);
    let types = client_types(&bin);
    let out = bulk(&bin, &t.base, &[], &held(&source)).await;
    let want = expected(&source, &types, |t, r| {
        t != "Observation" || in_default_categories(r)
    });
    assert!(want.len() >= 8, "{:?}", want.keys());
    assert_same(&written(out.path()), &want);
    t.server.stop().await;
}

/// smart-fetch as a SMART Backend Services client: it reads our
/// `.well-known/smart-configuration`, signs an RS384 assertion with its PEM key, gets a
/// token from the embedded authorization server and sends it to the kick-off, status and
/// files (`requiresAccessToken: true`).
#[tokio::test]
async fn smart_fetch_authenticates_with_smart_backend_services() {
    let Some(bin) = smart_fetch() else { return };
    let client = integration_tests::auth::TestClient::new("smart-fetch", true);
    let t = TestServer::start(
        Options {
            patients: 40,
            auth_clients: vec![client.registration()],
            ..Options::default()
        }
        .env("FHIR_EXPORT_RETRY_AFTER_SECS", "1"),
    )
    .await;
    let source = read_source(t.source_dir());
    let key = client.pem_path();
    let key = key.to_str().unwrap();
    let types: BTreeSet<String> = ["Patient", "Condition"].map(String::from).into();
    let dir = bulk(
        &bin,
        &t.base,
        &[
            "--smart-client-id",
            "smart-fetch",
            "--smart-key",
            key,
            "--type",
            "Patient,Condition",
        ],
        &held(&source),
    )
    .await;
    assert_same(
        &written(dir.path()),
        &expected(&source, &types, |_, _| true),
    );

    // Without credentials it gets nowhere.
    let mut cmd = tokio::process::Command::new(&bin);
    let out = cmd
        .arg("bulk")
        .arg(dir.path().join("anonymous"))
        .args(["--fhir-url", &t.base, "--type", "Patient"])
        .env("TERM", "dumb")
        .env("NO_COLOR", "1")
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    assert!(
        !out.status.success(),
        "an anonymous smart-fetch got an export"
    );
    t.server.stop().await;
}
