//! Provenance chosen by association (`includeAssociatedData`, and the Patient-level default).
//!
//! Export and index chunks of the first phase record what they selected (`Type/id` and its
//! owner). For `LatestProvenanceResources`, index chunks then record every Provenance's
//! targets with its `recorded` time. Select chunks keep a Provenance when one of its targets
//! was selected (and, for Latest, when it is that target's most recent Provenance). Each
//! select chunk holds only its own candidates in memory and streams the recorded lists past
//! them, so memory follows the chunk, not the export.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use async_trait::async_trait;
use futures::TryStreamExt;
use serde_json::Value;
use tokio::io::AsyncBufReadExt;
use tokio_util::io::StreamReader;

use super::WorkError;
use super::context::{ChunkCtx, Consumer, Produced};
use super::select::Kept;
use super::sinks::write_sorted;
use crate::job::{ChunkRecord, ChunkRole, FileKind, ProvenanceMode};
use crate::model::ResourceType;
use crate::model::fhir_time::instant_micros;
use crate::model::ids::split_reference;
use crate::ports::ObjectStore;

/// `Type/id` of every `Provenance.target` literal reference.
fn targets(provenance: &Value) -> Vec<String> {
    provenance
        .get("target")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|t| t.get("reference")?.as_str())
        .filter_map(|r| split_reference(r).map(|(t, id)| format!("{t}/{id}")))
        .collect()
}

fn recorded(provenance: &Value) -> i64 {
    provenance
        .get("recorded")
        .and_then(Value::as_str)
        .and_then(|s| instant_micros(s.as_bytes()))
        .unwrap_or(i64::MIN)
}

struct IndexConsumer {
    lines: Vec<String>,
}

#[async_trait]
impl Consumer for IndexConsumer {
    async fn keep(&mut self, _: ResourceType, kept: Kept<'_>) -> Result<(), WorkError> {
        if let Some(v) = &kept.value {
            let at = recorded(v);
            for t in targets(v) {
                // Fixed width so that lines sort by time within a target.
                self.lines.push(format!("{t}\t{at:020}\t{}", kept.id));
            }
        }
        Ok(())
    }
}

pub(super) async fn index(ctx: &mut ChunkCtx<'_>) -> Produced {
    // Every Provenance counts when deciding which is a target's latest, in scope or not.
    let select = ctx
        .selection(ResourceType::PROVENANCE)
        .with_value()
        .without_scope();
    let mut consumer = IndexConsumer { lines: Vec::new() };
    if !ctx.scan(ctx.own_read()?, &select, &mut consumer).await? {
        return Ok(None);
    }
    let key = ctx.staged("provenance-index.tsv");
    let files: Vec<_> = write_sorted(ctx.store(), consumer.lines, FileKind::ProvenanceIndex, &key)
        .await?
        .into_iter()
        .collect();
    Ok(Some((files, 0)))
}

struct Candidate {
    bytes: Vec<u8>,
    id: String,
    targets: Vec<String>,
    recorded: i64,
}

struct SelectConsumer {
    candidates: Vec<Candidate>,
}

#[async_trait]
impl Consumer for SelectConsumer {
    async fn keep(&mut self, _: ResourceType, kept: Kept<'_>) -> Result<(), WorkError> {
        if let Some(v) = &kept.value {
            self.candidates.push(Candidate {
                targets: targets(v),
                recorded: recorded(v),
                id: kept.id.clone().into_owned(),
                bytes: kept.bytes.into_owned(),
            });
        }
        Ok(())
    }
}

/// Streams every line of the files of `kind` that the chunks of `roles` recorded.
async fn for_each_line(
    store: &Arc<dyn ObjectStore>,
    chunks: &[ChunkRecord],
    kind: FileKind,
    mut f: impl FnMut(&str),
) -> Result<(), WorkError> {
    for c in chunks {
        for file in c
            .result
            .iter()
            .flat_map(|r| &r.files)
            .filter(|s| s.kind == kind)
        {
            let stream = store
                .read(&file.path, 0, None)
                .await?
                .map_err(std::io::Error::other);
            let mut lines = StreamReader::new(stream).lines();
            while let Some(line) = lines
                .next_line()
                .await
                .map_err(|e| WorkError::Retryable(e.into()))?
            {
                f(line.as_str());
            }
        }
    }
    Ok(())
}

pub(super) async fn select(ctx: &mut ChunkCtx<'_>) -> Produced {
    // Association replaces the compartment test: a Provenance of an exported Observation is
    // wanted even though it names no patient.
    let mut select = ctx.selection(ResourceType::PROVENANCE).with_value();
    select = select.without_scope();
    let mut consumer = SelectConsumer {
        candidates: Vec::new(),
    };
    if !ctx.scan(ctx.own_read()?, &select, &mut consumer).await? {
        return Ok(None);
    }
    let wanted: HashSet<&str> = consumer
        .candidates
        .iter()
        .flat_map(|c| c.targets.iter().map(String::as_str))
        .collect();
    let chunks = ctx.deps.jobs.chunks(&ctx.job.id).await?;
    let selected_chunks: Vec<ChunkRecord> = chunks
        .iter()
        .filter(|c| matches!(c.spec.role, ChunkRole::Export | ChunkRole::Index))
        .cloned()
        .collect();
    // target -> owner of the selected resource
    let mut selected: HashMap<String, String> = HashMap::new();
    for_each_line(ctx.store(), &selected_chunks, FileKind::Refs, |line| {
        let (target, owner) = line.split_once('\t').unwrap_or((line, ""));
        if wanted.contains(target) {
            selected.insert(target.to_owned(), owner.to_owned());
        }
    })
    .await?;
    let mode = ctx.job.plan.provenance;
    let mut latest: HashMap<String, (i64, String)> = HashMap::new();
    if mode == ProvenanceMode::Latest {
        let index_chunks: Vec<ChunkRecord> = chunks
            .iter()
            .filter(|c| c.spec.role == ChunkRole::ProvenanceIndex)
            .cloned()
            .collect();
        for_each_line(
            ctx.store(),
            &index_chunks,
            FileKind::ProvenanceIndex,
            |line| {
                let mut parts = line.splitn(3, '\t');
                let (Some(target), Some(at), Some(id)) = (parts.next(), parts.next(), parts.next())
                else {
                    return;
                };
                if !selected.contains_key(target) {
                    return;
                }
                let at: i64 = at.parse().unwrap_or(i64::MIN);
                let better = latest
                    .get(target)
                    .is_none_or(|(t, i)| (at, id) > (*t, i.as_str()));
                if better {
                    latest.insert(target.to_owned(), (at, id.to_owned()));
                }
            },
        )
        .await?;
    }
    let t = ResourceType::PROVENANCE;
    let mut sink = ctx.output_sink(t);
    let mut kept = 0u64;
    for c in &consumer.candidates {
        let mut keep = false;
        let mut owner: Option<&str> = None;
        for target in &c.targets {
            let Some(o) = selected.get(target) else {
                continue;
            };
            let counts = match mode {
                ProvenanceMode::Latest => latest
                    .get(target)
                    .is_some_and(|(at, id)| *at == c.recorded && *id == c.id),
                _ => true,
            };
            if counts {
                keep = true;
                if !o.is_empty() && owner.is_none_or(|cur| o.as_str() < cur) {
                    owner = Some(o);
                }
            }
        }
        if keep {
            kept += 1;
            sink.keep(t, owner, &c.bytes).await?;
        }
    }
    tracing::debug!(job_id = %ctx.job.id, candidates = consumer.candidates.len(), kept, "provenance selected");
    Ok(Some(sink.finish(ctx.store(), ctx.dir).await?))
}
