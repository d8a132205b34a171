//! Unpacking one image layer (tar, tar+gzip or tar+zstd) into a directory that becomes
//! one read-only overlayfs lowerdir, shared by every container of the image.
//!
//! Whiteouts are converted to overlayfs form as they are met: `.wh.NAME` becomes a
//! character device 0:0 named `NAME`, `.wh..wh..opq` the `trusted.overlay.opaque=y`
//! xattr on its directory. So nothing is ever copied or merged here: stacking is the
//! kernel's job.
//!
//! Layers come from the network and are hostile until proven otherwise: nothing is
//! written outside `dest`. Every entry is created relative to a directory descriptor
//! reached one component at a time with `O_NOFOLLOW`, so a symlink planted by the layer
//! (`a -> /etc`, then `a/passwd`) stops the unpack instead of being followed; absolute
//! paths, `..` components and hard links leaving the layer are refused.
//!
//! It does not verify the layer's digest (the fetcher did before calling), it only
//! returns the digest of the uncompressed tar (the config's `diff_id`) for the caller
//! to check.

use std::ffi::{OsStr, OsString};
use std::io::{self, BufRead, BufReader, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Gid, Mode, OFlags, Timespec, Timestamps, Uid, XattrFlags, CWD};
use rustix::io::Errno;
use tracing::debug;

use shoal_oci::digest::HashingReader;
use shoal_oci::spec::LayerMediaType;

/// A layer that could not be unpacked.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// The layer tries something a layer must not do.
    #[error("layer entry {path:?} refused: {reason}; the image is broken or malicious, nothing outside the layer was written")]
    Refused {
        /// The entry, as the tar names it.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The media type is not a layer shoal unpacks.
    #[error("layer media type {0:?} is not supported: shoal unpacks tar, tar+gzip and tar+zstd layers")]
    MediaType(String),
    /// The stream is not a readable (compressed) tar.
    #[error("the layer is not a readable tar archive ({0}): the image is broken, rebuild it")]
    Archive(io::Error),
    /// The local filesystem failed.
    #[error("cannot write layer entry {path:?}: {source} (is the disk full or read-only?)")]
    Io {
        /// The entry being written.
        path: String,
        /// What the filesystem said.
        source: io::Error,
    },
}

impl UnpackError {
    /// Whether the layer itself is at fault (as opposed to the local disk).
    pub fn is_bad_layer(&self) -> bool {
        matches!(self, Self::Refused { .. } | Self::MediaType(_) | Self::Archive(_))
    }
}

/// What an unpack produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unpacked {
    /// `sha256:` of the uncompressed tar: the config's `diff_id` for this layer.
    pub diff_id: String,
    /// Bytes of uncompressed tar.
    pub tar_bytes: u64,
}

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
const OPAQUE: &[u8] = b".wh..wh..opq";
const WHITEOUT_PREFIX: &[u8] = b".wh.";

/// The compression of a stream, by its first bytes; `None` means no known magic (a
/// plain tar). Magic wins over the media type: images in the wild mislabel layers.
pub fn detect(prefix: &[u8]) -> Option<LayerMediaType> {
    if prefix.starts_with(&GZIP_MAGIC) {
        Some(LayerMediaType::Gzip)
    } else if prefix.starts_with(&ZSTD_MAGIC) {
        Some(LayerMediaType::Zstd)
    } else {
        None
    }
}

/// Unpacks the layer read from `reader` into the existing, empty directory `dest`.
/// Blocking: call it from a blocking thread.
pub fn unpack_layer<R: Read>(reader: R, media_type: &str, dest: &Path) -> Result<Unpacked, UnpackError> {
    let declared = LayerMediaType::parse(media_type).ok_or_else(|| UnpackError::MediaType(media_type.to_owned()))?;
    let mut input = BufReader::with_capacity(64 * 1024, reader);
    let prefix = input.fill_buf().map_err(UnpackError::Archive)?;
    let kind = detect(prefix).unwrap_or(LayerMediaType::Tar);
    if kind != declared {
        debug!(?declared, detected = ?kind, "layer media type and content disagree; going by the content");
    }
    let decoded: Box<dyn Read> = match kind {
        LayerMediaType::Tar => Box::new(input),
        LayerMediaType::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(input)),
        LayerMediaType::Zstd => Box::new(ZstdFrames::new(input).map_err(UnpackError::Archive)?),
    };
    let mut hashing = HashingReader::new(decoded);
    {
        let mut archive = tar::Archive::new(&mut hashing);
        let mut writer = Writer::open(dest)?;
        for entry in archive.entries().map_err(UnpackError::Archive)? {
            let mut entry = entry.map_err(UnpackError::Archive)?;
            writer.entry(&mut entry)?;
        }
    }
    let (diff_id, tar_bytes) = hashing.finish().map_err(UnpackError::Archive)?;
    Ok(Unpacked { diff_id, tar_bytes })
}

/// A zstd stream of one or more frames (`zstd` and `pzstd` may write several); ruzstd's
/// streaming decoder reads one.
struct ZstdFrames<R: BufRead> {
    current: Option<ruzstd::decoding::StreamingDecoder<R, ruzstd::decoding::FrameDecoder>>,
}

impl<R: BufRead> ZstdFrames<R> {
    fn new(input: R) -> io::Result<Self> {
        let dec = ruzstd::decoding::StreamingDecoder::new(input).map_err(io::Error::other)?;
        Ok(Self { current: Some(dec) })
    }
}

impl<R: BufRead> Read for ZstdFrames<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let Some(dec) = self.current.as_mut() else { return Ok(0) };
            let n = dec.read(buf)?;
            if n > 0 || buf.is_empty() {
                return Ok(n);
            }
            let Some(dec) = self.current.take() else { return Ok(0) };
            let mut rest = dec.into_inner();
            if rest.fill_buf()?.is_empty() {
                return Ok(0);
            }
            self.current = Some(ruzstd::decoding::StreamingDecoder::new(rest).map_err(io::Error::other)?);
        }
    }
}

/// Writes entries below one directory descriptor, never following a symlink.
struct Writer {
    root: OwnedFd,
    dest: PathBuf,
    /// Ownership is only applied as root (the agent is); unprivileged test runs skip it.
    chown: bool,
}

/// The path of an entry as checked, normal components only.
struct EntryPath {
    display: String,
    parts: Vec<OsString>,
}

impl EntryPath {
    fn parse(raw: &Path) -> Result<Self, UnpackError> {
        let display = raw.display().to_string();
        let refuse = |reason: &str| UnpackError::Refused { path: display.clone(), reason: reason.to_owned() };
        let mut parts = Vec::new();
        for c in raw.components() {
            match c {
                Component::Normal(p) => parts.push(p.to_owned()),
                Component::CurDir => {}
                Component::ParentDir => return Err(refuse("it contains a `..` component")),
                Component::RootDir | Component::Prefix(_) => return Err(refuse("it is an absolute path")),
            }
        }
        Ok(Self { display, parts })
    }

    fn refuse(&self, reason: impl Into<String>) -> UnpackError {
        UnpackError::Refused { path: self.display.clone(), reason: reason.into() }
    }

    fn io(&self, source: impl Into<io::Error>) -> UnpackError {
        UnpackError::Io { path: self.display.clone(), source: source.into() }
    }

    /// Parent components and the final name; `None` for the layer's root itself.
    fn split(&self) -> Option<(&[OsString], &OsStr)> {
        let (name, parents) = self.parts.split_last()?;
        Some((parents, name.as_os_str()))
    }
}

fn dir_flags() -> OFlags {
    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
}

impl Writer {
    fn open(dest: &Path) -> Result<Self, UnpackError> {
        let root = rustix::fs::openat(CWD, dest, dir_flags(), Mode::empty())
            .map_err(|e| UnpackError::Io { path: dest.display().to_string(), source: e.into() })?;
        Ok(Self { root, dest: dest.to_owned(), chown: rustix::process::geteuid().is_root() })
    }

    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), UnpackError> {
        let raw = entry.path().map_err(UnpackError::Archive)?.into_owned();
        let path = EntryPath::parse(&raw)?;
        let kind = entry.header().entry_type();
        // The layer's root is the container's `/`, whose attributes the runtime sets.
        let Some((parents, name)) = path.split() else { return Ok(()) };
        let name_bytes = name.as_bytes();

        if name_bytes == OPAQUE {
            let dir = self.walk(&path, parents, true)?;
            return rustix::fs::fsetxattr(&dir, "trusted.overlay.opaque", b"y", XattrFlags::empty())
                .map_err(|e| path.io(e));
        }
        if let Some(hidden) = name_bytes.strip_prefix(WHITEOUT_PREFIX) {
            if hidden.starts_with(WHITEOUT_PREFIX) {
                // Other `.wh..wh.` names are aufs bookkeeping (`.wh..wh.plnk`): no meaning here.
                debug!(path = %path.display, "skipping aufs metadata entry");
                return Ok(());
            }
            if hidden.is_empty() || hidden == b"." || hidden == b".." {
                return Err(path.refuse("it is a whiteout of nothing"));
            }
            let dir = self.walk(&path, parents, true)?;
            let hidden = OsStr::from_bytes(hidden);
            self.clear(&path, &dir, parents, hidden, false)?;
            return rustix::fs::mknodat(
                &dir,
                hidden,
                FileType::CharacterDevice,
                Mode::empty(),
                rustix::fs::makedev(0, 0),
            )
            .map_err(|e| path.io(e));
        }

        let header = entry.header();
        let mode = Mode::from_bits_truncate(header.mode().map_err(UnpackError::Archive)? & 0o7777);
        let uid = header.uid().map_err(UnpackError::Archive)?;
        let gid = header.gid().map_err(UnpackError::Archive)?;
        let owner = match (u32::try_from(uid), u32::try_from(gid)) {
            // -1 means "unchanged" to chown: never a real owner.
            (Ok(u), Ok(g)) if u != u32::MAX && g != u32::MAX => (Uid::from_raw(u), Gid::from_raw(g)),
            _ => return Err(path.refuse(format!("its owner {uid}:{gid} is out of range"))),
        };
        let mtime = header.mtime().unwrap_or(0);

        match kind {
            tar::EntryType::Directory => {
                let dir = self.walk(&path, parents, true)?;
                let exists = self.clear(&path, &dir, parents, name, true)?;
                if !exists {
                    rustix::fs::mkdirat(&dir, name, Mode::from_raw_mode(0o700)).map_err(|e| path.io(e))?;
                }
                let fd = rustix::fs::openat(&dir, name, dir_flags(), Mode::empty()).map_err(|e| path.io(e))?;
                self.xattrs(&path, entry, &fd)?;
                self.own(&path, &fd, owner, mode)
            }
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                let dir = self.walk(&path, parents, true)?;
                self.clear(&path, &dir, parents, name, false)?;
                let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
                let fd = rustix::fs::openat(&dir, name, flags, Mode::from_raw_mode(0o600)).map_err(|e| path.io(e))?;
                let mut file = std::fs::File::from(fd);
                io::copy(entry, &mut file).map_err(|e| path.io(e))?;
                self.xattrs(&path, entry, &file)?;
                self.own(&path, &file, owner, mode)?;
                let t = Timespec { tv_sec: mtime.min(i64::MAX as u64) as i64, tv_nsec: 0 };
                rustix::fs::futimens(&file, &Timestamps { last_access: t, last_modification: t })
                    .map_err(|e| path.io(e))
            }
            tar::EntryType::Symlink => {
                let target = entry.link_name_bytes().ok_or_else(|| path.refuse("it is a symlink with no target"))?;
                let dir = self.walk(&path, parents, true)?;
                self.clear(&path, &dir, parents, name, false)?;
                // The target is stored as-is: it is only ever resolved inside the
                // container's root, and nothing here follows it.
                rustix::fs::symlinkat(OsStr::from_bytes(&target), &dir, name).map_err(|e| path.io(e))?;
                if self.chown {
                    rustix::fs::chownat(&dir, name, Some(owner.0), Some(owner.1), AtFlags::SYMLINK_NOFOLLOW)
                        .map_err(|e| path.io(e))?;
                }
                Ok(())
            }
            tar::EntryType::Link => {
                let raw_target = entry.link_name().map_err(UnpackError::Archive)?;
                let raw_target = raw_target.ok_or_else(|| path.refuse("it is a hard link with no target"))?;
                let target = EntryPath::parse(&raw_target).map_err(|_| {
                    path.refuse(format!("it is a hard link to {}, outside the layer", raw_target.display()))
                })?;
                let Some((target_parents, target_name)) = target.split() else {
                    return Err(path.refuse("it is a hard link to the layer's root"));
                };
                if target.parts == path.parts {
                    return Ok(());
                }
                let target_dir = self.walk(&target, target_parents, false).map_err(|e| match e {
                    UnpackError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound => {
                        path.refuse(format!("it is a hard link to {}, which is not in this layer", target.display))
                    }
                    UnpackError::Refused { reason, .. } => {
                        path.refuse(format!("it is a hard link to {} (refused because {reason})", target.display))
                    }
                    other => other,
                })?;
                let dir = self.walk(&path, parents, true)?;
                self.clear(&path, &dir, parents, name, false)?;
                // Without AT_SYMLINK_FOLLOW a link to a symlink links the symlink itself.
                rustix::fs::linkat(&target_dir, target_name, &dir, name, AtFlags::empty()).map_err(|e| match e {
                    Errno::NOENT => {
                        path.refuse(format!("it is a hard link to {}, which is not in this layer", target.display))
                    }
                    e => path.io(e),
                })
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                // Containers get their devices from the runtime, never from an image.
                debug!(path = %path.display, "skipping device or fifo entry");
                Ok(())
            }
            other => {
                debug!(path = %path.display, kind = ?other, "skipping tar entry of unhandled type");
                Ok(())
            }
        }
    }

    /// Opens the directory `parts` below the root one component at a time, refusing
    /// symlinks; missing directories are created (`create`) as tar permits.
    fn walk(&self, path: &EntryPath, parts: &[OsString], create: bool) -> Result<OwnedFd, UnpackError> {
        let mut current: Option<OwnedFd> = None;
        for (i, part) in parts.iter().enumerate() {
            let parent: BorrowedFd<'_> = current.as_ref().map_or(self.root.as_fd(), |f| f.as_fd());
            let opened = match rustix::fs::openat(parent, part, dir_flags(), Mode::empty()) {
                Err(Errno::NOENT) if create => {
                    match rustix::fs::mkdirat(parent, part, Mode::from_raw_mode(0o755)) {
                        Ok(()) | Err(Errno::EXIST) => {}
                        Err(e) => return Err(path.io(e)),
                    }
                    rustix::fs::openat(parent, part, dir_flags(), Mode::empty())
                }
                other => other,
            };
            let fd = match opened {
                Ok(fd) => fd,
                Err(e @ (Errno::LOOP | Errno::NOTDIR)) => {
                    let prefix = parts[..=i].iter().map(|p| p.to_string_lossy()).collect::<Vec<_>>().join("/");
                    let is_link = rustix::fs::statat(parent, part, AtFlags::SYMLINK_NOFOLLOW)
                        .is_ok_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::Symlink);
                    return Err(if is_link {
                        path.refuse(format!("it goes through {prefix}, a symbolic link, which is never followed"))
                    } else {
                        path.refuse(format!("it goes through {prefix}, which is not a directory ({e})"))
                    });
                }
                Err(e) => return Err(path.io(e)),
            };
            current = Some(fd);
        }
        match current {
            Some(fd) => Ok(fd),
            None => rustix::fs::openat(&self.root, ".", dir_flags(), Mode::empty()).map_err(|e| path.io(e)),
        }
    }

    /// Makes room for a new entry `name` in `dir` (a later entry replaces an earlier
    /// one). Returns whether an existing directory was kept for a directory entry.
    fn clear(
        &self,
        path: &EntryPath,
        dir: &OwnedFd,
        parents: &[OsString],
        name: &OsStr,
        want_dir: bool,
    ) -> Result<bool, UnpackError> {
        let st = match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::NOENT) => return Ok(false),
            Err(e) => return Err(path.io(e)),
        };
        if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
            if want_dir {
                return Ok(true);
            }
            // Every component up to here was just opened with O_NOFOLLOW and only this
            // unpack writes below `dest`, so the joined path names that same directory;
            // std's remove_dir_all does not follow symlinks inside it.
            let mut full = self.dest.clone();
            full.extend(parents);
            full.push(name);
            std::fs::remove_dir_all(&full).map_err(|e| path.io(e))?;
        } else {
            rustix::fs::unlinkat(dir, name, AtFlags::empty()).map_err(|e| path.io(e))?;
        }
        Ok(false)
    }

    /// Owner then mode: chown clears set-id bits, so the mode comes last.
    fn own(&self, path: &EntryPath, fd: impl AsFd, owner: (Uid, Gid), mode: Mode) -> Result<(), UnpackError> {
        if self.chown {
            rustix::fs::fchown(&fd, Some(owner.0), Some(owner.1)).map_err(|e| path.io(e))?;
        }
        rustix::fs::fchmod(&fd, mode).map_err(|e| path.io(e))
    }

    /// Extended attributes from PAX headers. Only file capabilities (`ping` needs them)
    /// and `user.` attributes: a layer must not set `trusted.overlay.*` and steer the
    /// kernel's overlay lookups, nor SELinux labels.
    fn xattrs<R: Read>(
        &self,
        path: &EntryPath,
        entry: &mut tar::Entry<'_, R>,
        fd: impl AsFd,
    ) -> Result<(), UnpackError> {
        let Some(exts) = entry.pax_extensions().map_err(UnpackError::Archive)? else { return Ok(()) };
        for ext in exts {
            let ext = ext.map_err(UnpackError::Archive)?;
            let Some(name) = ext.key_bytes().strip_prefix(b"SCHILY.xattr.") else { continue };
            if name == b"security.capability" || name.starts_with(b"user.") {
                rustix::fs::fsetxattr(&fd, OsStr::from_bytes(name), ext.value_bytes(), XattrFlags::empty())
                    .map_err(|e| path.io(e))?;
            } else {
                debug!(path = %path.display, xattr = %String::from_utf8_lossy(name), "ignoring extended attribute");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};

    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "shoal-unpack-{name}-{}-{}",
            std::process::id(),
            u64::from_le_bytes(shoal_link::random::<8>())
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn is_root() -> bool {
        rustix::process::geteuid().is_root()
    }

    /// A header whose name is written raw, bypassing the tar crate's own checks, so
    /// hostile archives can be built.
    fn raw_header(kind: tar::EntryType, path: &str, link: Option<&str>, size: u64, mode: u32) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(mode);
        h.set_uid(1234);
        h.set_gid(5678);
        h.set_mtime(1_700_000_000);
        let gnu = h.as_gnu_mut().unwrap();
        gnu.name[..path.len()].copy_from_slice(path.as_bytes());
        if let Some(l) = link {
            gnu.linkname[..l.len()].copy_from_slice(l.as_bytes());
        }
        h.set_cksum();
        h
    }

    enum E<'a> {
        Dir(&'a str),
        File(&'a str, &'a [u8]),
        Symlink(&'a str, &'a str),
        Hardlink(&'a str, &'a str),
        Fifo(&'a str),
    }

    fn tar_of(entries: &[E<'_>]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for e in entries {
            match e {
                E::Dir(p) => b.append(&raw_header(tar::EntryType::Directory, p, None, 0, 0o750), &[][..]),
                E::File(p, data) => {
                    b.append(&raw_header(tar::EntryType::Regular, p, None, data.len() as u64, 0o640), *data)
                }
                E::Symlink(p, t) => b.append(&raw_header(tar::EntryType::Symlink, p, Some(t), 0, 0o777), &[][..]),
                E::Hardlink(p, t) => b.append(&raw_header(tar::EntryType::Link, p, Some(t), 0, 0o640), &[][..]),
                E::Fifo(p) => b.append(&raw_header(tar::EntryType::Fifo, p, None, 0, 0o644), &[][..]),
            }
            .unwrap();
        }
        b.into_inner().unwrap()
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(bytes).unwrap();
        enc.finish().unwrap()
    }

    fn zstd(bytes: &[u8]) -> Vec<u8> {
        ruzstd::encoding::compress_to_vec(bytes, ruzstd::encoding::CompressionLevel::Fastest)
    }

    const GZ: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
    const ZST: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
    const TAR: &str = "application/vnd.oci.image.layer.v1.tar";

    fn sample() -> Vec<u8> {
        tar_of(&[
            E::Dir("./etc/"),
            E::File("./etc/hostname", b"board\n"),
            E::Symlink("./etc/localtime", "/usr/share/zoneinfo/UTC"),
            E::File("bin/app", b"#!/bin/sh\necho hi\n"),
            E::Hardlink("bin/app-again", "bin/app"),
            E::Fifo("run/fifo"),
        ])
    }

    fn check_sample(dest: &Path) {
        assert_eq!(std::fs::read(dest.join("etc/hostname")).unwrap(), b"board\n");
        assert_eq!(std::fs::read_link(dest.join("etc/localtime")).unwrap(), Path::new("/usr/share/zoneinfo/UTC"));
        let app = std::fs::metadata(dest.join("bin/app")).unwrap();
        assert_eq!(app.permissions().mode() & 0o7777, 0o640);
        assert_eq!(app.mtime(), 1_700_000_000);
        assert_eq!(app.ino(), std::fs::metadata(dest.join("bin/app-again")).unwrap().ino());
        assert_eq!(std::fs::metadata(dest.join("etc")).unwrap().permissions().mode() & 0o7777, 0o750);
        assert!(!dest.join("run/fifo").exists(), "fifos are skipped");
        if is_root() {
            assert_eq!((app.uid(), app.gid()), (1234, 5678));
        }
    }

    #[test]
    fn a_plain_tar_layer_unpacks_and_reports_its_diff_id() {
        let dest = scratch("tar");
        let tar = sample();
        let out = unpack_layer(&tar[..], TAR, &dest).unwrap();
        check_sample(&dest);
        assert_eq!(out.diff_id, shoal_oci::digest::of(&tar));
        assert_eq!(out.tar_bytes, tar.len() as u64);
        std::fs::remove_dir_all(dest).unwrap();
    }

    #[test]
    fn a_gzip_layer_unpacks() {
        let dest = scratch("gzip");
        let tar = sample();
        let out = unpack_layer(&gzip(&tar)[..], GZ, &dest).unwrap();
        check_sample(&dest);
        assert_eq!(out.diff_id, shoal_oci::digest::of(&tar));
        std::fs::remove_dir_all(dest).unwrap();
    }

    #[test]
    fn a_zstd_layer_unpacks_even_in_several_frames() {
        let dest = scratch("zstd");
        let tar = sample();
        let (a, b) = tar.split_at(1536);
        let mut two_frames = zstd(a);
        two_frames.extend(zstd(b));
        let out = unpack_layer(&two_frames[..], ZST, &dest).unwrap();
        check_sample(&dest);
        assert_eq!(out.diff_id, shoal_oci::digest::of(&tar));
        std::fs::remove_dir_all(dest).unwrap();
    }

    #[test]
    fn compression_is_detected_by_magic_whatever_the_media_type_says() {
        let dest = scratch("magic");
        unpack_layer(&zstd(&sample())[..], GZ, &dest).unwrap();
        check_sample(&dest);
        let dest2 = scratch("magic2");
        unpack_layer(&gzip(&sample())[..], TAR, &dest2).unwrap();
        check_sample(&dest2);
        assert_eq!(detect(&[0x1f, 0x8b, 8, 0]), Some(LayerMediaType::Gzip));
        assert_eq!(detect(&[0x28, 0xb5, 0x2f, 0xfd]), Some(LayerMediaType::Zstd));
        assert_eq!(detect(b"ustar"), None);
        std::fs::remove_dir_all(dest).unwrap();
        std::fs::remove_dir_all(dest2).unwrap();
    }

    #[test]
    fn garbage_and_unknown_media_types_are_refused() {
        let dest = scratch("garbage");
        let err = unpack_layer(&[0x1f, 0x8b, 1, 2, 3][..], GZ, &dest).unwrap_err();
        assert!(err.is_bad_layer(), "{err}");
        let err = unpack_layer(&b""[..], "application/vnd.oci.image.layer.v1.tar+encrypted", &dest).unwrap_err();
        assert!(matches!(err, UnpackError::MediaType(_)), "{err}");
        std::fs::remove_dir_all(dest).unwrap();
    }

    #[test]
    #[ignore = "needs root"]
    fn whiteouts_become_overlay_char_devices_and_opaque_dirs_get_the_xattr() {
        let dest = scratch("whiteout");
        let tar = tar_of(&[
            E::Dir("etc/"),
            E::File("etc/.wh.motd", b""),
            E::File("var/cache/.wh..wh..opq", b""),
            E::File("var/cache/kept", b"k"),
            E::File(".wh..wh.plnk", b""),
        ]);
        unpack_layer(&gzip(&tar)[..], GZ, &dest).unwrap();
        let motd = std::fs::symlink_metadata(dest.join("etc/motd")).unwrap();
        assert!(motd.file_type().is_char_device());
        assert_eq!(motd.rdev(), 0);
        assert!(!dest.join("etc/.wh.motd").exists());
        let mut value = [0u8; 4];
        let n = rustix::fs::getxattr(dest.join("var/cache"), "trusted.overlay.opaque", &mut value).unwrap();
        assert_eq!(&value[..n], b"y");
        assert!(!dest.join("var/cache/.wh..wh..opq").exists());
        assert!(dest.join("var/cache/kept").exists());
        assert!(!dest.join(".wh..wh.plnk").exists());
        std::fs::remove_dir_all(dest).unwrap();
    }

    #[test]
    fn later_entries_replace_earlier_ones() {
        let dest = scratch("replace");
        let tar = tar_of(&[
            E::Dir("a/"),
            E::File("a/inner", b"x"),
            E::File("a", b"now a file"),
            E::Symlink("b", "a"),
            E::File("b", b"now a file too"),
        ]);
        unpack_layer(&tar[..], TAR, &dest).unwrap();
        assert_eq!(std::fs::read(dest.join("a")).unwrap(), b"now a file");
        assert!(std::fs::symlink_metadata(dest.join("b")).unwrap().is_file());
        std::fs::remove_dir_all(dest).unwrap();
    }

    fn assert_refused(entries: &[E<'_>], needle: &str) -> PathBuf {
        let dest = scratch("evil");
        let err = unpack_layer(&tar_of(entries)[..], TAR, &dest).unwrap_err();
        assert!(matches!(err, UnpackError::Refused { .. }), "{err}");
        assert!(err.to_string().contains(needle), "{err} should name {needle}");
        dest
    }

    #[test]
    fn dot_dot_escapes_are_refused() {
        let outside = scratch("dotdot-outside");
        let dest = assert_refused(&[E::File("../escaped", b"x")], "../escaped");
        assert!(!dest.parent().unwrap().join("escaped").exists());
        let dest2 = assert_refused(&[E::Dir("a/"), E::File("a/../../x", b"x")], "a/../../x");
        for d in [dest, dest2, outside] {
            std::fs::remove_dir_all(d).unwrap();
        }
    }

    #[test]
    fn absolute_paths_are_refused() {
        let target = scratch("abs-target");
        let evil = format!("{}/pwned", target.display());
        let dest = assert_refused(&[E::File(&evil, b"x")], "pwned");
        assert!(!target.join("pwned").exists());
        std::fs::remove_dir_all(dest).unwrap();
        std::fs::remove_dir_all(target).unwrap();
    }

    #[test]
    fn a_symlink_is_never_followed_to_create_an_entry() {
        let outside = scratch("symlink-outside");
        let link_target = outside.display().to_string();
        let dest = assert_refused(&[E::Symlink("a", &link_target), E::File("a/passwd", b"root::0:0")], "a/passwd");
        assert!(!outside.join("passwd").exists(), "wrote through the symlink");
        let err = format!("{}", {
            let d = scratch("symlink2");
            let e = unpack_layer(
                &tar_of(&[E::Symlink("etc", "../../.."), E::Dir("etc/cron.d/"), E::File("etc/cron.d/x", b"")])[..],
                TAR,
                &d,
            )
            .unwrap_err();
            std::fs::remove_dir_all(d).unwrap();
            e
        });
        assert!(err.contains("symbolic link"), "{err}");
        // A whiteout or opaque marker below a symlink is refused just the same.
        let dest2 = assert_refused(&[E::Symlink("a", &link_target), E::File("a/.wh.victim", b"")], "a/.wh.victim");
        for d in [dest, dest2, outside] {
            std::fs::remove_dir_all(d).unwrap();
        }
    }

    #[test]
    fn hard_links_must_stay_inside_the_layer() {
        let outside = scratch("hardlink-outside");
        std::fs::write(outside.join("secret"), b"s").unwrap();
        let abs = format!("{}/secret", outside.display());
        let d1 = assert_refused(&[E::Hardlink("stolen", &abs)], "stolen");
        let d2 = assert_refused(&[E::Hardlink("stolen", "../../secret")], "stolen");
        let d3 = assert_refused(&[E::Hardlink("stolen", "not/here")], "not in this layer");
        // Through a symlink planted in the layer.
        let d4 =
            assert_refused(&[E::Symlink("out", &outside.display().to_string()), E::Hardlink("x", "out/secret")], "x");
        assert_eq!(std::fs::metadata(outside.join("secret")).unwrap().nlink(), 1);
        for d in [d1, d2, d3, d4, outside] {
            std::fs::remove_dir_all(d).unwrap();
        }
    }

    #[test]
    fn entry_paths_keep_only_normal_components() {
        let p = EntryPath::parse(Path::new("./usr/./bin/")).unwrap();
        assert_eq!(p.parts, [OsString::from("usr"), OsString::from("bin")]);
        assert!(EntryPath::parse(Path::new("/etc/passwd")).is_err());
        assert!(EntryPath::parse(Path::new("a/../b")).is_err());
        assert!(EntryPath::parse(Path::new("./")).unwrap().split().is_none());
    }
}
