//! Image messages: loading OCI archives into the manager, listing them, and boards
//! fetching blobs from the manager (for fleets with no registry in reach).
//!
//! Bulk bytes never travel inside postcard frames: an `ImageLoad` request is followed on
//! its stream by the raw archive, and a `Blob` answer by the raw blob bytes, so neither
//! side buffers a whole layer in memory and the frame limit stays small.

use serde::{Deserialize, Serialize};

use crate::{BoundedVec, NodeId, Text};

/// Most images the manager holds or a node reports.
pub const MAX_IMAGES: usize = 256;
/// Most platforms in one image index.
pub const MAX_PLATFORMS: usize = 16;
/// Largest OCI archive `shoal image load` accepts.
pub const MAX_ARCHIVE_BYTES: u64 = 4 << 30;

/// An image reference as users type it: `demo/app:1.0`, `redis` (= `redis:latest`).
pub type ImageRef = Text<256>;
/// A content digest: `sha256:` and 64 lowercase hex characters.
pub type Digest = Text<80>;
/// An OCI platform: `linux/amd64`, `linux/arm64`, `linux/arm/v7`.
pub type Platform = Text<32>;

/// Ask the manager for a blob, from `offset` on (to resume an interrupted transfer).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FetchBlob {
    /// The blob's digest.
    pub digest: Digest,
    /// First byte wanted.
    pub offset: u64,
}

/// An image the manager wants a node to hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WantedImage {
    /// The reference, e.g. `demo/app:1.0`.
    pub reference: ImageRef,
    /// Digest of the top-level index or manifest.
    pub digest: Digest,
}

/// An image as `shoal image ls` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageView {
    /// The reference.
    pub reference: ImageRef,
    /// Digest of the top-level index or manifest.
    pub digest: Digest,
    /// Platforms it has.
    pub platforms: BoundedVec<Platform, MAX_PLATFORMS>,
    /// Bytes of all its blobs in the manager's store.
    pub size: u64,
    /// Nodes that hold it, by ID.
    pub nodes: BoundedVec<NodeId, { crate::MAX_NODES }>,
}

/// Normalises a reference the way Docker does: no tag means `:latest`.
pub fn normalize_ref(r: &str) -> String {
    let name_part = r.rsplit('/').next().unwrap_or(r);
    if r.contains('@') || name_part.contains(':') {
        r.to_owned()
    } else {
        format!("{r}:latest")
    }
}

/// Checks a digest is `sha256:<64 lowercase hex>`, returning the hex part. Digests name
/// files in the blob stores, so nothing else may pass.
pub fn sha256_hex(digest: &str) -> Option<&str> {
    let hex = digest.strip_prefix("sha256:")?;
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))).then_some(hex)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_default_to_latest() {
        assert_eq!(normalize_ref("redis"), "redis:latest");
        assert_eq!(normalize_ref("demo/app:1.0"), "demo/app:1.0");
        assert_eq!(normalize_ref("localhost:5000/app"), "localhost:5000/app:latest");
    }

    #[test]
    fn only_well_formed_sha256_digests_pass() {
        let good = format!("sha256:{}", "a".repeat(64));
        assert!(sha256_hex(&good).is_some());
        assert!(sha256_hex("sha256:../../etc/passwd").is_none());
        assert!(sha256_hex(&format!("sha512:{}", "a".repeat(64))).is_none());
        assert!(sha256_hex(&format!("sha256:{}", "A".repeat(64))).is_none());
    }
}
