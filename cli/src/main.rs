//! `fhir-export`: wiring only. Each subcommand parses its flags and calls the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use fhir_export::serve::{ServeConfig, start};
use fhir_export::synth::{GenOptions, generate};
use fhir_export::telemetry;

#[derive(Parser)]
#[command(
    name = "fhir-export",
    version,
    about = "FHIR Bulk Data $export service and tools"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the whole service (kick-off, status, cancel, files, workers) in one process.
    Serve {
        /// Address to listen on.
        #[arg(long, env = "FHIR_EXPORT_BIND", default_value = "127.0.0.1:8080")]
        bind: SocketAddr,
        /// NDJSON to export from: a folder, file:///path, or s3://bucket/prefix (needs the
        /// `aws` feature). Default: a generated sample dataset under the state folder.
        #[arg(long, env = "FHIR_EXPORT_SOURCE")]
        source: Option<String>,
        /// Where exports are written: file:///path, or s3://bucket/prefix (needs the `aws`
        /// feature). Default: <state>/output.
        #[arg(long, env = "FHIR_EXPORT_OUTPUT")]
        output: Option<String>,
        /// Folder for the job database, the default output and the sample data.
        #[arg(long, env = "FHIR_EXPORT_STATE", default_value = "fhir-export-data")]
        state: PathBuf,
        /// URL clients reach this server at, without the FHIR base path: links are built as
        /// <public-url>/fhir/... Default: http://<bound address>.
        #[arg(long, env = "FHIR_EXPORT_PUBLIC_URL")]
        public_url: Option<String>,
        /// Job store: dynamodb://table (needs the `aws` feature). Default: SQLite in the
        /// state folder.
        #[arg(long, env = "FHIR_EXPORT_JOB_STORE")]
        job_store: Option<String>,
        /// Work queue: sqs://queue-name, dead letters in <name>-dlq (needs the `aws`
        /// feature). Default: SQLite in the state folder.
        #[arg(long, env = "FHIR_EXPORT_QUEUE")]
        queue: Option<String>,
        /// Worker tasks pulling chunks from the queue.
        #[arg(long, env = "FHIR_EXPORT_WORKERS", default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..))]
        workers: u16,
        /// Seconds between sweeps for stalled and expired exports.
        #[arg(long, env = "FHIR_EXPORT_SWEEP_SECS", default_value_t = 30)]
        sweep_secs: u64,
        /// Register a SMART Backend Services client of the embedded authorization server:
        /// its id and the file of its public JWKS (repeatable). With a client registered (or
        /// FHIR_EXPORT_AUTH_ISSUER set), every route but metadata and .well-known needs a
        /// bearer token; without, the server may bind to loopback only.
        #[arg(long = "auth-client", value_name = "ID=JWKS_FILE", env = "FHIR_EXPORT_AUTH_CLIENTS", value_delimiter = ',', value_parser = fhir_export::auth::id_and_value)]
        auth_clients: Vec<(String, String)>,
        /// The scopes a registered client may be given, space-separated (repeatable; default
        /// `system/*.read system/*.rs`), e.g. `--auth-client-scopes "app=system/Patient.rs"`.
        #[arg(long = "auth-client-scopes", value_name = "ID=SCOPES", env = "FHIR_EXPORT_AUTH_CLIENT_SCOPES", value_delimiter = ';', value_parser = fhir_export::auth::id_and_value)]
        auth_client_scopes: Vec<(String, String)>,
        /// POST every export's end (completed, failed, cancelled) to this URL as JSON, signed
        /// with HMAC-SHA256 of FHIR_EXPORT_EVENTS_WEBHOOK_SECRET when set; retried with backoff.
        #[arg(long, value_name = "URL", env = "FHIR_EXPORT_EVENTS_WEBHOOK")]
        events_webhook: Option<String>,
        /// Append every export's end to this file, one JSON line each.
        #[arg(long, value_name = "FILE", env = "FHIR_EXPORT_EVENTS_LOG")]
        events_log: Option<PathBuf>,
        /// Run the scheduled exports of this JSON file ({"schedules": [...]}; each run
        /// exports what changed since the last completed one).
        #[arg(long, value_name = "FILE", env = "FHIR_EXPORT_SCHEDULES")]
        schedules: Option<PathBuf>,
    },
    /// Start the server on its embedded defaults, run one system export against it over
    /// HTTP, print the manifest and where the files are, and stop.
    Demo {
        /// Folder for the job database, the output and the sample data.
        #[arg(long, env = "FHIR_EXPORT_STATE", default_value = "fhir-export-data")]
        state: PathBuf,
        /// NDJSON folder to export from. Default: a generated sample dataset.
        #[arg(long, env = "FHIR_EXPORT_SOURCE")]
        source: Option<String>,
    },
    /// Run a Bulk Data export against any FHIR server: kick off (or re-attach), poll, download
    /// and verify every file.
    Export(fhir_export::client::ExportArgs),
    /// Measure export throughput and peak memory at several sizes, beside a raw copy.
    Bench(fhir_export::bench::BenchArgs),
    /// Price an export's usage record on AWS (the completion event's `usage`, or the
    /// manifest's `extension.usage`): a table per service, totals, cost per million resources.
    Cost(fhir_export::cost::CostArgs),
    /// Make a SMART Backend Services client key: <out>/<id>.private.pem (keep it) and
    /// <out>/<id>.jwks.json (register it: `serve --auth-client ID=<out>/<id>.jwks.json`).
    Keygen {
        #[arg(long)]
        client_id: String,
        /// Output folder.
        #[arg(long, default_value = ".")]
        out: PathBuf,
        /// RS384 (RSA 2048) instead of ES384 (EC P-384).
        #[arg(long)]
        rsa: bool,
    },
    /// Write deterministic synthetic FHIR R4 NDJSON.
    Gen {
        #[arg(long, default_value_t = 100)]
        patients: u64,
        /// Output folder.
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Write .ndjson.gz files.
        #[arg(long)]
        gzip: bool,
        /// Split every type over this many files.
        #[arg(long, default_value_t = 1)]
        files_per_type: u32,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init(match cli.command {
        Command::Demo { .. } | Command::Export(_) => "warn",
        _ => "info",
    });
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("fhir-export: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(cli.command));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fhir-export: {}", shared::error_chain(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    match command {
        Command::Serve {
            bind,
            source,
            output,
            state,
            public_url,
            job_store,
            queue,
            workers,
            sweep_secs,
            auth_clients,
            auth_client_scopes,
            events_webhook,
            events_log,
            schedules,
        } => {
            let server = start(ServeConfig {
                bind,
                source,
                output,
                state,
                public_url,
                job_store,
                queue,
                workers: usize::from(workers),
                sweep_every: Duration::from_secs(sweep_secs.max(1)),
                env: Vec::new(),
                wrap: Default::default(),
                auth_clients: auth_clients
                    .into_iter()
                    .map(|(id, file)| (id, PathBuf::from(file)))
                    .collect(),
                auth_client_scopes,
                events_webhook,
                events_log,
                schedules,
            })
            .await?;
            eprintln!(
                "fhir-export: FHIR base {} ; exports are written to {}",
                server.base_url,
                server.output.describe()
            );
            match &server.token_url {
                Some(url) => eprintln!("fhir-export: bearer tokens required; token endpoint {url}"),
                None => eprintln!(
                    "fhir-export: authentication is OFF (loopback only); register clients with --auth-client ID=JWKS_FILE"
                ),
            }
            let token = server.shutdown_token();
            tokio::select! {
                _ = shutdown_signal() => {}
                _ = token.cancelled() => {}
            }
            tracing::info!("shutting down");
            server.stop().await;
            Ok(())
        }
        Command::Export(args) => {
            fhir_export::client::run(args).await?;
            Ok(())
        }
        Command::Bench(args) => {
            fhir_export::bench::run(args).await?;
            Ok(())
        }
        Command::Cost(args) => {
            fhir_export::cost::run(&args)?;
            Ok(())
        }
        Command::Demo { state, source } => {
            let mut config = ServeConfig::new(state);
            config.bind = SocketAddr::from(([127, 0, 0, 1], 0));
            config.source = source;
            fhir_export::demo::run(config).await?;
            Ok(())
        }
        Command::Keygen {
            client_id,
            out,
            rsa,
        } => {
            let (pem, jwks) = fhir_export::auth::keygen(&client_id, &out, rsa)?;
            println!("private key (keep it secret): {}", pem.display());
            println!("public JWKS: {}", jwks.display());
            println!(
                "serve with:  fhir-export serve --auth-client {client_id}={}",
                jwks.display()
            );
            println!(
                "export with: fhir-export export --client-id {client_id} --private-key {} ...",
                pem.display()
            );
            Ok(())
        }
        Command::Gen {
            patients,
            out,
            seed,
            gzip,
            files_per_type,
        } => {
            let opts = GenOptions {
                patients,
                seed,
                gzip,
                files_per_type: files_per_type.max(1),
            };
            let started = std::time::Instant::now();
            let summary = tokio::task::spawn_blocking(move || generate(&opts, &out)).await??;
            let total: u64 = summary.counts.values().sum();
            for (t, n) in &summary.counts {
                println!("{t:<20} {n:>10}");
            }
            println!(
                "{total} resources, {} bytes of NDJSON in {:.2} s",
                summary.bytes,
                started.elapsed().as_secs_f64()
            );
            Ok(())
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
