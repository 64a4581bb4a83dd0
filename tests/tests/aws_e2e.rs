//! The AWS deployment end to end, against moto server: the real kick-off, status and cancel
//! function routers behind a stand-in for API Gateway's routing, on a real socket; DynamoDB
//! for jobs, SQS for work, S3 for the source and the output; and the real worker handler fed
//! the way Lambda feeds it — a harness receives messages from the SQS queues, hands them over
//! as SQS events, and deletes what the handler did not report as failed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use fhir_export::synth;
use integration_tests::aws::{sqs_event, stack};
use serde_json::Value;
use shared::ports::{JobStore, WorkQueue};

fn counts(got: &BTreeMap<String, Vec<Value>>) -> BTreeMap<String, usize> {
    got.iter().map(|(k, v)| (k.clone(), v.len())).collect()
}

#[tokio::test]
async fn exports_at_three_levels_through_the_functions() {
    let Some(stack) = stack(20, &[], 5).await else {
        return;
    };
    let stack = Arc::new(stack);
    let harness = stack.spawn_harness();

    let status = stack.kickoff("/$export", "").await;
    let resp = stack.finish(&status).await;
    assert_eq!(resp.status(), 200);
    let manifest: Value = resp.json().await.unwrap();
    assert_eq!(
        manifest["requiresAccessToken"], true,
        "files go through the checked route"
    );
    assert!(
        manifest["output"][0]["url"]
            .as_str()
            .unwrap()
            .starts_with(&stack.base)
    );
    let got = stack.download(&manifest).await;
    let want: BTreeMap<String, usize> = stack
        .source
        .iter()
        .map(|(k, v)| (k.clone(), v.len()))
        .collect();
    assert_eq!(counts(&got), want);
    for (ty, rs) in &got {
        let ids: BTreeSet<&str> = rs.iter().map(|r| r["id"].as_str().unwrap()).collect();
        assert_eq!(ids.len(), rs.len(), "{ty}: each resource once");
    }

    let status = stack
        .kickoff("/Patient/$export", "_type=Patient,Condition")
        .await;
    let got = stack
        .download(&stack.finish(&status).await.json().await.unwrap())
        .await;
    assert_eq!(got["Patient"].len(), 20);
    assert_eq!(got["Condition"].len(), stack.source["Condition"].len());

    let status = stack
        .kickoff(
            &format!("/Group/{}/$export", synth::GROUP_SMALL),
            "_type=Patient,Observation",
        )
        .await;
    let got = stack
        .download(&stack.finish(&status).await.json().await.unwrap())
        .await;
    let members: BTreeSet<String> = (0..10).map(synth::patient_id).collect();
    assert_eq!(
        got["Patient"]
            .iter()
            .map(|p| p["id"].as_str().unwrap().to_owned())
            .collect::<BTreeSet<_>>(),
        members
    );
    assert!(got["Observation"].iter().all(|o| {
        let s = o.to_string();
        members
            .iter()
            .any(|m| s.contains(&format!("Patient/{m}\"")))
    }));
    harness.cancel();
    stack.stop.cancel();
}

#[tokio::test]
async fn duplicate_deliveries_and_cancel() {
    let Some(stack) = stack(30, &[("FHIR_EXPORT_CHUNK_BYTES", "30000")], 5).await else {
        return;
    };
    let stack = Arc::new(stack);

    // The plan, then one chunk message delivered twice (the same SQS record, twice).
    let status = stack.kickoff("/$export", "_type=Observation,Patient").await;
    assert_eq!(stack.pump(false, 1).await, 1);
    let got = stack
        .work
        .client()
        .receive_message()
        .queue_url(stack.work.url())
        .max_number_of_messages(1)
        .wait_time_seconds(1)
        .send()
        .await
        .unwrap()
        .messages
        .unwrap();
    let event = sqs_event(&got, &stack.work_arn);
    stack.worker.handle(event.clone()).await.unwrap();
    stack.worker.handle(event).await.unwrap();
    stack
        .work
        .delete(got[0].receipt_handle().unwrap())
        .await
        .unwrap();
    let harness = stack.spawn_harness();
    let resp = stack.finish(&status).await;
    assert_eq!(resp.status(), 200);
    let got = stack.download(&resp.json().await.unwrap()).await;
    for ty in ["Observation", "Patient"] {
        let ids: BTreeSet<&str> = got[ty].iter().map(|r| r["id"].as_str().unwrap()).collect();
        assert_eq!(got[ty].len(), stack.source[ty].len(), "{ty}");
        assert_eq!(ids.len(), got[ty].len(), "{ty}: no duplicates");
    }
    harness.cancel();

    // Cancel while running: 202, then 404, and the export's objects are gone.
    let status = stack.kickoff("/$export", "").await;
    let id = status.rsplit('/').next().unwrap().to_owned();
    let harness = stack.spawn_harness();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let job = stack
            .jobs
            .get(&shared::model::JobId::parse(&id).unwrap())
            .await
            .unwrap()
            .unwrap();
        if job.chunks_done >= 1 {
            assert!(
                job.chunks_done < job.chunks_total,
                "finished before it could be cancelled"
            );
            break;
        }
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        stack.http.delete(&status).send().await.unwrap().status(),
        202
    );
    assert_eq!(stack.http.get(&status).send().await.unwrap().status(), 404);
    assert_eq!(
        stack.http.delete(&status).send().await.unwrap().status(),
        404
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        stack.objects(&format!("{id}/")).await,
        0,
        "a cancelled export leaves no objects"
    );
    harness.cancel();
    stack.stop.cancel();
}

#[tokio::test]
async fn a_chunk_that_keeps_failing_lands_in_the_dead_letter_queue_and_fails_the_job() {
    let Some(stack) = stack(5, &[], 2).await else {
        return;
    };
    let stack = Arc::new(stack);
    let status = stack.kickoff("/$export", "_type=Condition").await;
    assert_eq!(stack.pump(false, 1).await, 1, "the plan");
    // An outage of the output: every write fails, retryably.
    stack
        .output
        .client()
        .delete_bucket()
        .bucket(&stack.output_bucket)
        .send()
        .await
        .unwrap();
    let harness = stack.spawn_harness();
    let resp = stack.finish(&status).await;
    harness.cancel();
    assert_eq!(resp.status(), 500);
    let oo: Value = resp.json().await.unwrap();
    let diag = oo["issue"][0]["diagnostics"].as_str().unwrap();
    assert!(diag.contains("failed repeatedly"), "{diag}");
    stack.stop.cancel();
}

#[tokio::test]
async fn signed_file_access_lists_presigned_urls() {
    let Some(stack) = stack(6, &[("FHIR_EXPORT_FILE_ACCESS", "signed")], 5).await else {
        return;
    };
    let stack = Arc::new(stack);
    let harness = stack.spawn_harness();
    let status = stack.kickoff("/$export", "_type=Patient,Condition").await;
    let resp = stack.finish(&status).await;
    assert_eq!(resp.status(), 200);
    let manifest: Value = resp.json().await.unwrap();
    assert_eq!(manifest["requiresAccessToken"], false);
    let moto = std::env::var("FHIR_EXPORT_MOTO_URL").unwrap();
    for item in manifest["output"].as_array().unwrap() {
        let url = item["url"].as_str().unwrap();
        assert!(
            url.starts_with(&moto),
            "a presigned object-store URL, not our route: {url}"
        );
        assert!(
            url.contains("X-Amz-Signature=") && url.contains("X-Amz-Expires=900"),
            "{url}"
        );
    }
    let got = stack.download(&manifest).await;
    assert_eq!(got["Patient"].len(), 6);
    assert_eq!(got["Condition"].len(), stack.source["Condition"].len());
    harness.cancel();
    stack.stop.cancel();
}
