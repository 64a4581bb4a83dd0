//! `fhir-export serve`: every function of the service in one process on embedded defaults:
//! job store and work queue in one SQLite file, output in a local folder, worker tasks
//! polling the queue, and (when no source is given) a generated sample dataset.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use shared::adapters::retry::retrying;
use shared::adapters::sqlite::{SqliteDb, SqliteJobStore, SqliteQueue};
use shared::adapters::target::{SourceUrl, StoreSettings, StoreUrl, TargetError, open_source};
use shared::config::{ConfigError, Env};
use shared::http::{
    CancelState, FilesState, KickoffState, MetadataState, StatusState, cancel_router, files_router,
    kickoff_router, metadata_router, status_router, with_fallbacks,
};
use shared::ports::{JobStore, ObjectStore, ResourceSource, WorkQueue};
use shared::request::Capabilities;
use shared::worker::WorkerDeps;
use shared::worker::runner::{PoolConfig, spawn_pool};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::synth::{GenOptions, generate};

/// Where the FHIR base is mounted on the local server.
pub const FHIR_PATH: &str = "/fhir";
/// Patients in the sample dataset generated when no source is given.
pub const SAMPLE_PATIENTS: u64 = 200;

#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub bind: SocketAddr,
    /// NDJSON folder (a path or `file://` URL); `None` generates sample data under `state`.
    pub source: Option<String>,
    /// Output target URL (`file:///path`, or a path); `None` is `<state>/output`.
    pub output: Option<String>,
    /// Folder for the SQLite file, the default output and the sample data.
    pub state: PathBuf,
    /// Base URL clients reach this server at; `None` is `http://<bound address>`.
    pub public_url: Option<String>,
    /// `dynamodb://table` to keep jobs in DynamoDB (needs the `aws` feature); `None` is the
    /// SQLite file in the state folder.
    pub job_store: Option<String>,
    /// `sqs://queue-name` to move work through SQS (dead letters in `<name>-dlq`; needs the
    /// `aws` feature); `None` is the SQLite queue.
    pub queue: Option<String>,
    /// Worker tasks; 0 runs no workers at all (tests drive the queue themselves).
    pub workers: usize,
    /// How often the sweep runs (stalled and expired jobs).
    pub sweep_every: Duration,
    /// Variables read before the process environment (tests run servers with different
    /// settings side by side in one process).
    pub env: Vec<(String, String)>,
    /// Wrappers around the ports, applied before anything uses them: for embedding the
    /// server and for tests that inject faults or watch what the workers do.
    pub wrap: Wrappers,
    /// Clients of the embedded authorization server: id and the file of its public JWKS.
    pub auth_clients: Vec<(String, PathBuf)>,
    /// Scopes a registered client may be given (space-separated), by client id; others get
    /// `system/*.read system/*.rs`.
    pub auth_client_scopes: Vec<(String, String)>,
    /// A URL every export's end is `POST`ed to (`docs/scheduled-exports.md`).
    pub events_webhook: Option<String>,
    /// A file every export's end is appended to, one JSON line each.
    pub events_log: Option<PathBuf>,
    /// A JSON file of schedules the server runs (`docs/scheduled-exports.md`).
    pub schedules: Option<PathBuf>,
}

/// A function that wraps a port in another implementation of it.
pub struct Wrap<T: ?Sized>(pub Arc<dyn Fn(Arc<T>) -> Arc<T> + Send + Sync>);

impl<T: ?Sized> Clone for Wrap<T> {
    fn clone(&self) -> Self {
        Wrap(self.0.clone())
    }
}

impl<T: ?Sized> std::fmt::Debug for Wrap<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Wrap(..)")
    }
}

impl<T: ?Sized> Wrap<T> {
    pub fn new(f: impl Fn(Arc<T>) -> Arc<T> + Send + Sync + 'static) -> Self {
        Wrap(Arc::new(f))
    }
}

fn wrapped<T: ?Sized>(port: Arc<T>, wrap: &Option<Wrap<T>>) -> Arc<T> {
    match wrap {
        Some(w) => (w.0)(port),
        None => port,
    }
}

/// Optional wrappers of the server's ports (see [`ServeConfig::wrap`]).
#[derive(Debug, Clone, Default)]
pub struct Wrappers {
    pub source: Option<Wrap<dyn ResourceSource>>,
    pub output: Option<Wrap<dyn ObjectStore>>,
    pub queue: Option<Wrap<dyn WorkQueue>>,
}

impl ServeConfig {
    pub fn new(state: impl Into<PathBuf>) -> Self {
        ServeConfig {
            bind: SocketAddr::from(([127, 0, 0, 1], 8080)),
            source: None,
            output: None,
            state: state.into(),
            public_url: None,
            job_store: None,
            queue: None,
            workers: 4,
            sweep_every: Duration::from_secs(30),
            env: Vec::new(),
            wrap: Wrappers::default(),
            auth_clients: Vec::new(),
            auth_client_scopes: Vec::new(),
            events_webhook: None,
            events_log: None,
            schedules: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot create the state folder {path}")]
    StateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Db(#[from] shared::adapters::sqlite::SqliteOpenError),
    #[error("cannot generate the sample dataset")]
    Sample(#[source] std::io::Error),
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Target(#[from] TargetError),
    #[error("`{url}` is not supported: {reason}")]
    Unsupported { url: String, reason: &'static str },
    #[error("cannot set up {what}")]
    Backend {
        what: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error(
        "another fhir-export server is using the state folder {path} (its lock file is held); give each server a state folder of its own"
    )]
    StateInUse { path: PathBuf },
    #[error("the output {output} cannot be written to: {reason}")]
    OutputUnwritable { output: String, reason: String },
    #[error(
        "refusing to serve {addr} without authentication: register a client (--auth-client ID=JWKS_FILE) or trust an issuer (FHIR_EXPORT_AUTH_ISSUER with FHIR_EXPORT_AUTH_JWKS_URL), or bind to a loopback address"
    )]
    OpenOnNetwork { addr: SocketAddr },
    #[error("authentication: {0}")]
    Auth(String),
    #[error("events: {0}")]
    Events(String),
    #[error("schedules: {0}")]
    Schedules(String),
}

/// Takes the state folder for this process: the SQLite file in it is one process's (its
/// queue's leases are released at start on that assumption). The lock is held until the
/// returned file is dropped, and goes with the process however it ends.
fn lock_state(state: &Path) -> Result<std::fs::File, ServeError> {
    let path = state.join("fhir-export.lock");
    let io = |source| ServeError::StateDir {
        path: path.clone(),
        source,
    };
    let file = std::fs::File::create(&path).map_err(io)?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(ServeError::StateInUse {
            path: state.to_path_buf(),
        }),
        Err(std::fs::TryLockError::Error(e)) => Err(io(e)),
    }
}

/// Writes and deletes a small object, so that an output the server cannot write to (a
/// read-only folder, a bucket it may not write) stops it at start, with the reason, rather
/// than failing every export later.
async fn check_writable(output: &dyn ObjectStore) -> Result<(), ServeError> {
    let key = format!(
        ".fhir-export-probe-{}-{}",
        std::process::id(),
        chrono::Utc::now().timestamp_micros()
    );
    let unwritable = |e: shared::ports::ObjectError| ServeError::OutputUnwritable {
        output: output.describe(),
        reason: match &e {
            shared::ports::ObjectError::Refused { reason, .. } => reason.to_string(),
            other => shared::error_chain(other),
        },
    };
    output
        .put(&key, bytes::Bytes::from_static(b"probe\n"))
        .await
        .map_err(unwritable)?;
    output.delete(&key).await.map_err(unwritable)
}

/// The job store named on the command line.
async fn open_job_store(url: Option<&str>, db: &SqliteDb) -> Result<Arc<dyn JobStore>, ServeError> {
    let Some(url) = url else {
        return Ok(Arc::new(SqliteJobStore::new(db.clone())));
    };
    if let Some(table) = url.strip_prefix("dynamodb://") {
        #[cfg(feature = "aws")]
        {
            let config = shared::adapters::aws::sdk_config().await;
            let store = shared::adapters::aws::dynamodb::DynamoJobStore::new(&config, table);
            store
                .create_table()
                .await
                .map_err(|e| ServeError::Backend {
                    what: "the DynamoDB table",
                    source: Box::new(e),
                })?;
            return Ok(Arc::new(store));
        }
        #[cfg(not(feature = "aws"))]
        {
            let _ = table;
            return Err(ServeError::Unsupported {
                url: url.to_owned(),
                reason: "this build has no AWS adapters (build with `--features aws`)",
            });
        }
    }
    Err(ServeError::Unsupported {
        url: url.to_owned(),
        reason: "job stores are dynamodb://table (or the default SQLite file)",
    })
}

/// The work queue and its dead-letter queue named on the command line.
async fn open_queue(
    url: Option<&str>,
    db: &SqliteDb,
    settings: &shared::settings::Settings,
    max_receives: u32,
) -> Result<(Arc<dyn WorkQueue>, Arc<dyn WorkQueue>, Option<SqliteQueue>), ServeError> {
    let Some(url) = url else {
        let dead = SqliteQueue::new(db.clone(), "dead-letter", settings.visibility_timeout);
        let work = SqliteQueue::new(db.clone(), "work", settings.visibility_timeout)
            .with_dead_letter(&dead, max_receives);
        return Ok((Arc::new(work.clone()), Arc::new(dead), Some(work)));
    };
    if let Some(name) = url.strip_prefix("sqs://") {
        #[cfg(feature = "aws")]
        {
            let config = shared::adapters::aws::sdk_config().await;
            let (work, dead) = shared::adapters::aws::sqs::create_queue_pair(
                &config,
                name,
                settings.visibility_timeout,
                max_receives,
            )
            .await
            .map_err(|e| ServeError::Backend {
                what: "the SQS queues",
                source: Box::new(e),
            })?;
            return Ok((Arc::new(work), Arc::new(dead), None));
        }
        #[cfg(not(feature = "aws"))]
        {
            let _ = (name, settings, max_receives);
            return Err(ServeError::Unsupported {
                url: url.to_owned(),
                reason: "this build has no AWS adapters (build with `--features aws`)",
            });
        }
    }
    Err(ServeError::Unsupported {
        url: url.to_owned(),
        reason: "queues are sqs://queue-name (or the default SQLite queue)",
    })
}

/// A started server. Dropping it does not stop it; call [`RunningServer::stop`].
pub struct RunningServer {
    pub addr: SocketAddr,
    /// Absolute FHIR base URL, e.g. `http://127.0.0.1:8080/fhir`.
    pub base_url: String,
    /// The embedded authorization server's token endpoint, when clients are registered.
    pub token_url: Option<String>,
    pub output: Arc<dyn ObjectStore>,
    /// Where exports land when the output is a local folder.
    pub output_dir: Option<PathBuf>,
    /// The source folder, when the source is local.
    pub source_dir: Option<PathBuf>,
    pub deps: WorkerDeps,
    pub dead_letters: Arc<dyn WorkQueue>,
    /// Held for as long as the server runs (see [`lock_state`]).
    _state_lock: Arc<std::fs::File>,
    /// The work queue, when it is the local SQLite one (tests wait for it to drain).
    pub local_queue: Option<SqliteQueue>,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl RunningServer {
    /// Stops accepting requests and stops the workers; waits for both.
    pub async fn stop(self) {
        self.shutdown.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
    }

    /// Resolves when the server has been asked to stop.
    pub async fn stopped(&self) {
        self.shutdown.cancelled().await
    }

    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }
}

/// Generates the sample dataset once; a marker file says it is complete.
fn ensure_sample_data(dir: &Path) -> Result<(), ServeError> {
    let marker = dir.join(".complete");
    if marker.exists() {
        return Ok(());
    }
    tracing::info!(dir = %dir.display(), patients = SAMPLE_PATIENTS, "generating the sample dataset");
    let summary = generate(
        &GenOptions {
            patients: SAMPLE_PATIENTS,
            ..GenOptions::default()
        },
        dir,
    )
    .map_err(ServeError::Sample)?;
    let total: u64 = summary.counts.values().sum();
    std::fs::write(&marker, format!("{total}\n")).map_err(ServeError::Sample)?;
    tracing::info!(resources = total, "sample dataset ready");
    Ok(())
}

async fn log_requests(req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let started = Instant::now();
    let resp = next.run(req).await;
    tracing::info!(
        %method,
        %path,
        status = resp.status().as_u16(),
        ms = started.elapsed().as_millis() as u64,
        "http"
    );
    resp
}

/// Starts the server and its workers.
pub async fn start(config: ServeConfig) -> Result<RunningServer, ServeError> {
    std::fs::create_dir_all(&config.state).map_err(|source| ServeError::StateDir {
        path: config.state.clone(),
        source,
    })?;
    let state_lock = Arc::new(lock_state(&config.state)?);
    let db = SqliteDb::open(&config.state.join("fhir-export.sqlite"))?;
    let overrides = config.env.clone();
    let env = Env::new(move |k: &str| {
        overrides
            .iter()
            .rev()
            .find(|(name, _)| name == k)
            .map(|(_, v)| v.clone())
            .or_else(|| std::env::var(k).ok())
    });

    let output_url = match &config.output {
        Some(url) => StoreUrl::parse(url)?,
        None => StoreUrl::Local(config.state.join("output")),
    };
    let output_dir = match &output_url {
        StoreUrl::Local(dir) => Some(dir.clone()),
        #[allow(unreachable_patterns)]
        _ => None,
    };
    let faults = match env.get("FHIR_EXPORT_FAULTS") {
        Some(spec) => shared::adapters::faults::Faults::parse(&spec).map_err(|reason| {
            ConfigError::Invalid {
                name: "FHIR_EXPORT_FAULTS",
                value: spec.clone(),
                reason,
            }
        })?,
        None => Default::default(),
    };
    if !faults.is_none() {
        tracing::warn!(?faults, "fault injection is on (FHIR_EXPORT_FAULTS)");
    }
    // Faults (when asked for) under the retries, as a real store's hiccups would be.
    let store_settings = StoreSettings::try_from_lookup(|k| env.lookup(k))?;
    let output = wrapped(
        retrying(faults.store(output_url.open_with(&store_settings).await?)),
        &config.wrap.output,
    );
    // Temp files of a previous process that died mid-write (they hold patient data) go with
    // the worker pool's first sweep, which runs as the pool starts.
    // An account root has no place of its own to probe: each export's container is checked
    // when the export is planned.
    if !output_url.container_per_export() {
        check_writable(output.as_ref()).await?;
    }
    let source_url = match &config.source {
        Some(url) => SourceUrl::parse(url)?,
        None => {
            let dir = config.state.join("sample-data");
            let d = dir.clone();
            tokio::task::spawn_blocking(move || ensure_sample_data(&d))
                .await
                .map_err(|e| ServeError::Sample(std::io::Error::other(e)))??;
            SourceUrl::Files(StoreUrl::Local(dir))
        }
    };
    let source_dir = source_url.local_dir().map(|d| d.to_path_buf());
    let source: Arc<dyn ResourceSource> = wrapped(
        open_source(&source_url, &store_settings).await?,
        &config.wrap.source,
    );

    let listener = tokio::net::TcpListener::bind(config.bind)
        .await
        .map_err(|source| ServeError::Bind {
            addr: config.bind,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| ServeError::Bind {
        addr: config.bind,
        source,
    })?;
    let public = config
        .public_url
        .clone()
        .unwrap_or_else(|| format!("http://{addr}"));
    let mut settings = env.settings(&format!("{}{}", public.trim_end_matches('/'), FHIR_PATH))?;
    settings.container_per_export = output_url.container_per_export();

    let max_receives = env.parse::<u32>("FHIR_EXPORT_MAX_RECEIVES")?.unwrap_or(5);
    let mut listener_limits = crate::listener::ListenerLimits::default();
    if let Some(t) = env.secs("FHIR_EXPORT_HEADER_READ_TIMEOUT_SECS")? {
        listener_limits.header_read_timeout = t.max(Duration::from_secs(1));
    }
    if let Some(n) = env.parse::<usize>("FHIR_EXPORT_MAX_CONNECTIONS")? {
        listener_limits.max_connections = n.max(1);
    }
    let (queue, dead, local_queue) =
        open_queue(config.queue.as_deref(), &db, &settings, max_receives).await?;
    if let Some(local) = &local_queue {
        // The state folder is ours alone (`lock_state`), so every lease in its queue is a
        // dead process's: its chunks are redelivered now, not after the visibility timeout.
        let released = local
            .release_leases()
            .await
            .map_err(|e| ServeError::Backend {
                what: "the work queue",
                source: Box::new(e),
            })?;
        if released > 0 {
            tracing::info!(
                messages = released,
                "work left in flight by a previous run is delivered again"
            );
        }
    }
    let queue = wrapped(faults.queue(queue), &config.wrap.queue);
    let jobs = open_job_store(config.job_store.as_deref(), &db).await?;

    let gate = crate::auth::gate(&config, &env, &public, &settings.public_base_url)?;
    if gate.is_none() && !addr.ip().is_loopback() {
        return Err(ServeError::OpenOnNetwork { addr });
    }
    settings.authenticated = gate.is_some();
    let settings = Arc::new(settings);
    let schedule_defs = match &config.schedules {
        Some(path) => crate::schedules::load(path)?,
        None => Vec::new(),
    };
    let issuer = gate.as_ref().and_then(|g| g.issuers.first().cloned());
    let kickoff = KickoffState {
        jobs: jobs.clone(),
        queue: queue.clone(),
        source: source.clone(),
        settings: settings.clone(),
        caps: Capabilities::CURRENT,
        schedules: crate::schedules::book(&schedule_defs, issuer.clone()),
    };

    let protected = Router::new()
        .merge(kickoff_router(kickoff.clone()))
        .merge(status_router(StatusState {
            jobs: jobs.clone(),
            output: output.clone(),
            settings: settings.clone(),
        }))
        .merge(cancel_router(CancelState {
            jobs: jobs.clone(),
            output: output.clone(),
            queue: queue.clone(),
            settings: settings.clone(),
        }))
        .merge(files_router(FilesState {
            jobs: jobs.clone(),
            output: output.clone(),
            settings: settings.clone(),
        }));
    // Metadata and the SMART configuration stay open: clients read them to learn how to
    // authenticate.
    let mut open = metadata_router(MetadataState::new(settings.clone(), source.clone()));
    let mut root = Router::new();
    let fhir = match &gate {
        Some(gate) => {
            open = open.merge(shared::auth::smart_configuration_router(
                gate.smart_configuration.clone(),
            ));
            if let Some(authority) = &gate.authority {
                root = root.nest(
                    crate::auth::AUTH_PATH,
                    shared::auth::layer::authority_router(authority.clone()),
                );
            }
            shared::auth::layer::protect(protected, gate.verifier.clone()).merge(open)
        }
        None => protected.merge(open),
    };
    let app =
        with_fallbacks(root.nest(FHIR_PATH, fhir)).layer(axum::middleware::from_fn(log_requests));

    let shutdown = CancellationToken::new();
    let mut tasks = Vec::new();
    {
        let shutdown = shutdown.clone();
        tasks.push(tokio::spawn(async move {
            crate::listener::serve(listener, app, listener_limits, shutdown).await;
        }));
    }
    let deps = WorkerDeps {
        jobs,
        queue,
        output: output.clone(),
        source,
        settings: settings.clone(),
        events: crate::events::sink(&config, &env)?,
    };
    if !schedule_defs.is_empty() {
        tracing::info!(
            schedules = schedule_defs.len(),
            "scheduled exports on (--schedules)"
        );
        tasks.extend(crate::schedules::spawn(
            schedule_defs,
            kickoff,
            deps.events.clone(),
            issuer,
            shutdown.clone(),
        ));
    }
    if config.workers > 0 {
        tasks.extend(spawn_pool(
            deps.clone(),
            dead.clone(),
            PoolConfig {
                workers: config.workers,
                sweep_every: config.sweep_every,
                ..PoolConfig::default()
            },
            shutdown.clone(),
        ));
    }
    match &gate {
        Some(gate) => tracing::info!(
            issuers = %gate.issuers.join(", "),
            clients = gate.authority.as_ref().map_or(0, |a| a.client_ids().count()),
            "bearer tokens required on every route but metadata and .well-known"
        ),
        None => tracing::warn!(
            addr = %addr,
            "authentication is OFF: every local process can start exports and read their files (allowed on loopback only)"
        ),
    }
    tracing::info!(
        addr = %addr,
        base = %settings.public_base_url,
        source = %deps.source.describe(),
        output = %output.describe(),
        workers = config.workers,
        "fhir-export serving"
    );
    Ok(RunningServer {
        addr,
        base_url: settings.public_base_url.clone(),
        token_url: gate
            .as_ref()
            .and_then(|g| g.authority.as_ref())
            .map(|a| a.token_url().to_owned()),
        output,
        output_dir,
        source_dir,
        deps,
        dead_letters: dead,
        _state_lock: state_lock,
        local_queue,
        shutdown,
        tasks,
    })
}
