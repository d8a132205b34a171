//! A task's container options as this board can give them ([`Resolved`]): bind sources
//! found, named volumes made, devices looked up (type and numbers), capabilities
//! computed, and what goes into the OCI spec for each (see [`super::spec`]).
//!
//! [`resolve`] is where the board's own facts come in (a bind source that does not exist
//! fails the task with that reason, as under Docker); the rest is pure. The options came
//! over the wire, so they are checked again here before any path is used.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use shoal_proto::options::{ContainerOptions, MountKind, CAPABILITIES};

use super::RuntimeError;

/// A mount ready for the spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedMount {
    /// Where in the container.
    pub target: String,
    /// `bind` (binds and volumes) or `tmpfs`.
    pub kind: &'static str,
    /// The board path, or `tmpfs`.
    pub source: PathBuf,
    /// Mount options.
    pub options: Vec<String>,
    /// A named volume, filled from the image when it is empty (see
    /// [`crate::volumes::copy_up`]): on every create, as Docker does, so a volume made
    /// for a task that then failed to start is still filled by the next one.
    pub copy_up: bool,
}

/// A device ready for the spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedDevice {
    /// Where in the container.
    pub path: String,
    /// `c` or `b`.
    pub kind: &'static str,
    /// Major number.
    pub major: i64,
    /// Minor number.
    pub minor: i64,
    /// Permission bits of the board's node.
    pub mode: u32,
    /// Owner of the board's node.
    pub uid: u32,
    /// Group of the board's node.
    pub gid: u32,
    /// `r`, `w`, `m` the device cgroup allows.
    pub access: String,
}

/// What the spec is made of, beyond the image, command and limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// Mounts, after the defaults (a mount on a default's target replaces it).
    pub mounts: Vec<ResolvedMount>,
    /// Devices created in the container and allowed by its device cgroup.
    pub devices: Vec<ResolvedDevice>,
    /// `--cap-add`, normalised.
    pub cap_add: Vec<String>,
    /// `--cap-drop`, normalised.
    pub cap_drop: Vec<String>,
    /// Read-only root.
    pub read_only: bool,
    /// PID 1 is shoal's init (see [`super::init`]).
    pub init: bool,
    /// `linux.sysctl`.
    pub sysctls: Vec<(String, String)>,
    /// `process.rlimits`: name (`RLIMIT_NOFILE`), soft, hard.
    pub rlimits: Vec<(String, u64, u64)>,
    /// OCI annotations (the container labels).
    pub annotations: Vec<(String, String)>,
}

impl Default for Resolved {
    fn default() -> Self {
        Self {
            mounts: Vec::new(),
            devices: Vec::new(),
            cap_add: Vec::new(),
            cap_drop: Vec::new(),
            read_only: false,
            init: true,
            sysctls: Vec::new(),
            rlimits: Vec::new(),
            annotations: Vec::new(),
        }
    }
}

/// The annotation that turns shoal's init off (`--no-init`), read by the executor.
pub const NO_INIT_ANNOTATION: &str = "org.shoal.no-init";

/// Resolves `o` on this board: volumes under `volumes` are made on first use, bind
/// sources and devices must exist.
pub fn resolve(o: &ContainerOptions, host_network: bool, volumes: &Path) -> Result<Resolved, RuntimeError> {
    o.validate(host_network).map_err(|e| RuntimeError::Spec(e.to_string()))?;
    let mut out = Resolved { read_only: o.read_only, init: o.init.unwrap_or(true), ..Default::default() };
    for m in &o.mounts {
        let target = m.target.to_string();
        let ro = m.read_only.then(|| "ro".to_owned());
        out.mounts.push(match m.kind {
            MountKind::Bind => {
                let source = PathBuf::from(&*m.source.clone().unwrap_or_default());
                if std::fs::metadata(&source).is_err() {
                    return Err(RuntimeError::Spec(format!(
                        "invalid mount config for type \"bind\": bind source path does not exist: {}",
                        source.display()
                    )));
                }
                let options = ["rbind", "rprivate"].map(String::from).into_iter().chain(ro).collect();
                ResolvedMount { target, kind: "bind", source, options, copy_up: false }
            }
            MountKind::Volume => {
                let (source, _made) =
                    crate::volumes::ensure(volumes, m).map_err(|e| RuntimeError::Spec(e.to_string()))?;
                let options = ["rbind", "rprivate"].map(String::from).into_iter().chain(ro).collect();
                ResolvedMount { target, kind: "bind", source, options, copy_up: true }
            }
            MountKind::Tmpfs => {
                // Docker's tmpfs defaults: no devices, no set-uid, no executables.
                let mut options: Vec<String> = ["nosuid", "nodev", "noexec"].map(String::from).into();
                options.push(format!("mode={:o}", m.tmpfs_mode.unwrap_or(0o1777)));
                if let Some(size) = m.tmpfs_size {
                    options.push(format!("size={size}"));
                }
                options.extend(ro);
                ResolvedMount { target, kind: "tmpfs", source: "tmpfs".into(), options, copy_up: false }
            }
        });
    }
    for d in &o.devices {
        out.devices.push(device(&d.host_path, &d.container_path, &d.permissions)?);
    }
    out.cap_add = o.cap_add.iter().map(|c| c.to_string()).collect();
    out.cap_drop = o.cap_drop.iter().map(|c| c.to_string()).collect();
    out.sysctls = o.sysctls.iter().map(|s| (s.name.to_string(), s.value.to_string())).collect();
    out.rlimits =
        o.ulimits.iter().map(|u| (format!("RLIMIT_{}", u.name.to_ascii_uppercase()), u.soft, u.hard)).collect();
    out.annotations = o.labels.iter().map(|l| (l.key.to_string(), l.value.to_string())).collect();
    if !out.init {
        out.annotations.push((NO_INIT_ANNOTATION.into(), "true".into()));
    }
    Ok(out)
}

/// Looks a device up on the board (following a symlink such as `/dev/serial0`, which
/// the operator chose, not a container).
fn device(host: &str, container: &str, access: &str) -> Result<ResolvedDevice, RuntimeError> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let meta = std::fs::metadata(host).map_err(|e| {
        RuntimeError::Spec(format!("device {host} is not on this board ({e}): check --device or the node's devices"))
    })?;
    let kind = if meta.file_type().is_char_device() {
        "c"
    } else if meta.file_type().is_block_device() {
        "b"
    } else {
        return Err(RuntimeError::Spec(format!("{host} is not a device node: give a character or block device")));
    };
    let rdev = meta.rdev();
    Ok(ResolvedDevice {
        path: container.to_owned(),
        kind,
        major: i64::from(rustix::fs::major(rdev)),
        minor: i64::from(rustix::fs::minor(rdev)),
        mode: meta.mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
        access: access.to_owned(),
    })
}

/// The capability set: Docker's defaults, less `--cap-drop`, plus `--cap-add` (`ALL`
/// in either means every capability), as moby's `TweakCapabilities` does.
pub fn capabilities(defaults: &[&str], add: &[String], drop: &[String]) -> Vec<String> {
    let all = |v: &[String]| v.iter().any(|c| c == "ALL");
    let mut caps: Vec<String> = if all(add) {
        CAPABILITIES.iter().map(|c| c.to_string()).collect()
    } else if all(drop) {
        Vec::new()
    } else {
        defaults.iter().map(|c| c.to_string()).collect()
    };
    if !all(drop) {
        caps.retain(|c| !drop.contains(c));
    }
    for c in add.iter().filter(|c| *c != "ALL") {
        if !caps.contains(c) {
            caps.push(c.clone());
        }
    }
    caps
}

/// The spec's device entries and their cgroup rules.
pub fn device_json(devices: &[ResolvedDevice]) -> (Vec<Value>, Vec<Value>) {
    devices
        .iter()
        .map(|d| {
            (
                json!({"path": d.path, "type": d.kind, "major": d.major, "minor": d.minor,
                       "fileMode": d.mode, "uid": d.uid, "gid": d.gid}),
                json!({"allow": true, "type": d.kind, "major": d.major, "minor": d.minor, "access": d.access}),
            )
        })
        .unzip()
}

/// A `resolv.conf` whose name servers are `dns` (`--dns`), its other lines kept.
pub fn with_nameservers(conf: &str, dns: &[String]) -> String {
    if dns.is_empty() {
        return conf.to_owned();
    }
    let mut out: String = dns.iter().map(|ip| format!("nameserver {ip}\n")).collect();
    for line in conf.lines().filter(|l| !l.trim_start().starts_with("nameserver")) {
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_proto::options::{DeviceMapping, Mount};

    #[test]
    fn capabilities_follow_dockers_rules() {
        let d = ["CAP_CHOWN", "CAP_KILL", "CAP_NET_RAW"];
        let s = |v: &[&str]| v.iter().map(|c| c.to_string()).collect::<Vec<_>>();
        assert_eq!(
            capabilities(&d, &s(&["CAP_NET_ADMIN"]), &s(&["CAP_NET_RAW"])),
            s(&["CAP_CHOWN", "CAP_KILL", "CAP_NET_ADMIN"])
        );
        assert_eq!(capabilities(&d, &s(&["CAP_KILL"]), &s(&["ALL"])), s(&["CAP_KILL"]));
        assert_eq!(capabilities(&d, &s(&["ALL"]), &[]).len(), CAPABILITIES.len());
        assert!(!capabilities(&d, &s(&["ALL"]), &s(&["CAP_SYS_ADMIN"])).contains(&"CAP_SYS_ADMIN".to_string()));
    }

    #[test]
    fn mounts_and_devices_resolve_on_the_board_or_fail_with_the_reason() {
        let dir = std::env::temp_dir().join(format!("shoal-options-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("src")).unwrap();
        let mut o = ContainerOptions::default();
        let src = dir.join("src").display().to_string();
        o.mounts.push(Mount::parse(&format!("type=bind,source={src},target=/cfg,ro")).unwrap()).unwrap();
        o.mounts.push(Mount::parse("type=volume,source=data,target=/data").unwrap()).unwrap();
        o.mounts.push(Mount::parse("type=tmpfs,target=/cache,tmpfs-size=1M").unwrap()).unwrap();
        o.devices.push(DeviceMapping::parse("/dev/null:/dev/sensor:r").unwrap()).unwrap();
        o.init = Some(false);
        let r = resolve(&o, false, &dir.join("volumes")).unwrap();
        assert_eq!(r.mounts[0].options, ["rbind", "rprivate", "ro"]);
        assert_eq!(r.mounts[1].source, dir.join("volumes/data/_data"));
        assert!(r.mounts[1].source.is_dir(), "the volume is made on first use");
        assert_eq!(r.mounts[2].options, ["nosuid", "nodev", "noexec", "mode=1777", "size=1048576"]);
        assert_eq!((r.devices[0].kind, r.devices[0].major, r.devices[0].minor), ("c", 1, 3));
        assert_eq!(r.devices[0].access, "r");
        assert!(r.annotations.contains(&(NO_INIT_ANNOTATION.to_owned(), "true".to_owned())));

        let mut missing = ContainerOptions::default();
        missing.mounts.push(Mount::parse("type=bind,source=/nonexistent/shoal,target=/x").unwrap()).unwrap();
        let e = resolve(&missing, false, &dir).unwrap_err().to_string();
        assert!(e.contains("bind source path does not exist: /nonexistent/shoal"), "{e}");
        let mut missing = ContainerOptions::default();
        missing.devices.push(DeviceMapping::parse("/dev/shoal-no-such-device").unwrap()).unwrap();
        assert!(resolve(&missing, false, &dir).unwrap_err().to_string().contains("not on this board"));
        let mut not_dev = ContainerOptions::default();
        not_dev.devices.push(DeviceMapping::parse("/dev/shm").unwrap()).unwrap();
        assert!(resolve(&not_dev, false, &dir).unwrap_err().to_string().contains("not a device node"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn dns_servers_replace_the_boards() {
        let conf = "nameserver 10.0.0.1\nsearch lab\noptions ndots:0\n";
        assert_eq!(with_nameservers(conf, &["1.1.1.1".into()]), "nameserver 1.1.1.1\nsearch lab\noptions ndots:0\n");
        assert_eq!(with_nameservers(conf, &[]), conf);
    }
}
