//! A minimal init for PID 1 inside each container, like `docker run --init` (tini). It
//! is libcontainer's workload executor: it runs in the container's init process, after
//! the namespaces, root filesystem, capabilities and limits are in place, where the
//! default executor would `exec` the command.
//!
//! Why: the kernel drops signals sent to a PID namespace's init from outside unless it
//! installed a handler, so `SIGTERM` to a plain `httpd` as PID 1 does nothing and every
//! stop would end in `SIGKILL` after the grace period. With this init as PID 1 the
//! command runs as PID 2, receives forwarded signals with their default meaning (a
//! stop ends with 143, as in the lab), and orphaned processes are reaped. Being code of
//! the (static) agent already in memory, it needs nothing inside the image.
//!
//! It is also where the container's seccomp filter is loaded (the spec's
//! `linux.seccomp`, compiled by [`super::seccomp`]): after libcontainer has set
//! `no_new_privileges` and dropped capabilities, before the command runs, so the
//! filter covers the init and everything it starts.

use std::process::Command;

use libcontainer::workload::{default::DefaultExecutor, Executor, ExecutorError, ExecutorValidationError};
use oci_spec::runtime::Spec;

use super::seccomp::{bpf, install, SeccompError};

use rustix::process::{Pid, WaitOptions};
use signal_hook::consts::{SIGCHLD, SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2, SIGWINCH};
use signal_hook::iterator::Signals;

/// Runs `args` as the container's main process and returns the exit code to exit with.
pub fn run(args: &[String]) -> i32 {
    let Some((program, rest)) = args.split_first() else {
        eprintln!("shoal-init: no command given");
        return 127;
    };
    // Register before spawning so no signal or child exit falls in between.
    let mut signals = match Signals::new([SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGWINCH, SIGCHLD]) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("shoal-init: signals: {e}");
            return 126;
        }
    };
    let child = match Command::new(program).args(rest).spawn() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("shoal-init: cannot run {program}: {e}");
            return if e.kind() == std::io::ErrorKind::NotFound { 127 } else { 126 };
        }
    };
    let Some(main_pid) = Pid::from_raw(child.id() as i32) else { return 126 };
    for signal in signals.forever() {
        if signal != SIGCHLD {
            if let Some(sig) = rustix::process::Signal::from_named_raw(signal) {
                let _ = rustix::process::kill_process(main_pid, sig);
            }
            continue;
        }
        // Reap everything that exited; stop when the main process is among them.
        while let Ok(Some((pid, status))) = rustix::process::wait(WaitOptions::NOHANG) {
            if pid == main_pid {
                if let Some(code) = status.exit_status() {
                    return code;
                }
                return 128 + status.terminating_signal().unwrap_or(0);
            }
        }
    }
    126
}

/// The executor that makes [`run`] the container's PID 1.
#[derive(Clone, Default)]
pub struct InitExecutor;

/// The filter [`InitExecutor::validate`] compiled, for its `exec` in the same process
/// (the container's init: a fresh fork per container). libcontainer validates before it
/// tells the shim the container is ready and executes after the shim said start, so
/// compiling once, early, takes the compilation off the path from start to the command.
static VALIDATED_FILTER: std::sync::OnceLock<Option<Vec<bpf::Insn>>> = std::sync::OnceLock::new();

/// The compiled seccomp filter of `spec`, if it has one.
pub(super) fn seccomp_filter(spec: &Spec) -> Result<Option<Vec<bpf::Insn>>, SeccompError> {
    match spec.linux().as_ref().and_then(|l| l.seccomp().as_ref()) {
        Some(section) => bpf::compile(section, bpf::Abi::native()).map(Some),
        None => Ok(None),
    }
}

impl Executor for InitExecutor {
    fn exec(&self, spec: &Spec) -> Result<(), ExecutorError> {
        let args = spec.process().as_ref().and_then(|p| p.args().clone()).ok_or(ExecutorError::InvalidArg)?;
        // Fail closed: a container whose filter can't be loaded does not run.
        let compiled;
        let filter = match VALIDATED_FILTER.get() {
            Some(filter) => filter.as_deref(),
            None => {
                compiled = seccomp_filter(spec).map_err(|e| ExecutorError::Other(e.to_string()))?;
                compiled.as_deref()
            }
        };
        // The container is made: the code that made it goes from this process's memory
        // (see `trim`), before a filter that might not allow `madvise`.
        super::trim::release();
        if let Some(filter) = filter {
            install::install(filter).map_err(|e| ExecutorError::Other(e.to_string()))?;
        }
        // `--no-init`: the command itself is PID 1, as under Docker without `--init`.
        let no_init = spec.annotations().as_ref().is_some_and(|a| a.contains_key(super::options::NO_INIT_ANNOTATION));
        if no_init {
            return DefaultExecutor {}.exec(spec);
        }
        std::process::exit(run(&args));
    }

    /// The default checks (the executable exists and may be run, so a wrong command is a
    /// start failure with a clear reason rather than a container that exits at once), and
    /// that the seccomp filter compiles.
    fn validate(&self, spec: &Spec) -> Result<(), ExecutorValidationError> {
        let filter = seccomp_filter(spec).map_err(|e| ExecutorValidationError::ArgValidationError(e.to_string()))?;
        let _ = VALIDATED_FILTER.set(filter);
        DefaultExecutor {}.validate(spec)
    }
}

/// The executor of a command run in an existing container (`shoal exec`). libcontainer
/// builds a tenant's spec anew, without the container's `linux.seccomp`, so the filter
/// is compiled from the container's own spec beforehand and carried here. The command
/// replaces this process (it is no namespace's init, so needs no [`run`] around it) and
/// dies with its parent, `exec-in`, which the agent kills when the exec's stream breaks.
#[derive(Clone)]
pub struct TenantExecutor {
    /// The container's compiled filter, if it has one.
    pub filter: Option<Vec<bpf::Insn>>,
}

impl Executor for TenantExecutor {
    fn exec(&self, spec: &Spec) -> Result<(), ExecutorError> {
        rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))
            .map_err(|e| ExecutorError::Other(format!("setting the parent-death signal: {e}")))?;
        if let Some(filter) = &self.filter {
            install::install(filter).map_err(|e| ExecutorError::Other(e.to_string()))?;
        }
        DefaultExecutor {}.exec(spec)
    }

    fn validate(&self, spec: &Spec) -> Result<(), ExecutorValidationError> {
        DefaultExecutor {}.validate(spec)
    }
}
