//! `ResourceSource` over any FHIR R4 server's REST API (`https://server/fhir`): the ordinary
//! search API, paged by `next` links, as fast as the server pages.
//!
//! Planning pushes the export's criteria down as search parameters: `_since`/`_until` (and
//! `transactionTime`) become `_lastUpdated` bounds on whole seconds, each `_typeFilter` is a
//! search of its own (several for one type are read by the same chunk and merged without
//! duplicates), a patient batch is each compartment parameter's value, and `_elements` is sent
//! where nothing checked after it needs the elements it would drop. A large type is cut into
//! `_lastUpdated` windows, counted with `_summary=count` and halved until each is about one
//! chunk, so that many workers read it at once. The worker checks every criterion again on
//! what comes back ([`crate::ports::source`]).

mod auth;
mod capability;
mod client;
mod reader;
mod settings;
mod windows;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::{FutureExt, StreamExt, TryStreamExt};
use serde_json::Value;
use tokio::sync::Mutex;
use tokio::time::Instant;

pub use auth::Auth;
pub use settings::{UpstreamSettings, VARIABLES};

use self::capability::Capability;
use self::client::{Client, Request};
use self::reader::{Page, SearchPart, SearchReader};
use self::windows::Bounds;
use crate::compartment::{compartment_params, in_patient_compartment};
use crate::job::{ReadSpec, SourcePiece};
use crate::model::{LogicalId, ResourceType};
use crate::ports::{Applied, ReadCriteria, RecordReader, ResourceSource, SourceError, SourcePlan};
use crate::request::TypeFilter;

/// How long a CapabilityStatement read is reused: the plan step asks several times in a row.
const CAPABILITY_TTL: Duration = Duration::from_secs(60);
/// Searches longer than this go as `POST [type]/_search`.
const MAX_URL: usize = 1800;
/// Ids per `_id` search when checking which exist.
const IDS_PER_SEARCH: usize = 100;

pub struct FhirServerSource {
    client: Arc<Client>,
    settings: UpstreamSettings,
    capability: Mutex<Option<(Instant, Arc<Capability>)>>,
}

fn spec_err(e: serde_json::Error) -> SourceError {
    SourceError::Backend(Box::new(e))
}

impl FhirServerSource {
    /// A source reading `base` (`https://server/fhir`).
    pub fn new(base: &str, auth: Auth, settings: UpstreamSettings) -> Result<Self, SourceError> {
        Ok(FhirServerSource {
            client: Arc::new(Client::new(base, auth, settings.clone())?),
            settings,
            capability: Mutex::new(None),
        })
    }

    /// From the process environment (`FHIR_EXPORT_UPSTREAM_*`).
    pub fn from_lookup(
        base: &str,
        lookup: &impl Fn(&str) -> Option<String>,
    ) -> Result<Self, SourceError> {
        let settings =
            UpstreamSettings::from_lookup(lookup).map_err(|e| SourceError::Backend(e.into()))?;
        let auth = Auth::from_lookup(lookup).map_err(|e| SourceError::Backend(e.into()))?;
        Self::new(base, auth, settings)
    }

    async fn capability(&self) -> Result<Arc<Capability>, SourceError> {
        let mut cached = self.capability.lock().await;
        if let Some((at, cap)) = cached.as_ref()
            && at.elapsed() < CAPABILITY_TTL
        {
            return Ok(cap.clone());
        }
        let body = self.client.fetch(&Request::Get("metadata".into())).await?;
        let v: Value = serde_json::from_slice(&body).map_err(|e| SourceError::Protocol {
            url: format!("{}/metadata", self.client.base()),
            problem: format!("not JSON: {e}"),
        })?;
        let cap = Arc::new(Capability::parse(&v).ok_or_else(|| SourceError::Protocol {
            url: format!("{}/metadata", self.client.base()),
            problem: "not a CapabilityStatement with a server `rest` entry".into(),
        })?);
        *cached = Some((Instant::now(), cap.clone()));
        Ok(cap)
    }

    /// Every page of a search, handed to `f` one after the other.
    async fn each_page(
        &self,
        first: Request,
        mut f: impl FnMut(&Page<'_>) -> Result<(), SourceError>,
    ) -> Result<(), SourceError> {
        let mut request = Some(first);
        while let Some(r) = request.take() {
            let body = self.client.fetch(&r).await?;
            let url = match &r {
                Request::Get(p) => p.clone(),
                Request::Search { resource_type, .. } => format!("{resource_type}/_search"),
            };
            let page = Page::parse(&body, &url)?;
            f(&page)?;
            request = page.next().map(|n| Request::Get(n.to_owned()));
        }
        Ok(())
    }

    /// `Bundle.total` of a `_summary=count` search.
    async fn count(&self, t: ResourceType, params: &str) -> Result<u64, SourceError> {
        let path = format!("{t}?{}", join(params, "_summary=count"));
        let body = self.client.fetch(&Request::Get(path.clone())).await?;
        let page = Page::parse(&body, &path)?;
        page.total.ok_or_else(|| SourceError::Protocol {
            url: format!("{}/{path}", self.client.base()),
            problem: "a `_summary=count` search answered without `total`".into(),
        })
    }

    /// The earliest `meta.lastUpdated` among what `params` matches.
    async fn earliest(
        &self,
        t: ResourceType,
        params: &str,
    ) -> Result<Option<DateTime<Utc>>, SourceError> {
        let path = format!("{t}?{}", join(params, "_sort=_lastUpdated&_count=1"));
        let body = self.client.fetch(&Request::Get(path.clone())).await?;
        let page = Page::parse(&body, &path)?;
        Ok(page.matches().next().and_then(|raw| {
            crate::ndjson::read_head(raw.get().as_bytes())
                .ok()
                .and_then(|h| h.last_updated)
                .and_then(DateTime::from_timestamp_micros)
        }))
    }

    /// The searches (form-encoded parameters, bounds and paging left out) that select what
    /// `criteria` asks of `t`: one per `_typeFilter` of the type, or one without.
    fn filter_queries(t: ResourceType, filters: &[TypeFilter]) -> Vec<String> {
        let mine: Vec<&TypeFilter> = filters.iter().filter(|f| f.resource_type == t).collect();
        if mine.is_empty() {
            return vec![String::new()];
        }
        mine.into_iter()
            .map(|f| {
                let mut form = url::form_urlencoded::Serializer::new(String::new());
                for p in &f.params {
                    let name = match &p.modifier {
                        Some(m) => format!("{}:{m}", p.name),
                        None => p.name.clone(),
                    };
                    form.append_pair(&name, &p.value);
                }
                form.finish()
            })
            .collect()
    }

    /// Whether the server lists every parameter the type's `_typeFilter`s use: if not, the
    /// type is read whole and the worker filters (a server ignores an unknown parameter,
    /// which would widen the search, or refuses it, which would fail the export).
    fn filters_supported(cap: &Capability, t: ResourceType, filters: &[TypeFilter]) -> bool {
        filters
            .iter()
            .filter(|f| f.resource_type == t)
            .all(|f| f.params.iter().all(|p| cap.supports_param(t, &p.name)))
    }

    /// `_elements` for `t`, when it can be pushed down: the server takes it, and nothing the
    /// worker checks afterwards (a `_typeFilter`, the compartment) needs the elements it
    /// drops.
    fn elements_param(
        cap: &Capability,
        t: ResourceType,
        criteria: &ReadCriteria<'_>,
    ) -> Option<String> {
        if criteria.elements.is_empty()
            || criteria.patients.is_some()
            || criteria.type_filters.iter().any(|f| f.resource_type == t)
            || !cap.supports_param(t, "_elements")
        {
            return None;
        }
        let names: Vec<&str> = criteria
            .elements
            .iter()
            .filter(|e| e.resource_type.is_none_or(|rt| rt == t))
            .map(|e| e.element.as_str())
            .collect();
        if names.is_empty() {
            return None;
        }
        // `meta` keeps `lastUpdated`, which the worker checks again.
        let mut list = names.join(",");
        list.push_str(",meta");
        Some(
            url::form_urlencoded::Serializer::new(String::new())
                .append_pair("_elements", &list)
                .finish(),
        )
    }

    fn part(&self, t: ResourceType, params: String) -> SearchPart {
        let params = join(
            &params,
            &format!("_count={}&_sort=_lastUpdated", self.settings.page_size),
        );
        let post = t.as_str().len() + params.len() + self.client.base().len() + 2 > MAX_URL;
        SearchPart {
            resource_type: t.as_str().to_owned(),
            params,
            post,
            history: false,
        }
    }

    /// Pieces of a type at system level (or a type whose compartment cannot be searched):
    /// `_lastUpdated` windows of about one chunk each.
    async fn plan_windows(
        &self,
        t: ResourceType,
        queries: &[String],
        extra: Option<&str>,
        (bounds, total): (Bounds, u64),
        per_chunk: u64,
        applied: &mut Applied,
    ) -> Result<Vec<SourcePiece>, SourceError> {
        let leaves = windows::cut(self, t, queries, (bounds, total), per_chunk).await?;
        applied.time_bounds = true;
        let mut pieces = Vec::new();
        for (window, count) in leaves {
            let parts: Vec<SearchPart> = queries
                .iter()
                .map(|q| {
                    let mut params = join(q, &window.read_params());
                    if let Some(e) = extra {
                        params = join(&params, e);
                    }
                    self.part(t, params)
                })
                .collect();
            pieces.push(SourcePiece {
                resource_type: t,
                read: ReadSpec::of(&parts).map_err(spec_err)?,
                bytes: count.saturating_mul(self.settings.resource_bytes),
                owners: None,
            });
        }
        Ok(pieces)
    }

    /// Pieces of a compartment type at Patient or Group level: one per batch of patients,
    /// each searching every compartment parameter of the type with the whole batch.
    fn plan_batches(
        &self,
        t: ResourceType,
        queries: &[String],
        params: &[&str],
        patients: &[String],
        (bounds, total): (Bounds, u64),
        all_patients: u64,
    ) -> Result<Vec<SourcePiece>, SourceError> {
        let mut pieces = Vec::new();
        for batch in patients.chunks(self.settings.patients_per_chunk.max(1)) {
            let mut parts = Vec::new();
            for q in queries {
                for param in params {
                    let value = if *param == "_id" {
                        batch.join(",")
                    } else {
                        batch
                            .iter()
                            .map(|id| format!("Patient/{id}"))
                            .collect::<Vec<_>>()
                            .join(",")
                    };
                    let search = url::form_urlencoded::Serializer::new(String::new())
                        .append_pair(param, &value)
                        .finish();
                    parts.push(self.part(t, join(&join(q, &bounds.read_params()), &search)));
                }
            }
            // The type's resources spread over the server's patients, as a guess.
            let share = total.saturating_mul(batch.len() as u64) / all_patients.max(1);
            pieces.push(SourcePiece {
                resource_type: t,
                read: ReadSpec::of(&parts).map_err(spec_err)?,
                bytes: share.max(1).saturating_mul(self.settings.resource_bytes),
                owners: Some(batch.to_vec()),
            });
        }
        Ok(pieces)
    }
}

/// `a&b`, either possibly empty.
fn join(a: &str, b: &str) -> String {
    match (a.is_empty(), b.is_empty()) {
        (true, _) => b.to_owned(),
        (_, true) => a.to_owned(),
        _ => format!("{a}&{b}"),
    }
}

#[async_trait]
impl ResourceSource for FhirServerSource {
    async fn plan(&self, criteria: &ReadCriteria<'_>) -> Result<SourcePlan, SourceError> {
        if criteria.types.is_empty() {
            return Ok(SourcePlan::default());
        }
        let cap = self.capability().await?;
        let bounds = Bounds::of(criteria);
        let per_chunk = (criteria.chunk_bytes / self.settings.resource_bytes).max(1);
        let mut plan = SourcePlan::default();
        let all_patients = match criteria.patients {
            Some(_) => self.count(ResourceType::PATIENT, "").await?,
            None => 0,
        };
        // Every type's searches, and what they match in the bounds, counted a few at once:
        // an export of every type asks about 150 of them, most of them empty.
        let searched: Vec<(ResourceType, bool, Vec<String>)> = criteria
            .types
            .iter()
            .copied()
            .filter(|t| cap.types.contains_key(t))
            .map(|t| {
                let filtered = Self::filters_supported(&cap, t, criteria.type_filters);
                let queries = if filtered {
                    Self::filter_queries(t, criteria.type_filters)
                } else {
                    vec![String::new()]
                };
                (t, filtered, queries)
            })
            .collect();
        let counts: Vec<futures::future::BoxFuture<'_, Result<u64, SourceError>>> = searched
            .iter()
            .map(|(t, _, queries)| windows::count(self, *t, queries, bounds).boxed())
            .collect();
        let totals: Vec<u64> = futures::stream::iter(counts)
            .buffered(self.settings.concurrency.max(1))
            .try_collect()
            .await?;
        for ((t, filtered, queries), total) in searched.into_iter().zip(totals) {
            if total == 0 {
                continue;
            }
            let has_filters = criteria.type_filters.iter().any(|f| f.resource_type == t);
            plan.applied.type_filters |= filtered && has_filters;
            let compartment: Option<Vec<&str>> = match criteria.patients {
                Some(_) if in_patient_compartment(t) => {
                    let mut params: Vec<&str> = compartment_params(t)
                        .iter()
                        .map(|(name, _)| *name)
                        .collect();
                    if t == ResourceType::PATIENT {
                        params.insert(0, "_id");
                    }
                    params
                        .iter()
                        .all(|p| cap.supports_param(t, p))
                        .then_some(params)
                }
                _ => None,
            };
            match (criteria.patients, compartment) {
                (Some(patients), Some(params)) => {
                    plan.applied.patients = true;
                    plan.applied.time_bounds = true;
                    plan.pieces.extend(self.plan_batches(
                        t,
                        &queries,
                        &params,
                        patients,
                        (bounds, total),
                        all_patients,
                    )?);
                }
                (patients, _) => {
                    if patients.is_some() && in_patient_compartment(t) {
                        tracing::warn!(source = %self.describe(), resource_type = %t, "the upstream lists not every compartment parameter of this type: it is read whole and the worker selects the compartments");
                    }
                    let elements = Self::elements_param(&cap, t, criteria);
                    plan.applied.elements |= elements.is_some();
                    plan.pieces.extend(
                        self.plan_windows(
                            t,
                            &queries,
                            elements.as_deref(),
                            (bounds, total),
                            per_chunk,
                            &mut plan.applied,
                        )
                        .await?,
                    );
                }
            }
        }
        Ok(plan)
    }

    /// One `_history` read per type that changed since `_since`, of the types the server
    /// keeps history of: each is probed first (`_count=1`), so that the many types with no
    /// change cost no chunk; a warning names the types whose history the server does not
    /// keep, or will not give.
    async fn plan_deletions(&self, criteria: &ReadCriteria<'_>) -> Result<SourcePlan, SourceError> {
        let Some(since) = criteria.since else {
            return Ok(SourcePlan::default());
        };
        let cap = self.capability().await?;
        let mut plan = SourcePlan::default();
        let mut without = Vec::new();
        let since = since.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let form = |count: u32| {
            url::form_urlencoded::Serializer::new(String::new())
                .append_pair("_since", &since)
                .append_pair("_count", &count.to_string())
                .finish()
        };
        let mut kept = Vec::new();
        for &t in criteria.types {
            if !cap.types.contains_key(&t) {
                continue;
            }
            if cap.supports_history(t) {
                kept.push(t);
            } else {
                without.push(t.as_str());
            }
        }
        // Probed a few at once: `Some(changed)`, or `None` when the server refuses.
        let probes: Vec<futures::future::BoxFuture<'_, Result<Option<bool>, SourceError>>> = kept
            .iter()
            .map(|t| {
                let probe = Request::Get(format!("{t}/_history?{}", form(1)));
                async move {
                    match self.client.fetch(&probe).await {
                        Ok(body) => {
                            let page = Page::parse(&body, &format!("{t}/_history"))?;
                            Ok(Some(!page.entry.is_empty()))
                        }
                        // Listed, yet refused: said like a type without history.
                        Err(SourceError::Upstream {
                            status: 400 | 404 | 405 | 501,
                            ..
                        }) => Ok(None),
                        Err(e) => Err(e),
                    }
                }
                .boxed()
            })
            .collect();
        let probed: Vec<Option<bool>> = futures::stream::iter(probes)
            .buffered(self.settings.concurrency.max(1))
            .try_collect()
            .await?;
        for (t, changed) in kept.into_iter().zip(probed) {
            match changed {
                None => without.push(t.as_str()),
                Some(false) => {}
                Some(true) => {
                    let part = SearchPart {
                        resource_type: t.as_str().to_owned(),
                        params: form(self.settings.page_size),
                        post: false,
                        history: true,
                    };
                    plan.pieces.push(SourcePiece {
                        resource_type: ResourceType::BUNDLE,
                        read: ReadSpec::of(&[part]).map_err(spec_err)?,
                        bytes: self.settings.resource_bytes,
                        owners: None,
                    });
                }
            }
        }
        if !without.is_empty() {
            plan.warnings.push(format!(
                "the upstream server {} keeps no history of {}: resources of these types deleted since _since are not listed in `deleted`",
                self.client.base(),
                without.join(", ")
            ));
        }
        Ok(plan)
    }

    async fn patients(
        &self,
        _transaction_time: DateTime<Utc>,
    ) -> Result<Option<Vec<String>>, SourceError> {
        let mut ids = Vec::new();
        let first = Request::Get(format!(
            "Patient?_elements=id&_count={}",
            self.settings.page_size
        ));
        self.each_page(first, |page| {
            for raw in page.matches() {
                if let Ok(head) = crate::ndjson::read_head(raw.get().as_bytes()) {
                    ids.push(head.id.into_owned());
                }
            }
            Ok(())
        })
        .await?;
        ids.sort();
        ids.dedup();
        Ok(Some(ids))
    }

    async fn types(&self) -> Result<Vec<ResourceType>, SourceError> {
        Ok(self.capability().await?.types.keys().copied().collect())
    }

    async fn missing_types(
        &self,
        missing: &[ResourceType],
        strict: bool,
    ) -> Result<Vec<String>, SourceError> {
        let names: Vec<&str> = missing.iter().map(|t| t.as_str()).collect();
        let text = format!(
            "the upstream server {} does not support {}",
            self.client.base(),
            names.join(", ")
        );
        if strict {
            Err(SourceError::Unsupported(text))
        } else {
            Ok(vec![format!("{text}; not exported")])
        }
    }

    async fn open(&self, read: &ReadSpec) -> Result<Box<dyn RecordReader>, SourceError> {
        let parts: Vec<SearchPart> = read.parts_as().map_err(spec_err)?;
        Ok(Box::new(SearchReader::new(self.client.clone(), parts)))
    }

    async fn read(&self, t: ResourceType, id: &LogicalId) -> Result<Option<Value>, SourceError> {
        match self.client.fetch(&Request::Get(format!("{t}/{id}"))).await {
            Ok(body) => {
                serde_json::from_slice(&body)
                    .map(Some)
                    .map_err(|e| SourceError::Protocol {
                        url: format!("{}/{t}/{id}", self.client.base()),
                        problem: format!("not JSON: {e}"),
                    })
            }
            Err(SourceError::Upstream {
                status: 404 | 410, ..
            }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn existing(
        &self,
        t: ResourceType,
        ids: &[LogicalId],
    ) -> Result<HashSet<LogicalId>, SourceError> {
        let mut found = HashSet::new();
        for batch in ids.chunks(IDS_PER_SEARCH) {
            let list: Vec<&str> = batch.iter().map(LogicalId::as_str).collect();
            let form = url::form_urlencoded::Serializer::new(String::new())
                .append_pair("_id", &list.join(","))
                .append_pair("_elements", "id")
                .append_pair("_count", &IDS_PER_SEARCH.to_string())
                .finish();
            self.each_page(Request::Get(format!("{t}?{form}")), |page| {
                for raw in page.matches() {
                    if let Ok(head) = crate::ndjson::read_head(raw.get().as_bytes())
                        && let Ok(id) = LogicalId::parse(&head.id)
                        && batch.contains(&id)
                    {
                        found.insert(id);
                    }
                }
                Ok(())
            })
            .await?;
        }
        Ok(found)
    }

    fn describe(&self) -> String {
        format!("fhir:{}", self.client.base())
    }
}
