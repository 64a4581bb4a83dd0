//! Date search (R4 search §date): search values and resource values are both ranges given by
//! their precision, compared with the prefixes of the R4 table's range column.
//!
//! Choices the specification leaves to the implementation:
//! - A time without a zone (`2020-03-04T10:00`) and a date without a time are read as UTC.
//! - `ap` widens the search range on both sides by 10% of the gap between "now" (the time the
//!   filter is compiled, or the one given to `compile_at`) and the nearer end of the search
//!   range (no widening when now falls inside it), and matches targets that overlap the
//!   widened range.
//! - A Period with no start (end) is open below (above). A Timing spans from its earliest
//!   `event` or `repeat.boundsPeriod.start` to its latest `event` or `repeat.boundsPeriod.end`
//!   ("only the outer limits matter"); one with neither has no range and matches nothing.
//! - Resource values that do not parse are treated as absent values: they match no
//!   comparison (they still count as present for `:missing`).

use serde_json::Value;

use super::Prefix;
use crate::model::fhir_time::{
    days_from_civil, days_in_month, digits, expect, fraction, zone_offset_secs,
};

const DAY: i64 = 86_400 * 1_000_000;

/// Microseconds since the epoch, `[lo, hi)`; `i64::MIN` / `i64::MAX` for open ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Range {
    pub lo: i64,
    pub hi: i64,
}

/// One compiled date value, `[prefix]date`.
#[derive(Debug, Clone)]
pub(super) struct DateCmp {
    prefix: Prefix,
    search: Range,
    /// The search range widened for `ap`.
    approx: Range,
}

impl DateCmp {
    pub(super) fn parse(value: &str, now_micros: i64) -> Result<DateCmp, String> {
        let (prefix, rest) = Prefix::split(value)?;
        let search = parse_range(rest).ok_or_else(|| {
            format!("`{rest}` is not a FHIR date (YYYY, YYYY-MM, YYYY-MM-DD, or a date and time)")
        })?;
        let gap = if now_micros < search.lo {
            search.lo - now_micros
        } else if now_micros > search.hi {
            now_micros - search.hi
        } else {
            0
        };
        let widen = gap / 10;
        let approx = Range {
            lo: search.lo.saturating_sub(widen),
            hi: search.hi.saturating_add(widen),
        };
        Ok(DateCmp {
            prefix,
            search,
            approx,
        })
    }

    /// R4's range column: "the range of the search value" `s`, "the range of the target" `t`.
    pub(super) fn matches(&self, t: Range) -> bool {
        let s = self.search;
        let contains = s.lo <= t.lo && t.hi <= s.hi;
        let above = t.hi > s.hi; // the range above the search value intersects the target
        let below = t.lo < s.lo;
        match self.prefix {
            Prefix::Eq => contains,
            Prefix::Ne => !contains,
            Prefix::Gt => above,
            Prefix::Lt => below,
            Prefix::Ge => above || contains,
            Prefix::Le => below || contains,
            Prefix::Sa => t.lo >= s.hi,
            Prefix::Eb => t.hi <= s.lo,
            Prefix::Ap => t.lo < self.approx.hi && t.hi > self.approx.lo,
        }
    }
}

/// The range of a `date`, `dateTime` or `instant` value, or of a search value.
pub(super) fn parse_range(s: &str) -> Option<Range> {
    let b = s.as_bytes();
    let year = digits(b.get(0..4)?)?;
    if b.len() == 4 {
        return Some(Range {
            lo: day_micros(year, 1, 1),
            hi: day_micros(year + 1, 1, 1),
        });
    }
    expect(b, 4, b'-')?;
    let month = digits(b.get(5..7)?)?;
    if !(1..=12).contains(&month) {
        return None;
    }
    if b.len() == 7 {
        let (ny, nm) = if month == 12 {
            (year + 1, 1)
        } else {
            (year, month + 1)
        };
        return Some(Range {
            lo: day_micros(year, month, 1),
            hi: day_micros(ny, nm, 1),
        });
    }
    expect(b, 7, b'-')?;
    let day = digits(b.get(8..10)?)?;
    if day < 1 || day > days_in_month(year, month) {
        return None;
    }
    let midnight = day_micros(year, month, day);
    if b.len() == 10 {
        return Some(Range {
            lo: midnight,
            hi: midnight + DAY,
        });
    }
    expect(b, 10, b'T')?;
    let hour = digits(b.get(11..13)?)?;
    expect(b, 13, b':')?;
    let minute = digits(b.get(14..16)?)?;
    if hour > 23 || minute > 59 {
        return None;
    }
    let mut i = 16;
    let mut second = 0;
    let mut micros = 0i64;
    let mut width = 60 * 1_000_000i64;
    if b.get(i) == Some(&b':') {
        second = digits(b.get(17..19)?)?;
        if second > 60 {
            return None;
        }
        // A leap second is read as the last second of its minute.
        second = second.min(59);
        i = 19;
        width = 1_000_000;
        if b.get(i) == Some(&b'.') {
            let (m, counted, next) = fraction(b, i + 1)?;
            micros = m;
            width /= 10i64.pow(counted);
            i = next;
        }
    }
    let offset = match b.get(i) {
        None => 0,
        Some(b'Z') if i + 1 == b.len() => 0,
        Some(_) => zone_offset_secs(b, i)? * 1_000_000,
    };
    let lo = midnight + i64::from(hour * 3600 + minute * 60 + second) * 1_000_000 + micros - offset;
    Some(Range { lo, hi: lo + width })
}

/// The range a resource value of the given kind covers, if it has one.
pub(super) fn target_range(dt: super::Datatype, v: &Value) -> Option<Range> {
    use super::Datatype as D;
    match dt {
        D::DateTime => v.as_str().and_then(parse_range),
        D::Period => {
            let start = v.get("start").and_then(Value::as_str);
            let end = v.get("end").and_then(Value::as_str);
            if start.is_none() && end.is_none() {
                return None;
            }
            let lo = match start {
                Some(s) => parse_range(s)?.lo,
                None => i64::MIN,
            };
            let hi = match end {
                Some(e) => parse_range(e)?.hi,
                None => i64::MAX,
            };
            Some(Range { lo, hi })
        }
        D::Timing => {
            let mut span: Option<Range> = None;
            let mut add = |r: Range| {
                span = Some(match span {
                    None => r,
                    Some(s) => Range {
                        lo: s.lo.min(r.lo),
                        hi: s.hi.max(r.hi),
                    },
                });
            };
            match v.get("event") {
                Some(Value::Array(events)) => {
                    for e in events {
                        if let Some(r) = e.as_str().and_then(parse_range) {
                            add(r);
                        }
                    }
                }
                Some(Value::String(e)) => {
                    if let Some(r) = parse_range(e) {
                        add(r);
                    }
                }
                _ => {}
            }
            if let Some(bounds) = v.get("repeat").and_then(|r| r.get("boundsPeriod"))
                && let Some(r) = target_range(D::Period, bounds)
            {
                add(r);
            }
            span
        }
        _ => None,
    }
}

fn day_micros(year: u32, month: u32, day: u32) -> i64 {
    days_from_civil(i64::from(year), month, day) * DAY
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::fhir_time::instant_micros;

    fn at(s: &str) -> i64 {
        instant_micros(s.as_bytes()).unwrap_or_else(|| panic!("{s}"))
    }

    fn range(s: &str) -> Range {
        parse_range(s).unwrap_or_else(|| panic!("{s}"))
    }

    #[test]
    fn precision_gives_the_range() {
        assert_eq!(
            range("2020"),
            Range {
                lo: at("2020-01-01T00:00:00Z"),
                hi: at("2021-01-01T00:00:00Z")
            }
        );
        assert_eq!(
            range("2020-12"),
            Range {
                lo: at("2020-12-01T00:00:00Z"),
                hi: at("2021-01-01T00:00:00Z")
            }
        );
        assert_eq!(
            range("2020-02-29"),
            Range {
                lo: at("2020-02-29T00:00:00Z"),
                hi: at("2020-03-01T00:00:00Z")
            }
        );
        assert_eq!(
            range("2020-03-04T10:00"),
            Range {
                lo: at("2020-03-04T10:00:00Z"),
                hi: at("2020-03-04T10:01:00Z")
            }
        );
        assert_eq!(
            range("2020-03-04T10:00:05+02:00"),
            Range {
                lo: at("2020-03-04T08:00:05Z"),
                hi: at("2020-03-04T08:00:06Z")
            }
        );
        assert_eq!(
            range("2020-03-04T10:00:05.12Z"),
            Range {
                lo: at("2020-03-04T10:00:05.12Z"),
                hi: at("2020-03-04T10:00:05.13Z")
            }
        );
        assert_eq!(
            range("2020-03-04T10:00:05 02:00"),
            range("2020-03-04T10:00:05+02:00")
        );
    }

    #[test]
    fn rejects_malformed_dates() {
        for s in [
            "",
            "20",
            "2020-",
            "2020-13",
            "2020-02-30",
            "2021-02-29",
            "2020-1-01",
            "2020-01-01T",
            "2020-01-01T10",
            "2020-01-01T24:00",
            "2020-01-01T10:00:00.",
            "2020-01-01T10:00Zx",
            "2020-01-01T10:00:00+2:00",
            "yesterday",
            "2020-01-01 10:00",
        ] {
            assert_eq!(parse_range(s), None, "{s}");
        }
    }

    fn cmp(search: &str) -> DateCmp {
        DateCmp::parse(search, at("2025-01-01T00:00:00Z")).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn prefixes_follow_the_range_rules() {
        let ge = cmp("ge2020");
        assert!(!ge.matches(range("2019-12-31")));
        assert!(ge.matches(range("2020")));
        assert!(ge.matches(range("2020-06")));
        assert!(ge.matches(range("2021-03-01")));
        // A period that starts before 2020 and ends inside it is neither above nor inside.
        let spanning = Range {
            lo: range("2019-06-01").lo,
            hi: range("2020-03-01").hi,
        };
        assert!(!ge.matches(spanning));
        // One that reaches past the end of 2020 intersects the range above.
        let past = Range {
            lo: range("2019-06-01").lo,
            hi: range("2021-03-01").hi,
        };
        assert!(ge.matches(past));

        let eq = cmp("2020-03");
        assert!(eq.matches(range("2020-03-31T23:59:59Z")));
        assert!(!eq.matches(range("2020-04-01T00:00:00Z")));
        assert!(!eq.matches(range("2020"))); // a year is not inside a month
        assert!(cmp("ne2020-03").matches(range("2020")));
        assert!(!cmp("ne2020-03").matches(range("2020-03-02")));

        assert!(cmp("gt2020").matches(range("2021-01-01")));
        assert!(!cmp("gt2020").matches(range("2020-12-31")));
        assert!(cmp("lt2020").matches(range("2019-12-31")));
        assert!(!cmp("lt2020").matches(range("2020-01-01")));
        assert!(cmp("le2020").matches(range("2020-05")));
        assert!(!cmp("le2020").matches(range("2021")));
        assert!(cmp("sa2020").matches(range("2021-01-01")));
        assert!(!cmp("sa2020").matches(past));
        assert!(cmp("eb2020").matches(range("2019-12-31T23:59:59Z")));
        assert!(!cmp("eb2020").matches(spanning));
        let open_end = Range {
            lo: range("2019-06-01").lo,
            hi: i64::MAX,
        };
        assert!(cmp("gt2030").matches(open_end));
        assert!(!cmp("eq2020").matches(open_end));
        assert!(cmp("sa2018").matches(open_end));
        assert!(!cmp("sa2019").matches(open_end));
        assert!(cmp("sa2018").matches(range("2019-06-01")));
    }

    #[test]
    fn ap_widens_by_a_tenth_of_the_distance_to_now() {
        // now = 2025-01-01; 2015 ends 9 years before, so ±0.9 years.
        let ap = cmp("ap2015");
        assert!(ap.matches(range("2015-06")));
        assert!(ap.matches(range("2016-10")));
        assert!(!ap.matches(range("2016-12-15")));
        assert!(ap.matches(range("2014-02")));
        assert!(!ap.matches(range("2013-12")));
        // now inside the range: no widening.
        let inside = DateCmp::parse("ap2025", at("2025-06-01T00:00:00Z")).expect("parse");
        assert!(!inside.matches(range("2024-12-31")));
        assert!(inside.matches(range("2025-12-31")));
    }

    #[test]
    fn invalid_search_values() {
        assert!(DateCmp::parse("2020-13", 0).is_err());
        assert!(DateCmp::parse("xx2020", 0).is_err());
        assert!(DateCmp::parse("ge", 0).is_err());
        assert!(DateCmp::parse("geyesterday", 0).is_err());
    }
}
