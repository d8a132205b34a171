//! The OCI runtime spec for a container, hardened by default the way Docker does it:
//! Docker's default capability set, `no_new_privileges`, masked and read-only `/proc`
//! and `/sys` paths, a read-only `/sys`, cgroup limits from the task.
//!
//! Not here: seccomp. libcontainer's seccomp support links the C library libseccomp,
//! which would end the agent's pure-Rust static build; see docs/runtime.md.

use oci_spec::runtime::Spec;
use serde_json::json;

use super::bundle::Bundle;
use super::{ContainerConfig, NetworkMode, RuntimeError};

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

/// Builds the spec for `config` in `bundle`.
pub fn build(config: &ContainerConfig, bundle: &Bundle) -> Result<Spec, RuntimeError> {
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
    let ro_bind = |source: std::path::PathBuf, dest: &str| json!({"destination": dest, "type": "bind", "source": source, "options": ["rbind", "ro", "nosuid", "nodev", "noexec"]});
    let spec = json!({
        "ociVersion": "1.0.2",
        "hostname": config.hostname,
        "root": {"path": bundle.rootfs(), "readonly": false},
        "process": {
            "terminal": false,
            "user": {"uid": config.uid, "gid": config.gid},
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
            "resources": {"memory": memory, "cpu": cpu},
            "maskedPaths": MASKED_PATHS,
            "readonlyPaths": READONLY_PATHS
        }
    });
    serde_json::from_value(spec).map_err(|e| RuntimeError::Spec(e.to_string()))
}

/// `/etc/hosts` of a container.
pub fn hosts_file(config: &ContainerConfig) -> String {
    let mut text =
        format!("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{}\n", config.hostname);
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
            id: "web.1".into(),
            hostname: "web-1".into(),
            args: vec!["/bin/httpd".into(), "-f".into()],
            env: vec!["PATH=/bin".into()],
            cwd: "/".into(),
            uid: 0,
            gid: 0,
            layers: vec![],
            network: NetworkMode::Host,
            memory_limit: Some(64 << 20),
            cpu_millis: Some(500),
            hosts: vec!["10.0.0.5\tdatabase".into()],
        }
    }

    #[test]
    fn the_spec_is_hardened_like_dockers() {
        let bundle = Bundle::new(std::path::Path::new("/c"), "web.1");
        let spec = build(&config(), &bundle).unwrap();
        let process = spec.process().as_ref().unwrap();
        assert_eq!(process.no_new_privileges(), Some(true));
        let caps = process.capabilities().as_ref().unwrap().bounding().as_ref().unwrap();
        assert_eq!(caps.len(), DEFAULT_CAPABILITIES.len());
        let linux = spec.linux().as_ref().unwrap();
        assert!(linux.masked_paths().as_ref().unwrap().iter().any(|p| p == "/proc/kcore"));
        let res = linux.resources().as_ref().unwrap();
        assert_eq!(res.memory().as_ref().unwrap().limit(), Some(64 << 20));
        assert_eq!(res.cpu().as_ref().unwrap().quota(), Some(50_000));
        // Host networking: no network namespace of its own.
        assert!(!linux.namespaces().as_ref().unwrap().iter().any(|n| format!("{:?}", n.typ()).contains("Network")));
    }

    #[test]
    fn a_prepared_namespace_is_joined_by_path() {
        let mut c = config();
        c.network = NetworkMode::Namespace("/run/shoal/netns/web.1".into());
        let spec = build(&c, &Bundle::new(std::path::Path::new("/c"), "web.1")).unwrap();
        let json = serde_json::to_string(&spec).unwrap();
        assert!(json.contains("/run/shoal/netns/web.1"));
        assert!(hosts_file(&c).contains("10.0.0.5\tdatabase"));
    }
}
