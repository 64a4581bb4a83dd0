//! Behaviour settings shared by the handlers and the worker. Read from the environment by
//! [`crate::config`]; every field is documented in `docs/configuration.md`.

use std::time::Duration;

/// How clients get the files of a completed export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileAccess {
    /// The files route streams them (local server). `requiresAccessToken` is `false` unless
    /// the deployment authenticates callers.
    Served,
    /// The manifest lists short-lived signed URLs of the object store;
    /// `requiresAccessToken: false`.
    SignedUrls,
    /// The manifest lists the files route, which checks the caller and redirects (307) to a
    /// short-lived signed URL; `requiresAccessToken: true`.
    Redirect,
}

#[derive(Debug, Clone)]
pub struct Settings {
    /// Absolute FHIR base URL as clients see it, without a trailing `/`
    /// (e.g. `https://api.example.org/fhir`).
    pub public_base_url: String,
    /// `Retry-After` while an export runs.
    pub retry_after: Duration,
    /// How long a finished export's files and status stay available.
    pub retention: Duration,
    /// Roll-over threshold of an NDJSON file.
    pub max_file_bytes: u64,
    /// Source bytes per chunk.
    pub chunk_bytes: u64,
    /// Consecutive export pieces smaller than this are packed into one chunk of up to this
    /// size; `None`: 1/16 of `chunk_bytes`; 0 packs nothing.
    pub pack_bytes: Option<u64>,
    /// A job with no progress for this long is restarted, then failed.
    pub stall_timeout: Duration,
    /// Restarts of a stalled job before it is failed.
    pub max_recoveries: u32,
    /// How long a received message stays invisible; workers extend it while they work.
    pub visibility_timeout: Duration,
    pub file_access: FileAccess,
    /// Lifetime of signed file URLs.
    pub signed_url_ttl: Duration,
    /// Whether callers authenticate with bearer tokens (drives `requiresAccessToken`).
    pub authenticated: bool,
    /// Publishing chunks per manifest page (a chunk publishes one file or a few): a manifest
    /// larger than this is paged with `link` `next`.
    pub manifest_page_chunks: u32,
    /// How long the CapabilityStatement is served before the source's types are listed
    /// again.
    pub metadata_ttl: Duration,
    /// How export files are stored: as they are, or gzip-compressed (with
    /// `Content-Encoding: gzip` where the store labels objects, so that signed-URL downloads
    /// are compressed too).
    pub output_encoding: crate::ports::Encoding,
    /// Bounds on a kick-off's filters.
    pub limits: crate::request::Limits,
    /// Whether an export without `_container` gets a container of its own: the output store
    /// is an account whose top-level folders are containers (`StoreUrl::container_per_export`).
    pub container_per_export: bool,
}

/// The default packing limit as a fraction of the chunk size: below it, what a chunk costs
/// whatever it reads (a queue message, on Lambda an invocation, store writes, a trip through
/// the worker) outweighs the reading.
const PACK_FRACTION: u64 = 16;

impl Settings {
    /// Size under which export pieces are packed together (see `pack_bytes`).
    pub fn pack_limit(&self) -> u64 {
        self.pack_bytes.unwrap_or(self.chunk_bytes / PACK_FRACTION)
    }

    pub fn new(public_base_url: &str) -> Self {
        Settings {
            public_base_url: public_base_url.trim_end_matches('/').to_owned(),
            retry_after: Duration::from_secs(2),
            retention: Duration::from_secs(24 * 3600),
            max_file_bytes: 64 * 1024 * 1024,
            chunk_bytes: 32 * 1024 * 1024,
            pack_bytes: None,
            stall_timeout: Duration::from_secs(600),
            max_recoveries: 3,
            visibility_timeout: Duration::from_secs(300),
            file_access: FileAccess::Served,
            signed_url_ttl: Duration::from_secs(900),
            authenticated: false,
            manifest_page_chunks: 1000,
            metadata_ttl: Duration::from_secs(60),
            output_encoding: crate::ports::Encoding::Identity,
            limits: crate::request::Limits::default(),
            container_per_export: false,
        }
    }

    /// `requiresAccessToken` of the manifest.
    pub fn requires_access_token(&self) -> bool {
        self.requires_access_token_for(self.file_access)
    }

    /// `requiresAccessToken` when files are reached by `access`.
    pub fn requires_access_token_for(&self, access: FileAccess) -> bool {
        match access {
            FileAccess::SignedUrls => false,
            FileAccess::Redirect => true,
            FileAccess::Served => self.authenticated,
        }
    }

    /// How files are reached given whether the output store can sign URLs: a store whose
    /// credential cannot sign (an Azure SAS token) has its files served by the files route.
    pub fn file_access_for(&self, store_signs: bool) -> FileAccess {
        if store_signs {
            self.file_access
        } else {
            FileAccess::Served
        }
    }

    /// Status URL of a job.
    pub fn status_url(&self, job: &crate::model::JobId) -> String {
        format!("{}/_export/{}", self.public_base_url, job)
    }

    /// Download URL of a file through the files route.
    pub fn file_url(&self, job: &crate::model::JobId, name: &str) -> String {
        format!("{}/_export/{}/files/{}", self.public_base_url, job, name)
    }
}
