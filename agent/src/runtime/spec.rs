//! The OCI runtime spec for a container, hardened by default the way Docker does it:
//! Docker's default capability set, `no_new_privileges`, masked and read-only `/proc`
//! and `/sys` paths, a read-only `/sys`, a device cgroup that denies every device but
//! the harmless few, Docker's default seccomp profile (see [`super::seccomp`]), cgroup
//! limits from the task.

use oci_spec::runtime::Spec;
use serde_json::json;

use super::bundle::Bundle;
use super::{seccomp, ContainerConfig, NetworkMode, RuntimeError};

/// Docker's default capabilities (moby `oci/caps/defaults.go`).
pub const DEFAULT_CAPABILITIES: [&str; 14] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

const MASKED_PATHS: [&str; 11] = [
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

const READONLY_PATHS: [&str; 5] = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"];

/// CFS period the CPU quota is expressed in (100 ms, the kernel's default).
const CPU_PERIOD_US: u64 = 100_000;

/// The device cgroup: deny every device, then allow what Docker allows. libcgroups adds
/// its own defaults after these (null, zero, full, random, urandom, tty, console, pts,
/// ptmx, tun, and `mknod` of any node, which is harmless when the node can't be opened);
/// the deny-all must come first, or the cgroup keeps the parent's `a *:* rwm`.
fn device_rules() -> serde_json::Value {
    let allow = |kind: &str, major: i64, minor: Option<i64>| match minor {
        Some(minor) => json!({"allow": true, "type": kind, "major": major, "minor": minor, "access": "rwm"}),
        None => json!({"allow": true, "type": kind, "major": major, "access": "rwm"}),
    };
    json!([
        {"allow": false, "access": "rwm"},
        allow("c", 1, Some(3)),   // null
        allow("c", 1, Some(5)),   // zero
        allow("c", 1, Some(7)),   // full
        allow("c", 1, Some(8)),   // random
        allow("c", 1, Some(9)),   // urandom
        allow("c", 5, Some(0)),   // tty
        allow("c", 5, Some(1)),   // console
        allow("c", 5, Some(2)),   // ptmx
        allow("c", 136, None),    // pts/*
        allow("c", 10, Some(229)) // fuse
    ])
}

/// Builds the spec for `config` in `bundle`. `device_cgroup` says whether the board
/// enforces the device cgroup (cgroup v1: yes; v2 would need an eBPF program, which the
/// agent does not load); where it cannot, the seccomp filter forbids making device nodes.
pub fn build(config: &ContainerConfig, bundle: &Bundle, device_cgroup: bool) -> Result<Spec, RuntimeError> {
    let mut namespaces =
        vec![json!({"type": "pid"}), json!({"type": "ipc"}), json!({"type": "uts"}), json!({"type": "mount"})];
    if let NetworkMode::Namespace(path) = &config.network {
        namespaces.push(json!({"type": "network", "path": path}));
    }
    let mut memory = json!({});
    if let Some(limit) = config.memory_limit {
        // swap = limit: memory+swap may not exceed the limit, so a hog is killed rather
        // than pushed to swap on an SD card.
        memory = json!({"limit": limit, "swap": limit});
    }
    let mut cpu = json!({});
    if let Some(millis) = config.cpu_millis {
        cpu = json!({"quota": millis * CPU_PERIOD_US / 1000, "period": CPU_PERIOD_US});
    }
    let caps: Vec<&str> = DEFAULT_CAPABILITIES.to_vec();
    let seccomp = seccomp::section(&config.seccomp, &caps, device_cgroup)
        .map_err(|e| RuntimeError::Spec(e.to_string()))?
        .map(|s| serde_json::to_value(s).expect("a seccomp section serialises"));
    let ro_bind = |source: std::path::PathBuf, dest: &str| json!({"destination": dest, "type": "bind", "source": source, "options": ["rbind", "ro", "nosuid", "nodev", "noexec"]});
    let mut spec = json!({
        "ociVersion": "1.0.2",
        "hostname": config.hostname,
        "root": {"path": bundle.rootfs(), "readonly": false},
        "process": {
            "terminal": false,
            // Docker's umask (runc's default), whatever the agent was started with.
            "user": {"uid": config.uid, "gid": config.gid, "additionalGids": config.additional_gids, "umask": 0o022},
            "args": config.args,
            "env": config.env,
            "cwd": config.cwd,
            "noNewPrivileges": true,
            // No rlimits: the container inherits the agent's, which the board's init system
            // sets; raising them here fails where the agent lacks CAP_SYS_RESOURCE.
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps}
        },
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
            ro_bind(bundle.dir().join("hosts"), "/etc/hosts"),
            ro_bind(bundle.dir().join("hostname"), "/etc/hostname")
        ],
        "linux": {
            "namespaces": namespaces,
            "cgroupsPath": format!("/shoal/{}", config.id),
            "resources": {"memory": memory, "cpu": cpu, "devices": device_rules()},
            "maskedPaths": MASKED_PATHS,
            "readonlyPaths": READONLY_PATHS
        }
    });
    if let Some(seccomp) = seccomp {
        spec["linux"]["seccomp"] = seccomp;
    }
    if let Some(mounts) = spec["mounts"].as_array_mut() {
        // Secrets (the tmpfs directory at /run/secrets) and configs (one file each).
        for f in &config.files {
            mounts.push(ro_bind(f.source.clone(), &f.destination));
        }
    }
    if config.resolv_conf.is_some() {
        // Only when set: a container without one keeps its image's file, as before.
        if let Some(mounts) = spec["mounts"].as_array_mut() {
            mounts.push(ro_bind(bundle.dir().join("resolv.conf"), "/etc/resolv.conf"));
        }
    }
    serde_json::from_value(spec).map_err(|e| RuntimeError::Spec(e.to_string()))
}

/// `/etc/hosts` of a container, as Docker writes it: localhost and the IPv6 names, the
/// container's hostname at each of its own addresses, then the names of its networks.
pub fn hosts_file(config: &ContainerConfig) -> String {
    let mut text = String::from(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\n\
         ff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n",
    );
    if config.addresses.is_empty() {
        // On the host's network: Debian's convention for the machine's own name.
        text.push_str(&format!("127.0.1.1\t{}\n", config.hostname));
    }
    for ip in &config.addresses {
        text.push_str(&format!("{ip}\t{}\n", config.hostname));
    }
    for line in &config.hosts {
        text.push_str(line);
        text.push('\n');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ContainerConfig {
        ContainerConfig {
            stop_signal: 15,
            id: "web.1".into(),
            hostname: "web-1".into(),
            addresses: vec![],
            args: vec!["/bin/httpd".into(), "-f".into()],
            env: vec!["PATH=/bin".into()],
            cwd: "/".into(),
            uid: 0,
            gid: 0,
            additional_gids: vec![0],
            layers: vec![],
            network: NetworkMode::Host,
            memory_limit: Some(64 << 20),
            cpu_millis: Some(500),
            hosts: vec!["10.0.0.5\tdatabase".into()],
            resolv_conf: None,
            files: vec![],
            seccomp: Default::default(),
        }
    }

    #[test]
    fn resolv_conf_is_mounted_only_when_given() {
        let bundle = Bundle::new(std::path::Path::new("/c"), "web.1");
        let has = |c: &ContainerConfig| {
            build(c, &bundle, true)
                .unwrap()
                .mounts()
                .as_ref()
                .unwrap()
                .iter()
                .any(|m| m.destination() == std::path::Path::new("/etc/resolv.conf"))
        };
        assert!(!has(&config()));
        assert!(has(&ContainerConfig { resolv_conf: Some("nameserver 10.88.0.1\n".into()), ..config() }));
    }

    #[test]
    fn the_spec_is_hardened_like_dockers() {
        let bundle = Bundle::new(std::path::Path::new("/c"), "web.1");
        let spec = build(&config(), &bundle, true).unwrap();
        let process = spec.process().as_ref().unwrap();
        assert_eq!(process.no_new_privileges(), Some(true));
        assert_eq!(process.user().umask(), Some(0o022));
        let caps = process.capabilities().as_ref().unwrap().bounding().as_ref().unwrap();
        assert_eq!(caps.len(), DEFAULT_CAPABILITIES.len());
        let linux = spec.linux().as_ref().unwrap();
        assert!(linux.masked_paths().as_ref().unwrap().iter().any(|p| p == "/proc/kcore"));
        let res = linux.resources().as_ref().unwrap();
        assert_eq!(res.memory().as_ref().unwrap().limit(), Some(64 << 20));
        assert_eq!(res.cpu().as_ref().unwrap().quota(), Some(50_000));
        // Host networking: no network namespace of its own.
        assert!(!linux.namespaces().as_ref().unwrap().iter().any(|n| format!("{:?}", n.typ()).contains("Network")));
        // Every device denied first, then the harmless few.
        let devices = res.devices().as_ref().unwrap();
        assert!(!devices[0].allow() && devices[0].major().is_none() && devices[0].access().as_deref() == Some("rwm"));
        assert!(devices[1..].iter().all(|d| d.allow() && d.typ() == Some(oci_spec::runtime::LinuxDeviceType::C)));
        assert!(!devices.iter().any(|d| d.allow() && d.typ() == Some(oci_spec::runtime::LinuxDeviceType::B)));
        // Docker's default seccomp policy: an allow-list, EPERM for the rest.
        let seccomp = linux.seccomp().as_ref().unwrap();
        assert_eq!(seccomp.default_action(), oci_spec::runtime::LinuxSeccompAction::ScmpActErrno);
        let allowed: Vec<&String> = seccomp.syscalls().as_ref().unwrap().iter().flat_map(|s| s.names()).collect();
        assert!(allowed.iter().any(|n| *n == "read") && !allowed.iter().any(|n| *n == "unshare"));
    }

    #[test]
    fn seccomp_can_be_turned_off_or_replaced_and_a_bad_profile_fails_the_create() {
        let bundle = Bundle::new(std::path::Path::new("/c"), "web.1");
        let mut c = config();
        c.seccomp = seccomp::SeccompPolicy::Unconfined;
        assert!(build(&c, &bundle, true).unwrap().linux().as_ref().unwrap().seccomp().is_none());
        // Without a device cgroup, unconfined still keeps device nodes out.
        let v2 = build(&c, &bundle, false).unwrap();
        let kept = v2.linux().as_ref().unwrap().seccomp().clone().expect("a filter for mknod");
        assert_eq!(kept.default_action(), oci_spec::runtime::LinuxSeccompAction::ScmpActAllow);
        assert!(kept.syscalls().as_ref().unwrap().iter().all(|r| r.names().iter().all(|n| n.starts_with("mknod"))));
        c.seccomp = seccomp::SeccompPolicy::Profile(r#"{"defaultAction":"SCMP_ACT_ALLOW"}"#.into());
        let spec = build(&c, &bundle, true).unwrap();
        let s = spec.linux().as_ref().unwrap().seccomp().clone().unwrap();
        assert_eq!(s.default_action(), oci_spec::runtime::LinuxSeccompAction::ScmpActAllow);
        c.seccomp = seccomp::SeccompPolicy::Profile(r#"{"defaultAction":"SCMP_ACT_NOTIFY"}"#.into());
        let err = build(&c, &bundle, true).unwrap_err().to_string();
        assert!(err.contains("SCMP_ACT_NOTIFY"), "{err}");
        c.seccomp = seccomp::SeccompPolicy::Profile("{".into());
        assert!(build(&c, &bundle, true).unwrap_err().to_string().contains("seccomp profile"));
    }

    #[test]
    fn a_prepared_namespace_is_joined_by_path() {
        let mut c = config();
        c.network = NetworkMode::Namespace("/run/shoal/netns/web.1".into());
        let spec = build(&c, &Bundle::new(std::path::Path::new("/c"), "web.1"), true).unwrap();
        let json = serde_json::to_string(&spec).unwrap();
        assert!(json.contains("/run/shoal/netns/web.1"));
        assert!(hosts_file(&c).contains("10.0.0.5\tdatabase"));
        assert!(hosts_file(&c).contains("127.0.1.1\tweb-1\n"));
        c.addresses = vec!["10.88.0.7".parse().unwrap(), "10.0.1.3".parse().unwrap()];
        let hosts = hosts_file(&c);
        assert!(hosts.starts_with("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"), "{hosts}");
        assert!(hosts.contains("ff02::2\tip6-allrouters\n10.88.0.7\tweb-1\n10.0.1.3\tweb-1\n"), "{hosts}");
        assert!(!hosts.contains("127.0.1.1"), "{hosts}");
    }
}
