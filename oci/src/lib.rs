//! OCI image documents, digests and archive reading for the manager and the agent; it
//! keeps no store, unpacks no layer, does no networking and depends on nothing
//! Linux-only.
//!
//! OCI images as shoal's manager and agent both read them: the documents ([`spec`]:
//! media types, descriptor, platform, index, manifest, image config), content digests
//! ([`digest`]) and OCI image archives ([`archive`]: plain or gzipped tar, verified blob
//! by blob into a staging directory). One copy, so `shoal image load` and
//! `shoal-agent image load` accept the same archives for the same reasons.
//!
//! The manager's blob store and the agent's image store keep what it reads. It must
//! build for the agent's static musl targets and for the manager on macOS, so it uses
//! pure-Rust crates only (tar, flate2's Rust backend, ring). The rule for naming images lives in `shoal_proto::images`,
//! where the manager's pure decisions can use it too.

pub mod archive;
pub mod digest;
pub mod spec;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use archive::{ArchiveError, ArchiveImage, StagingDir};
pub use digest::{DigestError, HashingReader, Sha256};
