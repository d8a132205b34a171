//! Seccomp profiles as Docker writes them (`docker run --security-opt seccomp=FILE`):
//! rules with `includes`/`excludes` by capability, architecture and kernel, resolved for
//! one container into the plain OCI `linux.seccomp` section [`super::bpf`] compiles.
//!
//! [`default_profile`] is shoal's default, the same policy as Docker's default profile
//! (moby `profiles/seccomp/default.json`), written out here as data: an allow-list, with
//! `EPERM` for everything else. Like Docker 25 and later it refuses `io_uring_*`.
//!
//! Pure: the capabilities, architecture and kernel version are parameters.

use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompArgBuilder, LinuxSeccompBuilder,
    LinuxSeccompOperator, LinuxSyscall, LinuxSyscallBuilder,
};
use serde::Deserialize;

use super::SeccompError;

/// The largest profile a service may carry (Docker's default is ~12 KiB as JSON).
pub const MAX_PROFILE_BYTES: usize = 64 * 1024;

/// A profile in Docker's format.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Profile {
    default_action: LinuxSeccompAction,
    #[serde(default)]
    default_errno_ret: Option<u32>,
    #[serde(default)]
    architectures: Vec<Arch>,
    #[serde(default)]
    arch_map: Vec<ArchMap>,
    #[serde(default)]
    syscalls: Vec<Rule>,
    // Accepted and ignored, as runc does on boards without a seccomp agent.
    #[serde(default, rename = "flags")]
    _flags: serde::de::IgnoredAny,
    #[serde(default, rename = "listenerPath")]
    _listener_path: serde::de::IgnoredAny,
    #[serde(default, rename = "listenerMetadata")]
    _listener_metadata: serde::de::IgnoredAny,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ArchMap {
    architecture: Arch,
    #[serde(default)]
    sub_architectures: Option<Vec<Arch>>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Rule {
    #[serde(default)]
    names: Vec<String>,
    /// The older single-name form.
    #[serde(default)]
    name: Option<String>,
    action: LinuxSeccompAction,
    #[serde(default)]
    errno_ret: Option<u32>,
    #[serde(default)]
    args: Option<Vec<LinuxSeccompArg>>,
    #[serde(default)]
    includes: Filter,
    #[serde(default)]
    excludes: Filter,
    #[serde(default, rename = "comment")]
    _comment: serde::de::IgnoredAny,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Filter {
    #[serde(default)]
    caps: Vec<String>,
    /// Go's architecture names (`amd64`, `arm64`, `arm`, …), as Docker matches them.
    #[serde(default)]
    arches: Vec<String>,
    #[serde(default)]
    min_kernel: Option<String>,
}

/// What a profile is resolved against.
#[derive(Clone, Debug)]
pub struct Target<'a> {
    /// The container's bounding capabilities (`CAP_…`).
    pub caps: &'a [&'a str],
    /// Go's name of the board's architecture (`amd64`, `arm64`, `arm`).
    pub go_arch: &'a str,
    /// The board's kernel version (major, minor).
    pub kernel: (u32, u32),
}

impl Target<'_> {
    /// The seccomp architecture of the board.
    fn native_arch(&self) -> Option<Arch> {
        match self.go_arch {
            "amd64" => Some(Arch::ScmpArchX86_64),
            "arm64" => Some(Arch::ScmpArchAarch64),
            "arm" => Some(Arch::ScmpArchArm),
            "386" => Some(Arch::ScmpArchX86),
            _ => None,
        }
    }
}

/// Go's name for the architecture this agent was built for.
pub fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm",
        "x86" => "386",
        other => other,
    }
}

/// Parses a profile in Docker's format, refusing oversized or malformed input.
pub fn parse(json: &str) -> Result<Profile, SeccompError> {
    if json.len() > MAX_PROFILE_BYTES {
        return Err(SeccompError::Invalid(format!(
            "the profile is {} bytes; at most {MAX_PROFILE_BYTES} are accepted",
            json.len()
        )));
    }
    let profile: Profile = serde_json::from_str(json).map_err(|e| SeccompError::Invalid(e.to_string()))?;
    for rule in &profile.syscalls {
        if rule.names.is_empty() && rule.name.is_none() {
            return Err(SeccompError::Invalid("a syscall rule names no system call".into()));
        }
        for arg in rule.args.iter().flatten() {
            if arg.index() > 5 {
                return Err(SeccompError::Invalid(format!("argument index {} (system calls have 6)", arg.index())));
            }
        }
    }
    Ok(profile)
}

impl Profile {
    /// The OCI section for one container on one board, as Docker resolves it.
    pub fn resolve(&self, target: &Target) -> LinuxSeccomp {
        let mut architectures = self.architectures.clone();
        if let Some(native) = target.native_arch() {
            for map in &self.arch_map {
                if map.architecture == native {
                    architectures.push(native);
                    architectures.extend(map.sub_architectures.iter().flatten().copied());
                }
            }
            if architectures.is_empty() {
                architectures.push(native);
            }
        }
        let syscalls: Vec<LinuxSyscall> = self
            .syscalls
            .iter()
            .filter(|rule| rule.applies(target))
            .map(|rule| {
                let mut names = rule.names.clone();
                names.extend(rule.name.clone());
                let mut b = LinuxSyscallBuilder::default().names(names).action(rule.action);
                if let Some(errno) = rule.errno_ret {
                    b = b.errno_ret(errno);
                }
                if let Some(args) = &rule.args {
                    b = b.args(args.clone());
                }
                b.build().expect("every field of a syscall rule is set")
            })
            .collect();
        let mut b = LinuxSeccompBuilder::default()
            .default_action(self.default_action)
            .architectures(architectures)
            .syscalls(syscalls);
        if let Some(errno) = self.default_errno_ret {
            b = b.default_errno_ret(errno);
        }
        b.build().expect("every field of a seccomp section is set")
    }
}

impl Rule {
    fn applies(&self, t: &Target) -> bool {
        let has = |cap: &String| t.caps.iter().any(|c| c == cap);
        let inc = &self.includes;
        if !inc.caps.iter().all(has) {
            return false;
        }
        if !inc.arches.is_empty() && !inc.arches.iter().any(|a| a == t.go_arch) {
            return false;
        }
        if let Some(min) = &inc.min_kernel {
            if kernel_version(min).is_some_and(|min| t.kernel < min) {
                return false;
            }
        }
        let exc = &self.excludes;
        if exc.caps.iter().any(has) || exc.arches.iter().any(|a| a == t.go_arch) {
            return false;
        }
        true
    }
}

/// `major.minor` of a kernel release string (`6.1.0-rpi7-rpi-v8` → (6, 1)).
pub fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next().and_then(|m| m.parse().ok()).unwrap_or(0);
    Some((major, minor))
}

/// The calls every container may make, whatever its capabilities (Docker's default
/// allow-list, less `io_uring_*`). Names of every architecture are listed; each ABI's
/// table keeps those it has.
const ALWAYS: &[&str] = &[
    // files and directories
    "access",
    "chdir",
    "chmod",
    "chown",
    "chown32",
    "close",
    "close_range",
    "copy_file_range",
    "creat",
    "dup",
    "dup2",
    "dup3",
    "faccessat",
    "faccessat2",
    "fadvise64",
    "fadvise64_64",
    "fallocate",
    "fchdir",
    "fchmod",
    "fchmodat",
    "fchown",
    "fchown32",
    "fchownat",
    "fcntl",
    "fcntl64",
    "fdatasync",
    "fgetxattr",
    "flistxattr",
    "flock",
    "fremovexattr",
    "fsetxattr",
    "fstat",
    "fstat64",
    "fstatat64",
    "fstatfs",
    "fstatfs64",
    "fsync",
    "ftruncate",
    "ftruncate64",
    "futimesat",
    "getcwd",
    "getdents",
    "getdents64",
    "getxattr",
    "inotify_add_watch",
    "inotify_init",
    "inotify_init1",
    "inotify_rm_watch",
    "lchown",
    "lchown32",
    "lgetxattr",
    "link",
    "linkat",
    "listxattr",
    "llistxattr",
    "_llseek",
    "lremovexattr",
    "lseek",
    "lsetxattr",
    "lstat",
    "lstat64",
    "mkdir",
    "mkdirat",
    "mknod",
    "mknodat",
    "name_to_handle_at",
    "newfstatat",
    "open",
    "openat",
    "openat2",
    "pread64",
    "preadv",
    "preadv2",
    "pwrite64",
    "pwritev",
    "pwritev2",
    "read",
    "readahead",
    "readlink",
    "readlinkat",
    "readv",
    "removexattr",
    "rename",
    "renameat",
    "renameat2",
    "rmdir",
    "sendfile",
    "sendfile64",
    "setxattr",
    "splice",
    "stat",
    "stat64",
    "statfs",
    "statfs64",
    "statx",
    "symlink",
    "symlinkat",
    "sync",
    "sync_file_range",
    "syncfs",
    "tee",
    "truncate",
    "truncate64",
    "umask",
    "unlink",
    "unlinkat",
    "utime",
    "utimensat",
    "utimensat_time64",
    "utimes",
    "vmsplice",
    "write",
    "writev",
    "fanotify_mark",
    // memory
    "brk",
    "madvise",
    "membarrier",
    "memfd_create",
    "memfd_secret",
    "mincore",
    "mlock",
    "mlock2",
    "mlockall",
    "mmap",
    "mmap2",
    "mprotect",
    "mremap",
    "msync",
    "munlock",
    "munlockall",
    "munmap",
    "pkey_alloc",
    "pkey_free",
    "pkey_mprotect",
    "remap_file_pages",
    // processes, threads, signals
    "capget",
    "capset",
    "execve",
    "execveat",
    "exit",
    "exit_group",
    "fork",
    "vfork",
    "futex",
    "futex_time64",
    "futex_waitv",
    "get_robust_list",
    "set_robust_list",
    "getcpu",
    "getegid",
    "getegid32",
    "geteuid",
    "geteuid32",
    "getgid",
    "getgid32",
    "getgroups",
    "getgroups32",
    "getpgid",
    "getpgrp",
    "getpid",
    "getppid",
    "getpriority",
    "getresgid",
    "getresgid32",
    "getresuid",
    "getresuid32",
    "getrlimit",
    "ugetrlimit",
    "getrusage",
    "getsid",
    "get_thread_area",
    "set_thread_area",
    "gettid",
    "getuid",
    "getuid32",
    "ioprio_get",
    "ioprio_set",
    "kill",
    "tkill",
    "tgkill",
    "pidfd_open",
    "pidfd_send_signal",
    "prctl",
    "prlimit64",
    "process_mrelease",
    "restart_syscall",
    "rseq",
    "rt_sigaction",
    "rt_sigpending",
    "rt_sigprocmask",
    "rt_sigqueueinfo",
    "rt_sigreturn",
    "rt_sigsuspend",
    "rt_sigtimedwait",
    "rt_sigtimedwait_time64",
    "rt_tgsigqueueinfo",
    "sched_getaffinity",
    "sched_getattr",
    "sched_getparam",
    "sched_get_priority_max",
    "sched_get_priority_min",
    "sched_getscheduler",
    "sched_rr_get_interval",
    "sched_rr_get_interval_time64",
    "sched_setaffinity",
    "sched_setattr",
    "sched_setparam",
    "sched_setscheduler",
    "sched_yield",
    "seccomp",
    "setfsgid",
    "setfsgid32",
    "setfsuid",
    "setfsuid32",
    "setgid",
    "setgid32",
    "setgroups",
    "setgroups32",
    "setpgid",
    "setpriority",
    "setregid",
    "setregid32",
    "setresgid",
    "setresgid32",
    "setresuid",
    "setresuid32",
    "setreuid",
    "setreuid32",
    "setrlimit",
    "setsid",
    "set_tid_address",
    "setuid",
    "setuid32",
    "sigaltstack",
    "signalfd",
    "signalfd4",
    "sigprocmask",
    "sigreturn",
    "wait4",
    "waitid",
    "waitpid",
    "landlock_add_rule",
    "landlock_create_ruleset",
    "landlock_restrict_self",
    // time
    "adjtimex",
    "alarm",
    "clock_adjtime",
    "clock_adjtime64",
    "clock_getres",
    "clock_getres_time64",
    "clock_gettime",
    "clock_gettime64",
    "clock_nanosleep",
    "clock_nanosleep_time64",
    "getitimer",
    "gettimeofday",
    "nanosleep",
    "setitimer",
    "time",
    "timer_create",
    "timer_delete",
    "timer_getoverrun",
    "timer_gettime",
    "timer_gettime64",
    "timer_settime",
    "timer_settime64",
    "timerfd_create",
    "timerfd_gettime",
    "timerfd_gettime64",
    "timerfd_settime",
    "timerfd_settime64",
    "times",
    // waiting for I/O, asynchronous I/O
    "epoll_create",
    "epoll_create1",
    "epoll_ctl",
    "epoll_ctl_old",
    "epoll_pwait",
    "epoll_pwait2",
    "epoll_wait",
    "epoll_wait_old",
    "eventfd",
    "eventfd2",
    "io_cancel",
    "io_destroy",
    "io_getevents",
    "io_pgetevents",
    "io_pgetevents_time64",
    "io_setup",
    "io_submit",
    "pause",
    "pipe",
    "pipe2",
    "poll",
    "ppoll",
    "ppoll_time64",
    "pselect6",
    "pselect6_time64",
    "select",
    "_newselect",
    "ioctl",
    // sockets (socket itself has an argument rule below)
    "accept",
    "accept4",
    "bind",
    "connect",
    "getpeername",
    "getsockname",
    "getsockopt",
    "listen",
    "recv",
    "recvfrom",
    "recvmmsg",
    "recvmmsg_time64",
    "recvmsg",
    "send",
    "sendmmsg",
    "sendmsg",
    "sendto",
    "setsockopt",
    "shutdown",
    "socketcall",
    "socketpair",
    // System V and POSIX IPC (inside the container's IPC namespace)
    "ipc",
    "mq_getsetattr",
    "mq_notify",
    "mq_open",
    "mq_timedreceive",
    "mq_timedreceive_time64",
    "mq_timedsend",
    "mq_timedsend_time64",
    "mq_unlink",
    "msgctl",
    "msgget",
    "msgrcv",
    "msgsnd",
    "semctl",
    "semget",
    "semop",
    "semtimedop",
    "semtimedop_time64",
    "shmat",
    "shmctl",
    "shmdt",
    "shmget",
    // the system
    "getrandom",
    "sysinfo",
    "uname",
];

/// Calls allowed only with a capability, as Docker pairs them.
const WITH_CAPABILITY: &[(&str, &[&str])] = &[
    ("CAP_DAC_READ_SEARCH", &["open_by_handle_at"]),
    (
        "CAP_SYS_ADMIN",
        &[
            "bpf",
            "clone",
            "clone3",
            "fanotify_init",
            "fsconfig",
            "fsmount",
            "fsopen",
            "fspick",
            "lookup_dcookie",
            "mount",
            "mount_setattr",
            "move_mount",
            "open_tree",
            "perf_event_open",
            "quotactl",
            "quotactl_fd",
            "setdomainname",
            "sethostname",
            "setns",
            "syslog",
            "umount",
            "umount2",
            "unshare",
        ],
    ),
    ("CAP_SYS_BOOT", &["reboot"]),
    ("CAP_SYS_CHROOT", &["chroot"]),
    ("CAP_SYS_MODULE", &["delete_module", "init_module", "finit_module"]),
    ("CAP_SYS_PACCT", &["acct"]),
    ("CAP_SYS_PTRACE", &["kcmp", "pidfd_getfd", "process_madvise", "process_vm_readv", "process_vm_writev", "ptrace"]),
    ("CAP_SYS_RAWIO", &["iopl", "ioperm"]),
    ("CAP_SYS_TIME", &["settimeofday", "stime", "clock_settime", "clock_settime64"]),
    ("CAP_SYS_TTY_CONFIG", &["vhangup"]),
    ("CAP_SYS_NICE", &["get_mempolicy", "mbind", "set_mempolicy", "set_mempolicy_home_node"]),
    ("CAP_SYSLOG", &["syslog"]),
    ("CAP_BPF", &["bpf"]),
    ("CAP_PERFMON", &["perf_event_open"]),
];

/// `clone` flags that make new namespaces (CLONE_NEWNS … CLONE_NEWNET, CLONE_NEWCGROUP):
/// without CAP_SYS_ADMIN a container may make threads and processes, not namespaces.
const CLONE_NAMESPACE_FLAGS: u64 = 0x7E02_0000;

/// The only `personality` values Docker lets through (Linux, and the 32-bit ones).
const PERSONALITIES: [u64; 5] = [0x0, 0x8, 0x20000, 0x20008, 0xffff_ffff];

/// `AF_VSOCK`: host–guest sockets, refused.
const AF_VSOCK: u64 = 40;

fn plain(names: &[&str], action: LinuxSeccompAction) -> Rule {
    Rule {
        names: names.iter().map(|s| s.to_string()).collect(),
        name: None,
        action,
        errno_ret: None,
        args: None,
        includes: Filter::default(),
        excludes: Filter::default(),
        _comment: serde::de::IgnoredAny,
    }
}

fn arg(index: usize, op: LinuxSeccompOperator, value: u64) -> LinuxSeccompArg {
    LinuxSeccompArgBuilder::default().index(index).op(op).value(value).build().expect("every field is set")
}

/// shoal's default profile: Docker's default policy.
pub fn default_profile() -> Profile {
    let allow = LinuxSeccompAction::ScmpActAllow;
    let mut syscalls = vec![plain(ALWAYS, allow)];
    // Tracing another process needs kernel 4.8's fix of ptrace's seccomp bypass.
    let mut ptrace = plain(&["process_vm_readv", "process_vm_writev", "ptrace"], allow);
    ptrace.includes.min_kernel = Some("4.8".into());
    syscalls.push(ptrace);
    let mut socket = plain(&["socket"], allow);
    socket.args = Some(vec![arg(0, LinuxSeccompOperator::ScmpCmpNe, AF_VSOCK)]);
    syscalls.push(socket);
    for value in PERSONALITIES {
        let mut p = plain(&["personality"], allow);
        p.args = Some(vec![arg(0, LinuxSeccompOperator::ScmpCmpEq, value)]);
        syscalls.push(p);
    }
    for (arches, names) in [
        (
            &["arm", "arm64"][..],
            &["arm_fadvise64_64", "arm_sync_file_range", "sync_file_range2", "breakpoint", "cacheflush", "set_tls"][..],
        ),
        (&["amd64", "x32"][..], &["arch_prctl"][..]),
        (&["amd64", "x32", "x86"][..], &["modify_ldt"][..]),
    ] {
        let mut r = plain(names, allow);
        r.includes.arches = arches.iter().map(|s| s.to_string()).collect();
        syscalls.push(r);
    }
    for (cap, names) in WITH_CAPABILITY {
        let mut r = plain(names, allow);
        r.includes.caps = vec![cap.to_string()];
        syscalls.push(r);
    }
    let mut clone = plain(&["clone"], allow);
    clone.args = Some(vec![arg(0, LinuxSeccompOperator::ScmpCmpMaskedEq, CLONE_NAMESPACE_FLAGS)]);
    clone.excludes.caps = vec!["CAP_SYS_ADMIN".into()];
    syscalls.push(clone);
    // clone3's flags live in memory a filter cannot read: ENOSYS makes libcs use clone.
    let mut clone3 = plain(&["clone3"], LinuxSeccompAction::ScmpActErrno);
    clone3.errno_ret = Some(38);
    clone3.excludes.caps = vec!["CAP_SYS_ADMIN".into()];
    syscalls.push(clone3);
    Profile {
        default_action: LinuxSeccompAction::ScmpActErrno,
        default_errno_ret: Some(1),
        architectures: vec![],
        arch_map: vec![
            ArchMap { architecture: Arch::ScmpArchX86_64, sub_architectures: Some(vec![Arch::ScmpArchX86]) },
            ArchMap { architecture: Arch::ScmpArchAarch64, sub_architectures: Some(vec![Arch::ScmpArchArm]) },
            ArchMap { architecture: Arch::ScmpArchArm, sub_architectures: None },
        ],
        syscalls,
        _flags: serde::de::IgnoredAny,
        _listener_path: serde::de::IgnoredAny,
        _listener_metadata: serde::de::IgnoredAny,
    }
}

/// Where the board cannot enforce a device cgroup (cgroup v2 without an eBPF device
/// program), `mknod` of character and block devices fails with EPERM whatever else the
/// profile says; regular files, FIFOs and sockets can still be made. The rules go first,
/// so no rule of the profile is tried before them.
pub fn forbid_device_nodes(seccomp: &mut LinuxSeccomp) {
    const S_IFMT: u64 = 0o170_000;
    const S_IFCHR: u64 = 0o020_000;
    const S_IFBLK: u64 = 0o060_000;
    let mut rules = Vec::new();
    for (name, index) in [("mknod", 1usize), ("mknodat", 2)] {
        for kind in [S_IFCHR, S_IFBLK] {
            let cond = LinuxSeccompArgBuilder::default()
                .index(index)
                .op(LinuxSeccompOperator::ScmpCmpMaskedEq)
                .value(S_IFMT)
                .value_two(kind)
                .build()
                .expect("every field is set");
            rules.push(
                LinuxSyscallBuilder::default()
                    .names(vec![name.to_string()])
                    .action(LinuxSeccompAction::ScmpActErrno)
                    .errno_ret(1u32)
                    .args(vec![cond])
                    .build()
                    .expect("every field is set"),
            );
        }
    }
    rules.extend(seccomp.syscalls().clone().unwrap_or_default());
    seccomp.set_syscalls(Some(rules));
}

/// A profile that allows everything: what `unconfined` leaves where device nodes must
/// still be refused by [`forbid_device_nodes`].
pub fn allow_all() -> Profile {
    let mut p = default_profile();
    p.default_action = LinuxSeccompAction::ScmpActAllow;
    p.default_errno_ret = None;
    p.syscalls.clear();
    p
}

#[cfg(test)]
mod tests {
    use super::super::bpf::{self, Abi, RET_ALLOW};
    use super::*;
    use crate::runtime::spec::DEFAULT_CAPABILITIES;

    fn target(caps: &'static [&'static str], go_arch: &'static str) -> Target<'static> {
        Target { caps, go_arch, kernel: (6, 1) }
    }

    fn decide(seccomp: &LinuxSeccomp, abis: &[Abi], abi: Abi, name: &str, args: [u64; 6]) -> u32 {
        let prog = bpf::compile(seccomp, abis).unwrap();
        bpf::run(&prog, abi, abi.syscall(name).unwrap_or_else(|| panic!("{name} on {abi:?}")), args)
    }

    const EPERM: u32 = 0x0005_0001;

    /// The default profile's filter decides any call in a few dozen instructions (a
    /// binary search over the numbers), not in up to ~700 (one test per listed call):
    /// the kernel runs it for every number of each ABI when a container starts. And it
    /// is no longer than the one-test-per-call filter was (1,365 instructions).
    #[test]
    fn the_default_filter_decides_every_call_in_a_few_instructions() {
        let seccomp = default_profile().resolve(&target(&DEFAULT_CAPABILITIES, "amd64"));
        let abis = [Abi::X86_64, Abi::I386];
        let prog = bpf::compile(&seccomp, &abis).unwrap();
        assert!(prog.len() <= 1365, "{} instructions", prog.len());
        for abi in abis {
            let longest = (0..600).map(|nr| bpf::run_counting(&prog, abi, nr, [0; 6]).1).max().unwrap();
            eprintln!("{abi:?}: {} instructions, longest decision {longest}", prog.len());
            assert!(longest <= 40, "{abi:?}: a call took {longest} instructions to decide");
        }
    }

    #[test]
    fn the_default_refuses_what_dockers_refuses_and_allows_what_programs_need() {
        let seccomp = default_profile().resolve(&target(&DEFAULT_CAPABILITIES, "amd64"));
        let abis = [Abi::X86_64, Abi::I386];
        for name in [
            "unshare",
            "mount",
            "add_key",
            "keyctl",
            "perf_event_open",
            "userfaultfd",
            "io_uring_setup",
            "bpf",
            "setns",
            "kexec_load",
            "init_module",
        ]
        .iter()
        .filter(|n| Abi::X86_64.syscall(n).is_some())
        {
            assert_eq!(decide(&seccomp, &abis, Abi::X86_64, name, [0; 6]), EPERM, "{name}");
        }
        for name in ["read", "openat", "execve", "clone", "wait4", "arch_prctl", "chroot", "ptrace", "socket", "rseq"] {
            assert_eq!(decide(&seccomp, &abis, Abi::X86_64, name, [0; 6]), RET_ALLOW, "{name}");
        }
        assert_eq!(decide(&seccomp, &abis, Abi::X86_64, "socket", [40, 0, 0, 0, 0, 0]), EPERM, "AF_VSOCK");
        assert_eq!(decide(&seccomp, &abis, Abi::X86_64, "clone", [0x1000_0000, 0, 0, 0, 0, 0]), EPERM, "NEWUSER");
        assert_eq!(decide(&seccomp, &abis, Abi::X86_64, "clone3", [0; 6]), 0x0005_0026, "ENOSYS");
        assert_eq!(decide(&seccomp, &abis, Abi::X86_64, "personality", [0x0040_0000, 0, 0, 0, 0, 0]), EPERM);
        assert_eq!(decide(&seccomp, &abis, Abi::X86_64, "personality", [0, 0, 0, 0, 0, 0]), RET_ALLOW);
        // 32-bit programs on a 64-bit board get the same policy.
        assert_eq!(decide(&seccomp, &abis, Abi::I386, "socketcall", [0; 6]), RET_ALLOW);
        assert_eq!(decide(&seccomp, &abis, Abi::I386, "unshare", [0; 6]), EPERM);
    }

    #[test]
    fn arm_gets_its_private_calls_and_arm64_its_compat_abi() {
        let seccomp = default_profile().resolve(&target(&DEFAULT_CAPABILITIES, "arm64"));
        let abis = [Abi::Aarch64, Abi::Arm];
        assert_eq!(decide(&seccomp, &abis, Abi::Arm, "set_tls", [0; 6]), RET_ALLOW);
        assert_eq!(decide(&seccomp, &abis, Abi::Arm, "cacheflush", [0; 6]), RET_ALLOW);
        assert_eq!(decide(&seccomp, &abis, Abi::Aarch64, "unshare", [0; 6]), EPERM);
        assert_eq!(decide(&seccomp, &abis, Abi::Aarch64, "openat", [0; 6]), RET_ALLOW);
        let arm = default_profile().resolve(&target(&DEFAULT_CAPABILITIES, "arm"));
        assert_eq!(decide(&arm, &[Abi::Arm], Abi::Arm, "set_tls", [0; 6]), RET_ALLOW);
    }

    /// glibc's loader on arm64 (Debian 12) opens, stats and maps each shared library: by
    /// their kernel numbers, as the filter sees them. 79 is `newfstatat`, which the
    /// generated aarch64 table calls `fstatat`; refused, no dynamically linked program ran.
    #[test]
    fn arm64_lets_the_dynamic_loader_stat_map_and_protect_libraries() {
        let seccomp = default_profile().resolve(&target(&DEFAULT_CAPABILITIES, "arm64"));
        let prog = bpf::compile(&seccomp, &[Abi::Aarch64, Abi::Arm]).unwrap();
        // openat, read, close, newfstatat, fstat, mmap, mprotect, munmap, pread64, faccessat.
        for nr in [56, 63, 57, 79, 80, 222, 226, 215, 67, 48] {
            assert_eq!(bpf::run(&prog, Abi::Aarch64, nr, [0; 6]), RET_ALLOW, "aarch64 call {nr}");
        }
        assert_eq!(Abi::Aarch64.syscall("newfstatat"), Some(79));
    }

    #[test]
    fn capabilities_widen_the_profile_as_dockers_does() {
        let mut caps: Vec<&'static str> = DEFAULT_CAPABILITIES.to_vec();
        caps.push("CAP_SYS_ADMIN");
        let caps: &'static [&'static str] = Box::leak(caps.into_boxed_slice());
        let seccomp = default_profile().resolve(&target(caps, "amd64"));
        let abis = [Abi::X86_64];
        assert_eq!(decide(&seccomp, &abis, Abi::X86_64, "unshare", [0; 6]), RET_ALLOW);
        assert_eq!(decide(&seccomp, &abis, Abi::X86_64, "clone", [0x1000_0000, 0, 0, 0, 0, 0]), RET_ALLOW);
        assert_eq!(decide(&seccomp, &abis, Abi::X86_64, "clone3", [0; 6]), RET_ALLOW);
    }

    #[test]
    fn without_a_device_cgroup_mknod_makes_files_and_fifos_but_no_devices() {
        let mut seccomp = default_profile().resolve(&target(&DEFAULT_CAPABILITIES, "amd64"));
        forbid_device_nodes(&mut seccomp);
        let abis = [Abi::X86_64];
        let fifo = 0o010_644;
        let chr = 0o020_644;
        let blk = 0o060_644;
        assert_eq!(decide(&seccomp, &abis, Abi::X86_64, "mknod", [0, fifo, 0, 0, 0, 0]), RET_ALLOW);
        assert_eq!(decide(&seccomp, &abis, Abi::X86_64, "mknodat", [0, 0, fifo, 0, 0, 0]), RET_ALLOW);
        assert_eq!(decide(&seccomp, &abis, Abi::X86_64, "mknod", [0, chr, 0, 0, 0, 0]), EPERM);
        assert_eq!(decide(&seccomp, &abis, Abi::X86_64, "mknodat", [0, 0, blk, 0, 0, 0]), EPERM);
        assert_eq!(decide(&seccomp, &abis, Abi::X86_64, "read", [0; 6]), RET_ALLOW);
    }

    #[test]
    fn without_a_device_cgroup_even_an_allow_all_profile_makes_no_devices() {
        let mut seccomp = allow_all().resolve(&target(&DEFAULT_CAPABILITIES, "amd64"));
        forbid_device_nodes(&mut seccomp);
        let abis = [Abi::X86_64];
        assert_eq!(decide(&seccomp, &abis, Abi::X86_64, "mknod", [0, 0o020_644, 0, 0, 0, 0]), EPERM);
        assert_eq!(decide(&seccomp, &abis, Abi::X86_64, "mknod", [0, 0o010_644, 0, 0, 0, 0]), RET_ALLOW);
        assert_eq!(decide(&seccomp, &abis, Abi::X86_64, "unshare", [0; 6]), RET_ALLOW);
    }

    #[test]
    fn docker_format_profiles_parse_and_bad_ones_are_refused_clearly() {
        let json = r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[
            {"names":["unshare"],"action":"SCMP_ACT_ERRNO","errnoRet":13},
            {"name":"mount","action":"SCMP_ACT_ERRNO","includes":{"arches":["arm64"]}}]}"#;
        let p = parse(json).unwrap();
        let seccomp = p.resolve(&target(&DEFAULT_CAPABILITIES, "amd64"));
        assert_eq!(decide(&seccomp, &[Abi::X86_64], Abi::X86_64, "unshare", [0; 6]), 0x0005_000d);
        assert_eq!(decide(&seccomp, &[Abi::X86_64], Abi::X86_64, "mount", [0; 6]), RET_ALLOW, "arm64 only");
        for (bad, why) in [
            ("{", "EOF"),
            (r#"{"defaultAction":"SCMP_ACT_NOPE"}"#, "unknown variant"),
            (r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"action":"SCMP_ACT_ALLOW"}]}"#, "names no system call"),
            (
                r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["read"],"action":"SCMP_ACT_ALLOW","args":[{"index":9,"value":0,"op":"SCMP_CMP_EQ"}]}]}"#,
                "argument index 9",
            ),
        ] {
            let err = parse(bad).unwrap_err().to_string();
            assert!(err.contains(why), "{bad}: {err}");
        }
        assert!(parse(&" ".repeat(MAX_PROFILE_BYTES + 1)).unwrap_err().to_string().contains("at most"));
    }

    #[test]
    fn kernel_versions_parse() {
        assert_eq!(kernel_version("6.1.0-rpi7-rpi-v8"), Some((6, 1)));
        assert_eq!(kernel_version("4.8"), Some((4, 8)));
        assert_eq!(kernel_version("x"), None);
    }
}
