//! Behaviour suites, one per port, run against every adapter: the local ones in plain
//! `cargo test`, the cloud ones against their stand-ins. Each suite panics on the first
//! behaviour that differs from the port's contract. (Compiled with the `testkit` feature.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod job_store;
pub mod object_store;
pub mod queue;

use chrono::{DateTime, Utc};

use crate::job::{ChunkRole, ChunkSpec, Job, JobPlan, JobState, ReadSpec};
use crate::model::{JobId, ResourceType};
use crate::request::{ExportLevel, ExportRequest, Handling};

/// A job in `state` for store tests.
pub fn sample_job(state: JobState, now: DateTime<Utc>) -> Job {
    let id = JobId::new();
    Job {
        output_prefix: id.to_string(),
        id,
        owner: "tester".into(),
        state,
        version: 1,
        request: ExportRequest {
            level: ExportLevel::System,
            request_url: "http://localhost/fhir/$export".into(),
            since: None,
            until: None,
            types: Some(vec![ResourceType::PATIENT]),
            type_filters: vec![],
            elements: vec![],
            patients: vec![],
            include_associated: vec![],
            container: None,
            organize_output_by: None,
            allow_partial_manifests: false,
            handling: Handling::Strict,
            scope: None,
            ignored: vec![],
        },
        transaction_time: now,
        created_at: now,
        updated_at: now,
        chunks_total: 0,
        chunks_done: 0,
        recoveries: 0,
        expires_at: now + chrono::Duration::days(1),
        completed_at: None,
        failure: None,
        plan: JobPlan::default(),
        schedule: None,
    }
}

pub fn sample_chunk(index: u32) -> ChunkSpec {
    ChunkSpec {
        index,
        phase: 0,
        resource_type: ResourceType::PATIENT,
        role: ChunkRole::Export,
        read: Some(ReadSpec {
            parts: vec![serde_json::json!({
                "object": format!("Patient-{index}.ndjson"),
                "start": 0,
                "end": 100,
            })],
        }),
        bytes: 100,
        packed: Vec::new(),
        owners: None,
        group: None,
        numbers: Vec::new(),
    }
}

/// `n` Patient lines `p0`, `p1`, ... of varying length, with CRLF endings on every tenth and
/// one blank line after `p50`: what an NDJSON reader must split correctly whatever the
/// ranges it is given.
pub fn ragged_patient_lines(n: usize) -> String {
    let mut text = String::new();
    for i in 0..n {
        text.push_str(&format!(
            "{{\"resourceType\":\"Patient\",\"id\":\"p{i}\",\"pad\":\"{}\"}}{}",
            "x".repeat(i % 17),
            if i % 10 == 0 { "\r\n" } else { "\n" }
        ));
        if i == 50 {
            text.push('\n');
        }
    }
    text
}
