//! FHIR `instant` parsing.
//!
//! `_since`, `_until` and `meta.lastUpdated` are FHIR instants: a full date and time to the
//! second, an optional fraction, and a mandatory zone. Parsing is hand-written because it runs
//! once per exported resource (`meta.lastUpdated`), where a general date library is several
//! times slower, and because the grammar is small and fixed.

use chrono::{DateTime, SecondsFormat, Utc};

/// Why a string is not a FHIR instant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{value}` is not a FHIR instant (expected YYYY-MM-DDThh:mm:ss[.fff](Z|+hh:mm|-hh:mm))")]
pub struct InvalidInstant {
    pub value: String,
}

/// Parses a FHIR instant into UTC.
///
/// A space where the zone sign belongs is read as `+`: an unencoded `+` in a query string is
/// turned into a space by form decoding, and rejecting `_since=2024-01-01T00:00:00 01:00` for
/// that would punish the client for a proxy's doing.
pub fn parse_instant(value: &str) -> Result<DateTime<Utc>, InvalidInstant> {
    instant_micros(value.as_bytes())
        .and_then(DateTime::from_timestamp_micros)
        .ok_or_else(|| InvalidInstant {
            value: value.to_owned(),
        })
}

/// Formats an instant the way FHIR servers commonly do (`2024-01-02T03:04:05.678Z`).
pub fn format_instant(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Microseconds since the Unix epoch of a FHIR instant, or `None` when malformed.
/// Fractions beyond microseconds are truncated.
pub fn instant_micros(b: &[u8]) -> Option<i64> {
    if b.len() < 20 {
        return None;
    }
    let year = digits(&b[0..4])?;
    expect(b, 4, b'-')?;
    let month = digits(&b[5..7])?;
    expect(b, 7, b'-')?;
    let day = digits(&b[8..10])?;
    expect(b, 10, b'T')?;
    let hour = digits(&b[11..13])?;
    expect(b, 13, b':')?;
    let minute = digits(&b[14..16])?;
    expect(b, 16, b':')?;
    let second = digits(&b[17..19])?;
    // FHIR's date types have no year 0 (their pattern starts at 0001).
    if year == 0
        || !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let mut i = 19;
    let mut micros: i64 = 0;
    if b.get(i) == Some(&b'.') {
        let (m, _, next) = fraction(b, i + 1)?;
        micros = m;
        i = next;
    }
    let offset_secs: i64 = match b.get(i)? {
        b'Z' if i + 1 == b.len() => 0,
        _ => zone_offset_secs(b, i)?,
    };
    let days = days_from_civil(i64::from(year), month, day);
    let secs = days * 86_400 + i64::from(hour * 3600 + minute * 60 + second.min(59)) - offset_secs;
    Some(secs * 1_000_000 + micros)
}

/// The fraction of a second whose digits start at `i` (after the `.`): microseconds (digits
/// past the sixth are read and ignored), how many digits counted (at most 6), and where the
/// digits end. `None` without a digit.
#[inline]
pub(crate) fn fraction(b: &[u8], start: usize) -> Option<(i64, u32, usize)> {
    let mut i = start;
    let mut micros = 0i64;
    while i < b.len() && b[i].is_ascii_digit() {
        if i - start < 6 {
            micros = micros * 10 + i64::from(b[i] - b'0');
        }
        i += 1;
    }
    let n = i - start;
    if n == 0 {
        return None;
    }
    for _ in n..6 {
        micros *= 10;
    }
    Some((micros, n.min(6) as u32, i))
}

/// A `+hh:mm`/`-hh:mm` zone offset at `i` that ends the value, in seconds east of UTC. A
/// space stands for a `+` that form decoding turned into a space.
#[inline]
pub(crate) fn zone_offset_secs(b: &[u8], i: usize) -> Option<i64> {
    let sign = *b.get(i)?;
    if !matches!(sign, b'+' | b'-' | b' ') || i + 6 != b.len() {
        return None;
    }
    let oh = digits(&b[i + 1..i + 3])?;
    expect(b, i + 3, b':')?;
    let om = digits(&b[i + 4..i + 6])?;
    if oh > 14 || om > 59 {
        return None;
    }
    let secs = i64::from(oh * 3600 + om * 60);
    Some(if sign == b'-' { -secs } else { secs })
}

/// `Some` when byte `i` is `c`.
pub(crate) fn expect(b: &[u8], i: usize, c: u8) -> Option<()> {
    (b.get(i) == Some(&c)).then_some(())
}

/// The decimal value of an all-digit slice.
pub(crate) fn digits(b: &[u8]) -> Option<u32> {
    let mut v = 0u32;
    for &c in b {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v * 10 + u32::from(c - b'0');
    }
    Some(v)
}

pub(crate) fn is_leap(year: u32) -> bool {
    (year.is_multiple_of(4) && !year.is_multiple_of(100)) || year.is_multiple_of(400)
}

pub(crate) fn days_in_month(year: u32, month: u32) -> u32 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap(year) => 29,
        2 => 28,
        _ => 0,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
pub(crate) fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    fn micros(s: &str) -> Option<i64> {
        instant_micros(s.as_bytes())
    }

    #[test]
    fn agrees_with_chrono_on_valid_instants() {
        for s in [
            "1970-01-01T00:00:00Z",
            "2024-02-29T23:59:59.999Z",
            "2021-06-01T00:00:00.000Z",
            "2024-06-01T12:00:00+02:00",
            "1939-12-31T10:11:12.5-05:30",
            "2000-03-01T00:00:00.123456789Z",
        ] {
            let ours = micros(s).unwrap_or_else(|| panic!("{s} should parse"));
            let theirs = DateTime::parse_from_rfc3339(s)
                .expect("chrono")
                .timestamp_micros();
            assert_eq!(ours, theirs, "{s}");
        }
    }

    #[test]
    fn rejects_malformed_instants() {
        for s in [
            "",
            "yesterday",
            "2024-01-01",
            "2024-01-01T00:00:00",
            "2024-13-01T00:00:00Z",
            "2023-02-29T00:00:00Z",
            "2024-01-01T24:00:00Z",
            "2024-01-01T00:00:00.Z",
            "2024-01-01T00:00:00Zjunk",
            "2024-01-01T00:00:00+2:00",
            "2024-01-01 00:00:00Z",
        ] {
            assert_eq!(micros(s), None, "{s} should be rejected");
        }
    }

    #[test]
    fn space_for_plus_is_tolerated() {
        assert_eq!(
            micros("2024-06-01T12:00:00 02:00"),
            micros("2024-06-01T12:00:00+02:00")
        );
    }

    #[test]
    fn format_round_trips() {
        let t = parse_instant("2024-06-01T12:00:00.250+02:00").expect("parse");
        assert_eq!(format_instant(&t), "2024-06-01T10:00:00.250Z");
    }
}
