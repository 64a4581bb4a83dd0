//! Number and quantity search (R4 search §number, §quantity).
//!
//! Search values are exact decimals carrying their precision: `5.4` stands for the implicit
//! range [5.35, 5.45) and `100` for [99.5, 100.5) (half a unit of the last significant digit;
//! `1e2` therefore means [50, 150), taking R4's significant-figure rule over its example);
//! `-5.4` for (-5.45, -5.35], the values that round half away from zero to it.
//! `eq`/`ne` test the implicit range; `gt`/`lt`/`ge`/`le` compare with the exact value ("the
//! implicit range does not apply"); `sa` is at or above the end of the implicit range, `eb`
//! below its start; `ap` accepts values within 10% of the search value, or within its implicit
//! range if that is wider.
//!
//! Resource values are exact points, except Quantities with a `comparator` (`<5` covers
//! everything up to 5) and Ranges (`low` to `high`, open where missing), which compare like
//! R4's range column: `eq` needs the whole target inside the implicit range, `gt` any part of
//! it above the value, and so on. JSON numbers arrive as `f64` (or integers); their shortest
//! round-trip decimal form is what is compared, which equals the JSON text for any number
//! written with up to 15 significant digits.

use std::cmp::Ordering;
use std::fmt::Write as _;

use serde_json::Value;

use super::escape::{split_unescaped, unescape};
use super::{Datatype, Prefix};

/// Search values may carry at most this many significant digits, so that every comparison
/// fits in 128-bit integers.
const MAX_DIGITS: u32 = 36;

/// A decimal `m × 10^e`; compares by value (`1.0 == 1`).
#[derive(Debug, Clone, Copy)]
pub(super) struct Dec {
    m: i128,
    e: i32,
}

impl Dec {
    /// Parses a FHIR decimal (`-12.50`, `1e-3`); keeps trailing zeros, which are precision.
    pub(super) fn parse(s: &str) -> Option<Dec> {
        let b = s.as_bytes();
        let mut i = 0;
        let neg = b.first() == Some(&b'-');
        if neg || b.first() == Some(&b'+') {
            i += 1;
        }
        let mut m: i128 = 0;
        let mut digits = 0u32;
        let mut int_digits = 0;
        while i < b.len() && b[i].is_ascii_digit() {
            push_digit(&mut m, &mut digits, b[i])?;
            int_digits += 1;
            i += 1;
        }
        let mut frac = 0i32;
        if b.get(i) == Some(&b'.') {
            i += 1;
            let start = i;
            while i < b.len() && b[i].is_ascii_digit() {
                push_digit(&mut m, &mut digits, b[i])?;
                i += 1;
            }
            frac = i32::try_from(i - start).ok()?;
            if frac == 0 {
                return None;
            }
        }
        if int_digits == 0 && frac == 0 {
            return None;
        }
        let mut exp = 0i32;
        if matches!(b.get(i), Some(b'e' | b'E')) {
            i += 1;
            let eneg = b.get(i) == Some(&b'-');
            if eneg || b.get(i) == Some(&b'+') {
                i += 1;
            }
            let start = i;
            while i < b.len() && b[i].is_ascii_digit() {
                exp = exp.checked_mul(10)?.checked_add(i32::from(b[i] - b'0'))?;
                if exp > 100_000 {
                    return None;
                }
                i += 1;
            }
            if i == start {
                return None;
            }
            if eneg {
                exp = -exp;
            }
        }
        if i != b.len() {
            return None;
        }
        Some(Dec {
            m: if neg { -m } else { m },
            e: exp - frac,
        })
    }

    /// The value of a JSON number.
    pub(super) fn from_json(v: &Value) -> Option<Dec> {
        let Value::Number(n) = v else { return None };
        if let Some(i) = n.as_i64() {
            return Some(Dec {
                m: i128::from(i),
                e: 0,
            });
        }
        if let Some(u) = n.as_u64() {
            return Some(Dec {
                m: i128::from(u),
                e: 0,
            });
        }
        let f = n.as_f64()?;
        // `{:e}` prints the shortest digits that round-trip, without allocating here.
        let mut buf = StackBuf::new();
        write!(buf, "{f:e}").ok()?;
        Dec::parse(buf.as_str())
    }

    fn units_below(self) -> (i128, i32) {
        (self.m * 10, self.e - 1)
    }
}

fn push_digit(m: &mut i128, digits: &mut u32, d: u8) -> Option<()> {
    if *digits > 0 || d != b'0' {
        *digits += 1;
        if *digits > MAX_DIGITS {
            return None;
        }
    }
    *m = *m * 10 + i128::from(d - b'0');
    Some(())
}

impl Ord for Dec {
    fn cmp(&self, other: &Dec) -> Ordering {
        let (sa, sb) = (self.m.signum(), other.m.signum());
        if sa != sb || sa == 0 {
            return sa.cmp(&sb);
        }
        let (ma, mb) = (self.m.unsigned_abs(), other.m.unsigned_abs());
        let (da, db) = (ma.ilog10(), mb.ilog10());
        // Compare orders of magnitude first; only equal ones need aligning, and then both
        // mantissas fit once padded to the same number of digits.
        let (adj_a, adj_b) = (
            i64::from(da) + i64::from(self.e),
            i64::from(db) + i64::from(other.e),
        );
        let magnitude = if adj_a != adj_b {
            adj_a.cmp(&adj_b)
        } else if da < db {
            (ma * 10u128.pow(db - da)).cmp(&mb)
        } else {
            ma.cmp(&(mb * 10u128.pow(da - db)))
        };
        if sa > 0 {
            magnitude
        } else {
            magnitude.reverse()
        }
    }
}

impl PartialOrd for Dec {
    fn partial_cmp(&self, other: &Dec) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Dec {
    fn eq(&self, other: &Dec) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Dec {}

struct StackBuf {
    b: [u8; 48],
    n: usize,
}

impl StackBuf {
    fn new() -> StackBuf {
        StackBuf { b: [0; 48], n: 0 }
    }

    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.b[..self.n]).unwrap_or_default()
    }
}

impl std::fmt::Write for StackBuf {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let end = self.n + s.len();
        let dst = self.b.get_mut(self.n..end).ok_or(std::fmt::Error)?;
        dst.copy_from_slice(s.as_bytes());
        self.n = end;
        Ok(())
    }
}

/// A target value: closed bounds, `None` where open.
#[derive(Debug, Clone, Copy)]
pub(super) struct NumRange {
    lo: Option<Dec>,
    hi: Option<Dec>,
}

impl NumRange {
    fn point(d: Dec) -> NumRange {
        NumRange {
            lo: Some(d),
            hi: Some(d),
        }
    }
}

/// One compiled `[prefix]number`.
#[derive(Debug, Clone)]
pub(super) struct NumCmp {
    prefix: Prefix,
    value: Dec,
    /// The implicit range: `[lo, hi)`, or `(lo, hi]` for a negative value, so that it holds
    /// the values that round (half away from zero) to the search value.
    lo: Dec,
    hi: Dec,
    negative: bool,
    /// The `ap` range, closed.
    ap_lo: Dec,
    ap_hi: Dec,
}

impl NumCmp {
    pub(super) fn parse(s: &str) -> Result<NumCmp, String> {
        let (prefix, rest) = Prefix::split(s)?;
        let value = Dec::parse(rest).ok_or_else(|| {
            format!("`{rest}` is not a decimal number (at most {MAX_DIGITS} significant digits)")
        })?;
        let (m10, e) = value.units_below();
        let tenth = value.m.abs().max(5);
        Ok(NumCmp {
            prefix,
            value,
            lo: Dec { m: m10 - 5, e },
            hi: Dec { m: m10 + 5, e },
            negative: value.m < 0,
            ap_lo: Dec { m: m10 - tenth, e },
            ap_hi: Dec { m: m10 + tenth, e },
        })
    }

    pub(super) fn matches(&self, t: NumRange) -> bool {
        let v = self.value;
        // Open bounds: a missing `lo` is below everything, a missing `hi` above everything.
        // `above(x)`: the target lies above the bound x of the implicit range, which is
        // closed at `lo` and open at `hi` for positive values, the reverse for negative ones.
        let above =
            |x: Dec, closed: bool| t.lo.is_some_and(|lo| if closed { lo >= x } else { lo > x });
        let below =
            |x: Dec, closed: bool| t.hi.is_some_and(|hi| if closed { hi <= x } else { hi < x });
        let neg = self.negative;
        let inside = above(self.lo, !neg) && below(self.hi, neg);
        match self.prefix {
            Prefix::Eq => inside,
            Prefix::Ne => !inside,
            Prefix::Gt => t.hi.is_none_or(|hi| hi > v),
            Prefix::Lt => t.lo.is_none_or(|lo| lo < v),
            Prefix::Ge => t.hi.is_none_or(|hi| hi >= v),
            Prefix::Le => t.lo.is_none_or(|lo| lo <= v),
            Prefix::Sa => above(self.hi, !neg),
            Prefix::Eb => below(self.lo, neg),
            Prefix::Ap => {
                t.lo.is_none_or(|lo| lo <= self.ap_hi) && t.hi.is_none_or(|hi| hi >= self.ap_lo)
            }
        }
    }
}

/// The value of a `decimal`/`integer` element.
pub(super) fn number_target(v: &Value) -> Option<NumRange> {
    Dec::from_json(v).map(NumRange::point)
}

/// One compiled `[prefix]number[|system|code]`.
#[derive(Debug, Clone)]
pub(super) struct QtyCmp {
    num: NumCmp,
    system: Option<String>,
    code: Option<String>,
}

const ISO_4217: &str = "urn:iso:std:iso:4217";

impl QtyCmp {
    pub(super) fn parse(s: &str) -> Result<QtyCmp, String> {
        let parts = split_unescaped(s, '|');
        let non_empty = |p: &str| (!p.is_empty()).then(|| unescape(p));
        let (num, system, code) = match parts.as_slice() {
            [n] => (*n, None, None),
            [n, sys, code] => (*n, non_empty(sys), non_empty(code)),
            _ => {
                return Err(format!(
                    "`{s}` is not a quantity (`[prefix]number`, `number|system|code` or `number||code`)"
                ));
            }
        };
        Ok(QtyCmp {
            num: NumCmp::parse(num)?,
            system,
            code,
        })
    }

    pub(super) fn matches(&self, dt: Datatype, v: &Value) -> bool {
        match dt {
            Datatype::Quantity => {
                self.unit_ok(v) && quantity_range(v).is_some_and(|r| self.num.matches(r))
            }
            Datatype::Money => {
                let currency = v.get("currency").and_then(Value::as_str);
                let unit_ok = self.system.as_deref().is_none_or(|s| s == ISO_4217)
                    && self.code.as_deref().is_none_or(|c| Some(c) == currency);
                unit_ok
                    && v.get("value")
                        .and_then(Dec::from_json)
                        .is_some_and(|d| self.num.matches(NumRange::point(d)))
            }
            Datatype::Range => {
                let low = v.get("low");
                let high = v.get("high");
                let value =
                    |q: Option<&Value>| q.and_then(|q| q.get("value")).and_then(Dec::from_json);
                let (lo, hi) = (value(low), value(high));
                if lo.is_none() && hi.is_none() {
                    return false;
                }
                let unit_ok = [low, high].into_iter().flatten().any(|q| self.unit_ok(q));
                unit_ok && self.num.matches(NumRange { lo, hi })
            }
            _ => false,
        }
    }

    /// R4: with a system, system and code must match; without one, the code matches
    /// `Quantity.code` or `Quantity.unit`.
    fn unit_ok(&self, q: &Value) -> bool {
        let field = |k: &str| q.get(k).and_then(Value::as_str);
        match (&self.system, &self.code) {
            (None, None) => true,
            (Some(s), None) => field("system") == Some(s.as_str()),
            (Some(s), Some(c)) => {
                field("system") == Some(s.as_str()) && field("code") == Some(c.as_str())
            }
            (None, Some(c)) => {
                field("code") == Some(c.as_str()) || field("unit") == Some(c.as_str())
            }
        }
    }
}

/// A Quantity's value as a range: a point, or half-open when it has a comparator.
fn quantity_range(q: &Value) -> Option<NumRange> {
    let d = q.get("value").and_then(Dec::from_json)?;
    Some(match q.get("comparator").and_then(Value::as_str) {
        Some("<" | "<=") => NumRange {
            lo: None,
            hi: Some(d),
        },
        Some(">" | ">=") => NumRange {
            lo: Some(d),
            hi: None,
        },
        _ => NumRange::point(d),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn dec(s: &str) -> Dec {
        Dec::parse(s).unwrap_or_else(|| panic!("{s}"))
    }

    #[test]
    fn decimals_parse_and_compare_by_value() {
        assert_eq!(dec("1.0"), dec("1"));
        assert_eq!(dec("100"), dec("1e2"));
        assert_eq!(dec("-0.50"), dec("-5e-1"));
        assert!(dec("5.449") < dec("5.45"));
        assert!(dec("-5.45") < dec("-5.449"));
        assert!(dec("0") > dec("-0.0001"));
        assert!(dec("0") < dec("1e-30"));
        assert!(dec("123456789012345678901234567890") > dec("1.2e29"));
        assert!(dec("99999999999999999999") < dec("1e20"));
        assert_eq!(dec("0"), dec("-0.000"));
        for bad in [
            "", "-", ".", "5.", "1e", "1e+", "abc", "1.2.3", "1,5", "--1", "1 ",
        ] {
            assert!(Dec::parse(bad).is_none(), "{bad}");
        }
        assert!(Dec::parse(&"9".repeat(37)).is_none());
        assert!(Dec::parse(&format!("0.{}", "0".repeat(40))).is_some());
    }

    #[test]
    fn json_numbers_keep_their_decimal_value() {
        let d = |v: Value| Dec::from_json(&v).unwrap_or_else(|| panic!("{v}"));
        assert_eq!(d(json!(5.45)), dec("5.45"));
        assert_eq!(d(json!(5.449)), dec("5.449"));
        assert_eq!(d(json!(12)), dec("12"));
        assert_eq!(d(json!(u64::MAX)), dec("18446744073709551615"));
        assert_eq!(d(json!(1e300)), dec("1e300"));
        assert_eq!(d(json!(-1.5e-7)), dec("-0.00000015"));
        assert!(Dec::from_json(&json!("5")).is_none());
    }

    fn num(s: &str) -> NumCmp {
        NumCmp::parse(s).unwrap_or_else(|e| panic!("{e}"))
    }

    fn pt(s: &str) -> NumRange {
        NumRange::point(dec(s))
    }

    #[test]
    fn implicit_range_for_eq() {
        let eq = num("5.4");
        assert!(eq.matches(pt("5.35")));
        assert!(eq.matches(pt("5.4")));
        assert!(eq.matches(pt("5.449")));
        assert!(!eq.matches(pt("5.45")));
        assert!(!eq.matches(pt("5.349")));
        assert!(num("ne5.4").matches(pt("5.45")));
        assert!(!num("ne5.4").matches(pt("5.44")));
        let hundred = num("100");
        assert!(hundred.matches(pt("99.5")));
        assert!(!hundred.matches(pt("100.5")));
        assert!(num("100.00").matches(pt("100.004")));
        assert!(!num("100.00").matches(pt("100.005")));
        assert!(num("-5.4").matches(pt("-5.449")));
        assert!(num("-5.4").matches(pt("-5.35")));
        assert!(!num("-5.4").matches(pt("-5.45")));
        assert!(!num("-5.4").matches(pt("-5.349")));
        assert!(num("sa-5.4").matches(pt("-5.349")));
        assert!(!num("sa-5.4").matches(pt("-5.35")));
        assert!(num("eb-5.4").matches(pt("-5.45")));
        assert!(!num("eb-5.4").matches(pt("-5.449")));
    }

    #[test]
    fn order_prefixes_compare_exactly() {
        assert!(num("gt100").matches(pt("100.1")));
        assert!(!num("gt100").matches(pt("100")));
        assert!(num("ge100").matches(pt("100")));
        assert!(!num("ge100").matches(pt("99.99")));
        assert!(num("lt100").matches(pt("99.99")));
        assert!(!num("lt100").matches(pt("100")));
        assert!(num("le100").matches(pt("100")));
        assert!(!num("le100").matches(pt("100.01")));
        assert!(num("sa100").matches(pt("100.5")));
        assert!(!num("sa100").matches(pt("100.4")));
        assert!(num("eb100").matches(pt("99.4")));
        assert!(!num("eb100").matches(pt("99.5")));
        assert!(num("ap100").matches(pt("110")));
        assert!(num("ap100").matches(pt("90")));
        assert!(!num("ap100").matches(pt("110.1")));
        assert!(!num("ap100").matches(pt("89.9")));
        // Below 50 the implicit range is wider than 10%.
        assert!(num("ap5").matches(pt("5.5")));
        assert!(!num("ap5").matches(pt("5.6")));
    }

    #[test]
    fn ranges_compare_as_ranges() {
        let r = |lo: Option<&str>, hi: Option<&str>| NumRange {
            lo: lo.map(dec),
            hi: hi.map(dec),
        };
        assert!(num("50").matches(r(Some("49.6"), Some("50.4"))));
        assert!(!num("50").matches(r(Some("40"), Some("50"))));
        assert!(num("gt45").matches(r(Some("40"), Some("50"))));
        assert!(!num("gt50").matches(r(Some("40"), Some("50"))));
        assert!(num("lt45").matches(r(Some("40"), Some("50"))));
        assert!(num("gt45").matches(r(Some("40"), None)));
        assert!(!num("lt45").matches(r(Some("46"), None)));
        assert!(num("lt45").matches(r(None, Some("100"))));
        assert!(!num("eq45").matches(r(None, Some("45"))));
        assert!(num("sa39").matches(r(Some("40"), Some("50"))));
        assert!(!num("sa45").matches(r(Some("40"), Some("50"))));
    }

    #[test]
    fn invalid_numbers() {
        for bad in ["abc", "xx5", "gt", "5,4", "eq5.4.1", "5.4|mg", "5.4|a|b|c"] {
            assert!(QtyCmp::parse(bad).is_err(), "{bad}");
        }
        assert!(NumCmp::parse("5.4|x").is_err());
    }

    fn qty(s: &str) -> QtyCmp {
        QtyCmp::parse(s).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn quantity_units() {
        let mg = json!({"value": 5.4, "unit": "mg", "system": "http://unitsofmeasure.org", "code": "mg"});
        let unit_only = json!({"value": 5.4, "unit": "mg"});
        let q = Datatype::Quantity;
        assert!(qty("5.4").matches(q, &mg));
        assert!(qty("5.4|http://unitsofmeasure.org|mg").matches(q, &mg));
        assert!(!qty("5.4|http://unitsofmeasure.org|g").matches(q, &mg));
        assert!(!qty("5.4|http://snomed.info/sct|mg").matches(q, &mg));
        assert!(qty("5.4||mg").matches(q, &mg));
        assert!(qty("5.4||mg").matches(q, &unit_only));
        assert!(!qty("5.4|http://unitsofmeasure.org|mg").matches(q, &unit_only));
        assert!(!qty("5.4||g").matches(q, &unit_only));
        assert!(!qty("5.5||mg").matches(q, &mg));
        assert!(qty("lt6||mg").matches(q, &json!({"value": 7, "comparator": "<", "unit": "mg"})));
        assert!(!qty("gt8").matches(q, &json!({"value": 7, "comparator": "<"})));
        assert!(!qty("5").matches(q, &json!({"unit": "mg"})));
        let money = json!({"value": 100.5, "currency": "EUR"});
        assert!(qty("100.5|urn:iso:std:iso:4217|EUR").matches(Datatype::Money, &money));
        assert!(!qty("100.5||USD").matches(Datatype::Money, &money));
        let range = json!({"low": {"value": 40, "unit": "a", "system": "http://unitsofmeasure.org", "code": "a"},
                           "high": {"value": 50, "unit": "a", "system": "http://unitsofmeasure.org", "code": "a"}});
        assert!(qty("gt45|http://unitsofmeasure.org|a").matches(Datatype::Range, &range));
        assert!(!qty("gt50||a").matches(Datatype::Range, &range));
        assert!(!qty("gt45||mo").matches(Datatype::Range, &range));
        assert!(!qty("5").matches(Datatype::Other, &mg));
    }
}
