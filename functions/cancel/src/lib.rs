//! The cancel function: `DELETE [status URL]`. It moves the job to `Cancelled` in DynamoDB and
//! deletes its files from S3.

use std::sync::Arc;

use axum::Router;
use fn_common::{FunctionConfig, host};
use shared::http::{CancelState, cancel_router};
use shared::ports::{JobStore, ObjectStore};

pub use fn_common::Error;

pub async fn app_from_env() -> Result<Router, Error> {
    let (config, jobs, output) = fn_common::jobs_and_output_from_env().await?;
    Ok(app(jobs, output, &config))
}

pub fn app(
    jobs: Arc<dyn JobStore>,
    output: Arc<dyn ObjectStore>,
    config: &FunctionConfig,
) -> Router {
    host(
        cancel_router(CancelState {
            jobs,
            output,
            settings: Arc::new(config.settings.clone()),
        }),
        config,
    )
}
