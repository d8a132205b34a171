//! QEMU boards' timings and the agent's idle memory inside them (issue 12): one manager
//! and one x86_64 namespace board, then each QEMU board in turn (aarch64, then armv7,
//! never both at once) booted with the harness's launcher (`Lab::qemu_board`, which runs
//! `scripts/qemu-board.sh`). For every board: boot (or agent start) → Ready, service
//! create → image on the board (the task past Preparing) → answering from the host, and
//! the agent's RSS joined and idle, and with the task running. A QEMU board's RSS is read
//! inside the guest: the board's init prints the agent's `/proc/PID/status` on the console
//! (`QEMU_BOARD_RSS_EVERY`). Prints a Markdown section on stdout. Needs root, `cargo
//! build --bins`, the static agents (`scripts/build-agents.sh`) and `images/build.sh`.
//! `QEMU_BENCH_ARCHES` (default `aarch64 armv7`) picks the QEMU boards.
//! `QEMU_BENCH_CONSOLES=DIR` keeps each QEMU board's console as it was when its idle
//! (`ARCH-idle.console`) and one-task (`ARCH-task.console`) RSS were read: with
//! `QEMU_BOARD_PAGEMAP=1` it holds the agent's mapped pages (scripts/agent-order.sh).

use std::time::{Duration, Instant};

use anyhow::Result;
use shoal_e2e::{http_get_within, lab_image, wait_for, Cluster, Lab};

/// The idle window before a board's RSS is read (the first image and task sets, the
/// first certificate exchange pass within it).
const SETTLE: Duration = Duration::from_secs(10);

/// The body of `GET path` from `ip:port`, if it answers 200 (2 s to connect, 4 s to read:
/// an emulated board).
fn get(ip: &str, port: u16, path: &str) -> Option<String> {
    http_get_within(format!("{ip}:{port}").parse().ok()?, path, Duration::from_secs(2)).ok()
}

/// One board's figures.
struct Row {
    board: String,
    ready: Duration,
    image: Duration,
    answering: Duration,
    rss_idle_kib: Option<(u64, u64, u64)>,
    rss_task_kib: Option<(u64, u64, u64)>,
}

/// The last `VmRSS` a QEMU board's console reported for its agent (`run` or `join`, not a
/// shim), in KiB, with its `RssAnon` and `RssFile` + `RssShmem` (heap and stacks; the
/// binary's pages, which are shared memory on a board whose root is a tmpfs).
fn console_rss(console: &str) -> Option<(u64, u64, u64)> {
    let field =
        |rest: &str, name: &str| -> Option<u64> { rest.split(name).nth(1)?.split_whitespace().next()?.parse().ok() };
    console
        .lines()
        .filter_map(|l| l.split_once("shoal-board: rss ").map(|(_, rest)| rest))
        .filter(|rest| rest.contains(" run") || rest.contains(" join"))
        .filter_map(|rest| {
            let file = field(rest, "RssFile: ")? + field(rest, "RssShmem: ").unwrap_or(0);
            Some((field(rest, "VmRSS: ")?, field(rest, "RssAnon: ")?, file))
        })
        .next_back()
}

/// Creates a service pinned to `hostname` publishing port 8000 and times the image's
/// arrival (the task past Preparing) and its first answer from `ip`.
fn create_and_time(c: &Cluster, name: &str, hostname: &str, ip: &str) -> (Duration, Duration) {
    let m = c.manager_host();
    let created = Instant::now();
    let constraint = format!("node.hostname=={hostname}");
    let publish = "mode=host,target=8000,published=8000";
    m.shoal(&[
        "service",
        "create",
        "--name",
        name,
        "--constraint",
        &constraint,
        "--publish",
        publish,
        "-d",
        "demo/app:1.0",
    ]);
    let image = wait_for(&format!("{name}'s image on {hostname}"), Duration::from_secs(180), || {
        c.service_ps(name)
            .iter()
            .any(|r| ["Ready", "Starting", "Running"].iter().any(|s| r["CURRENT STATE"].starts_with(s)))
            .then(|| created.elapsed())
    });
    wait_for(&format!("{name} to answer on {hostname}"), Duration::from_secs(180), || get(ip, 8000, "/version"));
    (image, created.elapsed())
}

/// The board's console so far, also written to `QEMU_BENCH_CONSOLES/ARCH-WHEN.console`
/// when that is set.
fn keep_console(board: &shoal_e2e::QemuBoard, arch: &str, when: &str) -> Result<String> {
    let console = board.console();
    if let Some(dir) = std::env::var_os("QEMU_BENCH_CONSOLES") {
        std::fs::create_dir_all(&dir)?;
        std::fs::write(std::path::Path::new(&dir).join(format!("{arch}-{when}.console")), &console)?;
        // With QEMU_BOARD_TRACE (QEMU's log of the code it translates), how far the log
        // had got: the code run up to this moment.
        if let Some(trace) = std::env::var_os("QEMU_BOARD_TRACE") {
            // A missing log would make every function look like the task's: an error.
            let len = std::fs::metadata(&trace)
                .map_err(|e| anyhow::anyhow!("QEMU's log {}: {e}", std::path::Path::new(&trace).display()))?
                .len();
            std::fs::write(std::path::Path::new(&dir).join(format!("{arch}-{when}.trace-offset")), len.to_string())?;
        }
    }
    Ok(console)
}

fn main() -> Result<()> {
    shoal_e2e::require_root();
    let arches = std::env::var("QEMU_BENCH_ARCHES").unwrap_or_else(|_| "aarch64 armv7".into());
    // Read by scripts/qemu-board.sh through the harness's launcher (it inherits this
    // environment): the guest reports its agent's memory every 2 s.
    std::env::set_var("QEMU_BOARD_RSS_EVERY", "2");
    let lab = Lab::new(2)?;
    let mh = &lab.hosts[0];
    let init = mh.shoal(&["manager", "init", "--advertise-addr", &mh.ip, "--hostname", "manager"]);
    let token = init.split_whitespace().find(|w| w.starts_with("SHOAL-1-")).unwrap_or_default().to_owned();
    let manager = mh.spawn("shoal", &["manager", "run"]);
    wait_for("the manager", Duration::from_secs(10), || {
        mh.run("shoal", &["node", "ls"]).status.success().then_some(())
    });
    // The namespace board: its agent's start → Ready.
    let start = Instant::now();
    let to = format!("{}:4242", mh.ip);
    let agent = lab.hosts[1].spawn("shoal-agent", &["join", "--token", &token, "--hostname", "node1", &to]);
    let c = Cluster { manager, agents: vec![agent], token, lab };
    c.wait_status("node1", "Ready", Duration::from_secs(30));
    let ready = start.elapsed();
    let m = c.manager_host();
    m.shoal(&["image", "load", lab_image("demo-app-1.0.tar").to_str().unwrap()]);
    let mut rows = Vec::new();
    let node = &c.lab.hosts[1];
    std::thread::sleep(SETTLE);
    let rss = |p: &shoal_e2e::Proc| {
        let status = std::fs::read_to_string(format!("/proc/{}/status", p.pid()?)).ok()?;
        let field = |name: &str| -> Option<u64> {
            status.lines().find_map(|l| l.strip_prefix(name))?.split_whitespace().next()?.parse().ok()
        };
        Some((field("VmRSS:")?, field("RssAnon:")?, field("RssFile:")? + field("RssShmem:").unwrap_or(0)))
    };
    let rss_idle_kib = rss(&c.agents[0]);
    let (image, answering) = create_and_time(&c, "web-x86", "node1", &node.ip);
    std::thread::sleep(Duration::from_secs(3));
    rows.push(Row {
        board: "x86_64 namespace board (this machine's kernel)".into(),
        ready,
        image,
        answering,
        rss_idle_kib,
        rss_task_kib: rss(&c.agents[0]),
    });

    for (n, arch) in arches.split_whitespace().enumerate() {
        let hostname = format!("q{arch}");
        let mut board = c.lab.qemu_board(arch, u8::try_from(n)?, &hostname, &c.token)?;
        let boot = Instant::now();
        wait_for(&format!("{hostname} to be Ready"), Duration::from_secs(240), || {
            if let Some(code) = board.qemu.wait_exit(Duration::ZERO) {
                panic!("QEMU of {hostname} exited ({code}); its console:\n{}", board.console());
            }
            c.nodes().iter().any(|r| r.hostname == hostname && r.status == "Ready").then_some(())
        });
        let ready = boot.elapsed();
        std::thread::sleep(SETTLE);
        let rss_idle_kib = console_rss(&keep_console(&board, arch, "idle")?);
        let (image, answering) = create_and_time(&c, &format!("web-{arch}"), &hostname, &board.ip);
        std::thread::sleep(Duration::from_secs(5));
        let rss_task_kib = console_rss(&keep_console(&board, arch, "task")?);
        rows.push(Row {
            board: format!("{arch} QEMU board (TCG, Debian's kernel)"),
            ready,
            image,
            answering,
            rss_idle_kib,
            rss_task_kib,
        });
        m.shoal(&["service", "rm", &format!("web-{arch}")]);
        board.power_off();
        c.wait_status(&hostname, "Down", Duration::from_secs(10));
    }

    let mib = |k: u64| k as f64 / 1024.0;
    let kib = |v: Option<(u64, u64, u64)>| {
        v.map(|(rss, anon, file)| format!("{:.2} MiB (anon {:.2}, binary {:.2})", mib(rss), mib(anon), mib(file)))
            .unwrap_or_else(|| "not read".into())
    };
    println!("### QEMU boards: timings and the agent's idle memory");
    println!();
    println!("`qemu-bench` (bench/src/qemu.rs): a manager and an x86_64 namespace board, then each");
    println!("QEMU board in turn (`scripts/qemu-board.sh`, software emulation, 1 vCPU, 512 MiB) on");
    println!("the same bridge; static release agents. Image: `demo/app:1.0` (one 1 MB layer per");
    println!("platform). The QEMU boards' RSS is read inside the guest from `/proc/PID/status`.");
    println!();
    println!("| board | boot → Ready | create → image on board | create → answering | agent RSS, joined and idle | agent RSS, one task |");
    println!("|---|---|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {:.1} s | {:.1} s | {:.1} s | {} | {} |",
            r.board,
            r.ready.as_secs_f64(),
            r.image.as_secs_f64(),
            r.answering.as_secs_f64(),
            kib(r.rss_idle_kib),
            kib(r.rss_task_kib)
        );
    }
    println!();
    let x86_agent = shoal_e2e::bin("shoal-agent");
    let x86_agent = std::fs::canonicalize(&x86_agent).unwrap_or(x86_agent);
    println!("The namespace board ran `{}`.", x86_agent.display());
    println!("The namespace board's \"boot\" is its agent's start (`join`); a QEMU board's is QEMU's");
    println!("start: the kernel, the init that loads its modules, then the agent's join.");
    Ok(())
}
