//! The kick-off request: the endpoint for the level, the parameters as a query string (GET) or
//! a FHIR `Parameters` body (POST), and the `202` + `Content-Location` answer.
//!
//! Query encoding: every character but RFC 3986 unreserved ones is percent-encoded (a space as
//! `%20`, never `+`, which servers read differently). List parameters (`_type`, `_elements`,
//! ...) keep their separating commas literal; a `_typeFilter` value is encoded whole, so a comma
//! inside it stays part of its search (IG 2.0: the server splits on literal commas before
//! decoding), and each `--type-filter` is its own `_typeFilter` parameter.

use reqwest::header::{ACCEPT, CONTENT_LOCATION, CONTENT_TYPE};
use serde_json::{Value, json};
use url::Url;

use super::error::SendError;
use super::net::{self, Http, error_body};
use super::{ClientError, ExportArgs, Level};

const FHIR_JSON: &str = "application/fhir+json";

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Param {
    pub name: String,
    pub value: String,
}

/// `[base]/$export`, `[base]/Patient/$export` or `[base]/Group/[id]/$export`.
pub(crate) fn kickoff_url(base: &Url, level: &Level) -> Url {
    let suffix = match level {
        Level::System => "$export".to_owned(),
        Level::Patient => "Patient/$export".to_owned(),
        Level::Group(id) => format!("Group/{id}/$export"),
    };
    let mut url = base.clone();
    let path = format!("{}/{suffix}", base.path().trim_end_matches('/'));
    url.set_path(&path);
    url.set_query(None);
    url.set_fragment(None);
    url
}

/// The kick-off parameters the flags ask for, in a fixed order.
pub(crate) fn params(args: &ExportArgs) -> Vec<Param> {
    let mut out = Vec::new();
    let mut push = |name: &str, value: String| {
        out.push(Param {
            name: name.to_owned(),
            value,
        })
    };
    let list = |items: &[String]| {
        items
            .iter()
            .map(|s| s.trim())
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join(",")
    };
    let types = list(&args.types);
    if !types.is_empty() {
        push("_type", types);
    }
    if let Some(s) = &args.since {
        push("_since", s.trim().to_owned());
    }
    if let Some(s) = &args.until {
        push("_until", s.trim().to_owned());
    }
    for f in &args.type_filters {
        push("_typeFilter", f.clone());
    }
    let elements = list(&args.elements);
    if !elements.is_empty() {
        push("_elements", elements);
    }
    for (name, value) in &args.params {
        push(name, value.clone());
    }
    out
}

fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

pub(crate) fn encode_query(params: &[Param]) -> String {
    params
        .iter()
        .map(|p| {
            let value = if p.name == "_typeFilter" {
                encode(&p.value)
            } else {
                p.value.split(',').map(encode).collect::<Vec<_>>().join(",")
            };
            format!("{}={value}", encode(&p.name))
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// The POST body: one `parameter` per value, typed as the Bulk Data OperationDefinitions
/// declare them.
pub(crate) fn parameters_body(params: &[Param]) -> Value {
    let mut out = Vec::new();
    for p in params {
        let name = p.name.as_str();
        match name {
            "_type" | "_elements" | "includeAssociatedData" => {
                let kind = if name == "includeAssociatedData" {
                    "valueCode"
                } else {
                    "valueString"
                };
                for v in p.value.split(',').map(str::trim).filter(|v| !v.is_empty()) {
                    out.push(json!({"name": name, kind: v}));
                }
            }
            "_since" | "_until" | "_till" => {
                out.push(json!({"name": name, "valueInstant": p.value}));
            }
            "patient" => {
                out.push(json!({"name": name, "valueReference": {"reference": p.value}}));
            }
            "allowPartialManifests" if matches!(p.value.as_str(), "true" | "false") => {
                out.push(json!({"name": name, "valueBoolean": p.value == "true"}));
            }
            _ => out.push(json!({"name": name, "valueString": p.value})),
        }
    }
    json!({"resourceType": "Parameters", "parameter": out})
}

/// Sends the kick-off; returns the absolute status URL.
pub(crate) async fn kickoff(
    http: &Http,
    args: &ExportArgs,
    base: &Url,
) -> Result<Url, ClientError> {
    let endpoint = kickoff_url(base, &args.level);
    let params = params(args);
    let prefer = if args.lenient {
        "respond-async, handling=lenient"
    } else {
        "respond-async"
    };
    let (resp, answered) = if args.post {
        let body = parameters_body(&params).to_string();
        let mut req = http
            .client
            .post(endpoint.clone())
            .header(ACCEPT, FHIR_JSON)
            .header("Prefer", prefer)
            .header(CONTENT_TYPE, FHIR_JSON)
            .body(body);
        req = http
            .authorize(req)
            .await
            .map_err(|e| ClientError::Request {
                action: "kick-off POST",
                url: endpoint.to_string(),
                source: e,
            })?;
        let resp = req.send().await.map_err(|e| ClientError::Request {
            action: "kick-off POST",
            url: endpoint.to_string(),
            source: SendError::Http(e),
        })?;
        (resp, endpoint)
    } else {
        let mut url = endpoint;
        if !params.is_empty() {
            url.set_query(Some(&encode_query(&params)));
        }
        http.get(&url, FHIR_JSON, true, &[("Prefer", prefer)])
            .await
            .map_err(|source| ClientError::Request {
                action: "kick-off GET",
                url: url.to_string(),
                source,
            })?
    };
    let status = resp.status();
    if status.as_u16() == 202 {
        return resp
            .headers()
            .get(CONTENT_LOCATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|loc| answered.join(loc.trim()).ok())
            .filter(net::is_http)
            .ok_or_else(|| ClientError::Protocol {
                url: answered.to_string(),
                message: "202 Accepted without a usable Content-Location".into(),
            });
    }
    if status.is_client_error() || status.is_server_error() {
        return Err(ClientError::KickoffRefused {
            status: status.as_u16(),
            diagnostics: error_body(resp).await.text,
        });
    }
    Err(ClientError::Protocol {
        url: answered.to_string(),
        message: format!("HTTP {status} to the kick-off; expected 202 Accepted"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> ExportArgs {
        ExportArgs {
            types: vec!["Patient".into(), " Observation".into(), String::new()],
            since: Some("2024-01-01T00:00:00+02:00".into()),
            type_filters: vec![
                "Observation?code=a,b&date=gt2020".into(),
                "Patient?name=Ann Lee".into(),
            ],
            elements: vec!["id".into(), "Patient.name".into()],
            params: vec![
                ("patient".into(), "Patient/1".into()),
                ("_outputFormat".into(), "application/fhir+ndjson".into()),
            ],
            ..ExportArgs::default()
        }
    }

    #[test]
    fn endpoints_per_level() {
        let base = Url::parse("https://h.example/r4/fhir/").unwrap();
        assert_eq!(
            kickoff_url(&base, &Level::System).as_str(),
            "https://h.example/r4/fhir/$export"
        );
        let base = Url::parse("https://h.example/fhir?x=1").unwrap();
        assert_eq!(
            kickoff_url(&base, &Level::Patient).as_str(),
            "https://h.example/fhir/Patient/$export"
        );
        assert_eq!(
            kickoff_url(&base, &Level::Group("g.1".into())).as_str(),
            "https://h.example/fhir/Group/g.1/$export"
        );
    }

    #[test]
    fn query_encoding_keeps_list_commas_and_encodes_filters_whole() {
        let q = encode_query(&params(&args()));
        assert_eq!(
            q,
            "_type=Patient,Observation\
             &_since=2024-01-01T00%3A00%3A00%2B02%3A00\
             &_typeFilter=Observation%3Fcode%3Da%2Cb%26date%3Dgt2020\
             &_typeFilter=Patient%3Fname%3DAnn%20Lee\
             &_elements=id,Patient.name\
             &patient=Patient%2F1\
             &_outputFormat=application%2Ffhir%2Bndjson"
        );
        let mut url = Url::parse("http://h/$export").unwrap();
        url.set_query(Some(&q));
        assert_eq!(url.query(), Some(q.as_str()), "the URL keeps the encoding");
    }

    #[test]
    fn parameters_body_types_each_value() {
        let body = parameters_body(&params(&args()));
        assert_eq!(
            body,
            json!({"resourceType": "Parameters", "parameter": [
                {"name": "_type", "valueString": "Patient"},
                {"name": "_type", "valueString": "Observation"},
                {"name": "_since", "valueInstant": "2024-01-01T00:00:00+02:00"},
                {"name": "_typeFilter", "valueString": "Observation?code=a,b&date=gt2020"},
                {"name": "_typeFilter", "valueString": "Patient?name=Ann Lee"},
                {"name": "_elements", "valueString": "id"},
                {"name": "_elements", "valueString": "Patient.name"},
                {"name": "patient", "valueReference": {"reference": "Patient/1"}},
                {"name": "_outputFormat", "valueString": "application/fhir+ndjson"},
            ]})
        );
    }
}
