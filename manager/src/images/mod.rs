//! The manager's images: OCI archives imported, and images pulled from registries, into
//! a content-addressed blob store.
//! Image records (kept in the redb store) and the pure decisions about them (which
//! image a name means, what every node should hold) are in [`shoal_core::images`],
//! re-exported here. It serves blobs but never unpacks layers or runs anything: that is
//! the agent's job.

pub mod archive;
pub mod blobs;
pub mod registry;

pub use shoal_core::images::{referenced_blobs, resolve, wanted, ImageRecord};
