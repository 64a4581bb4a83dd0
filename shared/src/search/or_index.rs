//! A long OR list of filters of one type, indexed by a token parameter they share.
//!
//! `Observation?code=a&status=final`, `Observation?code=b&status=final`, ... (a thousand of
//! them) cannot be merged into one value set, since each ANDs another parameter. Tried one by
//! one, every resource costs a thousand evaluations. Here the filters are looked up by the
//! codes of the shared parameter (the anchor): a resource is tried only against the filters
//! whose anchor lists one of its codes, plus those that have no anchor (or one that takes any
//! code of a system). A filter whose anchor lists none of a resource's codes cannot match it
//! (its anchor is ANDed), so the answer is exactly what trying every filter gives.

use std::collections::HashMap;

use serde_json::Value;

use super::token::codes_of;
use super::{CompiledFilter, CompiledParam, CompiledPath, Datatype, Test, walk};

/// Lists shorter than this are tried one by one: the lookup would cost more.
const INDEX_FROM: usize = 8;

#[derive(Debug, Clone)]
pub(super) struct OrList {
    filters: Vec<CompiledFilter>,
    index: Option<Index>,
}

#[derive(Debug, Clone)]
struct Index {
    /// The anchor parameter's paths (every indexed filter's anchor has these).
    paths: Box<[CompiledPath]>,
    /// Code -> the filters whose anchor lists it.
    by_code: HashMap<String, Vec<u32>>,
    /// Filters without the anchor, tried every time.
    always: Vec<u32>,
}

impl OrList {
    pub(super) fn new(filters: Vec<CompiledFilter>) -> OrList {
        let index = (filters.len() >= INDEX_FROM)
            .then(|| Index::build(&filters))
            .flatten();
        OrList { filters, index }
    }

    pub(super) fn filters(&self) -> &[CompiledFilter] {
        &self.filters
    }

    pub(super) fn matches(&self, resource: &Value) -> bool {
        let Some(index) = &self.index else {
            return self.filters.iter().any(|f| f.matches(resource));
        };
        let tries = |i: &u32| {
            self.filters
                .get(*i as usize)
                .is_some_and(|f| f.matches(resource))
        };
        if index.always.iter().any(tries) {
            return true;
        }
        let mut found = false;
        for p in index.paths.iter() {
            if p.datatype == Datatype::Other {
                continue;
            }
            walk(resource, &p.segments, &mut |v| {
                if !p.accepts(v) {
                    return false;
                }
                codes_of(p.datatype, v, &mut |code| {
                    if !found && let Some(candidates) = index.by_code.get(code) {
                        found = candidates.iter().any(tries);
                    }
                });
                found
            });
            if found {
                return true;
            }
        }
        false
    }
}

/// The filter's positive token test on parameter `label`, with the codes it requires.
fn anchor_of<'f>(
    f: &'f CompiledFilter,
    label: &str,
) -> Option<(&'f CompiledParam, impl Iterator<Item = &'f str>)> {
    f.params.iter().find_map(|p| match &p.test {
        Test::Token(set) if p.label == label => set.required_codes().map(|c| (p, c)),
        _ => None,
    })
}

impl Index {
    /// Indexes by the token parameter whose codes tell the filters apart best (the most
    /// distinct codes: `code` rather than a `status` they all share); `None` when none has
    /// enough for it to pay.
    fn build(filters: &[CompiledFilter]) -> Option<Index> {
        let mut codes: HashMap<&str, std::collections::HashSet<&str>> = HashMap::new();
        for f in filters {
            for p in &f.params {
                if let Test::Token(set) = &p.test
                    && let Some(required) = set.required_codes()
                {
                    codes.entry(p.label.as_str()).or_default().extend(required);
                }
            }
        }
        let (label, distinct) = codes
            .into_iter()
            .map(|(label, set)| (label, set.len()))
            .max_by_key(|(label, n)| (*n, *label))?;
        if distinct < INDEX_FROM {
            return None;
        }
        let mut paths = None;
        let mut by_code: HashMap<String, Vec<u32>> = HashMap::new();
        let mut always = Vec::new();
        for (i, f) in filters.iter().enumerate() {
            let i = u32::try_from(i).ok()?;
            match anchor_of(f, label) {
                Some((param, codes)) => {
                    paths.get_or_insert_with(|| param.paths.clone());
                    for code in codes {
                        let list = by_code.entry(code.to_owned()).or_default();
                        if list.last() != Some(&i) {
                            list.push(i);
                        }
                    }
                }
                None => always.push(i),
            }
        }
        Some(Index {
            paths: paths?,
            by_code,
            always,
        })
    }
}
