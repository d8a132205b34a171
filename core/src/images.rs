//! Image records and the pure decisions about them: which image a name means, which
//! blobs are in use, what every node should hold. Reading archives and keeping blobs is
//! the manager's (`shoal_manager::images`); nothing here touches a file.

use std::collections::{BTreeSet, HashSet};

use serde::{Deserialize, Serialize};
use shoal_proto::images::{normalize_ref, WantedImage};
use shoal_proto::{ErrorKind, ErrorReply};

/// One loaded image, as the manager's store keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// Normalised reference, e.g. `demo/app:1.0`.
    pub reference: String,
    /// Digest of the top-level index or manifest.
    pub digest: String,
    /// Platforms it has (`linux/arm64`, ...), sorted.
    pub platforms: Vec<String>,
    /// Bytes of all its distinct blobs.
    pub size: u64,
    /// Every blob it uses (index, manifests, configs, layers), sorted.
    pub blobs: Vec<String>,
    /// When it was loaded, milliseconds since the Unix epoch.
    pub loaded_at_ms: u64,
}

/// Every blob some image uses: what blob GC keeps.
pub fn referenced_blobs(images: &[ImageRecord]) -> HashSet<String> {
    images.iter().flat_map(|i| i.blobs.iter().cloned()).collect()
}

/// What every node should hold: each distinct (reference, digest), sorted by reference.
pub fn wanted(images: &[ImageRecord]) -> Vec<WantedImage> {
    let set: BTreeSet<(&str, &str)> = images.iter().map(|i| (i.reference.as_str(), i.digest.as_str())).collect();
    set.into_iter()
        .map(|(r, d)| WantedImage { reference: shoal_proto::text_lossy(r), digest: shoal_proto::text_lossy(d) })
        .collect()
}

/// Finds the images `name` means, as `docker rmi` does: a reference (`redis` is
/// `redis:latest`), else a digest or a unique prefix of one (with or without `sha256:`).
/// A digest several references share matches all of them.
pub fn resolve<'a>(images: &'a [ImageRecord], name: &str) -> Result<Vec<&'a ImageRecord>, ErrorReply> {
    let normalized = normalize_ref(name);
    // Records stored before names were normalised to Docker's familiar form may still
    // carry `docker.io/library/…`: they match by their normalised name too.
    let same = |i: &&ImageRecord| {
        i.reference == normalized || i.reference == name || normalize_ref(&i.reference) == normalized
    };
    if let Some(i) = images.iter().find(same) {
        return Ok(vec![i]);
    }
    let prefix = name.strip_prefix("sha256:").unwrap_or(name);
    let is_hex = !prefix.is_empty() && prefix.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    let not_found = || ErrorReply::new(ErrorKind::NotFound, &format!("no such image: {name} (see `shoal image ls`)"));
    if !is_hex {
        return Err(not_found());
    }
    let matches: Vec<&ImageRecord> =
        images.iter().filter(|i| i.digest.strip_prefix("sha256:").is_some_and(|h| h.starts_with(prefix))).collect();
    let digests: BTreeSet<&str> = matches.iter().map(|i| i.digest.as_str()).collect();
    match digests.len() {
        0 => Err(not_found()),
        1 => Ok(matches),
        _ => Err(ErrorReply::new(
            ErrorKind::Ambiguous,
            &format!("{name} matches {} images: give more digest characters or the reference", digests.len()),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(reference: &str, digest_char: char) -> ImageRecord {
        ImageRecord {
            reference: reference.into(),
            digest: format!("sha256:{}", digest_char.to_string().repeat(64)),
            platforms: vec!["linux/amd64".into()],
            size: 1,
            blobs: vec![],
            loaded_at_ms: 0,
        }
    }

    #[test]
    fn images_resolve_by_reference_or_digest_prefix() {
        let images = vec![rec("demo/app:1.0", 'a'), rec("redis:latest", 'b'), rec("redis:7", 'b')];
        assert_eq!(resolve(&images, "redis").unwrap()[0].reference, "redis:latest");
        // Every way Docker names a Hub image, both ways round.
        assert_eq!(resolve(&images, "docker.io/library/redis:7").unwrap()[0].reference, "redis:7");
        let old = vec![rec("docker.io/library/nginx:1.27", 'c')];
        assert_eq!(resolve(&old, "nginx:1.27").unwrap()[0].reference, "docker.io/library/nginx:1.27");
        assert_eq!(resolve(&images, "demo/app:1.0").unwrap().len(), 1);
        assert_eq!(resolve(&images, "aaaa").unwrap()[0].reference, "demo/app:1.0");
        assert_eq!(resolve(&images, "sha256:bbb").unwrap().len(), 2, "a shared digest means every reference");
        assert_eq!(resolve(&images, "nope").unwrap_err().kind, ErrorKind::NotFound);
        assert_eq!(resolve(&images, "c").unwrap_err().kind, ErrorKind::NotFound);
        let two =
            vec![rec("x:1", 'a'), ImageRecord { digest: format!("sha256:a{}", "c".repeat(63)), ..rec("y:1", 'a') }];
        assert_eq!(resolve(&two, "a").unwrap_err().kind, ErrorKind::Ambiguous);
    }

    #[test]
    fn every_node_is_asked_for_every_image() {
        let images = vec![rec("b:1", 'b'), rec("a:1", 'a')];
        let w = wanted(&images);
        assert_eq!(w.iter().map(|w| w.reference.as_str()).collect::<Vec<_>>(), ["a:1", "b:1"]);
    }
}
