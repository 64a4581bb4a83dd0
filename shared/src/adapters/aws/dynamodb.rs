//! `JobStore` on DynamoDB: one table, every item of a job under the job's partition key.
//!
//! | item | `pk` | `sk` | attributes |
//! | --- | --- | --- | --- |
//! | job | `JOB#<id>` | `#JOB` | `doc` (the job, JSON), `state`, `version`, `chunks_done`, `chunks_total`, `updated_at` (ms), `expires_at` (ms), `ttl` (s), `active` (present while active), `expiry_bucket` |
//! | chunk | `JOB#<id>` | `CHUNK#<index>` | `spec`, `result`, `published` (JSON), `renamed` |
//! | counter | `JOB#<id>` | `COUNTER#<name>` | `n`; a count group's (`COUNTER##group-<n>`, written with the chunks): `stopped`, `ttl` once its job is stopped |
//! | published file | `JOB#<id>` | `OUT#<seq>` | `file` (JSON) |
//! | usage of one message | `JOB#<id>` | `USAGE#<key>` | `doc` (JSON) |
//! | schedule | `SCHEDULES` | `SCHEDULE#<name>` | `doc` (its state, JSON), `version` |
//! | work queued (the idle pause's mark) | `ACTIVITY` | `#QUEUED` | `mark` (new with every mark), `at` (ms) |
//!
//! Every state change is an `UpdateItem` conditioned on `version`; a `ConditionalCheckFailed`
//! is a version conflict, not an error. Chunk completion is conditioned on the chunk having no
//! result, and the job's `chunks_done` is then incremented with `ADD` returning the new value,
//! so exactly one completion sees the last chunk. Chunks of a large phase count on their
//! group's counter first (`COUNTER##group-<n>`); the group's last chunk adds the group to
//! `chunks_done`, so that the job's item is not written by every chunk. A cancel or failure
//! marks every group item `stopped` before it deletes the files, and the chunks of a group
//! read their group's item, not the job's, to learn of it. Two sparse indexes answer the sweep without
//! scanning: `active` (`active`, `updated_at`) for stalled jobs, `expiry` (`expiry_bucket`,
//! `expires_at`) for expired ones; `ttl` lets DynamoDB drop a job's record a day after it
//! expires (the sweep deletes its files first).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, DeleteRequest, GlobalSecondaryIndex,
    KeySchemaElement, KeyType, Projection, ProjectionType, PutRequest, ReturnValue,
    ScalarAttributeType, TimeToLiveSpecification, WriteRequest,
};
use chrono::{DateTime, Utc};
use futures::StreamExt;

use crate::job::{ChunkRecord, ChunkResult, ChunkSpec, CountGroup, Job, JobState, OutputFile};
use crate::model::JobId;
use crate::ports::{ChunkCompletion, JobStore, PEEK_REUSE, StoreError};
use crate::schedule::ScheduleState;
use crate::usage::{self, Usage, scope::CountRequests};

type Item = HashMap<String, AttributeValue>;

const JOB_SK: &str = "#JOB";
/// The one partition of schedule items (few, read together by the API).
const SCHEDULES_PK: &str = "SCHEDULES";
/// The partition of the mark that work was queued (see [`DynamoJobStore::mark_activity`]).
const ACTIVITY_PK: &str = "ACTIVITY";
const ACTIVE_INDEX: &str = "active";
const EXPIRY_INDEX: &str = "expiry";
/// DynamoDB deletes a job's record this long after it expired (TTL deletion is lazy anyway).
const TTL_GRACE_SECS: i64 = 86_400;
/// Usage items outlive any export's retention; the sweep deletes them with the job, and the
/// TTL removes those of a job whose item went by its own TTL.
const USAGE_TTL_SECS: i64 = 90 * 86_400;
/// Concurrent writes when storing many chunks.
const PARALLEL_WRITES: usize = 16;
/// Running jobs a process keeps from `peek` (it works for few exports at once).
const PEEKED_JOBS: usize = 8;

/// The last mark that work was queued: unique to that mark, and when it was made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Activity {
    pub mark: String,
    pub at: DateTime<Utc>,
}

#[derive(Clone)]
pub struct DynamoJobStore {
    client: Client,
    table: String,
    /// Running jobs read by `peek`, with when: answered again for [`PEEK_REUSE`]. Held
    /// across the read, so that chunks of one batch that miss together read once.
    peeked: Arc<tokio::sync::Mutex<Vec<(Instant, Job)>>>,
}

fn backend<E: std::error::Error + Send + Sync + 'static>(e: E) -> StoreError {
    StoreError::Backend(Box::new(e))
}

fn pk(id: &JobId) -> AttributeValue {
    AttributeValue::S(format!("JOB#{id}"))
}

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

fn n(v: impl ToString) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn counter_sk(name: &str) -> AttributeValue {
    s(format!("COUNTER#{name}"))
}

fn chunk_sk(index: u32) -> AttributeValue {
    s(format!("CHUNK#{index:010}"))
}

fn get_s<'a>(item: &'a Item, name: &str) -> Option<&'a str> {
    item.get(name)
        .and_then(|v| v.as_s().ok())
        .map(String::as_str)
}

fn get_n(item: &Item, name: &str) -> Result<u64, StoreError> {
    item.get(name)
        .and_then(|v| v.as_n().ok())
        .ok_or_else(|| StoreError::Backend(format!("attribute {name} missing").into()))?
        .parse()
        .map_err(backend)
}

fn json<T: serde::de::DeserializeOwned>(item: &Item, name: &str) -> Result<Option<T>, StoreError> {
    get_s(item, name)
        .map(serde_json::from_str)
        .transpose()
        .map_err(backend)
}

fn is_condition_failure<E: aws_sdk_dynamodb::error::ProvideErrorMetadata, R>(
    e: &SdkError<E, R>,
) -> bool {
    e.as_service_error()
        .and_then(|s| s.code())
        .is_some_and(|c| c == "ConditionalCheckFailedException")
}

fn job_from(item: &Item) -> Result<Job, StoreError> {
    let mut job: Job =
        json(item, "doc")?.ok_or_else(|| StoreError::Backend("job item without doc".into()))?;
    job.chunks_done = u32::try_from(get_n(item, "chunks_done")?).map_err(backend)?;
    Ok(job)
}

/// Sends independent updates, [`PARALLEL_WRITES`] at a time.
async fn send_updates(
    requests: Vec<aws_sdk_dynamodb::operation::update_item::builders::UpdateItemFluentBuilder>,
) -> Result<(), StoreError> {
    let mut stream = futures::stream::iter(
        requests
            .into_iter()
            .map(|r| async move { r.send().await.map(|_| ()).map_err(backend) }),
    )
    .buffer_unordered(PARALLEL_WRITES);
    while let Some(r) = stream.next().await {
        r?;
    }
    Ok(())
}

fn chunk_from(item: &Item) -> Result<ChunkRecord, StoreError> {
    Ok(ChunkRecord {
        spec: json(item, "spec")?
            .ok_or_else(|| StoreError::Backend("chunk item without spec".into()))?,
        result: json(item, "result")?,
        published: json(item, "published")?,
        renamed: item
            .get("renamed")
            .and_then(|v| v.as_bool().ok())
            .copied()
            .unwrap_or(false),
    })
}

impl DynamoJobStore {
    pub fn new(config: &aws_config::SdkConfig, table: &str) -> Self {
        DynamoJobStore {
            client: Client::from_conf(
                aws_sdk_dynamodb::config::Builder::from(config)
                    .interceptor(CountRequests::new(usage::DYNAMODB))
                    .build(),
            ),
            table: table.to_owned(),
            peeked: Arc::default(),
        }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Creates the table with its indexes and TTL (tests and local runs; deployments get it
    /// from `template.yaml`). An existing table is left as it is.
    pub async fn create_table(&self) -> Result<(), StoreError> {
        let attr = |name: &str, t: ScalarAttributeType| {
            AttributeDefinition::builder()
                .attribute_name(name)
                .attribute_type(t)
                .build()
                .map_err(backend)
        };
        let key = |name: &str, t: KeyType| {
            KeySchemaElement::builder()
                .attribute_name(name)
                .key_type(t)
                .build()
                .map_err(backend)
        };
        let index =
            |name: &str, hash: &str, range: &str| -> Result<GlobalSecondaryIndex, StoreError> {
                GlobalSecondaryIndex::builder()
                    .index_name(name)
                    .key_schema(key(hash, KeyType::Hash)?)
                    .key_schema(key(range, KeyType::Range)?)
                    .projection(
                        Projection::builder()
                            .projection_type(ProjectionType::All)
                            .build(),
                    )
                    .build()
                    .map_err(backend)
            };
        let created = self
            .client
            .create_table()
            .table_name(&self.table)
            .billing_mode(BillingMode::PayPerRequest)
            .attribute_definitions(attr("pk", ScalarAttributeType::S)?)
            .attribute_definitions(attr("sk", ScalarAttributeType::S)?)
            .attribute_definitions(attr("active", ScalarAttributeType::S)?)
            .attribute_definitions(attr("updated_at", ScalarAttributeType::N)?)
            .attribute_definitions(attr("expiry_bucket", ScalarAttributeType::S)?)
            .attribute_definitions(attr("expires_at", ScalarAttributeType::N)?)
            .key_schema(key("pk", KeyType::Hash)?)
            .key_schema(key("sk", KeyType::Range)?)
            .global_secondary_indexes(index(ACTIVE_INDEX, "active", "updated_at")?)
            .global_secondary_indexes(index(EXPIRY_INDEX, "expiry_bucket", "expires_at")?)
            .send()
            .await;
        match created {
            Ok(_) => {}
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_resource_in_use_exception()) => {}
            Err(e) => return Err(backend(e)),
        }
        self.client
            .update_time_to_live()
            .table_name(&self.table)
            .time_to_live_specification(
                TimeToLiveSpecification::builder()
                    .attribute_name("ttl")
                    .enabled(true)
                    .build()
                    .map_err(backend)?,
            )
            .send()
            .await
            .map(|_| ())
            .or_else(|e| {
                // Enabling TTL twice is refused; it is on, which is what we want.
                if e.as_service_error()
                    .and_then(aws_sdk_dynamodb::error::ProvideErrorMetadata::code)
                    == Some("ValidationException")
                {
                    Ok(())
                } else {
                    Err(backend(e))
                }
            })
    }

    /// The attributes a job item carries besides its key.
    fn job_attributes(
        job: &Job,
    ) -> Result<Vec<(&'static str, Option<AttributeValue>)>, StoreError> {
        let doc = serde_json::to_string(job).map_err(backend)?;
        Ok(vec![
            ("doc", Some(s(doc))),
            ("state", Some(s(job.state.as_str()))),
            ("version", Some(n(job.version))),
            ("chunks_total", Some(n(job.chunks_total))),
            ("updated_at", Some(n(job.updated_at.timestamp_millis()))),
            ("expires_at", Some(n(job.expires_at.timestamp_millis()))),
            ("ttl", Some(n(job.expires_at.timestamp() + TTL_GRACE_SECS))),
            ("expiry_bucket", Some(s("jobs"))),
            // Sparse: only active jobs are in the `active` index.
            ("active", job.state.is_active().then(|| s("1"))),
        ])
    }

    async fn query_all(
        &self,
        id: &JobId,
        sk_prefix: &str,
        keys_only: bool,
    ) -> Result<Vec<Item>, StoreError> {
        let mut out = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let mut q = self
                .client
                .query()
                .table_name(&self.table)
                .consistent_read(true)
                .expression_attribute_values(":pk", pk(id))
                .set_exclusive_start_key(start.take());
            q = if sk_prefix.is_empty() {
                // An empty string is not a valid key value: everything of the job.
                q.key_condition_expression("pk = :pk")
            } else {
                q.key_condition_expression("pk = :pk AND begins_with(sk, :prefix)")
                    .expression_attribute_values(":prefix", s(sk_prefix))
            };
            if keys_only {
                q = q.projection_expression("pk, sk");
            }
            let page = q.send().await.map_err(backend)?;
            out.extend(page.items.unwrap_or_default());
            match page.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => return Ok(out),
            }
        }
    }

    async fn query_index(
        &self,
        index: &str,
        condition: &str,
        values: Vec<(&str, AttributeValue)>,
    ) -> Result<Vec<Job>, StoreError> {
        let mut jobs = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let mut q = self
                .client
                .query()
                .table_name(&self.table)
                .index_name(index)
                .key_condition_expression(condition)
                .set_exclusive_start_key(start.take());
            for (k, v) in &values {
                q = q.expression_attribute_values(*k, v.clone());
            }
            let page = q.send().await.map_err(backend)?;
            for item in page.items.unwrap_or_default() {
                jobs.push(job_from(&item)?);
            }
            match page.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => return Ok(jobs),
            }
        }
    }

    /// Whether one item answers `condition` on `index` (a query of one item, not a listing).
    async fn index_has_any(
        &self,
        index: &str,
        condition: &str,
        value: (&str, AttributeValue),
    ) -> Result<bool, StoreError> {
        let page = self
            .client
            .query()
            .table_name(&self.table)
            .index_name(index)
            .key_condition_expression(condition)
            .expression_attribute_values(value.0, value.1)
            .limit(1)
            .select(aws_sdk_dynamodb::types::Select::Count)
            .send()
            .await
            .map_err(backend)?;
        Ok(page.count > 0)
    }

    /// Whether any export is active (accepted, planning, running, finalizing). The index is
    /// eventually consistent: a job created a moment ago may not be seen yet.
    pub async fn any_active(&self) -> Result<bool, StoreError> {
        self.index_has_any(ACTIVE_INDEX, "active = :one", (":one", s("1")))
            .await
    }

    /// Whether any export is kept at all (active, or finished and not yet expired).
    pub async fn any_job(&self) -> Result<bool, StoreError> {
        self.index_has_any(EXPIRY_INDEX, "expiry_bucket = :b", (":b", s("jobs")))
            .await
    }

    /// Marks that work was queued at `at`: every producer marks before it queues, so that the
    /// idle pause (`adapters::aws::idle`) can tell a kick-off that raced it. A `PutItem` (the
    /// kick-off may not update items).
    pub async fn mark_activity(&self, at: DateTime<Utc>) -> Result<(), StoreError> {
        self.client
            .put_item()
            .table_name(&self.table)
            .item("pk", s(ACTIVITY_PK))
            .item("sk", s("#QUEUED"))
            .item("mark", s(uuid::Uuid::new_v4().to_string()))
            .item("at", n(at.timestamp_millis()))
            .send()
            .await
            .map_err(backend)?;
        Ok(())
    }

    /// The last mark (strongly consistent).
    pub async fn last_activity(&self) -> Result<Option<Activity>, StoreError> {
        let item = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(ACTIVITY_PK))
            .key("sk", s("#QUEUED"))
            .consistent_read(true)
            .send()
            .await
            .map_err(backend)?
            .item;
        let Some(item) = item else { return Ok(None) };
        let at = i64::try_from(get_n(&item, "at")?).map_err(backend)?;
        Ok(Some(Activity {
            mark: get_s(&item, "mark").unwrap_or_default().to_owned(),
            at: DateTime::from_timestamp_millis(at)
                .ok_or_else(|| StoreError::Backend("activity mark out of range".into()))?,
        }))
    }

    /// Writes or deletes items, 25 to a request, retrying what DynamoDB leaves unprocessed.
    async fn batch_write(&self, mut requests: Vec<WriteRequest>) -> Result<(), StoreError> {
        while !requests.is_empty() {
            let rest = requests.split_off(requests.len().min(25));
            let mut pending = std::mem::replace(&mut requests, rest);
            for attempt in 0..8u32 {
                let out = self
                    .client
                    .batch_write_item()
                    .request_items(&self.table, pending)
                    .send()
                    .await
                    .map_err(backend)?;
                pending = out
                    .unprocessed_items
                    .and_then(|mut m| m.remove(&self.table))
                    .unwrap_or_default();
                if pending.is_empty() {
                    break;
                }
                if attempt == 7 {
                    return Err(StoreError::Backend(
                        "batch write left items unprocessed".into(),
                    ));
                }
                tokio::time::sleep(std::time::Duration::from_millis(50 << attempt)).await;
            }
        }
        Ok(())
    }

    async fn get_item(&self, id: &JobId, sk: AttributeValue) -> Result<Option<Item>, StoreError> {
        self.read_item(id, sk, true).await
    }

    async fn read_item(
        &self,
        id: &JobId,
        sk: AttributeValue,
        consistent: bool,
    ) -> Result<Option<Item>, StoreError> {
        Ok(self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", pk(id))
            .key("sk", sk)
            .consistent_read(consistent)
            .send()
            .await
            .map_err(backend)?
            .item)
    }
}

#[async_trait]
impl JobStore for DynamoJobStore {
    async fn create(&self, job: &Job) -> Result<(), StoreError> {
        let mut item: Item = HashMap::new();
        item.insert("pk".into(), pk(&job.id));
        item.insert("sk".into(), s(JOB_SK));
        item.insert("chunks_done".into(), n(job.chunks_done));
        for (k, v) in Self::job_attributes(job)? {
            if let Some(v) = v {
                item.insert(k.into(), v);
            }
        }
        match self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(pk)")
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if is_condition_failure(&e) => Err(StoreError::AlreadyExists),
            Err(e) => Err(backend(e)),
        }
    }

    async fn get(&self, id: &JobId) -> Result<Option<Job>, StoreError> {
        self.get_item(id, s(JOB_SK))
            .await?
            .map(|item| job_from(&item))
            .transpose()
    }

    /// Eventually consistent (half a read unit), and a running job is answered again for
    /// [`PEEK_REUSE`] without a read: every chunk of an export starts with this look, and the
    /// job's item takes 3,000 read units a second at most.
    async fn peek(&self, id: &JobId) -> Result<Option<Job>, StoreError> {
        let mut peeked = self.peeked.lock().await;
        peeked.retain(|(at, _)| at.elapsed() < PEEK_REUSE);
        if let Some((_, job)) = peeked.iter().find(|(_, j)| j.id == *id) {
            return Ok(Some(job.clone()));
        }
        let job = self
            .read_item(id, s(JOB_SK), false)
            .await?
            .map(|item| job_from(&item))
            .transpose()?;
        if let Some(job) = job.as_ref().filter(|j| j.state == JobState::Running) {
            if peeked.len() >= PEEKED_JOBS {
                peeked.remove(0);
            }
            peeked.push((Instant::now(), job.clone()));
        }
        Ok(job)
    }

    /// With a group, its item decides (one read unit on an item of its own); without one, or
    /// for a group item that is not there (a job planned before groups were written with the
    /// chunks, or a job deleted), the job's state.
    async fn stopped(&self, id: &JobId, group: Option<CountGroup>) -> Result<bool, StoreError> {
        if let Some(g) = group {
            let item = self
                .client
                .get_item()
                .table_name(&self.table)
                .key("pk", pk(id))
                .key("sk", counter_sk(&g.counter()))
                .projection_expression("#n, #stopped")
                .expression_attribute_names("#n", "n")
                .expression_attribute_names("#stopped", "stopped")
                .consistent_read(true)
                .send()
                .await
                .map_err(backend)?
                .item
                .filter(|i| !i.is_empty());
            if let Some(item) = item {
                return Ok(item
                    .get("stopped")
                    .and_then(|v| v.as_bool().ok())
                    .copied()
                    .unwrap_or(false));
            }
        }
        Ok(JobState::is_stopped(self.state(id).await?))
    }

    async fn mark_groups_stopped(&self, id: &JobId, groups: u32) -> Result<(), StoreError> {
        // Marks outlive the job's retention; the sweep deletes them with the job, the TTL any
        // that a mark racing a deletion left.
        let ttl = Utc::now().timestamp() + USAGE_TTL_SECS;
        let writes = (0..groups).map(|g| {
            self.client
                .update_item()
                .table_name(&self.table)
                .key("pk", pk(id))
                .key("sk", counter_sk(&CountGroup::counter_of(g)))
                .update_expression("SET #stopped = :t, #ttl = :ttl")
                .expression_attribute_names("#stopped", "stopped")
                .expression_attribute_names("#ttl", "ttl")
                .expression_attribute_values(":t", AttributeValue::Bool(true))
                .expression_attribute_values(":ttl", n(ttl))
        });
        send_updates(writes.collect()).await
    }

    async fn state(&self, id: &JobId) -> Result<Option<JobState>, StoreError> {
        let item = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", pk(id))
            .key("sk", s(JOB_SK))
            .projection_expression("#s")
            .expression_attribute_names("#s", "state")
            .consistent_read(true)
            .send()
            .await
            .map_err(backend)?
            .item;
        item.map(|item| {
            get_s(&item, "state")
                .and_then(JobState::parse)
                .ok_or_else(|| StoreError::Backend("job item without a valid state".into()))
        })
        .transpose()
    }

    /// A consistent read per check is a billed round trip (of the chunk's group item, or of
    /// the job's item for a chunk outside any group): once a second. A cancel is seen a second
    /// later at most; what a chunk writes meanwhile is cleaned up.
    fn state_check_interval(&self) -> std::time::Duration {
        std::time::Duration::from_secs(1)
    }

    async fn update(&self, job: &Job, expected_version: u64) -> Result<(), StoreError> {
        let mut sets = Vec::new();
        let mut removes = Vec::new();
        let mut req = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", pk(&job.id))
            .key("sk", s(JOB_SK));
        for (i, (name, value)) in Self::job_attributes(job)?.into_iter().enumerate() {
            req = req.expression_attribute_names(format!("#a{i}"), name);
            match value {
                Some(v) => {
                    sets.push(format!("#a{i} = :v{i}"));
                    req = req.expression_attribute_values(format!(":v{i}"), v);
                }
                None => removes.push(format!("#a{i}")),
            }
        }
        let mut expr = format!("SET {}", sets.join(", "));
        if !removes.is_empty() {
            expr.push_str(&format!(" REMOVE {}", removes.join(", ")));
        }
        let result = req
            .update_expression(expr)
            .condition_expression("attribute_exists(pk) AND #version = :expected")
            .expression_attribute_names("#version", "version")
            .expression_attribute_values(":expected", n(expected_version))
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) if is_condition_failure(&e) => match self.get(&job.id).await? {
                Some(_) => Err(StoreError::Conflict),
                None => Err(StoreError::NotFound),
            },
            Err(e) => Err(backend(e)),
        }
    }

    async fn put_chunks(&self, id: &JobId, chunks: &[ChunkSpec]) -> Result<(), StoreError> {
        // SET of the spec only: a chunk that exists keeps its result (idempotent re-plan).
        let mut writes = Vec::with_capacity(chunks.len());
        // The count groups' items, so that a group's chunks find its item (and any stop mark
        // on it) from the start: `ADD 0` creates it, or leaves its count as it is.
        let groups: std::collections::BTreeSet<String> = chunks
            .iter()
            .filter_map(|c| c.group.map(|g| g.counter()))
            .collect();
        for counter in groups {
            let request = self
                .client
                .update_item()
                .table_name(&self.table)
                .key("pk", pk(id))
                .key("sk", counter_sk(&counter))
                .update_expression("ADD #n :zero")
                .expression_attribute_names("#n", "n")
                .expression_attribute_values(":zero", n(0));
            writes.push(request);
        }
        for c in chunks {
            let spec = serde_json::to_string(c).map_err(backend)?;
            let request = self
                .client
                .update_item()
                .table_name(&self.table)
                .key("pk", pk(id))
                .key("sk", chunk_sk(c.index))
                .update_expression("SET spec = :spec")
                .expression_attribute_values(":spec", s(spec));
            writes.push(request);
        }
        send_updates(writes).await
    }

    async fn chunk(&self, id: &JobId, index: u32) -> Result<Option<ChunkRecord>, StoreError> {
        self.get_item(id, chunk_sk(index))
            .await?
            .filter(|i| i.contains_key("spec"))
            .map(|item| chunk_from(&item))
            .transpose()
    }

    async fn chunks(&self, id: &JobId) -> Result<Vec<ChunkRecord>, StoreError> {
        let mut chunks: Vec<ChunkRecord> = self
            .query_all(id, "CHUNK#", false)
            .await?
            .iter()
            .filter(|i| i.contains_key("spec"))
            .map(chunk_from)
            .collect::<Result<_, _>>()?;
        chunks.sort_by_key(|c| c.spec.index);
        Ok(chunks)
    }

    async fn complete_chunk(
        &self,
        id: &JobId,
        index: u32,
        result: &ChunkResult,
        now: DateTime<Utc>,
        group: Option<CountGroup>,
    ) -> Result<ChunkCompletion, StoreError> {
        let body = serde_json::to_string(result).map_err(backend)?;
        let recorded = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", pk(id))
            .key("sk", chunk_sk(index))
            .update_expression("SET #result = :r")
            .condition_expression("attribute_exists(spec) AND attribute_not_exists(#result)")
            .expression_attribute_names("#result", "result")
            .expression_attribute_values(":r", s(body))
            .send()
            .await;
        match recorded {
            Ok(_) => {}
            Err(e) if is_condition_failure(&e) => {
                if self.chunk(id, index).await?.is_none() {
                    return Err(StoreError::NotFound);
                }
                let job = self.get(id).await?.ok_or(StoreError::NotFound)?;
                return Ok(ChunkCompletion {
                    first: false,
                    counted: true,
                    done: job.chunks_done,
                    total: job.chunks_total,
                    state: job.state,
                });
            }
            Err(e) => return Err(backend(e)),
        }
        // A crash right here (or between the group's count and the job's) leaves the chunk
        // recorded but not counted; finalize, the phase checks and the sweep count chunk
        // records, so the job still moves on.
        let counted = match group {
            None => 1,
            Some(g) => {
                let reached = self.reserve(id, &g.counter(), 1).await?;
                if reached < u64::from(g.size) {
                    return Ok(ChunkCompletion {
                        first: true,
                        counted: false,
                        done: 0,
                        total: 0,
                        state: JobState::Running,
                    });
                }
                g.size
            }
        };
        let updated = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", pk(id))
            .key("sk", s(JOB_SK))
            .update_expression("ADD chunks_done :counted SET updated_at = :now")
            .condition_expression("attribute_exists(pk)")
            .expression_attribute_values(":counted", n(counted))
            .expression_attribute_values(":now", n(now.timestamp_millis()))
            .return_values(ReturnValue::AllNew)
            .send()
            .await
            .map_err(|e| {
                if is_condition_failure(&e) {
                    StoreError::NotFound
                } else {
                    backend(e)
                }
            })?;
        let item = updated.attributes.unwrap_or_default();
        Ok(ChunkCompletion {
            first: true,
            counted: true,
            done: u32::try_from(get_n(&item, "chunks_done")?).map_err(backend)?,
            total: u32::try_from(get_n(&item, "chunks_total")?).map_err(backend)?,
            // The item's `state` attribute, written with every doc: no need to parse the doc.
            state: get_s(&item, "state")
                .and_then(JobState::parse)
                .ok_or_else(|| StoreError::Backend("job item without a valid state".into()))?,
        })
    }

    async fn reserve(&self, id: &JobId, counter: &str, count: u32) -> Result<u64, StoreError> {
        let out = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", pk(id))
            .key("sk", counter_sk(counter))
            .update_expression("ADD #n :n")
            .expression_attribute_names("#n", "n")
            .expression_attribute_values(":n", n(count))
            .return_values(ReturnValue::UpdatedNew)
            .send()
            .await
            .map_err(backend)?;
        let last = get_n(&out.attributes.unwrap_or_default(), "n")?;
        Ok(last + 1 - u64::from(count))
    }

    async fn set_published(
        &self,
        id: &JobId,
        index: u32,
        files: &[OutputFile],
    ) -> Result<Vec<OutputFile>, StoreError> {
        let body = serde_json::to_string(files).map_err(backend)?;
        let r = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", pk(id))
            .key("sk", chunk_sk(index))
            .update_expression("SET published = :p")
            .condition_expression("attribute_exists(spec) AND attribute_not_exists(published)")
            .expression_attribute_values(":p", s(body))
            .send()
            .await;
        match r {
            Ok(_) => Ok(files.to_vec()),
            Err(e) if is_condition_failure(&e) => self
                .chunk(id, index)
                .await?
                .ok_or(StoreError::NotFound)?
                .published
                .ok_or_else(|| StoreError::Backend("published names vanished".into())),
            Err(e) => Err(backend(e)),
        }
    }

    async fn mark_renamed(&self, id: &JobId, index: u32) -> Result<(), StoreError> {
        match self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", pk(id))
            .key("sk", chunk_sk(index))
            .update_expression("SET renamed = :t")
            .condition_expression("attribute_exists(spec)")
            .expression_attribute_values(":t", AttributeValue::Bool(true))
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if is_condition_failure(&e) => Err(StoreError::NotFound),
            Err(e) => Err(backend(e)),
        }
    }

    async fn heartbeat(&self, id: &JobId, now: DateTime<Utc>) -> Result<(), StoreError> {
        match self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", pk(id))
            .key("sk", s(JOB_SK))
            .update_expression("SET updated_at = :now")
            .condition_expression("attribute_exists(pk) AND updated_at < :now")
            .expression_attribute_values(":now", n(now.timestamp_millis()))
            .send()
            .await
        {
            // Already fresher, or gone: nothing to record.
            Ok(_) => Ok(()),
            Err(e) if is_condition_failure(&e) => Ok(()),
            Err(e) => Err(backend(e)),
        }
    }

    async fn put_outputs(&self, id: &JobId, files: &[OutputFile]) -> Result<(), StoreError> {
        let mut requests = Vec::new();
        for old in self.query_all(id, "OUT#", true).await? {
            requests.push(
                WriteRequest::builder()
                    .delete_request(
                        DeleteRequest::builder()
                            .set_key(Some(old))
                            .build()
                            .map_err(backend)?,
                    )
                    .build(),
            );
        }
        self.batch_write(requests).await?;
        let mut requests = Vec::new();
        for (i, f) in files.iter().enumerate() {
            let mut item: Item = HashMap::new();
            item.insert("pk".into(), pk(id));
            item.insert("sk".into(), s(format!("OUT#{i:010}")));
            item.insert("file".into(), s(serde_json::to_string(f).map_err(backend)?));
            requests.push(
                WriteRequest::builder()
                    .put_request(
                        PutRequest::builder()
                            .set_item(Some(item))
                            .build()
                            .map_err(backend)?,
                    )
                    .build(),
            );
        }
        self.batch_write(requests).await
    }

    async fn outputs(&self, id: &JobId) -> Result<Vec<OutputFile>, StoreError> {
        let mut items = self.query_all(id, "OUT#", false).await?;
        items.sort_by(|a, b| get_s(a, "sk").cmp(&get_s(b, "sk")));
        items
            .iter()
            .map(|i| {
                json(i, "file")?
                    .ok_or_else(|| StoreError::Backend("output item without file".into()))
            })
            .collect()
    }

    async fn stalled(&self, before: DateTime<Utc>) -> Result<Vec<Job>, StoreError> {
        self.query_index(
            ACTIVE_INDEX,
            "active = :one AND updated_at < :before",
            vec![(":one", s("1")), (":before", n(before.timestamp_millis()))],
        )
        .await
    }

    async fn expired(&self, now: DateTime<Utc>) -> Result<Vec<Job>, StoreError> {
        self.query_index(
            EXPIRY_INDEX,
            "expiry_bucket = :b AND expires_at < :now",
            vec![(":b", s("jobs")), (":now", n(now.timestamp_millis()))],
        )
        .await
    }

    async fn delete(&self, id: &JobId) -> Result<(), StoreError> {
        let items = self.query_all(id, "", true).await?;
        let mut requests = Vec::new();
        for key in items {
            requests.push(
                WriteRequest::builder()
                    .delete_request(
                        DeleteRequest::builder()
                            .set_key(Some(key))
                            .build()
                            .map_err(backend)?,
                    )
                    .build(),
            );
        }
        self.batch_write(requests).await
    }

    async fn record_usage(&self, id: &JobId, key: &str, usage: &Usage) -> Result<(), StoreError> {
        let mut item: Item = HashMap::new();
        item.insert("pk".into(), pk(id));
        item.insert("sk".into(), s(format!("USAGE#{key}")));
        item.insert(
            "doc".into(),
            s(serde_json::to_string(usage).map_err(backend)?),
        );
        // Gone with the job's record, a day after it expires (as the job item).
        item.insert("ttl".into(), n(Utc::now().timestamp() + USAGE_TTL_SECS));
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .send()
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn usage(&self, id: &JobId) -> Result<Usage, StoreError> {
        let mut total = Usage::default();
        for item in self.query_all(id, "USAGE#", false).await? {
            if let Some(part) = json::<Usage>(&item, "doc")? {
                total.add(&part);
            }
        }
        Ok(total)
    }

    async fn schedule(&self, name: &str) -> Result<Option<ScheduleState>, StoreError> {
        let item = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(SCHEDULES_PK))
            .key("sk", s(format!("SCHEDULE#{name}")))
            .consistent_read(true)
            .send()
            .await
            .map_err(backend)?
            .item;
        item.map(|i| {
            json::<ScheduleState>(&i, "doc")?
                .ok_or_else(|| backend(std::io::Error::other("schedule item without doc")))
        })
        .transpose()
    }

    async fn put_schedule(&self, state: &ScheduleState, expected: u64) -> Result<(), StoreError> {
        let mut next = state.clone();
        next.version = expected + 1;
        let doc = serde_json::to_string(&next).map_err(backend)?;
        let mut item: Item = HashMap::new();
        item.insert("pk".into(), s(SCHEDULES_PK));
        item.insert("sk".into(), s(format!("SCHEDULE#{}", state.name)));
        item.insert("version".into(), n(next.version));
        item.insert("doc".into(), s(doc));
        let req = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item));
        let req = if expected == 0 {
            req.condition_expression("attribute_not_exists(pk)")
        } else {
            req.condition_expression("#version = :expected")
                .expression_attribute_names("#version", "version")
                .expression_attribute_values(":expected", n(expected))
        };
        match req.send().await {
            Ok(_) => Ok(()),
            Err(e) if is_condition_failure(&e) => Err(StoreError::Conflict),
            Err(e) => Err(backend(e)),
        }
    }

    async fn schedules(&self) -> Result<Vec<ScheduleState>, StoreError> {
        let mut out = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let page = self
                .client
                .query()
                .table_name(&self.table)
                .consistent_read(true)
                .key_condition_expression("pk = :pk")
                .expression_attribute_values(":pk", s(SCHEDULES_PK))
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(backend)?;
            for item in page.items.unwrap_or_default() {
                if let Some(st) = json::<ScheduleState>(&item, "doc")? {
                    out.push(st);
                }
            }
            match page.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => return Ok(out),
            }
        }
    }
}
