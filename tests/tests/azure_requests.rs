//! What Azurite cannot show, checked on the requests the adapter builds: with an Entra ID
//! credential (a bearer token), file links are user-delegation SAS URLs. A stand-in for the
//! account's Blob endpoint answers `Get User Delegation Key`; the test checks that request
//! (bearer authorization, the key's validity window) and recomputes the link's signature from
//! the key it handed out, with the string-to-sign of Azure's documentation (version
//! 2020-12-06 and later).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use shared::adapters::azure::{AzureLocation, AzureSettings, AzureStore};

/// What the stand-in saw: method, path and query, authorization, body.
type Seen = Arc<Mutex<Vec<(String, String, String, String)>>>;

const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

async fn stand_in() -> (String, Seen) {
    let seen: Seen = Arc::default();
    let log = seen.clone();
    let app = Router::new().fallback(move |req: Request| {
        let log = log.clone();
        async move {
            let method = req.method().to_string();
            let uri = req.uri().to_string();
            let auth = req
                .headers()
                .get("authorization")
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default();
            let body = axum::body::to_bytes(req.into_body(), 1 << 20)
                .await
                .unwrap();
            log.lock().unwrap().push((
                method,
                uri,
                auth,
                String::from_utf8_lossy(&body).into_owned(),
            ));
            format!(
                "<?xml version=\"1.0\" encoding=\"utf-8\"?><UserDelegationKey>\
                 <SignedOid>oid-1</SignedOid><SignedTid>tid-1</SignedTid>\
                 <SignedStart>2026-01-01T00:00:00Z</SignedStart>\
                 <SignedExpiry>2036-01-01T00:00:00Z</SignedExpiry>\
                 <SignedService>b</SignedService><SignedVersion>2023-11-03</SignedVersion>\
                 <Value>{}</Value></UserDelegationKey>",
                STANDARD.encode(KEY)
            )
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/acct1"), seen)
}

#[tokio::test]
async fn an_entra_credential_signs_user_delegation_links() {
    let (endpoint, seen) = stand_in().await;
    let settings = AzureSettings::from_pairs([
        ("AZURE_STORAGE_ACCOUNT_NAME", "acct1"),
        ("AZURE_STORAGE_ENDPOINT", endpoint.as_str()),
        ("AZURE_STORAGE_TOKEN", "entra-token"),
    ]);
    let store = AzureStore::open(
        AzureLocation::parse("az://exports/fhir").unwrap(),
        &settings,
    )
    .unwrap();
    let signer = shared::ports::ObjectStore::signer(&store).expect("Entra ID can sign");
    let url = signer
        .signed_get_url("job1/Patient-1.ndjson", Duration::from_secs(900))
        .await
        .unwrap();

    // The key was asked for once, with the token, for the link's lifetime.
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "{seen:?}");
    let (method, uri, auth, body) = &seen[0];
    assert_eq!(method, "POST");
    assert!(
        uri.contains("restype=service") && uri.contains("comp=userdelegationkey"),
        "{uri}"
    );
    assert_eq!(auth, "Bearer entra-token");
    assert!(
        body.contains("<Start>") && body.contains("<Expiry>"),
        "{body}"
    );

    // The link: the blob's URL, read-only, with the delegation key's fields and a signature
    // that only that key gives.
    let url = url::Url::parse(&url).unwrap();
    assert_eq!(url.path(), "/acct1/exports/fhir/job1/Patient-1.ndjson");
    let q: BTreeMap<String, String> = url.query_pairs().into_owned().collect();
    for (k, v) in [
        ("sp", "r"),
        ("sr", "b"),
        ("skoid", "oid-1"),
        ("sktid", "tid-1"),
        ("sks", "b"),
        ("skv", "2023-11-03"),
    ] {
        assert_eq!(q.get(k).map(String::as_str), Some(v), "{k} in {url}");
    }
    let start = chrono::DateTime::parse_from_rfc3339(&q["st"]).unwrap();
    let expiry = chrono::DateTime::parse_from_rfc3339(&q["se"]).unwrap();
    assert_eq!(
        (expiry - start).num_seconds(),
        900,
        "the link lives as configured"
    );
    let to_sign = [
        q["sp"].as_str(),
        &q["st"],
        &q["se"],
        "/blob/acct1/exports/fhir/job1/Patient-1.ndjson",
        &q["skoid"],
        &q["sktid"],
        &q["skt"],
        &q["ske"],
        &q["sks"],
        &q["skv"],
        "",
        "",
        "",
        "",
        "",
        &q["sv"],
        &q["sr"],
        "",
        "",
        "",
        "",
        "",
        "",
        "",
    ]
    .join("\n");
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(KEY).unwrap();
    mac.update(to_sign.as_bytes());
    assert_eq!(q["sig"], STANDARD.encode(mac.finalize().into_bytes()));
}

#[tokio::test]
async fn a_sas_token_cannot_sign_and_says_so_by_having_no_signer() {
    let settings = AzureSettings::from_pairs([
        ("AZURE_STORAGE_ACCOUNT_NAME", "acct1"),
        (
            "AZURE_STORAGE_SAS_TOKEN",
            "sv=2023-11-03&sp=racwdl&sr=c&sig=x",
        ),
    ]);
    let store = AzureStore::open(AzureLocation::parse("az://exports").unwrap(), &settings).unwrap();
    assert!(shared::ports::ObjectStore::signer(&store).is_none());
}
