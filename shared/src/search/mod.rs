//! `_typeFilter` evaluation: FHIR R4 search (https://hl7.org/fhir/R4/search.html) run in
//! memory against a resource's JSON.
//!
//! [`CompiledFilter::compile`] turns one parsed filter into a matcher, resolving every
//! parameter through the generated tables of [`crate::fhir_defs`] and parsing every value up
//! front; [`CompiledFilter::matches`] then walks the resource without allocating (except to
//! fold non-ASCII text for `:contains`). A filter's parameters are ANDed (a repeated name
//! too); comma-separated values of one parameter are ORed. [`TypeFilterSet`] holds all the
//! filters of a request: filters of one type are ORed, types without filters are not filtered.
//!
//! What is evaluated: token, reference, date, string, number, quantity and uri parameters whose
//! expressions the tables translate, with `:missing` on all of them, `:not`, `:text` and
//! `:of-type` on tokens, `:exact` and `:contains` on strings, `:[Type]` on references, and
//! `:below`/`:above` on uris. The per-type rules, and the choices R4 leaves open, are in the
//! submodules' docs (`date`: `ap` and zones; `number`: precision; `token`: implicit systems;
//! `reference`: bases; `fold`: accent folding).
//!
//! [`FilterError::Unsupported`] is valid FHIR that is not implemented here: unknown parameters
//! (for the type), chains (`subject.name`, `subject:Patient.name`), `_has`, composite and
//! special parameters, parameters the tables mark unsupported (`Patient?email`, `_text`, ...),
//! and modifiers not listed above (`:in`, `:below` on tokens, `:identifier`, ...).
//! [`FilterError::Invalid`] is a malformed value: a bad date, number, prefix, token, reference,
//! or `:missing` value. When a parameter is both, `Invalid` wins: it is an error under every
//! handling.
//!
//! A value of a datatype the parameter's type cannot compare (`Procedure.performedString` for
//! `date`, `Observation.valueSampledData` for `value-quantity`) matches no search value, and
//! counts as present for `:missing`.

mod date;
mod escape;
mod fold;
mod number;
mod or_index;
mod reference;
mod text;
mod token;

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::fhir_defs::{self, SearchParamType};
use crate::model::ResourceType;
use crate::request::{FilterParam, TypeFilter};
use date::DateCmp;
use escape::{split_unescaped, unescape};
use number::{NumCmp, QtyCmp, number_target};
use or_index::OrList;
use reference::{RefSet, RefValue, reference_type};
use text::{StringMode, StringValue};
use token::{OfType, TokenSet, TokenText, TokenValue, UriMode, uri_matches};

/// Why a filter cannot be used. `Unsupported` = valid FHIR we do not implement (the caller
/// refuses it under strict handling, ignores it with a warning under lenient); `Invalid` =
/// malformed (always 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    #[error("`{param}` is not supported: {reason}")]
    Unsupported { param: String, reason: String },
    #[error("`{param}` is invalid: {reason}")]
    Invalid { param: String, reason: String },
}

impl FilterError {
    /// The parameter as written, `name` or `name:modifier`.
    pub fn param(&self) -> &str {
        match self {
            FilterError::Unsupported { param, .. } | FilterError::Invalid { param, .. } => param,
        }
    }

    pub fn is_invalid(&self) -> bool {
        matches!(self, FilterError::Invalid { .. })
    }
}

/// One `_typeFilter` query, compiled.
#[derive(Debug, Clone)]
pub struct CompiledFilter {
    resource_type: ResourceType,
    params: Vec<CompiledParam>,
}

impl CompiledFilter {
    /// Compiles every parameter; fails on the first `Invalid` one, else on the first
    /// `Unsupported` one. `ap` on dates is relative to now; see [`CompiledFilter::compile_at`].
    pub fn compile(filter: &TypeFilter) -> Result<CompiledFilter, FilterError> {
        CompiledFilter::compile_at(filter, Utc::now())
    }

    /// [`CompiledFilter::compile`] with `now` for date `ap` (10% of the gap between now and
    /// the value): pass the export's transaction time to make every chunk agree.
    pub fn compile_at(
        filter: &TypeFilter,
        now: DateTime<Utc>,
    ) -> Result<CompiledFilter, FilterError> {
        let (compiled, mut skipped) = compile_filter(filter, now)?;
        match skipped.is_empty() {
            true => Ok(compiled),
            false => Err(skipped.swap_remove(0)),
        }
    }

    /// Compiles the parameters that can be evaluated and returns the `Unsupported` ones
    /// separately, for `Prefer: handling=lenient`. Dropping ANDed parameters only widens the
    /// filter, so the result keeps every resource the full filter would (a filter left with
    /// no parameters matches every resource of its type). `Invalid` parameters still fail.
    pub fn compile_lenient(
        filter: &TypeFilter,
    ) -> Result<(CompiledFilter, Vec<FilterError>), FilterError> {
        compile_filter(filter, Utc::now())
    }

    pub fn resource_type(&self) -> ResourceType {
        self.resource_type
    }

    /// Whether the resource (already known to be of the filter's type) matches: all
    /// parameters ANDed.
    pub fn matches(&self, resource: &Value) -> bool {
        self.params.iter().all(|p| p.matches(resource))
    }
}

fn compile_filter(
    filter: &TypeFilter,
    now: DateTime<Utc>,
) -> Result<(CompiledFilter, Vec<FilterError>), FilterError> {
    let now = now.timestamp_micros();
    let mut params = Vec::with_capacity(filter.params.len());
    let mut skipped = Vec::new();
    for p in &filter.params {
        match compile_param(filter.resource_type, p, now) {
            Ok(c) => params.push(c),
            Err(e @ FilterError::Invalid { .. }) => return Err(e),
            Err(e) => skipped.push(e),
        }
    }
    let compiled = CompiledFilter {
        resource_type: filter.resource_type,
        params,
    };
    Ok((compiled, skipped))
}

/// Every filter of a request, grouped by type: several filters of one type are ORed; a type
/// without filters is not filtered.
#[derive(Debug, Clone, Default)]
pub struct TypeFilterSet {
    by_type: Vec<(ResourceType, OrList)>,
}

impl TypeFilterSet {
    /// Compiles every filter; fails on the first `Invalid` parameter of any filter, else on
    /// the first `Unsupported` one.
    pub fn compile(filters: &[TypeFilter]) -> Result<TypeFilterSet, FilterError> {
        TypeFilterSet::compile_at(filters, Utc::now())
    }

    /// [`TypeFilterSet::compile`] with `now` for date `ap`, as [`CompiledFilter::compile_at`].
    pub fn compile_at(
        filters: &[TypeFilter],
        now: DateTime<Utc>,
    ) -> Result<TypeFilterSet, FilterError> {
        let (set, mut skipped) = compile_set(filters, now)?;
        match skipped.is_empty() {
            true => Ok(set),
            false => Err(skipped.swap_remove(0)),
        }
    }

    /// [`CompiledFilter::compile_lenient`] for every filter: unsupported parameters are
    /// dropped from their filter (never the whole filter, which would narrow the OR) and
    /// returned as warnings.
    pub fn compile_lenient(
        filters: &[TypeFilter],
    ) -> Result<(TypeFilterSet, Vec<FilterError>), FilterError> {
        compile_set(filters, Utc::now())
    }

    pub fn from_compiled(filters: impl IntoIterator<Item = CompiledFilter>) -> TypeFilterSet {
        let mut grouped: Vec<(ResourceType, Vec<CompiledFilter>)> = Vec::new();
        for f in filters {
            match grouped.iter_mut().find(|(t, _)| *t == f.resource_type) {
                Some((_, list)) => list.push(f),
                None => grouped.push((f.resource_type, vec![f])),
            }
        }
        TypeFilterSet {
            by_type: grouped
                .into_iter()
                .map(|(t, list)| (t, OrList::new(merge_ors(list))))
                .collect(),
        }
    }

    /// The top-level elements the filters of `t` look at (`code`, `meta`, ...): a resource
    /// parsed with only these answers every filter as the whole resource would.
    pub fn roots(&self, t: ResourceType) -> Vec<&'static str> {
        let mut roots: Vec<&'static str> = Vec::new();
        for (_, filters) in self.by_type.iter().filter(|(ty, _)| *ty == t) {
            for p in filters.filters().iter().flat_map(|f| &f.params) {
                for path in &p.paths {
                    if let Some(root) = path.segments.first()
                        && !roots.contains(root)
                    {
                        roots.push(root);
                    }
                }
            }
        }
        roots
    }

    /// How many filters a resource of `t` is tried against (after merging).
    pub fn filters_of(&self, t: ResourceType) -> usize {
        self.by_type
            .iter()
            .find(|(ty, _)| *ty == t)
            .map_or(0, |(_, list)| list.filters().len())
    }

    pub fn is_empty(&self) -> bool {
        self.by_type.is_empty()
    }

    pub fn is_filtered(&self, resource_type: ResourceType) -> bool {
        self.by_type.iter().any(|(t, _)| *t == resource_type)
    }

    /// Whether a resource of the type is kept: it matches any filter of its type, or its type
    /// has none.
    pub fn matches(&self, resource_type: ResourceType, resource: &Value) -> bool {
        match self.by_type.iter().find(|(t, _)| *t == resource_type) {
            Some((_, filters)) => filters.matches(resource),
            None => true,
        }
    }
}

/// Filters of one type are ORed. Those that are a single positive token or reference
/// parameter (`Observation?code=a`, `Observation?code=b`, ...: what a client sends to select
/// by a list too long for one URL) become one filter whose value set is their union, which
/// matches exactly what any of them matched, at the cost of one lookup instead of one
/// evaluation per filter.
fn merge_ors(filters: Vec<CompiledFilter>) -> Vec<CompiledFilter> {
    let mut out: Vec<CompiledFilter> = Vec::with_capacity(filters.len());
    let mut by_param: std::collections::HashMap<String, usize> = Default::default();
    for mut f in filters {
        let single = match f.params.as_slice() {
            [p] if matches!(p.test, Test::Token(_) | Test::Reference(_)) => Some(p.label.clone()),
            _ => None,
        };
        let Some(label) = single else {
            out.push(f);
            continue;
        };
        match by_param.get(&label) {
            Some(&i) => {
                let Some(param) = f.params.pop() else {
                    continue;
                };
                match (&mut out[i].params[0].test, param.test) {
                    (Test::Token(into), Test::Token(from)) => into.absorb(from),
                    (Test::Reference(into), Test::Reference(from)) => into.absorb(from),
                    // The same label always compiles to the same kind of test.
                    (_, test) => out.push(CompiledFilter {
                        resource_type: f.resource_type,
                        params: vec![CompiledParam { test, ..param }],
                    }),
                }
            }
            None => {
                by_param.insert(label, out.len());
                out.push(f);
            }
        }
    }
    out
}

/// How many values a filter's parameters hold (for the kick-off's limits).
pub fn filter_values(filter: &TypeFilter) -> usize {
    filter
        .params
        .iter()
        .map(|p| split_unescaped(&p.value, ',').len())
        .sum()
}

fn compile_set(
    filters: &[TypeFilter],
    now: DateTime<Utc>,
) -> Result<(TypeFilterSet, Vec<FilterError>), FilterError> {
    let mut compiled = Vec::with_capacity(filters.len());
    let mut skipped = Vec::new();
    for f in filters {
        let (c, s) = compile_filter(f, now)?;
        compiled.push(c);
        skipped.extend(s);
    }
    Ok((TypeFilterSet::from_compiled(compiled), skipped))
}

/// The search parameters of a type that `_typeFilter` can evaluate (what the
/// CapabilityStatement lists): those whose expressions the tables translate, of a search type
/// this module compares.
pub fn filterable_params(
    resource_type: ResourceType,
) -> impl Iterator<Item = &'static fhir_defs::SearchParamDef> {
    fhir_defs::search_params(resource_type.as_str()).filter(|p| {
        p.unsupported.is_none()
            && !matches!(
                p.kind,
                SearchParamType::Composite | SearchParamType::Special
            )
    })
}

/// A search prefix (R4 search §prefixes); `eq` when absent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Prefix {
    Eq,
    Ne,
    Gt,
    Lt,
    Ge,
    Le,
    Sa,
    Eb,
    Ap,
}

impl Prefix {
    /// Splits a leading prefix off a date, number or quantity value.
    fn split(value: &str) -> Result<(Prefix, &str), String> {
        let b = value.as_bytes();
        if b.len() < 2 || !b[0].is_ascii_alphabetic() {
            return Ok((Prefix::Eq, value));
        }
        let prefix = match &b[..2] {
            b"eq" => Prefix::Eq,
            b"ne" => Prefix::Ne,
            b"gt" => Prefix::Gt,
            b"lt" => Prefix::Lt,
            b"ge" => Prefix::Ge,
            b"le" => Prefix::Le,
            b"sa" => Prefix::Sa,
            b"eb" => Prefix::Eb,
            b"ap" => Prefix::Ap,
            _ => {
                let p = value.get(..2).unwrap_or(value);
                return Err(format!(
                    "`{p}` is not a search prefix (eq, ne, gt, lt, ge, le, sa, eb, ap)"
                ));
            }
        };
        Ok((prefix, &value[2..]))
    }
}

/// How a path's values are compared, given the parameter's type and the path's FHIR datatype.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Datatype {
    /// A string-valued primitive: `code`, `string`, `id`, `uri`, ...
    Text,
    /// `canonical` (or `uri`) holding a reference or profile URL.
    Canonical,
    Boolean,
    Coding,
    CodeableConcept,
    Identifier,
    ContactPoint,
    Reference,
    /// `date`, `dateTime`, `instant`.
    DateTime,
    Period,
    Timing,
    HumanName,
    Address,
    /// Quantity and its profiles and specializations (Age, Duration, ...).
    Quantity,
    Money,
    Range,
    /// `decimal`, `integer`, ...
    Number,
    /// Present, but not comparable for this parameter type.
    Other,
}

impl Datatype {
    /// Mirrors `EVALUABLE` in `scripts/gen-fhir-defs.py`.
    fn of(kind: SearchParamType, name: &str) -> Datatype {
        use Datatype as D;
        use SearchParamType as K;
        match (kind, name) {
            (K::Token, "code" | "string" | "id" | "uri" | "url" | "canonical" | "oid" | "uuid") => {
                D::Text
            }
            (K::Token, "boolean") => D::Boolean,
            (K::Token, "Coding") => D::Coding,
            (K::Token, "CodeableConcept") => D::CodeableConcept,
            (K::Token, "Identifier") => D::Identifier,
            (K::Token, "ContactPoint") => D::ContactPoint,
            (K::Reference, "Reference") => D::Reference,
            (K::Reference, "canonical" | "uri" | "url") => D::Canonical,
            (K::Date, "date" | "dateTime" | "instant") => D::DateTime,
            (K::Date, "Period") => D::Period,
            (K::Date, "Timing") => D::Timing,
            (K::String, "string" | "markdown") => D::Text,
            (K::String, "HumanName") => D::HumanName,
            (K::String, "Address") => D::Address,
            (
                K::Quantity,
                "Quantity" | "Age" | "Duration" | "Count" | "Distance" | "SimpleQuantity"
                | "MoneyQuantity",
            ) => D::Quantity,
            (K::Quantity, "Money") => D::Money,
            (K::Quantity, "Range") => D::Range,
            (K::Number, "decimal" | "integer" | "positiveInt" | "unsignedInt") => D::Number,
            (K::Uri, "uri" | "url" | "oid" | "uuid") => D::Text,
            (K::Uri, "canonical") => D::Canonical,
            _ => D::Other,
        }
    }
}

#[derive(Debug, Clone)]
struct CompiledPath {
    segments: Box<[&'static str]>,
    datatype: Datatype,
    /// `resolve() is Type`: only references to this type are values of the path.
    target: Option<&'static str>,
}

impl CompiledPath {
    fn accepts(&self, v: &Value) -> bool {
        self.target.is_none_or(|t| reference_type(v) == Some(t))
    }
}

#[derive(Debug, Clone)]
enum Test {
    /// `:missing=true` (true) or `:missing=false`.
    Missing(bool),
    Token(TokenSet),
    /// `:not`: no value of the element matches any of these.
    NotToken(TokenSet),
    TokenText(Box<[TokenText]>),
    OfType(Box<[OfType]>),
    Reference(RefSet),
    Date(Box<[DateCmp]>),
    String(Box<[StringValue]>),
    Number(Box<[NumCmp]>),
    Quantity(Box<[QtyCmp]>),
    Uri(UriMode, Box<[String]>),
}

#[derive(Debug, Clone)]
struct CompiledParam {
    /// The parameter as written, `name` or `name:modifier` (which paths and test follow).
    label: String,
    paths: Box<[CompiledPath]>,
    test: Test,
}

impl CompiledParam {
    fn matches(&self, resource: &Value) -> bool {
        match &self.test {
            Test::Missing(missing) => self.present(resource) != *missing,
            Test::NotToken(_) => !self.any_value(resource),
            _ => self.any_value(resource),
        }
    }

    fn present(&self, resource: &Value) -> bool {
        self.paths
            .iter()
            .any(|p| walk(resource, &p.segments, &mut |v| p.accepts(v)))
    }

    fn any_value(&self, resource: &Value) -> bool {
        self.paths.iter().any(|p| {
            p.datatype != Datatype::Other
                && walk(resource, &p.segments, &mut |v| {
                    p.accepts(v) && value_matches(&self.test, p.datatype, v)
                })
        })
    }
}

/// Whether `f` holds for any non-empty value at `segments` below `v`; arrays are flattened at
/// every step (FHIRPath navigation).
fn walk(v: &Value, segments: &[&str], f: &mut dyn FnMut(&Value) -> bool) -> bool {
    match v {
        Value::Array(items) => items.iter().any(|item| walk(item, segments, f)),
        Value::Null => false,
        _ => match segments.split_first() {
            None => !is_empty(v) && f(v),
            Some((head, rest)) => v.get(*head).is_some_and(|child| walk(child, rest, f)),
        },
    }
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::String(s) => s.is_empty(),
        Value::Object(m) => m.is_empty(),
        Value::Null => true,
        _ => false,
    }
}

fn value_matches(test: &Test, dt: Datatype, v: &Value) -> bool {
    match test {
        Test::Missing(_) => false,
        Test::Token(set) | Test::NotToken(set) => set.matches(dt, v),
        Test::TokenText(vs) => vs.iter().any(|t| t.matches(dt, v)),
        Test::OfType(vs) => vs.iter().any(|t| t.matches(dt, v)),
        Test::Reference(set) => set.matches(dt, v),
        Test::Date(cmps) => {
            date::target_range(dt, v).is_some_and(|r| cmps.iter().any(|c| c.matches(r)))
        }
        Test::String(vs) => vs.iter().any(|s| s.matches(dt, v)),
        Test::Number(cmps) => {
            dt == Datatype::Number
                && number_target(v).is_some_and(|r| cmps.iter().any(|c| c.matches(r)))
        }
        Test::Quantity(cmps) => cmps.iter().any(|q| q.matches(dt, v)),
        Test::Uri(mode, vs) => vs.iter().any(|s| uri_matches(*mode, s, dt, v)),
    }
}

fn compile_param(
    resource_type: ResourceType,
    p: &FilterParam,
    now_micros: i64,
) -> Result<CompiledParam, FilterError> {
    let label = match &p.modifier {
        Some(m) => format!("{}:{m}", p.name),
        None => p.name.clone(),
    };
    let unsupported = |reason: String| FilterError::Unsupported {
        param: label.clone(),
        reason,
    };
    let invalid = |reason: String| FilterError::Invalid {
        param: label.clone(),
        reason,
    };
    if p.name == "_has" {
        return Err(unsupported(
            "reverse chaining (`_has`) is not supported".into(),
        ));
    }
    if p.name.contains('.') || p.modifier.as_deref().is_some_and(|m| m.contains('.')) {
        return Err(unsupported("chained parameters are not supported".into()));
    }
    let def = fhir_defs::search_param(resource_type.as_str(), &p.name).ok_or_else(|| {
        unsupported(format!(
            "FHIR R4 defines no search parameter of that name for {resource_type}"
        ))
    })?;
    if let Some(reason) = def.unsupported {
        return Err(unsupported(format!(
            "this search parameter cannot be evaluated: {reason}"
        )));
    }
    let kind = def.kind;
    let paths: Box<[CompiledPath]> = def
        .paths
        .iter()
        .map(|sp| CompiledPath {
            segments: sp.path.split('.').collect(),
            datatype: Datatype::of(kind, sp.datatype),
            target: sp.target,
        })
        .collect();
    let modifier = p.modifier.as_deref();
    if modifier == Some("missing") {
        let missing = match p.value.as_str() {
            "true" => true,
            "false" => false,
            other => {
                return Err(invalid(format!(
                    "`:missing` takes `true` or `false`, not `{other}`"
                )));
            }
        };
        return Ok(CompiledParam {
            label,
            paths,
            test: Test::Missing(missing),
        });
    }
    let values = split_unescaped(&p.value, ',');
    if values.iter().any(|v| v.is_empty()) {
        return Err(invalid(format!("`{}` has an empty value", p.value)));
    }
    fn all<T>(values: &[&str], f: impl Fn(&str) -> Result<T, String>) -> Result<Box<[T]>, String> {
        values.iter().map(|v| f(v)).collect()
    }
    let tokens = |values: &[&str]| -> Result<TokenSet, String> {
        Ok(TokenSet::new(all(values, TokenValue::parse)?.into_vec()))
    };
    let refs = |values: &[&str], ty: Option<ResourceType>| -> Result<RefSet, String> {
        Ok(RefSet::new(
            all(values, |v| RefValue::parse(&unescape(v), ty))?.into_vec(),
        ))
    };
    use SearchParamType as K;
    let compiled = match (kind, modifier) {
        (K::Token, None) => tokens(&values).map(Test::Token),
        (K::Token, Some("not")) => tokens(&values).map(Test::NotToken),
        (K::Token, Some("text")) => all(&values, |v| Ok(TokenText::parse(v))).map(Test::TokenText),
        (K::Token, Some("of-type")) => all(&values, OfType::parse).map(Test::OfType),
        (K::Reference, None) => refs(&values, None).map(Test::Reference),
        (K::Reference, Some(m)) if ResourceType::parse(m).is_ok() => {
            refs(&values, ResourceType::parse(m).ok()).map(Test::Reference)
        }
        (K::Date, None) => {
            all(&values, |v| DateCmp::parse(&unescape(v), now_micros)).map(Test::Date)
        }
        (K::String, None | Some("exact" | "contains")) => {
            let mode = match modifier {
                Some("exact") => StringMode::Exact,
                Some("contains") => StringMode::Contains,
                _ => StringMode::Prefix,
            };
            all(&values, |v| Ok(StringValue::parse(v, mode))).map(Test::String)
        }
        (K::Number, None) => all(&values, |v| NumCmp::parse(&unescape(v))).map(Test::Number),
        (K::Quantity, None) => all(&values, QtyCmp::parse).map(Test::Quantity),
        (K::Uri, None | Some("below" | "above")) => {
            let mode = match modifier {
                Some("below") => UriMode::Below,
                Some("above") => UriMode::Above,
                _ => UriMode::Exact,
            };
            let uris = values.iter().map(|v| unescape(v)).collect();
            Ok(Test::Uri(mode, uris))
        }
        (K::Composite | K::Special, _) => {
            return Err(unsupported(format!(
                "{} search parameters are not supported",
                kind.as_str()
            )));
        }
        (_, Some(m)) => {
            return Err(unsupported(format!(
                "the modifier `:{m}` is not supported on {} parameters",
                kind.as_str()
            )));
        }
    };
    let test = compiled.map_err(invalid)?;
    Ok(CompiledParam { label, paths, test })
}

#[cfg(test)]
mod tests;
