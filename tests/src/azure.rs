//! The Azure adapter against Azurite (started by `scripts/test`, which exports
//! `AZURITE_BLOB_STORAGE_URL`): emulator settings, and containers made per test.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use shared::adapters::azure::settings::{EMULATOR_ACCOUNT, EMULATOR_KEY, emulator_variables};
use shared::adapters::azure::{AzureLocation, AzureSettings, AzureStore};
use shared::ports::{AccessProblem, ObjectError};

use crate::unique;

/// Azurite's Blob service URL, or `None` (with a message) when it is not running.
pub async fn azurite() -> Option<String> {
    let Ok(url) = std::env::var("AZURITE_BLOB_STORAGE_URL") else {
        eprintln!("SKIPPED: Azurite not running (run scripts/test)");
        return None;
    };
    // Any HTTP answer means it listens (an unsigned list is refused).
    let ok = reqwest::get(format!("{url}/devstoreaccount1?comp=list"))
        .await
        .is_ok();
    assert!(ok, "Azurite is switched on at {url} but does not answer");
    Some(url)
}

/// The settings that reach Azurite: its account and published key.
pub fn emulator(url: &str) -> AzureSettings {
    AzureSettings::emulator(url)
}

/// The variables a server (or a function) needs to reach Azurite, for `Options::env`.
pub fn emulator_env(url: &str) -> Vec<(String, String)> {
    emulator_variables(url)
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
}

/// A store at the root of Azurite's account.
pub fn account_store(url: &str) -> AzureStore {
    AzureStore::open(AzureLocation::parse("az://").unwrap(), &emulator(url)).unwrap()
}

/// A new container named from `prefix` (lowercase, short) and a store on it under `root`
/// (`""` or a prefix ending in `/`); `None` when Azurite is not running.
pub async fn new_container(prefix: &str, root: &str) -> Option<(String, AzureStore)> {
    let url = azurite().await?;
    let name = unique(prefix).to_ascii_lowercase();
    let name: String = name.chars().take(63).collect();
    account_store(&url)
        .create_container(&name)
        .await
        .unwrap_or_else(|e| panic!("create container {name}: {e}"));
    let location = AzureLocation::parse(&format!("az://{name}/{root}")).unwrap();
    Some((name, AzureStore::open(location, &emulator(&url)).unwrap()))
}

/// The service SAS version [`container_sas`] signs.
const SAS_VERSION: &str = "2023-11-03";

/// A Blob service SAS for a whole container of Azurite's account (`sr=c`), signed with the
/// emulator's published key, valid from five minutes ago until `expiry`, with `permissions`
/// (`rl` read and list, `racwdl` what an export needs); the query string without `?`, as
/// `AZURE_STORAGE_SAS_TOKEN` takes it.
pub fn container_sas(
    container: &str,
    permissions: &str,
    expiry: chrono::DateTime<chrono::Utc>,
) -> String {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use hmac::{Hmac, KeyInit, Mac};

    let time = |t: chrono::DateTime<chrono::Utc>| t.format("%Y-%m-%dT%H:%M:%SZ").to_string();
    let start = time(chrono::Utc::now() - chrono::Duration::minutes(5));
    let expiry = time(expiry);
    let resource = format!("/blob/{EMULATOR_ACCOUNT}/{container}");
    // sp, st, se, canonical resource, signed identifier, IP, protocol, version, resource,
    // snapshot time, encryption scope, then the five response header overrides.
    let to_sign = [
        permissions,
        &start,
        &expiry,
        &resource,
        "",
        "",
        "",
        SAS_VERSION,
        "c",
        "",
        "",
        "",
        "",
        "",
        "",
        "",
    ]
    .join("\n");
    let key = STANDARD.decode(EMULATOR_KEY).unwrap();
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    mac.update(to_sign.as_bytes());
    let sig = STANDARD.encode(mac.finalize().into_bytes());
    format!(
        "sv={SAS_VERSION}&sp={permissions}&st={}&se={}&sr=c&sig={}",
        start.replace(':', "%3A"),
        expiry.replace(':', "%3A"),
        form_encode(&sig)
    )
}

/// Base64 as a query value.
fn form_encode(s: &str) -> String {
    s.replace('+', "%2B")
        .replace('/', "%2F")
        .replace('=', "%3D")
}

/// The SAS (a token, or a whole URL) with one character of its `sig` changed.
pub fn tamper_sig(sas: &str) -> String {
    let at = sas.find("sig=").expect("a signature") + 4;
    let mut out = sas.to_owned();
    let c = if sas[at..].starts_with('A') { "B" } else { "A" };
    out.replace_range(at..at + 1, c);
    out
}

/// Settings that reach Azurite with a SAS token instead of the emulator's key.
pub fn sas_settings(url: &str, sas: &str) -> AzureSettings {
    AzureSettings::from_pairs([
        ("AZURE_STORAGE_USE_EMULATOR", "true"),
        ("AZURITE_BLOB_STORAGE_URL", url),
        ("AZURE_STORAGE_SAS_TOKEN", sas),
    ])
}

/// As [`sas_settings`], for `Options::env`.
pub fn sas_env(url: &str, sas: &str) -> Vec<(String, String)> {
    let mut env = emulator_env(url);
    env.push(("AZURE_STORAGE_SAS_TOKEN".to_owned(), sas.to_owned()));
    env
}

/// A container name unique to this run, from `prefix` (lowercase, at most 63 characters),
/// not created.
pub fn container_name(prefix: &str) -> String {
    unique(prefix)
        .to_ascii_lowercase()
        .chars()
        .take(63)
        .collect()
}

/// Whether `result` is an `Access` fault with `problem` on `container` of Azurite's account,
/// said in words (no XML); panics with what it is otherwise.
pub fn assert_access<T: std::fmt::Debug>(
    result: Result<T, ObjectError>,
    container: &str,
    problem: fn(&AccessProblem) -> bool,
) -> String {
    match result {
        Err(ObjectError::Access(fault)) => {
            assert!(problem(&fault.problem), "{fault:?}");
            assert_eq!(fault.container, container, "{fault:?}");
            let text = ObjectError::Access(fault).to_string();
            assert!(text.contains(EMULATOR_ACCOUNT), "{text}");
            assert!(text.contains(container), "{text}");
            assert!(!text.contains('<'), "{text}");
            text
        }
        other => panic!("want an Access fault on `{container}`, got {other:?}"),
    }
}

/// Whether `container` exists in Azurite's account, asked without the adapter: a List Blobs
/// call signed by a container SAS of its own (404 when the container is missing).
pub async fn container_exists(url: &str, container: &str) -> bool {
    let sas = container_sas(
        container,
        "rl",
        chrono::Utc::now() + chrono::Duration::minutes(10),
    );
    let resp = reqwest::get(format!(
        "{}/{EMULATOR_ACCOUNT}/{container}?restype=container&comp=list&maxresults=1&{sas}",
        url.trim_end_matches('/')
    ))
    .await
    .expect("list blobs request");
    match resp.status().as_u16() {
        200 => true,
        404 => false,
        s => panic!("listing container {container}: {s} {:?}", resp.text().await),
    }
}
