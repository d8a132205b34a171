//! Secrets and configs on a board: the bytes the manager sends for the board's tasks,
//! held in memory only ([`Held`]), and written for a container into a tmpfs of its own
//! ([`materialize`]), which the container sees read-only at `/run/secrets/<name>` (secrets)
//! and at each config's target path.
//!
//! Nothing here touches the data dir: the task file keeps references (names, targets,
//! versions), never bytes. The tmpfs is mounted at `/run/shoal/secrets-<tag>/<container>`
//! (`tag` as the runtime's state dir, so agents sharing a host in tests never meet),
//! mode 0700, and unmounted when the container stops or is removed ([`release`]).
//! The manager sends the whole set each time it changes, and the board replaces what it
//! holds with it: an object no task of the board uses any more leaves its memory; after
//! an agent restart the new session brings the set again.

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use shoal_proto::secrets::{Kind, SecretRef, SecretSet, SECRETS_DIR};
use shoal_proto::services::TaskSpec;

/// A file the container sees: `source` (in the container's tmpfs) bound read-only at
/// `destination`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileMount {
    /// On the host, in the tmpfs.
    pub source: PathBuf,
    /// In the container.
    pub destination: String,
}

/// Why a container's secrets could not be written.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The manager has not sent the bytes (it sends them before the task: a race with
    /// a rotation or removal).
    #[error("{kind} {name} has not been received from the manager: the task is retried elsewhere")]
    Missing {
        /// Secret or config.
        kind: Kind,
        /// Its name.
        name: String,
    },
    /// Making, mounting or writing the tmpfs failed.
    #[error("cannot write the container's secrets under {path}: {source}")]
    Io {
        /// Where.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// The objects the board's tasks use, in memory only. Chunks of a set are staged until
/// the last one arrives, then replace the held set whole.
#[derive(Default)]
pub struct Held {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    current: HashMap<(Kind, String), Vec<u8>>,
    staging: Option<HashMap<(Kind, String), Vec<u8>>>,
}

impl std::fmt::Debug for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        let n = self.inner.lock().map(|i| i.current.len()).unwrap_or(0);
        write!(f, "Held({n} objects)")
    }
}

impl Held {
    /// Takes one chunk of a set; the last chunk (`more` false) makes it current.
    pub fn apply(&self, set: SecretSet) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut staging = inner.staging.take().unwrap_or_default();
        for p in set.items.into_vec() {
            staging.insert((p.kind, p.name.to_string()), p.data.into_vec());
        }
        if set.more {
            inner.staging = Some(staging);
        } else {
            inner.current = staging;
        }
    }

    /// A new session starts a new set: drop a half-received one.
    pub fn new_session(&self) {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).staging = None;
    }

    /// How many objects are held (tests, logs).
    pub fn len(&self) -> usize {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).current.len()
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether every object `spec` references is held.
    pub fn has_all(&self, spec: &TaskSpec) -> bool {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let held = |kind: Kind, r: &SecretRef| inner.current.contains_key(&(kind, r.source.to_string()));
        spec.secrets.iter().all(|r| held(Kind::Secret, r)) && spec.configs.iter().all(|r| held(Kind::Config, r))
    }

    fn get(&self, kind: Kind, name: &str) -> Option<Vec<u8>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).current.get(&(kind, name.to_owned())).cloned()
    }
}

/// Where containers' tmpfs are mounted for an agent with this data dir.
pub fn root_for(data_dir: &Path) -> PathBuf {
    let digest = ring::digest::digest(&ring::digest::SHA256, data_dir.to_string_lossy().as_bytes());
    PathBuf::from("/run/shoal").join(format!("secrets-{}", shoal_proto::hex(&digest.as_ref()[..6])))
}

/// Whether the task needs a tmpfs at all.
pub fn needed(spec: &TaskSpec) -> bool {
    !spec.secrets.is_empty() || !spec.configs.is_empty()
}

/// Mounts a tmpfs for container `cid` under `root`, writes each secret and config of
/// `spec` there with its owner and mode, and returns the bind mounts the container
/// needs. Undoes itself on failure.
pub fn materialize(root: &Path, cid: &str, spec: &TaskSpec, held: &Held) -> Result<Vec<FileMount>, SecretError> {
    // Every byte first: a missing one fails before anything is mounted.
    let mut files: Vec<(Kind, &SecretRef, Vec<u8>)> = Vec::new();
    for (kind, refs) in [(Kind::Secret, &spec.secrets), (Kind::Config, &spec.configs)] {
        for r in refs.iter() {
            let data =
                held.get(kind, &r.source).ok_or_else(|| SecretError::Missing { kind, name: r.source.to_string() })?;
            files.push((kind, r, data));
        }
    }
    let dir = root.join(cid);
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| SecretError::Io { path, source }
    };
    release(root, cid);
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o700)).map_err(io(root))?;
    // Its own tmpfs, whatever `/run` is on the board: the bytes never reach a disk. The
    // size bound keeps a container from filling the board's memory through it.
    let total: usize = files.iter().map(|(_, _, d)| d.len() + 4096).sum();
    let options = std::ffi::CString::new(format!("mode=0755,size={}", total.max(4096) + 64 * 1024))
        .expect("no NUL in the options");
    rustix::mount::mount(
        "tmpfs",
        &dir,
        "tmpfs",
        rustix::mount::MountFlags::NOSUID | rustix::mount::MountFlags::NODEV | rustix::mount::MountFlags::NOEXEC,
        options.as_c_str(),
    )
    .map_err(|e| io(&dir)(e.into()))?;
    let written = (|| {
        let mut mounts = Vec::new();
        let secrets = dir.join("secrets");
        let configs = dir.join("configs");
        std::fs::create_dir(&secrets).map_err(io(&secrets))?;
        std::fs::create_dir(&configs).map_err(io(&configs))?;
        for (i, (kind, r, data)) in files.iter().enumerate() {
            let path = match kind {
                Kind::Secret => secrets.join(r.file_name()),
                Kind::Config => configs.join(i.to_string()),
            };
            let mut f =
                std::fs::OpenOptions::new().write(true).create_new(true).mode(r.mode).open(&path).map_err(io(&path))?;
            f.write_all(data).map_err(io(&path))?;
            // `mode` at open is cut by the umask; the asked bits exactly.
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(r.mode)).map_err(io(&path))?;
            std::os::unix::fs::chown(&path, Some(r.uid), Some(r.gid)).map_err(io(&path))?;
            if *kind == Kind::Config {
                mounts.push(FileMount { source: path, destination: r.target.to_string() });
            }
        }
        if !spec.secrets.is_empty() {
            mounts.insert(0, FileMount { source: secrets, destination: SECRETS_DIR.to_owned() });
        }
        Ok(mounts)
    })();
    if written.is_err() {
        release(root, cid);
    }
    written
}

/// Unmounts and removes container `cid`'s tmpfs, if it has one: its bytes are gone.
pub fn release(root: &Path, cid: &str) {
    let dir = root.join(cid);
    if !dir.exists() {
        return;
    }
    // Lazily: a container still starting may hold it; the memory goes with the last user.
    let _ = rustix::mount::unmount(&dir, rustix::mount::UnmountFlags::DETACH);
    let _ = std::fs::remove_dir_all(&dir);
    // The agent's directory too once no container has secrets (fails while one does).
    let _ = std::fs::remove_dir(root);
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_proto::secrets::Payload;

    fn payload(kind: Kind, name: &str, data: &[u8]) -> Payload {
        Payload { kind, name: shoal_proto::text(name).unwrap(), version: 1, data: data.try_into().unwrap() }
    }

    #[test]
    fn a_set_replaces_what_is_held_once_complete() {
        let held = Held::default();
        let chunk = |more, items: Vec<Payload>| SecretSet { more, items: items.try_into().unwrap() };
        held.apply(chunk(false, vec![payload(Kind::Secret, "a", b"1"), payload(Kind::Config, "a", b"2")]));
        assert_eq!(held.len(), 2);
        held.apply(chunk(true, vec![payload(Kind::Secret, "b", b"3")]));
        assert_eq!(held.get(Kind::Secret, "a").as_deref(), Some(&b"1"[..]), "still the old set");
        held.apply(chunk(false, vec![]));
        assert_eq!((held.len(), held.get(Kind::Secret, "b").as_deref()), (1, Some(&b"3"[..])));
        held.apply(chunk(false, vec![]));
        assert!(held.is_empty(), "an empty set drops everything");
        held.apply(chunk(true, vec![payload(Kind::Secret, "c", b"4")]));
        held.new_session();
        held.apply(chunk(false, vec![]));
        assert!(held.is_empty(), "a half set of a lost session is dropped");
        assert!(!format!("{held:?}").contains('4'));
    }

    #[test]
    #[ignore = "needs root"]
    fn a_containers_objects_live_in_a_tmpfs_of_its_own_until_released() {
        assert!(rustix::process::geteuid().is_root(), "this test needs root (it mounts a tmpfs)");
        let root = std::env::temp_dir().join(format!("shoal-secrets-root-{}", std::process::id()));
        let held = Held::default();
        let set = SecretSet {
            more: false,
            items: vec![payload(Kind::Secret, "pw", b"hunter2"), payload(Kind::Config, "conf", b"x = 1\n")]
                .try_into()
                .unwrap(),
        };
        held.apply(set);
        let mut spec = shoal_proto::ServiceSpec::new(
            shoal_proto::text("web").unwrap(),
            shoal_proto::ImageRef::try_from("x:1").unwrap(),
        );
        spec.secrets
            .push(SecretRef::parse(Kind::Secret, "source=pw,target=db,uid=70,gid=71,mode=0400").unwrap())
            .unwrap();
        spec.configs.push(SecretRef::parse(Kind::Config, "source=conf,target=/etc/app.conf").unwrap()).unwrap();
        let mounts = materialize(&root, "web.1.x", &spec.task_spec(), &held).unwrap();
        let dir = root.join("web.1.x");
        assert_eq!(mounts[0], FileMount { source: dir.join("secrets"), destination: "/run/secrets".into() });
        assert_eq!(mounts[1].destination, "/etc/app.conf");
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let line = info.lines().find(|l| l.split_whitespace().nth(4) == Some(dir.to_str().unwrap())).expect("mounted");
        assert!(line.contains(" - tmpfs "), "{line}");
        let db = dir.join("secrets/db");
        assert_eq!(std::fs::read(&db).unwrap(), b"hunter2");
        let meta = std::fs::metadata(&db).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_eq!((meta.mode() & 0o777, meta.uid(), meta.gid()), (0o400, 70, 71));
        assert_eq!(std::fs::read(&mounts[1].source).unwrap(), b"x = 1\n");
        release(&root, "web.1.x");
        assert!(!dir.exists() && !root.exists(), "released: the tmpfs and its directory are gone");
        assert!(!std::fs::read_to_string("/proc/self/mountinfo").unwrap().contains(dir.to_str().unwrap()));
    }

    #[test]
    fn a_missing_object_fails_before_anything_is_made() {
        let root = std::env::temp_dir().join(format!("shoal-secrets-{}", std::process::id()));
        let mut spec = shoal_proto::ServiceSpec::new(
            shoal_proto::text("web").unwrap(),
            shoal_proto::ImageRef::try_from("x:1").unwrap(),
        );
        spec.secrets.push(SecretRef::parse(Kind::Secret, "pw").unwrap()).unwrap();
        let e = materialize(&root, "web.1.x", &spec.task_spec(), &Held::default()).unwrap_err();
        assert!(matches!(e, SecretError::Missing { kind: Kind::Secret, .. }), "{e}");
        assert!(!root.join("web.1.x").exists());
    }
}
