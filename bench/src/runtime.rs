//! Container start-up and memory, measured: create → start → exit of `/bin/true`
//! through shoal's libcontainer runtime (shim, overlay rootfs, init) against `runc run`
//! and `crun run` on the same bundle, in the same run; and the memory a running
//! container costs shoal (its shim and init). Prints a Markdown section on stdout.
//!
//! Usage: runtime-bench [ITERATIONS]   (as root; `bench/run.sh` runs it)

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use shoal_agent::runtime::bundle::Bundle;
use shoal_agent::runtime::{spec, ContainerConfig, ContainerStatus, LibcontainerRuntime, NetworkMode, Runtime};

fn busybox_layer(dir: &Path) -> Result<PathBuf> {
    let layer = dir.join("layer");
    std::fs::create_dir_all(layer.join("bin"))?;
    let busybox =
        ["/bin/busybox", "/usr/bin/busybox"].into_iter().find(|p| Path::new(p).exists()).context("busybox-static")?;
    std::fs::copy(busybox, layer.join("bin/busybox"))?;
    for applet in ["sh", "true", "sleep"] {
        let _ = std::os::unix::fs::symlink("busybox", layer.join("bin").join(applet));
    }
    Ok(layer)
}

fn config(id: &str, layer: &Path, args: &[&str]) -> ContainerConfig {
    ContainerConfig {
        stop_signal: 15,
        resolv_conf: None,
        files: vec![],
        id: id.to_owned(),
        hostname: id.to_owned(),
        args: args.iter().map(|s| s.to_string()).collect(),
        env: vec!["PATH=/bin".into()],
        cwd: "/".into(),
        uid: 0,
        gid: 0,
        additional_gids: vec![],
        addresses: vec![],
        layers: vec![layer.to_owned()],
        network: NetworkMode::Host,
        memory_limit: None,
        cpu_millis: None,
        hosts: vec![],
        seccomp: Default::default(),
        options: Default::default(),
    }
}

/// How long one cgroup move waits on this machine when no other move came just before
/// (the median of three, each after 50 ms without moves): the kernel's RCU grace period,
/// or ~0.1 ms on a kernel that keeps the cgroup lock's fast path off (`favordynmods`).
/// It is most of the spread of start-up figures between machines, so it is printed
/// with them. `None` where the bench can't move itself (no cgroup found).
fn cgroup_move_wait() -> Option<Duration> {
    let mut waits = Vec::new();
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(50));
        let t = Instant::now();
        shoal_agent::runtime::attach_warmup::move_into_own_cgroup()?.ok()?;
        waits.push(t.elapsed());
    }
    Some(median(waits))
}

/// The 1-minute load and the dirty and writeback page cache (KiB), which move the
/// start-up figures as much as the code does: printed with them.
fn machine_load() -> String {
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let kib = |name: &str| -> u64 {
        meminfo
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or(0)
    };
    format!(
        "load {}, dirty {} KiB, writeback {} KiB",
        load.split_whitespace().next().unwrap_or("?"),
        kib("Dirty:"),
        kib("Writeback:")
    )
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// One shoal run: create, start, wait for the exit, delete. The whole, and each step
/// (where the time goes: see docs/runtime.md, "Start-up").
fn shoal_once(rt: &LibcontainerRuntime, layer: &Path, n: usize) -> Result<(Duration, [Duration; 4])> {
    let id = format!("bench-true-{n}");
    let t = Instant::now();
    rt.create(&config(&id, layer, &["true"]))?;
    let created = t.elapsed();
    rt.start(&id)?;
    let started = t.elapsed();
    loop {
        if let ContainerStatus::Exited { code, .. } = rt.status(&id)? {
            if code != 0 {
                bail!("true exited {code}");
            }
            break;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    let exited = t.elapsed();
    rt.delete(&id)?;
    let total = t.elapsed();
    Ok((total, [created, started - created, exited - started, total - exited]))
}

/// A plain OCI bundle (no overlay: runc and crun take a directory) for the peers.
fn peer_bundle(dir: &Path, layer: &Path) -> Result<PathBuf> {
    let bundle_dir = dir.join("peer");
    std::fs::create_dir_all(&bundle_dir)?;
    let b = Bundle::new(dir, "peer");
    std::fs::write(bundle_dir.join("hosts"), "127.0.0.1 localhost\n")?;
    std::fs::write(bundle_dir.join("hostname"), "peer\n")?;
    let mut cfg = config("peer", layer, &["/bin/true"]);
    cfg.hostname = "peer".into();
    // The same hardened spec, seccomp filter and device cgroup included: runc applies
    // them with libseccomp, so both runtimes pay for the same protection.
    let mut oci = spec::build(&cfg, &b, true)?;
    let mut root = oci.root().clone().context("root")?;
    root.set_path(layer.to_owned());
    oci.set_root(Some(root));
    oci.save(bundle_dir.join("config.json"))?;
    Ok(bundle_dir)
}

fn peer_once(tool: &str, bundle: &Path, n: usize) -> Result<Result<Duration, String>> {
    let id = format!("bench-{tool}-{n}");
    let t = Instant::now();
    let out = Command::new(tool).args(["run", "--bundle"]).arg(bundle).arg(&id).output()?;
    let took = t.elapsed();
    let _ = Command::new(tool).args(["delete", "-f", &id]).output();
    if !out.status.success() {
        return Ok(Err(String::from_utf8_lossy(&out.stderr).trim().lines().last().unwrap_or("").to_owned()));
    }
    Ok(Ok(took))
}

/// Memory of a process from `smaps_rollup`: (RSS, PSS, private) in KiB. RSS counts the
/// static binary's pages shared by every shim in full each time; PSS splits shared
/// pages among their users, so PSS sums to what the processes really cost together.
fn mem_kib(pid: u32) -> Mem {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    let field = |name: &str| -> u64 {
        text.lines().find(|l| l.starts_with(name)).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()).unwrap_or(0)
    };
    (field("Rss:"), field("Pss:"), field("Private_Clean:") + field("Private_Dirty:"))
}

/// (RSS, PSS, private) in KiB.
type Mem = (u64, u64, u64);

fn sum(pids: &[u32]) -> Mem {
    pids.iter().map(|p| mem_kib(*p)).fold((0, 0, 0), |a, m| (a.0 + m.0, a.1 + m.1, a.2 + m.2))
}

fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

fn main() -> Result<()> {
    let iterations: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(30);
    let agent = std::env::var("SHOAL_AGENT").map(PathBuf::from).context("set SHOAL_AGENT to the shoal-agent binary")?;
    let dir = std::env::temp_dir().join(format!("shoal-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let layer = busybox_layer(&dir)?;
    // As the agent keeps them (`LibcontainerRuntime::paths`): the containers on the data
    // partition, libcontainer's state in /run (a tmpfs on boards; runc's is there too).
    let state = Path::new("/run").join(format!("shoal-bench-{}", std::process::id()));
    let rt = LibcontainerRuntime::new(dir.join("containers"), state.clone(), agent.clone());

    // The runtimes take turns, one run each per round, so that all of them run under
    // the same load: on a shared machine the load moves within a minute, and a block of
    // shoal's runs followed by a block of runc's compared two different machines. A
    // peer that refuses the bundle (crun on a hybrid cgroup host) is dropped at once.
    let move_wait = cgroup_move_wait();
    let before = machine_load();
    let bundle = peer_bundle(&dir, &layer)?;
    let mut peers: Vec<Peer> = ["runc", "crun"]
        .into_iter()
        .map(|tool| Peer {
            tool,
            times: Vec::new(),
            failure: which(tool).is_none().then(|| format!("{tool} is not installed")),
        })
        .collect();
    let mut shoal = Vec::new();
    let mut steps: [Vec<Duration>; 4] = Default::default();
    // Round 0 warms up caches once for everybody and is not counted.
    for n in 0..=iterations {
        let (t, step) = shoal_once(&rt, &layer, n)?;
        if n > 0 {
            shoal.push(t);
            for (all, one) in steps.iter_mut().zip(step) {
                all.push(one);
            }
        }
        for peer in peers.iter_mut().filter(|p| p.failure.is_none()) {
            match peer_once(peer.tool, &bundle, n)? {
                Ok(t) if n > 0 => peer.times.push(t),
                Ok(_) => {}
                Err(e) => peer.failure = Some(format!("refused: {e}")),
            }
        }
    }
    let after = machine_load();
    let mut rows = vec![("shoal (libcontainer + shim + overlay)".to_owned(), Ok(median(shoal)))];
    for peer in peers {
        rows.push((format!("{} run", peer.tool), peer.failure.map_or_else(|| Ok(median(peer.times)), Err)));
    }

    // Memory: ten sleeping containers.
    let ids: Vec<String> = (0..10).map(|n| format!("bench-sleep-{n}")).collect();
    for id in &ids {
        rt.create(&config(id, &layer, &["sleep", "3600"]))?;
        rt.start(id)?;
    }
    std::thread::sleep(Duration::from_millis(300));
    let mut per_container = Vec::new();
    let (mut shims, mut inits) = (Vec::new(), Vec::new());
    for id in &ids {
        let shim: u32 = std::fs::read_to_string(dir.join("containers").join(id).join("shim.pid"))?.trim().parse()?;
        // The shim, the container's init (its child), and the command (the init's child).
        let init = children(shim);
        let command: Vec<u32> = init.iter().flat_map(|p| children(*p)).collect();
        let ours: Vec<u32> = std::iter::once(shim).chain(init.iter().copied()).collect();
        per_container.push((sum(&ours), sum(&command)));
        shims.push(mem_kib(shim));
        inits.push(sum(&init));
    }
    for id in &ids {
        rt.stop(id, Duration::from_secs(5))?;
        rt.delete(id)?;
    }
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&state);

    let shoal_median = rows[0].1.clone().ok();
    println!("### Container start-up: create → start → exit of `/bin/true` ({iterations} runs, median)\n");
    println!("| runtime | median | vs shoal |");
    println!("|---|---|---|");
    for (name, row) in &rows {
        match (row, shoal_median) {
            (Ok(t), Some(s)) => println!("| {name} | {} | {:.2}× |", ms(*t), t.as_secs_f64() / s.as_secs_f64()),
            (Ok(t), None) => println!("| {name} | {} | |", ms(*t)),
            (Err(e), _) => println!("| {name} | — | {e} |"),
        }
    }
    let [create, start, run, delete] = steps.map(median);
    println!(
        "\nshoal's steps, medians: create {}, start {}, start to the exit recorded {}, delete {}.",
        ms(create),
        ms(start),
        ms(run),
        ms(delete)
    );
    let wait = move_wait.map_or_else(|| "not measured".to_owned(), ms);
    println!("The machine: a lone cgroup move waited {wait}; before the runs {before}; after them {after}.");
    // A grace period is some milliseconds; well under one means moves don't wait here,
    // which a `favordynmods` mount leaves until reboot (docs/runtime.md, "Start-up").
    if move_wait.is_some_and(|w| w < Duration::from_millis(1)) {
        println!(
            "Cgroup moves do not wait for an RCU grace period on this machine (a `favordynmods` \
             mount since boot, or the boot option): shoal's figure is ~4–6 ms lower than where \
             moves wait, runc's the same (docs/runtime.md, \"Start-up\")."
        );
    }
    let total = |pick: fn(&(Mem, Mem)) -> Mem| {
        per_container.iter().map(pick).fold((0, 0, 0), |a, m| (a.0 + m.0, a.1 + m.1, a.2 + m.2))
    };
    let (ours, theirs) = (total(|p| p.0), total(|p| p.1));
    let n = per_container.len() as u64;
    println!("\n### Memory of 10 running containers (`sleep`)\n");
    println!("| what | RSS | PSS | private |");
    println!("|---|---|---|---|");
    println!(
        "| shoal per container (its shim + init), mean | {} KiB | {} KiB | {} KiB |",
        ours.0 / n,
        ours.1 / n,
        ours.2 / n
    );
    let mean = |v: &[Mem]| {
        let t = v.iter().fold((0, 0, 0), |a, m| (a.0 + m.0, a.1 + m.1, a.2 + m.2));
        (t.0 / n, t.1 / n, t.2 / n)
    };
    let (shim, init) = (mean(&shims), mean(&inits));
    println!("| … of it the shim | {} KiB | {} KiB | {} KiB |", shim.0, shim.1, shim.2);
    println!(
        "| … of it the container's init (a fork of the shim) | {} KiB | {} KiB | {} KiB |",
        init.0, init.1, init.2
    );
    println!("| shoal for all 10 containers | {} KiB | {} KiB | {} KiB |", ours.0, ours.1, ours.2);
    println!(
        "| the containers' own processes (10 × busybox sleep) | {} KiB | {} KiB | {} KiB |",
        theirs.0, theirs.1, theirs.2
    );
    Ok(())
}

/// A peer runtime's runs, or why it could not run.
struct Peer {
    tool: &'static str,
    times: Vec<Duration>,
    failure: Option<String>,
}

fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join(tool)).find(|p| p.exists())
}
