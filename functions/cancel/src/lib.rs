//! The cancel function: `DELETE [status URL]`. It moves the job to `Cancelled` in DynamoDB and
//! deletes its files from S3.

use std::sync::Arc;

use axum::Router;
use fn_common::{FunctionConfig, host};
use shared::adapters::aws::dynamodb::DynamoJobStore;
use shared::adapters::target::open_store;
use shared::config::Env;
use shared::http::{CancelState, cancel_router};
use shared::ports::{JobStore, ObjectStore};

pub type Error = Box<dyn std::error::Error + Send + Sync>;

pub async fn app_from_env() -> Result<Router, Error> {
    let env = Env::process();
    let config = FunctionConfig::from(&env)?;
    let aws = shared::adapters::aws::sdk_config().await;
    let jobs: Arc<dyn JobStore> = Arc::new(DynamoJobStore::new(
        &aws,
        &env.require("FHIR_EXPORT_TABLE")?,
    ));
    let output = open_store(&env.require("FHIR_EXPORT_OUTPUT")?).await?;
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
