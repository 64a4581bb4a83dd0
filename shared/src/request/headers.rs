//! The kick-off's `Accept` and `Prefer` headers.

use super::{Handling, KickoffError};

/// Media ranges under which we can answer a kick-off: FHIR JSON, JSON, or anything.
const ACCEPTABLE: &[&str] = &[
    "application/fhir+json",
    "application/json",
    "application/json+fhir",
    "application/*",
    "*/*",
];

/// Checks `Accept` (all header values). A missing header is processed as
/// `application/fhir+json`, as the IG allows.
pub fn check_accept(values: &[&str]) -> Result<(), KickoffError> {
    if values.iter().all(|v| v.trim().is_empty()) {
        return Ok(());
    }
    let acceptable = values.iter().flat_map(|v| v.split(',')).any(|range| {
        let mut parts = range.split(';');
        let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let refused = parts.any(|p| {
            let p = p.trim().to_ascii_lowercase();
            p.strip_prefix("q=")
                .and_then(|q| q.trim().parse::<f32>().ok())
                .is_some_and(|q| q <= 0.0)
        });
        !refused && ACCEPTABLE.contains(&media.as_str())
    });
    if acceptable {
        Ok(())
    } else {
        Err(KickoffError::NotAcceptable {
            accept: values.join(", "),
        })
    }
}

/// What the client asked for in `Prefer` (RFC 7240).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preferences {
    pub respond_async: bool,
    pub handling: Handling,
}

/// Parses all `Prefer` header values. Unknown preferences are ignored, as RFC 7240 says they
/// must be; a `handling` value other than `strict` or `lenient` is an error because it changes
/// what a request means.
pub fn parse_prefer(values: &[&str]) -> Result<Preferences, KickoffError> {
    let mut prefs = Preferences {
        respond_async: false,
        handling: Handling::Strict,
    };
    // `;` starts a preference's parameters in RFC 7240, but clients commonly write
    // `respond-async; handling=lenient`, so both separate preferences here.
    for pref in values.iter().flat_map(|v| v.split([',', ';'])) {
        let token = pref.trim();
        let (name, value) = match token.split_once('=') {
            Some((n, v)) => (n.trim(), Some(v.trim().trim_matches('"'))),
            None => (token, None),
        };
        if name.eq_ignore_ascii_case("respond-async") {
            prefs.respond_async = true;
        } else if name.eq_ignore_ascii_case("handling") {
            prefs.handling = match value.map(str::to_ascii_lowercase).as_deref() {
                Some("strict") => Handling::Strict,
                Some("lenient") => Handling::Lenient,
                _ => {
                    return Err(KickoffError::InvalidHeader {
                        header: "Prefer",
                        message: format!(
                            "`handling={}` is not `strict` or `lenient`",
                            value.unwrap_or("")
                        ),
                    });
                }
            };
        }
    }
    Ok(prefs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_variants() {
        assert!(check_accept(&[]).is_ok());
        assert!(check_accept(&["application/fhir+json"]).is_ok());
        assert!(check_accept(&["text/html, application/json;q=0.9"]).is_ok());
        assert!(check_accept(&["*/*"]).is_ok());
        assert!(matches!(
            check_accept(&["text/html"]),
            Err(KickoffError::NotAcceptable { .. })
        ));
        assert!(check_accept(&["application/fhir+json;q=0"]).is_err());
        assert!(check_accept(&["application/fhir+xml"]).is_err());
    }

    #[test]
    fn prefer_variants() {
        let p = parse_prefer(&["respond-async"]).expect("ok");
        assert!(p.respond_async);
        assert_eq!(p.handling, Handling::Strict);
        let p = parse_prefer(&["respond-async, handling=lenient"]).expect("ok");
        assert_eq!(p.handling, Handling::Lenient);
        let p = parse_prefer(&["respond-async; handling=lenient"]).expect("ok");
        assert_eq!(p.handling, Handling::Lenient);
        let p = parse_prefer(&["handling=strict", "Respond-Async"]).expect("ok");
        assert!(p.respond_async);
        assert!(!parse_prefer(&["return=minimal"]).expect("ok").respond_async);
        assert!(parse_prefer(&["respond-async, handling=sloppy"]).is_err());
    }
}
