//! Plan: decide the types, resolve a Group's members, split the job into chunks, fan out.

use bytes::Bytes;
use serde_json::Value;

use super::{WorkError, WorkMessage, WorkerDeps, now, update_job};
use crate::compartment::in_patient_compartment;
use crate::job::{Job, JobState};
use crate::layout;
use crate::model::{JobId, LogicalId, ResourceType, fhir_time::instant_micros};
use crate::request::ExportLevel;

pub(super) async fn plan(deps: &WorkerDeps, id: &JobId) -> Result<(), WorkError> {
    let t = now();
    let Some(job) = update_job(deps.jobs.as_ref(), id, |job| match job.state {
        JobState::Accepted | JobState::Planning => job.transitioned(JobState::Planning, t),
        _ => None,
    })
    .await?
    else {
        tracing::debug!(job_id = %id, "plan: job gone or already planned");
        return Ok(());
    };

    let types = export_types(deps, &job).await?;
    if let ExportLevel::Group(group) = &job.request.level {
        let members = group_members(deps, &job, group).await?;
        tracing::info!(job_id = %id, group = %group, members = members.len(), "group resolved");
        let body = serde_json::to_vec(&members).map_err(|e| WorkError::Retryable(e.into()))?;
        deps.output
            .put(&layout::members_key(&job.output_prefix), Bytes::from(body))
            .await?;
    }
    let chunks = deps.source.plan(&types, deps.settings.chunk_bytes).await?;
    deps.jobs.put_chunks(id, &chunks).await?;
    let total = u32::try_from(chunks.len())
        .map_err(|_| WorkError::Permanent("export needs more than 2^32 chunks".into()))?;
    let t = now();
    let Some(running) = update_job(deps.jobs.as_ref(), id, |j| {
        if j.state != JobState::Planning {
            return None;
        }
        let mut next = j.transitioned(JobState::Running, t)?;
        next.chunks_total = total;
        Some(next)
    })
    .await?
    else {
        // Cancelled (or planned by a duplicate) meanwhile.
        return Ok(());
    };
    tracing::info!(job_id = %id, chunks = total, types = types.len(), "export planned");
    let messages: Vec<String> = if chunks.is_empty() {
        vec![
            WorkMessage::Finalize {
                job: running.id.clone(),
            }
            .encode(),
        ]
    } else {
        chunks
            .iter()
            .map(|c| {
                WorkMessage::Chunk {
                    job: running.id.clone(),
                    chunk: c.index,
                }
                .encode()
            })
            .collect()
    };
    deps.queue.send(messages).await?;
    Ok(())
}

/// The types to export: `_type` (or everything the source has), narrowed to the Patient
/// compartment for Patient and Group level. `Group` itself is left out of patient-level
/// exports unless asked for: a Group's member list names patients outside the export.
async fn export_types(deps: &WorkerDeps, job: &Job) -> Result<Vec<ResourceType>, WorkError> {
    let available = deps.source.types().await?;
    let mut types: Vec<ResourceType> = match &job.request.types {
        Some(ts) => ts
            .iter()
            .copied()
            .filter(|t| available.contains(t))
            .collect(),
        None => available
            .into_iter()
            .filter(|t| !job.request.is_patient_level() || *t != ResourceType::GROUP)
            .collect(),
    };
    if job.request.is_patient_level() {
        types.retain(|t| in_patient_compartment(*t));
    }
    Ok(types)
}

/// Current Patient members of a Group: `member.entity` references to Patients that are not
/// `inactive` and whose `period` holds the export's transaction time.
async fn group_members(
    deps: &WorkerDeps,
    job: &Job,
    group: &LogicalId,
) -> Result<Vec<String>, WorkError> {
    let Some(resource) = deps.source.read(ResourceType::GROUP, group).await? else {
        return Err(WorkError::Permanent(format!(
            "Group/{group} no longer exists in the source"
        )));
    };
    Ok(current_members(
        &resource,
        job.transaction_time.timestamp_micros(),
    ))
}

pub(crate) fn current_members(group: &Value, at_micros: i64) -> Vec<String> {
    let mut ids: Vec<String> = group
        .get("member")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|m| m.get("inactive").and_then(Value::as_bool) != Some(true))
        .filter(|m| {
            let bound = |k: &str| {
                m.get("period")
                    .and_then(|p| p.get(k))
                    .and_then(Value::as_str)
                    .and_then(|s| instant_micros(s.as_bytes()).or_else(|| date_start_micros(s)))
            };
            bound("start").is_none_or(|s| s <= at_micros)
                && bound("end").is_none_or(|e| e >= at_micros)
        })
        .filter_map(|m| m.get("entity")?.get("reference")?.as_str())
        .filter_map(|r| match crate::model::ids::split_reference(r) {
            Some(("Patient", id)) => Some(id.to_owned()),
            _ => None,
        })
        .collect();
    ids.sort();
    ids.dedup();
    ids
}

/// `YYYY-MM-DD` period bounds, read as the start of that day in UTC.
fn date_start_micros(s: &str) -> Option<i64> {
    instant_micros(format!("{s}T00:00:00Z").as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn members_exclude_inactive_expired_and_non_patients() {
        let g = json!({"resourceType":"Group","id":"g","member":[
            {"entity":{"reference":"Patient/b"}},
            {"entity":{"reference":"Patient/a"}},
            {"entity":{"reference":"Patient/c"},"inactive":true},
            {"entity":{"reference":"Patient/d"},"period":{"end":"2020-01-01"}},
            {"entity":{"reference":"Patient/e"},"period":{"start":"2030-01-01T00:00:00Z"}},
            {"entity":{"reference":"Group/x"}},
            {"entity":{"reference":"Patient/a"}}
        ]});
        let at = instant_micros(b"2024-06-01T00:00:00Z").expect("t");
        assert_eq!(current_members(&g, at), vec!["a", "b"]);
        assert!(current_members(&json!({"resourceType":"Group","id":"e"}), at).is_empty());
    }
}
