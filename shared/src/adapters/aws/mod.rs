//! AWS adapters: `JobStore` on DynamoDB, `WorkQueue` on SQS, `ObjectStore` on S3, `EventSink`
//! on EventBridge. Each sits
//! behind its own cargo feature so that every function links only the SDKs it calls.
//!
//! Clients come from `aws-config` defaults, so `AWS_ENDPOINT_URL`, `AWS_REGION` and the usual
//! credential variables point them at a stand-in (moto) without a code change.

#[cfg(feature = "idle")]
pub mod control;
#[cfg(feature = "dynamodb")]
pub mod dynamodb;
#[cfg(feature = "eventbridge")]
pub mod eventbridge;
#[cfg(feature = "idle")]
pub mod idle;
#[cfg(feature = "s3")]
pub mod s3;
#[cfg(feature = "sqs")]
pub mod sqs;

/// The shared SDK configuration, from the environment.
pub async fn sdk_config() -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .load()
        .await
}

/// Whether an endpoint override points the SDK at a stand-in (S3 then needs path-style
/// addressing: stand-ins do not serve bucket subdomains).
pub fn endpoint_overridden() -> bool {
    ["AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"]
        .iter()
        .any(|v| std::env::var(v).is_ok_and(|s| !s.is_empty()))
}
