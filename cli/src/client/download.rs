//! Downloading and verifying the files of a manifest.
//!
//! Files are fetched `parallel` at a time with `Accept: application/fhir+ndjson` and
//! `Accept-Encoding: gzip` (gzip is undone here, so what lands on disk is NDJSON). Each body is
//! streamed through the line verifier into `<out>/.partial/<name>` and renamed to
//! `<out>/<name>` only when complete, verified, and of `count` lines: a file under its final
//! name is always a whole, checked file. An attempt that gets a network error, `429` or `5xx`
//! is repeated from scratch, at most [`MAX_ATTEMPTS`] attempts in all; a verification failure
//! is not retried. The first failure stops every other download.
//!
//! Names come from the last segment of the URL path (characters outside `A-Za-z0-9._-`
//! replaced by `_`), or `<section>-<type>-<n>.ndjson` when there is none; a name already taken
//! (case-insensitively, `manifest.json` included) gets `_2`, `_3` ... before its extension.

use std::borrow::Cow;
use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use futures::{StreamExt, TryStreamExt};
use reqwest::header::{CONTENT_ENCODING, CONTENT_TYPE};
use tokio::io::{AsyncWriteExt, BufWriter};
use url::Url;

use super::error::{DownloadError, SendError};
use super::manifest::{Item, MANIFEST_FILE, Manifest};
use super::net::{Backoff, Http, error_body, retry_after};
use super::progress::Progress;
use super::verify::{Expect, LineVerifier};
use super::{ClientError, DownloadedFile, Section};

/// Attempts per file: the first and 3 retries.
pub(crate) const MAX_ATTEMPTS: u32 = 4;
/// Where files are written until verified.
const PARTIAL_DIR: &str = ".partial";
const WRITE_BUFFER: usize = 256 * 1024;
const MAX_NAME: usize = 120;

/// Local file names for the items, in order, all distinct.
pub(crate) fn local_names(items: &[Item]) -> Vec<String> {
    let mut used: HashSet<String> = HashSet::from([MANIFEST_FILE.into(), PARTIAL_DIR.into()]);
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let name = url_name(&item.url).unwrap_or_else(|| {
                format!(
                    "{}-{}-{}.ndjson",
                    item.section,
                    item.resource_type.as_deref().unwrap_or("file"),
                    i + 1
                )
            });
            unique(name, &mut used)
        })
        .collect()
}

fn url_name(url: &Url) -> Option<String> {
    let segment = url.path_segments()?.rfind(|s| !s.is_empty())?;
    let clean: String = segment
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect();
    // No hidden files, and never `.` or `..`.
    let clean = clean.trim_start_matches('.');
    let clean: String = clean
        .chars()
        .skip(clean.len().saturating_sub(MAX_NAME))
        .collect();
    (!clean.is_empty()).then_some(clean)
}

fn unique(name: String, used: &mut HashSet<String>) -> String {
    if used.insert(name.to_lowercase()) {
        return name;
    }
    let (stem, ext) = match name.find('.') {
        Some(p) if p > 0 => name.split_at(p),
        _ => (name.as_str(), ""),
    };
    let mut n = 2u64;
    loop {
        let candidate = format!("{stem}_{n}{ext}");
        if used.insert(candidate.to_lowercase()) {
            return candidate;
        }
        n += 1;
    }
}

/// Removes a partial file unless disarmed, also when its download is dropped midway.
struct PartialFile {
    path: PathBuf,
    armed: bool,
}

impl Drop for PartialFile {
    fn drop(&mut self) {
        if self.armed {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

enum Decoder {
    Identity,
    Gzip(Box<flate2::write::MultiGzDecoder<Vec<u8>>>),
}

impl Decoder {
    fn push<'a>(&mut self, input: &'a [u8]) -> std::io::Result<Cow<'a, [u8]>> {
        match self {
            Decoder::Identity => Ok(Cow::Borrowed(input)),
            Decoder::Gzip(d) => {
                d.write_all(input)?;
                Ok(Cow::Owned(std::mem::take(d.get_mut())))
            }
        }
    }

    fn finish(self) -> std::io::Result<Vec<u8>> {
        match self {
            Decoder::Identity => Ok(Vec::new()),
            Decoder::Gzip(d) => d.finish(),
        }
    }
}

enum Failure {
    /// Worth another attempt, after `wait` if the server said how long.
    Retry {
        error: DownloadError,
        wait: Option<Duration>,
    },
    Fatal(ClientError),
}

struct Job<'a> {
    item: &'a Item,
    name: String,
    dest: PathBuf,
    partial: PathBuf,
}

/// Downloads every item; returns the files in section order, then manifest order.
pub(crate) async fn download_all(
    http: &Http,
    progress: &Progress,
    manifest: &Manifest,
    out_dir: &Path,
    parallel: usize,
) -> Result<Vec<DownloadedFile>, ClientError> {
    if manifest.items.is_empty() {
        return Ok(Vec::new());
    }
    let partial_dir = out_dir.join(PARTIAL_DIR);
    tokio::fs::create_dir_all(&partial_dir)
        .await
        .map_err(|source| ClientError::Io {
            path: partial_dir.clone(),
            source,
        })?;
    progress.start_downloads(manifest.items.len());
    let names = local_names(&manifest.items);
    let jobs: Vec<Job<'_>> = manifest
        .items
        .iter()
        .zip(names)
        .map(|(item, name)| Job {
            item,
            dest: out_dir.join(&name),
            partial: partial_dir.join(&name),
            name,
        })
        .collect();
    let result = futures::stream::iter(jobs.iter().enumerate().map(|(i, job)| async move {
        download_one(http, progress, job)
            .await
            .map(|f| (job.item.section, i, f))
    }))
    .buffer_unordered(parallel.max(1))
    .try_collect::<Vec<_>>()
    .await;
    // Best effort: the folder is empty unless something outside removed our guards' work.
    let _ = tokio::fs::remove_dir(&partial_dir).await;
    let mut files = result?;
    files.sort_by_key(|(section, i, _)| (*section, *i));
    Ok(files.into_iter().map(|(_, _, f)| f).collect())
}

async fn download_one(
    http: &Http,
    progress: &Progress,
    job: &Job<'_>,
) -> Result<DownloadedFile, ClientError> {
    let mut backoff = Backoff::new();
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let mut received = 0u64;
        match attempt_once(http, progress, job, attempt, &mut received).await {
            Ok(f) => {
                progress.file_done(&f);
                return Ok(f);
            }
            Err(Failure::Fatal(e)) => return Err(e),
            Err(Failure::Retry { error, wait }) => {
                progress.add_bytes(-i64::try_from(received).unwrap_or(i64::MAX));
                if attempt >= MAX_ATTEMPTS {
                    return Err(ClientError::Download {
                        url: job.item.url.to_string(),
                        attempts: attempt,
                        source: error,
                    });
                }
                let wait = wait.unwrap_or_else(|| backoff.next());
                progress.message(format_args!(
                    "{}: {}; retrying in {} s (attempt {} of {MAX_ATTEMPTS})",
                    job.item.url,
                    shared::error_chain(&error),
                    wait.as_secs(),
                    attempt + 1
                ));
                tokio::time::sleep(wait).await;
            }
        }
    }
}

async fn attempt_once(
    http: &Http,
    progress: &Progress,
    job: &Job<'_>,
    attempt: u32,
    received: &mut u64,
) -> Result<DownloadedFile, Failure> {
    let item = job.item;
    let url = item.url.to_string();
    let fatal = |source: DownloadError| {
        Failure::Fatal(ClientError::Download {
            url: url.clone(),
            attempts: attempt,
            source,
        })
    };
    let io_error = |path: &Path, source: std::io::Error| {
        Failure::Fatal(ClientError::Io {
            path: path.to_path_buf(),
            source,
        })
    };

    let (mut resp, _) = match http
        .get(
            &item.url,
            "application/fhir+ndjson",
            item.with_token,
            &[("accept-encoding", "gzip")],
        )
        .await
    {
        Ok(r) => r,
        Err(e @ SendError::Http(_)) => {
            return Err(Failure::Retry {
                error: e.into(),
                wait: None,
            });
        }
        Err(e) => return Err(fatal(e.into())),
    };
    let status = resp.status();
    if status.as_u16() == 429 || status.is_server_error() {
        let wait = retry_after(resp.headers(), SystemTime::now());
        let diagnostics = error_body(resp).await.text;
        return Err(Failure::Retry {
            error: DownloadError::Status {
                status: status.as_u16(),
                diagnostics,
            },
            wait,
        });
    }
    if status.as_u16() != 200 {
        let diagnostics = error_body(resp).await.text;
        return Err(fatal(DownloadError::Status {
            status: status.as_u16(),
            diagnostics,
        }));
    }
    if let Some(ct) = resp
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        && !ct.contains("ndjson")
    {
        tracing::warn!(url = %item.url, content_type = ct, "file is not labelled as NDJSON");
    }
    let mut decoder = match resp
        .headers()
        .get(CONTENT_ENCODING)
        .map(|v| v.to_str().unwrap_or("?").trim().to_ascii_lowercase())
        .as_deref()
    {
        None | Some("" | "identity") => Decoder::Identity,
        Some("gzip" | "x-gzip") => {
            Decoder::Gzip(Box::new(flate2::write::MultiGzDecoder::new(Vec::new())))
        }
        Some(other) => return Err(fatal(DownloadError::Encoding(other.to_owned()))),
    };

    let mut guard = PartialFile {
        path: job.partial.clone(),
        armed: true,
    };
    let file = tokio::fs::File::create(&job.partial)
        .await
        .map_err(|e| io_error(&job.partial, e))?;
    let mut out = BufWriter::with_capacity(WRITE_BUFFER, file);
    let expect = match (item.section, &item.resource_type) {
        (Section::Error, _) => Expect::Type("OperationOutcome".into()),
        (Section::Deleted, _) => Expect::Type("Bundle".into()),
        (Section::Output, Some(t)) => Expect::Type(t.clone()),
        (Section::Output, None) => Expect::AnyType,
    };
    let mut verifier = LineVerifier::new(expect);
    let line_error = |(line, problem)| {
        Failure::Fatal(ClientError::Line {
            file: job.name.clone(),
            url: url.clone(),
            line,
            problem,
        })
    };
    let mut written = 0u64;
    loop {
        let chunk = match resp.chunk().await {
            Ok(Some(c)) => c,
            Ok(None) => break,
            Err(e) => {
                return Err(Failure::Retry {
                    error: DownloadError::Body(e),
                    wait: None,
                });
            }
        };
        *received += chunk.len() as u64;
        progress.add_bytes(i64::try_from(chunk.len()).unwrap_or(i64::MAX));
        let data = decoder
            .push(&chunk)
            .map_err(|e| fatal(DownloadError::Gzip(e)))?;
        verifier.feed(&data).map_err(line_error)?;
        out.write_all(&data)
            .await
            .map_err(|e| io_error(&job.partial, e))?;
        written += data.len() as u64;
    }
    let tail = decoder
        .finish()
        .map_err(|e| fatal(DownloadError::Gzip(e)))?;
    verifier.feed(&tail).map_err(line_error)?;
    out.write_all(&tail)
        .await
        .map_err(|e| io_error(&job.partial, e))?;
    written += tail.len() as u64;
    out.flush().await.map_err(|e| io_error(&job.partial, e))?;
    drop(out);
    let verified = verifier.finish().map_err(line_error)?;
    if let Some(count) = item.count
        && count != verified.lines
    {
        return Err(Failure::Fatal(ClientError::CountMismatch {
            file: job.name.clone(),
            url,
            lines: verified.lines,
            count,
        }));
    }
    tokio::fs::rename(&job.partial, &job.dest)
        .await
        .map_err(|e| io_error(&job.dest, e))?;
    guard.armed = false;
    Ok(DownloadedFile {
        path: job.dest.clone(),
        resource_type: item.resource_type.clone(),
        lines: verified.lines,
        bytes: written,
        section: item.section,
        url,
        per_type: verified.per_type,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(url: &str, section: Section, ty: Option<&str>) -> Item {
        Item {
            section,
            url: Url::parse(url).unwrap(),
            resource_type: ty.map(str::to_owned),
            count: None,
            with_token: false,
        }
    }

    #[test]
    fn names_are_taken_from_urls_and_never_collide() {
        let items = [
            item(
                "https://a/x/Patient-1.ndjson",
                Section::Output,
                Some("Patient"),
            ),
            item(
                "https://b/y/patient-1.ndjson?sig=1",
                Section::Output,
                Some("Patient"),
            ),
            item(
                "https://a/z/Patient-1.ndjson",
                Section::Output,
                Some("Patient"),
            ),
            item("https://a/", Section::Output, Some("Observation")),
            item("https://a/manifest.json", Section::Output, Some("Patient")),
            item("https://a/..", Section::Error, None),
            item("https://a/f/%2E%2E%2Fetc%20passwd", Section::Error, None),
            item("https://a/f/.partial", Section::Output, None),
            item("https://a/f/Patient-1_2.ndjson", Section::Output, None),
        ];
        assert_eq!(
            local_names(&items),
            [
                "Patient-1.ndjson",
                "patient-1_2.ndjson",
                "Patient-1_3.ndjson",
                "output-Observation-4.ndjson",
                "manifest_2.json",
                "error-file-6.ndjson",
                "_2E_2E_2Fetc_20passwd",
                "partial",
                "Patient-1_2_2.ndjson",
            ]
        );
    }
}
