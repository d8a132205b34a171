//! The per-container monitor, run as `shoal-agent shim`: it creates and starts one
//! container through libcontainer, becomes the parent of its init process, copies its
//! stdout/stderr into the rotated log, records its exit code, and cleans up its cgroup.
//!
//! Why a separate process: only a process's parent learns its exit status, and the
//! agent may restart (upgrade, crash) while containers run. The shim outlives the agent,
//! so the exit code is known whenever the agent comes back, and logs keep flowing. It
//! is the agent binary itself, so nothing else must be installed on a board, and it uses
//! no async runtime, so each one costs little memory.
//!
//! Start protocol: the shim writes one line on its stdout, `ok <pid>` once the container
//! runs or `err <reason>` if it could not start, then closes it.

use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::container::Container;
use libcontainer::syscall::syscall::SyscallType;
use rustix::process::{Pid, PidfdFlags, WaitId, WaitIdOptions};

use super::bundle::Bundle;
use super::logs::{pump_both, pump_until_exit, ExitWatch, LogLimits, LogWriter};

/// `__WALL`: the container's init is cloned with `CLONE_PARENT` and no exit signal, so
/// only a wait that includes "clone" children sees it.
const WAIT_ALL: u32 = 0x4000_0000;

/// Runs the shim for container `id` of `containers_root`, with libcontainer state under
/// `state_root`. Returns the process exit code for the shim itself.
pub fn run(containers_root: &Path, state_root: &Path, id: &str) -> i32 {
    let bundle = Bundle::new(containers_root, id);
    let started = start(&bundle, state_root, id);
    let Started { pid, stdout, stderr, log } = match started {
        Ok(x) => x,
        Err(reason) => {
            let reason = reason.replace('\n', " ");
            eprintln!("shim {id}: {reason}");
            report(&format!("err {reason}"));
            cleanup(state_root, id);
            return 1;
        }
    };
    report(&format!("ok {pid}"));
    // From here on it only waits and copies logs: the code that made the container goes.
    super::trim::release();
    // The container's processes are gone once its init is (its PID namespace dies with
    // it), so the pipes reach their end: they are drained before the exit is recorded,
    // so that an exited container's log is complete. Bounded, in case something else
    // holds a pipe open.
    let drain = Duration::from_secs(1);
    let code = match Pid::from_raw(pid as i32).map(|p| rustix::process::pidfd_open(p, PidfdFlags::empty())) {
        // One thread: the exit is one more descriptor in the log pipes' poll(2).
        Some(Ok(pidfd)) => {
            let mut collect = || wait_exit(pid);
            let exit = ExitWatch { pidfd: pidfd.as_fd(), on_exit: &mut collect, drain };
            pump_until_exit(stdout, stderr, exit, &log, shoal_link::wall_ms).unwrap_or_else(|| wait_exit(pid))
        }
        // No pidfds (a kernel before 5.3, or a policy refusing them): the logs get a
        // thread of their own and this one waits.
        _ => {
            let pump = std::thread::spawn(move || pump_both(stdout, stderr, &log, shoal_link::wall_ms));
            let code = wait_exit(pid);
            let deadline = std::time::Instant::now() + drain;
            while !pump.is_finished() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
            code
        }
    };
    if let Err(e) = bundle.write_exit(code, shoal_link::wall_ms()) {
        eprintln!("shim {id}: {e}");
    }
    // Reap only now: until the exit file exists the PID stays reserved, so the agent
    // can never signal a stranger that reused it.
    if let Some(p) = Pid::from_raw(pid as i32) {
        let _ =
            rustix::process::waitid(WaitId::Pid(p), WaitIdOptions::EXITED | WaitIdOptions::from_bits_retain(WAIT_ALL));
    }
    cleanup(state_root, id);
    0
}

fn report(line: &str) {
    let mut out = std::io::stdout();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
    // Close our end so the agent's read finishes, and keep fd 1 valid for later writes.
    if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
        let _ = rustix::stdio::dup2_stdout(&null);
    }
}

/// A container that runs: its init's PID, the read ends of its stdout and stderr, and
/// its log.
struct Started {
    pid: u32,
    stdout: OwnedFd,
    stderr: OwnedFd,
    log: Mutex<LogWriter>,
}

fn start(bundle: &Bundle, state_root: &Path, id: &str) -> Result<Started, String> {
    // Before the container's init is forked from this process, so that it knows too.
    super::trim::note();
    std::fs::create_dir_all(state_root).map_err(|e| format!("state directory: {e}"))?;
    let (out_r, out_w) = rustix::pipe::pipe().map_err(|e| format!("pipe: {e}"))?;
    let (err_r, err_w) = rustix::pipe::pipe().map_err(|e| format!("pipe: {e}"))?;
    let null: OwnedFd = std::fs::File::open("/dev/null").map_err(|e| format!("/dev/null: {e}"))?.into();
    let mut container = ContainerBuilder::new(id.to_owned(), SyscallType::Linux)
        .with_root_path(state_root)
        .map_err(|e| e.to_string())?
        .with_stdin(null)
        .with_stdout(out_w)
        .with_stderr(err_w)
        .with_executor(super::init::InitExecutor)
        .as_init(bundle.dir())
        .with_systemd(false)
        .with_detach(true)
        .build()
        .map_err(|e| e.to_string())?;
    // The cgroup exists now and the container's process has not run yet. The spec is
    // read again only on a cgroup v2 board: elsewhere there is nothing to write, and the
    // container's init waits for this start.
    let cgroup_root = Path::new(super::swap::CGROUP_ROOT);
    if super::swap::unified(cgroup_root) {
        if let Ok(spec) = oci_spec::runtime::Spec::load(bundle.config()) {
            super::swap::limit_swap(cgroup_root, &spec)?;
        }
    }
    container.start().map_err(|e| e.to_string())?;
    let pid = container.pid().map(|p| p.as_raw() as u32).ok_or("container has no pid after start")?;
    super::bundle::write_state(&bundle.pid_file(), format!("{pid}\n").as_bytes())
        .map_err(|e| format!("pid file: {e}"))?;
    let log = Mutex::new(LogWriter::open(&bundle.log(), LogLimits::default()).map_err(|e| format!("log: {e}"))?);
    Ok(Started { pid, stdout: out_r, stderr: err_r, log })
}

/// Waits for the init process to exit without reaping it; Docker's codes: the exit
/// status, or 128 + signal.
fn wait_exit(pid: u32) -> i32 {
    let Some(p) = Pid::from_raw(pid as i32) else { return -1 };
    loop {
        let options = WaitIdOptions::EXITED | WaitIdOptions::NOWAIT | WaitIdOptions::from_bits_retain(WAIT_ALL);
        match rustix::process::waitid(WaitId::Pid(p), options) {
            Ok(Some(status)) => {
                if let Some(code) = status.exit_status() {
                    return code;
                }
                if let Some(signal) = status.terminating_signal() {
                    return 128 + signal;
                }
            }
            Ok(None) => {}
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => {
                eprintln!("shim: waiting for {pid}: {e}");
                return -1;
            }
        }
    }
}

/// Removes libcontainer's state and the container's cgroup.
fn cleanup(state_root: &Path, id: &str) {
    if let Ok(mut c) = Container::load(state_root.join(id)) {
        if let Err(e) = c.delete(true) {
            eprintln!("shim {id}: cleaning up: {e}");
        }
    }
}
