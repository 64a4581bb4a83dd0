//! `--since auto`: a chain of incremental exports driven by the client.
//!
//! The Bulk Data IG promises that a completed export holds every resource changed up to its
//! manifest's `transactionTime`, so the next export with `_since=<that transactionTime>` misses
//! nothing (it may repeat what changed while the previous one ran: consumers upsert). With
//! `--since auto` the client keeps that instant itself, in the output folder:
//!
//! - **State**: `<out>/.fhir-export-since.json`, `{"version": 1, "requests": {KEY: ENTRY}}`,
//!   where ENTRY is `{"transactionTime", "status_url", "completed_at", "folder"}`: the
//!   manifest's `transactionTime` exactly as the server wrote it, the export's status URL,
//!   when the client finished (UTC), and the run folder (below) that holds its files.
//! - **Request key** ([`request_key`]): what makes two runs "the same request", so that one's
//!   `transactionTime` is a valid `_since` for the other: the method (`GET` or `POST`), the
//!   kick-off endpoint (base URL and level, without user info, query or fragment), every
//!   kick-off parameter but `_since` (`_type` and `_elements` as sorted sets, `_typeFilter`s
//!   and other `--param`s sorted, `_until` as given), and `Prefer: handling=lenient` when set.
//!   `--out`, `--parallel`, `--max-wait`, progress and credentials are not part of it. Any
//!   other difference (one more type, another filter) is another request, whose first run
//!   exports everything: taking another request's instant could miss resources.
//! - **Runs**: no saved entry: no `_since` (everything); otherwise `_since=<saved
//!   transactionTime>`. Each run writes into a folder of its own, `<out>/<UTC time>/` (a
//!   `-2`, `-3` ... suffix when that name is taken), downloaded as `<out>/.incomplete-<name>/`
//!   and renamed when every file is downloaded and verified, so a folder under its final name
//!   is always a complete export; a run that fails removes its incomplete folder.
//! - **Saving**: only when the export completed and every file was verified, after the
//!   rename; the file is re-read just before, so entries of other requests written meanwhile
//!   are kept, and replaced atomically (temporary file, `fsync`, rename). A failed, timed-out
//!   or interrupted run leaves the saved instant as it was: the next run covers the gap.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};
use url::Url;

use super::kickoff::{self, Param};
use super::{ClientError, ExportArgs, ExportSummary};

/// The `--since` value that turns the chain on.
pub(crate) const AUTO: &str = "auto";
/// The state file, in `--out`.
pub const STATE_FILE: &str = ".fhir-export-since.json";
const STATE_VERSION: u32 = 1;
/// Prefix of a run folder until its export is complete.
const INCOMPLETE_PREFIX: &str = ".incomplete-";

/// `--since auto` was given.
pub(crate) fn is_auto(args: &ExportArgs) -> bool {
    args.since.as_deref().map(str::trim) == Some(AUTO)
}

/// The state file's content.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct State {
    version: u32,
    #[serde(default)]
    requests: BTreeMap<String, SavedSince>,
}

/// What is saved per request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedSince {
    /// The manifest's `transactionTime`, as the server wrote it.
    #[serde(rename = "transactionTime")]
    pub transaction_time: String,
    pub status_url: String,
    /// When the client had every file (UTC).
    pub completed_at: String,
    /// The run folder, relative to `--out`.
    #[serde(default)]
    pub folder: String,
}

/// What `--since auto` did in a completed run (part of [`ExportSummary`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinceAuto {
    /// The `_since` sent: the previous export's `transactionTime`; `None` on the first run of
    /// the request.
    pub since: Option<String>,
    /// The `transactionTime` saved for the next run.
    pub saved: String,
    /// The state file.
    pub state_file: PathBuf,
    /// The request key (see the module documentation).
    pub key: String,
}

/// A run with `--since auto`, from before the kick-off to the saved state.
#[derive(Debug)]
pub(crate) struct AutoRun {
    dir: PathBuf,
    key: String,
    previous: Option<SavedSince>,
    /// The incomplete run folder and its final name, once created.
    folder: OnceLock<(PathBuf, String)>,
}

fn usage(message: impl Into<String>) -> ClientError {
    ClientError::Usage(message.into())
}

fn state_error(path: &Path, message: impl Into<String>) -> ClientError {
    ClientError::SinceState {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> ClientError + '_ {
    move |source| ClientError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The request key of a kick-off (see the module documentation).
pub(crate) fn request_key(args: &ExportArgs, base: &Url) -> String {
    let mut endpoint = kickoff::kickoff_url(base, &args.level);
    // Never a secret in the state file.
    let _ = endpoint.set_username("");
    let _ = endpoint.set_password(None);
    let unsinced = ExportArgs {
        since: None,
        ..args.clone()
    };
    let mut params: Vec<Param> = kickoff::params(&unsinced)
        .into_iter()
        .filter(|p| p.name != "_since")
        .map(|p| match p.name.as_str() {
            "_type" | "_elements" => {
                let mut set: Vec<&str> = p
                    .value
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .collect();
                set.sort_unstable();
                set.dedup();
                Param {
                    value: set.join(","),
                    name: p.name,
                }
            }
            _ => p,
        })
        .collect();
    params.sort_by(|a, b| (&a.name, &a.value).cmp(&(&b.name, &b.value)));
    params.dedup();
    let method = if args.post { "POST" } else { "GET" };
    let mut key = format!("{method} {endpoint}");
    if !params.is_empty() {
        key.push('?');
        key.push_str(&kickoff::encode_query(&params));
    }
    if args.lenient {
        key.push_str(" Prefer:handling=lenient");
    }
    key
}

fn read_state(path: &Path) -> Result<State, ClientError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(State::default()),
        Err(e) => {
            return Err(state_error(path, format!("cannot read it ({e})")));
        }
    };
    let state: State = serde_json::from_slice(&bytes).map_err(|e| {
        state_error(
            path,
            format!("not a state file of this client ({e}); move it away to start over"),
        )
    })?;
    if state.version != STATE_VERSION {
        return Err(state_error(
            path,
            format!(
                "version {} (this client reads version {STATE_VERSION})",
                state.version
            ),
        ));
    }
    for (key, entry) in &state.requests {
        shared::model::parse_instant(&entry.transaction_time).map_err(|_| {
            state_error(
                path,
                format!("the `transactionTime` saved for `{key}` is not a FHIR instant"),
            )
        })?;
    }
    Ok(state)
}

/// Replaces `path` with `bytes` atomically: a temporary file in the same folder, flushed to
/// disk, renamed over it.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), ClientError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!("{name}.tmp-{}", std::process::id()));
    let written = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(source) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(ClientError::Io {
            path: path.to_path_buf(),
            source,
        });
    }
    // The rename itself is durable once the folder is flushed (not possible everywhere).
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

impl AutoRun {
    /// Checks the flags and reads the saved instant of this request.
    pub fn prepare(args: &ExportArgs) -> Result<AutoRun, ClientError> {
        if args.status.is_some() {
            return Err(usage(
                "--since auto starts an export, so it cannot be used with --status (re-attaching \
                 saves nothing: the next --since auto run covers the export anyway)",
            ));
        }
        let Some(dir) = args.out.clone() else {
            return Err(usage(format!(
                "--since auto needs --out DIR: the transactionTime of the previous export is \
                 kept in DIR/{STATE_FILE}, and each run writes into a new folder under DIR"
            )));
        };
        if args.params.iter().any(|(name, _)| name == "_since") {
            return Err(usage(
                "--since auto chooses `_since` itself: drop --param _since=...",
            ));
        }
        let base = args
            .base
            .as_deref()
            .ok_or_else(|| usage("--since auto needs --base"))?;
        let base = Url::parse(base)
            .ok()
            .filter(super::net::is_http)
            .ok_or_else(|| usage(format!("--base `{base}` is not an http(s) URL")))?;
        let key = request_key(args, &base);
        let previous = read_state(&dir.join(STATE_FILE))?.requests.remove(&key);
        Ok(AutoRun {
            dir,
            key,
            previous,
            folder: OnceLock::new(),
        })
    }

    /// The `_since` to send: the previous export's `transactionTime`, if any.
    pub fn since(&self) -> Option<&str> {
        self.previous.as_ref().map(|p| p.transaction_time.as_str())
    }

    /// What is printed before the kick-off.
    pub fn describe(&self) -> String {
        match &self.previous {
            Some(p) => format!(
                "--since auto: _since={} (the transactionTime of the export of this request \
                 completed at {})",
                p.transaction_time, p.completed_at
            ),
            None => format!(
                "--since auto: no _since (no earlier export of this request in {}): exporting \
                 everything",
                self.dir.join(STATE_FILE).display()
            ),
        }
    }

    /// Creates this run's folder, under its incomplete name; returns its path.
    pub async fn create_folder(&self) -> Result<PathBuf, ClientError> {
        if let Some((path, _)) = self.folder.get() {
            return Ok(path.clone());
        }
        tokio::fs::create_dir_all(&self.dir)
            .await
            .map_err(io_error(&self.dir))?;
        let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ").to_string();
        for n in 1u32.. {
            let name = if n == 1 {
                stamp.clone()
            } else {
                format!("{stamp}-{n}")
            };
            let incomplete = self.dir.join(format!("{INCOMPLETE_PREFIX}{name}"));
            if tokio::fs::try_exists(self.dir.join(&name))
                .await
                .map_err(io_error(&self.dir))?
            {
                continue;
            }
            match tokio::fs::create_dir(&incomplete).await {
                Ok(()) => {
                    let _ = self.folder.set((incomplete.clone(), name));
                    return Ok(incomplete);
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(io_error(&incomplete)(e)),
            }
        }
        unreachable!("u32 suffixes run out")
    }

    /// After a failure: removes the incomplete run folder, if one was made.
    pub async fn discard(&self) {
        if let Some((path, _)) = self.folder.get() {
            let _ = tokio::fs::remove_dir_all(path).await;
        }
    }

    /// After a complete, verified export: gives the run folder its final name (updating the
    /// summary's paths) and saves the manifest's `transactionTime` for this request.
    pub async fn finish(&self, summary: &mut ExportSummary) -> Result<SinceAuto, ClientError> {
        let state_file = self.dir.join(STATE_FILE);
        let transaction_time = summary
            .manifest
            .get("transactionTime")
            .and_then(serde_json::Value::as_str)
            .ok_or_else(|| state_error(&state_file, "the manifest has no transactionTime"))?
            .to_owned();
        let (incomplete, name) = self
            .folder
            .get()
            .cloned()
            .ok_or_else(|| state_error(&state_file, "the run folder was never created"))?;
        let done = self.dir.join(&name);
        tokio::fs::rename(&incomplete, &done)
            .await
            .map_err(io_error(&done))?;
        if summary.out_dir == incomplete {
            summary.out_dir = done.clone();
        }
        for f in &mut summary.files {
            if let Ok(rel) = f.path.strip_prefix(&incomplete) {
                f.path = done.join(rel);
            }
        }
        let entry = SavedSince {
            transaction_time: transaction_time.clone(),
            status_url: summary.status_url.clone(),
            completed_at: shared::model::format_instant(&chrono::Utc::now()),
            folder: name,
        };
        // Re-read: another request's run may have saved meanwhile.
        let mut state = read_state(&state_file)?;
        state.version = STATE_VERSION;
        state.requests.insert(self.key.clone(), entry);
        let mut text = serde_json::to_vec_pretty(&state)
            .map_err(|e| io_error(&state_file)(std::io::Error::other(e)))?;
        text.push(b'\n');
        let path = state_file.clone();
        tokio::task::spawn_blocking(move || write_atomically(&path, &text))
            .await
            .map_err(|e| io_error(&state_file)(std::io::Error::other(e)))??;
        Ok(SinceAuto {
            since: self.since().map(str::to_owned),
            saved: transaction_time,
            state_file,
            key: self.key.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::Level;

    fn args() -> ExportArgs {
        ExportArgs {
            base: Some("https://user:pw@h.example/fhir/".into()),
            since: Some("auto".into()),
            types: vec!["Patient".into(), "Observation, Condition".into()],
            type_filters: vec!["Patient?b=1".into(), "Observation?a=1,2".into()],
            elements: vec!["meta".into(), "id".into()],
            params: vec![("_outputFormat".into(), "ndjson".into())],
            out: Some("/tmp/x".into()),
            ..ExportArgs::default()
        }
    }

    fn key(a: &ExportArgs) -> String {
        request_key(a, &Url::parse(a.base.as_deref().unwrap()).unwrap())
    }

    #[test]
    fn the_key_names_the_request_and_nothing_else() {
        let a = args();
        let k = key(&a);
        assert_eq!(
            k,
            "GET https://h.example/fhir/$export?_elements=id,meta\
             &_outputFormat=ndjson&_type=Condition,Observation,Patient\
             &_typeFilter=Observation%3Fa%3D1%2C2&_typeFilter=Patient%3Fb%3D1"
        );
        assert!(!k.contains("pw"), "no credentials");
        // Order, repeats, `_since`, the folder, parallelism and credentials do not count.
        let same = ExportArgs {
            base: Some("https://h.example/fhir".into()),
            types: vec!["Condition".into(), "Patient,Observation,Patient".into()],
            type_filters: vec!["Observation?a=1,2".into(), "Patient?b=1".into()],
            elements: vec!["id,meta".into()],
            since: Some("2024-01-01T00:00:00Z".into()),
            out: Some("/elsewhere".into()),
            parallel: 9,
            token: Some(super::super::BearerToken::new("t")),
            ..a.clone()
        };
        assert_eq!(key(&same), k);
        // Anything else does.
        let others = [
            ExportArgs {
                types: vec!["Patient".into()],
                ..a.clone()
            },
            ExportArgs {
                type_filters: vec!["Patient?b=1".into()],
                ..a.clone()
            },
            ExportArgs {
                post: true,
                ..a.clone()
            },
            ExportArgs {
                lenient: true,
                ..a.clone()
            },
            ExportArgs {
                level: Level::Group("g".into()),
                ..a.clone()
            },
            ExportArgs {
                until: Some("2030-01-01T00:00:00Z".into()),
                ..a.clone()
            },
            ExportArgs {
                params: vec![],
                ..a.clone()
            },
            ExportArgs {
                base: Some("https://h.example/other".into()),
                ..a.clone()
            },
        ];
        let mut keys: Vec<String> = others.iter().map(key).collect();
        keys.push(k);
        let n = keys.len();
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), n, "all distinct: {keys:#?}");
    }

    #[test]
    fn flags_are_checked() {
        assert!(is_auto(&args()));
        assert!(!is_auto(&ExportArgs {
            since: Some("2024-01-01T00:00:00Z".into()),
            ..args()
        }));
        let refused = |a: ExportArgs, want: &str| match AutoRun::prepare(&a) {
            Err(ClientError::Usage(m)) => assert!(m.contains(want), "{m}"),
            other => panic!("expected a usage error, got {other:?}"),
        };
        refused(
            ExportArgs {
                out: None,
                ..args()
            },
            "--out",
        );
        refused(
            ExportArgs {
                status: Some("http://h/s".into()),
                ..args()
            },
            "--status",
        );
        refused(
            ExportArgs {
                params: vec![("_since".into(), "x".into())],
                ..args()
            },
            "_since",
        );
    }

    fn summary(out_dir: &Path) -> ExportSummary {
        ExportSummary {
            status_url: "http://h/s/1".into(),
            manifest: serde_json::json!({"transactionTime": "2024-05-01T10:00:00.123Z"}),
            files: vec![super::super::DownloadedFile {
                path: out_dir.join("Patient.ndjson"),
                resource_type: Some("Patient".into()),
                lines: 0,
                bytes: 0,
                section: super::super::Section::Output,
                url: "http://h/f".into(),
                per_type: BTreeMap::new(),
            }],
            resources: 0,
            bytes: 0,
            out_dir: out_dir.to_path_buf(),
            elapsed: std::time::Duration::ZERO,
            since_auto: None,
        }
    }

    #[tokio::test]
    async fn runs_get_folders_of_their_own_renamed_when_complete() {
        let dir = tempfile::tempdir().unwrap();
        let a = ExportArgs {
            out: Some(dir.path().to_path_buf()),
            ..args()
        };
        let first = AutoRun::prepare(&a).unwrap();
        assert_eq!(first.since(), None);
        let f1 = first.create_folder().await.unwrap();
        assert_eq!(
            first.create_folder().await.unwrap(),
            f1,
            "one folder per run"
        );
        let name1 = f1.file_name().unwrap().to_str().unwrap().to_owned();
        assert!(name1.starts_with(INCOMPLETE_PREFIX), "{name1}");
        std::fs::write(f1.join("Patient.ndjson"), "").unwrap();
        let mut s = summary(&f1);
        let done = first.finish(&mut s).await.unwrap();
        let final1 = dir.path().join(&name1[INCOMPLETE_PREFIX.len()..]);
        assert_eq!(s.out_dir, final1);
        assert_eq!(s.files[0].path, final1.join("Patient.ndjson"));
        assert!(s.files[0].path.is_file() && !f1.exists());
        assert_eq!(done.since, None);
        assert_eq!(done.saved, "2024-05-01T10:00:00.123Z");

        // The next run of the request starts from the saved instant, in another folder (a
        // suffix within the same second), and a failed one leaves neither folder nor instant.
        let second = AutoRun::prepare(&a).unwrap();
        assert_eq!(second.since(), Some("2024-05-01T10:00:00.123Z"));
        let f2 = second.create_folder().await.unwrap();
        assert_ne!(f2, f1);
        let state = std::fs::read(dir.path().join(STATE_FILE)).unwrap();
        second.discard().await;
        assert!(!f2.exists());
        assert_eq!(std::fs::read(dir.path().join(STATE_FILE)).unwrap(), state);
        let third = AutoRun::prepare(&a).unwrap();
        let mut taken = Vec::new();
        for _ in 0..3 {
            let r = AutoRun::prepare(&a).unwrap();
            taken.push(r.create_folder().await.unwrap());
        }
        taken.push(third.create_folder().await.unwrap());
        let mut names: Vec<_> = taken.iter().map(|p| p.file_name().unwrap()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), 4, "distinct folders: {taken:?}");
    }

    #[test]
    fn state_round_trips_and_bad_state_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(STATE_FILE);
        assert_eq!(read_state(&path).unwrap(), State::default());
        let mut state = State {
            version: STATE_VERSION,
            ..State::default()
        };
        state.requests.insert(
            "GET http://h/$export".into(),
            SavedSince {
                transaction_time: "2024-05-01T10:00:00.123+02:00".into(),
                status_url: "http://h/s/1".into(),
                completed_at: "2024-05-01T08:01:00.000Z".into(),
                folder: "20240501T080100Z".into(),
            },
        );
        write_atomically(&path, &serde_json::to_vec(&state).unwrap()).unwrap();
        assert_eq!(read_state(&path).unwrap(), state);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("\"transactionTime\":\"2024-05-01T10:00:00.123+02:00\""));
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temporary file left"
        );

        for bad in [
            "not json",
            r#"{"version": 2, "requests": {}}"#,
            r#"{"version": 1, "requests": {"k": {"transactionTime": "yesterday", "status_url": "", "completed_at": ""}}}"#,
        ] {
            std::fs::write(&path, bad).unwrap();
            match read_state(&path) {
                Err(ClientError::SinceState { path: p, .. }) => assert_eq!(p, path),
                other => panic!("{bad}: expected a state error, got {other:?}"),
            }
        }
    }
}
