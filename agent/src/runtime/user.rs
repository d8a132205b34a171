//! The container's user, as Docker resolves the image's `User` (or `--user`): `""`,
//! `name`, `uid`, `name:group`, `uid:gid`, names looked up in the image's `/etc/passwd`
//! and `/etc/group`. Docker's rules (moby `getUser` over runc's `GetExecUser`):
//!
//! - a numeric user is always a UID: its passwd entry, if any, gives the primary group;
//!   without one the group is 0;
//! - `""` is UID 0, resolved like a user named by its passwd entry (`root`);
//! - supplementary groups are the groups whose member list names the user, and only
//!   when the user was found in passwd and no group was given (`name:group` has none);
//! - the process's groups are the primary group followed by those (moby adds the
//!   primary one since CVE-2022-36109), so `Groups:` in `/proc/PID/status` is never
//!   empty, duplicates kept as the kernel keeps them.
//!
//! The two files come from the image's layers, which are hostile: read only when they
//! are regular files (a symlink could point anywhere on the board, outside the rootfs),
//! at most [`MAX_FILE`] bytes, whiteouts and opaque directories honoured as the overlay
//! would. Lines that don't parse are skipped. Not here: `--group-add` (shoal has none).

use std::io::Read;
use std::path::{Path, PathBuf};

use super::RuntimeError;

/// Largest `/etc/passwd` or `/etc/group` read (Debian's are about 1 KiB).
pub const MAX_FILE: u64 = 1 << 20;

/// Largest UID or GID Docker accepts (runc's `maxID`).
const MAX_ID: u32 = (1 << 31) - 1;

/// Who the container's process runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecUser {
    /// User ID.
    pub uid: u32,
    /// Primary group ID.
    pub gid: u32,
    /// Supplementary groups, the primary one first (the spec's `additionalGids`).
    pub groups: Vec<u32>,
}

/// A passwd entry's fields that matter here.
struct Passwd<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
}

/// A group entry's fields that matter here.
struct Group<'a> {
    name: &'a str,
    gid: u32,
    members: Vec<&'a str>,
}

fn passwd_entries(text: &str) -> impl Iterator<Item = Passwd<'_>> {
    text.lines().filter_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        Some(Passwd { name: f.first()?, uid: f.get(2)?.parse().ok()?, gid: f.get(3)?.parse().ok()? })
    })
}

fn group_entries(text: &str) -> impl Iterator<Item = Group<'_>> {
    text.lines().filter_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        let members = f.get(3).map_or(Vec::new(), |m| m.split(',').map(str::trim).filter(|m| !m.is_empty()).collect());
        Some(Group { name: f.first()?, gid: f.get(2)?.parse().ok()?, members })
    })
}

fn numeric(s: &str, what: &str) -> Result<Option<u32>, RuntimeError> {
    match s.parse::<u64>() {
        Ok(n) if n <= u64::from(MAX_ID) => Ok(Some(n as u32)),
        Ok(_) => Err(RuntimeError::Spec(format!("{what} {s} is out of range: use 0 to {MAX_ID}"))),
        Err(_) => Ok(None),
    }
}

/// Resolves `spec` (the image's `User`) against the image's `passwd` and `group` texts
/// (`None`: the file is absent). Pure: the files are read by [`resolve_in_layers`].
pub fn resolve(spec: &str, passwd: Option<&str>, group: Option<&str>) -> Result<ExecUser, RuntimeError> {
    let mut parts = spec.splitn(3, ':');
    let user_arg = parts.next().unwrap_or("");
    let group_arg = parts.next().unwrap_or("");
    let uid_arg = numeric(user_arg, "user")?;
    let found = passwd.and_then(|text| {
        passwd_entries(text)
            .find(|p| match (user_arg, uid_arg) {
                ("", _) => p.uid == 0,
                (_, Some(uid)) => p.uid == uid,
                (name, None) => p.name == name,
            })
            .map(|p| (p.name.to_owned(), p.uid, p.gid))
    });
    let (matched, uid, mut gid) = match (found, uid_arg) {
        (Some((name, uid, gid)), _) => (Some(name), uid, gid),
        (None, Some(uid)) => (None, uid, 0),
        (None, None) if user_arg.is_empty() => (None, 0, 0),
        (None, None) => {
            return Err(RuntimeError::Spec(format!(
                "user {user_arg:?} is not in the image's /etc/passwd: use a user the image has, or a numeric uid"
            )))
        }
    };
    let mut extra = Vec::new();
    if !group_arg.is_empty() {
        let gid_arg = numeric(group_arg, "group")?;
        let named = group.and_then(|text| {
            group_entries(text)
                .find(|g| match gid_arg {
                    Some(n) => g.gid == n,
                    None => g.name == group_arg,
                })
                .map(|g| g.gid)
        });
        gid = match (named, gid_arg) {
            (Some(g), _) | (None, Some(g)) => g,
            (None, None) => {
                return Err(RuntimeError::Spec(format!(
                    "group {group_arg:?} is not in the image's /etc/group: use a group the image has, or a numeric gid"
                )))
            }
        };
    } else if let (Some(name), Some(text)) = (&matched, group) {
        extra = group_entries(text).filter(|g| g.members.contains(&name.as_str())).map(|g| g.gid).collect();
    }
    let mut groups = vec![gid];
    groups.extend(extra);
    Ok(ExecUser { uid, gid, groups })
}

/// Resolves `spec` against the files of `layers` (topmost first), as the container will
/// see them through the overlay.
pub fn resolve_in_layers(spec: &str, layers: &[PathBuf]) -> Result<ExecUser, RuntimeError> {
    let passwd = read_image_file(layers, &["etc", "passwd"])?;
    let group = read_image_file(layers, &["etc", "group"])?;
    let text = |b: &Option<Vec<u8>>| b.as_ref().map(|b| String::from_utf8_lossy(b).into_owned());
    resolve(spec, text(&passwd).as_deref(), text(&group).as_deref())
}

/// The content of `path` (relative components) as the overlay of `layers` shows it:
/// the topmost layer that has the entry wins; a whiteout hides what is below, as does
/// an opaque directory. `None` when absent or not a regular file; an error when too
/// large. Symlinks are never followed, not even inside the image: they could lead out
/// of it onto the board.
pub fn read_image_file(layers: &[PathBuf], path: &[&str]) -> Result<Option<Vec<u8>>, RuntimeError> {
    let shown = path.join("/");
    for layer in layers {
        match lookup(layer, path) {
            Lookup::Absent => continue,
            Lookup::Hidden | Lookup::NotAFile => return Ok(None),
            Lookup::File(p) => {
                let file = std::fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
                    .open(&p)
                    .map_err(RuntimeError::io(format!("reading the image's /{shown}")))?;
                let mut bytes = Vec::new();
                file.take(MAX_FILE + 1)
                    .read_to_end(&mut bytes)
                    .map_err(RuntimeError::io(format!("reading the image's /{shown}")))?;
                if bytes.len() as u64 > MAX_FILE {
                    return Err(RuntimeError::Spec(format!(
                        "the image's /{shown} is larger than {} KiB: shoal refuses to read it",
                        MAX_FILE >> 10
                    )));
                }
                return Ok(Some(bytes));
            }
        }
    }
    Ok(None)
}

use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};

enum Lookup {
    /// Not in this layer: look below.
    Absent,
    /// Whited out, or below an opaque directory or a non-directory of this layer.
    Hidden,
    /// Present here but a symlink, device or directory.
    NotAFile,
    /// A regular file.
    File(PathBuf),
}

fn lookup(layer: &Path, path: &[&str]) -> Lookup {
    let mut at = layer.to_path_buf();
    for (i, part) in path.iter().enumerate() {
        at.push(part);
        let Ok(meta) = std::fs::symlink_metadata(&at) else { return Lookup::Absent };
        let ft = meta.file_type();
        if ft.is_char_device() {
            // The unpacker's whiteout (0:0); a real device can't come from an image.
            return Lookup::Hidden;
        }
        let last = i + 1 == path.len();
        if last {
            return if ft.is_file() { Lookup::File(at) } else { Lookup::NotAFile };
        }
        if !ft.is_dir() {
            return Lookup::NotAFile;
        }
        let mut opaque = [0u8; 1];
        if rustix::fs::getxattr(&at, "trusted.overlay.opaque", &mut opaque).is_ok_and(|n| n == 1 && opaque[0] == b'y') {
            // Lower layers' entries under it are hidden: only this layer counts.
            return match lookup(&at, &path[i + 1..]) {
                Lookup::File(p) => Lookup::File(p),
                Lookup::NotAFile => Lookup::NotAFile,
                Lookup::Absent | Lookup::Hidden => Lookup::Hidden,
            };
        }
    }
    Lookup::Absent
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
        daemon:x:1:1::/:/bin/false\n\
        postgres:x:100:102:PostgreSQL:/var/lib/postgresql:/bin/sh\n\
        broken:x:abc:1::/:/bin/false\n\
        nobody:x:65534:65534::/nonexistent:/bin/false\n";
    const GROUP: &str = "root:x:0:\n\
        daemon:x:1:\n\
        ssl-cert:x:101:postgres\n\
        postgres:x:102:\n\
        staff:x:50:daemon,postgres\n\
        nogroup:x:65534:\n";

    fn user(spec: &str) -> Result<ExecUser, RuntimeError> {
        resolve(spec, Some(PASSWD), Some(GROUP))
    }

    fn ids(spec: &str) -> (u32, u32, Vec<u32>) {
        let u = user(spec).unwrap();
        (u.uid, u.gid, u.groups)
    }

    #[test]
    fn a_named_user_gets_its_primary_group_then_its_memberships() {
        assert_eq!(ids("postgres"), (100, 102, vec![102, 101, 50]));
        assert_eq!(ids("nobody"), (65534, 65534, vec![65534]));
    }

    #[test]
    fn root_and_the_empty_user_are_uid_0_with_group_0() {
        assert_eq!(ids(""), (0, 0, vec![0]));
        assert_eq!(ids("root"), (0, 0, vec![0]));
        assert_eq!(resolve("", None, None).unwrap(), ExecUser { uid: 0, gid: 0, groups: vec![0] });
    }

    #[test]
    fn a_numeric_user_is_a_uid_and_borrows_its_entry_when_there_is_one() {
        // As Docker: uid 100 is postgres, memberships included.
        assert_eq!(ids("100"), (100, 102, vec![102, 101, 50]));
        // No entry: group 0, no memberships (it is not `uid:uid`).
        assert_eq!(ids("1000"), (1000, 0, vec![0]));
        assert_eq!(resolve("1000", None, None).unwrap().groups, [0]);
    }

    #[test]
    fn an_explicit_group_replaces_the_primary_one_and_drops_memberships() {
        assert_eq!(ids("postgres:staff"), (100, 50, vec![50]));
        assert_eq!(ids("postgres:7"), (100, 7, vec![7]));
        assert_eq!(ids("100:101"), (100, 101, vec![101]));
        assert_eq!(ids("1000:1000"), (1000, 1000, vec![1000]));
        assert_eq!(ids("1000:staff"), (1000, 50, vec![50]));
        // An empty group part is no group (`name:`).
        assert_eq!(ids("postgres:"), (100, 102, vec![102, 101, 50]));
    }

    #[test]
    fn unknown_names_and_out_of_range_ids_are_refused_clearly() {
        let e = user("www-data").unwrap_err().to_string();
        assert!(e.contains("\"www-data\" is not in the image's /etc/passwd"), "{e}");
        let e = user("postgres:wheel").unwrap_err().to_string();
        assert!(e.contains("\"wheel\" is not in the image's /etc/group"), "{e}");
        assert!(resolve("postgres", None, None).is_err(), "no passwd file: a name can't be found");
        let e = user("4294967296").unwrap_err().to_string();
        assert!(e.contains("out of range"), "{e}");
        assert!(user("0:2147483648").is_err());
        // A line that doesn't parse is skipped, not read as uid 0.
        assert!(user("broken").is_err());
    }

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("shoal-user-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn the_files_are_read_through_the_layers_as_the_overlay_shows_them() {
        let dir = scratch("layers");
        let (top, bottom) = (dir.join("top"), dir.join("bottom"));
        std::fs::create_dir_all(bottom.join("etc")).unwrap();
        std::fs::create_dir_all(top.join("etc")).unwrap();
        std::fs::write(bottom.join("etc/passwd"), PASSWD).unwrap();
        std::fs::write(bottom.join("etc/group"), GROUP).unwrap();
        std::fs::write(top.join("etc/group"), "postgres:x:102:\nssl-cert:x:101:\n").unwrap();
        let layers = vec![top.clone(), bottom.clone()];
        // passwd from below, group from the top layer (no memberships there).
        assert_eq!(resolve_in_layers("postgres", &layers).unwrap().groups, [102]);
        // A symlink, even into the image, is not followed: it could lead onto the board.
        std::fs::remove_file(top.join("etc/group")).unwrap();
        std::os::unix::fs::symlink("/etc/group", top.join("etc/group")).unwrap();
        assert_eq!(read_image_file(&layers, &["etc", "group"]).unwrap(), None);
        std::fs::remove_file(top.join("etc/group")).unwrap();
        // A symlinked directory on the way is not followed either.
        let evil = dir.join("evil");
        std::fs::create_dir_all(evil.join("etc")).unwrap();
        std::os::unix::fs::symlink(bottom.join("etc"), evil.join("etc2")).unwrap();
        assert_eq!(read_image_file(std::slice::from_ref(&evil), &["etc2", "passwd"]).unwrap(), None);
        // Too large: refused with a reason rather than read whole.
        let big = dir.join("big");
        std::fs::create_dir_all(big.join("etc")).unwrap();
        std::fs::write(big.join("etc/passwd"), vec![b'#'; MAX_FILE as usize + 1]).unwrap();
        let e = resolve_in_layers("root", &[big]).unwrap_err().to_string();
        assert!(e.contains("larger than 1024 KiB"), "{e}");
        assert_eq!(resolve_in_layers("postgres", &layers).unwrap().groups, [102, 101, 50]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    #[ignore = "needs root"]
    fn a_whiteout_hides_the_file_below() {
        assert!(rustix::process::geteuid().is_root(), "run as root: a whiteout is a 0:0 character device");
        let dir = scratch("whiteout");
        let (top, bottom) = (dir.join("top"), dir.join("bottom"));
        std::fs::create_dir_all(bottom.join("etc")).unwrap();
        std::fs::create_dir_all(top.join("etc")).unwrap();
        std::fs::write(bottom.join("etc/group"), GROUP).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            top.join("etc/group"),
            rustix::fs::FileType::CharacterDevice,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        assert_eq!(read_image_file(&[top.clone(), bottom.clone()], &["etc", "group"]).unwrap(), None);
        std::fs::remove_file(top.join("etc/group")).unwrap();
        // An opaque etc in the top layer hides the lower layer's files.
        rustix::fs::setxattr(top.join("etc"), "trusted.overlay.opaque", b"y", rustix::fs::XattrFlags::empty()).unwrap();
        assert_eq!(read_image_file(&[top.clone(), bottom.clone()], &["etc", "group"]).unwrap(), None);
        assert!(read_image_file(&[bottom], &["etc", "group"]).unwrap().is_some());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
