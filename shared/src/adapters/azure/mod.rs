//! Azure Blob Storage and ADLS Gen2 (through the Blob API every hierarchical-namespace
//! account serves). The URL forms are parsed in every build; the adapter itself is the
//! `azure` feature.

pub mod location;
#[cfg(feature = "azure")]
pub mod settings;
#[cfg(feature = "azure")]
mod store;
#[cfg(feature = "azure")]
mod writer;

pub use location::{AzureLocation, AzureUrlError};
#[cfg(feature = "azure")]
pub use settings::AzureSettings;
#[cfg(feature = "azure")]
pub use store::{AzureCallError, AzureOpenError, AzureStore};
