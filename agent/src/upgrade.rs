//! Over-the-air updates of the agent itself (`shoal node upgrade`).
//!
//! The manager streams a new binary over the session connection ([`receive`]). The board
//! writes it beside the running one (`shoal-agent.new`, same directory, so renames are
//! atomic), checks its digest and that it is an executable for this machine
//! ([`crate::core::upgrade::fits`]), keeps the running binary as `shoal-agent.prev`,
//! renames the new one over `shoal-agent`, writes a marker (`shoal-agent.upgrade`: the new
//! digest and a deadline), answers, starts a watchdog and re-executes itself. Containers
//! keep running under their shims and the new agent takes them back, as after any
//! restart; the manager vouches for the board meanwhile so no task is replaced.
//!
//! The new agent clears the marker once it has a session ([`session_opened`]). The
//! watchdog, a detached process of the previous binary, restores `shoal-agent.prev` and
//! runs it when the new agent exits or the deadline passes with the marker still there;
//! an agent that starts with a marker past its deadline (the board rebooted meanwhile)
//! does the same ([`on_start`]). Not here: which boards update when (the manager).

use std::ffi::OsString;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use shoal_link::framed;
use shoal_proto::upgrade::{AgentUpgrade, DEADLINE_RANGE_MS, MAX_AGENT_BYTES};
use shoal_proto::{ErrorKind, ErrorReply, Response};
use tracing::{error, info, warn};

use crate::core::upgrade::{self as decide, Marker, Verdict, HEADER_LEN};

/// The arguments the agent restarts with (`run` and the board's flags), set once by
/// `main`: the original command line may be a `join`, which must not run twice.
static RESTART_ARGS: OnceLock<Vec<OsString>> = OnceLock::new();
/// One update at a time.
static BUSY: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Records the arguments the agent restarts with after an update.
pub fn set_restart_args(args: Vec<OsString>) {
    let _ = RESTART_ARGS.set(args);
}

/// The files of an update, all beside the running binary.
#[derive(Debug, Clone)]
pub struct Files {
    /// The agent binary boards run (`shoal-agent`).
    pub exe: PathBuf,
    /// Where a received binary is written before the swap.
    pub new: PathBuf,
    /// The binary the board ran before the last update.
    pub prev: PathBuf,
    /// The marker of an update on trial.
    pub marker: PathBuf,
}

impl Files {
    /// The files beside `exe`.
    pub fn beside(exe: &Path) -> Self {
        let with = |suffix: &str| {
            let mut name = exe.file_name().map(OsString::from).unwrap_or_else(|| "shoal-agent".into());
            name.push(suffix);
            exe.with_file_name(name)
        };
        Self { exe: exe.to_owned(), new: with(".new"), prev: with(".prev"), marker: with(".upgrade") }
    }

    /// The files beside the running agent.
    pub fn current() -> std::io::Result<Self> {
        let exe = std::env::current_exe()?;
        // After a swap the link names the renamed-over file as deleted.
        let exe = match exe.to_str().and_then(|s| s.strip_suffix(" (deleted)")) {
            Some(s) => PathBuf::from(s),
            None => exe,
        };
        Ok(Self::beside(&exe))
    }

    fn read_marker(&self) -> Option<Marker> {
        let bytes = std::fs::read(&self.marker).ok()?;
        // A marker bigger than this was not written by an agent.
        if bytes.len() > 4096 {
            return None;
        }
        serde_json::from_slice(&bytes).ok()
    }
}

/// `sha256:<hex>` of the running binary, read once.
pub fn own_digest() -> &'static str {
    static DIGEST: OnceLock<String> = OnceLock::new();
    DIGEST.get_or_init(|| match sha256_file(Path::new("/proc/self/exe")) {
        Ok(hex) => format!("sha256:{hex}"),
        Err(e) => {
            warn!(error = %e, "cannot read the agent's own binary: its version names no build");
            String::new()
        }
    })
}

/// This agent's version as it reports it: `VERSION+BUILD` (see [`shoal_proto::upgrade`]).
pub fn own_version() -> String {
    match own_digest().strip_prefix("sha256:") {
        Some(hex) => shoal_proto::upgrade::agent_version(env!("CARGO_PKG_VERSION"), hex),
        None => env!("CARGO_PKG_VERSION").to_owned(),
    }
}

fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = std::io::Read::read(&mut file, &mut buf)?;
        if n == 0 {
            return Ok(shoal_proto::hex(ctx.finish().as_ref()));
        }
        ctx.update(&buf[..n]);
    }
}

fn wall_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Why an update was refused; the manager shows the message.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    /// The offer itself is out of bounds.
    #[error("{0}")]
    Invalid(String),
    /// The bytes do not hash to the offered digest.
    #[error("the build arrived with digest {got}, not {want}: send it again")]
    Digest {
        /// Offered.
        want: String,
        /// Received.
        got: String,
    },
    /// The build is not for this board.
    #[error(transparent)]
    Fit(#[from] decide::FitError),
    /// The stream ended early or failed.
    #[error("the build did not arrive whole: {0}")]
    Transfer(String),
    /// Writing or renaming the files failed.
    #[error("cannot install the build beside {}: {source}; check the directory is writable and has room", .exe.display())]
    Io {
        /// The running binary.
        exe: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
}

/// Serves one update stream from the manager: receive, check, swap, answer, restart.
/// Returns only when the update was refused (or the restart failed and was undone).
pub async fn receive(mut send: quinn::SendStream, mut recv: quinn::RecvStream, offer: AgentUpgrade) {
    use std::sync::atomic::Ordering;
    if BUSY.swap(true, Ordering::AcqRel) {
        let e = ErrorReply::new(ErrorKind::Conflict, "an agent update is already under way on this board");
        return crate::exec::refuse(send, e).await;
    }
    let result = install(&mut recv, &offer).await;
    let files = match result {
        Ok(files) => files,
        Err(e) => {
            BUSY.store(false, Ordering::Release);
            warn!(error = %e, "refused an agent update");
            return crate::exec::refuse(send, ErrorReply::new(ErrorKind::InvalidRequest, &e.to_string())).await;
        }
    };
    info!(digest = %offer.digest, "new agent binary installed; restarting on it");
    let _ = framed::send(&mut send, &Response::UpgradeAccepted).await;
    let _ = send.finish();
    // The answer must reach the manager before this process is replaced.
    let _ = tokio::time::timeout(Duration::from_secs(2), send.stopped()).await;
    let e = restart(&files);
    // Still here: the exec failed. Undo the swap; this agent goes on as before.
    error!(error = %e, "cannot start the new agent binary; keeping this one");
    if let Err(e) = restore(&files) {
        error!(error = %e, "cannot restore the previous agent binary");
    }
    BUSY.store(false, Ordering::Release);
}

/// Writes the offered binary beside the running one and swaps them, leaving a marker.
async fn install(recv: &mut quinn::RecvStream, offer: &AgentUpgrade) -> Result<Files, UpgradeError> {
    if offer.size > MAX_AGENT_BYTES || offer.size < HEADER_LEN as u64 {
        return Err(UpgradeError::Invalid(format!(
            "a build of {} bytes is out of bounds (at most {MAX_AGENT_BYTES})",
            offer.size
        )));
    }
    if shoal_proto::images::sha256_hex(&offer.digest).is_none() {
        return Err(UpgradeError::Invalid(format!("malformed digest {:?}: expected sha256:<hex>", offer.digest)));
    }
    let (lo, hi) = DEADLINE_RANGE_MS;
    let deadline = u64::from(offer.deadline_ms.clamp(lo, hi));
    let files = Files::current().map_err(|source| UpgradeError::Io { exe: "shoal-agent".into(), source })?;
    let io = |source| UpgradeError::Io { exe: files.exe.clone(), source };
    let mut out = std::fs::File::create(&files.new).map_err(io)?;
    let cleanup = RemoveOnFailure(files.new.clone());
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut header = Vec::with_capacity(HEADER_LEN);
    let mut buf = vec![0u8; 128 * 1024];
    let mut left = offer.size;
    // At least 1 MiB/s, as uploads to the manager.
    let time = Duration::from_secs(30 + offer.size / (1 << 20));
    let receiving = async {
        while left > 0 {
            let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
            // `None`: the manager finished the stream.
            let n = recv.read(&mut buf[..want]).await.map_err(|e| UpgradeError::Transfer(e.to_string()))?.unwrap_or(0);
            if n == 0 {
                return Err(UpgradeError::Transfer(format!("{left} bytes missing")));
            }
            let chunk = &buf[..n];
            if header.len() < HEADER_LEN {
                header.extend_from_slice(&chunk[..chunk.len().min(HEADER_LEN - header.len())]);
            }
            ctx.update(chunk);
            out.write_all(chunk).map_err(io)?;
            left -= n as u64;
        }
        Ok(())
    };
    tokio::time::timeout(time, receiving)
        .await
        .map_err(|_| UpgradeError::Transfer(format!("not complete within {}s", time.as_secs())))??;
    let got = format!("sha256:{}", shoal_proto::hex(ctx.finish().as_ref()));
    if got != offer.digest.as_str() {
        return Err(UpgradeError::Digest { want: offer.digest.to_string(), got });
    }
    let mut own = [0u8; HEADER_LEN];
    std::fs::File::open("/proc/self/exe").and_then(|mut f| std::io::Read::read_exact(&mut f, &mut own)).map_err(io)?;
    decide::fits(&header, &own)?;
    let marker = Marker { digest: got, deadline_ms: wall_ms() + deadline };
    let swapped = files.clone();
    tokio::task::spawn_blocking(move || swap(&swapped, out, &marker))
        .await
        .map_err(|e| io(std::io::Error::other(e.to_string())))?
        .map_err(io)?;
    std::mem::forget(cleanup);
    Ok(files)
}

/// Deletes a half-written build unless forgotten.
struct RemoveOnFailure(PathBuf);

impl Drop for RemoveOnFailure {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Makes the new binary durable and executable, keeps the running one as `.prev`, writes
/// the marker, then renames the new one over the running one: every step leaves a board
/// that boots one whole binary or the other.
fn swap(files: &Files, out: std::fs::File, marker: &Marker) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    out.set_permissions(std::fs::Permissions::from_mode(0o755))?;
    out.sync_all()?;
    drop(out);
    let tmp = files.prev.with_extension("prev.tmp");
    let _ = std::fs::remove_file(&tmp);
    // A hard link costs no space; a file system without them gets a copy.
    if std::fs::hard_link(&files.exe, &tmp).is_err() {
        std::fs::copy(&files.exe, &tmp)?;
        std::fs::File::open(&tmp)?.sync_all()?;
    }
    std::fs::rename(&tmp, &files.prev)?;
    write_durably(&files.marker, &serde_json::to_vec(marker).map_err(std::io::Error::other)?)?;
    std::fs::rename(&files.new, &files.exe)?;
    sync_dir(&files.exe)
}

fn write_durably(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

fn sync_dir(file: &Path) -> std::io::Result<()> {
    match file.parent() {
        Some(dir) => std::fs::File::open(dir)?.sync_all(),
        None => Ok(()),
    }
}

/// Puts the previous binary back and clears the marker.
fn restore(files: &Files) -> std::io::Result<()> {
    std::fs::rename(&files.prev, &files.exe)?;
    let _ = std::fs::remove_file(&files.marker);
    sync_dir(&files.exe)
}

fn restart_args() -> Vec<OsString> {
    RESTART_ARGS.get().cloned().unwrap_or_else(|| vec!["run".into()])
}

/// Starts the watchdog (from the previous binary), then replaces this process with the
/// new binary. Returns only if that failed.
fn restart(files: &Files) -> std::io::Error {
    let args = restart_args();
    // The watchdog detaches itself (it forks once more and this child exits), so it is
    // reaped here and outlives the exec below.
    let spawned = std::process::Command::new(&files.prev)
        .arg("upgrade-watch")
        .arg("--pid")
        .arg(std::process::id().to_string())
        .arg("--exe")
        .arg(&files.exe)
        .arg("--detach")
        .arg("--")
        .args(&args)
        .stdin(std::process::Stdio::null())
        .status();
    if let Err(e) = spawned {
        return std::io::Error::other(format!("cannot start the update watchdog: {e}"));
    }
    std::process::Command::new(&files.exe).args(&args).exec()
}

/// The new agent has a session with the manager: the update held, clear its marker.
pub fn session_opened() {
    let Ok(files) = Files::current() else { return };
    if let Some(marker) = files.read_marker() {
        if marker.digest == own_digest() {
            match std::fs::remove_file(&files.marker) {
                Ok(()) => info!(version = %own_version(), "agent update confirmed by a session with the manager"),
                Err(e) => warn!(error = %e, "cannot clear the agent update marker"),
            }
        }
    }
}

/// At start: an update left on trial past its deadline (the board restarted before the
/// new agent reached the manager) is undone; one still within its deadline gets a timer
/// that undoes it unless a session clears the marker first.
pub fn on_start() {
    let Ok(files) = Files::current() else { return };
    let Some(marker) = files.read_marker() else { return };
    match decide::on_start(&marker, own_digest(), wall_ms()) {
        Verdict::Clear => {
            let _ = std::fs::remove_file(&files.marker);
        }
        Verdict::RollBack => {
            error!("this agent build did not reach the manager before its update deadline; restoring the previous one");
            roll_back(&files);
        }
        Verdict::Wait => {
            let wait = Duration::from_millis(marker.deadline_ms.saturating_sub(wall_ms()));
            std::thread::spawn(move || {
                std::thread::sleep(wait);
                if files.read_marker().is_some_and(|m| m.digest == own_digest()) {
                    error!("no session with the manager before the update deadline; restoring the previous agent");
                    roll_back(&files);
                }
            });
        }
    }
}

/// Restores the previous binary and replaces this process with it; on failure the
/// process exits, leaving the board to its service manager.
fn roll_back(files: &Files) -> ! {
    if let Err(e) = restore(files) {
        error!(error = %e, "cannot restore the previous agent binary");
        std::process::exit(1);
    }
    let e = std::process::Command::new(&files.exe).args(restart_args()).exec();
    error!(error = %e, "cannot start the restored agent binary");
    std::process::exit(1)
}

/// `shoal-agent upgrade-watch`: the watchdog. With `detach`, starts itself again in its
/// own process group and returns at once. Otherwise polls until the marker is cleared
/// (the update held) or the update fails, then restores the previous binary and becomes
/// the agent, with `args`.
pub fn watch(pid: u32, exe: &Path, detach: bool, args: Vec<OsString>) -> i32 {
    if detach {
        let me = std::env::current_exe().unwrap_or_else(|_| exe.with_extension("prev"));
        let spawned = std::process::Command::new(me)
            .arg("upgrade-watch")
            .arg("--pid")
            .arg(pid.to_string())
            .arg("--exe")
            .arg(exe)
            .arg("--")
            .args(&args)
            .process_group(0)
            .stdin(std::process::Stdio::null())
            .spawn();
        return i32::from(spawned.is_err());
    }
    let _ = RESTART_ARGS.set(args);
    let files = Files::beside(exe);
    loop {
        let marker = files.read_marker();
        match decide::watch(marker.as_ref(), alive(pid), wall_ms()) {
            Verdict::Clear => return 0,
            Verdict::Wait => std::thread::sleep(Duration::from_millis(100)),
            Verdict::RollBack => {
                if alive(pid) {
                    error!(pid, "the new agent did not reach the manager before the update deadline; stopping it");
                    stop(pid);
                } else {
                    error!(pid, "the new agent exited; restoring the previous agent binary");
                }
                if supervised() {
                    // The service manager restarts the agent it lost (on the restored
                    // binary); starting one here too would make two.
                    return match restore(&files) {
                        Ok(()) => 0,
                        Err(e) => {
                            error!(error = %e, "cannot restore the previous agent binary");
                            1
                        }
                    };
                }
                roll_back(&files);
            }
        }
    }
}

/// Whether a service manager restarts the agent when it exits: systemd says so with
/// `INVOCATION_ID`; other supervisors (OpenRC's supervise-daemon, runit) with
/// `SHOAL_SUPERVISED=1` in the agent's environment.
fn supervised() -> bool {
    std::env::var_os("INVOCATION_ID").is_some() || std::env::var_os("SHOAL_SUPERVISED").is_some_and(|v| v == "1")
}

/// Whether `pid` runs (a zombie does not).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name, which is in parentheses and may hold any byte.
        Ok(stat) => stat.rsplit_once(')').is_some_and(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X'])),
        Err(_) => false,
    }
}

fn stop(pid: u32) {
    let Some(pid) = rustix::process::Pid::from_raw(pid as i32) else { return };
    let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    for _ in 0..50 {
        if !alive(pid.as_raw_nonzero().get() as u32) {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
}
