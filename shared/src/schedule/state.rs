//! What the job store keeps of a schedule: its definition as last run, the last completed run
//! (whose `transactionTime` the next run exports changes since), and the run in flight.
//! Written with compare-and-set on `version`, so that two invocations of one tick start one
//! run.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::model::JobId;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastRun {
    pub job: JobId,
    pub transaction_time: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScheduleState {
    pub name: String,
    /// The definition the last tick ran (the API shows it; on AWS the definition lives in
    /// EventBridge Scheduler and reaches us with each tick).
    pub definition: serde_json::Value,
    /// The owner key of its runs (`iss#client`), for the access rules of the API.
    pub owner: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_completed: Option<LastRun>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_flight: Option<JobId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_tick: Option<DateTime<Utc>>,
    /// 0 for a schedule never stored; every write adds one.
    #[serde(default)]
    pub version: u64,
}

impl ScheduleState {
    pub fn new(name: &str, owner: &str, definition: serde_json::Value) -> Self {
        ScheduleState {
            name: name.to_owned(),
            definition,
            owner: owner.to_owned(),
            last_completed: None,
            in_flight: None,
            last_tick: None,
            version: 0,
        }
    }
}
