//! Image messages: loading OCI archives into the manager, listing them, and boards
//! fetching blobs from the manager (for fleets with no registry in reach).
//!
//! Bulk bytes never travel inside postcard frames: an `ImageLoad` request is followed on
//! its stream by the raw archive, and a `Blob` answer by the raw blob bytes, so neither
//! side buffers a whole layer in memory and the frame limit stays small.
//!
//! It also holds the pure rules about image names (`normalize_ref`, which name an image
//! in an archive goes by) so the manager's decisions, the manager's import and the
//! agent's side-load all apply the same ones.

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

/// `shoal image pull REF`, and the pull `service create/update` asks for first: the
/// manager fetches the image from its registry. Progress frames
/// ([`crate::ControlReply::PullProgress`]) come back on the stream before the answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImagePull {
    /// The reference as typed (`nginx:1.27`, `registry.local:5000/team/app:2.1`).
    pub reference: ImageRef,
    /// Platforms wanted besides those the fleet's boards need.
    pub platforms: BoundedVec<Platform, MAX_PLATFORMS>,
    /// Answer at once when the manager already holds the reference (no registry asked).
    pub if_missing: bool,
}

/// What one blob of a pull is doing, for the CLI's per-layer lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PullStatus {
    /// The manager already holds it: not fetched.
    Exists,
    /// Bytes are arriving.
    Downloading,
    /// Bytes are arriving again after an interruption, from where they stopped.
    Resuming,
    /// Fetched and verified.
    Complete,
}

/// Progress of one blob of a pull.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullProgress {
    /// The blob's digest.
    pub digest: Digest,
    /// What it is doing.
    pub status: PullStatus,
    /// Bytes held so far.
    pub current: u64,
    /// Its size.
    pub total: u64,
}

/// The end of a pull.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pulled {
    /// The reference the manager keeps it under (`nginx:1.27`).
    pub reference: ImageRef,
    /// Digest of its top-level index or manifest (what services pin).
    pub digest: Digest,
    /// Platforms it holds.
    pub platforms: BoundedVec<Platform, MAX_PLATFORMS>,
    /// Bytes fetched from the registry by this pull (0 when nothing was missing).
    pub fetched: u64,
}

/// `shoal login REGISTRY`: credentials the manager keeps (and only the manager).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryLogin {
    /// `host[:port]`; `docker.io` for Docker Hub.
    pub registry: Text<256>,
    /// User name.
    pub username: Text<256>,
    /// Password or access token.
    pub password: Text<1024>,
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

/// Normalises a reference the way Docker shows it (its "familiar" form): Docker Hub's
/// registry and `library/` are implied (`docker.io/library/redis` is `redis`,
/// `index.docker.io/team/app` is `team/app`), and no tag means `:latest`. So every way
/// Docker accepts to name an image finds it, whatever name the archive carried.
pub fn normalize_ref(r: &str) -> String {
    let r = ["docker.io/", "index.docker.io/"].iter().find_map(|p| r.strip_prefix(p)).unwrap_or(r);
    let r = match r.strip_prefix("library/") {
        // Only an official image's own name: `library/a/b` is a real repository path.
        Some(rest) if !rest.split(['@', ':']).next().unwrap_or(rest).contains('/') => rest,
        _ => r,
    };
    let name_part = r.rsplit('/').next().unwrap_or(r);
    if r.contains('@') || name_part.contains(':') {
        r.to_owned()
    } else {
        format!("{r}:latest")
    }
}

/// Annotation that names an image in an OCI layout's `index.json`.
pub const REF_NAME_ANNOTATION: &str = "org.opencontainers.image.ref.name";
/// containerd's (and `docker save`'s) annotation with the image's full name.
pub const CONTAINERD_NAME_ANNOTATION: &str = "io.containerd.image.name";
/// Longest image reference accepted.
pub const MAX_REF_LEN: usize = 256;

/// Why an image in an archive has no usable name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageNameError {
    /// Only a tag (`1.0`): the repository is unknown, and `1.0:latest` would be wrong.
    #[error(
        "is named only by the tag {0:?}: export it with a full name (e.g. `skopeo copy … oci-archive:app.tar:demo/app:1.0`)"
    )]
    TagOnly(String),
    /// No name annotation at all.
    #[error(
        "has no name (annotation {REF_NAME_ANNOTATION}): export it with a full name (e.g. `skopeo copy … oci-archive:app.tar:demo/app:1.0`)"
    )]
    Missing,
    /// Too long, or with spaces or control characters.
    #[error("image name {0:?} is not a valid reference")]
    Invalid(String),
}

/// The name an image in an OCI archive goes by, from the annotations of its `index.json`
/// entry: the OCI `ref.name` when it is a full reference, else containerd's full name.
/// A bare tag (`1.0`, as `skopeo copy … oci-archive:app.tar:1.0` writes) is refused
/// rather than guessed at. The one rule for `shoal image load` and `shoal-agent image load`.
pub fn archive_image_name(oci_ref: Option<&str>, containerd_name: Option<&str>) -> Result<String, ImageNameError> {
    let oci = oci_ref.filter(|s| !s.is_empty());
    let containerd = containerd_name.filter(|s| !s.is_empty());
    let is_full = |s: &str| s.contains(':') || s.contains('/');
    let name = match (oci, containerd) {
        (Some(o), _) if is_full(o) => o,
        (_, Some(c)) => c,
        (Some(tag), None) => return Err(ImageNameError::TagOnly(tag.to_owned())),
        (None, None) => return Err(ImageNameError::Missing),
    };
    let normalized = normalize_ref(name);
    if normalized.len() > MAX_REF_LEN || normalized.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(ImageNameError::Invalid(name.to_owned()));
    }
    Ok(normalized)
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
        // Docker Hub's names, as `docker save` of Docker 25+ writes them.
        assert_eq!(normalize_ref("docker.io/library/rwpyhttp:docker25"), "rwpyhttp:docker25");
        assert_eq!(normalize_ref("docker.io/library/nginx"), "nginx:latest");
        assert_eq!(normalize_ref("library/nginx:1.27"), "nginx:1.27");
        assert_eq!(normalize_ref("index.docker.io/team/app:2"), "team/app:2");
        assert_eq!(normalize_ref("docker.io/team/app"), "team/app:latest");
        assert_eq!(normalize_ref("library/a/b:1"), "library/a/b:1");
        assert_eq!(normalize_ref("registry.local:5000/library/x"), "registry.local:5000/library/x:latest");
    }

    #[test]
    fn archive_images_need_a_full_name() {
        assert_eq!(archive_image_name(Some("demo/app:1.0"), None).unwrap(), "demo/app:1.0");
        assert_eq!(archive_image_name(Some("redis:7"), Some("docker.io/library/redis:7")).unwrap(), "redis:7");
        assert_eq!(archive_image_name(Some("demo/app"), None).unwrap(), "demo/app:latest");
        assert_eq!(
            archive_image_name(Some("1.0"), Some("docker.io/demo/app:1.0")).unwrap(),
            "demo/app:1.0",
            "Docker Hub is implied"
        );
        assert_eq!(archive_image_name(None, Some("demo/app")).unwrap(), "demo/app:latest");
        assert_eq!(archive_image_name(Some("1.0"), None), Err(ImageNameError::TagOnly("1.0".into())));
        assert_eq!(archive_image_name(Some(""), Some("")), Err(ImageNameError::Missing));
        assert_eq!(archive_image_name(None, None), Err(ImageNameError::Missing));
        for bad in ["demo/a pp:1", "demo/app:\u{7}", &format!("demo/{}:1", "a".repeat(300))] {
            assert!(matches!(archive_image_name(Some(bad), None), Err(ImageNameError::Invalid(_))), "{bad}");
        }
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
