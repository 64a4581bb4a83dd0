//! `ObjectStore` (+ `SignedUrls`) on Azure Blob Storage or an ADLS Gen2 account (through its
//! Blob API), on the `object_store` crate's Azure client.
//!
//! A store is rooted at a container (and a prefix in it), or at the account: then a key's
//! first folder is its container, an export without `_container` gets a container of its own
//! (created by [`ObjectStore::prepare_export`]), and such a container goes when the last of
//! its export's files do. Renames are copy + delete (the Blob API has no rename; a
//! hierarchical-namespace account's atomic rename is a `dfs` call, see `docs/azure.md`).
//!
//! Errors: a missing container, a refused or rejected credential are `Access` faults naming
//! the account, the container and what is missing; other failures are `Backend` with a
//! source that carries the status and Azure's error code, never a response body.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use http::Method;
use object_store::azure::{
    AzureAuthorizer, AzureConfigKey, AzureCredentialProvider, MicrosoftAzure, MicrosoftAzureBuilder,
};
use object_store::client::{HttpRequest, HttpRequestBody};
use object_store::path::Path;
use object_store::signer::Signer;
use object_store::{
    Attribute, AttributeValue, Attributes, ClientOptions, GetOptions, GetRange, ObjectStore as _,
    ObjectStoreExt as _, PutOptions, RetryConfig,
};

use super::location::AzureLocation;
use super::settings::{AzureSettings, AzureSettingsError, Resolved};
use super::writer::AzureWriter;
use crate::layout;
use crate::ports::{
    AccessFault, AccessProblem, ByteStream, Encoding, ObjectError, ObjectMeta, ObjectStore,
    ObjectWriter, SignedUrls, validate_key, write_probe,
};

/// Deletes and copies sent at once.
const CONCURRENCY: usize = 16;
/// What an export's store needs, said to the operator who must grant it.
const NEEDS: &str = "the \"Storage Blob Data Contributor\" role on the container (or a SAS with read, add, create, write, delete and list permissions)";
const NEEDS_CREATE: &str = "the \"Storage Blob Data Contributor\" role on the account (or an account key) to create a container per export; or give `_container`";

#[derive(Debug, thiserror::Error)]
pub enum AzureOpenError {
    #[error(transparent)]
    Settings(#[from] AzureSettingsError),
    #[error("cannot set up the Azure client: {0}")]
    Client(String),
}

/// What a call was doing, for the words of its failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Op {
    Read,
    Write,
    Delete,
    List,
    /// A copy: a 404 is its source's (unless Azure says the container is missing).
    Copy,
    CreateContainer,
}

impl Op {
    fn verb(self) -> &'static str {
        match self {
            Op::Read => "read blobs",
            Op::Write | Op::Copy => "write blobs",
            Op::Delete => "delete blobs",
            Op::List => "list blobs",
            Op::CreateContainer => "create containers",
        }
    }
}

/// A failed call, as the port reports it: the key it was about, and where.
#[derive(Debug, Clone)]
pub(super) struct Failure {
    key: String,
    account: String,
    container: String,
}

/// The part of a failure fit to show: status and Azure's error code.
#[derive(Debug, thiserror::Error)]
#[error("Azure Storage: {0}")]
pub struct AzureCallError(String);

/// `<Code>ContainerNotFound</Code>` out of an error text, if there.
fn error_code(text: &str) -> Option<&str> {
    let start = text.find("<Code>")? + 6;
    let len = text[start..].find("</Code>")?;
    Some(&text[start..start + len])
}

impl Failure {
    pub(super) fn map(&self, op: Op, e: object_store::Error) -> ObjectError {
        use object_store::Error as E;
        let text = e.to_string();
        let code = error_code(&text);
        let access = |problem| {
            ObjectError::Access(AccessFault {
                account: format!("storage account `{}`", self.account),
                container: self.container.clone(),
                problem,
            })
        };
        let forbidden = || {
            access(AccessProblem::Forbidden {
                operation: op.verb(),
                needs: if op == Op::CreateContainer {
                    NEEDS_CREATE
                } else {
                    NEEDS
                },
            })
        };
        // Azure's error code first: some calls (listings) report a status without the
        // variant that goes with it.
        match code {
            Some("ContainerNotFound") => return access(AccessProblem::ContainerNotFound),
            // `AuthorizationFailure` is what Azure says to an address its firewall does not
            // allow, and what Azurite says to a bad signature.
            Some(c)
                if c.starts_with("AuthenticationFailed")
                    || c.starts_with("AuthorizationFailure") =>
            {
                return access(AccessProblem::CredentialRejected);
            }
            Some(c) if c.starts_with("AuthorizationPermissionMismatch") => return forbidden(),
            _ => {}
        }
        match e {
            E::NotFound { .. } if matches!(op, Op::Write | Op::List) => {
                access(AccessProblem::ContainerNotFound)
            }
            E::NotFound { .. } => ObjectError::NotFound(self.key.clone()),
            E::Unauthenticated { .. } => access(AccessProblem::CredentialRejected),
            E::PermissionDenied { .. } => forbidden(),
            E::InvalidPath { .. } => ObjectError::InvalidKey(self.key.clone()),
            other => {
                tracing::debug!(key = %self.key, error = %crate::error_chain(&other), "Azure call failed");
                self.other(summary(&other))
            }
        }
    }

    pub(super) fn other(&self, detail: impl std::fmt::Display) -> ObjectError {
        ObjectError::backend(&self.key, AzureCallError(detail.to_string()))
    }
}

/// A failure's status line and error code, without the response body (it can echo request
/// details) or the request URL.
fn summary(e: &object_store::Error) -> String {
    let text = e.to_string();
    let status = text
        .find("status code: ")
        .map(|i| &text[i + 13..])
        .map(|s| s.split(':').next().unwrap_or(s).trim().to_owned());
    match (status, error_code(&text)) {
        (Some(s), Some(c)) => format!("{s} ({c})"),
        (Some(s), None) => s,
        (None, Some(c)) => c.to_owned(),
        // Connection failures and the like: the kind of failure, not its text.
        (None, None) => match e {
            object_store::Error::Generic { .. } => {
                "the request failed (connection or service error)".to_owned()
            }
            other => variant_name(other).to_owned(),
        },
    }
}

fn variant_name(e: &object_store::Error) -> &'static str {
    use object_store::Error as E;
    match e {
        E::AlreadyExists { .. } => "already exists",
        E::Precondition { .. } => "precondition failed",
        E::NotModified { .. } => "not modified",
        E::NotSupported { .. } | E::NotImplemented { .. } => "not supported",
        _ => "failed",
    }
}

pub struct AzureStore {
    location: AzureLocation,
    account: String,
    endpoint: String,
    builder: MicrosoftAzureBuilder,
    credentials: AzureCredentialProvider,
    clients: Mutex<HashMap<String, Arc<MicrosoftAzure>>>,
    http: reqwest::Client,
    can_sign: bool,
}

impl std::fmt::Debug for AzureStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AzureStore({})", self.describe())
    }
}

impl AzureStore {
    /// A store at `location`, with the account, endpoint and credential of `settings`.
    pub fn open(
        location: AzureLocation,
        settings: &AzureSettings,
    ) -> Result<AzureStore, AzureOpenError> {
        let Resolved {
            account,
            endpoint,
            allow_http,
            config,
            can_sign,
        } = settings.resolve(location.account.as_deref())?;
        let mut builder = MicrosoftAzureBuilder::new()
            .with_account(&account)
            .with_endpoint(endpoint.clone())
            .with_allow_http(allow_http)
            // Our own retry layer (`adapters::retry`) retries whole operations; the client
            // retries a request a few times within it, not for minutes.
            .with_retry(RetryConfig {
                max_retries: 3,
                retry_timeout: Duration::from_secs(30),
                ..Default::default()
            })
            .with_client_options(
                ClientOptions::new()
                    .with_allow_http(allow_http)
                    .with_timeout(Duration::from_secs(120))
                    .with_connect_timeout(Duration::from_secs(10)),
            );
        for (k, v) in &config {
            match k.parse::<AzureConfigKey>() {
                Ok(key) => builder = builder.with_config(key, v),
                Err(_) => tracing::warn!(setting = %k, "Azure setting not understood; ignored"),
            }
        }
        // One client per container, all sharing one credential (one token cache).
        let first = builder
            .clone()
            .with_container_name(location.container.as_deref().unwrap_or("root"))
            .build()
            .map_err(|e| AzureOpenError::Client(crate::error_chain(&e)))?;
        let credentials = first.credentials().clone();
        let builder = builder.with_credentials(credentials.clone());
        let mut clients = HashMap::new();
        if let Some(c) = &location.container {
            clients.insert(c.clone(), Arc::new(first));
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| AzureOpenError::Client(crate::error_chain(&e)))?;
        Ok(AzureStore {
            location,
            account,
            endpoint,
            builder,
            credentials,
            clients: Mutex::new(clients),
            http,
            can_sign,
        })
    }

    pub fn location(&self) -> &AzureLocation {
        &self.location
    }

    pub fn account(&self) -> &str {
        &self.account
    }

    fn failure(&self, key: &str, container: &str) -> Failure {
        Failure {
            key: key.to_owned(),
            account: self.account.clone(),
            container: container.to_owned(),
        }
    }

    /// The container and path of a port key (a prefix when it ends in `/` or is empty).
    fn target(&self, key: &str) -> Result<(String, String), ObjectError> {
        validate_key(key)?;
        match &self.location.container {
            Some(c) => Ok((c.clone(), format!("{}{key}", self.location.prefix))),
            None => {
                let (container, rest) = key.split_once('/').unwrap_or((key, ""));
                if !layout::valid_container(container) {
                    // At the account root a key starts with its container.
                    return Err(ObjectError::InvalidKey(key.to_owned()));
                }
                Ok((container.to_owned(), rest.to_owned()))
            }
        }
    }

    /// The container and object path of a key that names an object.
    fn object(&self, key: &str) -> Result<(String, Path), ObjectError> {
        let (container, path) = self.target(key)?;
        if path.is_empty() || path.ends_with('/') {
            return Err(ObjectError::InvalidKey(key.to_owned()));
        }
        Ok((container, Path::from(path)))
    }

    fn client(&self, container: &str) -> Result<Arc<MicrosoftAzure>, ObjectError> {
        let mut clients = self
            .clients
            .lock()
            .map_err(|_| self.failure("", container).other("client cache poisoned"))?;
        if let Some(c) = clients.get(container) {
            return Ok(c.clone());
        }
        let client = Arc::new(
            self.builder
                .clone()
                .with_container_name(container)
                .build()
                .map_err(|e| self.failure("", container).other(summary(&e)))?,
        );
        clients.insert(container.to_owned(), client.clone());
        Ok(client)
    }

    /// The port key of a blob listed in `container`.
    fn port_key(&self, container: &str, blob: &str) -> Option<String> {
        match &self.location.container {
            Some(_) => blob
                .strip_prefix(self.location.prefix.as_str())
                .map(str::to_owned),
            None => Some(format!("{container}/{blob}")),
        }
    }

    /// Every blob under a port prefix, as (port key, blob path, size), sorted by key.
    async fn list_blobs(&self, prefix: &str) -> Result<Vec<(String, Path, u64)>, ObjectError> {
        if self.location.container.is_none() && !prefix.contains('/') {
            // Listing containers is not a port operation; a prefix names one container.
            return Err(ObjectError::InvalidKey(prefix.to_owned()));
        }
        let (container, path) = self.target(prefix)?;
        let client = self.client(&container)?;
        let failure = self.failure(prefix, &container);
        // object_store lists whole folders: list the prefix's folder, keep what starts with it.
        let dir = match path.rfind('/') {
            Some(i) => &path[..i],
            None => "",
        };
        let dir = (!dir.is_empty()).then(|| Path::from(dir));
        let mut blobs: Vec<(String, Path, u64)> = client
            .list(dir.as_ref())
            .map_err(|e| failure.map(Op::List, e))
            .try_filter_map(|meta| {
                let blob = meta.location.to_string();
                let keep = if blob.starts_with(path.as_str()) {
                    self.port_key(&container, &blob)
                        .filter(|k| validate_key(k).is_ok() && !k.ends_with('/'))
                        .map(|k| (k, meta.location, meta.size))
                } else {
                    None
                };
                futures::future::ready(Ok(keep))
            })
            .try_collect()
            .await?;
        blobs.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(blobs)
    }

    fn attributes(key: &str, encoding: Encoding) -> Attributes {
        let mut a = Attributes::new();
        if key.ends_with(".ndjson") {
            a.insert(
                Attribute::ContentType,
                AttributeValue::from("application/fhir+ndjson"),
            );
        }
        if let Some(e) = encoding.content_encoding() {
            a.insert(Attribute::ContentEncoding, AttributeValue::from(e));
        }
        a
    }

    /// `PUT` or `DELETE` `<container>?restype=container`, which object_store does not offer.
    async fn container_call(&self, method: Method, container: &str) -> Result<u16, ObjectError> {
        let failure = self.failure("", container);
        let credential = self
            .credentials
            .get_credential()
            .await
            .map_err(|e| failure.map(Op::CreateContainer, e))?;
        let uri = format!("{}/{container}?restype=container", self.endpoint);
        let mut req: HttpRequest = http::Request::builder()
            .method(method.clone())
            .uri(&uri)
            .header(http::header::CONTENT_LENGTH, "0")
            .body(HttpRequestBody::empty())
            .map_err(|e| failure.other(e))?;
        AzureAuthorizer::new(&credential, &self.account)
            .try_authorize(&mut req)
            .map_err(|e| failure.other(summary(&e)))?;
        let resp = self
            .http
            .request(method, req.uri().to_string())
            .headers(req.headers().clone())
            .send()
            .await
            .map_err(|e| failure.other(format!("the request failed: {}", e.without_url())))?;
        let status = resp.status().as_u16();
        if status < 300 || status == 409 || status == 404 {
            return Ok(status);
        }
        let code = resp
            .headers()
            .get("x-ms-error-code")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let problem = match status {
            401 => AccessProblem::CredentialRejected,
            403 if code.starts_with("AuthenticationFailed") => AccessProblem::CredentialRejected,
            403 => AccessProblem::Forbidden {
                operation: Op::CreateContainer.verb(),
                needs: NEEDS_CREATE,
            },
            _ => return Err(failure.other(format!("{status} ({code})"))),
        };
        Err(ObjectError::Access(AccessFault {
            account: format!("storage account `{}`", self.account),
            container: container.to_owned(),
            problem,
        }))
    }

    /// Creates a container (an existing one is fine).
    pub async fn create_container(&self, container: &str) -> Result<(), ObjectError> {
        if !layout::valid_container(container) {
            return Err(ObjectError::InvalidKey(container.to_owned()));
        }
        self.container_call(Method::PUT, container)
            .await
            .map(|_| ())
    }

    /// Deletes a container and all it holds (a missing one is fine).
    pub async fn delete_container(&self, container: &str) -> Result<(), ObjectError> {
        if !layout::valid_container(container) {
            return Err(ObjectError::InvalidKey(container.to_owned()));
        }
        self.container_call(Method::DELETE, container).await?;
        if let Ok(mut clients) = self.clients.lock() {
            clients.remove(container);
        }
        Ok(())
    }

    /// A container made for one export goes once it holds nothing.
    async fn drop_if_emptied(&self, container: &str) -> Result<(), ObjectError> {
        if self.location.container.is_some() || !layout::is_new_container(container) {
            return Ok(());
        }
        let client = self.client(container)?;
        let failure = self.failure("", container);
        let empty = match client.list(None).next().await {
            None => true,
            Some(Ok(_)) => false,
            Some(Err(e)) => match failure.map(Op::List, e) {
                ObjectError::Access(AccessFault {
                    problem: AccessProblem::ContainerNotFound,
                    ..
                }) => return Ok(()),
                other => return Err(other),
            },
        };
        if empty {
            self.delete_container(container).await?;
            tracing::info!(account = %self.account, container, "export container deleted");
        }
        Ok(())
    }
}

#[async_trait]
impl ObjectStore for AzureStore {
    async fn put(&self, key: &str, data: Bytes) -> Result<(), ObjectError> {
        let (container, path) = self.object(key)?;
        let client = self.client(&container)?;
        let opts = PutOptions {
            attributes: Self::attributes(key, Encoding::Identity),
            ..Default::default()
        };
        client
            .put_opts(&path, data.into(), opts)
            .await
            .map_err(|e| self.failure(key, &container).map(Op::Write, e))?;
        Ok(())
    }

    async fn writer(&self, key: &str) -> Result<Box<dyn ObjectWriter>, ObjectError> {
        self.encoded_writer(key, Encoding::Identity).await
    }

    /// The blob carries `Content-Encoding` (and `Content-Type`), which Azure sends with
    /// every GET, SAS ones included, and which a copy keeps.
    async fn encoded_writer(
        &self,
        key: &str,
        encoding: Encoding,
    ) -> Result<Box<dyn ObjectWriter>, ObjectError> {
        let (container, path) = self.object(key)?;
        Ok(Box::new(AzureWriter::new(
            self.client(&container)?,
            path,
            self.failure(key, &container),
            Self::attributes(key, encoding),
        )))
    }

    async fn read(
        &self,
        key: &str,
        start: u64,
        end: Option<u64>,
    ) -> Result<ByteStream, ObjectError> {
        let (container, path) = self.object(key)?;
        if end.is_some_and(|e| e <= start) {
            return match self.head(key).await? {
                Some(_) => Ok(Box::pin(futures::stream::empty())),
                None => Err(ObjectError::NotFound(key.to_owned())),
            };
        }
        let client = self.client(&container)?;
        let failure = self.failure(key, &container);
        let range = match (start, end) {
            (0, None) => None,
            (s, None) => Some(GetRange::Offset(s)),
            (s, Some(e)) => Some(GetRange::Bounded(s..e)),
        };
        let options = GetOptions {
            range,
            ..Default::default()
        };
        match client.get_opts(&path, options).await {
            Ok(result) => {
                let f = failure.clone();
                Ok(Box::pin(
                    result.into_stream().map_err(move |e| f.map(Op::Read, e)),
                ))
            }
            Err(e) => {
                let err = failure.map(Op::Read, e);
                // A range starting at or past the end of a blob is empty, as on the other
                // stores (Azure answers 416).
                if start > 0
                    && !matches!(err, ObjectError::NotFound(_) | ObjectError::Access(_))
                    && let Ok(Some(meta)) = self.head(key).await
                    && start >= meta.size
                {
                    return Ok(Box::pin(futures::stream::empty()));
                }
                Err(err)
            }
        }
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>, ObjectError> {
        if key.is_empty() || key.ends_with('/') {
            validate_key(key)?;
            return Ok(None);
        }
        let (container, path) = self.object(key)?;
        let client = self.client(&container)?;
        match client.head(&path).await {
            Ok(meta) => Ok(Some(ObjectMeta {
                key: key.to_owned(),
                size: meta.size,
            })),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.failure(key, &container).map(Op::Read, e)),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, ObjectError> {
        Ok(self
            .list_blobs(prefix)
            .await?
            .into_iter()
            .map(|(key, _, size)| ObjectMeta { key, size })
            .collect())
    }

    async fn delete(&self, key: &str) -> Result<(), ObjectError> {
        let (container, path) = self.object(key)?;
        let client = self.client(&container)?;
        match client.delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.failure(key, &container).map(Op::Delete, e)),
        }
    }

    async fn delete_prefix(&self, prefix: &str) -> Result<u64, ObjectError> {
        let blobs = match self.list_blobs(prefix).await {
            Ok(b) => b,
            // An account-root prefix whose container is gone has nothing left to delete.
            Err(ObjectError::Access(AccessFault {
                problem: AccessProblem::ContainerNotFound,
                ..
            })) if self.location.container.is_none() => return Ok(0),
            Err(e) => return Err(e),
        };
        let (container, _) = self.target(prefix)?;
        let client = self.client(&container)?;
        let failure = self.failure(prefix, &container);
        let deleted = futures::stream::iter(blobs)
            .map(|(_, path, _)| {
                let client = client.clone();
                let failure = failure.clone();
                async move {
                    match client.delete(&path).await {
                        Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(1u64),
                        Err(e) => Err(failure.map(Op::Delete, e)),
                    }
                }
            })
            .buffer_unordered(CONCURRENCY)
            .try_fold(0u64, |n, one| futures::future::ready(Ok(n + one)))
            .await?;
        // Only an export's folders (`c/<job>/`, `c/.staging/<job>/`) can leave its container
        // empty for good; a failed chunk attempt's files (a name prefix) going while nothing
        // else is written yet must not take the container with them.
        if prefix.ends_with('/') {
            self.drop_if_emptied(&container).await?;
        }
        Ok(deleted)
    }

    async fn rename(&self, from: &str, to: &str) -> Result<(), ObjectError> {
        let (container, src) = self.object(from)?;
        let (to_container, dst) = self.object(to)?;
        if container != to_container {
            return Err(ObjectError::InvalidKey(to.to_owned()));
        }
        let client = self.client(&container)?;
        client
            .copy(&src, &dst)
            .await
            .map_err(|e| self.failure(from, &container).map(Op::Copy, e))?;
        match client.delete(&src).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.failure(from, &container).map(Op::Delete, e)),
        }
    }

    fn describe(&self) -> String {
        match &self.location.account {
            Some(_) => self.location.to_string(),
            None => format!("{} (account {})", self.location, self.account),
        }
    }

    async fn prepare_export(&self, prefix: &str, new_container: bool) -> Result<(), ObjectError> {
        if new_container
            && self.location.container.is_none()
            && let Some(container) = layout::created_container(prefix)
        {
            self.create_container(container).await?;
        }
        write_probe(self, prefix).await
    }

    fn signer(&self) -> Option<&dyn SignedUrls> {
        self.can_sign.then_some(self as &dyn SignedUrls)
    }
}

#[async_trait]
impl SignedUrls for AzureStore {
    /// A service SAS signed with the account key, or a user-delegation SAS under Entra ID;
    /// read-only, for the one blob.
    async fn signed_get_url(&self, key: &str, expires_in: Duration) -> Result<String, ObjectError> {
        let (container, path) = self.object(key)?;
        let client = self.client(&container)?;
        client
            .signed_url(Method::GET, &path, expires_in)
            .await
            .map(|u| u.to_string())
            .map_err(|e| self.failure(key, &container).map(Op::Read, e))
    }
}
