//! The status function: `GET [status URL]` (status and manifest) and `GET [file URL]` (307 to
//! a presigned S3 URL). It reads DynamoDB and signs S3 URLs; it never writes and links no
//! queue.

use std::sync::Arc;

use axum::Router;
use fn_common::{FunctionConfig, host};
use shared::http::{FilesState, StatusState, files_router, status_router};
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
    let settings = Arc::new(config.settings.clone());
    let routes = Router::new()
        .merge(status_router(StatusState {
            jobs: jobs.clone(),
            output: output.clone(),
            settings: settings.clone(),
        }))
        .merge(files_router(FilesState {
            jobs,
            output,
            settings,
        }));
    host(routes, config)
}
