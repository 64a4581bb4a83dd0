//! Kick-off Lambda: wiring only.

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    fn_common::init_tracing();
    let app = kickoff::app_from_env().await?;
    lambda_http::run(app).await
}
