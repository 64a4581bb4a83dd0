//! `fhir-export serve --schedules FILE`: the local server's own timer for scheduled exports.
//! The file is JSON, `{"schedules": [<definition>, ...]}` (fields in
//! `shared::schedule::ScheduleDef`, `docs/scheduled-exports.md`); each definition is checked
//! at start (name, cadence, time zone, kick-off path and parameters) and then ticked by a task
//! of its own with the same `tick` the AWS worker runs.

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use shared::http::{KickoffState, ScheduleBook};
use shared::ports::EventSink;
use shared::schedule::{ScheduleDef, TickOutcome, tick};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::serve::ServeError;

/// When a schedule ticks.
#[derive(Debug, Clone)]
pub enum Cadence {
    Cron(Box<croner::Cron>, chrono_tz::Tz),
    Every(Duration),
}

impl Cadence {
    pub fn of(def: &ScheduleDef) -> Result<Cadence, String> {
        let tz = match &def.timezone {
            Some(name) => chrono_tz::Tz::from_str(name)
                .map_err(|_| format!("`{name}` is not an IANA time zone"))?,
            None => chrono_tz::Tz::UTC,
        };
        match (&def.cron, &def.rate) {
            (Some(expr), None) => croner::Cron::from_str(expr)
                .map(|c| Cadence::Cron(Box::new(c), tz))
                .map_err(|e| format!("cron `{expr}`: {e}")),
            (None, Some(rate)) => parse_rate(rate).map(Cadence::Every),
            _ => Err("give exactly one of `cron` and `rate`".into()),
        }
    }

    /// The first tick after `after`.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Cadence::Cron(cron, tz) => cron
                .find_next_occurrence(&after.with_timezone(tz), false)
                .ok()
                .map(|t| t.with_timezone(&Utc)),
            Cadence::Every(d) => chrono::Duration::from_std(*d).ok().map(|d| after + d),
        }
    }
}

/// `30 seconds`, `5 minutes`, `1 hour`, `2 days` (EventBridge's `rate(...)` body; the
/// `rate(...)` wrapper is accepted too).
fn parse_rate(rate: &str) -> Result<Duration, String> {
    let body = rate
        .trim()
        .strip_prefix("rate(")
        .and_then(|r| r.strip_suffix(')'))
        .unwrap_or(rate)
        .trim();
    let bad = || format!("rate `{rate}` is not `<n> seconds|minutes|hours|days`");
    let (n, unit) = body.split_once(char::is_whitespace).ok_or_else(bad)?;
    let n: u64 = n.trim().parse().map_err(|_| bad())?;
    let secs = match unit.trim().trim_end_matches('s') {
        "second" => 1,
        "minute" => 60,
        "hour" => 3600,
        "day" => 86_400,
        _ => return Err(bad()),
    };
    if n == 0 {
        return Err(bad());
    }
    Ok(Duration::from_secs(n * secs))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ScheduleFile {
    schedules: Vec<ScheduleDef>,
}

/// The definitions of a schedules file, each checked.
pub fn load(path: &Path) -> Result<Vec<(ScheduleDef, Cadence)>, ServeError> {
    let bad = |what: String| ServeError::Schedules(format!("{}: {what}", path.display()));
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let file: ScheduleFile = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let mut out: Vec<(ScheduleDef, Cadence)> = Vec::new();
    for def in file.schedules {
        def.check_request(&shared::request::Capabilities::CURRENT)
            .map_err(|e| bad(e.to_string()))?;
        if out.iter().any(|(d, _)| d.name == def.name) {
            return Err(bad(format!("schedule `{}` is defined twice", def.name)));
        }
        let cadence =
            Cadence::of(&def).map_err(|e| bad(format!("schedule `{}`: {e}", def.name)))?;
        out.push((def, cadence));
    }
    Ok(out)
}

/// The `_schedules` routes' view of the file.
pub fn book(defs: &[(ScheduleDef, Cadence)], issuer: Option<String>) -> ScheduleBook {
    let cadences: Vec<(String, Cadence)> = defs
        .iter()
        .map(|(d, c)| (d.name.clone(), c.clone()))
        .collect();
    ScheduleBook {
        definitions: defs.iter().map(|(d, _)| d.clone()).collect(),
        next_tick: Some(Arc::new(move |d: &ScheduleDef| {
            cadences
                .iter()
                .find(|(n, _)| *n == d.name)
                .and_then(|(_, c)| c.next_after(Utc::now()))
        })),
        owner_key: Some(Arc::new(move |d: &ScheduleDef| {
            d.caller(issuer.as_deref()).id
        })),
    }
}

/// One task per schedule, ticking until `shutdown`.
pub fn spawn(
    defs: Vec<(ScheduleDef, Cadence)>,
    kickoff: KickoffState,
    events: Arc<dyn EventSink>,
    issuer: Option<String>,
    shutdown: CancellationToken,
) -> Vec<JoinHandle<()>> {
    defs.into_iter()
        .map(|(def, cadence)| {
            let (kickoff, events, shutdown) = (kickoff.clone(), events.clone(), shutdown.clone());
            let caller = def.caller(issuer.as_deref());
            tokio::spawn(async move {
                let mut last = Utc::now();
                while let Some(next) = cadence.next_after(last) {
                    let wait = (next - Utc::now()).to_std().unwrap_or_default();
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(wait) => {}
                    }
                    last = next;
                    match tick(&kickoff, events.as_ref(), &def, &caller).await {
                        Ok(TickOutcome::Started { job, since }) => {
                            tracing::info!(schedule = %def.name, job_id = %job, since = ?since, "tick: run started")
                        }
                        Ok(TickOutcome::StillRunning { job }) => {
                            tracing::info!(schedule = %def.name, job_id = %job, "tick: previous run still active")
                        }
                        Err(e) => {
                            tracing::error!(schedule = %def.name, error = %shared::error_chain(&e), "tick failed")
                        }
                    }
                }
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def(cron: Option<&str>, rate: Option<&str>, tz: Option<&str>) -> ScheduleDef {
        serde_json::from_value(serde_json::json!({
            "name": "n", "cron": cron, "rate": rate, "timezone": tz,
        }))
        .expect("def")
    }

    #[test]
    fn cadences() {
        let t = DateTime::parse_from_rfc3339("2026-01-10T23:30:00Z")
            .expect("t")
            .with_timezone(&Utc);
        // 02:00 in Berlin (CET, UTC+1) is 01:00 UTC.
        let c = Cadence::of(&def(Some("0 2 * * *"), None, Some("Europe/Berlin"))).expect("cron");
        let next = c.next_after(t).expect("next");
        assert_eq!(next.to_rfc3339(), "2026-01-11T01:00:00+00:00");
        let c = Cadence::of(&def(Some("0 2 * * *"), None, None)).expect("cron");
        assert_eq!(
            c.next_after(t).expect("next").to_rfc3339(),
            "2026-01-11T02:00:00+00:00"
        );
        let c = Cadence::of(&def(Some("*/5 * * * * *"), None, None)).expect("seconds");
        assert_eq!(
            c.next_after(t).expect("next").to_rfc3339(),
            "2026-01-10T23:30:05+00:00"
        );
        let c = Cadence::of(&def(None, Some("rate(2 minutes)"), None)).expect("rate");
        assert_eq!(
            c.next_after(t).expect("next").to_rfc3339(),
            "2026-01-10T23:32:00+00:00"
        );
        assert!(Cadence::of(&def(None, Some("2 fortnights"), None)).is_err());
        assert!(Cadence::of(&def(Some("61 * * * *"), None, None)).is_err());
        assert!(Cadence::of(&def(Some("0 2 * * *"), None, Some("Mars/Olympus"))).is_err());
    }

    #[test]
    fn a_schedules_file_is_checked_whole_at_start() {
        let dir = tempfile::tempdir().expect("tmp");
        let write = |v: serde_json::Value| {
            let p = dir.path().join("s.json");
            std::fs::write(&p, v.to_string()).expect("write");
            p
        };
        let ok = write(serde_json::json!({"schedules": [
            {"name": "a", "query": "_type=Patient", "rate": "1 hour"},
            {"name": "b", "export": "/Group/g1/$export", "cron": "0 2 * * *", "timezone": "Europe/Berlin"}
        ]}));
        assert_eq!(load(&ok).expect("loads").len(), 2);
        for (bad, says) in [
            (
                serde_json::json!({"schedules": [{"name": "a", "query": "_type=Nope", "rate": "1 hour"}]}),
                "Nope",
            ),
            (
                serde_json::json!({"schedules": [{"name": "a", "query": "_since=2020-01-01", "rate": "1 hour"}]}),
                "_since",
            ),
            (
                serde_json::json!({"schedules": [{"name": "a", "rate": "1 hour"}, {"name": "a", "rate": "1 hour"}]}),
                "twice",
            ),
            (serde_json::json!({"schedules": [{"name": "a"}]}), "cron"),
            (
                serde_json::json!({"schedules": [{"name": "a b", "rate": "1 hour"}]}),
                "name",
            ),
            (
                serde_json::json!({"schedules": [{"name": "a", "export": "/Observation/$export", "rate": "1 hour"}]}),
                "/Observation",
            ),
            (
                serde_json::json!({"schedules": [{"name": "a", "rate": "1 hour", "colour": "red"}]}),
                "colour",
            ),
        ] {
            let e = load(&write(bad)).expect_err("refused").to_string();
            assert!(e.contains(says), "{says}: {e}");
        }
    }
}
