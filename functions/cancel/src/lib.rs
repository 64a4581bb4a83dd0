//! The cancel function: `DELETE [status URL]`. It moves the job to `Cancelled` in DynamoDB,
//! deletes its files from S3, and queues the announcement of the export's end on SQS (marked
//! first for the idle pause, which must not pause the worker under it).

use std::sync::Arc;

use axum::Router;
use fn_common::{FunctionConfig, host};
use shared::adapters::aws::idle::WakingQueue;
use shared::adapters::aws::sqs::SqsQueue;
use shared::http::{CancelState, cancel_router};
use shared::ports::{JobStore, ObjectStore, WorkQueue};

pub use fn_common::Error;

pub async fn app_from_env() -> Result<Router, Error> {
    let (config, jobs, output) = fn_common::jobs_and_output_from_env().await?;
    let aws = shared::adapters::aws::sdk_config().await;
    let env = shared::config::Env::process();
    let work: Arc<dyn WorkQueue> =
        Arc::new(SqsQueue::new(&aws, &env.require("FHIR_EXPORT_QUEUE_URL")?));
    let queue: Arc<dyn WorkQueue> = match fn_common::activity_mark(&env, &aws)? {
        Some(marks) => Arc::new(WakingQueue::marking(work, Arc::new(marks))),
        None => work,
    };
    Ok(app(jobs, output, queue, &config))
}

pub fn app(
    jobs: Arc<dyn JobStore>,
    output: Arc<dyn ObjectStore>,
    queue: Arc<dyn WorkQueue>,
    config: &FunctionConfig,
) -> Router {
    host(
        cancel_router(CancelState {
            jobs,
            output,
            queue,
            settings: Arc::new(config.settings.clone()),
        }),
        config,
    )
}
