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

/// Azure's rules for container names (3-63 lowercase letters, digits and single hyphens,
/// starting and ending with a letter or digit), which are also safe as an S3 prefix and a
/// folder name: a `_container` within them cannot step outside the store.
pub fn valid_container(name: &str) -> bool {
    (3..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--")
}

/// The container of an export kicked off without `_container` on a store whose top-level
/// folders are containers it creates (an Azure account): `export-<UTC time>-<job id's first
/// 8 characters>`, so that an account's containers sort by time and name their export.
pub fn new_container(at: chrono::DateTime<chrono::Utc>, job: &JobId) -> String {
    let id = job.as_str();
    format!(
        "export-{}-{}",
        at.format("%Y%m%dt%H%M%S"),
        id.get(..8).unwrap_or(id)
    )
}

/// Whether a container name is one [`new_container`] makes: such a container belongs to its
/// export and goes when the export's files do.
pub fn is_new_container(name: &str) -> bool {
    let Some(rest) = name.strip_prefix("export-") else {
        return false;
    };
    let b = rest.as_bytes();
    b.len() == 24
        && b[..8].iter().all(u8::is_ascii_digit)
        && b[8] == b't'
        && b[9..15].iter().all(u8::is_ascii_digit)
        && b[15] == b'-'
        && b[16..]
            .iter()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
}

/// The container an export's folder lies in when the export made it (see [`new_container`]).
pub fn created_container(prefix: &str) -> Option<&str> {
    prefix
        .split_once('/')
        .map(|(c, _)| c)
        .filter(|c| is_new_container(c))
}

/// Where a chunk-less probe of an export's writability goes: its staging folder.
pub fn probe_key(prefix: &str) -> String {
    format!("{}probe", staging_root(prefix))
}

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

/// Name of the `n`-th file of the manifest's `deleted` (transaction Bundles).
pub fn deleted_name(n: usize) -> String {
    format!("deleted/Bundle-{n}.ndjson")
}

/// Whether `name` (relative to the export folder) is a published file name, which is all the
/// files route may serve.
pub fn is_published_name(name: &str) -> bool {
    let file = name
        .strip_prefix("error/")
        .or_else(|| name.strip_prefix("deleted/"))
        .unwrap_or(name);
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
        assert!(is_published_name(&deleted_name(2)));
        assert!(!is_published_name("deleted/x/Bundle-1.ndjson"));
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

    #[test]
    fn containers() {
        let job = JobId::parse("0123456789abcdef0123456789abcdef").expect("id");
        let at = chrono::DateTime::parse_from_rfc3339("2026-12-07T02:31:15Z")
            .expect("time")
            .to_utc();
        let c = new_container(at, &job);
        assert_eq!(c, "export-20261207t023115-01234567");
        assert!(valid_container(&c));
        assert!(is_new_container(&c));
        assert_eq!(
            created_container(&export_prefix(Some(&c), &job)),
            Some(c.as_str())
        );
        assert_eq!(created_container(&export_prefix(Some("mine"), &job)), None);
        assert_eq!(created_container(job.as_str()), None);
        for other in ["export-2026", "export-20261207t023115-0123456g", "mine"] {
            assert!(!is_new_container(other), "{other}");
        }
        for ok in ["abc", "a-b-c", "x1", "0ab"] {
            assert_eq!(valid_container(ok), ok.len() >= 3, "{ok}");
        }
        for bad in [
            "ab",
            "-ab",
            "ab-",
            "a--b",
            "Abc",
            "a_b",
            "a/b",
            "a.b",
            &"a".repeat(64),
        ] {
            assert!(!valid_container(bad), "{bad}");
        }
    }
}
