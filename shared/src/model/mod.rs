//! Validated value types shared by every layer.

pub mod fhir_time;
pub mod ids;
pub mod resource_type;

pub use fhir_time::{format_instant, parse_instant};
pub use ids::{JobId, LogicalId, ResourceRef};
pub use resource_type::ResourceType;
