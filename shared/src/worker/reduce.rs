//! Reduce: one partition of an export organized by patient. Merges that partition of every
//! map file (each already sorted by owner and type) and writes patient blocks: a header
//! `Parameters` naming the patient, the Patient, then the rest of its compartment. A block cut
//! by the size limit starts again with its header in the next file, and the manifest records
//! `continuesInFile` (Bulk Data IG 3.0, output organization). Memory is one read buffer per
//! map file, whatever the export's size.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use futures::TryStreamExt;
use serde_json::json;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, BufReader};
use tokio_util::io::StreamReader;

use super::WorkError;
use super::context::{ChunkCtx, Produced};
use crate::job::{ChunkRole, FileKind};

type Lines = Box<dyn AsyncBufRead + Unpin + Send>;

/// A map line: `owner \t typekey \t json`.
fn split(line: &[u8]) -> Option<(&[u8], &[u8], &[u8])> {
    let a = memchr::memchr(b'\t', line)?;
    let b = a + 1 + memchr::memchr(b'\t', &line[a + 1..])?;
    Some((&line[..a], &line[a + 1..b], &line[b + 1..]))
}

async fn next_line(r: &mut Lines, buf: &mut Vec<u8>) -> Result<bool, WorkError> {
    buf.clear();
    let n = r
        .read_until(b'\n', buf)
        .await
        .map_err(|e| WorkError::Retryable(e.into()))?;
    while buf.last() == Some(&b'\n') {
        buf.pop();
    }
    Ok(n > 0)
}

pub(super) async fn reduce(ctx: &mut ChunkCtx<'_>, partition: u32) -> Produced {
    let chunks = ctx.deps.jobs.chunks(&ctx.job.id).await?;
    let mut streams: Vec<Lines> = Vec::new();
    for c in chunks
        .iter()
        .filter(|c| matches!(c.spec.role, ChunkRole::Export | ChunkRole::ProvenanceSelect))
    {
        for f in c
            .result
            .iter()
            .flat_map(|r| &r.files)
            .filter(|f| f.kind == FileKind::Map)
        {
            let p = partition as usize;
            let (Some(start), Some(end)) =
                (f.partition_offsets.get(p), f.partition_offsets.get(p + 1))
            else {
                continue;
            };
            if start >= end {
                continue;
            }
            let stream = ctx
                .store()
                .read(&f.path, *start, Some(*end))
                .await?
                .map_err(std::io::Error::other);
            streams.push(Box::new(BufReader::with_capacity(
                64 * 1024,
                StreamReader::new(stream),
            )));
        }
    }
    let mut current: Vec<Vec<u8>> = vec![Vec::new(); streams.len()];
    let mut heap: BinaryHeap<Reverse<(Vec<u8>, usize)>> = BinaryHeap::new();
    for (i, s) in streams.iter_mut().enumerate() {
        if next_line(s, &mut current[i]).await? {
            let key = sort_key(&current[i])?;
            heap.push(Reverse((key, i)));
        }
    }
    let mut out = ctx.part_writer("patients", FileKind::Output, None);
    let mut block_owner: Vec<u8> = Vec::new();
    let mut header: Vec<u8> = Vec::new();
    let mut resources = 0u64;
    let mut since_tick = 0u32;
    while let Some(Reverse((_, i))) = heap.pop() {
        since_tick += 1;
        if since_tick >= 4096 {
            since_tick = 0;
            if !ctx.watch.tick().await? {
                out.abort().await;
                return Ok(None);
            }
        }
        {
            let line = &current[i];
            let (owner, _, body) =
                split(line).ok_or_else(|| WorkError::Permanent("malformed map line".into()))?;
            if owner != block_owner.as_slice() {
                block_owner = owner.to_vec();
                header = block_header(owner)?;
                if !out.fits(header.len() + body.len() + 1) {
                    out.roll(false).await?;
                }
                out.write_line(&header).await?;
            } else if !out.fits(body.len()) {
                out.roll(true).await?;
                out.write_line(&header).await?;
            }
            out.write_line(body).await?;
            resources += 1;
        }
        if next_line(&mut streams[i], &mut current[i]).await? {
            let key = sort_key(&current[i])?;
            heap.push(Reverse((key, i)));
        }
    }
    Ok(Some((out.finish().await?, resources)))
}

fn sort_key(line: &[u8]) -> Result<Vec<u8>, WorkError> {
    let (owner, type_key, _) =
        split(line).ok_or_else(|| WorkError::Permanent("malformed map line".into()))?;
    let mut key = Vec::with_capacity(owner.len() + type_key.len() + 1);
    key.extend_from_slice(owner);
    key.push(b'\t');
    key.extend_from_slice(type_key);
    Ok(key)
}

/// The header of a patient block (IG 3.0): a `Parameters` with a `header` reference.
fn block_header(owner: &[u8]) -> Result<Vec<u8>, WorkError> {
    let owner = std::str::from_utf8(owner)
        .map_err(|_| WorkError::Permanent("patient id is not UTF-8".into()))?;
    serde_json::to_vec(&json!({
        "resourceType": "Parameters",
        "parameter": [{ "name": "header", "valueReference": { "reference": format!("Patient/{owner}") } }]
    }))
    .map_err(|e| WorkError::Permanent(e.to_string()))
}
