//! Named volumes on this board, Docker's local driver on a small scale: each volume is a
//! directory `<data-dir>/agent/volumes/<name>/_data`, made on first use by a task and kept
//! across the task's restarts and updates until `shoal volume rm` removes it. With
//! `volume-opt`s (`type`, `device`, `o`), the `device` is mounted on `_data` on first use,
//! as the local driver does.
//!
//! What is in a volume was written by containers, so it is hostile: sizes are counted
//! without following symlinks, and a removal never follows them either. The names come
//! from the wire and are checked before they name a directory. Which containers use a
//! volume is read from the bundles on disk (their mounts), so it holds across agent
//! restarts with no bookkeeping of its own.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use shoal_proto::options::{check_volume_name, Mount};
use shoal_proto::volumes::{VolumeInfo, MAX_USERS, MAX_VOLUMES};
use shoal_proto::{BoundedString, BoundedVec};

/// Serialises making and removing volumes, so a removal cannot slip between a task's
/// making its volume and its container's mounting it.
static LOCK: Mutex<()> = Mutex::new(());

/// Most directory entries counted for a volume's size: a volume holding millions of
/// files is reported at the size counted so far rather than stalling the agent.
const MAX_WALK: usize = 200_000;

/// Why a volume can't be made, listed or removed.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// A name that is not a volume's.
    #[error("{0}")]
    BadName(String),
    /// No such volume on this board.
    #[error("no such volume on this board: {0}")]
    NotFound(String),
    /// Containers on the board use it.
    #[error("volume {name} is in use by {users}: remove the service (or its tasks) first")]
    InUse {
        /// The volume.
        name: String,
        /// The containers, comma-separated.
        users: String,
    },
    /// A volume made with different options than the mount now asks for.
    #[error("volume {name} exists with other volume-opt ({have}): remove it first, or use the same options")]
    Options {
        /// The volume.
        name: String,
        /// The options it has.
        have: String,
    },
    /// File or mount trouble.
    #[error("volume {name}: {context}: {source}")]
    Io {
        /// The volume.
        name: String,
        /// What was being done.
        context: &'static str,
        /// The error.
        source: std::io::Error,
    },
}

/// What is kept beside a volume's data.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Meta {
    created_at_ms: u64,
    options: Vec<String>,
}

/// The volumes directory of an agent with this data directory.
pub fn dir(data_dir: &Path) -> PathBuf {
    crate::identity::agent_dir(data_dir).join("volumes")
}

fn io<'a>(name: &'a str, context: &'static str) -> impl FnOnce(std::io::Error) -> VolumeError + 'a {
    move |source| VolumeError::Io { name: name.to_owned(), context, source }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Makes the volume `mount` names if it is not there yet (mounting its device when it
/// has `volume-opt`s), and returns the directory to bind into the container and whether
/// it was made just now.
pub fn ensure(volumes: &Path, mount: &Mount) -> Result<(PathBuf, bool), VolumeError> {
    let name = mount.source.as_deref().unwrap_or("");
    check_volume_name(name).map_err(VolumeError::BadName)?;
    let _guard = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let root = volumes.join(name);
    let data = root.join("_data");
    let options: Vec<String> = mount.volume_opts.iter().map(|o| o.to_string()).collect();
    let meta_path = root.join("meta.json");
    let fresh = !data.is_dir();
    if !fresh {
        let meta = read_meta(&meta_path);
        if meta.options != options {
            return Err(VolumeError::Options { name: name.to_owned(), have: meta.options.join(",") });
        }
    } else {
        std::fs::create_dir_all(&data).map_err(io(name, "making its directory"))?;
        let meta = Meta { created_at_ms: now_ms(), options: options.clone() };
        let text = serde_json::to_vec(&meta).expect("volume metadata serialises");
        shoal_link::files::write_private(&meta_path, &text).map_err(io(name, "writing its metadata"))?;
    }
    if !options.is_empty() && !is_mount_point(&data) {
        mount_device(name, &data, &options)?;
    }
    Ok((data, fresh))
}

/// Most entries copied from an image into a new volume.
const MAX_COPY: usize = 100_000;

/// Fills an empty volume from the image, as Docker does: what the image has at the
/// mount's target (its owner and mode too, so a database's data directory owned by its
/// user stays writable by it). The image is hostile: when the target or anything on the
/// way to it is a symlink nothing is copied, and symlinks inside are copied as links,
/// never followed. Special files are skipped.
pub fn copy_up(rootfs: &Path, target: &str, data: &Path) -> std::io::Result<()> {
    let mut src = rootfs.to_path_buf();
    for part in target.split('/').filter(|p| !p.is_empty() && *p != ".") {
        if part == ".." {
            return Ok(());
        }
        src.push(part);
        match std::fs::symlink_metadata(&src) {
            Ok(m) if m.is_dir() => {}
            _ => return Ok(()),
        }
    }
    if std::fs::read_dir(data)?.next().is_some() {
        return Ok(());
    }
    let mut budget = MAX_COPY;
    copy_tree(&src, data, &mut budget)
}

fn copy_meta(m: &std::fs::Metadata, to: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    std::os::unix::fs::lchown(to, Some(m.uid()), Some(m.gid()))?;
    if !m.file_type().is_symlink() {
        std::fs::set_permissions(to, std::fs::Permissions::from_mode(m.mode() & 0o7777))?;
    }
    Ok(())
}

fn copy_tree(from: &Path, to: &Path, budget: &mut usize) -> std::io::Result<()> {
    let top = std::fs::symlink_metadata(from)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        if *budget == 0 {
            break;
        }
        *budget -= 1;
        let (src, dst) = (e.path(), to.join(e.file_name()));
        let m = std::fs::symlink_metadata(&src)?;
        let ft = m.file_type();
        if ft.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&src)?, &dst)?;
        } else if ft.is_dir() {
            std::fs::create_dir(&dst)?;
            copy_tree(&src, &dst, budget)?;
        } else if ft.is_file() {
            std::fs::copy(&src, &dst)?;
        } else {
            continue;
        }
        copy_meta(&m, &dst)?;
    }
    copy_meta(&top, to)
}

fn read_meta(path: &Path) -> Meta {
    // Small and written by the agent; still bounded, as anything read back from disk.
    std::fs::read(path)
        .ok()
        .filter(|b| b.len() < 64 * 1024)
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

fn is_mount_point(dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::symlink_metadata(dir), dir.parent().map(std::fs::symlink_metadata)) {
        (Ok(d), Some(Ok(p))) => d.dev() != p.dev(),
        _ => false,
    }
}

/// The local driver's `type`/`device`/`o`: `mount -t TYPE -o O DEVICE _data`.
fn mount_device(name: &str, data: &Path, options: &[String]) -> Result<(), VolumeError> {
    let get = |k: &str| options.iter().find_map(|o| o.strip_prefix(k).and_then(|v| v.strip_prefix('=')));
    let fstype = get("type").unwrap_or("none");
    let device = get("device").unwrap_or(fstype);
    let data_opts = get("o").unwrap_or("");
    let cstr = |s: &str| {
        std::ffi::CString::new(s).map_err(|_| VolumeError::BadName(format!("volume {name}: an option has a NUL byte")))
    };
    let flags = if fstype == "none" { rustix::mount::MountFlags::BIND } else { rustix::mount::MountFlags::empty() };
    rustix::mount::mount(
        cstr(device)?.as_c_str(),
        data,
        cstr(fstype)?.as_c_str(),
        flags,
        Some(cstr(data_opts)?.as_c_str()),
    )
    .map_err(|e| io(name, "mounting its device (volume-opt)")(e.into()))
}

/// Every volume of the board, with its size and users (containers under `containers`).
pub fn list(volumes: &Path, containers: &Path) -> Result<Vec<VolumeInfo>, VolumeError> {
    let entries = match std::fs::read_dir(volumes) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io("*", "listing volumes")(e)),
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| check_volume_name(n).is_ok())
        .collect();
    names.sort();
    names.truncate(MAX_VOLUMES);
    let users = users(containers);
    Ok(names.iter().map(|n| info(volumes, n, &users)).collect())
}

fn info(volumes: &Path, name: &str, users: &[(String, PathBuf)]) -> VolumeInfo {
    let data = volumes.join(name).join("_data");
    let meta = read_meta(&volumes.join(name).join("meta.json"));
    let used_by: Vec<_> =
        users.iter().filter(|(_, p)| *p == data).map(|(c, _)| shoal_proto::text_lossy(c)).take(MAX_USERS).collect();
    VolumeInfo {
        name: shoal_proto::text_lossy(name),
        size_bytes: size(&data),
        used_by: used_by.try_into().unwrap_or_default(),
        created_at_ms: meta.created_at_ms,
        options: meta
            .options
            .iter()
            .map(|o| shoal_proto::text_lossy(o))
            .take(shoal_proto::options::MAX_VOLUME_OPTS)
            .collect::<Vec<_>>()
            .try_into()
            .unwrap_or_default(),
        mountpoint: BoundedString::lossy(&data.display().to_string()),
    }
}

/// Bytes the files under `dir` take on disk, symlinks not followed, other file systems
/// (mounts inside the volume) not entered.
pub fn size(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(top) = std::fs::symlink_metadata(dir) else { return 0 };
    let (mut total, mut seen, mut stack) = (0u64, 0usize, vec![dir.to_path_buf()]);
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            seen += 1;
            if seen > MAX_WALK {
                return total;
            }
            let Ok(m) = e.path().symlink_metadata() else { continue };
            total = total.saturating_add(m.blocks().saturating_mul(512));
            if m.is_dir() && m.dev() == top.dev() {
                stack.push(e.path());
            }
        }
    }
    total
}

/// The containers of the board and the volume directories their specs mount.
fn users(containers: &Path) -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(containers) else { return out };
    for e in entries.flatten() {
        let Ok(id) = e.file_name().into_string() else { continue };
        // Not a container: a deleted one's directory on its way out (`.removed-…`).
        if crate::runtime::validate_id(&id).is_err() {
            continue;
        }
        // The bundle's spec was written by this agent; still read with a bound.
        let Some(spec) = std::fs::read(e.path().join("config.json"))
            .ok()
            .filter(|b| b.len() < 4 << 20)
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        else {
            continue;
        };
        for m in spec["mounts"].as_array().into_iter().flatten() {
            if let Some(src) = m["source"].as_str() {
                out.push((id.clone(), PathBuf::from(src)));
            }
        }
    }
    out
}

/// Removes a volume no container on the board uses (unmounting its device first).
pub fn remove(volumes: &Path, containers: &Path, name: &str) -> Result<(), VolumeError> {
    check_volume_name(name).map_err(VolumeError::BadName)?;
    let _guard = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let root = volumes.join(name);
    if !root.is_dir() {
        return Err(VolumeError::NotFound(name.to_owned()));
    }
    let data = root.join("_data");
    let using: Vec<String> = users(containers).into_iter().filter(|(_, p)| *p == data).map(|(c, _)| c).collect();
    if !using.is_empty() {
        return Err(VolumeError::InUse { name: name.to_owned(), users: using.join(", ") });
    }
    if is_mount_point(&data) {
        rustix::mount::unmount(&data, rustix::mount::UnmountFlags::DETACH)
            .map_err(|e| io(name, "unmounting its device")(e.into()))?;
    }
    // std's remove_dir_all does not follow symlinks, so a link a container left in its
    // volume can't make this delete anything outside it.
    std::fs::remove_dir_all(&root).map_err(io(name, "removing it"))
}

/// Serves the manager's [`shoal_proto::volumes::VolumeRequest`]: the volumes left.
pub fn handle(
    volumes: &Path,
    containers: &Path,
    request: &shoal_proto::volumes::VolumeRequest,
) -> Result<BoundedVec<VolumeInfo, MAX_VOLUMES>, VolumeError> {
    if let shoal_proto::volumes::VolumeRequest::Remove { name } = request {
        remove(volumes, containers, name)?;
    }
    Ok(list(volumes, containers)?.try_into().unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount(s: &str) -> Mount {
        Mount::parse(s).unwrap()
    }

    #[test]
    fn a_new_volume_gets_the_images_files_without_following_links() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("shoal-copyup-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (rootfs, data, outside) = (dir.join("rootfs"), dir.join("data"), dir.join("outside"));
        for d in [rootfs.join("var/lib/db/sub"), data.clone(), outside.clone()] {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::write(rootfs.join("var/lib/db/sub/conf"), "x=1").unwrap();
        std::fs::set_permissions(rootfs.join("var/lib/db"), std::fs::Permissions::from_mode(0o700)).unwrap();
        std::os::unix::fs::symlink("/etc", rootfs.join("var/lib/db/etc")).unwrap();
        copy_up(&rootfs, "/var/lib/db", &data).unwrap();
        assert_eq!(std::fs::read_to_string(data.join("sub/conf")).unwrap(), "x=1");
        assert_eq!(std::fs::metadata(&data).unwrap().permissions().mode() & 0o777, 0o700);
        assert!(std::fs::symlink_metadata(data.join("etc")).unwrap().file_type().is_symlink());
        // A target that is a link in the image: nothing is copied from where it points.
        std::fs::write(outside.join("secret"), "board").unwrap();
        std::os::unix::fs::symlink(&outside, rootfs.join("var/lib/link")).unwrap();
        let data2 = dir.join("data2");
        std::fs::create_dir_all(&data2).unwrap();
        copy_up(&rootfs, "/var/lib/link", &data2).unwrap();
        assert!(std::fs::read_dir(&data2).unwrap().next().is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn volumes_are_made_once_listed_with_users_and_removed_when_unused() {
        let dir = std::env::temp_dir().join(format!("shoal-volumes-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (volumes, containers) = (dir.join("volumes"), dir.join("containers"));
        let (data, fresh) = ensure(&volumes, &mount("type=volume,source=pgdata,target=/data")).unwrap();
        assert!(fresh);
        std::fs::write(data.join("rows"), vec![7u8; 10_000]).unwrap();
        // A container's symlink to the board: neither counted nor followed on removal.
        let outside = dir.join("outside");
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("keep"), vec![1u8; 100_000]).unwrap();
        std::os::unix::fs::symlink(&outside, data.join("escape")).unwrap();
        assert_eq!(ensure(&volumes, &mount("type=volume,source=pgdata,target=/x")).unwrap(), (data.clone(), false));
        assert!(data.join("rows").exists(), "a second use keeps the data");

        let bundle = containers.join("db.1.abc");
        std::fs::create_dir_all(&bundle).unwrap();
        let spec = serde_json::json!({"mounts": [{"destination": "/data", "type": "bind", "source": data}]});
        std::fs::write(bundle.join("config.json"), spec.to_string()).unwrap();
        let listed = list(&volumes, &containers).unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].name.as_str(), "pgdata");
        assert!(listed[0].size_bytes >= 10_000 && listed[0].size_bytes < 100_000, "{}", listed[0].size_bytes);
        assert_eq!(listed[0].used_by.iter().map(|u| u.as_str()).collect::<Vec<_>>(), ["db.1.abc"]);

        let e = remove(&volumes, &containers, "pgdata").unwrap_err().to_string();
        assert!(e.contains("in use by db.1.abc"), "{e}");
        assert!(data.join("rows").exists(), "a refused removal loses nothing");
        // A deleted container's directory on its way out (removed in the background)
        // is no user any more.
        std::fs::rename(&bundle, containers.join(".removed-db.1.abc-1")).unwrap();
        assert!(list(&volumes, &containers).unwrap()[0].used_by.is_empty());
        remove(&volumes, &containers, "pgdata").unwrap();
        assert!(!volumes.join("pgdata").exists());
        assert!(outside.join("keep").exists(), "nothing outside the volume is removed");
        assert!(remove(&volumes, &containers, "pgdata").unwrap_err().to_string().contains("no such volume"));
        assert!(remove(&volumes, &containers, "../outside").is_err());
        assert!(outside.exists());
        // Other options than the volume was made with are refused, not ignored.
        ensure(&volumes, &mount("type=volume,source=v1,target=/d")).unwrap();
        let e = ensure(&volumes, &mount("type=volume,source=v1,target=/d,volume-opt=type=tmpfs")).unwrap_err();
        assert!(e.to_string().contains("other volume-opt"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
