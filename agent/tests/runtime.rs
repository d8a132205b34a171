//! The libcontainer runtime with real containers (as root): a busybox layer built from
//! the host's static busybox, overlay root filesystems, the shim and the init.

mod common;
use common::free_port;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use shoal_agent::runtime::seccomp::SeccompPolicy;
use shoal_agent::runtime::{ContainerConfig, ContainerStatus, LibcontainerRuntime, NetworkMode, Runtime};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A scratch area with a busybox layer and a runtime over it; removed on drop.
struct Lab {
    dir: PathBuf,
    layer: PathBuf,
}

impl Lab {
    fn new(name: &str) -> Self {
        common::require_root();
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("shoal-rt-{}-{name}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let layer = dir.join("layer");
        std::fs::create_dir_all(layer.join("bin")).unwrap();
        std::fs::create_dir_all(layer.join("www")).unwrap();
        std::fs::create_dir_all(layer.join("tmp")).unwrap();
        let busybox =
            ["/bin/busybox", "/usr/bin/busybox"].into_iter().find(|p| Path::new(p).exists()).expect("busybox-static");
        std::fs::copy(busybox, layer.join("bin/busybox")).unwrap();
        for applet in
            ["sh", "httpd", "sleep", "head", "tr", "echo", "cat", "true", "wc", "grep", "mknod", "dd", "unshare"]
        {
            std::os::unix::fs::symlink("busybox", layer.join("bin").join(applet)).unwrap();
        }
        std::fs::write(layer.join("www/index.html"), "hello from a shoal container\n").unwrap();
        Self { dir, layer }
    }

    fn runtime(&self) -> LibcontainerRuntime {
        LibcontainerRuntime::new(
            self.dir.join("containers"),
            self.dir.join("state"),
            PathBuf::from(env!("CARGO_BIN_EXE_shoal-agent")),
        )
    }

    fn config(&self, id: &str, args: &[&str]) -> ContainerConfig {
        ContainerConfig {
            stop_signal: 15,
            id: id.to_owned(),
            hostname: id.replace('.', "-"),
            addresses: vec![],
            args: args.iter().map(|s| s.to_string()).collect(),
            env: vec!["PATH=/bin".into()],
            cwd: "/".into(),
            uid: 0,
            gid: 0,
            additional_gids: vec![0],
            layers: vec![self.layer.clone()],
            network: NetworkMode::Host,
            memory_limit: None,
            cpu_millis: None,
            hosts: vec![],
            resolv_conf: None,
            files: vec![],
            seccomp: Default::default(),
            options: Default::default(),
        }
    }

    fn log(&self, id: &str) -> String {
        std::fs::read_to_string(self.dir.join("containers").join(id).join("container.log")).unwrap_or_default()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("kept {} for a post-mortem", self.dir.display());
            return;
        }
        let rt = self.runtime();
        for id in rt.list().unwrap_or_default() {
            let _ = rt.stop(&id, Duration::from_millis(100));
            let _ = rt.delete(&id);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn id(name: &str) -> String {
    format!("{name}-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Checks `done` every 20 ms until it holds; fails with `what` once `timeout` has passed.
fn wait_until(timeout: Duration, what: impl Fn() -> String, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "{} (after {timeout:?})", what());
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_exit(rt: &LibcontainerRuntime, id: &str, timeout: Duration) -> i32 {
    wait_exit_every(rt, id, timeout, Duration::from_millis(20))
}

/// The exit code of `id` once recorded, looked for every `every`.
fn wait_exit_every(rt: &LibcontainerRuntime, id: &str, timeout: Duration, every: Duration) -> i32 {
    let deadline = Instant::now() + timeout;
    loop {
        if let ContainerStatus::Exited { code, .. } = rt.status(id).unwrap() {
            return code;
        }
        assert!(Instant::now() < deadline, "{id} did not exit within {timeout:?}");
        std::thread::sleep(every);
    }
}

#[test]
#[ignore = "needs root"]
fn a_stop_sends_the_containers_stop_signal_first() {
    let lab = Lab::new("stopsig");
    let rt = lab.runtime();
    let c = id("sigint");
    // Exits 42 on SIGINT and ignores SIGTERM, as a server with a fast-shutdown signal.
    let script = "trap 'exit 42' INT; trap '' TERM; echo ready; while :; do sleep 0.05; done";
    rt.create(&ContainerConfig { stop_signal: 2, ..lab.config(&c, &["sh", "-c", script]) }).unwrap();
    rt.start(&c).unwrap();
    wait_until(Duration::from_secs(5), || "the script never started".into(), || lab.log(&c).contains("ready"));
    let t = Instant::now();
    assert_eq!(rt.stop(&c, Duration::from_secs(10)).unwrap(), 42, "SIGINT was not sent first");
    assert!(t.elapsed() < Duration::from_secs(2), "stop took {:?}", t.elapsed());
    rt.delete(&c).unwrap();
}

#[test]
#[ignore = "needs root"]
fn httpd_answers_and_a_stop_reports_143() {
    let lab = Lab::new("httpd");
    let rt = lab.runtime();
    let port = free_port().to_string();
    let c = id("web");
    rt.create(&lab.config(&c, &["httpd", "-f", "-p", &port, "-h", "/www"])).unwrap();
    let pid = rt.start(&c).unwrap();
    assert!(matches!(rt.status(&c).unwrap(), ContainerStatus::Running { pid: p } if p == pid));
    let deadline = Instant::now() + Duration::from_secs(5);
    let body = loop {
        if let Ok(mut s) = std::net::TcpStream::connect(format!("127.0.0.1:{port}")) {
            s.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).unwrap();
            break out;
        }
        assert!(Instant::now() < deadline, "httpd never answered");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(body.contains("hello from a shoal container"), "{body}");
    let t = Instant::now();
    assert_eq!(rt.stop(&c, Duration::from_secs(10)).unwrap(), 143);
    assert!(t.elapsed() < Duration::from_secs(2), "SIGTERM was not honoured: stop took {:?}", t.elapsed());
    rt.delete(&c).unwrap();
    assert!(rt.list().unwrap().is_empty());
}

#[test]
#[ignore = "needs root"]
fn stdout_and_stderr_are_logged() {
    let lab = Lab::new("logs");
    let rt = lab.runtime();
    let c = id("logs");
    rt.create(&lab.config(&c, &["sh", "-c", "echo hello out; echo hello err >&2; exit 3"])).unwrap();
    rt.start(&c).unwrap();
    assert_eq!(wait_exit(&rt, &c, Duration::from_secs(10)), 3);
    let log = lab.log(&c);
    assert!(log.contains(" stdout hello out"), "{log}");
    assert!(log.contains(" stderr hello err"), "{log}");
}

/// A container on an overlay network gets the board's resolver in its resolv.conf;
/// one without keeps its image's (this layer has none).
#[test]
#[ignore = "needs root"]
fn resolv_conf_is_the_given_one_or_the_images() {
    let lab = Lab::new("resolv");
    let rt = lab.runtime();
    let (with, without) = (id("resolv-with"), id("resolv-without"));
    let mut config = lab.config(&with, &["cat", "/etc/resolv.conf"]);
    config.resolv_conf = Some("nameserver 10.88.0.1\nsearch lan\n".into());
    rt.create(&config).unwrap();
    rt.start(&with).unwrap();
    assert_eq!(wait_exit(&rt, &with, Duration::from_secs(10)), 0, "{}", lab.log(&with));
    let log = lab.log(&with);
    assert!(log.contains(" stdout nameserver 10.88.0.1") && log.contains(" stdout search lan"), "{log}");

    rt.create(&lab.config(&without, &["cat", "/etc/resolv.conf"])).unwrap();
    rt.start(&without).unwrap();
    assert_ne!(wait_exit(&rt, &without, Duration::from_secs(10)), 0, "{}", lab.log(&without));
}

#[test]
#[ignore = "needs root"]
fn a_memory_limit_kills_a_hog() {
    let lab = Lab::new("hog");
    let rt = lab.runtime();
    let c = id("hog");
    let mut config = lab.config(&c, &["sh", "-c", "x=$(head -c 300000000 /dev/zero | tr '\\0' a); echo survived"]);
    config.memory_limit = Some(32 << 20);
    config.cpu_millis = Some(500);
    rt.create(&config).unwrap();
    rt.start(&c).unwrap();
    let quota = std::fs::read_to_string(format!("/sys/fs/cgroup/cpu/shoal/{c}/cpu.cfs_quota_us")).ok();
    let code = wait_exit(&rt, &c, Duration::from_secs(60));
    assert_eq!(code, 137, "the hog should be OOM-killed; log: {}", lab.log(&c));
    assert!(!lab.log(&c).contains("survived"));
    if let Some(q) = quota {
        assert_eq!(q.trim(), "50000", "cpu limit of half a CPU");
    }
}

/// The directories container `c`'s cgroup could have: `shoal/<c>` in every hierarchy
/// under /sys/fs/cgroup (cgroup v1 and the hybrid layout), and in the root (pure v2).
fn cgroup_dirs(c: &str) -> Vec<PathBuf> {
    let root = Path::new("/sys/fs/cgroup");
    let mut dirs = vec![root.join("shoal").join(c)];
    for entry in std::fs::read_dir(root).unwrap().flatten() {
        dirs.push(entry.path().join("shoal").join(c));
    }
    dirs
}

/// Everything a container had on the host goes with its removal: its cgroup in every
/// controller, its overlay mount, its directory and libcontainer's state. And while it
/// runs, its init is in its own cgroup in every v1 controller it belongs to (the cgroup
/// manager finds all the controllers' mounts from one read of mountinfo:
/// patches/libcgroups-v1-mountinfo-once.patch), so a wrong lookup would show here, and
/// its writable layer is a `volatile` overlay.
#[test]
#[ignore = "needs root"]
fn a_deleted_container_leaves_no_cgroup_mount_or_directory() {
    let lab = Lab::new("leaks");
    let rt = lab.runtime();
    let c = id("leaks");
    let mut config = lab.config(&c, &["sh", "-c", "echo ready; exec sleep 1000"]);
    config.memory_limit = Some(64 << 20);
    config.cpu_millis = Some(500);
    rt.create(&config).unwrap();
    let pid = rt.start(&c).unwrap();
    wait_until(Duration::from_secs(5), || "the container never started".into(), || lab.log(&c).contains("ready"));
    let present: Vec<PathBuf> = cgroup_dirs(&c).into_iter().filter(|d| d.is_dir()).collect();
    assert!(!present.is_empty(), "no cgroup of {c} while it runs");
    let own = format!("/shoal/{c}");
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    for line in cgroups.lines() {
        // hierarchy-ID:controllers:path; the named and unified hierarchies are not the
        // v1 manager's.
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next(), parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        if controllers.is_empty() || controllers.starts_with("name=") {
            continue;
        }
        assert_eq!(path, own, "the init is not in its own {controllers} cgroup: {cgroups}");
    }
    // Its layer is mounted `volatile` where the kernel knows the option (5.10+): no sync
    // of the whole data partition when it is unmounted.
    let bundle = lab.dir.join("containers").join(&c);
    let rootfs = format!(" {} ", bundle.join("rootfs").display());
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let overlay = mountinfo.lines().find(|l| l.contains(&rootfs)).expect("the container's overlay is mounted");
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let mut version = release.trim().split(['.', '-']).map(|p| p.parse::<u32>().unwrap_or(0));
    if (version.next().unwrap_or(0), version.next().unwrap_or(0)) >= (5, 10) {
        assert!(overlay.contains("volatile"), "{overlay}");
    }
    if Path::new("/sys/fs/cgroup/memory").is_dir() {
        let limit = std::fs::read_to_string(format!("/sys/fs/cgroup/memory/shoal/{c}/memory.limit_in_bytes")).unwrap();
        assert_eq!(limit.trim(), (64u64 << 20).to_string());
    }

    assert_eq!(rt.stop(&c, Duration::from_secs(5)).unwrap(), 143);
    rt.delete(&c).unwrap();
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mountinfo.contains(&bundle.display().to_string()), "a mount of {c} is left: {mountinfo}");
    assert!(!bundle.exists(), "{} is left", bundle.display());
    // The shim removes the cgroups and libcontainer's state after delete returned.
    let state = lab.dir.join("state").join(&c);
    let kept = || -> Vec<PathBuf> { present.iter().chain([&state]).filter(|d| d.exists()).cloned().collect() };
    wait_until(Duration::from_secs(5), || format!("outlived the container: {:?}", kept()), || kept().is_empty());
    // The directory's contents go in the background, under another name: they go.
    let left = || -> Vec<String> {
        let entries = std::fs::read_dir(lab.dir.join("containers")).unwrap();
        entries.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect()
    };
    wait_until(
        Duration::from_secs(10),
        || format!("left in the containers directory: {:?}", left()),
        || left().is_empty(),
    );
}

/// A container made again under the ID of one just deleted starts, although the old
/// one's shim is still removing its cgroups and state when delete returns: the new
/// start waits for it, rather than failing on the old state or having its processes
/// killed by the old shim's cleanup of "its" cgroup. A stray process in the container's
/// cgroup makes that cleanup last (the shim kills it, and its removal of the cgroup
/// tries again 10 ms later), so the new start comes while the old shim is at work.
#[test]
#[ignore = "needs root"]
fn a_container_made_again_under_a_deleted_ones_id_starts() {
    let lab = Lab::new("again");
    let rt = lab.runtime();
    let c = id("again");
    for round in 0..10 {
        rt.create(&lab.config(&c, &["sleep", "0.2"])).unwrap();
        rt.start(&c).unwrap_or_else(|e| panic!("round {round}: {e}"));
        let procs = cgroup_dirs(&c).into_iter().map(|d| d.join("cgroup.procs")).find(|p| p.exists());
        let procs = procs.expect("the container has a cgroup");
        let mut stray = std::process::Command::new("sleep").arg("100").spawn().unwrap();
        std::fs::write(&procs, stray.id().to_string()).unwrap();
        // Deleted the moment the exit is recorded.
        let code = wait_exit_every(&rt, &c, Duration::from_secs(10), Duration::from_micros(100));
        assert_eq!(code, 0, "round {round}");
        rt.delete(&c).unwrap();
        let _ = stray.kill();
        let _ = stray.wait();
    }
    rt.create(&lab.config(&c, &["true"])).unwrap();
    rt.start(&c).unwrap();
    assert_eq!(wait_exit(&rt, &c, Duration::from_secs(10)), 0);
    rt.delete(&c).unwrap();
    let state = lab.dir.join("state").join(&c);
    let kept = || cgroup_dirs(&c).into_iter().chain([state.clone()]).filter(|d| d.exists()).collect::<Vec<_>>();
    wait_until(Duration::from_secs(5), || format!("left behind: {:?}", kept()), || kept().is_empty());
}

/// A deleted container's directory whose removal was cut short (the agent stopped) is
/// finished by the next runtime over the same directory, and is never taken for a
/// container meanwhile.
#[test]
#[ignore = "needs root"]
fn a_removal_cut_short_is_finished_by_the_next_runtime() {
    let lab = Lab::new("trash");
    let containers = lab.dir.join("containers");
    let trash = containers.join(".removed-old-1");
    std::fs::create_dir_all(trash.join("upper/etc")).unwrap();
    std::fs::write(trash.join("config.json"), "{}").unwrap();
    let rt = lab.runtime();
    assert!(rt.list().unwrap().is_empty());
    wait_until(Duration::from_secs(10), || format!("{} is still there", trash.display()), || !trash.exists());
}

#[test]
#[ignore = "needs root"]
fn a_command_that_does_not_exist_fails_clearly() {
    let lab = Lab::new("missing");
    let rt = lab.runtime();
    let c = id("missing");
    rt.create(&lab.config(&c, &["/no/such/program"])).unwrap();
    let err = rt.start(&c).unwrap_err();
    assert!(err.is_container_fault());
    assert!(err.to_string().contains("executable '/no/such/program' not found"), "{err}");
    // Nothing keeps running; the container can be removed.
    assert!(!matches!(rt.status(&c).unwrap(), ContainerStatus::Running { .. }));
    rt.delete(&c).unwrap();
}

#[test]
#[ignore = "needs root"]
fn a_restarted_agent_takes_back_running_and_exited_containers() {
    let lab = Lab::new("adopt");
    let (long, short) = (id("long"), id("short"));
    {
        let rt = lab.runtime();
        rt.create(&lab.config(&long, &["sleep", "1000"])).unwrap();
        rt.start(&long).unwrap();
        rt.create(&lab.config(&short, &["sh", "-c", "sleep 0.3; exit 7"])).unwrap();
        rt.start(&short).unwrap();
        // The agent goes away here: the runtime (and its shim handles) is dropped.
    }
    std::thread::sleep(Duration::from_millis(800));
    let rt = lab.runtime();
    let mut listed = rt.list().unwrap();
    listed.sort();
    let mut expected = vec![long.clone(), short.clone()];
    expected.sort();
    assert_eq!(listed, expected, "no duplicate, no orphan");
    assert!(matches!(rt.status(&long).unwrap(), ContainerStatus::Running { .. }));
    assert!(
        matches!(rt.status(&short).unwrap(), ContainerStatus::Exited { code: 7, .. }),
        "died while the agent was away"
    );
    assert_eq!(rt.stop(&long, Duration::from_secs(5)).unwrap(), 143);
}

#[test]
#[ignore = "needs root"]
fn a_bad_id_and_a_duplicate_are_refused() {
    let lab = Lab::new("ids");
    let rt = lab.runtime();
    assert!(rt.create(&lab.config("../escape", &["true"])).is_err());
    let c = id("dup");
    rt.create(&lab.config(&c, &["true"])).unwrap();
    assert!(rt.create(&lab.config(&c, &["true"])).is_err());
    rt.delete(&c).unwrap();
}

/// What a container may not do, probed from inside a real one: each line of the script
/// prints `NAME=ok` or `NAME=refused`.
const ESCAPES: &str = "grep '^Seccomp:' /proc/self/status
probe() { name=$1; shift; if \"$@\" >/dev/null 2>&1; then echo $name=ok; else echo $name=refused; fi; }
mknod /tmp/blk b 7 0 2>/dev/null
probe block-device dd if=/tmp/blk of=/dev/null bs=512 count=1
mknod /tmp/kmsg c 1 11 2>/dev/null
probe kmsg dd if=/tmp/kmsg of=/dev/null bs=1 count=0
mknod /tmp/mem c 1 1 2>/dev/null
probe mem dd if=/tmp/mem of=/dev/null bs=1 count=0
probe userns unshare -U -r true
probe userns-mount unshare -U -r -m sh -c 'mount -t tmpfs none /tmp'
probe null dd if=/dev/zero of=/dev/null bs=1 count=1
probe urandom dd if=/dev/urandom of=/dev/null bs=1 count=1
probe fifo mknod /tmp/fifo p
";

fn probes(log: &str) -> std::collections::BTreeMap<String, String> {
    log.lines()
        .filter_map(|l| l.split(" stdout ").nth(1))
        .filter_map(|l| l.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
        .collect()
}

/// Runs [`ESCAPES`] under `policy`; checks the container's `Seccomp:` mode and that each
/// probe in `refused` was refused and each in `allowed` went through.
fn run_probes(name: &str, policy: SeccompPolicy, mode: &str, refused: &[&str], allowed: &[&str]) {
    let lab = Lab::new(name);
    let rt = lab.runtime();
    let c = id(name);
    let mut config = lab.config(&c, &["sh", "-c", ESCAPES]);
    config.seccomp = policy;
    rt.create(&config).unwrap();
    rt.start(&c).unwrap();
    assert_eq!(wait_exit(&rt, &c, Duration::from_secs(10)), 0, "{}", lab.log(&c));
    let log = lab.log(&c);
    assert!(log.contains(&format!("Seccomp:\t{mode}")), "seccomp mode {mode}: {log}");
    let p = probes(&log);
    for (names, want) in [(refused, "refused"), (allowed, "ok")] {
        for probe in names {
            assert_eq!(p.get(*probe).map(String::as_str), Some(want), "{probe}: {log}");
        }
    }
}

#[test]
#[ignore = "needs root"]
fn a_container_cannot_open_host_devices_or_make_user_namespaces() {
    let refused = ["block-device", "kmsg", "mem", "userns", "userns-mount"];
    run_probes("escapes", SeccompPolicy::Default, "2", &refused, &["null", "urandom", "fifo"]);
}

#[test]
#[ignore = "needs root"]
fn seccomp_unconfined_drops_the_filter_but_not_the_device_cgroup() {
    let refused = ["block-device", "kmsg", "mem"];
    run_probes("unconfined", SeccompPolicy::Unconfined, "0", &refused, &["userns", "null", "fifo"]);
}

#[test]
#[ignore = "needs root"]
fn a_profile_the_board_cannot_load_fails_the_create_with_its_reason() {
    let lab = Lab::new("badprofile");
    let rt = lab.runtime();
    let c = id("badprofile");
    let mut config = lab.config(&c, &["true"]);
    config.seccomp = SeccompPolicy::Profile(r#"{"defaultAction":"SCMP_ACT_NOTIFY"}"#.into());
    let err = rt.create(&config).unwrap_err().to_string();
    assert!(err.contains("SCMP_ACT_NOTIFY"), "{err}");
    // A custom profile that refuses one call: the call fails inside, the rest works.
    let c2 = id("custom");
    let mut config = lab.config(&c2, &["sh", "-c", "grep '^Seccomp:' /proc/self/status; mknod /tmp/f p && echo made"]);
    config.seccomp = SeccompPolicy::Profile(
        r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["mknod","mknodat"],"action":"SCMP_ACT_ERRNO","errnoRet":13}]}"#
            .into(),
    );
    rt.create(&config).unwrap();
    rt.start(&c2).unwrap();
    assert_eq!(wait_exit(&rt, &c2, Duration::from_secs(10)), 1, "{}", lab.log(&c2));
    let log = lab.log(&c2);
    assert!(log.contains("Seccomp:\t2") && !log.contains("made") && log.contains("Permission denied"), "{log}");
}

/// Real glibc software (the host's own Python, Java, Node.js and Perl, seen through an
/// overlay of the host's root as the image) runs under the default filter: threads,
/// subprocesses, sockets, the JVM's signal and memory tricks, libuv's io_uring probe.
#[test]
#[ignore = "needs root"]
fn real_programs_run_under_the_default_filter() {
    let lab = Lab::new("real");
    let rt = lab.runtime();
    let script = r#"set -e
python3 -c 'import socket, subprocess, threading, hashlib; s = socket.socket(); s.bind(("127.0.0.1", 0)); t = threading.Thread(target=lambda: None); t.start(); t.join(); print("python", subprocess.run(["true"]).returncode)'
java -Xshare:off -XX:+UseSerialGC -version 2>&1 | head -1
node -e 'require("fs").promises.readFile("/etc/hostname").then(() => console.log("node ok"))'
perl -e 'print "perl ok\n"'
echo all-done"#;
    let mut present = vec![];
    for tool in ["python3", "java", "node", "perl"] {
        present.push(
            std::process::Command::new("sh").args(["-c", &format!("command -v {tool}")]).status().unwrap().success(),
        );
    }
    assert!(present.iter().all(|p| *p), "python3, java, node and perl are on this machine's image");
    let c = id("real");
    let mut config = lab.config(&c, &["/bin/sh", "-c", script]);
    config.layers = vec![PathBuf::from("/")];
    config.env = vec![format!("PATH={}", std::env::var("PATH").unwrap_or_default()), "HOME=/root".into()];
    config.memory_limit = Some(1 << 30);
    rt.create(&config).unwrap();
    rt.start(&c).unwrap();
    let code = wait_exit(&rt, &c, Duration::from_secs(120));
    let log = lab.log(&c);
    assert_eq!(code, 0, "{log}");
    for expected in ["python 0", "version", "node ok", "perl ok", "all-done"] {
        assert!(log.contains(expected), "{expected}: {log}");
    }
}

/// A shim killed while its container runs (a stray `kill -9`, the OOM killer) leaves the
/// container running with no monitor: status "lost". A stop must still stop it — through
/// its cgroup, since its PID is no longer held by anyone — and report SIGKILL's 137, or
/// the agent retries for ever and the container outlives its service (found by
/// tests/chaos.rs, seed 1).
#[test]
#[ignore = "needs root"]
fn a_container_whose_shim_was_killed_is_still_stopped() {
    let lab = Lab::new("lost");
    let lost = id("lost");
    let rt = lab.runtime();
    rt.create(&lab.config(&lost, &["sleep", "1000"])).unwrap();
    let init = rt.start(&lost).unwrap();
    let shim = std::fs::read_to_string(lab.dir.join("containers").join(&lost).join("shim.pid")).unwrap();
    assert!(std::process::Command::new("kill").args(["-9", shim.trim()]).status().unwrap().success());
    wait_until(
        Duration::from_secs(5),
        || format!("{:?}", rt.status(&lost)),
        || matches!(rt.status(&lost).unwrap(), ContainerStatus::Lost),
    );
    assert!(Path::new(&format!("/proc/{init}")).exists(), "the container outlives its shim");

    assert_eq!(rt.stop(&lost, Duration::from_secs(2)).unwrap(), 137);
    wait_until(
        Duration::from_secs(5),
        || format!("the container's init {init} still runs"),
        || !Path::new(&format!("/proc/{init}")).exists(),
    );
    assert!(matches!(rt.status(&lost).unwrap(), ContainerStatus::Exited { code: 137, .. }));
    rt.delete(&lost).unwrap();
    assert!(rt.list().unwrap().is_empty());
}

/// The image's user runs with the groups Docker gives it: its primary group and the
/// groups of the image's `/etc/group` that name it (postgres in ssl-cert, so it can
/// read Debian's snakeoil key, root:ssl-cert 0640).
#[test]
#[ignore = "needs root"]
fn the_images_user_runs_with_its_supplementary_groups() {
    let lab = Lab::new("groups");
    std::fs::create_dir_all(lab.layer.join("etc/private")).unwrap();
    std::fs::write(lab.layer.join("etc/passwd"), "root:x:0:0::/root:/bin/sh\npostgres:x:100:102::/:/bin/sh\n").unwrap();
    std::fs::write(lab.layer.join("etc/group"), "root:x:0:\nssl-cert:x:101:postgres\npostgres:x:102:\n").unwrap();
    let key = lab.layer.join("etc/private/key");
    std::fs::write(&key, "secret\n").unwrap();
    std::os::unix::fs::chown(&key, Some(0), Some(101)).unwrap();
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o640)).unwrap();
    let rt = lab.runtime();
    for (user, groups, reads) in [("postgres", "101 102", true), ("postgres:postgres", "102", false), ("", "0", true)] {
        let c = id("groups");
        let who = shoal_agent::runtime::user::resolve_in_layers(user, std::slice::from_ref(&lab.layer)).unwrap();
        let script = "grep Groups: /proc/self/status; cat /etc/private/key";
        let config = ContainerConfig {
            uid: who.uid,
            gid: who.gid,
            additional_gids: who.groups,
            ..lab.config(&c, &["sh", "-c", script])
        };
        rt.create(&config).unwrap();
        rt.start(&c).unwrap();
        let code = wait_exit(&rt, &c, Duration::from_secs(10));
        let log = lab.log(&c);
        assert!(log.contains(&format!(" stdout Groups:\t{groups}")), "{user:?}: {log}");
        assert_eq!(code == 0 && log.contains(" stdout secret"), reads, "{user:?}: {log}");
        rt.delete(&c).unwrap();
    }
}

/// Docker's working directory and umask: a `WorkingDir` the image lacks is made (root's,
/// 0755) instead of failing the start, and the process runs with umask 0022 whatever
/// the agent's.
#[test]
#[ignore = "needs root"]
fn a_missing_working_dir_is_made_and_the_umask_is_dockers() {
    let lab = Lab::new("cwd");
    let rt = lab.runtime();
    let c = id("cwd");
    let config = ContainerConfig { cwd: "/srv/new/dir".into(), ..lab.config(&c, &["sh", "-c", "pwd; umask"]) };
    rt.create(&config).unwrap();
    rt.start(&c).unwrap();
    assert_eq!(wait_exit(&rt, &c, Duration::from_secs(10)), 0, "{}", lab.log(&c));
    let log = lab.log(&c);
    assert!(log.contains(" stdout /srv/new/dir") && log.contains(" stdout 0022"), "{log}");
    assert!(!lab.layer.join("srv").exists(), "made in the container's own layer, not the image's");
}
