//! Which source lines an export keeps, and in what form: validity, type, `transactionTime`,
//! `_since`/`_until`, the Patient compartment of the exported patients, `_typeFilter`, and
//! `_elements`.

use std::borrow::Cow;
use std::collections::HashSet;
use std::sync::Arc;

use serde_json::Value;

use crate::compartment::{compartment_roots, for_each_patient};
use crate::elements::{ElementsFilter, TypeSubset};
use crate::job::Job;
use crate::model::ResourceType;
use crate::model::ids::is_logical_id;
use crate::ndjson::partial::parse_members;
use crate::ndjson::read_head;
use crate::outcome::{Issue, IssueCode};
use crate::search::TypeFilterSet;

/// Whose compartments an export covers.
#[derive(Debug, Clone)]
pub(crate) enum Scope {
    /// System level: no compartment test.
    Everything,
    /// Patient level: resources in the compartment of any patient.
    AnyPatient,
    /// Group level, or the `patient` parameter: these patients only.
    Members(Arc<HashSet<String>>),
}

/// A line kept by the selection.
pub(crate) struct Kept<'a> {
    /// What to write: the source line, or its `_elements` subset.
    pub bytes: Cow<'a, [u8]>,
    pub id: Cow<'a, str>,
    /// The patient the resource is filed under: the smallest in-scope patient id of its
    /// compartments (so a resource shared by several exported patients has one owner).
    pub owner: Option<String>,
    /// The parsed resource, when the selection needed it.
    pub value: Option<Value>,
}

impl Kept<'_> {
    /// Whether what is written is `line` itself, with nothing else to record: the line can
    /// be written straight from the buffer it was read into.
    pub(crate) fn is_whole(&self, line: &[u8]) -> bool {
        matches!(&self.bytes, Cow::Borrowed(b) if b.as_ptr() == line.as_ptr() && b.len() == line.len())
            && self.owner.is_none()
            && self.value.is_none()
    }
}

pub(crate) enum Verdict<'a> {
    Keep(Kept<'a>),
    Skip,
    Error(Issue),
}

pub(crate) struct Selection {
    pub resource_type: ResourceType,
    since: Option<i64>,
    until: Option<i64>,
    transaction_time: i64,
    scope: Scope,
    filters: Option<Arc<TypeFilterSet>>,
    elements: Option<TypeSubset>,
    /// Keep only resources owned by one of these patients (a chunk of a source that reads by
    /// patient batch: a resource shared with a patient of another batch is that batch's
    /// when that patient owns it).
    owned: Option<Arc<HashSet<String>>>,
    /// Compute the owner even at system level (organized output, refs for Provenance).
    wants_owner: bool,
    /// Hand the parsed resource to the caller (Provenance selection).
    wants_value: bool,
    /// The top-level members the tests above look at, when a partial tree answers them
    /// (`None`: the whole resource is parsed).
    roots: Option<Vec<&'static str>>,
}

impl Selection {
    pub(crate) fn new(
        job: &Job,
        resource_type: ResourceType,
        scope: Scope,
        filters: Option<Arc<TypeFilterSet>>,
        elements: Option<Arc<ElementsFilter>>,
    ) -> Self {
        let filters = filters.filter(|f| f.is_filtered(resource_type));
        let elements = elements.and_then(|e| e.for_type(resource_type));
        Selection {
            resource_type,
            since: job.request.since.map(|t| t.timestamp_micros()),
            until: job.request.until.map(|t| t.timestamp_micros()),
            transaction_time: job.transaction_time.timestamp_micros(),
            scope,
            filters,
            elements,
            owned: None,
            wants_owner: false,
            wants_value: false,
            roots: None,
        }
        .with_roots()
    }

    pub(crate) fn owned_by(mut self, owners: Option<Arc<HashSet<String>>>) -> Self {
        self.owned = owners;
        self.with_roots()
    }

    pub(crate) fn with_owner(mut self) -> Self {
        self.wants_owner = true;
        self.with_roots()
    }

    /// No compartment test (Provenance chosen by association).
    pub(crate) fn without_scope(mut self) -> Self {
        self.scope = Scope::Everything;
        self.owned = None;
        self.with_roots()
    }

    pub(crate) fn with_value(mut self) -> Self {
        self.wants_value = true;
        self.with_roots()
    }

    /// Which members the tree needs: those of the compartment (when it is looked at) and of
    /// the filters; all of them when the caller takes the resource.
    fn with_roots(mut self) -> Self {
        self.roots = if self.wants_value {
            None
        } else {
            let mut roots = Vec::new();
            if self.wants_owner || self.owned.is_some() || !matches!(self.scope, Scope::Everything)
            {
                roots.extend(compartment_roots(self.resource_type));
            }
            if let Some(f) = &self.filters {
                for r in f.roots(self.resource_type) {
                    if !roots.contains(&r) {
                        roots.push(r);
                    }
                }
            }
            Some(roots)
        };
        self
    }

    /// The line as written: itself, or its `_elements` subset.
    fn subset<'a>(&self, line: &'a [u8]) -> Result<Cow<'a, [u8]>, Issue> {
        match &self.elements {
            Some(e) => e
                .apply(line)
                .map(Cow::Owned)
                .map_err(|e| Issue::error(IssueCode::Structure, e.to_string())),
            None => Ok(Cow::Borrowed(line)),
        }
    }

    pub(crate) fn judge<'a>(&self, line: &'a [u8]) -> Verdict<'a> {
        let head = match read_head(line) {
            Ok(h) => h,
            Err(e) => return Verdict::Error(Issue::error(IssueCode::Structure, e.to_string())),
        };
        if head.resource_type != self.resource_type.as_str() {
            return Verdict::Error(Issue::error(
                IssueCode::Structure,
                format!(
                    "resourceType `{}` in a file of {} resources",
                    head.resource_type, self.resource_type
                ),
            ));
        }
        if !is_logical_id(&head.id) {
            return Verdict::Error(Issue::error(
                IssueCode::Structure,
                "id is not a valid FHIR id",
            ));
        }
        if let Some(t) = head.last_updated
            && (t > self.transaction_time
                || self.since.is_some_and(|s| t <= s)
                || self.until.is_some_and(|u| t >= u))
        {
            return Verdict::Skip;
        }
        let id = head.id;
        let needs_tree = !matches!(self.scope, Scope::Everything)
            || self.owned.is_some()
            || self.filters.is_some()
            || self.wants_owner
            || self.wants_value;
        if !needs_tree {
            return match self.subset(line) {
                Ok(bytes) => Verdict::Keep(Kept {
                    bytes,
                    id,
                    owner: None,
                    value: None,
                }),
                Err(issue) => Verdict::Error(issue),
            };
        }
        let parsed = match &self.roots {
            Some(roots) => parse_members(line, roots),
            None => serde_json::from_slice(line),
        };
        let value: Value = match parsed {
            Ok(v) => v,
            Err(e) => return Verdict::Error(Issue::error(IssueCode::Structure, e.to_string())),
        };
        let mut owner: Option<String> = None;
        let mut in_scope = matches!(self.scope, Scope::Everything);
        for_each_patient(self.resource_type, &value, |pid| {
            let counts = match &self.scope {
                Scope::Members(set) => set.contains(pid),
                Scope::AnyPatient | Scope::Everything => true,
            };
            if counts {
                in_scope = true;
                if owner.as_deref().is_none_or(|o| pid < o) {
                    owner = Some(pid.to_owned());
                }
            }
        });
        if !in_scope {
            return Verdict::Skip;
        }
        if let Some(owned) = &self.owned
            && !owner.as_ref().is_some_and(|o| owned.contains(o))
        {
            return Verdict::Skip;
        }
        if let Some(f) = &self.filters
            && !f.matches(self.resource_type, &value)
        {
            return Verdict::Skip;
        }
        // The caller may read the whole resource (Provenance targets); the file gets the
        // subset.
        match self.subset(line) {
            Ok(bytes) => Verdict::Keep(Kept {
                bytes,
                id,
                owner,
                value: self.wants_value.then_some(value),
            }),
            Err(issue) => Verdict::Error(issue),
        }
    }
}
