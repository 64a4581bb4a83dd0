//! Worker Lambda: wiring only.

use lambda_runtime::{LambdaEvent, service_fn};
use serde_json::Value;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    fn_common::init_tracing();
    let worker = worker::Worker::from_env().await?;
    let worker = &worker;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| async move {
        worker.handle(event.payload).await
    }))
    .await
}
