//! Secrets and configs at rest: the stored record ([`ObjectRecord`]) and the sealing of
//! secret bytes with AES-256-GCM (ring, which the manager already has through rustls).
//!
//! The key is 32 random bytes in `<data-dir>/manager/secrets.key`, written once with
//! owner-only permissions (0600) the first time a secret is stored, and never put in the
//! state store: a copy of `state.redb` (a backup, a disk image) alone does not reveal a
//! secret. Each sealing takes a fresh random 96-bit nonce, and the kind and name are the
//! additional data, so a sealed value moved to another record does not open. Configs are
//! stored plain, as Docker keeps them.
//!
//! Not here: who may read them (the server hands bytes only to boards running a task
//! that references them) and the decisions ([`crate::core::secrets`]).

use std::path::{Path, PathBuf};

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use serde::{Deserialize, Serialize};
use shoal_proto::secrets::{Data, Kind, ObjectName, ObjectView};
use shoal_proto::{BoundedVec, Label, NodeId, MAX_LABELS};

/// File name of the sealing key, in the manager's directory.
pub const KEY_FILE: &str = "secrets.key";

/// A secret or config as the store keeps it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectRecord {
    /// Secret or config.
    pub kind: Kind,
    /// ID.
    pub id: NodeId,
    /// Name, unique per kind.
    pub name: ObjectName,
    /// Labels.
    pub labels: BoundedVec<Label, MAX_LABELS>,
    /// Starts at 1; `update` adds one.
    pub version: u64,
    /// Milliseconds since the Unix epoch.
    pub created_at_ms: u64,
    /// Milliseconds since the Unix epoch.
    pub updated_at_ms: u64,
    /// Length of the bytes.
    pub size: u64,
    /// A secret: nonce and AES-256-GCM ciphertext with its tag. A config: the bytes.
    pub stored: Vec<u8>,
}

/// Never the stored bytes, sealed or not.
impl std::fmt::Debug for ObjectRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.debug_struct("ObjectRecord")
            .field("kind", &self.kind)
            .field("id", &self.id)
            .field("name", &self.name)
            .field("version", &self.version)
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

impl ObjectRecord {
    /// The store key: kind and name.
    pub fn key(&self) -> String {
        key(self.kind, &self.name)
    }

    /// As listed: no bytes.
    pub fn view(&self) -> ObjectView {
        ObjectView {
            kind: self.kind,
            id: self.id.clone(),
            name: self.name.clone(),
            labels: self.labels.clone(),
            version: self.version,
            size: self.size,
            created_at_ms: self.created_at_ms,
            updated_at_ms: self.updated_at_ms,
            used_by: BoundedVec::new(),
            data: None,
        }
    }
}

/// The store key of an object.
pub fn key(kind: Kind, name: &str) -> String {
    format!("{kind}/{name}")
}

/// Why a secret could not be sealed or opened.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// The key file could not be read or written.
    #[error("the secrets key {path} could not be {what}: {source}")]
    KeyFile {
        /// The file.
        path: PathBuf,
        /// Read or written.
        what: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// The key file is not 32 bytes.
    #[error("the secrets key {0} is damaged (not 32 bytes): restore it from a backup of the manager's data dir")]
    BadKey(PathBuf),
    /// A sealed value that does not open: damaged, or sealed with another key.
    #[error("secret {0} does not decrypt with this manager's key (damaged store or another key): create it again")]
    Open(String),
}

/// The sealing key, loaded (or made) once per process.
pub struct Sealer {
    key: LessSafeKey,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("Sealer(..)")
    }
}

impl Sealer {
    /// Reads `<manager_dir>/secrets.key`, making it (0600) if there is none.
    pub fn open_or_create(manager_dir: &Path) -> Result<Self, SealError> {
        let path = manager_dir.join(KEY_FILE);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let fresh = shoal_link::random::<32>();
                shoal_link::files::write_private(&path, &fresh).map_err(|source| SealError::KeyFile {
                    path: path.clone(),
                    what: "written",
                    source,
                })?;
                fresh.to_vec()
            }
            Err(source) => return Err(SealError::KeyFile { path, what: "read", source }),
        };
        let raw: [u8; 32] = bytes.try_into().map_err(|_| SealError::BadKey(path.clone()))?;
        Ok(Self::from_key(raw))
    }

    /// A sealer with this key (tests).
    pub fn from_key(raw: [u8; 32]) -> Self {
        Self { key: LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &raw).expect("32 bytes is an AES-256 key")) }
    }

    /// Nonce then ciphertext and tag; `nonce` must never repeat under one key (callers
    /// pass fresh random bytes).
    pub fn seal(&self, kind: Kind, name: &str, data: &[u8], nonce: [u8; NONCE_LEN]) -> Vec<u8> {
        let mut out = nonce.to_vec();
        let mut body = data.to_vec();
        self.key
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(key(kind, name)), &mut body)
            .expect("a secret of at most 500 KiB is within AES-GCM's limit");
        out.extend_from_slice(&body);
        out
    }

    /// The bytes [`Sealer::seal`] sealed for this kind and name.
    pub fn open(&self, kind: Kind, name: &str, sealed: &[u8]) -> Result<Vec<u8>, SealError> {
        let bad = || SealError::Open(name.to_owned());
        if sealed.len() < NONCE_LEN {
            return Err(bad());
        }
        let (nonce, body) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| bad())?;
        let mut body = body.to_vec();
        let plain = self.key.open_in_place(nonce, Aad::from(key(kind, name)), &mut body).map_err(|_| bad())?;
        Ok(plain.to_vec())
    }

    /// What the store keeps of `data`: sealed for a secret, as is for a config.
    pub fn store_form(&self, kind: Kind, name: &str, data: &[u8]) -> Vec<u8> {
        match kind {
            Kind::Secret => self.seal(kind, name, data, shoal_link::random::<NONCE_LEN>()),
            Kind::Config => data.to_vec(),
        }
    }

    /// The bytes of a stored record.
    pub fn bytes(&self, record: &ObjectRecord) -> Result<Data, SealError> {
        let plain = match record.kind {
            Kind::Secret => self.open(record.kind, &record.name, &record.stored)?,
            Kind::Config => record.stored.clone(),
        };
        plain.try_into().map_err(|_| SealError::Open(record.name.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_round_trips_and_is_not_stored_plainly() {
        let s = Sealer::from_key([7; 32]);
        let sealed = s.seal(Kind::Secret, "db", b"s3cret-bytes", [1; 12]);
        assert!(!sealed.windows(12).any(|w| w == b"s3cret-bytes"));
        assert_eq!(s.open(Kind::Secret, "db", &sealed).unwrap(), b"s3cret-bytes");
    }

    #[test]
    fn a_tampered_moved_or_foreign_secret_does_not_open() {
        let s = Sealer::from_key([7; 32]);
        let mut sealed = s.seal(Kind::Secret, "db", b"s3cret", [1; 12]);
        assert!(s.open(Kind::Secret, "other", &sealed).is_err(), "bound to its name");
        assert!(s.open(Kind::Config, "db", &sealed).is_err(), "bound to its kind");
        assert!(Sealer::from_key([8; 32]).open(Kind::Secret, "db", &sealed).is_err(), "another key");
        let last = sealed.len() - 1;
        sealed[last] ^= 1;
        assert!(s.open(Kind::Secret, "db", &sealed).is_err(), "tampered");
        assert!(s.open(Kind::Secret, "db", &sealed[..5]).is_err(), "truncated");
    }

    #[test]
    fn the_key_file_is_owner_only_and_reused() {
        let dir = std::env::temp_dir().join(format!("shoal-seal-{}", shoal_proto::hex(&shoal_link::random::<6>())));
        std::fs::create_dir_all(&dir).unwrap();
        let a = Sealer::open_or_create(&dir).unwrap();
        let sealed = a.store_form(Kind::Secret, "x", b"value");
        let b = Sealer::open_or_create(&dir).unwrap();
        assert_eq!(b.open(Kind::Secret, "x", &sealed).unwrap(), b"value");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.join(KEY_FILE)).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "{mode:o}");
        }
        std::fs::write(dir.join(KEY_FILE), b"short").unwrap();
        assert!(matches!(Sealer::open_or_create(&dir), Err(SealError::BadKey(_))));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_record_never_shows_its_bytes_in_debug() {
        let r = ObjectRecord {
            kind: Kind::Config,
            id: NodeId::from_random([1; 16]),
            name: shoal_proto::text("c").unwrap(),
            labels: BoundedVec::new(),
            version: 1,
            created_at_ms: 0,
            updated_at_ms: 0,
            size: 6,
            stored: b"plain!".to_vec(),
        };
        assert!(!format!("{r:?}").contains("plain!"));
    }
}
