//! Work messages: versioned JSON bodies on the work queue.

use serde::{Deserialize, Serialize};

use crate::model::JobId;

pub const MESSAGE_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum WorkMessage {
    /// Split a job into chunks and fan them out.
    Plan { job: JobId },
    /// Export one chunk.
    Chunk { job: JobId, chunk: u32 },
    /// Publish the files and the manifest once every chunk is done.
    Finalize { job: JobId },
    /// Announce the end of the export (completed, failed, cancelled) to the event sink; sent
    /// just before the job's last transition, so that no end goes unannounced.
    Notify { job: JobId },
}

impl WorkMessage {
    pub fn job(&self) -> &JobId {
        match self {
            WorkMessage::Plan { job }
            | WorkMessage::Chunk { job, .. }
            | WorkMessage::Finalize { job }
            | WorkMessage::Notify { job } => job,
        }
    }

    /// What the message asks, in a word (`chunk-7` for a chunk), for logs and usage keys.
    pub fn kind(&self) -> String {
        match self {
            WorkMessage::Plan { .. } => "plan".to_owned(),
            WorkMessage::Chunk { chunk, .. } => format!("chunk-{chunk}"),
            WorkMessage::Finalize { .. } => "finalize".to_owned(),
            WorkMessage::Notify { .. } => "notify".to_owned(),
        }
    }

    pub fn encode(&self) -> String {
        #[derive(Serialize)]
        struct Envelope<'a> {
            v: u32,
            #[serde(flatten)]
            msg: &'a WorkMessage,
        }
        serde_json::to_string(&Envelope {
            v: MESSAGE_VERSION,
            msg: self,
        })
        .unwrap_or_default()
    }

    pub fn decode(body: &str) -> Result<WorkMessage, MessageError> {
        #[derive(Deserialize)]
        struct Version {
            v: u32,
        }
        let Version { v } =
            serde_json::from_str(body).map_err(|e| MessageError::Malformed(e.to_string()))?;
        if v != MESSAGE_VERSION {
            return Err(MessageError::UnknownVersion(v));
        }
        serde_json::from_str(body).map_err(|e| MessageError::Malformed(e.to_string()))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    #[error("malformed work message: {0}")]
    Malformed(String),
    #[error("work message version {0} is not supported by this worker")]
    UnknownVersion(u32),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_versioning() {
        let job = JobId::new();
        let m = WorkMessage::Chunk {
            job: job.clone(),
            chunk: 7,
        };
        let body = m.encode();
        assert!(body.contains("\"v\":1"), "{body}");
        assert!(body.contains("\"type\":\"chunk\""), "{body}");
        assert_eq!(WorkMessage::decode(&body), Ok(m));
        assert_eq!(
            WorkMessage::decode(&format!("{{\"v\":2,\"type\":\"plan\",\"job\":\"{job}\"}}")),
            Err(MessageError::UnknownVersion(2))
        );
        assert!(matches!(
            WorkMessage::decode("{}"),
            Err(MessageError::Malformed(_))
        ));
        assert!(matches!(
            WorkMessage::decode("{\"v\":1,\"type\":\"plan\",\"job\":\"../x\"}"),
            Err(MessageError::Malformed(_))
        ));
    }
}
