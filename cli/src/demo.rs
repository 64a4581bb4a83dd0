//! `fhir-export demo`: the newcomer's one command. Starts the local server on its embedded
//! defaults, runs a system-level export against it over HTTP exactly as a client would
//! (kick-off, polling, manifest), prints where the files are, and stops.

use std::time::Duration;

use serde_json::Value;

use crate::serve::{ServeConfig, start};

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error(transparent)]
    Serve(#[from] crate::serve::ServeError),
    #[error("HTTP request failed")]
    Http(#[from] reqwest::Error),
    #[error("unexpected answer from the server: {0}")]
    Protocol(String),
}

pub async fn run(config: ServeConfig) -> Result<(), DemoError> {
    let server = start(config).await?;
    let result = drive(&server.base_url).await;
    if let Some(dir) = &server.output_dir {
        println!("files are in {}", dir.display());
    }
    server.stop().await;
    result
}

async fn drive(base: &str) -> Result<(), DemoError> {
    let http = reqwest::Client::new();
    let kickoff = format!("{base}/$export");
    println!("GET {kickoff}");
    let resp = http
        .get(&kickoff)
        .header("Accept", "application/fhir+json")
        .header("Prefer", "respond-async")
        .send()
        .await?;
    if resp.status() != 202 {
        return Err(DemoError::Protocol(format!(
            "kick-off answered {}: {}",
            resp.status(),
            resp.text().await.unwrap_or_default()
        )));
    }
    let status_url = resp
        .headers()
        .get("content-location")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| DemoError::Protocol("kick-off without Content-Location".into()))?
        .to_owned();
    println!("  202 Accepted, Content-Location: {status_url}");
    let manifest: Value = loop {
        let resp = http
            .get(&status_url)
            .header("Accept", "application/json")
            .send()
            .await?;
        match resp.status().as_u16() {
            202 => {
                let progress = resp
                    .headers()
                    .get("x-progress")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned();
                println!("  202 {progress}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            200 => break resp.json().await?,
            other => {
                return Err(DemoError::Protocol(format!(
                    "status answered {other}: {}",
                    resp.text().await.unwrap_or_default()
                )));
            }
        }
    };
    println!("  200 OK, transactionTime {}", manifest["transactionTime"]);
    let mut total = 0;
    for item in manifest["output"].as_array().into_iter().flatten() {
        let count = item["count"].as_u64().unwrap_or(0);
        total += count;
        println!(
            "  {:<20} {:>8}  {}",
            item["type"].as_str().unwrap_or("?"),
            count,
            item["url"].as_str().unwrap_or("?")
        );
    }
    println!("exported {total} resources");
    Ok(())
}
