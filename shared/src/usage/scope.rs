//! Counting AWS requests: an SDK interceptor, added to every client the adapters build, that
//! counts each attempt (a retry is billed too) on the current task's [`Meter`].
//!
//! DynamoDB capacity is estimated from sizes, as DynamoDB bills it: a write is 1 unit per KB
//! of the request (at least 1; a transaction's items count twice), a read 1 unit per 4 KB of
//! the response (at least 1), halved when eventually consistent. The JSON on the wire is
//! larger than the item DynamoDB measures, so reads are over-estimated; an update is billed on
//! the larger of the item before and after, which only a response that returns the item
//! shows, so an update of a large item without one is under-estimated (ours are small: a job
//! item is under 2 KB).

use std::borrow::Cow;

use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::interceptors::context::{
    AfterDeserializationInterceptorContextRef, BeforeTransmitInterceptorContextRef,
};
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::{ConfigBag, Storable, StoreReplace};

use super::{DYNAMODB, Meter, S3};

/// Counts every request of one service's client on the current [`Meter`].
#[derive(Debug, Clone)]
pub struct CountRequests {
    service: &'static str,
}

impl CountRequests {
    pub fn new(service: &'static str) -> Self {
        CountRequests { service }
    }
}

/// What the request said that the response's accounting needs.
#[derive(Debug, Clone)]
struct PendingRead {
    consistent: bool,
}

impl Storable for PendingRead {
    type Storer = StoreReplace<Self>;
}

fn operation(cfg: &ConfigBag) -> Cow<'static, str> {
    cfg.load::<Metadata>()
        .map(|m| Cow::Owned(m.name().to_owned()))
        .unwrap_or(Cow::Borrowed("unknown"))
}

fn is_dynamodb_read(op: &str) -> bool {
    matches!(
        op,
        "GetItem" | "Query" | "Scan" | "BatchGetItem" | "TransactGetItems"
    )
}

fn dynamodb_write_units(op: &str, request_bytes: usize) -> f64 {
    let units = request_bytes.div_ceil(1024).max(1) as f64;
    match op {
        "PutItem" | "UpdateItem" | "DeleteItem" | "BatchWriteItem" => units,
        "TransactWriteItems" => 2.0 * units,
        _ => 0.0,
    }
}

fn content_length(headers: &aws_smithy_runtime_api::http::Headers) -> u64 {
    headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

impl Intercept for CountRequests {
    fn name(&self) -> &'static str {
        "CountRequests"
    }

    fn read_before_transmit(
        &self,
        context: &BeforeTransmitInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let op = operation(cfg);
        let request = context.request();
        let body = request.body().bytes();
        if self.service == DYNAMODB && is_dynamodb_read(&op) {
            let consistent =
                body.is_some_and(|b| memchr::memmem::find(b, b"\"ConsistentRead\":true").is_some());
            cfg.interceptor_state()
                .store_put(PendingRead { consistent });
        }
        let written = match (self.service, op.as_ref()) {
            (S3, "PutObject" | "UploadPart") => content_length(request.headers()),
            _ => 0,
        };
        let write_units = if self.service == DYNAMODB {
            dynamodb_write_units(&op, body.map_or(0, <[u8]>::len))
        } else {
            0.0
        };
        let service = self.service;
        Meter::current(|u| {
            u.count(service, &op, 1);
            u.dynamodb_write_units += write_units;
            u.bytes_uploaded += written;
        });
        Ok(())
    }

    fn read_after_deserialization(
        &self,
        context: &AfterDeserializationInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let response = context.response();
        let read_units = match cfg.load::<PendingRead>() {
            Some(read) if self.service == DYNAMODB => {
                let len = response.body().bytes().map_or(0, <[u8]>::len);
                let units = len.div_ceil(4096).max(1) as f64;
                if read.consistent { units } else { units / 2.0 }
            }
            _ => 0.0,
        };
        let downloaded = if self.service == S3 && operation(cfg) == "GetObject" {
            content_length(response.headers())
        } else {
            0
        };
        Meter::current(|u| {
            u.dynamodb_read_units += read_units;
            u.bytes_downloaded += downloaded;
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_units_follow_the_request_size() {
        assert_eq!(dynamodb_write_units("UpdateItem", 10), 1.0);
        assert_eq!(dynamodb_write_units("PutItem", 1025), 2.0);
        assert_eq!(dynamodb_write_units("TransactWriteItems", 900), 2.0);
        assert_eq!(dynamodb_write_units("GetItem", 900), 0.0);
        assert!(is_dynamodb_read("Query"));
        assert!(!is_dynamodb_read("UpdateItem"));
    }
}
