//! End-to-end harness: boards are network namespaces on a Linux bridge, each with its
//! own address, running the real `shoal` and `shoal-agent` binaries as separate
//! processes. Everything a [`Lab`] creates (namespaces, veths, the bridge, processes)
//! is removed when it is dropped, also when a test fails.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

static NEXT_LAB: AtomicU32 = AtomicU32::new(0);

/// The file [`Host::fill_disk`] fills a board's disk with.
const FILL_FILE: &str = "chaos-fill";

/// Every PID on the machine.
fn pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
        .collect()
}

/// The directories that hold the boards' container cgroups (`<root>/<container id>`):
/// cgroup v2's single tree, or each v1 controller's.
fn cgroup_roots() -> Vec<PathBuf> {
    let mut roots = vec![PathBuf::from("/sys/fs/cgroup/shoal"), PathBuf::from("/sys/fs/cgroup/unified/shoal")];
    for e in std::fs::read_dir("/sys/fs/cgroup").into_iter().flatten().flatten() {
        roots.push(e.path().join("shoal"));
    }
    roots.sort();
    roots.dedup();
    roots.into_iter().filter(|r| r.is_dir()).collect()
}

/// The PIDs in container `id`'s cgroups, in every hierarchy (v1 has one per controller).
fn cgroup_pids(id: &std::ffi::OsStr) -> Vec<String> {
    cgroup_roots()
        .iter()
        .flat_map(|root| {
            std::fs::read_to_string(root.join(id).join("cgroup.procs"))
                .unwrap_or_default()
                .lines()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// IDs of the containers on the machine that have processes, by their cgroups (v2, or
/// v1's pids controller).
pub fn running_container_ids() -> Vec<String> {
    let roots = ["/sys/fs/cgroup/shoal", "/sys/fs/cgroup/pids/shoal"];
    let Some(dirs) = roots.iter().find_map(|r| std::fs::read_dir(r).ok()) else { return Vec::new() };
    dirs.flatten()
        .filter(|d| !std::fs::read_to_string(d.path().join("cgroup.procs")).unwrap_or_default().trim().is_empty())
        .map(|d| d.file_name().to_string_lossy().into_owned())
        .collect()
}

/// Directory holding the built binaries (`SHOAL_BIN_DIR`, else `target/debug`).
pub fn bin_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("SHOAL_BIN_DIR") {
        return dir.into();
    }
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("target"));
    target.join("debug")
}

/// Path of a built binary, with a clear failure when it is missing.
pub fn bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.exists(),
        "{} is missing: build the binaries first (`cargo build --bins`, as scripts/test.sh does)",
        path.display()
    );
    path
}

/// Fails the test, saying why, unless it runs as root. End-to-end tests are marked
/// `#[ignore = "needs root"]`; `scripts/test.sh` runs them as root with `--include-ignored`.
pub fn require_root() {
    let root = Command::new("id").arg("-u").output().map(|o| o.stdout.starts_with(b"0")).unwrap_or(false);
    assert!(root, "end-to-end tests need root (network namespaces): run them as root, as scripts/test.sh does");
}

fn sh(args: &[&str]) -> Result<()> {
    let out = Command::new(args[0]).args(&args[1..]).output().with_context(|| format!("running {args:?}"))?;
    if !out.status.success() {
        bail!("{args:?} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// One board (or the manager's host): a network namespace with one address.
pub struct Host {
    /// Namespace name.
    pub ns: String,
    /// Its address on the lab bridge.
    pub ip: String,
    /// The bridge-side veth, to cut its cable.
    veth_host: String,
    /// Its data directory.
    pub data_dir: PathBuf,
    /// Where its processes log.
    log_dir: PathBuf,
}

/// A running process in a host, killed on drop.
pub struct Proc {
    child: Option<Child>,
    /// Where its stderr/stdout go.
    pub log: PathBuf,
}

impl Proc {
    /// Kills it with SIGKILL (a power cut) and reaps it.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends SIGTERM and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").arg("-TERM").arg(c.id().to_string()).status();
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits for the process to exit by itself, returning its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut()?;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status.code().unwrap_or(-1));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Its process ID while it runs (the program itself: `nsenter` execs it).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Its resident memory in bytes (`VmRSS`), while it runs.
    pub fn rss(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        let kb: u64 =
            status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.trim().trim_end_matches("kB").trim().parse().ok()?;
        Some(kb * 1024)
    }

    /// What it logged so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

impl Host {
    fn command(&self, program: &Path, args: &[&str]) -> Command {
        let mut c = Command::new("nsenter");
        // nsenter joins only the network namespace. `ip netns exec` would also give the
        // process a private mount namespace with a fresh /sys lacking /sys/fs/cgroup, where
        // an agent could not create containers; a real board has one namespace of each.
        c.arg(format!("--net=/run/netns/{}", self.ns)).arg("--").arg(program).args(args);
        // `SHOAL_TEST_LOG=debug` turns up what the lab's processes log.
        let log = std::env::var("SHOAL_TEST_LOG").unwrap_or_else(|_| "info,quinn=warn".into());
        c.env("SHOAL_DATA_DIR", &self.data_dir).env("SHOAL_LOG", log).env("NO_COLOR", "1");
        c
    }

    /// Runs a command to completion in this host.
    pub fn run(&self, program: &str, args: &[&str]) -> Output {
        self.command(&bin(program), args).stdin(Stdio::null()).output().expect("spawn nsenter")
    }

    /// Runs a command to completion in this host with `input` on its standard input.
    pub fn run_with_input(&self, program: &str, args: &[&str], input: &[u8]) -> Output {
        let mut child = self
            .command(&bin(program), args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn nsenter");
        let mut stdin = child.stdin.take().expect("a stdin pipe");
        let input = input.to_vec();
        let writer = std::thread::spawn(move || std::io::Write::write_all(&mut stdin, &input));
        let out = child.wait_with_output().expect("waiting for nsenter");
        let _ = writer.join();
        out
    }

    /// `shoal image ls` on this host, as rows of column → value.
    pub fn image_ls(&self) -> Vec<std::collections::HashMap<String, String>> {
        let text = self.shoal(&["image", "ls"]);
        assert!(text.lines().next().is_some(), "`image ls` printed no header");
        parse_table(&text, &["REPOSITORY", "TAG", "DIGEST", "PLATFORMS", "SIZE", "NODES"])
    }

    /// `shoal ARGS` here; panics with its output when it fails.
    pub fn shoal(&self, args: &[&str]) -> String {
        let out = self.run("shoal", args);
        assert!(out.status.success(), "shoal {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Starts a long-running process here, logging to a file.
    pub fn spawn(&self, program: &str, args: &[&str]) -> Proc {
        self.spawn_env(program, args, &[])
    }

    /// As [`Host::spawn`], with extra environment variables (e.g. the agent's test-only
    /// clock offset).
    pub fn spawn_env(&self, program: &str, args: &[&str], env: &[(&str, &str)]) -> Proc {
        self.spawn_at(&bin(program), program, args, env)
    }

    /// As [`Host::spawn`], for the binary at `exe` rather than the built one: e.g. a
    /// board's own copy of its agent, which `shoal node upgrade` replaces in place.
    pub fn spawn_exe(&self, exe: &Path, args: &[&str]) -> Proc {
        let name = exe.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        self.spawn_at(exe, &name, args, &[])
    }

    fn spawn_at(&self, exe: &Path, program: &str, args: &[&str], env: &[(&str, &str)]) -> Proc {
        std::fs::create_dir_all(&self.log_dir).expect("log dir");
        let n = NEXT_LAB.fetch_add(1, Ordering::Relaxed);
        let log = self.log_dir.join(format!("{}-{program}-{n}.log", self.ns));
        let file = std::fs::File::create(&log).expect("log file");
        let child = self
            .command(exe, args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log file"))
            .stderr(file)
            .spawn()
            .expect("spawn nsenter");
        Proc { child: Some(child), log }
    }

    /// Pulls this host's cable: its link to the bridge goes down.
    pub fn cut_link(&self) {
        sh(&["ip", "link", "set", &self.veth_host, "down"]).expect("link down");
    }

    /// Bytes its link has carried both ways so far, read at the bridge's end (what a
    /// metered link would bill).
    pub fn link_bytes(&self) -> u64 {
        let read = |what: &str| {
            std::fs::read_to_string(format!("/sys/class/net/{}/statistics/{what}", self.veth_host))
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(0)
        };
        read("rx_bytes") + read("tx_bytes")
    }

    /// Plugs the cable back in.
    pub fn restore_link(&self) {
        sh(&["ip", "link", "set", &self.veth_host, "up"]).expect("link up");
    }

    /// Limits this host's cable to `kbit` kbit/s each way (a token bucket on both ends of
    /// its veth, at most ~0.2 s of queue), as a slow radio link would.
    pub fn shape(&self, kbit: u32) {
        let rate = format!("{kbit}kbit");
        sh(&[
            "tc",
            "qdisc",
            "replace",
            "dev",
            &self.veth_host,
            "root",
            "tbf",
            "rate",
            &rate,
            "burst",
            "8kb",
            "latency",
            "200ms",
        ])
        .expect("shape the bridge side");
        sh(&[
            "tc", "-n", &self.ns, "qdisc", "replace", "dev", "eth0", "root", "tbf", "rate", &rate, "burst", "8kb",
            "latency", "200ms",
        ])
        .expect("shape the board side");
    }

    /// Bytes and packets through this host's cable so far, both directions together
    /// (the bridge-side veth's counters, Ethernet headers included).
    pub fn link_counters(&self) -> (u64, u64) {
        let read = |what: &str| {
            let path = format!("/sys/class/net/{}/statistics/{what}", self.veth_host);
            std::fs::read_to_string(&path).ok().and_then(|s| s.trim().parse::<u64>().ok()).unwrap_or(0)
        };
        (read("rx_bytes") + read("tx_bytes"), read("rx_packets") + read("tx_packets"))
    }

    /// Fills this board's disk (see [`Lab::give_disks`]) with one file until the
    /// filesystem says it is full; returns the bytes written.
    pub fn fill_disk(&self) -> u64 {
        use std::io::Write;
        let Ok(mut f) = std::fs::File::create(self.data_dir.join(FILL_FILE)) else { return 0 };
        let chunk = vec![0x5a_u8; 256 * 1024];
        let mut written = 0;
        loop {
            match f.write(&chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => written += n as u64,
            }
        }
        let _ = f.flush();
        written
    }

    /// Frees what [`Host::fill_disk`] took.
    pub fn free_disk(&self) {
        let _ = std::fs::remove_file(self.data_dir.join(FILL_FILE));
    }

    /// The live shims (`shoal-agent shim <id>`) of this board's containers, as (PID,
    /// container ID), sorted by ID. A PID counts only if its command line is that shim's.
    pub fn shims(&self) -> Vec<(u32, String)> {
        let mut shims = Vec::new();
        for e in std::fs::read_dir(self.data_dir.join("agent/containers")).into_iter().flatten().flatten() {
            let id = e.file_name().to_string_lossy().into_owned();
            let Some(pid) = std::fs::read_to_string(e.path().join("shim.pid")).ok().and_then(|p| p.trim().parse().ok())
            else {
                continue;
            };
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            if args.contains(&b"shim".as_slice()) && args.contains(&id.as_bytes()) {
                shims.push((pid, id));
            }
        }
        shims.sort_by(|a, b| a.1.cmp(&b.1));
        shims
    }

    /// Local ports with more than one listening TCP socket in this host's namespace,
    /// with how many: a host port bound twice.
    pub fn ports_bound_twice(&self) -> Vec<(u16, usize)> {
        let out = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.ns))
            .args(["--", "cat", "/proc/net/tcp", "/proc/net/tcp6"])
            .output();
        let text = out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
        let mut count = std::collections::BTreeMap::<u16, usize>::new();
        for line in text.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            // sl local_address rem_address st ...; st 0A is LISTEN.
            if f.len() > 3 && f[3] == "0A" {
                if let Some(port) = f[1].rsplit(':').next().and_then(|p| u16::from_str_radix(p, 16).ok()) {
                    *count.entry(port).or_default() += 1;
                }
            }
        }
        count.into_iter().filter(|(_, n)| *n > 1).collect()
    }
}

/// A set of hosts on one bridge. `hosts[0]` is meant for the manager.
pub struct Lab {
    tag: String,
    bridge: String,
    /// The hosts.
    pub hosts: Vec<Host>,
    /// Scratch directory (data dirs, logs), kept when a test fails for post-mortems.
    pub dir: PathBuf,
    /// Data dirs that are mount points of a small filesystem of their own ([`Lab::give_disks`]).
    disks: Vec<PathBuf>,
    /// The frozen-able filesystem under a board's disk, and that disk ([`Lab::give_stalling_disk`]).
    stalling: Option<(PathBuf, PathBuf)>,
    /// Keep the scratch directory even when the test passes ([`Lab::keep_logs`]).
    keep: bool,
}

impl Lab {
    /// Creates `n` hosts on a fresh bridge in a fresh /24.
    pub fn new(n: usize) -> Result<Self> {
        require_root();
        let seq = NEXT_LAB.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let tag = format!("s{}{}", pid % 10_000, seq);
        let subnet = 10 + (pid as usize * 7 + seq as usize) % 200;
        let dir = std::env::temp_dir().join(format!("shoal-e2e-{tag}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let bridge = format!("{tag}br");
        let mut lab = Self {
            tag: tag.clone(),
            bridge: bridge.clone(),
            hosts: Vec::new(),
            dir: dir.clone(),
            disks: Vec::new(),
            stalling: None,
            keep: false,
        };
        // A MAC set by hand: a bridge without one takes its lowest port's, and changes it
        // when that port goes (a QEMU board's tap), leaving the others a stale neighbour
        // entry for 10.251.x.254 (the agent's board bridge had this bug: see
        // `ensure_bridge`).
        let mac = format!("02:42:0a:fb:{subnet:02x}:fe");
        sh(&["ip", "link", "add", &bridge, "address", &mac, "type", "bridge"])?;
        sh(&["ip", "addr", "add", &format!("10.251.{subnet}.254/24"), "dev", &bridge])?;
        sh(&["ip", "link", "set", &bridge, "up"])?;
        for i in 0..n {
            let ns = format!("{tag}n{i}");
            let veth_host = format!("{tag}v{i}");
            let ip = format!("10.251.{subnet}.{}", i + 1);
            sh(&["ip", "netns", "add", &ns])?;
            sh(&["ip", "link", "add", &veth_host, "type", "veth", "peer", "name", "eth0", "netns", &ns])?;
            sh(&["ip", "link", "set", &veth_host, "master", &bridge, "up"])?;
            sh(&["ip", "-n", &ns, "addr", "add", &format!("{ip}/24"), "dev", "eth0"])?;
            sh(&["ip", "-n", &ns, "link", "set", "eth0", "up"])?;
            sh(&["ip", "-n", &ns, "link", "set", "lo", "up"])?;
            lab.hosts.push(Host {
                ns,
                ip,
                veth_host,
                data_dir: dir.join(format!("node{i}")),
                log_dir: dir.join("logs"),
            });
        }
        Ok(lab)
    }
}

impl Lab {
    /// A UDP relay on the lab's bridge address towards `to`, delaying and dropping what
    /// passes it (see [`Relay`]): a board that joins through [`Relay::addr`] has all its
    /// traffic with the manager go through it.
    pub fn relay(&self, to: std::net::SocketAddr) -> Relay {
        let bridge_ip = self.hosts[0].ip.rsplit_once('.').map(|(net, _)| format!("{net}.254")).expect("lab address");
        Relay::start(&bridge_ip, to)
    }

    /// The lab's unique tag: its namespaces, veths and bridge start with it. Names made
    /// from it (services, containers) can't clash with a parallel test's.
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// Keeps the scratch directory (logs, data dirs) after the lab is dropped, also when
    /// the test passes: for a failure the test reports without panicking.
    pub fn keep_logs(&mut self) {
        self.keep = true;
    }

    /// Gives every board (`hosts[1..]`) a data dir of its own `mib`-MiB tmpfs, so that a
    /// test can fill one board's disk ([`Host::fill_disk`]) without touching the
    /// others or the machine's. Call it before anything runs on the boards.
    pub fn give_disks(&mut self, mib: u32) -> Result<()> {
        for h in &self.hosts[1..] {
            std::fs::create_dir_all(&h.data_dir)?;
            let size = format!("size={mib}m,mode=0755");
            sh(&["mount", "-t", "tmpfs", "-o", &size, &format!("{}disk", self.tag), &h.data_dir.to_string_lossy()])?;
            self.disks.push(h.data_dir.clone());
        }
        Ok(())
    }

    /// Gives board `board` a data dir on an ext4 filesystem of `mib` MiB whose disk can
    /// stall ([`Lab::stall_disk`]) as an SD card under load does: writes into the page
    /// cache go on, but whatever must reach the disk (`fsync`, a journal commit,
    /// writeback) waits until the stall ends. The filesystem is a loop device whose
    /// backing file lives on a second loop-mounted ext4; freezing that outer one
    /// (`fsfreeze`) holds every write the inner disk makes. Call it before anything runs
    /// on the board.
    pub fn give_stalling_disk(&mut self, board: usize, mib: u32) -> Result<()> {
        let outer = self.dir.join("stalling-outer");
        std::fs::create_dir_all(&outer)?;
        let outer_image = self.dir.join("stalling-outer.img");
        let size = |mib: u32| format!("{mib}M");
        sh(&["truncate", "-s", &size(mib + 16), &outer_image.to_string_lossy()])?;
        sh(&["mkfs.ext4", "-q", "-F", &outer_image.to_string_lossy()])?;
        sh(&["mount", "-o", "loop", &outer_image.to_string_lossy(), &outer.to_string_lossy()])?;
        let data_dir = self.hosts[board].data_dir.clone();
        self.stalling = Some((outer.clone(), data_dir.clone()));
        let inner_image = outer.join("disk.img");
        sh(&["truncate", "-s", &size(mib), &inner_image.to_string_lossy()])?;
        sh(&["mkfs.ext4", "-q", "-F", &inner_image.to_string_lossy()])?;
        std::fs::create_dir_all(&data_dir)?;
        sh(&["mount", "-o", "loop", &inner_image.to_string_lossy(), &data_dir.to_string_lossy()])?;
        Ok(())
    }

    /// Stalls (`true`) or resumes (`false`) the disk of [`Lab::give_stalling_disk`].
    pub fn stall_disk(&self, stalled: bool) {
        let (outer, _) = self.stalling.as_ref().expect("a board with a stalling disk");
        let flag = if stalled { "-f" } else { "-u" };
        sh(&["fsfreeze", flag, &outer.to_string_lossy()]).expect("fsfreeze");
    }

    /// Ends a stall of [`Lab::stall_disk`] if one is on (at the lab's end: a process
    /// waiting on a stalled disk can't even die).
    fn end_stall(&self) {
        if let Some((outer, _)) = &self.stalling {
            let _ = Command::new("fsfreeze").arg("-u").arg(outer).stderr(std::process::Stdio::null()).status();
        }
    }

    /// What the lab's boards left behind that they should have removed themselves: the
    /// processes, cgroups, mounts, network namespaces, veths and runtime state of
    /// containers whose ID starts with one of `prefixes` (service names), and any process
    /// still running from the lab's directory. Call it once the services are removed and
    /// the agents stopped, before the lab is dropped (its drop removes everything by force,
    /// which would hide a leak).
    pub fn leaks(&self, prefixes: &[&str]) -> Vec<String> {
        let ours = |name: &str| prefixes.iter().any(|p| name.starts_with(&format!("{p}.")));
        let mut leaks = Vec::new();
        let dir = self.dir.to_string_lossy().into_owned();
        for pid in pids() {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if cmdline.contains(&dir) {
                leaks.push(format!("process {pid}: {}", cmdline.trim()));
            }
        }
        for root in cgroup_roots() {
            for e in std::fs::read_dir(&root).into_iter().flatten().flatten() {
                if ours(&e.file_name().to_string_lossy()) {
                    leaks.push(format!("cgroup {}", e.path().display()));
                }
            }
        }
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        for line in mounts.lines() {
            let Some(point) = line.split(' ').nth(4) else { continue };
            let under_lab = point.starts_with(&dir) && !self.disks.iter().any(|d| Path::new(point) == d);
            let netns = point.strip_prefix("/run/shoal/netns/").is_some_and(ours);
            if under_lab || netns {
                leaks.push(format!("mount {point}"));
            }
        }
        for e in std::fs::read_dir("/run/shoal/netns").into_iter().flatten().flatten() {
            if ours(&e.file_name().to_string_lossy()) {
                leaks.push(format!("netns file {}", e.path().display()));
            }
        }
        // libcontainer's state: /run/shoal/<hash of the data dir>/<container id>.
        for state in std::fs::read_dir("/run/shoal").into_iter().flatten().flatten() {
            if state.file_name() == "netns" {
                continue;
            }
            for e in std::fs::read_dir(state.path()).into_iter().flatten().flatten() {
                if ours(&e.file_name().to_string_lossy()) {
                    leaks.push(format!("runtime state {}", e.path().display()));
                }
            }
        }
        for h in &self.hosts[1..] {
            // Containers' host-side veths are `sh<hash>` in the board's namespace.
            let out = Command::new("ip").args(["-n", &h.ns, "-o", "link", "show"]).output();
            let out = out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
            for line in out.lines() {
                let name = line.split(':').nth(1).unwrap_or("").trim();
                let name = name.split('@').next().unwrap_or("");
                let hash = name.strip_prefix("sh").unwrap_or("");
                if hash.len() == 12 && hash.bytes().all(|b| b.is_ascii_hexdigit()) {
                    leaks.push(format!("veth {name} on {}", h.ns));
                }
            }
            for e in std::fs::read_dir(h.data_dir.join("agent/containers")).into_iter().flatten().flatten() {
                if ours(&e.file_name().to_string_lossy()) {
                    leaks.push(format!("container dir {}", e.path().display()));
                }
            }
        }
        leaks
    }

    /// What is left of the lab itself after it was dropped: namespaces, links and
    /// mounts named after its tag or under its directory. Empty when the harness cleaned up.
    pub fn remains(tag: &str, dir: &Path) -> Vec<String> {
        let mut left = Vec::new();
        let netns = Command::new("ip").args(["netns", "list"]).output();
        for line in netns.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default().lines() {
            if line.starts_with(tag) {
                left.push(format!("netns {line}"));
            }
        }
        let links = Command::new("ip").args(["-o", "link", "show"]).output();
        for line in links.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default().lines() {
            let name = line.split(':').nth(1).unwrap_or("").trim();
            if name.starts_with(tag) {
                left.push(format!("link {name}"));
            }
        }
        let dir = dir.to_string_lossy();
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        for point in mounts.lines().filter_map(|l| l.split(' ').nth(4)) {
            if point.starts_with(dir.as_ref()) {
                left.push(format!("mount {point}"));
            }
        }
        left
    }

    /// The containers the agents of this lab made (`<data dir>/agent/containers/<id>`).
    fn containers(&self) -> Vec<PathBuf> {
        self.hosts
            .iter()
            .filter_map(|h| std::fs::read_dir(h.data_dir.join("agent/containers")).ok())
            .flat_map(|entries| entries.flatten().map(|e| e.path()))
            // A deleted container's directory on its way out (the agent's `.removed-`
            // prefix): its `pid` file names a process long gone, whose PID may be
            // anyone's now.
            .filter(|p| !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(".removed-")))
            .collect()
    }

    /// Stops every container of the lab's agents and removes what they left outside the
    /// lab directory: containers live in their own network namespaces, so killing the
    /// boards' processes alone would leave them running.
    fn remove_containers(&self) {
        let kill_containers = |containers: &[PathBuf]| {
            for dir in containers {
                // The container's init: its PID namespace, and so the container, dies with it.
                if let Ok(pid) = std::fs::read_to_string(dir.join("pid")) {
                    let _ = Command::new("kill").args(["-9", pid.trim()]).status();
                }
                // And whatever its cgroups hold: a container its shim was still starting
                // when the agent died has no `pid` file yet, but runs in them (seen twice:
                // a container left running for good after a passing test, most likely a
                // task moved onto a board just as the test ended).
                let Some(id) = dir.file_name() else { continue };
                for pid in cgroup_pids(id) {
                    let _ = Command::new("kill").args(["-9", &pid]).status();
                }
            }
        };
        kill_containers(&self.containers());
        // Let the shims record the exits and remove the cgroups.
        std::thread::sleep(Duration::from_millis(300));
        for h in &self.hosts {
            if let Ok(out) = Command::new("ip").args(["netns", "pids", &h.ns]).output() {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    let _ = Command::new("kill").args(["-9", pid]).status();
                }
            }
        }
        // Once more, now that no shim is left to start one: a shim may have finished
        // starting a container after the first pass.
        let containers = self.containers();
        kill_containers(&containers);
        // A cgroup can be removed once its last process is gone, which takes a moment
        // after SIGKILL (before this wait, empty cgroups of killed boards stayed behind).
        let deadline = Instant::now() + Duration::from_secs(2);
        let busy = || containers.iter().filter_map(|d| d.file_name()).any(|id| !cgroup_pids(id).is_empty());
        while busy() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        // A sandbox's namespace file: a bind mount in the shared `/run/shoal/netns`.
        let unmount_netns = |id: &str| {
            let netns = format!("/run/shoal/netns/{id}");
            let _ = Command::new("umount").args(["-l", &netns]).output();
            let _ = std::fs::remove_file(&netns);
        };
        // Sandboxes whose container never came to be, or was deleted before the sandbox
        // (the agent killed in between), listed in each board's address allocations.
        for h in &self.hosts {
            let text = std::fs::read_to_string(h.data_dir.join("agent/net/ipam.json")).unwrap_or_default();
            let allocations: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
            let ids = allocations["by_id"].as_object().map(|m| m.keys().cloned().collect::<Vec<_>>());
            for id in ids.unwrap_or_default() {
                let safe = !id.starts_with('.') && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
                if safe {
                    unmount_netns(&id);
                }
            }
        }
        for dir in &containers {
            let Some(id) = dir.file_name().and_then(|n| n.to_str()) else { continue };
            let _ = Command::new("umount").arg("-l").arg(dir.join("rootfs")).status();
            unmount_netns(id);
            for controller in ["pids", "memory", "cpu,cpuacct", "cpuset", "blkio", "devices", "freezer", "systemd"] {
                let _ = std::fs::remove_dir(format!("/sys/fs/cgroup/{controller}/shoal/{id}"));
            }
            let _ = std::fs::remove_dir(format!("/sys/fs/cgroup/shoal/{id}"));
            // A container's secrets tmpfs, which its agent (killed) did not unmount.
            for root in std::fs::read_dir("/run/shoal").into_iter().flatten().flatten() {
                if root.file_name().to_string_lossy().starts_with("secrets-") {
                    let _ = Command::new("umount").arg("-l").arg(root.path().join(id)).output();
                    let _ = std::fs::remove_dir(root.path().join(id));
                    let _ = std::fs::remove_dir(root.path());
                }
            }
        }
        // The boards' libcontainer state, on /run (each test agent left a directory there
        // for good: hundreds after a few CI runs). No shim is left to write in it.
        for h in &self.hosts {
            let _ = std::fs::remove_dir_all(shoal_link::runtime_state_dir(&h.data_dir));
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.end_stall();
        self.remove_containers();
        for h in &self.hosts {
            // Anything still running in the namespace goes with it.
            if let Ok(out) = Command::new("ip").args(["netns", "pids", &h.ns]).output() {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    let _ = Command::new("kill").args(["-9", pid]).status();
                }
            }
            let _ = Command::new("ip").args(["link", "del", &h.veth_host]).status();
            let _ = Command::new("ip").args(["netns", "del", &h.ns]).status();
        }
        let _ = Command::new("ip").args(["link", "del", &self.bridge]).status();
        if let Some((outer, inner)) = &self.stalling {
            // Lazily, the inner disk before the one holding its image; the loop devices
            // go with their last mount (`-o loop` sets them to clear themselves).
            let _ = Command::new("umount").arg("-l").arg(inner).status();
            let _ = Command::new("umount").arg("-l").arg(outer).status();
        }
        for (i, disk) in self.disks.iter().enumerate() {
            if self.keep || std::thread::panicking() {
                // The disk goes with its tmpfs: keep a copy for the post-mortem (not the
                // containers' root filesystems, other mounts).
                let copy = self.dir.join(format!("node{}-disk", i + 1));
                let _ = Command::new("cp").arg("-a").arg("--one-file-system").arg(disk).arg(&copy).status();
            }
            // Lazily: a container's rootfs under it may still be going away.
            let _ = Command::new("umount").arg("-l").arg(disk).status();
        }
        if !std::thread::panicking() && !self.keep {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("lab {}: logs kept in {}", self.tag, self.dir.display());
        }
    }
}

/// Polls `check` every 50 ms until it returns `Some`, or fails after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `GET path` on `addr` over HTTP/1.0, a new connection each time (500 ms to connect, 1 s
/// to read): the body of a 200, trimmed, or why not. The tests' one HTTP client: the demo
/// app is busybox httpd.
pub fn http_get(addr: std::net::SocketAddr, path: &str) -> Result<String, String> {
    http_get_within(addr, path, Duration::from_millis(500))
}

/// As [`http_get`], with `connect` to connect and twice that to read: an emulated board
/// (QEMU without KVM) answers slower than a namespace.
pub fn http_get_within(addr: std::net::SocketAddr, path: &str, connect: Duration) -> Result<String, String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, connect).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(connect * 2)).map_err(|e| e.to_string())?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes()).map_err(|e| e.to_string())?;
    let mut out = String::new();
    s.read_to_string(&mut out).map_err(|e| e.to_string())?;
    if !out.starts_with("HTTP/1.") || !out.contains(" 200 ") {
        return Err(format!("not a 200: {:?}", out.lines().next()));
    }
    Ok(out.split("\r\n\r\n").nth(1).unwrap_or("").trim().to_owned())
}

/// One row of `shoal node ls`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRow {
    /// ID (without the `*`).
    pub id: String,
    /// Marked `*`.
    pub is_self: bool,
    /// HOSTNAME.
    pub hostname: String,
    /// STATUS.
    pub status: String,
    /// AVAILABILITY.
    pub availability: String,
    /// MANAGER STATUS.
    pub manager_status: String,
    /// ARCH.
    pub arch: String,
    /// VERSION: the agent's, `VERSION+BUILD` (see `shoal_proto::upgrade`).
    pub version: String,
}

/// Parses `node ls` output by its header's column positions.
pub fn parse_node_ls(text: &str) -> Vec<NodeRow> {
    let mut lines = text.lines();
    let Some(header) = lines.next() else { return Vec::new() };
    let cols: Vec<usize> = ["ID", "HOSTNAME", "STATUS", "AVAILABILITY", "MANAGER STATUS", "ARCH", "VERSION"]
        .iter()
        .map(|h| header.find(h).expect("column"))
        .collect();
    lines
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let cell = |i: usize| {
                let end = cols.get(i + 1).copied().unwrap_or(l.len()).min(l.len());
                l.get(cols[i]..end).unwrap_or("").trim().to_owned()
            };
            let id = cell(0);
            NodeRow {
                is_self: id.ends_with('*'),
                id: id.trim_end_matches('*').trim().to_owned(),
                hostname: cell(1),
                status: cell(2),
                availability: cell(3),
                manager_status: cell(4),
                arch: cell(5),
                version: cell(6),
            }
        })
        .collect()
}

/// A manager on `hosts[0]` and agents on the others, all joined.
pub struct Cluster {
    /// The lab (declared first so its processes die before its namespaces).
    pub manager: Proc,
    /// Agents, in host order `hosts[1..]`.
    pub agents: Vec<Proc>,
    /// The worker join token.
    pub token: String,
    /// The lab itself.
    pub lab: Lab,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Before the fields go: dropping an agent waits for it to die, which an agent
        // waiting on a stalled disk can't.
        self.lab.end_stall();
    }
}

impl Cluster {
    /// Starts a manager and `n_agents` agents named node1.. and waits until all are Ready.
    pub fn start(n_agents: usize) -> Result<Self> {
        Self::start_in(Lab::new(n_agents + 1)?)
    }

    /// As [`Cluster::start`], in a lab made beforehand (e.g. with [`Lab::give_disks`]):
    /// `hosts[0]` runs the manager, every other host an agent.
    pub fn start_in(lab: Lab) -> Result<Self> {
        Self::start_in_with(lab, &[])
    }

    /// Starts board `board`'s agent again (`shoal-agent run`), after a kill or a stop.
    pub fn restart_agent(&mut self, board: usize) {
        self.agents[board - 1] = self.lab.hosts[board].spawn("shoal-agent", &["run"]);
    }

    /// Starts the manager again (`shoal manager run`), after a kill or a stop.
    pub fn restart_manager(&mut self) {
        self.manager = self.lab.hosts[0].spawn("shoal", &["manager", "run"]);
    }

    /// The manager's host.
    pub fn manager_host(&self) -> &Host {
        &self.lab.hosts[0]
    }

    /// `node ls`, parsed.
    pub fn nodes(&self) -> Vec<NodeRow> {
        parse_node_ls(&self.manager_host().shoal(&["node", "ls"]))
    }

    /// Waits until node `hostname` has `status`, returning how long it took.
    pub fn wait_status(&self, hostname: &str, status: &str, timeout: Duration) -> Duration {
        let start = Instant::now();
        wait_for(&format!("{hostname} to be {status}"), timeout, || {
            self.nodes().iter().any(|n| n.hostname == hostname && n.status == status).then_some(())
        });
        start.elapsed()
    }

    /// Waits until every node has `status`.
    pub fn wait_status_all(&self, status: &str, timeout: Duration) {
        let expected = self.lab.hosts.len();
        wait_for(&format!("all {expected} nodes to be {status}"), timeout, || {
            let nodes = self.nodes();
            (nodes.len() == expected && nodes.iter().all(|n| n.status == status)).then_some(())
        });
    }
}

/// Parses a `docker ... ls`-style table into rows of column → value, by the positions of
/// `headers` in its first line (cells are left-aligned under their header).
pub fn parse_table(text: &str, headers: &[&str]) -> Vec<std::collections::HashMap<String, String>> {
    let mut lines = text.lines();
    let Some(header) = lines.next() else { return Vec::new() };
    let cols: Vec<usize> =
        headers.iter().map(|h| header.find(h).unwrap_or_else(|| panic!("no {h} in {header:?}"))).collect();
    lines
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            (0..headers.len())
                .map(|i| {
                    let end = cols.get(i + 1).copied().unwrap_or(l.len()).min(l.len());
                    (headers[i].to_owned(), l.get(cols[i].min(l.len())..end).unwrap_or("").trim().to_owned())
                })
                .collect()
        })
        .collect()
}

/// The lab's OCI archive `name` (e.g. `redis.tar`), built by `images/build.sh` when
/// missing or stale (fast when up to date). Named, so images outside the default set
/// (`postgres.tar`) are built by the tests that use them.
pub fn lab_image(name: &str) -> PathBuf {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let stem = name.strip_suffix(".tar").unwrap_or(name);
    let status = Command::new(repo.join("images/build.sh")).arg(stem).status().expect("images/build.sh");
    assert!(status.success(), "images/build.sh failed");
    let path = repo.join("out/images").join(name);
    assert!(path.exists(), "{} was not built", path.display());
    path
}

/// Columns of `shoal service ls`.
pub const SERVICE_LS: [&str; 6] = ["ID", "NAME", "MODE", "REPLICAS", "IMAGE", "PORTS"];
/// Columns of `shoal service ps`.
pub const SERVICE_PS: [&str; 8] = ["ID", "NAME", "IMAGE", "NODE", "DESIRED STATE", "CURRENT STATE", "ERROR", "PORTS"];

impl Cluster {
    /// `service ls`, parsed.
    pub fn service_ls(&self) -> Vec<std::collections::HashMap<String, String>> {
        parse_table(&self.manager_host().shoal(&["service", "ls"]), &SERVICE_LS)
    }

    /// `service ps SERVICE`, parsed.
    pub fn service_ps(&self, service: &str) -> Vec<std::collections::HashMap<String, String>> {
        parse_table(&self.manager_host().shoal(&["service", "ps", service]), &SERVICE_PS)
    }

    /// The `REPLICAS` cell of `service`, e.g. `3/3`.
    pub fn replicas(&self, service: &str) -> String {
        self.service_ls().into_iter().find(|r| r["NAME"] == service).map(|r| r["REPLICAS"].clone()).unwrap_or_default()
    }

    /// The `Seccomp:` mode (0 none, 2 filter) of the init process of each running
    /// container of `service` on this lab's boards, read from `/proc`.
    pub fn seccomp_modes(&self, service: &str) -> Vec<String> {
        self.lab
            .containers()
            .into_iter()
            .filter(|dir| dir.file_name().is_some_and(|n| n.to_string_lossy().starts_with(&format!("{service}."))))
            .filter_map(|dir| std::fs::read_to_string(dir.join("pid")).ok())
            .filter_map(|pid| std::fs::read_to_string(format!("/proc/{}/status", pid.trim())).ok())
            .filter_map(|status| status.lines().find_map(|l| l.strip_prefix("Seccomp:").map(|v| v.trim().to_owned())))
            .collect()
    }

    /// Kills every process of a board, as a power cut would: its agent first, then its
    /// containers (through their init PIDs: each lives in a namespace of its own) and
    /// whatever else runs in its namespace. The agent goes first because a board dies
    /// whole: with its containers killed one `kill` at a time before it, the agent could
    /// still tell the manager of a container's exit in between (seen: a task reported
    /// Failed, then replaced after its restart delay instead of at once as an orphan).
    pub fn power_cut(&mut self, board: usize) {
        self.agents[board - 1].kill9();
        let host = &self.lab.hosts[board];
        if let Ok(entries) = std::fs::read_dir(host.data_dir.join("agent/containers")) {
            for e in entries.flatten() {
                if let Ok(pid) = std::fs::read_to_string(e.path().join("pid")) {
                    let _ = Command::new("kill").args(["-9", pid.trim()]).status();
                }
            }
        }
        if let Ok(out) = Command::new("ip").args(["netns", "pids", &host.ns]).output() {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = Command::new("kill").args(["-9", pid]).status();
            }
        }
    }
}

/// Containers of `service` that have processes, counted by their cgroups.
pub fn running_containers(service: &str) -> usize {
    // cgroup v2 keeps one tree; v1 one per controller (pids is enough to count).
    let roots = ["/sys/fs/cgroup/shoal", "/sys/fs/cgroup/pids/shoal", "/sys/fs/cgroup/memory/shoal"];
    let Some(dirs) = roots.iter().find_map(|r| std::fs::read_dir(r).ok()) else { return 0 };
    dirs.flatten()
        .filter(|d| d.file_name().to_string_lossy().starts_with(&format!("{service}.")))
        .filter(|d| !std::fs::read_to_string(d.path().join("cgroup.procs")).unwrap_or_default().trim().is_empty())
        .count()
}

/// A board that is a QEMU virtual machine running Debian's real ARM kernel
/// (`scripts/qemu-board.sh`), its NIC a tap on the lab's bridge. Powered off (QEMU
/// killed) and its tap removed when dropped.
pub struct QemuBoard {
    /// QEMU itself (the script execs it): killing it is pulling the board's plug.
    pub qemu: Proc,
    /// Its address on the lab bridge.
    pub ip: String,
    /// The hostname it joined with.
    pub hostname: String,
    tap: String,
}

impl QemuBoard {
    /// Powers the board off at once: QEMU gets SIGKILL.
    pub fn power_off(&mut self) {
        self.qemu.kill9();
    }

    /// Its console so far (kernel, init and agent output).
    pub fn console(&self) -> String {
        self.qemu.output()
    }
}

impl Drop for QemuBoard {
    fn drop(&mut self) {
        self.qemu.kill9();
        let _ = Command::new("ip").args(["link", "del", &self.tap]).status();
    }
}

/// The static agent a QEMU board of `target` runs: the newer of the release build
/// `scripts/build-agents.sh` leaves in out/agents/ and the `static-check` build
/// (`scripts/build-agents.sh --check`, as CI makes it), so that a stale release build
/// (whose wire format may be older) is not picked over a fresh one.
pub fn cross_agent(target: &str) -> PathBuf {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let release = repo.join("out/agents").join(target).join("shoal-agent");
    let target_dir = std::env::var("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|_| repo.join("target"));
    let check = target_dir.join(target).join("static-check/shoal-agent");
    let modified = |p: &PathBuf| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let found = [release, check].into_iter().filter(|p| modified(p).is_some()).max_by_key(modified);
    found.unwrap_or_else(|| {
        panic!("no shoal-agent for {target}: build it with scripts/build-agents.sh (or its --check)")
    })
}

impl Lab {
    /// Boots QEMU board number `n` (0, 1, …) of architecture `arch` (`aarch64`, `armv7`) on this
    /// lab's bridge, at `.200 + n` of the lab's /24, joining the manager on `hosts[0]`
    /// with `token` as `hostname`. Returns once QEMU runs; the board joins by itself
    /// (wait for it with [`Cluster::wait_status`]).
    pub fn qemu_board(&self, arch: &str, n: u8, hostname: &str, token: &str) -> Result<QemuBoard> {
        let target = match arch {
            "aarch64" => "aarch64-unknown-linux-musl",
            "armv7" => "armv7-unknown-linux-gnueabihf",
            other => bail!("no QEMU board for {other}: scripts/qemu-board.sh supports aarch64 and armv7"),
        };
        let agent = cross_agent(target);
        let mut board = self.board_on_tap(n, hostname)?;
        let dir = self.dir.join(format!("qemu-{hostname}"));
        std::fs::create_dir_all(&dir)?;
        let token_file = dir.join("token");
        std::fs::write(&token_file, token)?;
        let manager = format!("{}:4242", self.hosts[0].ip);
        let extra: [&OsStr; 8] = [
            "--manager".as_ref(),
            manager.as_ref(),
            "--hostname".as_ref(),
            hostname.as_ref(),
            "--token-file".as_ref(),
            token_file.as_ref(),
            "--agent".as_ref(),
            agent.as_ref(),
        ];
        board.qemu.child = Some(spawn_board_script(&board, "run", arch, &dir, &extra)?);
        Ok(board)
    }

    /// A QEMU board's place on this lab's bridge, not powered on: tap `<tag>q<n>` on the
    /// bridge, address `.200 + n` of the lab's /24, its console log in the lab's logs.
    fn board_on_tap(&self, n: u8, hostname: &str) -> Result<QemuBoard> {
        let prefix = self.hosts[0].ip.rsplit_once('.').map(|(p, _)| p.to_owned()).context("manager address")?;
        let tap = format!("{}q{n}", self.tag);
        sh(&["ip", "tuntap", "add", "dev", &tap, "mode", "tap"])?;
        let board = QemuBoard {
            qemu: Proc { child: None, log: self.dir.join("logs").join(format!("{hostname}-console.log")) },
            ip: format!("{prefix}.{}", 200 + u32::from(n)),
            hostname: hostname.to_owned(),
            tap: tap.clone(),
        };
        sh(&["ip", "link", "set", &tap, "master", &self.bridge, "up"])?;
        std::fs::create_dir_all(self.dir.join("logs"))?;
        Ok(board)
    }
}

/// Runs `scripts/qemu-board.sh MODE --arch ARCH --tap … --ip … EXTRA… --dir DIR` for
/// `board` in the background, its output appended to the board's log.
fn spawn_board_script(board: &QemuBoard, mode: &str, arch: &str, dir: &Path, extra: &[&OsStr]) -> Result<Child> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/qemu-board.sh");
    let log = std::fs::OpenOptions::new().create(true).append(true).open(&board.qemu.log)?;
    Command::new(script)
        .args([mode, "--arch", arch, "--tap", &board.tap, "--ip", &format!("{}/24", board.ip)])
        .args(extra)
        .arg("--dir")
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting scripts/qemu-board.sh {mode}"))
}

/// The stock OS disk image of a QEMU board (`scripts/qemu-board.sh disk`: a FAT boot
/// partition with the kernel and cmdline.txt, an ext4 root with its own init, a swap
/// partition), built and cached in out/qemu/ARCH/stock.img.
pub fn stock_board_image(arch: &str) -> Result<PathBuf> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/qemu-board.sh");
    let out = Command::new(script).args(["disk", "--arch", arch]).stderr(Stdio::inherit()).output()?;
    if !out.status.success() {
        bail!("scripts/qemu-board.sh disk --arch {arch} failed");
    }
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(PathBuf::from(text.lines().last().context("scripts/qemu-board.sh disk printed no path")?.trim()))
}

impl Lab {
    /// A QEMU board number `n` that boots from a disk image (`scripts/qemu-board.sh
    /// run-disk`): its tap is made on the lab's bridge at `.200 + n`; it is powered on
    /// (and on again after a reboot or power-off) with [`Lab::power_on_disk`].
    pub fn disk_board(&self, n: u8, hostname: &str) -> Result<QemuBoard> {
        self.board_on_tap(n, hostname)
    }

    /// Powers `board` on from `disk`, as its firmware would boot it (kernel, initramfs and
    /// cmdline.txt from the FAT partition). Its console is appended to its log.
    pub fn power_on_disk(&self, board: &mut QemuBoard, arch: &str, disk: &Path) -> Result<()> {
        board.qemu.kill9();
        let dir = self.dir.join(format!("qemu-{}", board.hostname));
        std::fs::create_dir_all(&dir)?;
        let extra: [&OsStr; 2] = ["--disk".as_ref(), disk.as_ref()];
        board.qemu.child = Some(spawn_board_script(board, "run-disk", arch, &dir, &extra)?);
        Ok(())
    }
}

impl Cluster {
    /// As [`Cluster::start_in`], with extra arguments for `shoal manager run` (e.g. a
    /// longer `--heartbeat-period` for boards under emulation).
    pub fn start_in_with(lab: Lab, manager_args: &[&str]) -> Result<Self> {
        let m = &lab.hosts[0];
        let init = m.shoal(&["manager", "init", "--advertise-addr", &m.ip, "--hostname", "manager"]);
        let token =
            init.split_whitespace().find(|w| w.starts_with("SHOAL-1-")).context("no token in init output")?.to_owned();
        let mut args = vec!["manager", "run"];
        args.extend_from_slice(manager_args);
        let manager = m.spawn("shoal", &args);
        wait_for("the manager to answer", Duration::from_secs(10), || {
            m.run("shoal", &["node", "ls"]).status.success().then_some(())
        });
        let mut agents = Vec::new();
        for (i, h) in lab.hosts.iter().enumerate().skip(1) {
            let name = format!("node{i}");
            agents.push(
                h.spawn("shoal-agent", &["join", "--token", &token, "--hostname", &name, &format!("{}:4242", m.ip)]),
            );
        }
        let cluster = Self { manager, agents, token, lab };
        cluster.wait_status_all("Ready", Duration::from_secs(15));
        Ok(cluster)
    }
}

/// A UDP relay that adds delay and random loss in both directions (this kernel has neither
/// `netem` nor the `tc` drop actions): one socket for the boards, one upstream socket per
/// board socket it has seen. Delay is fixed, so each direction is a FIFO sent by its own
/// thread. Stops on drop.
pub struct Relay {
    /// Where boards send.
    pub addr: std::net::SocketAddr,
    loss_pct: Arc<std::sync::atomic::AtomicU32>,
    delay_ms: Arc<std::sync::atomic::AtomicU64>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

type Fifo = std::sync::mpsc::Sender<(Instant, std::net::SocketAddr, Vec<u8>)>;
type Deliver = Box<dyn Fn(std::net::SocketAddr, &[u8]) + Send>;

impl Relay {
    fn start(ip: &str, to: std::net::SocketAddr) -> Self {
        use std::net::{SocketAddr, UdpSocket};
        use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64};
        let listen = Arc::new(UdpSocket::bind((ip, 0)).expect("relay socket"));
        listen.set_read_timeout(Some(Duration::from_millis(50))).expect("timeout");
        let addr = listen.local_addr().expect("relay address");
        let loss_pct = Arc::new(AtomicU32::new(0));
        let delay_ms = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let upstreams: Arc<std::sync::Mutex<std::collections::HashMap<SocketAddr, Arc<UdpSocket>>>> = Arc::default();
        // A sender thread per direction: waits until each datagram is due, then sends it.
        let sender = |deliver: Deliver| {
            let (tx, rx) = std::sync::mpsc::channel::<(Instant, SocketAddr, Vec<u8>)>();
            std::thread::spawn(move || {
                for (due, peer, bytes) in rx {
                    std::thread::sleep(due.saturating_duration_since(Instant::now()));
                    deliver(peer, &bytes);
                }
            });
            tx
        };
        let down: Fifo = {
            let listen = listen.clone();
            sender(Box::new(move |peer, bytes| drop(listen.send_to(bytes, peer))))
        };
        let up: Fifo = {
            let upstreams = upstreams.clone();
            sender(Box::new(move |peer, bytes| {
                if let Some(u) = upstreams.lock().unwrap().get(&peer) {
                    let _ = u.send(bytes);
                }
            }))
        };
        let seed = Arc::new(std::sync::atomic::AtomicU64::new(0x2545_f491_4f6c_dd1d));
        let impair = {
            let (loss_pct, delay_ms, seed) = (loss_pct.clone(), delay_ms.clone(), seed.clone());
            move |fifo: &Fifo, peer: SocketAddr, bytes: Vec<u8>| {
                let mut x = seed.load(std::sync::atomic::Ordering::Relaxed);
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                seed.store(x, std::sync::atomic::Ordering::Relaxed);
                if (x % 100) < u64::from(loss_pct.load(std::sync::atomic::Ordering::Relaxed)) {
                    return;
                }
                let due = Instant::now() + Duration::from_millis(delay_ms.load(std::sync::atomic::Ordering::Relaxed));
                let _ = fifo.send((due, peer, bytes));
            }
        };
        let impair = Arc::new(impair);
        {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 65_536];
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let Ok((n, peer)) = listen.recv_from(&mut buf) else { continue };
                    let known = upstreams.lock().unwrap().contains_key(&peer);
                    if !known {
                        let u = Arc::new(UdpSocket::bind("0.0.0.0:0").expect("upstream socket"));
                        u.connect(to).expect("connect upstream");
                        u.set_read_timeout(Some(Duration::from_millis(50))).expect("timeout");
                        upstreams.lock().unwrap().insert(peer, u.clone());
                        let (down, impair, stop) = (down.clone(), impair.clone(), stop.clone());
                        std::thread::spawn(move || {
                            let mut buf = vec![0u8; 65_536];
                            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                                if let Ok(n) = u.recv(&mut buf) {
                                    impair(&down, peer, buf[..n].to_vec());
                                }
                            }
                        });
                    }
                    impair(&up, peer, buf[..n].to_vec());
                }
            });
        }
        Relay { addr, loss_pct, delay_ms, stop }
    }

    /// From now on, drop `loss_pct` % of datagrams and delay the rest by `delay` in each
    /// direction.
    pub fn impair(&self, loss_pct: u32, delay: Duration) {
        self.loss_pct.store(loss_pct, std::sync::atomic::Ordering::Relaxed);
        self.delay_ms.store(delay.as_millis() as u64, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}
