//! Epoch milliseconds to FHIR date, dateTime and instant text, without a calendar library on
//! the hot path.

use std::fmt;

pub(super) const SECOND: i64 = 1000;
pub(super) const MINUTE: i64 = 60 * SECOND;
pub(super) const HOUR: i64 = 60 * MINUTE;
pub(super) const DAY: i64 = 24 * HOUR;

pub(super) const LAST_UPDATED_FROM: i64 = days_from_civil(2019, 1, 1) * DAY;
pub(super) const LAST_UPDATED_UNTIL: i64 = days_from_civil(2026, 1, 1) * DAY;
pub(super) const CLINICAL_FROM: i64 = days_from_civil(2000, 1, 1) * DAY;
// Starts end mid-December so that durations added to them stay within 2025.
pub(super) const CLINICAL_UNTIL: i64 = days_from_civil(2025, 12, 15) * DAY;
pub(super) const BIRTH_FIRST_DAY: i64 = days_from_civil(1930, 1, 1);
pub(super) const BIRTH_LAST_DAY: i64 = days_from_civil(2020, 12, 31);
pub(super) const GROUP_LAST_UPDATED: &str = "2025-06-01T00:00:00.000Z";

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
pub(super) const fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The inverse of [`days_from_civil`].
pub(super) fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[derive(Clone, Copy)]
pub(super) struct Zone {
    pub(super) minutes: i64,
    pub(super) suffix: &'static str,
}

pub(super) const UTC: Zone = Zone {
    minutes: 0,
    suffix: "Z",
};

#[derive(Clone, Copy)]
pub(super) enum Precision {
    Date,
    Seconds,
    Millis,
}

/// A point in time (epoch milliseconds) written as FHIR date, dateTime or instant in a zone.
#[derive(Clone, Copy)]
pub(super) struct Ts(pub(super) i64, pub(super) Zone, pub(super) Precision);

impl fmt::Display for Ts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Ts(ms, zone, precision) = *self;
        let local = ms + zone.minutes * MINUTE;
        let (y, m, d) = civil_from_days(local.div_euclid(DAY));
        write!(f, "{y:04}-{m:02}-{d:02}")?;
        if let Precision::Date = precision {
            return Ok(());
        }
        let t = local.rem_euclid(DAY);
        write!(
            f,
            "T{:02}:{:02}:{:02}",
            t / HOUR,
            t / MINUTE % 60,
            t / SECOND % 60
        )?;
        if let Precision::Millis = precision {
            write!(f, ".{:03}", t % SECOND)?;
        }
        f.write_str(zone.suffix)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn calendar_conversion_agrees_with_chrono() {
        let epoch = chrono::NaiveDate::from_ymd_opt(1970, 1, 1).unwrap();
        for days in (-30_000..30_000).step_by(7) {
            let date = epoch + chrono::Duration::days(days);
            let (y, m, d) = civil_from_days(days);
            assert_eq!(date.to_string(), format!("{y:04}-{m:02}-{d:02}"));
            assert_eq!(days_from_civil(y, m, d), days);
        }
        let at = Ts(1_700_000_000_123, UTC, Precision::Millis).to_string();
        assert_eq!(at, "2023-11-14T22:13:20.123Z");
        let zone = Zone {
            minutes: -300,
            suffix: "-05:00",
        };
        assert_eq!(
            Ts(1_700_000_000_123, zone, Precision::Seconds).to_string(),
            "2023-11-14T17:13:20-05:00"
        );
        assert_eq!(
            Ts(1_700_000_000_123, zone, Precision::Date).to_string(),
            "2023-11-14"
        );
    }
}
