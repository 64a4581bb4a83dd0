//! The Lambda functions writing to Azure: the AWS stack on moto (DynamoDB, SQS, an S3 source)
//! with `FHIR_EXPORT_OUTPUT` on Azurite, opened as the functions open it. An export at an
//! account root gets a container of its own; the files route redirects to SAS links that a
//! plain client fetches; cancel removes the export's container.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::Arc;

use integration_tests::aws::stack;
use integration_tests::azure::azurite;
use serde_json::Value;
use shared::layout;

#[tokio::test]
async fn exports_to_an_azure_account_through_the_functions() {
    let Some(azurite) = azurite().await else {
        return;
    };
    let env = [
        ("FHIR_EXPORT_OUTPUT", "az://"),
        ("AZURE_STORAGE_USE_EMULATOR", "true"),
        ("AZURITE_BLOB_STORAGE_URL", azurite.as_str()),
    ];
    let Some(stack) = stack(15, &env, 5).await else {
        return;
    };
    let stack = Arc::new(stack);
    assert!(stack.config.settings.container_per_export);
    let harness = stack.spawn_harness();

    let status = stack.kickoff("/$export", "").await;
    let resp = stack.finish(&status).await;
    assert_eq!(resp.status(), 200);
    let manifest: Value = resp.json().await.unwrap();
    assert_eq!(manifest["requiresAccessToken"], true);
    // The files route checks the caller, then redirects to a SAS link on Azurite.
    let first = manifest["output"][0]["url"].as_str().unwrap();
    let no_redirect = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let resp = no_redirect.get(first).send().await.unwrap();
    assert_eq!(resp.status(), 307);
    let location = resp.headers()["location"].to_str().unwrap().to_owned();
    assert!(
        location.starts_with(&azurite) && location.contains("sig="),
        "{location}"
    );
    let got = stack.download(&manifest).await;
    let want: BTreeMap<String, usize> = stack
        .source
        .iter()
        .map(|(k, v)| (k.clone(), v.len()))
        .collect();
    let have: BTreeMap<String, usize> = got.iter().map(|(k, v)| (k.clone(), v.len())).collect();
    assert_eq!(have, want);

    // The export's folder is in a container made for it.
    let job = status.rsplit('/').next().unwrap();
    let blobs = stack.exports.list("").await;
    assert!(blobs.is_err(), "the account root is not listed as a whole");
    let record = shared::model::JobId::parse(job).unwrap();
    let stored = stack.jobs.as_ref();
    let prefix = shared::ports::JobStore::get(stored, &record)
        .await
        .unwrap()
        .unwrap()
        .output_prefix;
    let container = layout::created_container(&prefix).expect("a container of its own");
    assert!(prefix.ends_with(job));
    let files = stack.exports.list(&format!("{prefix}/")).await.unwrap();
    assert_eq!(files.len(), manifest["output"].as_array().unwrap().len());
    assert!(
        stack
            .exports
            .list(&layout::staging_root(&prefix))
            .await
            .unwrap()
            .is_empty(),
        "no staging left"
    );

    // DELETE removes the files and the container made for them.
    let resp = stack.http.delete(&status).send().await.unwrap();
    assert_eq!(resp.status(), 202);
    match stack.exports.list(&format!("{container}/")).await {
        Err(shared::ports::ObjectError::Access(fault)) => {
            assert_eq!(
                fault.problem,
                shared::ports::AccessProblem::ContainerNotFound
            )
        }
        other => panic!("the export's container must be gone, got {other:?}"),
    }
    harness.cancel();
    stack.stop.cancel();
}
