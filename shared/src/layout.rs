//! Where an export's files live in the output store.
//!
//! ```text
//! [container/]<job-id>/Patient-1.ndjson            published output
//! [container/]<job-id>/error/OperationOutcome-1.ndjson
//! [container/].staging/<job-id>/000003.<attempt>.Patient-1.ndjson   a chunk's parts
//! [container/].staging/<job-id>/members.json        Group members, for the workers
//! ```
//! Every export gets a folder named after its (random) job id, so no export ever writes into
//! another's. Chunks stage their files outside it: a late attempt at a chunk (a duplicate
//! delivery still running when the export completes) writes nothing into a completed
//! export's folder, which only ever receives its published files. Staging is removed when
//! the export is published; both go when it is cancelled, failed or expired.

use crate::model::{JobId, ResourceType};

/// The folder of an export, without a trailing `/`.
pub fn export_prefix(container: Option<&str>, job: &JobId) -> String {
    match container {
        Some(c) => format!("{c}/{job}"),
        None => job.to_string(),
    }
}

/// The export's staging folder: `.staging/<job>/` beside the export's folder.
pub fn staging_root(prefix: &str) -> String {
    match prefix.rsplit_once('/') {
        Some((container, job)) => format!("{container}/.staging/{job}/"),
        None => format!(".staging/{prefix}/"),
    }
}

/// Every key prefix an export has objects under: its folder and its staging folder.
pub fn export_prefixes(prefix: &str) -> [String; 2] {
    [format!("{prefix}/"), staging_root(prefix)]
}

/// A key prefix of its own for one attempt at one chunk, so a duplicate delivery running at
/// the same time never overwrites the files another attempt has recorded. A name prefix
/// rather than a folder: on a local disk a folder per attempt cost two `mkdir`s per chunk,
/// each slower than writing a small chunk's file.
pub fn chunk_attempt_dir(prefix: &str, chunk: u32, attempt: &str) -> String {
    format!("{}{chunk:06}.{attempt}.", staging_root(prefix))
}

pub fn members_key(prefix: &str) -> String {
    format!("{}members.json", staging_root(prefix))
}

pub fn output_name(t: ResourceType, n: usize) -> String {
    format!("{t}-{n}.ndjson")
}

pub fn error_name(n: usize) -> String {
    format!("error/OperationOutcome-{n}.ndjson")
}

/// Whether `name` (relative to the export folder) is a published file name, which is all the
/// files route may serve.
pub fn is_published_name(name: &str) -> bool {
    let file = name.strip_prefix("error/").unwrap_or(name);
    !file.contains('/')
        && !file.starts_with('.')
        && file.ends_with(".ndjson")
        && file
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        let job = JobId::parse("0123456789abcdef0123456789abcdef").expect("id");
        assert_eq!(export_prefix(Some("c1"), &job), format!("c1/{job}"));
        assert_eq!(output_name(ResourceType::PATIENT, 2), "Patient-2.ndjson");
        assert!(is_published_name("Patient-2.ndjson"));
        assert!(is_published_name(&error_name(1)));
        assert!(!is_published_name(".staging/000001/x/Patient-1.ndjson"));
        assert!(!is_published_name(".staging/000001.x.Patient-1.ndjson"));
        assert_eq!(
            chunk_attempt_dir("c1/job", 3, "ab"),
            "c1/.staging/job/000003.ab."
        );
        assert_eq!(staging_root("job"), ".staging/job/");
        assert_eq!(members_key("c1/job"), "c1/.staging/job/members.json");
        assert_eq!(
            export_prefixes("job"),
            ["job/".to_owned(), ".staging/job/".to_owned()]
        );
        assert!(!is_published_name("../Patient-1.ndjson"));
        assert!(!is_published_name("members.json"));
    }
}
