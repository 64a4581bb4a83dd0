//! Where the local server announces the end of each export: `--events-webhook URL` (signed
//! with `FHIR_EXPORT_EVENTS_WEBHOOK_SECRET` when set) and/or `--events-log FILE`.

use std::sync::Arc;

use shared::adapters::events::{EventLog, Webhook};
use shared::config::Env;
use shared::ports::{AllSinks, EventSink, NoEvents};

use crate::serve::{ServeConfig, ServeError};

pub fn sink<F: Fn(&str) -> Option<String>>(
    config: &ServeConfig,
    env: &Env<F>,
) -> Result<Arc<dyn EventSink>, ServeError> {
    let mut sinks: Vec<Arc<dyn EventSink>> = Vec::new();
    if let Some(url) = &config.events_webhook {
        let secret = env.get("FHIR_EXPORT_EVENTS_WEBHOOK_SECRET");
        sinks.push(Arc::new(
            Webhook::new(url, secret.as_deref()).map_err(ServeError::Events)?,
        ));
    }
    if let Some(path) = &config.events_log {
        sinks.push(Arc::new(EventLog::new(path.clone())));
    }
    Ok(match sinks.len() {
        0 => Arc::new(NoEvents),
        1 => sinks.remove(0),
        _ => Arc::new(AllSinks(sinks)),
    })
}
