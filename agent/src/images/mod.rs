//! Images on the board: the OCI documents the agent reads ([`oci`]), digests
//! ([`digest`]), layers unpacked for overlayfs ([`unpack`]), the on-disk store
//! ([`store`]), fetching from the manager over the session connection ([`fetch`]) and
//! side-loading OCI archives on the board ([`archive`]).
//!
//! It does not run containers: the runtime asks [`store::ImageStore::lowerdirs`] and
//! [`store::ImageStore::config`] for what to mount and run. Registries are not spoken
//! to: images come only from the manager.

pub mod archive;
pub mod digest;
pub mod fetch;
pub mod oci;
pub mod store;
pub mod unpack;

pub use fetch::{fetch_blob, sync_image, FetchError};
pub use store::{ImageRecord, ImageStore, StoreError};
pub use unpack::{unpack_layer, UnpackError};
