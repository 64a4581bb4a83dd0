//! Validation of kick-off parameters into an [`ExportRequest`].

use chrono::{DateTime, Utc};

use super::elements::ElementSelector;
use super::raw::{self, RawParam};
use super::type_filter::TypeFilter;
use super::{
    AssociatedData, Capabilities, ExportLevel, ExportRequest, Handling, KickoffError, check_accept,
    parse_prefer,
};
use crate::compartment::in_patient_compartment;
use crate::model::{ResourceRef, ResourceType, parse_instant};
use crate::outcome::{Issue, IssueCode};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
}

/// A kick-off as the HTTP layer received it.
#[derive(Debug, Clone)]
pub struct KickoffInput<'a> {
    pub level: ExportLevel,
    pub method: Method,
    pub query: Option<&'a str>,
    pub body: &'a [u8],
    pub content_type: Option<&'a str>,
    pub accept: Vec<&'a str>,
    pub prefer: Vec<&'a str>,
    /// Absolute kick-off URL, without the query string.
    pub url: String,
}

const OUTPUT_FORMATS: &[&str] = &["application/fhir+ndjson", "application/ndjson", "ndjson"];

/// Parses and validates a kick-off. See `../shared/SPEC.md` §2 for the rules applied.
pub fn parse_kickoff(
    input: &KickoffInput<'_>,
    caps: &Capabilities,
) -> Result<ExportRequest, KickoffError> {
    check_accept(&input.accept)?;
    let prefs = parse_prefer(&input.prefer)?;
    if !prefs.respond_async {
        return Err(KickoffError::MissingRespondAsync);
    }
    let mut params = match input.query {
        Some(q) => raw::from_query(q)?,
        None => Vec::new(),
    };
    if input.method == Method::Post {
        // One place for a POST's parameters: merged with a query string, the manifest's
        // `request` (the URL without the body's parameters) would not say what was asked.
        if let Some(p) = params.first() {
            return Err(KickoffError::InvalidParameter {
                name: p.name.clone(),
                message: "a POST kick-off carries its parameters in its Parameters body, not in the query string".into(),
            });
        }
        if input.body.iter().all(u8::is_ascii_whitespace) {
            return Err(KickoffError::InvalidBody {
                message: "a POST kick-off carries a FHIR Parameters resource (`{\"resourceType\":\"Parameters\"}` asks for every default); the body is empty".into(),
            });
        }
        if let Some(ct) = input.content_type {
            let media = ct
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            if !matches!(media.as_str(), "application/fhir+json" | "application/json") {
                return Err(KickoffError::UnsupportedMediaType {
                    content_type: ct.to_owned(),
                });
            }
        }
        params.extend(raw::from_parameters(input.body)?);
    }
    let request_url = match (input.method, input.query) {
        (Method::Get, Some(q)) if !q.is_empty() => format!("{}?{}", input.url, q),
        _ => input.url.clone(),
    };
    let mut b = Builder {
        req: ExportRequest {
            level: input.level.clone(),
            request_url,
            since: None,
            until: None,
            types: None,
            type_filters: Vec::new(),
            elements: Vec::new(),
            patients: Vec::new(),
            include_associated: Vec::new(),
            container: None,
            organize_output_by: None,
            allow_partial_manifests: false,
            handling: prefs.handling,
            scope: None,
            ignored: Vec::new(),
        },
        output_format: None,
        until_name: None,
    };
    for p in &params {
        b.apply(p)?;
    }
    b.cross_checks()?;
    b.capabilities(caps)?;
    b.check_filters()?;
    b.check_elements()?;
    Ok(b.req)
}

/// Drops the `patient` values not in `allowed` (unknown patients, or non-members of the
/// Group): refused under strict handling, dropped with a warning under lenient handling.
/// `patient` can only narrow an export, never widen it.
pub fn narrow_patients(
    req: &mut ExportRequest,
    allowed: &dyn Fn(&str) -> bool,
    why: &str,
) -> Result<(), KickoffError> {
    let (keep, drop): (Vec<_>, Vec<_>) = std::mem::take(&mut req.patients)
        .into_iter()
        .partition(|p| allowed(p.as_str()));
    req.patients = keep;
    if drop.is_empty() {
        return Ok(());
    }
    let list = drop
        .iter()
        .map(|p| format!("Patient/{p}"))
        .collect::<Vec<_>>()
        .join(", ");
    match req.handling {
        Handling::Strict => Err(KickoffError::InvalidParameter {
            name: "patient".into(),
            message: format!("{list}: {why}"),
        }),
        Handling::Lenient => {
            req.ignored.push(
                Issue::warning(
                    IssueCode::NotFound,
                    format!("`patient` values ignored: {list}: {why}"),
                )
                .at("patient"),
            );
            if req.patients.is_empty() {
                // Every listed patient was dropped: exporting the whole population instead
                // would widen the request.
                req.ignored.push(
                    Issue::warning(
                        IssueCode::NotFound,
                        "no listed patient remains; nothing is exported",
                    )
                    .at("patient"),
                );
                req.types = Some(Vec::new());
            }
            Ok(())
        }
    }
}

struct Builder {
    req: ExportRequest,
    output_format: Option<String>,
    until_name: Option<String>,
}

fn invalid(name: &str, message: impl Into<String>) -> KickoffError {
    KickoffError::InvalidParameter {
        name: name.to_owned(),
        message: message.into(),
    }
}

/// Comma-separated values of every occurrence, trimmed; empty items are an error.
fn list(p: &RawParam) -> Result<Vec<&str>, KickoffError> {
    let mut out = Vec::new();
    for v in &p.values {
        for item in v.split(',') {
            let item = item.trim();
            if item.is_empty() {
                return Err(invalid(&p.name, "empty value in list"));
            }
            out.push(item);
        }
    }
    Ok(out)
}

/// The single value of a 0..1 parameter.
fn single(p: &RawParam) -> Result<&str, KickoffError> {
    match p.values.as_slice() {
        [v] if !v.trim().is_empty() => Ok(v.trim()),
        [_] => Err(invalid(&p.name, "empty value")),
        _ => Err(invalid(&p.name, "expected one value")),
    }
}

fn set_once<T: PartialEq>(slot: &mut Option<T>, value: T, name: &str) -> Result<(), KickoffError> {
    match slot {
        Some(existing) if *existing != value => {
            Err(invalid(name, "given more than once with different values"))
        }
        _ => {
            *slot = Some(value);
            Ok(())
        }
    }
}

fn instant(name: &str, value: &str) -> Result<DateTime<Utc>, KickoffError> {
    parse_instant(value).map_err(|e| invalid(name, e.to_string()))
}

impl Builder {
    /// Refuses under strict handling; records and skips under lenient handling.
    fn unsupported(&mut self, name: &str, message: String) -> Result<(), KickoffError> {
        match self.req.handling {
            Handling::Strict => Err(KickoffError::UnsupportedParameter {
                name: name.to_owned(),
                message,
            }),
            Handling::Lenient => {
                self.req.ignored.push(
                    Issue::warning(
                        IssueCode::NotSupported,
                        format!("`{name}` ignored under lenient handling: {message}"),
                    )
                    .at(name),
                );
                Ok(())
            }
        }
    }

    fn apply(&mut self, p: &RawParam) -> Result<(), KickoffError> {
        let name = p.name.as_str();
        match name {
            "_outputFormat" => {
                let v = single(p)?;
                if !OUTPUT_FORMATS.contains(&v) {
                    return Err(invalid(
                        name,
                        format!(
                            "`{v}` is not supported; use application/fhir+ndjson, application/ndjson or ndjson"
                        ),
                    ));
                }
                set_once(&mut self.output_format, v.to_owned(), name)
            }
            "_since" => {
                let t = instant(name, single(p)?)?;
                set_once(&mut self.req.since, t, name)
            }
            "_until" | "_till" => {
                let t = instant(name, single(p)?)?;
                if self.until_name.is_none() {
                    self.until_name = Some(name.to_owned());
                }
                set_once(&mut self.req.until, t, "_until/_till")
            }
            "_type" => {
                let mut types = self.req.types.take().unwrap_or_default();
                for v in list(p)? {
                    match ResourceType::parse(v) {
                        Ok(t) if !types.contains(&t) => types.push(t),
                        Ok(_) => {}
                        Err(e) => self.unsupported(name, e.to_string())?,
                    }
                }
                self.req.types = Some(types);
                Ok(())
            }
            "_elements" => {
                for v in list(p)? {
                    match ElementSelector::parse(v) {
                        Ok(s) => self.req.elements.push(s),
                        Err(e @ super::elements::ElementSyntaxError::UnknownType(..)) => {
                            self.unsupported(name, e.to_string())?
                        }
                        Err(e) => return Err(invalid(name, e.to_string())),
                    }
                }
                Ok(())
            }
            "_typeFilter" => {
                for v in &p.values {
                    let f =
                        TypeFilter::parse(v.trim()).map_err(|e| invalid(name, e.to_string()))?;
                    self.req.type_filters.push(f);
                }
                Ok(())
            }
            "patient" => {
                for v in list(p)? {
                    match ResourceRef::parse(v) {
                        Some(r) if r.resource_type == ResourceType::PATIENT => {
                            if !self.req.patients.contains(&r.id) {
                                self.req.patients.push(r.id);
                            }
                        }
                        _ => {
                            return Err(invalid(
                                name,
                                format!("`{v}` is not a reference to a Patient (Patient/[id])"),
                            ));
                        }
                    }
                }
                Ok(())
            }
            "includeAssociatedData" => {
                for v in list(p)? {
                    let value = match v {
                        "LatestProvenanceResources" => AssociatedData::LatestProvenanceResources,
                        "RelevantProvenanceResources" => {
                            AssociatedData::RelevantProvenanceResources
                        }
                        other => {
                            self.unsupported(
                                name,
                                format!("`{other}` is not a supported value (LatestProvenanceResources, RelevantProvenanceResources)"),
                            )?;
                            continue;
                        }
                    };
                    if !self.req.include_associated.contains(&value) {
                        self.req.include_associated.push(value);
                    }
                }
                Ok(())
            }
            "_container" => {
                let v = single(p)?;
                if !crate::layout::valid_container(v) {
                    return Err(invalid(
                        name,
                        format!(
                            "`{v}` is not a valid container name (3-63 lowercase letters, digits and single hyphens, starting and ending with a letter or digit)"
                        ),
                    ));
                }
                set_once(&mut self.req.container, v.to_owned(), name)
            }
            "organizeOutputBy" => {
                let v = single(p)?;
                match ResourceType::parse(v) {
                    Ok(t) => set_once(&mut self.req.organize_output_by, t, name),
                    Err(e) => self.unsupported(name, e.to_string()),
                }
            }
            "allowPartialManifests" => {
                let v = match single(p)? {
                    "true" => true,
                    "false" => false,
                    other => {
                        return Err(invalid(name, format!("`{other}` is not `true` or `false`")));
                    }
                };
                self.req.allow_partial_manifests |= v;
                Ok(())
            }
            _ => match self.req.handling {
                Handling::Strict => Err(KickoffError::UnknownParameter {
                    name: name.to_owned(),
                }),
                Handling::Lenient => {
                    self.req.ignored.push(
                        Issue::warning(
                            IssueCode::NotSupported,
                            format!("unknown parameter `{name}` ignored under lenient handling"),
                        )
                        .at(name),
                    );
                    Ok(())
                }
            },
        }
    }

    fn cross_checks(&mut self) -> Result<(), KickoffError> {
        if let (Some(since), Some(until)) = (self.req.since, self.req.until)
            && until <= since
        {
            let name = self.until_name.clone().unwrap_or_else(|| "_until".into());
            return Err(invalid(&name, "must be later than `_since`"));
        }
        if self.req.level == ExportLevel::System && !self.req.patients.is_empty() {
            self.req.patients.clear();
            self.unsupported(
                "patient",
                "`patient` applies to Patient and Group level exports only".into(),
            )?;
        }
        if self.req.is_patient_level()
            && let Some(types) = self.req.types.take()
        {
            // Clients send their whole type list at every level: types outside the
            // compartment are left out with a warning, and only a list with none inside it
            // is an error (Bulk Data IG: "only non-compartment types at Patient/Group level").
            let (keep, drop): (Vec<_>, Vec<_>) =
                types.into_iter().partition(|t| in_patient_compartment(*t));
            let none_left = keep.is_empty() && !drop.is_empty();
            self.req.types = Some(keep);
            if !drop.is_empty() {
                let names = drop
                    .iter()
                    .map(|t| t.as_str())
                    .collect::<Vec<_>>()
                    .join(", ");
                if none_left {
                    self.unsupported(
                        "_type",
                        format!("none of {names} is in the Patient compartment, so a Patient or Group level export has nothing to export"),
                    )?;
                } else {
                    self.req.ignored.push(
                        Issue::warning(
                            IssueCode::NotSupported,
                            format!("`_type`: {names} left out: not in the Patient compartment, which is all a Patient or Group level export holds"),
                        )
                        .at("_type"),
                    );
                }
            }
        }
        if let Some(t) = self.req.organize_output_by
            && t != ResourceType::PATIENT
        {
            self.req.organize_output_by = None;
            self.unsupported(
                "organizeOutputBy",
                format!("output can be organized by Patient only, not by {t}"),
            )?;
        }
        Ok(())
    }

    /// Compiles every `_typeFilter`: malformed ones are refused whatever the handling;
    /// unsupported ones are refused under strict handling, and under lenient handling their
    /// type is exported unfiltered (dropping one filter of an OR would narrow it wrongly).
    fn check_filters(&mut self) -> Result<(), KickoffError> {
        let mut unfiltered: Vec<(ResourceType, String)> = Vec::new();
        for f in &self.req.type_filters {
            match crate::search::CompiledFilter::compile(f) {
                Ok(_) => {}
                Err(crate::search::FilterError::Invalid { param, reason }) => {
                    return Err(invalid(
                        "_typeFilter",
                        format!("`{}`: `{param}`: {reason}", f.raw),
                    ));
                }
                Err(crate::search::FilterError::Unsupported { param, reason }) => {
                    unfiltered.push((f.resource_type, format!("`{}`: `{param}` {reason}", f.raw)));
                }
            }
        }
        for (t, why) in unfiltered {
            if !self.req.type_filters.iter().any(|f| f.resource_type == t) {
                continue;
            }
            self.req.type_filters.retain(|f| f.resource_type != t);
            self.unsupported(
                "_typeFilter",
                format!("{why}; {t} is exported without any of its filters"),
            )?;
        }
        Ok(())
    }

    fn check_elements(&mut self) -> Result<(), KickoffError> {
        let types = self.req.types.clone();
        let selectors = std::mem::take(&mut self.req.elements);
        for s in selectors {
            match crate::elements::check(&s, types.as_deref()) {
                Ok(()) => self.req.elements.push(s),
                Err(e) => self.unsupported("_elements", e.to_string())?,
            }
        }
        Ok(())
    }

    fn capabilities(&mut self, caps: &Capabilities) -> Result<(), KickoffError> {
        if !caps.type_filter && !self.req.type_filters.is_empty() {
            self.req.type_filters.clear();
            self.unsupported("_typeFilter", "filters are not implemented yet".into())?;
        }
        if !caps.elements && !self.req.elements.is_empty() {
            self.req.elements.clear();
            self.unsupported(
                "_elements",
                "element subsetting is not implemented yet".into(),
            )?;
        }
        if !caps.patient_param && !self.req.patients.is_empty() {
            self.req.patients.clear();
            self.unsupported(
                "patient",
                "narrowing to patients is not implemented yet".into(),
            )?;
        }
        if !caps.include_associated_data && !self.req.include_associated.is_empty() {
            self.req.include_associated.clear();
            self.unsupported(
                "includeAssociatedData",
                "associated Provenance selection is not implemented yet".into(),
            )?;
        }
        if !caps.organize_output_by && self.req.organize_output_by.is_some() {
            self.req.organize_output_by = None;
            self.unsupported(
                "organizeOutputBy",
                "output organized by patient is not implemented yet".into(),
            )?;
        }
        if !caps.partial_manifests && self.req.allow_partial_manifests {
            self.req.allow_partial_manifests = false;
            self.unsupported(
                "allowPartialManifests",
                "partial manifests are not implemented yet".into(),
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::LogicalId;

    const ALL: Capabilities = Capabilities {
        type_filter: true,
        elements: true,
        patient_param: true,
        include_associated_data: true,
        organize_output_by: true,
        partial_manifests: true,
    };

    fn get(level: ExportLevel, query: &str, prefer: &str) -> KickoffInput<'static> {
        KickoffInput {
            level,
            method: Method::Get,
            query: Some(Box::leak(query.to_owned().into_boxed_str())),
            body: b"",
            content_type: None,
            accept: vec!["application/fhir+json"],
            prefer: vec![Box::leak(prefer.to_owned().into_boxed_str())],
            url: "http://h/fhir/$export".into(),
        }
    }

    fn ok(query: &str) -> ExportRequest {
        parse_kickoff(&get(ExportLevel::System, query, "respond-async"), &ALL).expect("valid")
    }

    fn err(query: &str) -> KickoffError {
        parse_kickoff(&get(ExportLevel::System, query, "respond-async"), &ALL).expect_err("invalid")
    }

    fn err_name(e: &KickoffError) -> String {
        e.expression().unwrap_or_default()
    }

    #[test]
    fn minimal_request() {
        let r = ok("");
        assert_eq!(r.level, ExportLevel::System);
        assert_eq!(r.types, None);
        assert_eq!(r.request_url, "http://h/fhir/$export");
        assert_eq!(r.handling, Handling::Strict);
    }

    #[test]
    fn output_formats() {
        for f in ["application/fhir%2Bndjson", "application/ndjson", "ndjson"] {
            ok(&format!("_outputFormat={f}"));
        }
        assert_eq!(err_name(&err("_outputFormat=text/csv")), "_outputFormat");
    }

    #[test]
    fn since_until_and_till() {
        let r = ok("_since=2024-01-01T00:00:00Z&_till=2024-06-01T00:00:00+02:00");
        assert!(r.since.is_some() && r.until.is_some());
        assert_eq!(err_name(&err("_since=yesterday")), "_since");
        assert_eq!(err_name(&err("_since=2024-01-01")), "_since");
        assert_eq!(
            err_name(&err(
                "_since=2024-06-01T00:00:00Z&_until=2024-01-01T00:00:00Z"
            )),
            "_until"
        );
        assert_eq!(
            err_name(&err(
                "_since=2024-06-01T00:00:00Z&_since=2024-07-01T00:00:00Z"
            )),
            "_since"
        );
    }

    #[test]
    fn types_repeat_and_comma_join() {
        let r = ok("_type=Patient,Observation&_type=Condition&_type=Patient");
        let names: Vec<_> = r.types.expect("types").iter().map(|t| t.as_str()).collect();
        assert_eq!(names, vec!["Patient", "Observation", "Condition"]);
        assert!(matches!(
            err("_type=Foo"),
            KickoffError::UnsupportedParameter { .. }
        ));
        assert_eq!(err_name(&err("_type=Patient,,Condition")), "_type");
    }

    #[test]
    fn unknown_parameters() {
        assert!(matches!(
            err("_foo=1"),
            KickoffError::UnknownParameter { .. }
        ));
        let r = parse_kickoff(
            &get(
                ExportLevel::System,
                "_foo=1&_type=Foo,Patient",
                "respond-async, handling=lenient",
            ),
            &ALL,
        )
        .expect("lenient");
        assert_eq!(r.ignored.len(), 2);
        assert_eq!(r.types.map(|t| t.len()), Some(1));
    }

    #[test]
    fn headers() {
        let mut i = get(ExportLevel::System, "", "respond-async");
        i.accept = vec!["text/html"];
        assert!(matches!(
            parse_kickoff(&i, &ALL),
            Err(KickoffError::NotAcceptable { .. })
        ));
        let i = get(ExportLevel::System, "", "");
        assert!(matches!(
            parse_kickoff(&i, &ALL),
            Err(KickoffError::MissingRespondAsync)
        ));
    }

    #[test]
    fn patient_level_types_outside_the_compartment_are_left_out_with_a_warning() {
        // Only non-compartment types: nothing to export, refused when strict.
        let i = get(
            ExportLevel::Patient,
            "_type=Organization,Device",
            "respond-async",
        );
        assert!(matches!(
            parse_kickoff(&i, &ALL),
            Err(KickoffError::UnsupportedParameter { name, .. }) if name == "_type"
        ));
        // A mixed list (what clients send at every level) is exported without the others,
        // under either handling, with one warning naming them.
        for prefer in ["respond-async", "respond-async,handling=lenient"] {
            for level in [
                ExportLevel::Patient,
                ExportLevel::Group(LogicalId::parse("g1").expect("id")),
            ] {
                let i = get(
                    level.clone(),
                    "_type=Organization,Patient,Device,Observation",
                    prefer,
                );
                let r = parse_kickoff(&i, &ALL).expect(prefer);
                assert_eq!(
                    r.types,
                    Some(vec![
                        ResourceType::PATIENT,
                        ResourceType::parse("Observation").expect("type")
                    ])
                );
                assert_eq!(r.ignored.len(), 1, "{:?}", r.ignored);
                let issue = &r.ignored[0];
                assert_eq!(issue.severity, crate::outcome::Severity::Warning);
                assert_eq!(issue.expression.as_deref(), Some("_type"));
                assert!(
                    issue.diagnostics.contains("Organization, Device"),
                    "{}",
                    issue.diagnostics
                );
            }
        }
        // Lenient, and nothing in the compartment: nothing is exported, with the reason.
        let i = get(
            ExportLevel::Patient,
            "_type=Organization",
            "respond-async,handling=lenient",
        );
        let r = parse_kickoff(&i, &ALL).expect("lenient");
        assert_eq!(r.types, Some(vec![]));
        assert_eq!(r.ignored.len(), 1);
        // At system level every type stands.
        let i = get(
            ExportLevel::System,
            "_type=Organization,Patient",
            "respond-async",
        );
        let r = parse_kickoff(&i, &ALL).expect("system");
        assert_eq!(r.types.map(|t| t.len()), Some(2));
        assert!(r.ignored.is_empty());
    }

    #[test]
    fn container_rules() {
        assert_eq!(
            ok("_container=my-export-1").container.as_deref(),
            Some("my-export-1")
        );
        for bad in ["AB", "ab", "a--b", "-ab", "ab_c", "../x"] {
            assert_eq!(
                err_name(&err(&format!("_container={bad}"))),
                "_container",
                "{bad}"
            );
        }
    }

    #[test]
    fn unimplemented_features_are_refused_when_strict() {
        let none = Capabilities::NONE;
        for (q, name) in [
            ("_typeFilter=Observation%3Fstatus%3Dfinal", "_typeFilter"),
            ("_elements=id", "_elements"),
            ("allowPartialManifests=true", "allowPartialManifests"),
            ("organizeOutputBy=Patient", "organizeOutputBy"),
            (
                "includeAssociatedData=LatestProvenanceResources",
                "includeAssociatedData",
            ),
        ] {
            let e =
                parse_kickoff(&get(ExportLevel::Patient, q, "respond-async"), &none).expect_err(q);
            assert!(
                matches!(&e, KickoffError::UnsupportedParameter { name: n, .. } if n == name),
                "{q}: {e:?}"
            );
            let r = parse_kickoff(
                &get(ExportLevel::Patient, q, "respond-async; handling=lenient"),
                &none,
            )
            .expect(q);
            assert_eq!(r.ignored.len(), 1, "{q}");
            assert!(r.type_filters.is_empty() && r.elements.is_empty());
            assert!(!r.allow_partial_manifests && r.organize_output_by.is_none());
        }
        // Malformed values are refused whatever the handling.
        let e = parse_kickoff(
            &get(
                ExportLevel::System,
                "_typeFilter=Observation",
                "respond-async; handling=lenient",
            ),
            &none,
        )
        .expect_err("malformed");
        assert!(matches!(e, KickoffError::InvalidParameter { .. }));
    }

    #[test]
    fn post_parameters() {
        let body = br#"{"resourceType":"Parameters","parameter":[
            {"name":"_type","valueString":"Patient,Observation"},
            {"name":"patient","valueReference":{"reference":"Patient/a"}},
            {"name":"patient","valueReference":{"reference":"Patient/b"}},
            {"name":"_typeFilter","valueString":"Observation?code=a,b"}]}"#;
        let i = KickoffInput {
            level: ExportLevel::Group(LogicalId::parse("g1").expect("id")),
            method: Method::Post,
            query: None,
            body,
            content_type: Some("application/fhir+json; charset=utf-8"),
            accept: vec![],
            prefer: vec!["respond-async"],
            url: "http://h/fhir/Group/g1/$export".into(),
        };
        let r = parse_kickoff(&i, &ALL).expect("post");
        assert_eq!(r.patients.len(), 2);
        assert_eq!(r.type_filters[0].params[0].value, "a,b");
        assert_eq!(r.request_url, "http://h/fhir/Group/g1/$export");
        let mut bad = i.clone();
        bad.content_type = Some("text/plain");
        assert!(matches!(
            parse_kickoff(&bad, &ALL),
            Err(KickoffError::UnsupportedMediaType { .. })
        ));
        let mut sys = i.clone();
        sys.level = ExportLevel::System;
        assert!(matches!(
            parse_kickoff(&sys, &ALL),
            Err(KickoffError::UnsupportedParameter { name, .. }) if name == "patient"
        ));
        let body = br#"{"resourceType":"Parameters","parameter":[{"name":"patient","valueReference":{"reference":"Observation/1"}}]}"#;
        let mut wrong = i.clone();
        wrong.body = body;
        assert!(matches!(
            parse_kickoff(&wrong, &ALL),
            Err(KickoffError::InvalidParameter { name, .. }) if name == "patient"
        ));
    }
}
