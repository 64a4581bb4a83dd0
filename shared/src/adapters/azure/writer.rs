//! Streaming writes as staged blocks and one block-list commit: nothing is visible under the
//! key until the commit, and blocks never committed are dropped by Azure (after a week) and
//! never listed, so an aborted or dropped writer leaves nothing behind. An object smaller than
//! one block is a single `Put Blob`.

use std::collections::VecDeque;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use object_store::azure::MicrosoftAzure;
use object_store::path::Path;
use object_store::{
    Attributes, MultipartUpload, ObjectStore as _, PutMultipartOptions, PutOptions, PutPayload,
};
use tokio::task::JoinHandle;

use super::store::{Failure, Op};
use crate::ports::{ObjectError, ObjectWriter};

/// Bytes per block. Azure takes up to 50,000 blocks of up to 4000 MiB; 8 MiB blocks cap an
/// object at 390 GiB and keep a worker's buffers small.
pub(super) const BLOCK_SIZE: usize = 8 * 1024 * 1024;
/// Blocks uploading at once per writer: uploads overlap the export's own work without
/// holding more than a few blocks in memory.
const IN_FLIGHT: usize = 3;

pub(super) struct AzureWriter {
    pub(super) client: Arc<MicrosoftAzure>,
    pub(super) path: Path,
    pub(super) failure: Failure,
    pub(super) attributes: Attributes,
    pub(super) pending: Vec<Bytes>,
    pub(super) pending_len: usize,
    pub(super) upload: Option<Box<dyn MultipartUpload>>,
    pub(super) in_flight: VecDeque<JoinHandle<object_store::Result<()>>>,
    pub(super) size: u64,
    pub(super) failed: bool,
}

impl AzureWriter {
    pub(super) fn new(
        client: Arc<MicrosoftAzure>,
        path: Path,
        failure: Failure,
        attributes: Attributes,
    ) -> Self {
        AzureWriter {
            client,
            path,
            failure,
            attributes,
            pending: Vec::new(),
            pending_len: 0,
            upload: None,
            in_flight: VecDeque::new(),
            size: 0,
            failed: false,
        }
    }

    fn err(&self, op: Op, e: object_store::Error) -> ObjectError {
        self.failure.map(op, e)
    }

    /// Sends the pending bytes as one block (without copying them: a payload is a list of
    /// buffers), waiting for the oldest upload first when enough are on their way.
    async fn send_block(&mut self) -> Result<(), ObjectError> {
        if self.upload.is_none() {
            let opts = PutMultipartOptions {
                attributes: self.attributes.clone(),
                ..Default::default()
            };
            let upload = self
                .client
                .put_multipart_opts(&self.path, opts)
                .await
                .map_err(|e| self.err(Op::Write, e))?;
            self.upload = Some(upload);
        }
        while self.in_flight.len() >= IN_FLIGHT {
            self.wait_oldest().await?;
        }
        let payload: PutPayload = std::mem::take(&mut self.pending).into_iter().collect();
        self.pending_len = 0;
        if let Some(upload) = self.upload.as_mut() {
            self.in_flight
                .push_back(tokio::spawn(upload.put_part(payload)));
        }
        Ok(())
    }

    async fn wait_oldest(&mut self) -> Result<(), ObjectError> {
        let Some(handle) = self.in_flight.pop_front() else {
            return Ok(());
        };
        match handle.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(self.err(Op::Write, e)),
            Err(join) => Err(self.failure.other(join)),
        }
    }

    fn stop_uploads(&mut self) {
        for h in self.in_flight.drain(..) {
            h.abort();
        }
    }
}

impl Drop for AzureWriter {
    fn drop(&mut self) {
        // Uncommitted blocks are invisible; stop sending more of them.
        self.stop_uploads();
    }
}

#[async_trait]
impl ObjectWriter for AzureWriter {
    async fn write(&mut self, data: Bytes) -> Result<(), ObjectError> {
        if self.failed {
            return Err(self
                .failure
                .other("an earlier block upload failed; the writer can only be aborted"));
        }
        if data.is_empty() {
            return Ok(());
        }
        self.size += data.len() as u64;
        self.pending_len += data.len();
        self.pending.push(data);
        if self.pending_len >= BLOCK_SIZE
            && let Err(e) = self.send_block().await
        {
            self.failed = true;
            return Err(e);
        }
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> Result<u64, ObjectError> {
        if self.failed {
            return Err(self
                .failure
                .other("an earlier block upload failed; the writer can only be aborted"));
        }
        if self.upload.is_none() {
            let payload: PutPayload = std::mem::take(&mut self.pending).into_iter().collect();
            let opts = PutOptions {
                attributes: self.attributes.clone(),
                ..Default::default()
            };
            self.client
                .put_opts(&self.path, payload, opts)
                .await
                .map_err(|e| self.err(Op::Write, e))?;
            return Ok(self.size);
        }
        if self.pending_len > 0 {
            self.send_block().await?;
        }
        while !self.in_flight.is_empty() {
            self.wait_oldest().await?;
        }
        let result = match self.upload.as_mut() {
            Some(upload) => upload.complete().await,
            None => return Ok(self.size),
        };
        result.map_err(|e| self.err(Op::Write, e))?;
        Ok(self.size)
    }

    async fn abort(mut self: Box<Self>) -> Result<(), ObjectError> {
        self.stop_uploads();
        Ok(())
    }
}
