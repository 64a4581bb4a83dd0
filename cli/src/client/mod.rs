//! `fhir-export export`: a Bulk Data `$export` client for any conformant server (Bulk Data IG
//! 2.0.0, plus the 3.0.0 additions a client meets: `_until`, paged manifests, output items
//! without `type`).
//!
//! Contract of [`run`]:
//! - **Kick-off** (skipped with `--status`): `GET` (or `POST` with a `Parameters` body) with
//!   `Accept: application/fhir+json` and `Prefer: respond-async`; anything but `202` with a
//!   `Content-Location` fails with the server's `OperationOutcome` diagnostics. The status URL is
//!   printed at once, so the export can be re-attached to.
//! - **Polling**: `Retry-After` (delta-seconds or HTTP-date) is honoured within [1 s, 60 s];
//!   values over an hour, negative or unreadable ones fall back to exponential backoff (1, 2, 4
//!   ... 30 s). `429` keeps polling; `5xx` and network errors are retried up to 5 times in a row;
//!   a `500` with a non-transient `OperationOutcome` seen twice in a row is the export failing;
//!   `404`/`410` means the export is gone. Polling gives up after `--max-wait`.
//! - **Manifest**: the STU2 keys are checked, `link` pages (`relation: next`) are followed and
//!   merged, unknown keys are kept. The merged manifest is written to `<out>/manifest.json`.
//! - **Files**: downloaded `--parallel` at a time, streamed to disk and verified line by line
//!   (one JSON object per line, no blank lines, `resourceType` as the item says, `count` lines,
//!   `OperationOutcome`s in `error`, `Bundle`s in `deleted`). A file is retried from scratch up
//!   to 3 times on network errors, `429` and `5xx`; it only appears under its final name once
//!   complete and verified. Nothing printed or returned ever quotes a line: it is patient data.
//! - **Credentials**: the bearer token goes to the kick-off and status URLs, to file URLs only
//!   when the manifest says `requiresAccessToken: true`, and never past a redirect to another
//!   origin.
//! - **Interrupts**: Ctrl-C stops the client; with `--cancel-on-interrupt` it first sends
//!   `DELETE` to the status URL, otherwise the export keeps running and can be re-attached to.
//! - **`--since auto`** ([`since`]): `_since` is the `transactionTime` of the previous
//!   completed export of the same request, kept in `<out>/.fhir-export-since.json` (none on the
//!   first run); each run writes into a new folder `<out>/<UTC time>/`, and the new
//!   `transactionTime` is saved only once every file is downloaded and verified.

mod download;
mod error;
mod kickoff;
mod manifest;
mod net;
mod poll;
mod progress;
pub mod since;
mod verify;

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::{Duration, Instant};

pub use error::{ClientError, DownloadError, LineProblem, SendError};
use net::{Credentials, Http};
use progress::Progress;
use since::AutoRun;
pub use since::{STATE_FILE, SavedSince, SinceAuto};
use url::Url;

/// Longest wait for the answer to the `DELETE` sent on an interrupt.
const CANCEL_TIMEOUT: Duration = Duration::from_secs(30);

/// Flags of `fhir-export export`.
#[derive(clap::Args, Debug, Clone)]
pub struct ExportArgs {
    /// FHIR base URL of the server to export from (e.g. https://example.org/fhir).
    #[arg(long, required_unless_present = "status")]
    pub base: Option<String>,
    /// What to export: `system`, `patient` (all patients) or `group:ID`.
    #[arg(long, default_value = "system")]
    pub level: Level,
    /// Resource types to export (`_type`); repeat the flag or separate with commas.
    #[arg(long = "type", value_name = "TYPE", value_delimiter = ',')]
    pub types: Vec<String>,
    /// Only resources changed after this FHIR instant (`_since`). `auto`: after the
    /// `transactionTime` of the previous completed export of the same request into the same
    /// `--out` folder (everything on the first run); each run then writes into a new folder
    /// `<out>/<UTC time>/` and saves its `transactionTime` in `<out>/.fhir-export-since.json`
    /// once every file is verified.
    #[arg(long, value_name = "INSTANT|auto")]
    pub since: Option<String>,
    /// Only resources changed before this FHIR instant (`_until`, IG 3.0).
    #[arg(long, value_name = "INSTANT")]
    pub until: Option<String>,
    /// A `_typeFilter` query such as `Observation?code=1234-5`; repeatable (one parameter each).
    #[arg(long = "type-filter", value_name = "QUERY")]
    pub type_filters: Vec<String>,
    /// Elements to keep (`_elements`); repeat the flag or separate with commas.
    #[arg(long, value_name = "ELEMENT", value_delimiter = ',')]
    pub elements: Vec<String>,
    /// Any other kick-off parameter, as NAME=VALUE; repeatable.
    #[arg(long = "param", value_name = "NAME=VALUE", value_parser = parse_param)]
    pub params: Vec<(String, String)>,
    /// Kick off with POST and a FHIR `Parameters` body instead of GET.
    #[arg(long)]
    pub post: bool,
    /// Ask the server to ignore parameters it does not support (`Prefer: handling=lenient`).
    #[arg(long)]
    pub lenient: bool,
    /// Folder for the files and `manifest.json`. Default: `./export-<UTC timestamp>`. An
    /// existing folder is written into (files of the same name are replaced); with
    /// `--since auto` each run gets a new folder inside it.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Re-attach to an export by its status URL instead of starting one.
    #[arg(long, value_name = "URL")]
    pub status: Option<String>,
    /// Bearer token for the FHIR server (sent to file URLs only when the manifest requires it).
    #[arg(
        long,
        env = "FHIR_EXPORT_TOKEN",
        hide_env_values = true,
        conflicts_with = "client_id"
    )]
    pub token: Option<BearerToken>,
    /// SMART Backend Services client id: tokens are obtained (and renewed) from the token
    /// endpoint of the server's `.well-known/smart-configuration` with a `private_key_jwt`
    /// assertion signed by `--private-key`.
    #[arg(long, env = "FHIR_EXPORT_CLIENT_ID", requires = "private_key")]
    pub client_id: Option<String>,
    /// PEM private key (RSA for RS384, EC P-384 for ES384) of `--client-id`.
    #[arg(
        long,
        value_name = "FILE",
        env = "FHIR_EXPORT_PRIVATE_KEY_FILE",
        requires = "client_id"
    )]
    pub private_key: Option<PathBuf>,
    /// `kid` of the key, when the client's JWKS holds several.
    #[arg(long, value_name = "KID", requires = "client_id")]
    pub key_id: Option<String>,
    /// Scopes to ask for.
    #[arg(long, default_value = "system/*.read", requires = "client_id")]
    pub scope: String,
    /// Token endpoint, instead of the one the SMART configuration names.
    #[arg(long, value_name = "URL", requires = "client_id")]
    pub token_url: Option<String>,
    /// Files downloaded at once.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub parallel: u16,
    /// On Ctrl-C, cancel the export on the server (DELETE) before exiting.
    #[arg(long)]
    pub cancel_on_interrupt: bool,
    /// Give up waiting for the export after this many seconds.
    #[arg(long, value_name = "SECS", default_value_t = 3600)]
    pub max_wait: u64,
    /// Plain progress lines instead of a live status line.
    #[arg(long)]
    pub no_progress: bool,
}

impl Default for ExportArgs {
    fn default() -> Self {
        ExportArgs {
            base: None,
            level: Level::System,
            types: Vec::new(),
            since: None,
            until: None,
            type_filters: Vec::new(),
            elements: Vec::new(),
            params: Vec::new(),
            post: false,
            lenient: false,
            out: None,
            status: None,
            token: None,
            client_id: None,
            private_key: None,
            key_id: None,
            scope: "system/*.read".into(),
            token_url: None,
            parallel: 4,
            cancel_on_interrupt: false,
            max_wait: 3600,
            no_progress: false,
        }
    }
}

fn parse_param(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((name, value)) if !name.trim().is_empty() => {
            Ok((name.trim().to_owned(), value.to_owned()))
        }
        _ => Err(format!("`{s}` is not NAME=VALUE")),
    }
}

/// The export level: which kick-off endpoint is called.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Level {
    /// `[base]/$export`
    System,
    /// `[base]/Patient/$export`
    Patient,
    /// `[base]/Group/[id]/$export`
    Group(String),
}

impl FromStr for Level {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "system" => Ok(Level::System),
            "patient" => Ok(Level::Patient),
            _ => match s.strip_prefix("group:") {
                Some(id) if is_fhir_id(id) => Ok(Level::Group(id.to_owned())),
                Some(_) => Err(format!(
                    "`{s}`: a Group id is 1-64 characters of A-Z, a-z, 0-9, `-` and `.`"
                )),
                None => Err(format!("`{s}`: expected system, patient or group:ID")),
            },
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Level::System => f.write_str("system"),
            Level::Patient => f.write_str("patient"),
            Level::Group(id) => write!(f, "group:{id}"),
        }
    }
}

fn is_fhir_id(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// A bearer token. `Debug` does not show it, so arguments can be logged safely.
#[derive(Clone, PartialEq, Eq)]
pub struct BearerToken(String);

impl BearerToken {
    pub fn new(token: impl Into<String>) -> Self {
        BearerToken(token.into())
    }

    pub(crate) fn secret(&self) -> &str {
        &self.0
    }
}

impl FromStr for BearerToken {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        // A header value cannot hold control characters; refusing here names the flag.
        if s.is_empty() || s.bytes().any(|b| b.is_ascii_control()) {
            return Err("the token is empty or holds control characters".into());
        }
        Ok(BearerToken(s.to_owned()))
    }
}

impl fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BearerToken(<redacted>)")
    }
}

/// The manifest section a file was listed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Section {
    Output,
    Error,
    Deleted,
}

impl Section {
    pub fn as_str(&self) -> &'static str {
        match self {
            Section::Output => "output",
            Section::Error => "error",
            Section::Deleted => "deleted",
        }
    }
}

impl fmt::Display for Section {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One verified file on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DownloadedFile {
    pub path: PathBuf,
    /// The manifest item's `type` (absent for IG 3.0 `organizeOutputBy` output).
    pub resource_type: Option<String>,
    pub lines: u64,
    /// Bytes written to disk (after any `Content-Encoding` is undone).
    pub bytes: u64,
    pub section: Section,
    /// The URL it was downloaded from, as listed in the manifest.
    pub url: String,
    /// Lines per `resourceType` actually found in the file.
    pub per_type: BTreeMap<String, u64>,
}

/// What a completed run produced.
#[derive(Debug, Clone)]
pub struct ExportSummary {
    pub status_url: String,
    /// The manifest with every `link` page merged in (as written to `<out>/manifest.json`).
    pub manifest: serde_json::Value,
    /// In manifest order: `output`, then `error`, then `deleted`.
    pub files: Vec<DownloadedFile>,
    /// Resources in the `output` files.
    pub resources: u64,
    /// Bytes written, over all files.
    pub bytes: u64,
    pub out_dir: PathBuf,
    pub elapsed: Duration,
    /// What `--since auto` used and saved; `None` without it.
    pub since_auto: Option<SinceAuto>,
}

impl ExportSummary {
    /// Resources of the `output` files per `resourceType`.
    pub fn per_type(&self) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        for f in self.files.iter().filter(|f| f.section == Section::Output) {
            for (t, n) in &f.per_type {
                *out.entry(t.clone()).or_insert(0) += n;
            }
        }
        out
    }
}

impl fmt::Display for ExportSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let outputs = self
            .files
            .iter()
            .filter(|x| x.section == Section::Output)
            .count();
        writeln!(
            f,
            "exported {} resources in {} file(s), {}, in {:.1} s, to {}",
            self.resources,
            outputs,
            progress::human_bytes(self.bytes),
            self.elapsed.as_secs_f64(),
            self.out_dir.display()
        )?;
        for (t, n) in self.per_type() {
            writeln!(f, "  {t:<28} {n:>10}")?;
        }
        for section in [Section::Error, Section::Deleted] {
            let files: Vec<&DownloadedFile> =
                self.files.iter().filter(|x| x.section == section).collect();
            if !files.is_empty() {
                let lines: u64 = files.iter().map(|x| x.lines).sum();
                writeln!(
                    f,
                    "  {section}: {} file(s), {lines} entries{}",
                    files.len(),
                    if section == Section::Error {
                        " (messages from the server: read them)"
                    } else {
                        ""
                    }
                )?;
            }
        }
        if let Some(a) = &self.since_auto {
            match &a.since {
                Some(t) => writeln!(
                    f,
                    "--since auto: exported with _since={t} (the previous export of this request)"
                )?,
                None => writeln!(
                    f,
                    "--since auto: exported without _since (first export of this request)"
                )?,
            }
            writeln!(
                f,
                "--since auto: saved transactionTime {} in {} for the next run",
                a.saved,
                a.state_file.display()
            )?;
        }
        write!(f, "status URL: {}", self.status_url)
    }
}

/// Runs an export until it completes, fails, or Ctrl-C is pressed.
pub async fn run(args: ExportArgs) -> Result<ExportSummary, ClientError> {
    run_until(args, ctrl_c()).await
}

/// [`run`] with the interrupt given as a future: when `interrupt` completes first, the run
/// stops as on Ctrl-C (cancelling the export with `--cancel-on-interrupt`) and returns
/// [`ClientError::Interrupted`].
pub async fn run_until(
    args: ExportArgs,
    interrupt: impl Future<Output = ()>,
) -> Result<ExportSummary, ClientError> {
    let started = Instant::now();
    // `--since auto`: the flags are checked and the saved instant read before anything else.
    let auto = if since::is_auto(&args) {
        Some(AutoRun::prepare(&args)?)
    } else {
        None
    };
    let args = match &auto {
        Some(a) => ExportArgs {
            since: a.since().map(str::to_owned),
            ..args
        },
        None => args,
    };
    let http = Http::new(credentials(&args)?)?;
    let progress = Progress::new(args.no_progress);
    if let Some(a) = &auto {
        progress.message(format_args!("{}", a.describe()));
    }
    tokio::pin!(interrupt);

    let status_url = match &args.status {
        Some(s) => Url::parse(s)
            .ok()
            .filter(net::is_http)
            .ok_or_else(|| ClientError::Usage(format!("--status `{s}` is not an http(s) URL")))?,
        None => {
            let base = args
                .base
                .as_deref()
                .ok_or_else(|| ClientError::Usage("--base or --status is required".into()))?;
            let base = Url::parse(base).ok().filter(net::is_http).ok_or_else(|| {
                ClientError::Usage(format!("--base `{base}` is not an http(s) URL"))
            })?;
            tokio::select! {
                r = kickoff::kickoff(&http, &args, &base) => r?,
                () = &mut interrupt => {
                    return Err(ClientError::Interrupted { status_url: None, cancelled: false });
                }
            }
        }
    };
    progress.message(format_args!(
        "status URL: {status_url}\n  (re-attach with: fhir-export export --status '{status_url}')"
    ));

    let work = complete(&http, &progress, &args, &status_url, started, auto.as_ref());
    tokio::select! {
        r = work => {
            progress.finish();
            let mut summary = match (r, &auto) {
                (Ok(s), _) => s,
                (Err(e), Some(a)) => {
                    a.discard().await;
                    return Err(e);
                }
                (Err(e), None) => return Err(e),
            };
            if let Some(a) = &auto {
                summary.since_auto = Some(a.finish(&mut summary).await?);
            }
            println!("{summary}");
            Ok(summary)
        }
        () = &mut interrupt => {
            progress.finish();
            if let Some(a) = &auto {
                a.discard().await;
            }
            if args.cancel_on_interrupt {
                progress.message(format_args!("interrupted: cancelling the export"));
                // Ctrl-C is ours now, so a second one cannot cut a hanging DELETE short.
                tokio::time::timeout(CANCEL_TIMEOUT, poll::cancel(&http, &status_url))
                    .await
                    .map_err(|_| ClientError::CancelTimedOut {
                        status_url: status_url.to_string(),
                        waited_secs: CANCEL_TIMEOUT.as_secs(),
                    })??;
                Err(ClientError::Interrupted { status_url: Some(status_url.into()), cancelled: true })
            } else {
                Err(ClientError::Interrupted { status_url: Some(status_url.into()), cancelled: false })
            }
        }
    }
}

/// Cancels (or discards) the export at `status_url` with `DELETE`. A `404` counts as done:
/// the export is already gone.
pub async fn cancel(status_url: &str, token: Option<BearerToken>) -> Result<(), ClientError> {
    let url = Url::parse(status_url)
        .ok()
        .filter(net::is_http)
        .ok_or_else(|| ClientError::Usage(format!("`{status_url}` is not an http(s) URL")))?;
    poll::cancel(&Http::new(token.map(Credentials::Token))?, &url).await
}

/// The credentials the arguments give.
fn credentials(args: &ExportArgs) -> Result<Option<Credentials>, ClientError> {
    if let Some(t) = &args.token {
        return Ok(Some(Credentials::Token(t.clone())));
    }
    let (Some(client_id), Some(key)) = (&args.client_id, &args.private_key) else {
        return Ok(None);
    };
    // The FHIR base, for the SMART configuration: given, or the status URL's.
    let base = match (&args.base, &args.status) {
        (Some(b), _) => b.trim_end_matches('/').to_owned(),
        (None, Some(status)) => status
            .split_once("/_export/")
            .map(|(b, _)| b.to_owned())
            .unwrap_or_else(|| status.clone()),
        (None, None) => String::new(),
    };
    let key = key.display().to_string();
    let lookup = |name: &str| -> Option<String> {
        match name {
            "FHIR_EXPORT_UPSTREAM_CLIENT_ID" => Some(client_id.clone()),
            "FHIR_EXPORT_UPSTREAM_PRIVATE_KEY_FILE" => Some(key.clone()),
            "FHIR_EXPORT_UPSTREAM_KEY_ID" => args.key_id.clone(),
            "FHIR_EXPORT_UPSTREAM_SCOPE" => Some(args.scope.clone()),
            "FHIR_EXPORT_UPSTREAM_TOKEN_URL" => args.token_url.clone(),
            _ => None,
        }
    };
    let auth = shared::adapters::fhir_server::Auth::from_lookup(&lookup).map_err(|e| {
        ClientError::Usage(
            e.replace("FHIR_EXPORT_UPSTREAM_PRIVATE_KEY_FILE", "--private-key")
                .replace("FHIR_EXPORT_UPSTREAM_PRIVATE_KEY", "--private-key"),
        )
    })?;
    Ok(Some(Credentials::Smart { auth, base }))
}

async fn ctrl_c() {
    if tokio::signal::ctrl_c().await.is_err() {
        // Without a signal handler there is no interrupt to wait for.
        std::future::pending::<()>().await;
    }
}

/// Everything after the kick-off: poll, collect the manifest, download and verify.
async fn complete(
    http: &Http,
    progress: &Progress,
    args: &ExportArgs,
    status_url: &Url,
    started: Instant,
    auto: Option<&AutoRun>,
) -> Result<ExportSummary, ClientError> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.max_wait);
    let first = poll::wait_for_manifest(
        http,
        progress,
        status_url,
        status_url,
        true,
        deadline,
        args.max_wait,
    )
    .await?;
    let manifest =
        manifest::collect(http, progress, status_url, first, deadline, args.max_wait).await?;

    let out_dir = match auto {
        Some(a) => a.create_folder().await?,
        None => args.out.clone().unwrap_or_else(|| {
            PathBuf::from(format!(
                "export-{}",
                chrono::Utc::now().format("%Y%m%dT%H%M%SZ")
            ))
        }),
    };
    tokio::fs::create_dir_all(&out_dir)
        .await
        .map_err(|source| ClientError::Io {
            path: out_dir.clone(),
            source,
        })?;
    let manifest_path = out_dir.join(manifest::MANIFEST_FILE);
    let text = serde_json::to_vec_pretty(&manifest.merged).map_err(|e| ClientError::Io {
        path: manifest_path.clone(),
        source: std::io::Error::other(e),
    })?;
    tokio::fs::write(&manifest_path, text)
        .await
        .map_err(|source| ClientError::Io {
            path: manifest_path.clone(),
            source,
        })?;

    let files = download::download_all(
        http,
        progress,
        &manifest,
        &out_dir,
        usize::from(args.parallel.max(1)),
    )
    .await?;
    let resources = files
        .iter()
        .filter(|f| f.section == Section::Output)
        .map(|f| f.lines)
        .sum();
    let bytes = files.iter().map(|f| f.bytes).sum();
    Ok(ExportSummary {
        status_url: status_url.to_string(),
        manifest: manifest.merged,
        files,
        resources,
        bytes,
        out_dir,
        elapsed: started.elapsed(),
        since_auto: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: ExportArgs,
    }

    #[test]
    fn parses_flags() {
        let cli = Cli::try_parse_from([
            "x",
            "--base",
            "http://h/fhir",
            "--type",
            "Patient,Observation",
            "--type",
            "Condition",
            "--level",
            "group:g-1",
            "--param",
            "_outputFormat=ndjson",
            "--param",
            "patient=Patient/1=2",
            "--token",
            "abc",
        ])
        .unwrap();
        let a = cli.args;
        assert_eq!(a.types, ["Patient", "Observation", "Condition"]);
        assert_eq!(a.level, Level::Group("g-1".into()));
        assert_eq!(
            a.params,
            [
                ("_outputFormat".to_owned(), "ndjson".to_owned()),
                ("patient".to_owned(), "Patient/1=2".to_owned())
            ]
        );
        assert_eq!(a.parallel, 4);
        assert!(!format!("{a:?}").contains("abc"), "token is redacted");
        assert!(Cli::try_parse_from(["x"]).is_err(), "--base or --status");
        assert!(Cli::try_parse_from(["x", "--status", "http://h/s"]).is_ok());
        assert!(Cli::try_parse_from(["x", "--base", "http://h", "--level", "group:"]).is_err());
        assert!(Cli::try_parse_from(["x", "--base", "http://h", "--param", "novalue"]).is_err());
        assert!(Cli::try_parse_from(["x", "--base", "http://h", "--parallel", "0"]).is_err());
    }
}
