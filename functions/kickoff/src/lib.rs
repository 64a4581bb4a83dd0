//! The kick-off function: `GET|POST [base]/$export`, `[base]/Patient/$export`,
//! `[base]/Group/[id]/$export`, `GET [base]/metadata` and `GET
//! [base]/.well-known/smart-configuration`. It creates jobs in DynamoDB,
//! queues their plan on SQS, and reads Group resources (and, for the CapabilityStatement,
//! the list of resource types) from the NDJSON source.

use std::sync::Arc;

use axum::Router;
use fn_common::{FunctionConfig, host};
use shared::adapters::aws::idle::WakingQueue;
use shared::adapters::aws::sqs::SqsQueue;
use shared::config::Env;
use shared::http::{KickoffState, MetadataState, kickoff_router, metadata_router};
use shared::ports::WorkQueue;
use shared::request::Capabilities;

pub use fn_common::Error;

/// The function's router, from the environment.
pub async fn app_from_env() -> Result<Router, Error> {
    let env = Env::process();
    let config = FunctionConfig::from(&env)?;
    let aws = shared::adapters::aws::sdk_config().await;
    let work: Arc<dyn WorkQueue> =
        Arc::new(SqsQueue::new(&aws, &env.require("FHIR_EXPORT_QUEUE_URL")?));
    // With the idle pause, queueing a plan first wakes the work queue's event source.
    let queue: Arc<dyn WorkQueue> = match fn_common::idle_switch(&env, &aws)? {
        Some(switch) => Arc::new(WakingQueue::resuming(work, Arc::new(switch))),
        None => work,
    };
    let state = KickoffState {
        jobs: fn_common::job_store(&env, &aws)?,
        queue,
        source: fn_common::source(&env).await?,
        settings: Arc::new(config.settings.clone()),
        caps: Capabilities::CURRENT,
        schedules: Default::default(),
    };
    Ok(app(state, &config))
}

pub fn app(state: KickoffState, config: &FunctionConfig) -> Router {
    let metadata = MetadataState::new(state.settings.clone(), state.source.clone());
    let mut routes = kickoff_router(state).merge(metadata_router(metadata));
    // Where clients get tokens, when the deployment says (template `TokenEndpoint`).
    if let Some(token) = &config.token_endpoint {
        routes = routes.merge(shared::auth::smart_configuration_router(
            shared::auth::issuer_configuration(
                config.jwt_issuer.as_deref().unwrap_or_default(),
                None,
                Some(token),
            ),
        ));
    }
    host(routes, config)
}
