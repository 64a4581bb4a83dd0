//! The price table of `fhir-export cost`: AWS public on-demand list prices, US East (N.
//! Virginia), in USD. Free tiers are not applied (see the notes of the table).
//!
//! Checked on 2026-12-07 against what the `search` tool returned (stored public pages; the
//! AWS pricing pages themselves render their rates client-side, so most figures were checked
//! on pages that quote them, dated where the page gives a date):
//!
//! - Lambda: requests $0.20 per 1M; duration x86_64 $0.0000166667 and arm64 $0.0000133334 per
//!   GB-second (first tier). Verified: https://aws.amazon.com/lambda/pricing/ as transcribed on
//!   2026-09-20 by api-evangelist/aws-lambda (plans/aws-lambda-plans-pricing.yml: $0.20 per
//!   million requests; free tier 1M requests and 400,000 GB-s per month); both duration rates
//!   in https://git.mcrn.ar/mariano/lambda_local_runner docs/lambdas-md/lambda-13-cost.md
//!   (2026-05-11) and artillery 2.0.28 lib/platform/aws-lambda/prices.js (x86_64 1666670,
//!   arm64 1333340 per 1e-11 USD/GB-s).
//! - API Gateway HTTP API: $1.00 per 1M requests (first 300M/month). Verified:
//!   https://www.apigatewaycost.com/aws and https://go-cloud.io/aws-api-gateway-pricing (2026);
//!   https://aws.amazon.com/api-gateway/pricing/ gives the free tier (1M calls/month, first 12
//!   months only) but not the rate in its stored text.
//! - SQS standard queue: $0.40 per 1M requests (first 100 billion/month); each 64 KB chunk of a
//!   payload is one request; first 1M requests/month free. Verified:
//!   https://cloudburn.io/blog/amazon-sqs-pricing (2026-03-14, us-east-1 as of March 2026),
//!   https://unanswered.io/guide/aws-sqs-pricing-and-cost-optimization.
//! - DynamoDB on-demand: $0.625 per 1M write request units, $0.125 per 1M read request units,
//!   after the 50 % reduction effective 2024-11-01 (before: $1.25 / $0.25). Verified:
//!   https://airbyte.com/data-engineering-resources/dynamodb-pricing (2025-07-21, US East),
//!   https://www.jusdb.com/blog/dynamodb-cost-optimization-a-comprehensive-guide-by-jusdb
//!   (2025-08-19: "Effective November 1, 2024 ... on-demand throughput costs reduced by 50 %").
//! - S3 Standard: PUT, COPY, POST, LIST $0.005 per 1,000; GET, SELECT and all other requests
//!   $0.0004 per 1,000; DELETE free; storage $0.023 per GB-month (first 50 TB). Verified:
//!   https://c3x.dev/blog/s3-request-fees-explained (tiers 1 and 2),
//!   https://devnotes.tech/understanding-aws-s3-pricing-a-complete-cost-breakdown-with-examples
//!   ($0.023 per GB-month, US East), http://aws.amazon.com/s3/faqs/ ("Amazon S3 doesn't charge
//!   you for removing objects", as with standard delete requests).
//! - EventBridge custom events: $1.00 per 1M events (each 64 KB chunk one event). Verified:
//!   https://www.factualminds.com/blog/amazon-eventbridge-pricing-events-pipes-schema-archive/
//!   (us-east-1, June 2026), https://www.wring.co/blog/aws-eventbridge-pricing-guide.
//! - Data transfer out to the internet: $0.09 per GB for the first 10 TB/month, the first
//!   100 GB/month free (aggregated over services). Verified:
//!   https://repost.aws/questions/QUAT1NfOeZSAK5z8KXXO9jgA ("$0.090 per GB - first 10 TB /
//!   month data transfer out beyond the global free tier"; 100 GB/month free),
//!   https://wring.co/blog/aws-data-transfer-pricing-guide (2026).
//!
//! Units: a Lambda GB is 1,024 MB of configured memory; an S3 or transfer GB is 2^30 bytes.

use serde::Serialize;

/// The date the prices below were checked.
pub const PRICES_DATE: &str = "2026-12-07";

/// Where they come from.
pub const PRICES_SOURCE: &str = "AWS public on-demand list prices, US East (N. Virginia); \
     free tiers not applied; sources in cli/src/cost/prices.rs and docs/cost.md";

/// Regions with a price table.
pub const SUPPORTED_REGIONS: &[&str] = &["us-east-1"];

/// A price: `usd` for every `per` units of `unit`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Rate {
    pub usd: f64,
    pub per: f64,
    pub unit: &'static str,
}

impl Rate {
    pub const fn new(usd: f64, per: f64, unit: &'static str) -> Rate {
        Rate { usd, per, unit }
    }

    /// What `quantity` units cost.
    pub fn cost(&self, quantity: f64) -> f64 {
        if self.per == 0.0 {
            return 0.0;
        }
        quantity * self.usd / self.per
    }
}

/// Every price the estimate uses.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Prices {
    pub name: &'static str,
    pub region: &'static str,
    pub date: &'static str,
    pub source: &'static str,
    pub lambda_request: Rate,
    pub lambda_gb_second_arm64: Rate,
    pub lambda_gb_second_x86_64: Rate,
    pub http_api_request: Rate,
    pub sqs_request: Rate,
    pub dynamodb_write_unit: Rate,
    pub dynamodb_read_unit: Rate,
    /// PUT, COPY, POST, LIST (and the multipart-upload requests).
    pub s3_tier1_request: Rate,
    /// GET, HEAD, SELECT and every other request but DELETE.
    pub s3_tier2_request: Rate,
    pub s3_storage: Rate,
    pub eventbridge_event: Rate,
    /// Data transfer out to the internet, first 10 TB/month.
    pub egress: Rate,
}

const MILLION: f64 = 1_000_000.0;

/// US East (N. Virginia).
pub const US_EAST_1: Prices = Prices {
    name: "AWS on-demand list prices",
    region: "us-east-1",
    date: PRICES_DATE,
    source: PRICES_SOURCE,
    lambda_request: Rate::new(0.20, MILLION, "1M requests"),
    lambda_gb_second_arm64: Rate::new(0.000_013_333_4, 1.0, "GB-second"),
    lambda_gb_second_x86_64: Rate::new(0.000_016_666_7, 1.0, "GB-second"),
    http_api_request: Rate::new(1.00, MILLION, "1M requests"),
    sqs_request: Rate::new(0.40, MILLION, "1M requests"),
    dynamodb_write_unit: Rate::new(0.625, MILLION, "1M WRU"),
    dynamodb_read_unit: Rate::new(0.125, MILLION, "1M RRU"),
    s3_tier1_request: Rate::new(0.005, 1_000.0, "1,000 requests"),
    s3_tier2_request: Rate::new(0.0004, 1_000.0, "1,000 requests"),
    s3_storage: Rate::new(0.023, 1.0, "GB-month"),
    eventbridge_event: Rate::new(1.00, MILLION, "1M events"),
    egress: Rate::new(0.09, 1.0, "GB"),
};

/// The price table of `region`.
pub fn for_region(region: &str) -> Option<&'static Prices> {
    match region {
        "us-east-1" => Some(&US_EAST_1),
        _ => None,
    }
}
