//! The upstream source as a good citizen of a failing server: a proxy in front of a real
//! FHIR server (Helios) throttles, errs and drops connections mid-page; the export must still
//! equal the one read straight from the server, and a failure that persists must fail the
//! export in words that name the request and its status (and never the credential).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use integration_tests::helios::{Helios, read_dir_resources};
use integration_tests::proxy::{Fault, Proxy};
use integration_tests::{Options, TestServer, dataset};
use serde_json::Value;

fn ids(got: &BTreeMap<String, Vec<Value>>) -> BTreeMap<String, BTreeSet<String>> {
    got.iter()
        .map(|(t, rs)| {
            let set: BTreeSet<String> = rs
                .iter()
                .map(|r| r["id"].as_str().unwrap().to_owned())
                .collect();
            assert_eq!(set.len(), rs.len(), "{t}: a resource exported twice");
            (t.clone(), set)
        })
        .collect()
}

async fn loaded(patients: u64) -> Option<Helios> {
    let helios = Helios::start().await?;
    let (dir, _) = dataset(patients);
    helios.put_all(&read_dir_resources(dir.path())).await;
    Some(helios)
}

fn through(base: &str) -> Options {
    Options {
        source_url: Some(base.to_owned()),
        ..Options::default()
    }
    .env("FHIR_EXPORT_UPSTREAM_PAGE_SIZE", "50")
    .env("FHIR_EXPORT_UPSTREAM_BACKOFF_MS", "20")
    .env("FHIR_EXPORT_CHUNK_BYTES", "100000")
}

async fn export_ids(t: &TestServer, path: &str) -> BTreeMap<String, BTreeSet<String>> {
    let status = t.start_export(path, "").await;
    let manifest = t.manifest(&status).await;
    ids(&t.download(&manifest, "output").await)
}

#[tokio::test]
async fn throttling_errors_and_dropped_connections_are_retried_without_loss() {
    let Some(helios) = loaded(15).await else {
        return;
    };
    let direct = TestServer::start(through(&helios.base)).await;
    let proxy = Proxy::start(
        &helios.base,
        // Three requests in four fail the first time they are sent, in turn throttled, refused
        // with a 503, or cut off mid-body; none fails twice, so that the test does not
        // depend on how concurrent requests fall on a fixed pattern (a request that met a
        // fault at every one of its tries would fail the export, rightly).
        Arc::new({
            let seen = std::sync::Mutex::new(std::collections::HashSet::<String>::new());
            move |_, path: &str| {
                let mut seen = seen.lock().unwrap();
                if !seen.insert(path.to_owned()) {
                    return Fault::Pass;
                }
                match seen.len() % 4 {
                    1 => Fault::Status(429, Some(0)),
                    2 => Fault::Status(503, None),
                    3 => Fault::DropMidBody,
                    _ => Fault::Pass,
                }
            }
        }),
        None,
    )
    .await;
    let proxied = TestServer::start(through(&proxy.base)).await;
    for path in [
        "/$export",
        "/Patient/$export",
        "/Group/even-patients/$export",
    ] {
        let want = export_ids(&direct, path).await;
        let got = export_ids(&proxied, path).await;
        assert!(!want.is_empty());
        assert_eq!(got, want, "{path}");
    }
    let log = proxy.log();
    for status in [429, 503, 0] {
        assert!(
            log.iter().any(|(_, s)| *s == status),
            "no request answered {status}"
        );
    }
    direct.server.stop().await;
    proxied.server.stop().await;
}

#[tokio::test]
async fn a_failure_that_persists_fails_the_export_naming_the_request() {
    let Some(helios) = loaded(5).await else {
        return;
    };
    let proxy = Proxy::start(
        &helios.base,
        Arc::new(|_, path: &str| {
            if path.starts_with("/Observation?") && !path.contains("_summary=count") {
                Fault::Status(500, None)
            } else {
                Fault::Pass
            }
        }),
        None,
    )
    .await;
    let t =
        TestServer::start(through(&proxy.base).env("FHIR_EXPORT_UPSTREAM_MAX_ATTEMPTS", "2")).await;
    let status = t
        .start_export("/$export", "_type=Patient,Observation")
        .await;
    let resp = t.wait(&status).await;
    assert_eq!(resp.status(), 500);
    let outcome: Value = resp.json().await.unwrap();
    let text = outcome["issue"][0]["diagnostics"].as_str().unwrap();
    assert!(
        text.contains(&format!("{}/Observation", proxy.base)) && text.contains("500"),
        "{text}"
    );
    // The upstream's own words come along.
    assert!(text.contains("proxy: 500 injected"), "{text}");
    let tries = proxy
        .log()
        .iter()
        .filter(|(p, s)| p.starts_with("/Observation?") && *s == 500)
        .count();
    assert!(tries >= 2, "retried before giving up: {tries}");
    t.server.stop().await;
}

#[tokio::test]
async fn a_bearer_token_is_sent_and_a_refusal_fails_in_words_without_it() {
    let Some(helios) = loaded(4).await else {
        return;
    };
    let direct = TestServer::start(through(&helios.base)).await;
    let proxy = Proxy::start(
        &helios.base,
        Arc::new(|_, _| Fault::Pass),
        Some("s3cret-token"),
    )
    .await;
    let with =
        TestServer::start(through(&proxy.base).env("FHIR_EXPORT_UPSTREAM_TOKEN", "s3cret-token"))
            .await;
    assert_eq!(
        export_ids(&with, "/$export").await,
        export_ids(&direct, "/$export").await
    );

    let wrong =
        TestServer::start(through(&proxy.base).env("FHIR_EXPORT_UPSTREAM_TOKEN", "not-the-token"))
            .await;
    let status = wrong.start_export("/$export", "").await;
    let resp = wrong.wait(&status).await;
    assert_eq!(resp.status(), 500);
    let body = resp.text().await.unwrap();
    assert!(body.contains("401"), "{body}");
    assert!(!body.contains("not-the-token"), "the token leaked: {body}");
    for t in [direct, with, wrong] {
        t.server.stop().await;
    }
}

/// A SMART Backend Services token endpoint: checks each `client_assertion` (RS384, signed by
/// `public`, for this client and this endpoint) and hands out tokens that the proxy honours
/// for `valid` only, though they claim an hour: the client meets an expired token and must
/// get a new one.
struct TokenEndpoint {
    url: String,
    issued: Arc<std::sync::Mutex<Vec<(String, std::time::Instant)>>>,
}

async fn token_endpoint(public: Vec<u8>) -> TokenEndpoint {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/token", listener.local_addr().unwrap());
    let issued: Arc<std::sync::Mutex<Vec<(String, std::time::Instant)>>> = Arc::default();
    let (log, aud) = (issued.clone(), url.clone());
    let app = axum::Router::new().route(
        "/token",
        axum::routing::post(move |body: String| {
            let (log, aud, public) = (log.clone(), aud.clone(), public.clone());
            async move {
                let form: BTreeMap<String, String> = url::form_urlencoded::parse(body.as_bytes())
                    .into_owned()
                    .collect();
                assert_eq!(form["grant_type"], "client_credentials");
                assert_eq!(
                    form["client_assertion_type"],
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
                );
                let jwt = &form["client_assertion"];
                let (input, sig) = jwt.rsplit_once('.').unwrap();
                aws_lc_rs::signature::UnparsedPublicKey::new(
                    &aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA384,
                    &public,
                )
                .verify(input.as_bytes(), &URL_SAFE_NO_PAD.decode(sig).unwrap())
                .expect("the assertion is signed by the client's key");
                let claims: Value = serde_json::from_slice(
                    &URL_SAFE_NO_PAD
                        .decode(input.split('.').nth(1).unwrap())
                        .unwrap(),
                )
                .unwrap();
                assert_eq!(claims["iss"], "bulk-exporter");
                assert_eq!(claims["aud"], aud.as_str());
                let mut log = log.lock().unwrap();
                let token = format!("token-{}", log.len() + 1);
                log.push((token.clone(), std::time::Instant::now()));
                axum::Json(serde_json::json!({
                    "access_token": token, "token_type": "bearer", "expires_in": 3600
                }))
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    TokenEndpoint { url, issued }
}

#[tokio::test]
async fn smart_backend_services_tokens_are_obtained_and_renewed_when_they_expire() {
    use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der};
    use aws_lc_rs::signature::KeyPair;
    use base64::Engine;
    let Some(helios) = loaded(10).await else {
        return;
    };
    let key = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
    let der: Pkcs8V1Der = key.as_der().unwrap();
    let pem = format!(
        "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
        base64::engine::general_purpose::STANDARD.encode(der.as_ref())
    );
    let endpoint = token_endpoint(key.public_key().as_ref().to_vec()).await;
    // Long enough that no single request outlives its token, however loaded the machine.
    let valid = std::time::Duration::from_secs(2);
    let issued = endpoint.issued.clone();
    let check: integration_tests::proxy::Check = Arc::new(move |token: Option<&str>| {
        issued
            .lock()
            .unwrap()
            .iter()
            .any(|(t, at)| Some(t.as_str()) == token && at.elapsed() < valid)
    });
    let token_url = endpoint.url.clone();
    let proxy = Proxy::start_checking(
        &helios.base,
        Arc::new(move |_, path: &str| {
            if path == "/.well-known/smart-configuration" {
                Fault::Json(serde_json::json!({ "token_endpoint": token_url }))
            } else {
                Fault::Pass
            }
        }),
        Some(check),
    )
    .await;
    let direct = TestServer::start(through(&helios.base)).await;
    // The token endpoint is discovered from the server's SMART configuration.
    let smart = TestServer::start(
        through(&proxy.base)
            .env("FHIR_EXPORT_UPSTREAM_CLIENT_ID", "bulk-exporter")
            .env("FHIR_EXPORT_UPSTREAM_PRIVATE_KEY", &pem)
            .env("FHIR_EXPORT_UPSTREAM_PAGE_SIZE", "20"),
    )
    .await;
    for path in ["/$export", "/Patient/$export"] {
        assert_eq!(
            export_ids(&smart, path).await,
            export_ids(&direct, path).await,
            "{path}"
        );
        // The token the client keeps (it claims an hour) has expired by the next export.
        tokio::time::sleep(valid + std::time::Duration::from_millis(100)).await;
    }
    let refused = proxy.log().iter().filter(|(_, s)| *s == 401).count();
    let tokens = endpoint.issued.lock().unwrap().len();
    assert!(refused >= 1, "no token expired during the exports");
    assert!(
        tokens >= 2,
        "an expired token was not replaced: {tokens} issued"
    );
    direct.server.stop().await;
    smart.server.stop().await;
}

/// On Lambda the upstream's credential comes from a Secrets Manager secret
/// (`FHIR_EXPORT_UPSTREAM_SECRET`), which wins over the environment.
#[tokio::test]
async fn on_lambda_the_upstream_token_comes_from_its_secret() {
    if integration_tests::moto().await.is_none() {
        return;
    }
    let Some(helios) = loaded(3).await else {
        return;
    };
    let proxy = Proxy::start(
        &helios.base,
        Arc::new(|_, _| Fault::Pass),
        Some("from-the-secret"),
    )
    .await;
    let arn = aws_sdk_secretsmanager::Client::new(&shared::adapters::aws::sdk_config().await)
        .create_secret()
        .name(integration_tests::unique("fhir-upstream"))
        .secret_string(r#"{"FHIR_EXPORT_UPSTREAM_TOKEN": "from-the-secret"}"#)
        .send()
        .await
        .unwrap()
        .arn()
        .unwrap()
        .to_owned();
    let vars: BTreeMap<String, String> = [
        ("FHIR_EXPORT_SOURCE", proxy.base.as_str()),
        ("FHIR_EXPORT_UPSTREAM_SECRET", arn.as_str()),
        ("FHIR_EXPORT_UPSTREAM_TOKEN", "the-environments-stale-token"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let env = shared::config::Env::new(move |k| vars.get(k).cloned());
    let source = fn_common::source(&env).await.expect("source");
    assert!(source.describe().starts_with("fhir:"));
    let types = source.types().await.expect("metadata through the proxy");
    assert!(types.contains(&shared::model::ResourceType::PATIENT));
    let patient = source
        .read(
            shared::model::ResourceType::PATIENT,
            &shared::model::LogicalId::parse("pat-000001").unwrap(),
        )
        .await
        .expect("read");
    assert!(patient.is_some());
    assert!(
        proxy.log().iter().all(|(_, s)| *s != 401),
        "a request went without the secret's token"
    );
}
