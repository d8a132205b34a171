//! A service's container options beyond image, command and limits: mounts (bind, named
//! volume, tmpfs), devices, capabilities, user and groups, working directory,
//! entrypoint, read-only root, init, sysctls, ulimits, container labels and DNS
//! servers, with the parsers of their command-line forms (Docker's words).
//!
//! Data and pure checks only. The agent turns these into the OCI spec (and refuses
//! what its board cannot do, such as a bind source it does not have); the CLI builds
//! them from flags. Everything here comes from the operator or the wire, so every
//! path, name and number is checked before anything uses it.

use core::fmt;

use serde::{Deserialize, Serialize};

use crate::services::{parse_memory, Arg, SpecError, MAX_ARGS};
use crate::{BoundedString, BoundedVec, Label, Text, MAX_LABELS};

/// Most mounts of one service.
pub const MAX_MOUNTS: usize = 32;
/// Most devices of one service.
pub const MAX_DEVICES: usize = 32;
/// Most supplementary groups, capabilities added or dropped.
pub const MAX_ITEMS: usize = 64;
/// Most sysctls of one service.
pub const MAX_SYSCTLS: usize = 32;
/// Most ulimits of one service (there are 16 kinds).
pub const MAX_ULIMITS: usize = 16;
/// Most DNS servers: what `resolv.conf` uses (glibc's and musl's `MAXNS`).
pub const MAX_DNS: usize = 3;
/// Most `volume-opt`s of one mount.
pub const MAX_VOLUME_OPTS: usize = 8;
/// Longest path of a mount, device or working directory.
pub const MAX_PATH: usize = 1024;

/// A path as the spec carries it.
pub type PathText = BoundedString<MAX_PATH>;
/// A volume's name: `[A-Za-z0-9][A-Za-z0-9_.-]*`, as Docker allows.
pub type VolumeName = Text<64>;

/// What a container gets besides its image and command. Every field defaults to "as
/// Docker would without the flag", so a spec saved before these existed still loads.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ContainerOptions {
    /// `--mount`.
    pub mounts: BoundedVec<Mount, MAX_MOUNTS>,
    /// `--device`.
    pub devices: BoundedVec<DeviceMapping, MAX_DEVICES>,
    /// `--group-add`: group names (resolved in the image) or numeric gids.
    pub group_add: BoundedVec<Text<64>, MAX_ITEMS>,
    /// `--cap-add`, normalised (`CAP_NET_ADMIN`, or `ALL`).
    pub cap_add: BoundedVec<Text<32>, MAX_ITEMS>,
    /// `--cap-drop`, normalised likewise.
    pub cap_drop: BoundedVec<Text<32>, MAX_ITEMS>,
    /// `--user`: `USER[:GROUP]`, names or numbers; `None`: the image's.
    pub user: Option<Text<64>>,
    /// `--workdir`: an absolute path; `None`: the image's.
    pub workdir: Option<PathText>,
    /// `--entrypoint`: replaces the image's entrypoint and drops its `Cmd`, as Docker
    /// does; `Some([])` is `--entrypoint ""`.
    pub entrypoint: Option<BoundedVec<Arg, MAX_ARGS>>,
    /// `--read-only`: the root filesystem is mounted read-only.
    pub read_only: bool,
    /// `--init` / `--no-init`; `None`: shoal's default, the init (signals forwarded,
    /// orphans reaped).
    pub init: Option<bool>,
    /// `--sysctl`: namespaced ones only.
    pub sysctls: BoundedVec<Sysctl, MAX_SYSCTLS>,
    /// `--ulimit`.
    pub ulimits: BoundedVec<Ulimit, MAX_ULIMITS>,
    /// `--container-label`: set on each container (as OCI annotations).
    pub labels: BoundedVec<Label, MAX_LABELS>,
    /// `--dns`: the containers' name servers, replacing the board's.
    pub dns: BoundedVec<Text<45>, MAX_DNS>,
}

impl ContainerOptions {
    /// Checks what parsing each item alone cannot: targets and devices not given twice,
    /// net.* sysctls not on the host's network.
    pub fn validate(&self, host_network: bool) -> Result<(), SpecError> {
        let invalid = |m: String| Err(SpecError::Invalid(m));
        for (i, m) in self.mounts.iter().enumerate() {
            m.check().map_err(|reason| SpecError::Mount { input: m.to_string(), reason })?;
            if self.mounts[..i].iter().any(|o| o.target == m.target) {
                return invalid(format!("two mounts have the target {}: give each target once", &*m.target));
            }
        }
        for (i, d) in self.devices.iter().enumerate() {
            d.check().map_err(|reason| SpecError::Device { input: d.to_string(), reason })?;
            if self.devices[..i].iter().any(|o| o.container_path == d.container_path) {
                return invalid(format!("two devices have the path {} in the container", &*d.container_path));
            }
        }
        for g in &self.group_add {
            check_group(g).map_err(|reason| SpecError::Option { flag: "--group-add", input: g.to_string(), reason })?;
        }
        for (flag, caps) in [("--cap-add", &self.cap_add), ("--cap-drop", &self.cap_drop)] {
            for c in caps {
                let normal = parse_capability(c)?;
                if normal.as_str() != c.as_str() {
                    return Err(SpecError::Option { flag, input: c.to_string(), reason: "not normalised".into() });
                }
            }
        }
        if let Some(u) = &self.user {
            check_user(u).map_err(|reason| SpecError::Option { flag: "--user", input: u.to_string(), reason })?;
        }
        if let Some(w) = &self.workdir {
            check_container_path(w).map_err(|reason| SpecError::Option {
                flag: "--workdir",
                input: w.to_string(),
                reason,
            })?;
        }
        for s in &self.sysctls {
            Sysctl::parse(&s.to_string())?;
            if host_network && s.name.starts_with("net.") {
                return invalid(format!(
                    "--sysctl {}: net.* sysctls need the container's own network, not --network host",
                    s.name
                ));
            }
        }
        for (i, u) in self.ulimits.iter().enumerate() {
            Ulimit::parse(&u.to_string())?;
            if self.ulimits[..i].iter().any(|o| o.name == u.name) {
                return invalid(format!("--ulimit {} is given twice", u.name));
            }
        }
        for d in &self.dns {
            parse_dns(d)?;
        }
        Ok(())
    }

    /// The names of the named volumes the containers mount.
    pub fn volume_names(&self) -> impl Iterator<Item = &str> {
        self.mounts.iter().filter(|m| m.kind == MountKind::Volume).filter_map(|m| m.source.as_deref())
    }
}

/// One `--mount`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Mount {
    /// bind, volume or tmpfs.
    pub kind: MountKind,
    /// A board path (bind), a volume's name (volume), nothing (tmpfs).
    pub source: Option<PathText>,
    /// Where it appears in the container: an absolute path.
    pub target: PathText,
    /// Mounted read-only.
    pub read_only: bool,
    /// `volume-opt=KEY=VALUE` of a volume: Docker's local driver's `type`, `device`, `o`.
    pub volume_opts: BoundedVec<Text<256>, MAX_VOLUME_OPTS>,
    /// A tmpfs's size in bytes (`tmpfs-size`); `None`: the kernel's default (half the RAM).
    pub tmpfs_size: Option<u64>,
    /// A tmpfs's permission bits (`tmpfs-mode`, octal); `None`: 1777.
    pub tmpfs_mode: Option<u32>,
}

/// The kind of a mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum MountKind {
    /// A board directory or file.
    Bind,
    /// A named volume, local to the board.
    Volume,
    /// A tmpfs, in memory only.
    Tmpfs,
}

impl fmt::Display for MountKind {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(match self {
            Self::Bind => "bind",
            Self::Volume => "volume",
            Self::Tmpfs => "tmpfs",
        })
    }
}

/// A path in the container: absolute, no `..`, no NUL.
pub fn check_container_path(p: &str) -> Result<(), String> {
    if !p.starts_with('/') {
        return Err("a path in the container must be absolute, e.g. /data".into());
    }
    if p.split('/').any(|c| c == "..") || p.contains('\0') {
        return Err("a path in the container may not contain `..`".into());
    }
    Ok(())
}

/// A volume's name as Docker allows it: `[A-Za-z0-9][A-Za-z0-9_.-]*`.
pub fn check_volume_name(n: &str) -> Result<(), String> {
    let ok = n.len() >= 2
        && n.len() <= 64
        && n.as_bytes()[0].is_ascii_alphanumeric()
        && n.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "volume name {n:?}: use 2 to 64 of letters, digits, '_', '.', '-', starting with a letter or digit"
        ))
    }
}

fn parse_bool(v: &str) -> Option<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "" | "1" | "true" => Some(true),
        "0" | "false" => Some(false),
        _ => None,
    }
}

impl Mount {
    /// Parses Docker's `--mount` form:
    /// `type=bind|volume|tmpfs,source=…,target=…[,readonly][,volume-opt=K=V][,tmpfs-size=…][,tmpfs-mode=…]`
    /// (`src`, `dst`, `destination`, `ro` as aliases; the type defaults to volume).
    pub fn parse(s: &str) -> Result<Self, SpecError> {
        let bad = |reason: String| SpecError::Mount { input: s.to_owned(), reason };
        let mut kind = MountKind::Volume;
        let (mut source, mut target, mut read_only) = (None, None, false);
        let (mut opts, mut size, mut mode) = (Vec::new(), None, None);
        for field in s.split(',').map(str::trim).filter(|f| !f.is_empty()) {
            let (k, v) = field.split_once('=').map_or((field, None), |(k, v)| (k, Some(v)));
            match (k.to_ascii_lowercase().as_str(), v) {
                ("type", Some(v)) => {
                    kind = match v {
                        "bind" => MountKind::Bind,
                        "volume" => MountKind::Volume,
                        "tmpfs" => MountKind::Tmpfs,
                        _ => return Err(bad(format!("type {v:?}: expected bind, volume or tmpfs"))),
                    }
                }
                ("source" | "src", Some(v)) => source = Some(v.to_owned()),
                ("target" | "dst" | "destination", Some(v)) => target = Some(v.to_owned()),
                ("readonly" | "ro", v) => {
                    read_only = parse_bool(v.unwrap_or("")).ok_or_else(|| bad("readonly is true or false".into()))?
                }
                ("volume-opt", Some(v)) => opts.push(v.to_owned()),
                ("tmpfs-size", Some(v)) => size = Some(parse_memory(v).map_err(|e| bad(e.to_string()))?),
                ("tmpfs-mode", Some(v)) => {
                    let m = u32::from_str_radix(v.trim_start_matches("0o"), 8)
                        .ok()
                        .filter(|m| *m <= 0o7777)
                        .ok_or_else(|| bad(format!("tmpfs-mode {v:?}: expected octal permission bits, e.g. 1770")))?;
                    mode = Some(m);
                }
                ("volume-driver" | "volume-label" | "volume-nocopy" | "bind-propagation" | "consistency", _) => {
                    return Err(bad(format!("{k} is not supported by shoal: volumes are local directories")))
                }
                (_, None) => return Err(bad(format!("{field:?} is not KEY=VALUE"))),
                (other, Some(_)) => {
                    return Err(bad(format!(
                        "unknown field {other:?}: expected type, source, target, readonly, volume-opt, tmpfs-size or tmpfs-mode"
                    )))
                }
            }
        }
        let path = |v: String, what: &str| -> Result<PathText, SpecError> {
            BoundedString::try_from(v.as_str()).map_err(|e| bad(format!("{what}: {e}")))
        };
        let m = Self {
            kind,
            source: source.map(|v| path(v, "source")).transpose()?,
            target: path(target.ok_or_else(|| bad("a target is required, e.g. target=/data".into()))?, "target")?,
            read_only,
            volume_opts: opts
                .iter()
                .map(|o| crate::text(o).map_err(|e| bad(format!("volume-opt: {e}"))))
                .collect::<Result<Vec<_>, _>>()?
                .try_into()
                .map_err(|_| bad(format!("at most {MAX_VOLUME_OPTS} volume-opt")))?,
            tmpfs_size: size,
            tmpfs_mode: mode,
        };
        m.check().map_err(bad)?;
        Ok(m)
    }

    /// The rules a parsed (or decoded) mount must follow.
    pub fn check(&self) -> Result<(), String> {
        check_container_path(&self.target).map_err(|e| format!("target: {e}"))?;
        let source = self.source.as_deref().unwrap_or("");
        match self.kind {
            MountKind::Bind => {
                if !source.starts_with('/') || source.contains('\0') {
                    return Err("a bind mount needs an absolute source path on the board, e.g. source=/srv/data".into());
                }
            }
            MountKind::Volume => {
                if source.is_empty() {
                    return Err("a volume mount needs source=NAME (anonymous volumes are not supported)".into());
                }
                check_volume_name(source)?;
            }
            MountKind::Tmpfs => {
                if !source.is_empty() {
                    return Err("a tmpfs has no source".into());
                }
            }
        }
        if self.kind != MountKind::Tmpfs && (self.tmpfs_size.is_some() || self.tmpfs_mode.is_some()) {
            return Err("tmpfs-size and tmpfs-mode are for type=tmpfs".into());
        }
        if self.kind != MountKind::Volume && !self.volume_opts.is_empty() {
            return Err("volume-opt is for type=volume".into());
        }
        for o in &self.volume_opts {
            match o.split_once('=') {
                Some(("type" | "device" | "o", v)) if !v.is_empty() => {}
                _ => return Err(format!("volume-opt {o:?}: expected type=…, device=… or o=… (the local driver's)")),
            }
        }
        if self.tmpfs_size.is_some_and(|s| s == 0 || s > crate::services::MAX_MEMORY) {
            return Err("tmpfs-size is between 1 byte and 1TiB".into());
        }
        Ok(())
    }
}

/// The form [`Mount::parse`] reads back.
impl fmt::Display for Mount {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "type={}", self.kind)?;
        if let Some(s) = &self.source {
            write!(f, ",source={}", &**s)?;
        }
        write!(f, ",target={}", &*self.target)?;
        if self.read_only {
            f.write_str(",readonly")?;
        }
        for o in &self.volume_opts {
            write!(f, ",volume-opt={o}")?;
        }
        if let Some(s) = self.tmpfs_size {
            write!(f, ",tmpfs-size={s}")?;
        }
        if let Some(m) = self.tmpfs_mode {
            write!(f, ",tmpfs-mode={m:o}")?;
        }
        Ok(())
    }
}

/// One `--device HOST[:CONTAINER[:PERMISSIONS]]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DeviceMapping {
    /// The device on the board, under `/dev`.
    pub host_path: PathText,
    /// Where it appears in the container, under `/dev`.
    pub container_path: PathText,
    /// Some of `r`, `w`, `m` (read, write, mknod), in that order.
    pub permissions: Text<3>,
}

fn is_permissions(p: &str) -> bool {
    !p.is_empty() && p.len() <= 3 && p.chars().all(|c| "rwm".contains(c))
}

fn check_dev_path(p: &str) -> Result<(), String> {
    if !p.starts_with("/dev/") || p.len() <= 5 || p.split('/').any(|c| c == ".." || c == ".") || p.contains('\0') {
        return Err(format!("{p:?}: a device is a path under /dev, e.g. /dev/i2c-1"));
    }
    Ok(())
}

impl DeviceMapping {
    /// Parses Docker's `--device` form: `/dev/i2c-1`, `/dev/ttyUSB0:/dev/ttyS0`,
    /// `/dev/video0:r`, `/dev/i2c-1:/dev/i2c-1:rw`.
    pub fn parse(s: &str) -> Result<Self, SpecError> {
        let bad = |reason: String| SpecError::Device { input: s.to_owned(), reason };
        let parts: Vec<&str> = s.split(':').collect();
        let (host, container, perms) = match parts.as_slice() {
            [h] => (*h, *h, "rwm"),
            [h, p] if is_permissions(p) => (*h, *h, *p),
            [h, c] => (*h, *c, "rwm"),
            [h, c, p] => (*h, *c, *p),
            _ => return Err(bad("expected HOST[:CONTAINER[:PERMISSIONS]], e.g. /dev/i2c-1:/dev/i2c-1:rw".into())),
        };
        if !is_permissions(perms) {
            return Err(bad(format!("permissions {perms:?}: use some of r, w and m, e.g. rw")));
        }
        let ordered: String = "rwm".chars().filter(|c| perms.contains(*c)).collect();
        let d = Self {
            host_path: BoundedString::try_from(host).map_err(|e| bad(e.to_string()))?,
            container_path: BoundedString::try_from(container).map_err(|e| bad(e.to_string()))?,
            permissions: crate::text(&ordered).map_err(|e| bad(e.to_string()))?,
        };
        d.check().map_err(bad)?;
        Ok(d)
    }

    /// The rules a parsed (or decoded) mapping must follow.
    pub fn check(&self) -> Result<(), String> {
        check_dev_path(&self.host_path)?;
        check_dev_path(&self.container_path)?;
        if !is_permissions(&self.permissions) {
            return Err("permissions are some of r, w and m".into());
        }
        Ok(())
    }
}

/// The form [`DeviceMapping::parse`] reads back.
impl fmt::Display for DeviceMapping {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{}:{}:{}", &*self.host_path, &*self.container_path, self.permissions)
    }
}

/// Linux's capabilities, as `capabilities(7)` names them.
pub const CAPABILITIES: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// Reads a capability as Docker does: `NET_ADMIN`, `cap_net_admin` or `ALL`, in any
/// case; gives it back as `CAP_NET_ADMIN` (or `ALL`).
pub fn parse_capability(s: &str) -> Result<Text<32>, SpecError> {
    let upper = s.trim().to_ascii_uppercase();
    if upper == "ALL" {
        return Ok(crate::text_lossy("ALL"));
    }
    let name = if upper.starts_with("CAP_") { upper } else { format!("CAP_{upper}") };
    if CAPABILITIES.contains(&name.as_str()) {
        Ok(crate::text_lossy(&name))
    } else {
        Err(SpecError::Option {
            flag: "capability",
            input: s.to_owned(),
            reason: "not a Linux capability: see capabilities(7), e.g. NET_ADMIN or SYS_TIME".into(),
        })
    }
}

fn check_name_or_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= 32 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

/// `--user USER[:GROUP]`: names (looked up in the image) or numbers.
pub fn check_user(s: &str) -> Result<(), String> {
    let (u, g) = s.split_once(':').map_or((s, None), |(u, g)| (u, Some(g)));
    if !check_name_or_id(u) || g.is_some_and(|g| !check_name_or_id(g)) {
        return Err("expected USER[:GROUP], names or numbers, e.g. 1000:1000 or postgres".into());
    }
    Ok(())
}

/// `--group-add GROUP`: a name (looked up in the image) or a number.
pub fn check_group(s: &str) -> Result<(), String> {
    if check_name_or_id(s) {
        Ok(())
    } else {
        Err("expected a group name or number, e.g. dialout or 20".into())
    }
}

/// One `--sysctl NAME=VALUE`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Sysctl {
    /// The name, dotted: `net.ipv4.ip_forward`.
    pub name: Text<128>,
    /// The value as written to `/proc/sys`.
    pub value: Text<256>,
}

/// The System V IPC sysctls of the IPC namespace Docker allows.
const IPC_SYSCTLS: [&str; 8] = [
    "kernel.msgmax",
    "kernel.msgmnb",
    "kernel.msgmni",
    "kernel.sem",
    "kernel.shmall",
    "kernel.shmmax",
    "kernel.shmmni",
    "kernel.shm_rmid_forced",
];

impl Sysctl {
    /// Parses `NAME=VALUE`, allowing only what is namespaced (the container's own, not
    /// the board's), as Docker does: the IPC ones, `fs.mqueue.*` and `net.*`.
    pub fn parse(s: &str) -> Result<Self, SpecError> {
        let bad = |reason: &str| SpecError::Option { flag: "--sysctl", input: s.to_owned(), reason: reason.to_owned() };
        let (name, value) =
            s.split_once('=').ok_or_else(|| bad("expected NAME=VALUE, e.g. net.core.somaxconn=1024"))?;
        let name = name.trim().replace('/', ".");
        let well_formed = !name.is_empty()
            && !name.starts_with('.')
            && !name.ends_with('.')
            && !name.contains("..")
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !well_formed {
            return Err(bad("the name is dotted words, e.g. net.core.somaxconn"));
        }
        let namespaced =
            IPC_SYSCTLS.contains(&name.as_str()) || name.starts_with("fs.mqueue.") || name.starts_with("net.");
        if !namespaced {
            return Err(bad(
                "only namespaced sysctls may be set (kernel.shm*, kernel.msg*, kernel.sem, fs.mqueue.*, net.*): \
                 the others would change the whole board",
            ));
        }
        if value.is_empty() || value.contains(['\n', '\0']) {
            return Err(bad("the value is one line, not empty"));
        }
        Ok(Self {
            name: crate::text(&name).map_err(|e| bad(&e.to_string()))?,
            value: crate::text(value).map_err(|e| bad(&e.to_string()))?,
        })
    }
}

impl fmt::Display for Sysctl {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{}={}", self.name, self.value)
    }
}

/// The resource limits `--ulimit` may set, Docker's names.
pub const ULIMITS: [&str; 16] = [
    "as",
    "core",
    "cpu",
    "data",
    "fsize",
    "locks",
    "memlock",
    "msgqueue",
    "nice",
    "nofile",
    "nproc",
    "rss",
    "rtprio",
    "rttime",
    "sigpending",
    "stack",
];

/// One `--ulimit NAME=SOFT[:HARD]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Ulimit {
    /// Index in [`ULIMITS`] would be terse; the name is kept as text instead.
    pub name: Text<16>,
    /// Soft limit; `u64::MAX` is unlimited (`-1`).
    pub soft: u64,
    /// Hard limit; `u64::MAX` is unlimited.
    pub hard: u64,
}

impl Ulimit {
    /// Parses Docker's form: `nofile=1024:2048`, `core=0`, `memlock=-1`.
    pub fn parse(s: &str) -> Result<Self, SpecError> {
        let bad = |reason: String| SpecError::Option { flag: "--ulimit", input: s.to_owned(), reason };
        let (name, values) =
            s.split_once('=').ok_or_else(|| bad("expected NAME=SOFT[:HARD], e.g. nofile=1024:2048".into()))?;
        let name = name.trim().to_ascii_lowercase();
        if !ULIMITS.contains(&name.as_str()) {
            return Err(bad(format!("unknown limit {name:?}: expected one of {}", ULIMITS.join(", "))));
        }
        let number = |v: &str| -> Result<u64, SpecError> {
            match v.trim() {
                "-1" | "unlimited" => Ok(u64::MAX),
                n => n.parse().map_err(|_| bad(format!("{n:?} is not a number (or -1 for unlimited)"))),
            }
        };
        let (soft, hard) = match values.split_once(':') {
            Some((s, h)) => (number(s)?, number(h)?),
            None => (number(values)?, number(values)?),
        };
        if soft > hard {
            return Err(bad("the soft limit is above the hard limit".into()));
        }
        Ok(Self { name: crate::text_lossy(&name), soft, hard })
    }
}

impl fmt::Display for Ulimit {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let n = |v: u64| if v == u64::MAX { "-1".to_owned() } else { v.to_string() };
        write!(f, "{}={}:{}", self.name, n(self.soft), n(self.hard))
    }
}

/// `--dns ADDRESS`: an IPv4 or IPv6 address.
pub fn parse_dns(s: &str) -> Result<Text<45>, SpecError> {
    s.trim().parse::<core::net::IpAddr>().map(|ip| crate::text_lossy(&ip.to_string())).map_err(|_| SpecError::Option {
        flag: "--dns",
        input: s.to_owned(),
        reason: "not an IP address, e.g. 1.1.1.1".into(),
    })
}

/// `--entrypoint "CMD ARG…"`: split at spaces, with single and double quotes kept
/// together, as Docker splits it; `""` is an empty entrypoint.
pub fn parse_entrypoint(s: &str) -> Result<Vec<String>, SpecError> {
    let bad = |reason: &str| SpecError::Option { flag: "--entrypoint", input: s.to_owned(), reason: reason.into() };
    let (mut words, mut word, mut quote, mut started) = (Vec::new(), String::new(), None, false);
    for c in s.chars() {
        match (quote, c) {
            (None, '"' | '\'') => (quote, started) = (Some(c), true),
            (Some(q), c) if c == q => quote = None,
            (None, c) if c.is_whitespace() => {
                if started {
                    words.push(std::mem::take(&mut word));
                    started = false;
                }
            }
            (_, c) => {
                word.push(c);
                started = true;
            }
        }
    }
    if quote.is_some() {
        return Err(bad("a quote is not closed"));
    }
    if started {
        words.push(word);
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mounts_parse_dockers_forms_and_round_trip() {
        let m = Mount::parse("type=volume,source=pgdata,target=/var/lib/postgresql/data").unwrap();
        assert_eq!(
            (m.kind, m.source.as_deref(), &*m.target),
            (MountKind::Volume, Some("pgdata"), "/var/lib/postgresql/data")
        );
        let m = Mount::parse("type=bind,src=/srv/cfg,dst=/etc/app,ro").unwrap();
        assert!(m.read_only && m.kind == MountKind::Bind);
        let m = Mount::parse("type=tmpfs,target=/cache,tmpfs-size=16M,tmpfs-mode=1770").unwrap();
        assert_eq!((m.tmpfs_size, m.tmpfs_mode), (Some(16 << 20), Some(0o1770)));
        let m = Mount::parse("source=data,target=/data,readonly=false").unwrap();
        assert_eq!(m.kind, MountKind::Volume, "Docker's default type");
        assert!(!m.read_only);
        let m =
            Mount::parse("type=volume,source=nfs,target=/d,volume-opt=type=nfs,volume-opt=o=addr=10.0.0.1").unwrap();
        assert_eq!(m.volume_opts.len(), 2);
        for m in [
            "type=volume,source=pgdata,target=/data,readonly",
            "type=tmpfs,target=/t,tmpfs-size=1024,tmpfs-mode=700",
            "type=bind,source=/srv,target=/srv",
        ] {
            let parsed = Mount::parse(m).unwrap();
            assert_eq!(Mount::parse(&parsed.to_string()).unwrap(), parsed, "{m}");
        }
    }

    #[test]
    fn bad_mounts_say_what_is_wrong() {
        let err = |s: &str| Mount::parse(s).unwrap_err().to_string();
        assert!(err("type=volume,source=x1").contains("target is required"));
        assert!(err("type=nfs,target=/x").contains("bind, volume or tmpfs"));
        assert!(err("type=bind,source=rel,target=/x").contains("absolute source"));
        assert!(err("type=bind,source=/srv,target=rel").contains("absolute"));
        assert!(err("type=volume,source=v1,target=/a/../etc").contains("`..`"));
        assert!(err("type=volume,target=/x").contains("anonymous"));
        assert!(err("type=volume,source=../etc,target=/x").contains("volume name"));
        assert!(err("type=volume,source=a/b,target=/x").contains("volume name"));
        assert!(err("type=tmpfs,source=x,target=/x").contains("no source"));
        assert!(err("type=bind,source=/s,target=/x,tmpfs-size=1M").contains("for type=tmpfs"));
        assert!(err("type=tmpfs,target=/x,tmpfs-size=lots").contains("e.g. 64M"));
        assert!(err("type=tmpfs,target=/x,tmpfs-mode=999").contains("octal"));
        assert!(err("type=volume,source=v1,target=/x,volume-opt=colour=red").contains("local driver"));
        assert!(err("type=volume,source=v1,target=/x,volume-driver=nfs").contains("not supported"));
        assert!(err("type=volume,source=v1,target=/x,colour=red").contains("unknown field"));
        assert!(err("type=volume,source=v1,target=/x,readonly=maybe").contains("true or false"));
        assert!(err("type=volume,source=v1,target=/x,bogus").contains("not KEY=VALUE"));
        assert!(!err("target=/x").ends_with('.'));
    }

    #[test]
    fn devices_parse_like_docker() {
        let d = DeviceMapping::parse("/dev/i2c-1").unwrap();
        assert_eq!(d.to_string(), "/dev/i2c-1:/dev/i2c-1:rwm");
        assert_eq!(DeviceMapping::parse("/dev/video0:r").unwrap().to_string(), "/dev/video0:/dev/video0:r");
        assert_eq!(DeviceMapping::parse("/dev/ttyUSB0:/dev/ttyS0").unwrap().to_string(), "/dev/ttyUSB0:/dev/ttyS0:rwm");
        assert_eq!(DeviceMapping::parse("/dev/a:/dev/b:wr").unwrap().permissions.as_str(), "rw");
        let err = |s: &str| DeviceMapping::parse(s).unwrap_err().to_string();
        assert!(err("/etc/passwd").contains("under /dev"));
        assert!(err("/dev/../etc/shadow").contains("under /dev"));
        assert!(err("/dev/a:/etc/a").contains("under /dev"));
        assert!(err("/dev/a:/dev/b:rwx").contains("some of r, w and m"));
        assert!(err("/dev/a:/dev/b:r:w").contains("HOST[:CONTAINER"));
        let d = DeviceMapping::parse("/dev/a:/dev/b:r").unwrap();
        assert_eq!(DeviceMapping::parse(&d.to_string()).unwrap(), d);
    }

    #[test]
    fn capabilities_users_and_groups() {
        assert_eq!(parse_capability("net_admin").unwrap().as_str(), "CAP_NET_ADMIN");
        assert_eq!(parse_capability("CAP_SYS_TIME").unwrap().as_str(), "CAP_SYS_TIME");
        assert_eq!(parse_capability("all").unwrap().as_str(), "ALL");
        assert!(parse_capability("CAP_FLY").unwrap_err().to_string().contains("capabilities(7)"));
        assert!(check_user("1000:1000").is_ok() && check_user("postgres").is_ok());
        assert!(check_user("a:b:c").is_err() && check_user("").is_err() && check_user("x y").is_err());
        assert!(check_group("dialout").is_ok() && check_group("../x").is_err());
    }

    #[test]
    fn only_namespaced_sysctls_are_allowed() {
        assert_eq!(Sysctl::parse("net.core.somaxconn=1024").unwrap().to_string(), "net.core.somaxconn=1024");
        assert_eq!(Sysctl::parse("net/ipv4/ip_forward=1").unwrap().name.as_str(), "net.ipv4.ip_forward");
        assert!(Sysctl::parse("kernel.shmmax=1000000").is_ok());
        assert!(Sysctl::parse("fs.mqueue.msg_max=20").is_ok());
        let err = |s: &str| Sysctl::parse(s).unwrap_err().to_string();
        assert!(err("kernel.panic=1").contains("only namespaced"));
        assert!(err("vm.swappiness=0").contains("only namespaced"));
        assert!(err("net..x=1").contains("dotted"));
        assert!(err("net.x").contains("NAME=VALUE"));
        assert!(err("net.x=").contains("one line"));
        assert!(err("net.x=1\n2").contains("one line"));
        let mut o = ContainerOptions::default();
        o.sysctls.push(Sysctl::parse("net.core.somaxconn=1").unwrap()).unwrap();
        assert!(o.validate(false).is_ok());
        assert!(o.validate(true).unwrap_err().to_string().contains("--network host"));
    }

    #[test]
    fn ulimits_dns_and_entrypoints() {
        let u = Ulimit::parse("nofile=1024:2048").unwrap();
        assert_eq!((u.soft, u.hard), (1024, 2048));
        assert_eq!(Ulimit::parse("memlock=-1").unwrap().to_string(), "memlock=-1:-1");
        assert_eq!(Ulimit::parse(&u.to_string()).unwrap(), u);
        assert!(Ulimit::parse("nofile=10:5").unwrap_err().to_string().contains("above the hard"));
        assert!(Ulimit::parse("files=10").unwrap_err().to_string().contains("unknown limit"));
        assert!(Ulimit::parse("nofile=many").unwrap_err().to_string().contains("not a number"));
        assert_eq!(parse_dns("1.1.1.1").unwrap().as_str(), "1.1.1.1");
        assert_eq!(parse_dns("2001:db8::1").unwrap().as_str(), "2001:db8::1");
        assert!(parse_dns("dns.example").is_err());
        assert_eq!(parse_entrypoint("sh -c 'echo hi there'").unwrap(), ["sh", "-c", "echo hi there"]);
        assert_eq!(parse_entrypoint("").unwrap(), Vec::<String>::new());
        assert_eq!(parse_entrypoint("\"\"").unwrap(), [""]);
        assert!(parse_entrypoint("sh 'x").is_err());
    }

    #[test]
    fn the_whole_set_is_checked_again_when_decoded() {
        let mut o = ContainerOptions::default();
        o.mounts.push(Mount::parse("type=tmpfs,target=/t").unwrap()).unwrap();
        o.mounts.push(Mount::parse("type=volume,source=v1,target=/t").unwrap()).unwrap();
        assert!(o.validate(false).unwrap_err().to_string().contains("target /t"));
        let mut o = ContainerOptions::default();
        // A hostile spec off the wire: a mount that never went through the parser.
        o.mounts
            .push(Mount {
                kind: MountKind::Volume,
                source: Some(BoundedString::try_from("../../etc").unwrap()),
                target: BoundedString::try_from("/x").unwrap(),
                read_only: false,
                volume_opts: BoundedVec::new(),
                tmpfs_size: None,
                tmpfs_mode: None,
            })
            .unwrap();
        assert!(o.validate(false).unwrap_err().to_string().contains("volume name"));
        let mut o = ContainerOptions::default();
        o.cap_add.push(crate::text_lossy("net_admin")).unwrap();
        assert!(o.validate(false).is_err());
        let o = ContainerOptions { workdir: Some(BoundedString::try_from("relative").unwrap()), ..Default::default() };
        assert!(o.validate(false).unwrap_err().to_string().contains("absolute"));
    }
}
