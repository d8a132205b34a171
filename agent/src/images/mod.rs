//! Images on the board: layers unpacked for overlayfs ([`unpack`]), the on-disk store
//! ([`store`]), fetching from the manager over the session connection ([`fetch`]) and
//! side-loading OCI archives on the board ([`archive`]). The OCI documents, digests and
//! the archive reader are `shoal_oci`'s, shared with the manager.
//!
//! It does not run containers: the runtime asks [`store::ImageStore::lowerdirs`] and
//! [`store::ImageStore::config`] for what to mount and run. Registries are not spoken
//! to: images come only from the manager.

pub mod archive;
pub mod fetch;
pub mod store;
pub mod unpack;

pub use fetch::{fetch_blob, sync_image, FetchError};
pub use store::{ImageRecord, ImageStore, StoreError};
pub use unpack::{unpack_layer, UnpackError};
