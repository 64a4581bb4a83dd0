//! The local server's security, over real sockets: bearer tokens on every route but metadata
//! and `.well-known`, the embedded SMART Backend Services token endpoint and its refusals,
//! tokens of an outside issuer checked against its JWKS (rotation included), scopes that
//! narrow exports at all three levels, exports visible to their owner only, the per-client
//! limit, the reuse of an identical kick-off, request-size limits, and the loopback rule.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{KeyInit, Mac};
use integration_tests::auth::{ASSERTION_TYPE, TestClient, uuid_like};
use integration_tests::{Options, TestServer, content_location};
use serde_json::{Value, json};
use shared::jose::{self, SigningKey};
use tokio::sync::Mutex;

fn with_clients(clients: &[&TestClient]) -> Options {
    Options {
        auth_clients: clients.iter().map(|c| c.registration()).collect(),
        ..Options::default()
    }
}

fn token_url(s: &TestServer) -> String {
    s.server.token_url.clone().expect("token endpoint")
}

async fn kickoff(
    s: &TestServer,
    token: Option<&str>,
    path: &str,
    query: &str,
    extra: &[(&str, &str)],
) -> reqwest::Response {
    let url = if query.is_empty() {
        format!("{}{path}", s.base)
    } else {
        format!("{}{path}?{query}", s.base)
    };
    let mut req = s
        .http
        .get(url)
        .header("Accept", "application/fhir+json")
        .header("Prefer", "respond-async");
    for (k, v) in extra {
        req = req.header(*k, *v);
    }
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send().await.unwrap()
}

async fn get(s: &TestServer, token: Option<&str>, url: &str) -> reqwest::Response {
    let mut req = s.http.get(url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send().await.unwrap()
}

async fn delete(s: &TestServer, token: Option<&str>, url: &str) -> reqwest::Response {
    let mut req = s.http.delete(url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send().await.unwrap()
}

/// Polls with `token` until the export is no longer running; the manifest.
async fn finish(s: &TestServer, token: &str, status_url: &str) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let resp = get(s, Some(token), status_url).await;
        match resp.status().as_u16() {
            202 => {}
            200 => return resp.json().await.unwrap(),
            other => panic!("status {other}: {}", resp.text().await.unwrap()),
        }
        assert!(tokio::time::Instant::now() < deadline, "export too slow");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn outcome(resp: reqwest::Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    let ct = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    assert!(ct.starts_with("application/fhir+json"), "{status}: {ct}");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["resourceType"], "OperationOutcome", "{body}");
    (status, body)
}

fn diagnostics(oo: &Value) -> String {
    oo["issue"][0]["diagnostics"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// The types in a manifest's `output`.
fn output_types(manifest: &Value) -> BTreeSet<String> {
    manifest["output"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["type"].as_str().unwrap().to_owned())
        .collect()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

#[tokio::test]
async fn tokens_gate_every_route_but_metadata_and_well_known() {
    let app = TestClient::new("app", true);
    let s = TestServer::start(with_clients(&[&app])).await;
    let token = app.token(&s.http, &token_url(&s), "system/*.read").await;

    // Open: how to authenticate is public.
    assert_eq!(
        get(&s, None, &format!("{}/metadata", s.base))
            .await
            .status(),
        200
    );
    let config: Value = get(
        &s,
        None,
        &format!("{}/.well-known/smart-configuration", s.base),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(config["token_endpoint"], token_url(&s));
    assert!(
        config["token_endpoint_auth_signing_alg_values_supported"]
            .as_array()
            .unwrap()
            .contains(&json!("RS384"))
    );

    // An export, with the token.
    let resp = kickoff(&s, Some(&token), "/$export", "_type=Patient", &[]).await;
    assert_eq!(resp.status(), 202);
    let status_url = content_location(resp.headers());
    let manifest = finish(&s, &token, &status_url).await;
    assert_eq!(manifest["requiresAccessToken"], true);
    let file = manifest["output"][0]["url"].as_str().unwrap().to_owned();
    assert_eq!(get(&s, Some(&token), &file).await.status(), 200);

    // Every gated route without a token, and with a bad one.
    for bad in [None, Some("not-a-jwt"), Some("a.b.c")] {
        let checks = [
            kickoff(&s, bad, "/$export", "", &[]).await,
            get(&s, bad, &status_url).await,
            get(&s, bad, &file).await,
            delete(&s, bad, &status_url).await,
        ];
        for resp in checks {
            let challenge = resp
                .headers()
                .get("www-authenticate")
                .expect("WWW-Authenticate")
                .to_str()
                .unwrap()
                .to_owned();
            assert!(challenge.starts_with("Bearer realm="), "{challenge}");
            assert_eq!(
                bad.is_some(),
                challenge.contains(r#"error="invalid_token""#),
                "{challenge}"
            );
            let (status, oo) = outcome(resp).await;
            assert_eq!(status, 401);
            assert_eq!(oo["issue"][0]["code"], "security");
        }
    }
    // The export is still there: the refused DELETEs did nothing.
    assert_eq!(get(&s, Some(&token), &status_url).await.status(), 200);
}

#[tokio::test]
async fn the_token_endpoint_refuses_what_the_smart_profile_refuses() {
    let app = TestClient::new("app", false);
    let stranger = TestClient::new("stranger", false);
    let s = TestServer::start(with_clients(&[&app])).await;
    let url = token_url(&s);
    let http = &s.http;

    let (status, body) = app
        .request_token(http, &url, &[("grant_type", "password")])
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("unsupported_grant_type"))
    );

    let assertion = app.assertion(&url, &uuid_like(), 120);
    let (status, body) = app
        .request_token(
            http,
            &url,
            &[
                ("grant_type", "client_credentials"),
                ("client_assertion_type", "urn:example:password"),
                ("client_assertion", &assertion),
            ],
        )
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_request"))
    );

    let form = |a: &str| {
        vec![
            ("grant_type", "client_credentials".to_owned()),
            ("client_assertion_type", ASSERTION_TYPE.to_owned()),
            ("client_assertion", a.to_owned()),
            ("scope", "system/*.rs".to_owned()),
        ]
    };
    let (app_ref, url_ref) = (&app, &url);
    let send = |a: String| async move {
        let f = form(&a);
        let pairs: Vec<(&str, &str)> = f.iter().map(|(k, v)| (*k, v.as_str())).collect();
        app_ref.request_token(http, url_ref, &pairs).await
    };

    // Replayed jti: the first use works, the second does not.
    let jti = uuid_like();
    let (status, _) = send(app.assertion(&url, &jti, 120)).await;
    assert_eq!(status, 200);
    let (status, body) = send(app.assertion(&url, &jti, 120)).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("invalid_client"))
    );
    assert!(
        body["error_description"].as_str().unwrap().contains("jti"),
        "{body}"
    );

    // Unknown client, a key that is not the client's, exp too far ahead, expired, bad aud.
    let (status, body) = send(stranger.assertion(&url, &uuid_like(), 120)).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("invalid_client"))
    );
    let forged = jose::sign(
        &stranger.key,
        Some(&app.kid),
        &json!({"iss": "app", "sub": "app", "aud": url, "exp": chrono::Utc::now().timestamp() + 60, "jti": uuid_like()}),
    )
    .unwrap();
    let (status, body) = send(forged).await;
    assert_eq!(status, 401, "{body}");
    let (status, body) = send(app.assertion(&url, &uuid_like(), 3600)).await;
    assert_eq!(status, 401, "{body}");
    assert!(body["error_description"].as_str().unwrap().contains("300"));
    let (status, _) = send(app.assertion(&url, &uuid_like(), -600)).await;
    assert_eq!(status, 401);
    let (status, _) = send(app.assertion("http://elsewhere/token", &uuid_like(), 60)).await;
    assert_eq!(status, 401);

    // Scopes beyond what the client may have.
    let (status, body) = app
        .request_token(
            http,
            &url,
            &[
                ("grant_type", "client_credentials"),
                ("client_assertion_type", ASSERTION_TYPE),
                ("client_assertion", &app.assertion(&url, &uuid_like(), 60)),
                ("scope", "system/*.write"),
            ],
        )
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_scope"))
    );
}

/// A JWKS endpoint the test controls, counting its fetches.
struct Jwks {
    url: String,
    keys: Arc<Mutex<Value>>,
    fetches: Arc<AtomicUsize>,
}

async fn jwks_server(initial: Value) -> Jwks {
    let keys = Arc::new(Mutex::new(initial));
    let fetches = Arc::new(AtomicUsize::new(0));
    let (k, f) = (keys.clone(), fetches.clone());
    let app = axum::Router::new().route(
        "/jwks",
        axum::routing::get(move || {
            let (k, f) = (k.clone(), f.clone());
            async move {
                f.fetch_add(1, Ordering::SeqCst);
                axum::Json(k.lock().await.clone())
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Jwks {
        url: format!("http://{addr}/jwks"),
        keys,
        fetches,
    }
}

fn forge(header: Value, claims: &Value, sig: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        URL_SAFE_NO_PAD.encode(sig)
    )
}

#[tokio::test]
async fn an_outside_issuers_tokens_are_checked_against_its_jwks() {
    const ISSUER: &str = "https://issuer.test";
    let k1 = SigningKey::generate_rs384().unwrap();
    let k2 = SigningKey::generate_es384().unwrap();
    let other = SigningKey::generate_rs384().unwrap();
    let jwks = jwks_server(json!({"keys": [k1.public_jwk("k1")]})).await;
    let s = TestServer::start(
        Options::default()
            .env("FHIR_EXPORT_AUTH_ISSUER", ISSUER)
            .env("FHIR_EXPORT_AUTH_JWKS_URL", &jwks.url)
            .env("FHIR_EXPORT_AUTH_JWKS_MIN_REFRESH_SECS", "2")
            .env("FHIR_EXPORT_AUTH_LEEWAY_SECS", "5"),
    )
    .await;
    let now = chrono::Utc::now().timestamp();
    let claims = |f: &dyn Fn(&mut Value)| {
        let mut c = json!({"iss": ISSUER, "aud": s.base, "sub": "svc", "client_id": "svc",
            "scope": "system/*.rs", "iat": now, "exp": now + 300});
        f(&mut c);
        c
    };
    let signed = |key: &SigningKey, kid: &str, c: Value| jose::sign(key, Some(kid), &c).unwrap();
    // A probe that needs a valid token: someone's unknown job is 404, a refused token 401.
    let probe = |t: String| {
        let s = &s;
        async move {
            let resp = get(s, Some(&t), &format!("{}/_export/no-such-job", s.base)).await;
            let status = resp.status().as_u16();
            let challenge = resp
                .headers()
                .get("www-authenticate")
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default();
            (status, challenge)
        }
    };

    assert_eq!(probe(signed(&k1, "k1", claims(&|_| {}))).await.0, 404);
    assert_eq!(jwks.fetches.load(Ordering::SeqCst), 1);

    let refused: Vec<(&str, String, &str)> = vec![
        (
            "expired",
            signed(&k1, "k1", claims(&|c| c["exp"] = json!(now - 60))),
            "expired",
        ),
        (
            "not yet valid",
            signed(&k1, "k1", claims(&|c| c["nbf"] = json!(now + 600))),
            "not valid yet",
        ),
        (
            "wrong audience",
            signed(
                &k1,
                "k1",
                claims(&|c| c["aud"] = json!("https://other/fhir")),
            ),
            "aud",
        ),
        (
            "wrong issuer",
            signed(
                &k1,
                "k1",
                claims(&|c| c["iss"] = json!("https://evil.test")),
            ),
            "issuer",
        ),
        (
            "bad signature",
            signed(&other, "k1", claims(&|_| {})),
            "signature",
        ),
        (
            "alg none",
            forge(json!({"alg": "none", "kid": "k1"}), &claims(&|_| {}), b""),
            "none",
        ),
        ("unknown kid", signed(&k1, "k9", claims(&|_| {})), "k9"),
    ];
    for (what, token, says) in refused {
        let (status, challenge) = probe(token).await;
        assert_eq!(status, 401, "{what}");
        assert!(challenge.contains(says), "{what}: {challenge}");
    }
    // HS256 with the issuer's public key as the secret (the key-confusion attack).
    let public = serde_json::to_vec(&k1.public_jwk("k1")).unwrap();
    let header = json!({"alg": "HS256", "kid": "k1"});
    let body = claims(&|_| {});
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(body.to_string())
    );
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&public).unwrap();
    mac.update(input.as_bytes());
    let hs = format!(
        "{input}.{}",
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    );
    assert_eq!(probe(hs).await.0, 401, "HS256");
    // Bad tokens within the refresh interval did not make the JWKS fetched again.
    assert_eq!(jwks.fetches.load(Ordering::SeqCst), 1);

    // Rotation: the issuer adds k2. Past the interval, a token signed with it is accepted
    // after one more fetch.
    *jwks.keys.lock().await = json!({"keys": [k1.public_jwk("k1"), k2.public_jwk("k2")]});
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(probe(signed(&k2, "k2", claims(&|_| {}))).await.0, 404);
    assert_eq!(jwks.fetches.load(Ordering::SeqCst), 2);
    // Unknown kids in a burst: at most one fetch per interval.
    for _ in 0..5 {
        assert_eq!(probe(signed(&k1, "k7", claims(&|_| {}))).await.0, 401);
    }
    assert!(jwks.fetches.load(Ordering::SeqCst) <= 3);
}

/// An export by `token` at `path` with `query`; its manifest.
async fn export(
    s: &TestServer,
    token: &str,
    path: &str,
    query: &str,
    extra: &[(&str, &str)],
) -> Value {
    let resp = kickoff(s, Some(token), path, query, extra).await;
    assert_eq!(
        resp.status(),
        202,
        "{path}?{query}: {:?}",
        resp.text().await
    );
    let status_url = content_location(resp.headers());
    finish(s, token, &status_url).await
}

/// The text of a manifest's `error` files.
async fn error_text(s: &TestServer, token: &str, manifest: &Value) -> String {
    let mut text = String::new();
    for e in manifest["error"].as_array().unwrap() {
        let url = e["url"].as_str().unwrap();
        text.push_str(&get(s, Some(token), url).await.text().await.unwrap());
    }
    text
}

fn a_group_id(s: &TestServer) -> String {
    let text = std::fs::read_to_string(s.source_dir().join("Group.ndjson")).unwrap();
    let first: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    first["id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn scopes_narrow_exports_at_every_level() {
    let app = TestClient::new("app", false);
    let s = TestServer::start(with_clients(&[&app])).await;
    let token = app
        .token(
            &s.http,
            &token_url(&s),
            "system/Patient.rs system/Observation.read",
        )
        .await;
    let group = format!("/Group/{}/$export", a_group_id(&s));
    let lenient = [("Prefer", "handling=lenient, respond-async")];
    for path in ["/$export", "/Patient/$export", group.as_str()] {
        // No _type: exactly the permitted types.
        let m = export(&s, &token, path, "", &[]).await;
        assert_eq!(output_types(&m), set(&["Observation", "Patient"]), "{path}");

        // A type outside the scopes: refused under strict handling...
        let resp = kickoff(&s, Some(&token), path, "_type=Patient,Condition", &[]).await;
        let (status, oo) = outcome(resp).await;
        assert_eq!(status, 403, "{path}");
        assert!(diagnostics(&oo).contains("Condition"), "{oo}");
        assert!(!diagnostics(&oo).contains("_type Patient"), "{oo}");

        // ...dropped with a warning under lenient.
        let m = export(&s, &token, path, "_type=Patient,Condition", &lenient).await;
        assert_eq!(output_types(&m), set(&["Patient"]), "{path}");
        let errors = error_text(&s, &token, &m).await;
        assert!(
            errors.contains("Condition") && errors.contains("forbidden"),
            "{errors}"
        );

        // A filter on a type outside the scopes, and Provenance without its scope.
        let resp = kickoff(
            &s,
            Some(&token),
            path,
            "_typeFilter=Condition%3Fclinical-status%3Dactive",
            &[],
        )
        .await;
        assert_eq!(resp.status(), 403, "{path}");
        let resp = kickoff(
            &s,
            Some(&token),
            path,
            "includeAssociatedData=LatestProvenanceResources",
            &[],
        )
        .await;
        assert_eq!(resp.status(), 403, "{path}");
    }
    // Nothing permitted of the Patient compartment.
    let org_only = app
        .token(&s.http, &token_url(&s), "system/Organization.rs")
        .await;
    let resp = kickoff(&s, Some(&org_only), "/Patient/$export", "", &[]).await;
    assert_eq!(resp.status(), 403);
    let m = export(&s, &org_only, "/$export", "", &[]).await;
    assert_eq!(output_types(&m), set(&["Organization"]));
}

#[tokio::test]
async fn exports_answer_their_owner_only() {
    let a = TestClient::new("client-a", false);
    let b = TestClient::new("client-b", true);
    let s = TestServer::start(with_clients(&[&a, &b])).await;
    let ta = a.token(&s.http, &token_url(&s), "system/*.read").await;
    let tb = b.token(&s.http, &token_url(&s), "system/*.read").await;

    let resp = kickoff(&s, Some(&ta), "/$export", "_type=Patient,Observation", &[]).await;
    let status_url = content_location(resp.headers());
    let manifest = finish(&s, &ta, &status_url).await;
    let file = manifest["output"][0]["url"].as_str().unwrap().to_owned();
    let unknown = format!("{}/_export/00000000-0000-4000-8000-000000000000", s.base);

    let (_, nobody) = outcome(get(&s, Some(&tb), &unknown).await).await;
    let attempts = [
        get(&s, Some(&tb), &status_url).await,
        get(&s, Some(&tb), &format!("{status_url}?page=1")).await,
        get(&s, Some(&tb), &file).await,
        delete(&s, Some(&tb), &status_url).await,
    ];
    for resp in attempts {
        let (status, oo) = outcome(resp).await;
        assert_eq!(status, 404);
        assert_eq!(oo["issue"][0]["code"], nobody["issue"][0]["code"]);
        assert_eq!(
            diagnostics(&oo).replace("file", "export"),
            diagnostics(&nobody).replace("file", "export"),
            "as if the export did not exist"
        );
    }
    // The owner still has it all.
    assert_eq!(get(&s, Some(&ta), &status_url).await.status(), 200);
    assert_eq!(get(&s, Some(&ta), &file).await.status(), 200);
    // Job ids are random (version-4) UUIDs: 122 random bits.
    let id = status_url.rsplit('/').next().unwrap();
    assert_eq!(id.len(), 32, "{id}");
    assert_eq!(&id[12..13], "4", "a version-4 (random) UUID: {id}");
}

#[tokio::test]
async fn narrower_scopes_are_refused_after_kickoff() {
    let app = TestClient::new("app", false);
    let s = TestServer::start(with_clients(&[&app])).await;
    let wide = app.token(&s.http, &token_url(&s), "system/*.read").await;
    let narrow = app
        .token(&s.http, &token_url(&s), "system/Patient.rs")
        .await;
    let resp = kickoff(&s, Some(&wide), "/$export", "_type=Patient,Condition", &[]).await;
    let status_url = content_location(resp.headers());
    let manifest = finish(&s, &wide, &status_url).await;
    let condition = manifest["output"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["type"] == "Condition")
        .unwrap()["url"]
        .as_str()
        .unwrap()
        .to_owned();
    for resp in [
        get(&s, Some(&narrow), &status_url).await,
        get(&s, Some(&narrow), &condition).await,
        delete(&s, Some(&narrow), &status_url).await,
    ] {
        let (status, oo) = outcome(resp).await;
        assert_eq!(status, 403);
        assert!(diagnostics(&oo).contains("Condition"), "{oo}");
    }
    assert_eq!(get(&s, Some(&wide), &condition).await.status(), 200);
}

#[tokio::test]
async fn a_client_is_limited_and_an_identical_kickoff_is_answered_with_the_running_export() {
    let a = TestClient::new("client-a", false);
    let b = TestClient::new("client-b", false);
    // No workers: exports stay active.
    let mut opts = with_clients(&[&a, &b]).env("FHIR_EXPORT_MAX_ACTIVE_EXPORTS", "2");
    opts.workers = 0;
    let s = TestServer::start(opts).await;
    let ta = a.token(&s.http, &token_url(&s), "system/*.read").await;
    let tb = b.token(&s.http, &token_url(&s), "system/*.read").await;

    let first = kickoff(&s, Some(&ta), "/$export", "_type=Patient", &[]).await;
    assert_eq!(first.status(), 202);
    let first = content_location(first.headers());
    let again = kickoff(&s, Some(&ta), "/$export", "_type=Patient", &[]).await;
    assert_eq!(again.status(), 202);
    assert_eq!(
        content_location(again.headers()),
        first,
        "the running export"
    );
    let fresh = kickoff(
        &s,
        Some(&ta),
        "/$export",
        "_type=Patient",
        &[("Cache-Control", "no-cache")],
    )
    .await;
    assert_eq!(fresh.status(), 202);
    assert_ne!(
        content_location(fresh.headers()),
        first,
        "no-cache: a new export"
    );

    // Two running: a third is refused, with a time to come back.
    let third = kickoff(&s, Some(&ta), "/$export", "_type=Observation", &[]).await;
    assert!(third.headers().contains_key("retry-after"));
    let (status, oo) = outcome(third).await;
    assert_eq!(status, 429);
    assert!(
        diagnostics(&oo).contains("FHIR_EXPORT_MAX_ACTIVE_EXPORTS"),
        "{oo}"
    );
    // The limit is per client, and an identical request of another client is its own.
    let other = kickoff(&s, Some(&tb), "/$export", "_type=Patient", &[]).await;
    assert_eq!(other.status(), 202);
    assert_ne!(content_location(other.headers()), first);

    // Cancelling one frees a place.
    assert_eq!(delete(&s, Some(&ta), &first).await.status(), 202);
    let third = kickoff(&s, Some(&ta), "/$export", "_type=Observation", &[]).await;
    assert_eq!(third.status(), 202);
}

#[tokio::test]
async fn oversized_requests_are_refused_before_any_work() {
    let mut opts = Options::default()
        .env("FHIR_EXPORT_MAX_QUERY_BYTES", "300")
        .env("FHIR_EXPORT_MAX_PATIENTS", "2")
        .env("FHIR_EXPORT_MAX_BODY_BYTES", "2048")
        .env("FHIR_EXPORT_MAX_TYPE_FILTER_CHARS", "60");
    opts.workers = 0;
    let s = TestServer::start(opts).await;

    let long = format!("_type=Patient&_elements={}", "id,".repeat(200));
    let (status, oo) = outcome(kickoff(&s, None, "/$export", &long, &[]).await).await;
    assert_eq!(status, 414);
    assert!(
        diagnostics(&oo).contains("FHIR_EXPORT_MAX_QUERY_BYTES"),
        "{oo}"
    );

    let filter = format!("_typeFilter=Patient%3Fname%3D{}", "x".repeat(80));
    let (status, oo) = outcome(kickoff(&s, None, "/$export", &filter, &[]).await).await;
    assert_eq!(status, 400);
    assert!(
        diagnostics(&oo).contains("FHIR_EXPORT_MAX_TYPE_FILTER_CHARS"),
        "{oo}"
    );
    assert_eq!(oo["issue"][0]["expression"][0], "_typeFilter");

    let post = |body: String| {
        s.http
            .post(format!("{}/Patient/$export", s.base))
            .header("Accept", "application/fhir+json")
            .header("Prefer", "respond-async")
            .header("Content-Type", "application/fhir+json")
            .body(body)
            .send()
    };
    let patients: Vec<Value> = (1..=3)
        .map(|i| json!({"name": "patient", "valueReference": {"reference": format!("Patient/p{i}")}}))
        .collect();
    let body = json!({"resourceType": "Parameters", "parameter": patients}).to_string();
    let (status, oo) = outcome(post(body).await.unwrap()).await;
    assert_eq!(status, 400);
    assert_eq!(oo["issue"][0]["expression"][0], "patient");
    assert!(
        diagnostics(&oo).contains("FHIR_EXPORT_MAX_PATIENTS"),
        "{oo}"
    );

    let padding = "x".repeat(4096);
    let body = json!({"resourceType": "Parameters", "id": padding}).to_string();
    let (status, oo) = outcome(post(body).await.unwrap()).await;
    assert_eq!(status, 413);
    assert!(
        diagnostics(&oo).contains("FHIR_EXPORT_MAX_BODY_BYTES"),
        "{oo}"
    );

    // None of it made a job.
    let jobs = s
        .server
        .deps
        .jobs
        .stalled(chrono::Utc::now() + chrono::Duration::days(1))
        .await
        .unwrap();
    assert!(jobs.is_empty(), "{} jobs", jobs.len());
    // And a request within the limits passes.
    let resp = kickoff(&s, None, "/$export", "_type=Patient", &[]).await;
    assert_eq!(resp.status(), 202);
}

#[tokio::test]
async fn an_open_server_binds_to_loopback_only() {
    let state = tempfile::tempdir().unwrap();
    let mut config = fhir_export::serve::ServeConfig::new(state.path().join("open"));
    config.bind = "0.0.0.0:0".parse().unwrap();
    config.workers = 0;
    let err = match fhir_export::serve::start(config).await {
        Ok(_) => panic!("an open server on every interface started"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("--auth-client") && err.contains("loopback"),
        "{err}"
    );

    let app = TestClient::new("app", false);
    let mut opts = with_clients(&[&app]);
    opts.bind = Some("0.0.0.0:0".parse().unwrap());
    opts.workers = 0;
    let s = TestServer::start(opts).await;
    assert!(s.server.addr.ip().is_unspecified());
}

#[tokio::test]
async fn the_export_command_gets_its_tokens_from_the_smart_configuration() {
    let app = TestClient::new("app", true);
    // Tokens live 3 s: the command renews them while it polls and downloads.
    let s = TestServer::start(with_clients(&[&app]).env("FHIR_EXPORT_AUTH_TOKEN_SECS", "3")).await;
    let out = tempfile::tempdir().unwrap();
    let args = fhir_export::client::ExportArgs {
        base: Some(s.base.clone()),
        types: vec!["Patient".into(), "Condition".into()],
        out: Some(out.path().join("x")),
        client_id: Some("app".into()),
        private_key: Some(app.pem_path()),
        scope: "system/Patient.rs system/Condition.rs".into(),
        no_progress: true,
        ..Default::default()
    };
    let summary = fhir_export::client::run(args).await.expect("export");
    let types = output_types(&summary.manifest);
    assert_eq!(types, set(&["Condition", "Patient"]));
    assert!(summary.resources > 0);

    // A key the server does not know: a clear error, not a hang.
    let stranger = TestClient::new("app", true);
    let args = fhir_export::client::ExportArgs {
        base: Some(s.base.clone()),
        out: Some(out.path().join("y")),
        client_id: Some("app".into()),
        private_key: Some(stranger.pem_path()),
        no_progress: true,
        ..Default::default()
    };
    let err = fhir_export::client::run(args).await.expect_err("refused");
    let text = shared::error_chain(&err);
    assert!(
        text.contains("invalid_client") || text.contains("401"),
        "{text}"
    );
}

#[tokio::test]
async fn the_export_command_gets_a_new_token_when_the_server_no_longer_takes_its_own() {
    // A server restart: its signing key is new, so tokens it issued before are refused (401)
    // and the command must get another one to go on polling.
    let app = TestClient::new("app", false);
    let state = tempfile::tempdir().unwrap();
    let source = integration_tests::dataset(20).0;
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let config = |workers: usize| {
        let mut c = fhir_export::serve::ServeConfig::new(state.path().join("state"));
        c.bind = format!("127.0.0.1:{port}").parse().unwrap();
        c.source = Some(source.path().display().to_string());
        c.workers = workers;
        c.auth_clients = vec![app.registration()];
        c.env = vec![("FHIR_EXPORT_RETRY_AFTER_SECS".into(), "1".into())];
        c
    };
    // First server: no workers, so the export waits for the second.
    let first = fhir_export::serve::start(config(0)).await.unwrap();
    let base = first.base_url.clone();
    let out = tempfile::tempdir().unwrap();
    let args = fhir_export::client::ExportArgs {
        base: Some(base.clone()),
        types: vec!["Patient".into()],
        out: Some(out.path().join("x")),
        client_id: Some("app".into()),
        private_key: Some(app.pem_path()),
        no_progress: true,
        ..Default::default()
    };
    // Wait for the kick-off, then restart the server, while the command polls.
    let restart = async {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let jobs = first
                .deps
                .jobs
                .stalled(chrono::Utc::now() + chrono::Duration::days(1))
                .await
                .unwrap();
            if !jobs.is_empty() {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "no kick-off");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        first.stop().await;
        fhir_export::serve::start(config(2)).await.unwrap()
    };
    let (summary, second) = tokio::time::timeout(Duration::from_secs(120), async {
        tokio::join!(fhir_export::client::run(args), restart)
    })
    .await
    .expect("the command finished");
    let summary = summary.expect("the export completed after the restart");
    assert!(summary.resources > 0);
    second.stop().await;
}
