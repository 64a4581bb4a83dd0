//! Scheduled, incremental exports. A schedule is a named kick-off (level, parameters,
//! exactly as a client sends them) with a cadence and an owner. Each tick starts one run: the
//! first exports everything its request selects; each later one exports what changed since
//! the `transactionTime` of the schedule's last *completed* run (the IG: a manifest's
//! `transactionTime` covers everything up to that instant), so a failed or cancelled run
//! leaves its gap to the next. A tick that finds the previous run still active starts
//! nothing and says so. The cadence is the host's: EventBridge Scheduler on AWS, the local
//! server's own timer (`fhir-export serve --schedules FILE`); the tick is the same code.

mod state;

use serde::{Deserialize, Serialize};

pub use state::{LastRun, ScheduleState};

use crate::http::{ApiError, Caller, KickoffState};
use crate::model::{JobId, LogicalId};
use crate::ports::{Event, EventSink, StoreError};
use crate::request::{ExportLevel, KickoffInput, Method};

/// A schedule's definition: what `--schedules FILE` lists, and what an EventBridge Scheduler
/// schedule hands the worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleDef {
    /// Letters, digits, `-`, `_` and `.`; at most 64.
    pub name: String,
    /// The kick-off, relative to the FHIR base: `/$export`, `/Patient/$export` or
    /// `/Group/<id>/$export`.
    #[serde(default = "system_export")]
    pub export: String,
    /// Its parameters, as a kick-off's query string (`_type=Patient,Observation&...`); no
    /// `_since`: the chain sets it.
    #[serde(default)]
    pub query: String,
    /// `Prefer: handling=lenient` for its runs.
    #[serde(default)]
    pub lenient: bool,
    /// Cadence, on the local server: a cron expression (5 fields, or 6 with seconds first)...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron: Option<String>,
    /// ...or a rate: `30 seconds`, `5 minutes`, `1 hour`, `2 days`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<String>,
    /// Time zone of the cron expression (IANA name; default UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    /// The client the runs belong to (its `client_id`; `anonymous` on a server without
    /// authentication): only it sees the runs and the schedule.
    #[serde(default = "anonymous")]
    pub owner: String,
    /// The scopes the runs have, as a token's `scope` (default `system/*.read`).
    #[serde(default = "all_types")]
    pub scope: String,
}

fn system_export() -> String {
    "/$export".into()
}

fn anonymous() -> String {
    "anonymous".into()
}

fn all_types() -> String {
    "system/*.read".into()
}

/// Why a definition is not usable.
#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    #[error("schedule `{name}`: {problem}")]
    Invalid { name: String, problem: String },
    #[error("schedule `{name}`: {source}")]
    Kickoff {
        name: String,
        #[source]
        source: ApiError,
    },
    #[error("schedule `{name}`: the job store failed")]
    Store {
        name: String,
        #[source]
        source: StoreError,
    },
}

impl ScheduleDef {
    fn invalid(&self, problem: impl Into<String>) -> ScheduleError {
        ScheduleError::Invalid {
            name: self.name.clone(),
            problem: problem.into(),
        }
    }

    /// The level its `export` path names.
    pub fn level(&self) -> Result<ExportLevel, ScheduleError> {
        let path = self.export.trim_end_matches('/');
        match path {
            "/$export" | "$export" => Ok(ExportLevel::System),
            "/Patient/$export" | "Patient/$export" => Ok(ExportLevel::Patient),
            p => {
                let id = p
                    .trim_start_matches('/')
                    .strip_prefix("Group/")
                    .and_then(|r| r.strip_suffix("/$export"))
                    .ok_or_else(|| {
                        self.invalid(format!(
                            "export `{p}` is not /$export, /Patient/$export or /Group/<id>/$export"
                        ))
                    })?;
                LogicalId::parse(id)
                    .map(ExportLevel::Group)
                    .map_err(|_| self.invalid(format!("`{id}` is not a Group id")))
            }
        }
    }

    /// Checks what can be checked without the source: the name, the path, and that the query
    /// does not set `_since`. (The cadence is the host's to check: the local server parses
    /// it; on AWS it is EventBridge Scheduler's, and a definition arrives without one.)
    pub fn check(&self) -> Result<(), ScheduleError> {
        if self.name.is_empty()
            || self.name.len() > 64
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(self.invalid("a name is 1 to 64 letters, digits, `-`, `_` or `.`"));
        }
        if self.cron.is_some() && self.rate.is_some() {
            return Err(self.invalid("give one of `cron` and `rate`, not both"));
        }
        self.level()?;
        if url::form_urlencoded::parse(self.query.as_bytes()).any(|(k, _)| k == "_since") {
            return Err(self.invalid(
                "the query may not set `_since`: each run exports what changed since the last completed one",
            ));
        }
        Ok(())
    }

    /// Checks the request as a kick-off would (parameters, their values, what the level
    /// allows), without the source: what a host can refuse before the first tick.
    pub fn check_request(&self, caps: &crate::request::Capabilities) -> Result<(), ScheduleError> {
        self.check()?;
        let query = self.query_since(None);
        crate::request::parse_kickoff(&self.kickoff_input(self.level()?, &query, ""), caps)
            .map(|_| ())
            .map_err(|e| self.invalid(e.to_string()))
    }

    /// The kick-off a run makes: `GET` of `query` at `level`, as a client would send it.
    fn kickoff_input<'a>(
        &self,
        level: ExportLevel,
        query: &'a str,
        base_url: &str,
    ) -> KickoffInput<'a> {
        KickoffInput {
            url: format!("{base_url}{}", crate::http::level_path(&level)),
            level,
            method: Method::Get,
            query: (!query.is_empty()).then_some(query),
            body: &[],
            content_type: None,
            accept: vec!["application/fhir+json"],
            prefer: if self.lenient {
                vec!["respond-async, handling=lenient"]
            } else {
                vec!["respond-async"]
            },
        }
    }

    /// Who the runs belong to on a host whose tokens come from `issuer` (none: a host
    /// without authentication): `<issuer>#<owner>` with the definition's scopes, or the
    /// anonymous owner.
    pub fn caller(&self, issuer: Option<&str>) -> Caller {
        let grant = crate::auth::Grant::from_scopes(&self.scope);
        match issuer {
            Some(iss) if self.owner != "anonymous" => Caller {
                grant,
                ..Caller::client(iss, &self.owner, "")
            },
            _ => Caller {
                grant,
                ..Caller::anonymous()
            },
        }
    }

    /// The kick-off of a run exporting changes since `since` (everything when `None`).
    fn query_since(&self, since: Option<chrono::DateTime<chrono::Utc>>) -> String {
        let mut q = self.query.trim_start_matches('?').to_owned();
        if let Some(t) = since {
            if !q.is_empty() {
                q.push('&');
            }
            q.push_str("_since=");
            q.push_str(
                &url::form_urlencoded::byte_serialize(
                    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
                        .as_bytes(),
                )
                .collect::<String>(),
            );
        }
        q
    }
}

/// What a tick did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TickOutcome {
    /// A run started; `since` is what it exports changes after.
    Started {
        job: JobId,
        since: Option<chrono::DateTime<chrono::Utc>>,
    },
    /// The previous run is still active: nothing started.
    StillRunning { job: JobId },
}

/// Compare-and-set attempts before a tick gives up (each lost one means another invocation
/// moved the schedule, and the next read sees its run).
const CAS_ATTEMPTS: u32 = 5;

/// One tick of `def`, run as `caller`: settles the run in flight, and starts the next one
/// unless it is still active.
pub async fn tick(
    state: &KickoffState,
    events: &dyn EventSink,
    def: &ScheduleDef,
    caller: &Caller,
) -> Result<TickOutcome, ScheduleError> {
    def.check()?;
    let level = def.level()?;
    let store = |source| ScheduleError::Store {
        name: def.name.clone(),
        source,
    };
    let definition = serde_json::to_value(def).unwrap_or_default();
    for _ in 0..CAS_ATTEMPTS {
        let now = chrono::Utc::now();
        let mut st = state
            .jobs
            .schedule(&def.name)
            .await
            .map_err(store)?
            .unwrap_or_else(|| ScheduleState::new(&def.name, &caller.id, definition.clone()));
        let expected = st.version;
        if let Some(running) = st.in_flight.clone() {
            match state.jobs.get(&running).await.map_err(store)? {
                Some(job) if job.state.is_active() => {
                    tracing::warn!(schedule = %def.name, job_id = %running, "the previous run is still active: this tick starts nothing");
                    let event = Event::run_skipped(
                        &def.name,
                        running.as_str(),
                        &state.settings.status_url(&running),
                        now,
                    );
                    // Saying so must not fail the tick.
                    if let Err(e) = events.publish(&event).await {
                        tracing::error!(schedule = %def.name, error = %crate::error_chain(&e), "the skipped tick could not be announced");
                    }
                    return Ok(TickOutcome::StillRunning { job: running });
                }
                Some(job) if job.state == crate::job::JobState::Completed => {
                    st.last_completed = Some(LastRun {
                        job: job.id.clone(),
                        transaction_time: job.transaction_time,
                    });
                }
                // Failed, cancelled or gone: the chain does not move; the next run covers the
                // gap.
                _ => {}
            }
            st.in_flight = None;
        }
        let since = st.last_completed.as_ref().map(|l| l.transaction_time);
        let query = def.query_since(since);
        let input = def.kickoff_input(level.clone(), &query, &state.settings.public_base_url);
        let kickoff = |source| ScheduleError::Kickoff {
            name: def.name.clone(),
            source,
        };
        let mut job = crate::http::prepare(state, caller, &input)
            .await
            .map_err(kickoff)?;
        job.schedule = Some(def.name.clone());
        // The job exists before the schedule names it, so that a tick that reads the name
        // always finds the job.
        state.jobs.create(&job).await.map_err(store)?;
        st.in_flight = Some(job.id.clone());
        st.last_tick = Some(now);
        st.definition = definition.clone();
        st.owner = caller.id.clone();
        match state.jobs.put_schedule(&st, expected).await {
            Ok(()) => {}
            Err(StoreError::Conflict) => {
                // Another invocation of this tick moved first: ours is withdrawn, and the
                // next read sees its run.
                if let Err(e) = state.jobs.delete(&job.id).await {
                    tracing::error!(job_id = %job.id, error = %crate::error_chain(&e), "could not withdraw a run that lost the race");
                }
                continue;
            }
            Err(e) => {
                let _ = state.jobs.delete(&job.id).await;
                return Err(store(e));
            }
        }
        crate::http::queue_plan(state, &job)
            .await
            .map_err(kickoff)?;
        tracing::info!(schedule = %def.name, job_id = %job.id, since = ?since, "scheduled run started");
        return Ok(TickOutcome::Started { job: job.id, since });
    }
    Err(store(StoreError::Conflict))
}
