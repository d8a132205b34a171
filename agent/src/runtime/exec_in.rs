//! `shoal-agent exec-in`: runs one command inside a running container, as `runc exec`
//! does, through libcontainer's tenant builder, and exits with the command's code. The
//! agent starts it with pipes for the command's standard streams (see `crate::exec`).
//!
//! The command runs as the container's user, in its working directory, under its
//! seccomp filter (compiled from the container's own spec: libcontainer's tenant spec
//! drops it) and with a signal-forwarding parent ([`super::init::TenantExecutor`]).

use std::path::Path;

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::syscall::syscall::SyscallType;
use rustix::process::{Pid, WaitOptions};

/// Runs `args` in container `id` (libcontainer state under `state_root`) and returns
/// the exit code to exit with: the command's, 128 + signal, or 126 when it could not run.
pub fn run(containers_root: &Path, state_root: &Path, id: &str, args: &[String]) -> i32 {
    if let Err(e) = super::validate_id(id) {
        eprintln!("shoal exec: {e}");
        return 126;
    }
    if args.is_empty() {
        eprintln!("shoal exec: no command given");
        return 126;
    }
    // libcontainer moves the command into the container's cgroup: its wait starts here.
    super::attach_warmup::start();
    let bundle = super::bundle::Bundle::new(containers_root, id);
    let spec = match oci_spec::runtime::Spec::load(bundle.config()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("shoal exec: cannot read the spec of container {id}: {e}");
            return 126;
        }
    };
    let filter = match super::init::seccomp_filter(&spec) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("shoal exec: the container's seccomp filter does not compile: {e}");
            return 126;
        }
    };
    let process = spec.process().as_ref();
    let user = process.map(|p| p.user());
    let built = ContainerBuilder::new(id.to_owned(), SyscallType::Linux).with_root_path(state_root).map(|b| {
        b.with_executor(super::init::TenantExecutor { filter })
            .as_tenant()
            .with_container_args(args.to_vec())
            .with_user(user.map(|u| u.uid()))
            .with_group(user.map(|u| u.gid()))
            .with_additional_gids(user.and_then(|u| u.additional_gids().clone()).unwrap_or_default())
            .with_cwd(process.map(|p| p.cwd().clone()))
            .with_detach(false)
            .build()
    });
    let pid = match built {
        Ok(Ok(pid)) => pid,
        Ok(Err(e)) | Err(e) => {
            eprintln!("shoal exec: cannot run {} in container {id}: {e}", args[0]);
            return 126;
        }
    };
    let Some(pid) = Pid::from_raw(pid.as_raw()) else { return 126 };
    loop {
        match rustix::process::waitpid(Some(pid), WaitOptions::empty()) {
            Ok(Some((_, status))) => {
                if let Some(code) = status.exit_status() {
                    return code;
                }
                if let Some(sig) = status.terminating_signal() {
                    return 128 + sig;
                }
            }
            Ok(None) => {}
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => {
                eprintln!("shoal exec: waiting for the command: {e}");
                return 126;
            }
        }
    }
}
