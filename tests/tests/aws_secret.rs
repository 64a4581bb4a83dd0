//! The Azure credential on AWS, against moto's Secrets Manager: a secret holding a JSON
//! object of `AZURE_*` variables is read once per process and overlays the environment's
//! (`fn_common::azure_secret`), `fn_common::store` reads it for Azure URLs only, and every
//! error names the secret and never repeats its text.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;

use aws_sdk_secretsmanager::primitives::Blob;
use fn_common::azure_secret::{AzureSecretError, azure_settings, read_secret};
use integration_tests::{moto, unique};
use shared::adapters::aws::sdk_config;
use shared::adapters::azure::AzureSettings;
use shared::config::Env;

/// Text that only ever appears inside secrets: no error may repeat it.
const SECRET_TEXT: &str = "SECRET-TEXT-7f3a";

async fn client() -> aws_sdk_secretsmanager::Client {
    aws_sdk_secretsmanager::Client::new(&sdk_config().await)
}

/// A new secret holding `text`; returns its ARN.
async fn new_secret(text: &str) -> String {
    client()
        .await
        .create_secret()
        .name(unique("fhir-azure"))
        .secret_string(text)
        .send()
        .await
        .expect("create secret")
        .arn()
        .expect("arn")
        .to_owned()
}

fn env(vars: &[(&str, &str)]) -> Env<impl Fn(&str) -> Option<String> + use<>> {
    let vars: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    Env::new(move |k| vars.get(k).cloned())
}

/// The only test that reads through the per-process cache successfully: the cache keeps the
/// first secret it reads.
#[tokio::test]
async fn the_secret_is_read_once_and_wins_over_the_environment() {
    if moto().await.is_none() {
        return;
    }
    let arn = new_secret(
        r#"{"AZURE_STORAGE_ACCOUNT_NAME": "secretacct", "AZURE_STORAGE_ACCOUNT_KEY": "c2VjcmV0"}"#,
    )
    .await;
    let aws = sdk_config().await;
    let in_secret = AzureSettings::from_pairs([
        ("AZURE_STORAGE_ACCOUNT_NAME", "secretacct"),
        ("AZURE_STORAGE_ACCOUNT_KEY", "c2VjcmV0"),
    ]);
    assert_eq!(read_secret(&aws, &arn).await.expect("by ARN"), in_secret);

    let env = env(&[
        ("FHIR_EXPORT_AZURE_SECRET", &arn),
        ("AZURE_STORAGE_ACCOUNT_NAME", "envacct"),
        ("AZURE_STORAGE_ACCOUNT_KEY", "ZW52"),
        ("AZURE_TENANT_ID", "env-tenant"),
        ("FHIR_EXPORT_OUTPUT", "az://exports/p"),
    ]);
    let merged = AzureSettings::from_pairs([
        ("AZURE_STORAGE_ACCOUNT_NAME", "secretacct"),
        ("AZURE_STORAGE_ACCOUNT_KEY", "c2VjcmV0"),
        ("AZURE_TENANT_ID", "env-tenant"),
    ]);
    assert_eq!(azure_settings(&env).await.expect("settings"), merged);

    // The store is opened on the merged settings: the account is the secret's.
    let store = fn_common::store(&env, "FHIR_EXPORT_OUTPUT")
        .await
        .expect("Azure store");
    assert_eq!(store.describe(), "az://exports/p (account secretacct)");

    // Rotated: a running process keeps what it read; a new one (a new cold start) reads anew.
    client()
        .await
        .put_secret_value()
        .secret_id(&arn)
        .secret_string(r#"{"AZURE_STORAGE_ACCOUNT_NAME": "rotated"}"#)
        .send()
        .await
        .expect("rotate");
    assert_eq!(azure_settings(&env).await.expect("cached"), merged);
    assert_eq!(
        read_secret(&aws, &arn).await.expect("uncached"),
        AzureSettings::from_pairs([("AZURE_STORAGE_ACCOUNT_NAME", "rotated")])
    );

    // Without FHIR_EXPORT_AZURE_SECRET, the environment alone.
    let plain = crate::env(&[("AZURE_STORAGE_ACCOUNT_NAME", "envacct")]);
    assert_eq!(
        azure_settings(&plain).await.expect("env only"),
        AzureSettings::from_pairs([("AZURE_STORAGE_ACCOUNT_NAME", "envacct")])
    );
}

#[tokio::test]
async fn errors_name_the_secret_and_not_its_text() {
    if moto().await.is_none() {
        return;
    }
    let aws = sdk_config().await;
    let check = |err: &AzureSecretError, id: &str| {
        let shown = format!("{err} / {err:?}");
        assert!(shown.contains(id), "the error names the secret: {shown}");
        assert!(
            !shown.contains(SECRET_TEXT),
            "the error repeats the secret: {shown}"
        );
    };

    let missing = unique("fhir-azure-missing");
    let err = read_secret(&aws, &missing).await.expect_err("missing");
    assert!(matches!(err, AzureSecretError::NotFound { .. }), "{err:?}");
    check(&err, &missing);

    let cases: [(String, &str); 4] = [
        (format!("password={SECRET_TEXT}"), "not JSON"),
        (format!(r#"["{SECRET_TEXT}"]"#), "holds an array"),
        (
            format!(r#"{{"AZURE_STORAGE_ACCOUNT_KEY": {{"v": "{SECRET_TEXT}"}}}}"#),
            "the value of `AZURE_STORAGE_ACCOUNT_KEY` is an object",
        ),
        (
            format!(r#"{{"{SECRET_TEXT}": 42}}"#),
            "a key that is not a variable name is a number",
        ),
    ];
    for (text, says) in cases {
        let arn = new_secret(&text).await;
        let err = read_secret(&aws, &arn).await.expect_err(says);
        assert!(err.to_string().contains(says), "{err}");
        check(&err, &arn);
    }

    let binary = client()
        .await
        .create_secret()
        .name(unique("fhir-azure-binary"))
        .secret_binary(Blob::new(SECRET_TEXT.as_bytes()))
        .send()
        .await
        .expect("create binary secret")
        .arn()
        .expect("arn")
        .to_owned();
    let err = read_secret(&aws, &binary).await.expect_err("binary");
    assert!(matches!(err, AzureSecretError::NotText { .. }), "{err:?}");
    check(&err, &binary);
}

#[tokio::test]
async fn stores_read_the_secret_for_azure_urls_only() {
    if moto().await.is_none() {
        return;
    }
    let missing = unique("fhir-azure-missing");
    let local = tempfile::tempdir().expect("tempdir");
    let local = local.path().to_string_lossy().into_owned();
    let env = env(&[
        ("FHIR_EXPORT_AZURE_SECRET", &missing),
        ("AZURE_STORAGE_ACCOUNT_NAME", "envacct"),
        ("FHIR_EXPORT_OUTPUT", "s3://fhir-secret-unused/exports"),
        ("FHIR_EXPORT_SOURCE", &local),
        ("AZURE_OUTPUT", "az://exports/p"),
    ]);
    // S3 and local stores open without the (missing) secret.
    fn_common::store(&env, "FHIR_EXPORT_OUTPUT")
        .await
        .expect("S3 store");
    fn_common::store(&env, "FHIR_EXPORT_SOURCE")
        .await
        .expect("local store");
    // An Azure store needs it, and says which secret failed.
    let err = fn_common::store(&env, "AZURE_OUTPUT")
        .await
        .err()
        .expect("the secret is missing");
    assert!(err.to_string().contains(&missing), "{err}");
}
