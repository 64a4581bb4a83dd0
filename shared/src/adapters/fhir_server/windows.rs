//! `_lastUpdated` windows on whole seconds (a millisecond bound makes every page of a
//! window far slower on some servers' stores), counted with `_summary=count` and halved until
//! each holds about one chunk. Every window ends by the second after `transactionTime` (and
//! `_until`), and starts at the second of `_since`: the worker drops what lies outside the
//! exact bounds, so resources changed after the kick-off wait for the next `_since`.
//!
//! A bound costs the server even on whole seconds (Helios pages 1.2x slower with one, 1.8x
//! with two), so a read leaves out what it can: the start of the first window (nothing is
//! older than the oldest resource), and the end of the last one when it is only the
//! transaction time's (what changed since is read and dropped by the worker; `_until` and the
//! cuts between windows are always sent).

use chrono::{DateTime, SecondsFormat, Utc};

use super::FhirServerSource;
use crate::model::ResourceType;
use crate::ports::{ReadCriteria, SourceError};

/// `[start, end)` in whole seconds since the epoch; `start` `None`: from the beginning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Bounds {
    pub start: Option<i64>,
    pub end: i64,
    /// Whether a read must send `end` (an `_until`, or a cut between windows), rather than
    /// leave the transaction time to the worker.
    pub end_needed: bool,
}

fn instant(secs: i64) -> String {
    DateTime::<Utc>::from_timestamp(secs, 0)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Secs, true)
}

impl Bounds {
    pub fn of(criteria: &ReadCriteria<'_>) -> Bounds {
        let last = match criteria.until {
            Some(u) if u < criteria.transaction_time => u,
            _ => criteria.transaction_time,
        };
        Bounds {
            start: criteria.since.map(|s| s.timestamp()),
            // The second holding the last instant wanted, whole.
            end: last.timestamp() + 1,
            end_needed: criteria
                .until
                .is_some_and(|u| u < criteria.transaction_time),
        }
    }

    /// The `_lastUpdated` parameters of a read, form-encoded: without an end that only the
    /// transaction time sets.
    pub fn read_params(&self) -> String {
        self.form(self.end_needed)
    }

    fn form(&self, end: bool) -> String {
        let mut form = url::form_urlencoded::Serializer::new(String::new());
        if let Some(s) = self.start {
            form.append_pair("_lastUpdated", &format!("ge{}", instant(s)));
        }
        if end {
            form.append_pair("_lastUpdated", &format!("lt{}", instant(self.end)));
        }
        form.finish()
    }
}

/// Counts what every query matches in `bounds`, together, as a read of them would: with
/// the bounds a read sends, each of which costs the server.
pub(crate) async fn count(
    source: &FhirServerSource,
    t: ResourceType,
    queries: &[String],
    bounds: Bounds,
) -> Result<u64, SourceError> {
    let mut total = 0;
    for q in queries {
        total += source
            .count(t, &super::join(q, &bounds.read_params()))
            .await?;
    }
    Ok(total)
}

/// The windows of `bounds` (where the queries match `total`) holding what they match, each
/// about `per_chunk` resources or one second, with their counts; empty when nothing matches.
pub(crate) async fn cut(
    source: &FhirServerSource,
    t: ResourceType,
    queries: &[String],
    (bounds, total): (Bounds, u64),
    per_chunk: u64,
) -> Result<Vec<(Bounds, u64)>, SourceError> {
    if total == 0 {
        return Ok(Vec::new());
    }
    if total <= per_chunk {
        return Ok(vec![(bounds, total)]);
    }
    let start = match bounds.start {
        Some(s) => s,
        None => {
            let mut earliest: Option<i64> = None;
            for q in queries {
                let e = source
                    .earliest(t, &super::join(q, &bounds.read_params()))
                    .await?
                    .map(|d| d.timestamp());
                earliest = match (earliest, e) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
            }
            match earliest {
                Some(e) => e,
                None => return Ok(vec![(bounds, total)]),
            }
        }
    };
    let mut leaves = Vec::new();
    // Depth first, earliest first, so windows come out in time order.
    let mut stack = vec![(start, bounds.end, total)];
    while let Some((a, b, n)) = stack.pop() {
        if n == 0 {
            continue;
        }
        if n <= per_chunk || b - a <= 1 {
            leaves.push((a, b, n));
            continue;
        }
        let m = a + (b - a) / 2;
        let left = count(
            source,
            t,
            queries,
            Bounds {
                // Nothing lies before the earliest resource: no start to send.
                start: if a == start && bounds.start.is_none() {
                    None
                } else {
                    Some(a)
                },
                end: m,
                end_needed: true,
            },
        )
        .await?;
        // What the server added meanwhile lies after `transactionTime`, outside `b`.
        let right = n.saturating_sub(left);
        stack.push((m, b, right));
        stack.push((a, m, left));
    }
    let last = leaves.len().saturating_sub(1);
    Ok(leaves
        .into_iter()
        .enumerate()
        .map(|(i, (a, b, n))| {
            let window = Bounds {
                // The first window keeps the request's own start: nothing lies before the
                // earliest resource, and a resource changed since moved after the end.
                start: if i == 0 { bounds.start } else { Some(a) },
                end: if i == last { bounds.end } else { b },
                end_needed: i != last || bounds.end_needed,
            };
            (window, n)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn bounds_are_whole_seconds_around_the_exact_ones() {
        let t = Utc.with_ymd_and_hms(2026, 12, 7, 10, 0, 5).unwrap()
            + chrono::Duration::milliseconds(250);
        let since = Utc.with_ymd_and_hms(2026, 12, 7, 9, 0, 0).unwrap()
            + chrono::Duration::milliseconds(900);
        let mut c = ReadCriteria::everything(&[], 1, t);
        c.since = Some(since);
        let b = Bounds::of(&c);
        assert_eq!(
            b.form(true),
            "_lastUpdated=ge2026-12-07T09%3A00%3A00Z&_lastUpdated=lt2026-12-07T10%3A00%3A06Z"
        );
        // A read leaves the transaction time's end to the worker; an `_until` it sends.
        assert_eq!(b.read_params(), "_lastUpdated=ge2026-12-07T09%3A00%3A00Z");
        // `_until` before the transaction time bounds the end; after it, it does not.
        c.until = Some(t - chrono::Duration::hours(1));
        assert_eq!(
            Bounds::of(&c).end,
            (t - chrono::Duration::hours(1)).timestamp() + 1
        );
        assert!(Bounds::of(&c).read_params().contains("_lastUpdated=lt"));
        c.until = Some(t + chrono::Duration::hours(1));
        assert_eq!(Bounds::of(&c).end, t.timestamp() + 1);
    }
}
