//! Content digests: only `sha256:<64 lowercase hex>` is accepted (it names files in the
//! store, so nothing else may reach a path), and a streaming SHA-256 verifier so blobs
//! are checked as they arrive, without holding them in memory.
//!
//! It does not decide what to do with a mismatch; its callers (the archive reader, the
//! agent's fetcher and store) do.

use std::io::Read;

use ring::digest::{Context, SHA256};

/// A digest that is not usable.
#[derive(Debug, thiserror::Error)]
pub enum DigestError {
    /// Not `sha256:` and 64 lowercase hex characters.
    #[error("{0:?} is not a sha256 digest (sha256: and 64 lowercase hex characters): the image is broken or hostile")]
    Invalid(String),
}

/// The hex part of a well-formed `sha256:` digest: the only thing that may become a
/// file name in the store.
pub fn hex(digest: &str) -> Result<&str, DigestError> {
    shoal_proto::images::sha256_hex(digest).ok_or_else(|| DigestError::Invalid(digest.chars().take(100).collect()))
}

/// SHA-256 over a stream of bytes, counting them.
pub struct Sha256 {
    ctx: Context,
    len: u64,
}

impl Default for Sha256 {
    fn default() -> Self {
        Self::new()
    }
}

impl Sha256 {
    /// An empty hash.
    pub fn new() -> Self {
        Self { ctx: Context::new(&SHA256), len: 0 }
    }

    /// Feeds bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        self.ctx.update(bytes);
        self.len += bytes.len() as u64;
    }

    /// Bytes fed so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing was fed yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The digest, as `sha256:<hex>`.
    pub fn finish(self) -> String {
        let d = self.ctx.finish();
        let mut out = String::with_capacity(7 + 64);
        out.push_str("sha256:");
        for b in d.as_ref() {
            out.push_str(&format!("{b:02x}"));
        }
        out
    }
}

/// `sha256:<hex>` of a byte slice.
pub fn of(bytes: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(bytes);
    h.finish()
}

/// A reader that hashes what passes through it.
pub struct HashingReader<R> {
    inner: R,
    hash: Sha256,
}

impl<R: Read> HashingReader<R> {
    /// Wraps `inner`.
    pub fn new(inner: R) -> Self {
        Self { inner, hash: Sha256::new() }
    }

    /// Reads what is left (tar archives end before their stream does), then returns
    /// the digest of everything read.
    pub fn finish(mut self) -> std::io::Result<(String, u64)> {
        std::io::copy(&mut self, &mut std::io::sink())?;
        let len = self.hash.len();
        Ok((self.hash.finish(), len))
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vectors() {
        assert_eq!(of(b""), "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
        assert_eq!(of(b"abc"), "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }

    #[test]
    fn streaming_equals_one_shot() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let mut h = Sha256::new();
        for chunk in data.chunks(777) {
            h.update(chunk);
        }
        assert_eq!(h.len(), 10_000);
        assert_eq!(h.finish(), of(&data));
        let (d, n) = HashingReader::new(&data[..]).finish().unwrap();
        assert_eq!((d, n), (of(&data), 10_000));
    }

    #[test]
    fn only_sha256_digests_become_names() {
        assert_eq!(hex(&of(b"x")).unwrap().len(), 64);
        assert!(hex("sha256:../../etc/passwd").is_err());
        assert!(hex("md5:abc").is_err());
        assert!(hex(&format!("sha256:{}/", "a".repeat(63))).is_err());
    }
}
