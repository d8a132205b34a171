//! A seccomp compiler: an OCI `linux.seccomp` section in, the classic-BPF program the
//! kernel runs on every system call out. This is the part of libseccomp that runc needs,
//! written here so the agent stays a static, pure-Rust binary.
//!
//! Pure: no system calls, no I/O. [`install`](super::install) loads the result.
//!
//! The program it writes, for each ABI the board runs (the native one, and the 32-bit
//! one a 64-bit kernel also runs: i386 on x86_64, arm on aarch64):
//!
//! ```text
//!   ld  arch                         any other ABI (x32, a foreign arch): kill the process
//!   jeq AUDIT_ARCH_<abi> → section
//! section:
//!   ld  nr
//!   jge <middle nr> → right half     a binary search over the listed numbers, down to
//!   …                                runs of at most eight numbers:
//!   jeq <nr> → ret_<action>          a syscall without argument rules
//!   jeq <nr> → rules_<nr>            one with: its rules' conditions in order, the
//!   ret <default action>             first rule that holds decides
//! ret_<action>: ret <action>         one per action of the run
//! rules_<nr>: …
//! ```
//!
//! Arguments are compared as 64-bit values on 64-bit ABIs (high word, then low word) and
//! as 32-bit values on 32-bit ABIs, as libseccomp does. Names a table does not know are
//! skipped for that ABI (profiles list syscalls of every architecture).

use std::collections::BTreeMap;
use std::str::FromStr;

use oci_spec::runtime::{Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompOperator};

use super::SeccompError;

/// The kernel's limit on a filter's length (`BPF_MAXINSNS`).
pub const MAX_INSNS: usize = 4096;

/// One classic-BPF instruction, laid out as the kernel's `struct sock_filter`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct Insn {
    /// Opcode.
    pub code: u16,
    /// Jump offset when the condition holds.
    pub jt: u8,
    /// Jump offset when it does not.
    pub jf: u8,
    /// Operand.
    pub k: u32,
}

// Opcodes (linux/filter.h).
const LD_W_ABS: u16 = 0x20; // BPF_LD (0) | BPF_W (0) | BPF_ABS
const ALU_AND_K: u16 = 0x04 | 0x50; // BPF_ALU | BPF_AND | BPF_K
const JMP_JA: u16 = 0x05; // BPF_JMP | BPF_JA
const JMP_JEQ_K: u16 = 0x05 | 0x10; // BPF_JMP | BPF_JEQ | BPF_K
const JMP_JGT_K: u16 = 0x05 | 0x20;
const JMP_JGE_K: u16 = 0x05 | 0x30;
const RET_K: u16 = 0x06; // BPF_RET | BPF_K

// Offsets in `struct seccomp_data`.
const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;
const OFF_ARGS: u32 = 16;

// Return values (linux/seccomp.h).
/// Kill the whole process.
pub const RET_KILL_PROCESS: u32 = 0x8000_0000;
const RET_KILL_THREAD: u32 = 0x0000_0000;
const RET_TRAP: u32 = 0x0003_0000;
const RET_ERRNO: u32 = 0x0005_0000;
const RET_TRACE: u32 = 0x7ff0_0000;
const RET_LOG: u32 = 0x7ffc_0000;
/// Let the call through.
pub const RET_ALLOW: u32 = 0x7fff_0000;

/// x32 system calls on x86_64 carry this bit in their number.
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// `EPERM`, the errno of an `SCMP_ACT_ERRNO` without `errnoRet` (as runc).
const EPERM: u32 = 1;

/// A system-call ABI a filter can cover.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Abi {
    /// x86_64 (64-bit).
    X86_64,
    /// i386, also run by x86_64 kernels.
    I386,
    /// aarch64.
    Aarch64,
    /// 32-bit arm (EABI), also run by most aarch64 kernels.
    Arm,
}

impl Abi {
    /// The ABIs a process on this build's architecture can call the kernel with: its own
    /// first, then the 32-bit one its kernel also runs.
    pub fn native() -> &'static [Abi] {
        if cfg!(target_arch = "x86_64") {
            &[Abi::X86_64, Abi::I386]
        } else if cfg!(target_arch = "aarch64") {
            &[Abi::Aarch64, Abi::Arm]
        } else if cfg!(target_arch = "arm") {
            &[Abi::Arm]
        } else {
            &[]
        }
    }

    /// `AUDIT_ARCH_*`, what the kernel puts in `seccomp_data.arch`.
    pub fn audit_arch(self) -> u32 {
        match self {
            Abi::X86_64 => 0xc000_003e,
            Abi::I386 => 0x4000_0003,
            Abi::Aarch64 => 0xc000_00b7,
            Abi::Arm => 0x4000_0028,
        }
    }

    fn from_arch(arch: Arch) -> Option<Abi> {
        match arch {
            Arch::ScmpArchX86_64 => Some(Abi::X86_64),
            Arch::ScmpArchX86 => Some(Abi::I386),
            Arch::ScmpArchAarch64 => Some(Abi::Aarch64),
            Arch::ScmpArchArm => Some(Abi::Arm),
            _ => None,
        }
    }

    fn is_64bit(self) -> bool {
        matches!(self, Abi::X86_64 | Abi::Aarch64)
    }

    /// The number of `name` on this ABI, if it has that call.
    pub fn syscall(self, name: &str) -> Option<u32> {
        let id = match self {
            Abi::X86_64 => x86_tables::x86_64(name),
            Abi::I386 => x86_tables::i386(name),
            Abi::Aarch64 => aarch64_table::aarch64(aarch64_table_name(name)),
            Abi::Arm => syscalls::arm::Sysno::from_str(name).ok().map(|s| s.id()).or_else(|| arm_private(name)),
        };
        id.and_then(|n| u32::try_from(n).ok())
    }
}

/// The x86 tables, in the builds that can meet those ABIs: the x86_64 agent, and the
/// tests, which run on x86_64 and cover every ABI. A board of another architecture never
/// sees these ABIs (a filter kills any foreign one), so its agent does not carry their
/// name tables (agent/Cargo.toml: `syscalls`' features per target; issue 12's size).
#[cfg(target_arch = "x86_64")]
mod x86_tables {
    use std::str::FromStr;

    pub(super) fn x86_64(name: &str) -> Option<i32> {
        syscalls::x86_64::Sysno::from_str(name).ok().map(|s| s.id())
    }

    pub(super) fn i386(name: &str) -> Option<i32> {
        syscalls::x86::Sysno::from_str(name).ok().map(|s| s.id())
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod x86_tables {
    pub(super) fn x86_64(_: &str) -> Option<i32> {
        None
    }

    pub(super) fn i386(_: &str) -> Option<i32> {
        None
    }
}

/// The aarch64 table: in every build but the 32-bit arm agent's (its boards run no
/// 64-bit ABI).
#[cfg(not(target_arch = "arm"))]
mod aarch64_table {
    use std::str::FromStr;

    pub(super) fn aarch64(name: &str) -> Option<i32> {
        syscalls::aarch64::Sysno::from_str(name).ok().map(|s| s.id())
    }
}

#[cfg(target_arch = "arm")]
mod aarch64_table {
    pub(super) fn aarch64(_: &str) -> Option<i32> {
        None
    }
}

/// The generated aarch64 table's name for a call libseccomp (hence every Docker profile)
/// names otherwise. Call 79 is `newfstatat` to libseccomp and `fstatat` in the table: without
/// this, the default profile refused it, and glibc's loader, which stats each shared library
/// with it, failed every dynamically linked arm64 program ("libm.so.6: cannot stat shared
/// object: Operation not permitted").
fn aarch64_table_name(name: &str) -> &str {
    match name {
        "newfstatat" => "fstatat",
        other => other,
    }
}

/// ARM's private calls (`__ARM_NR_*`, numbered from 0x0f0000), which the generated tables
/// leave out; `set_tls` is made by every 32-bit libc at start-up.
fn arm_private(name: &str) -> Option<i32> {
    let n = match name {
        "breakpoint" => 1,
        "cacheflush" => 2,
        "usr26" => 3,
        "usr32" => 4,
        "set_tls" => 5,
        "get_tls" => 6,
        _ => return None,
    };
    Some(0x0f_0000 + n)
}

/// The return value of `action`.
fn ret_value(action: LinuxSeccompAction, errno: Option<u32>) -> Result<u32, SeccompError> {
    Ok(match action {
        LinuxSeccompAction::ScmpActAllow => RET_ALLOW,
        LinuxSeccompAction::ScmpActErrno => RET_ERRNO | (errno.unwrap_or(EPERM) & 0xffff),
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => RET_KILL_THREAD,
        LinuxSeccompAction::ScmpActKillProcess => RET_KILL_PROCESS,
        LinuxSeccompAction::ScmpActTrap => RET_TRAP,
        LinuxSeccompAction::ScmpActTrace => RET_TRACE | (errno.unwrap_or(0) & 0xffff),
        LinuxSeccompAction::ScmpActLog => RET_LOG,
        LinuxSeccompAction::ScmpActNotify => {
            return Err(SeccompError::Unsupported("SCMP_ACT_NOTIFY (no seccomp agent runs on a board)".into()))
        }
    })
}

/// One rule of one syscall: all `conditions` hold → `ret`.
#[derive(Clone, Debug)]
struct Rule {
    conditions: Vec<LinuxSeccompArg>,
    ret: u32,
}

/// Compiles `profile` for `abis` (normally [`Abi::native`]); ABIs the profile's
/// `architectures` leave out are killed, as calls from any other ABI are.
pub fn compile(profile: &LinuxSeccomp, abis: &[Abi]) -> Result<Vec<Insn>, SeccompError> {
    let default_ret = ret_value(profile.default_action(), profile.default_errno_ret())?;
    let listed: Option<Vec<Abi>> =
        profile.architectures().as_ref().map(|archs| archs.iter().filter_map(|a| Abi::from_arch(*a)).collect());
    let abis: Vec<Abi> = match &listed {
        // An empty or missing list means the native ABI only (libseccomp's default).
        Some(list) if !list.is_empty() => abis.iter().copied().filter(|a| list.contains(a)).collect(),
        _ => abis.iter().copied().take(1).collect(),
    };
    if abis.is_empty() {
        return Err(SeccompError::Unsupported("the profile names none of this board's architectures".into()));
    }
    let syscalls = profile.syscalls().clone().unwrap_or_default();
    for rule in &syscalls {
        for arg in rule.args().iter().flatten() {
            if arg.index() > 5 {
                return Err(SeccompError::Invalid(format!("argument index {} (system calls have 6)", arg.index())));
            }
        }
    }

    let mut asm = Asm::default();
    asm.ld(OFF_ARCH);
    let sections: Vec<Label> = abis.iter().map(|_| asm.label()).collect();
    for (abi, section) in abis.iter().zip(&sections) {
        asm.jump(JMP_JEQ_K, abi.audit_arch(), None, Some(Tgt::Skip(1)));
        asm.ja(*section);
    }
    asm.ret(RET_KILL_PROCESS);

    for (abi, section) in abis.iter().zip(sections) {
        asm.bind(section);
        asm.ld(OFF_NR);
        if *abi == Abi::X86_64 {
            // x32 calls share the x86_64 audit arch: refuse them like any foreign ABI.
            asm.jump(JMP_JGE_K, X32_SYSCALL_BIT, None, Some(Tgt::Skip(1)));
            asm.ret(RET_KILL_PROCESS);
        }
        // Rules by syscall number, in the profile's order within each number.
        let mut by_nr: BTreeMap<u32, Vec<Rule>> = BTreeMap::new();
        for entry in &syscalls {
            let ret = ret_value(entry.action(), entry.errno_ret())?;
            let conditions = entry.args().clone().unwrap_or_default();
            for name in entry.names() {
                if let Some(nr) = abi.syscall(name) {
                    by_nr.entry(nr).or_default().push(Rule { conditions: conditions.clone(), ret });
                }
            }
        }
        let mut decisions = Vec::with_capacity(by_nr.len());
        for (nr, mut rules) in by_nr {
            // Conditional rules first; an unconditional one is the fallback.
            rules.sort_by_key(|r| r.conditions.is_empty());
            let fallback = rules.iter().find(|r| r.conditions.is_empty()).map_or(default_ret, |r| r.ret);
            rules.retain(|r| !r.conditions.is_empty());
            // A call decided as the default needs no test at all.
            if rules.is_empty() && fallback == default_ret {
                continue;
            }
            decisions.push(Decision { nr, conditional: rules, fallback });
        }
        decide(&mut asm, *abi, &decisions, default_ret)?;
    }
    let program = asm.finish()?;
    if program.len() > MAX_INSNS {
        return Err(SeccompError::TooLarge(program.len()));
    }
    Ok(program)
}

/// What one syscall number gets: its conditional rules in order, then `fallback`.
struct Decision {
    nr: u32,
    conditional: Vec<Rule>,
    fallback: u32,
}

/// At most this many numbers are tested one after the other; more are split in two.
const LEAF: usize = 8;

/// Emits the decisions of one ABI (sorted by number, the number in A) as a binary
/// search over the numbers, down to runs of at most [`LEAF`] equality tests: a call is
/// decided after ~2·log2(n/LEAF) + LEAF + 2 instructions, not after up to 2·n as with
/// one test per listed call. That matters twice: the kernel runs the filter on every
/// call the container makes that its per-call cache can't answer, and it runs it once
/// per syscall number of each ABI when the filter is loaded, to build that cache (0.6 ms
/// of every container's start with Docker's ~350 calls tested one by one).
///
/// A run tests each number once and jumps to a `ret` shared by all the run's calls of
/// that action, so the program is no longer than the one-by-one one was. Every jump
/// that could be long is a `ja` (conditional jumps reach 255 instructions at most).
fn decide(asm: &mut Asm, abi: Abi, decisions: &[Decision], default_ret: u32) -> Result<(), SeccompError> {
    if decisions.len() > LEAF {
        let (low, high) = decisions.split_at(decisions.len().div_ceil(2));
        let right = asm.label();
        asm.jump(JMP_JGE_K, high[0].nr, None, Some(Tgt::Skip(1)));
        asm.ja(right);
        decide(asm, abi, low, default_ret)?;
        asm.bind(right);
        return decide(asm, abi, high, default_ret);
    }
    let mut rets: Vec<(u32, Label)> = Vec::new();
    let mut rules = Vec::new();
    for decision in decisions {
        if decision.conditional.is_empty() {
            let label = match rets.iter().find(|(ret, _)| *ret == decision.fallback) {
                Some((_, label)) => *label,
                None => {
                    let label = asm.label();
                    rets.push((decision.fallback, label));
                    label
                }
            };
            asm.jump(JMP_JEQ_K, decision.nr, Some(Tgt::To(label)), None);
        } else {
            let label = asm.label();
            asm.jump(JMP_JEQ_K, decision.nr, None, Some(Tgt::Skip(1)));
            asm.ja(label);
            rules.push((label, decision));
        }
    }
    asm.ret(default_ret);
    for (ret, label) in rets {
        asm.bind(label);
        asm.ret(ret);
    }
    for (label, Decision { conditional, fallback, .. }) in rules {
        asm.bind(label);
        for rule in conditional {
            let fail = asm.label();
            for cond in &rule.conditions {
                condition(asm, abi, cond, fail)?;
            }
            asm.ret(rule.ret);
            asm.bind(fail);
            // A failed rule leaves the argument in A; the next rule reloads what it needs.
        }
        asm.ret(*fallback);
    }
    Ok(())
}

/// Emits the test of one argument condition: falls through when it holds, jumps to
/// `fail` when it does not.
fn condition(asm: &mut Asm, abi: Abi, cond: &LinuxSeccompArg, fail: Label) -> Result<(), SeccompError> {
    let lo_off = OFF_ARGS + 8 * cond.index() as u32; // little-endian on every ABI here
    let hi_off = lo_off + 4;
    let (v_hi, v_lo) = ((cond.value() >> 32) as u32, cond.value() as u32);
    let wide = abi.is_64bit();
    let pass = asm.label();
    let f = Some(Tgt::To(fail));
    let p = Some(Tgt::To(pass));
    match cond.op() {
        LinuxSeccompOperator::ScmpCmpEq => {
            if wide {
                asm.ld(hi_off);
                asm.jump(JMP_JEQ_K, v_hi, None, f);
            }
            asm.ld(lo_off);
            asm.jump(JMP_JEQ_K, v_lo, None, f);
        }
        LinuxSeccompOperator::ScmpCmpNe => {
            if wide {
                asm.ld(hi_off);
                asm.jump(JMP_JEQ_K, v_hi, None, p);
            }
            asm.ld(lo_off);
            asm.jump(JMP_JEQ_K, v_lo, f, None);
        }
        LinuxSeccompOperator::ScmpCmpMaskedEq => {
            let want = cond.value_two().unwrap_or(0);
            let (w_hi, w_lo) = ((want >> 32) as u32, want as u32);
            if wide {
                asm.ld(hi_off);
                asm.and(v_hi);
                asm.jump(JMP_JEQ_K, w_hi, None, f);
            }
            asm.ld(lo_off);
            asm.and(v_lo);
            asm.jump(JMP_JEQ_K, w_lo, None, f);
        }
        op @ (LinuxSeccompOperator::ScmpCmpGt | LinuxSeccompOperator::ScmpCmpGe) => {
            if wide {
                asm.ld(hi_off);
                asm.jump(JMP_JGT_K, v_hi, p, None);
                asm.jump(JMP_JEQ_K, v_hi, None, f);
            }
            asm.ld(lo_off);
            let code = if op == LinuxSeccompOperator::ScmpCmpGt { JMP_JGT_K } else { JMP_JGE_K };
            asm.jump(code, v_lo, None, f);
        }
        op @ (LinuxSeccompOperator::ScmpCmpLt | LinuxSeccompOperator::ScmpCmpLe) => {
            if wide {
                asm.ld(hi_off);
                asm.jump(JMP_JGE_K, v_hi, None, p);
                asm.jump(JMP_JEQ_K, v_hi, None, f);
            }
            asm.ld(lo_off);
            // lo < v ⇔ !(lo >= v); lo <= v ⇔ !(lo > v).
            let code = if op == LinuxSeccompOperator::ScmpCmpLt { JMP_JGE_K } else { JMP_JGT_K };
            asm.jump(code, v_lo, f, None);
        }
    }
    asm.bind(pass);
    Ok(())
}

/// A place in the program, bound once.
#[derive(Clone, Copy, Debug)]
struct Label(usize);

/// Where a conditional jump goes.
#[derive(Clone, Copy, Debug)]
enum Tgt {
    /// Over this many instructions.
    Skip(u8),
    /// To a label further on.
    To(Label),
}

/// A jump whose offsets are known once its labels are bound.
struct Fixup {
    at: usize,
    jt: Option<Label>,
    jf: Option<Label>,
    /// The target of a `ja`, whose offset goes in `k`.
    ja: Option<Label>,
}

/// A tiny assembler: instructions with symbolic forward jumps, resolved at the end.
#[derive(Default)]
struct Asm {
    insns: Vec<Insn>,
    labels: Vec<Option<usize>>,
    fixups: Vec<Fixup>,
}

impl Asm {
    fn label(&mut self) -> Label {
        self.labels.push(None);
        Label(self.labels.len() - 1)
    }

    fn bind(&mut self, label: Label) {
        self.labels[label.0] = Some(self.insns.len());
    }

    fn push(&mut self, code: u16, jt: u8, jf: u8, k: u32) {
        self.insns.push(Insn { code, jt, jf, k });
    }

    fn ld(&mut self, offset: u32) {
        self.push(LD_W_ABS, 0, 0, offset);
    }

    fn and(&mut self, mask: u32) {
        self.push(ALU_AND_K, 0, 0, mask);
    }

    fn ret(&mut self, value: u32) {
        self.push(RET_K, 0, 0, value);
    }

    fn ja(&mut self, to: Label) {
        self.fixups.push(Fixup { at: self.insns.len(), jt: None, jf: None, ja: Some(to) });
        self.push(JMP_JA, 0, 0, 0);
    }

    /// A conditional jump; `None` falls through.
    fn jump(&mut self, code: u16, k: u32, jt: Option<Tgt>, jf: Option<Tgt>) {
        let skip = |t: Option<Tgt>| match t {
            Some(Tgt::Skip(n)) => n,
            _ => 0,
        };
        let label = |t: Option<Tgt>| match t {
            Some(Tgt::To(l)) => Some(l),
            _ => None,
        };
        self.fixups.push(Fixup { at: self.insns.len(), jt: label(jt), jf: label(jf), ja: None });
        self.push(code, skip(jt), skip(jf), k);
    }

    fn finish(mut self) -> Result<Vec<Insn>, SeccompError> {
        for Fixup { at, jt, jf, ja } in std::mem::take(&mut self.fixups) {
            let offset = |label: Label| -> Result<usize, SeccompError> {
                let target = self.labels[label.0].ok_or_else(|| SeccompError::Invalid("unbound label".into()))?;
                target.checked_sub(at + 1).ok_or_else(|| SeccompError::Invalid("backward jump".into()))
            };
            if let Some(l) = jt {
                self.insns[at].jt = u8::try_from(offset(l)?).map_err(|_| SeccompError::TooLarge(self.insns.len()))?;
            }
            if let Some(l) = jf {
                self.insns[at].jf = u8::try_from(offset(l)?).map_err(|_| SeccompError::TooLarge(self.insns.len()))?;
            }
            if let Some(l) = ja {
                self.insns[at].k = u32::try_from(offset(l)?).map_err(|_| SeccompError::TooLarge(self.insns.len()))?;
            }
        }
        Ok(self.insns)
    }
}

/// Runs `program` on one system call the way the kernel would, for tests: the filter's
/// return value for syscall `nr` of `abi` with `args`.
pub fn run(program: &[Insn], abi: Abi, nr: u32, args: [u64; 6]) -> u32 {
    run_counting(program, abi, nr, args).0
}

/// [`run`], and how many instructions the decision took.
pub fn run_counting(program: &[Insn], abi: Abi, nr: u32, args: [u64; 6]) -> (u32, usize) {
    let mut data = Vec::with_capacity(64);
    data.extend_from_slice(&nr.to_le_bytes());
    data.extend_from_slice(&abi.audit_arch().to_le_bytes());
    data.extend_from_slice(&0u64.to_le_bytes());
    for a in args {
        data.extend_from_slice(&a.to_le_bytes());
    }
    let word = |off: u32| u32::from_le_bytes(data[off as usize..off as usize + 4].try_into().expect("4 bytes"));
    let (mut pc, mut acc, mut steps) = (0usize, 0u32, 0usize);
    loop {
        let i = program[pc];
        pc += 1;
        steps += 1;
        match i.code {
            LD_W_ABS => acc = word(i.k),
            ALU_AND_K => acc &= i.k,
            JMP_JA => pc += i.k as usize,
            JMP_JEQ_K | JMP_JGT_K | JMP_JGE_K => {
                let holds = match i.code {
                    JMP_JEQ_K => acc == i.k,
                    JMP_JGT_K => acc > i.k,
                    _ => acc >= i.k,
                };
                pc += if holds { i.jt } else { i.jf } as usize;
            }
            RET_K => return (i.k, steps),
            other => panic!("opcode {other:#x} is not one this compiler writes"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{LinuxSeccompArgBuilder, LinuxSeccompBuilder, LinuxSyscallBuilder};
    use proptest::prelude::*;

    fn arg(index: usize, op: LinuxSeccompOperator, value: u64, two: Option<u64>) -> LinuxSeccompArg {
        let b = LinuxSeccompArgBuilder::default().index(index).op(op).value(value);
        match two {
            Some(t) => b.value_two(t).build().unwrap(),
            None => b.build().unwrap(),
        }
    }

    /// One test rule: names, action, errno, argument conditions.
    type TestRule<'a> = (Vec<&'a str>, LinuxSeccompAction, Option<u32>, Vec<LinuxSeccompArg>);

    fn profile(rules: Vec<TestRule>) -> LinuxSeccomp {
        let syscalls = rules
            .into_iter()
            .map(|(names, action, errno, args)| {
                let mut b = LinuxSyscallBuilder::default()
                    .names(names.into_iter().map(String::from).collect::<Vec<_>>())
                    .action(action);
                if let Some(e) = errno {
                    b = b.errno_ret(e);
                }
                if !args.is_empty() {
                    b = b.args(args);
                }
                b.build().unwrap()
            })
            .collect::<Vec<_>>();
        LinuxSeccompBuilder::default()
            .default_action(LinuxSeccompAction::ScmpActErrno)
            .architectures(vec![Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchAarch64, Arch::ScmpArchArm])
            .syscalls(syscalls)
            .build()
            .unwrap()
    }

    const ALL: [Abi; 4] = [Abi::X86_64, Abi::I386, Abi::Aarch64, Abi::Arm];

    fn nr(abi: Abi, name: &str) -> u32 {
        abi.syscall(name).unwrap_or_else(|| panic!("{name} on {abi:?}"))
    }

    #[test]
    fn allowed_calls_pass_and_the_rest_get_eperm_on_every_abi() {
        let p = profile(vec![(vec!["read", "write", "set_tls"], LinuxSeccompAction::ScmpActAllow, None, vec![])]);
        for abi in ALL {
            let prog = compile(&p, &[abi]).unwrap();
            assert_eq!(run(&prog, abi, nr(abi, "read"), [0; 6]), RET_ALLOW, "{abi:?}");
            assert_eq!(run(&prog, abi, nr(abi, "write"), [0; 6]), RET_ALLOW);
            assert_eq!(run(&prog, abi, nr(abi, "unshare"), [0; 6]), RET_ERRNO | 1);
        }
        let arm = compile(&p, &[Abi::Arm]).unwrap();
        assert_eq!(run(&arm, Abi::Arm, 0x0f0005, [0; 6]), RET_ALLOW, "set_tls, ARM's private call");
    }

    #[test]
    fn a_foreign_abi_and_x32_are_killed() {
        let p = profile(vec![(vec!["read"], LinuxSeccompAction::ScmpActAllow, None, vec![])]);
        let prog = compile(&p, &[Abi::X86_64]).unwrap();
        assert_eq!(run(&prog, Abi::I386, 3, [0; 6]), RET_KILL_PROCESS, "i386 not in the ABIs asked for");
        assert_eq!(run(&prog, Abi::X86_64, X32_SYSCALL_BIT, [0; 6]), RET_KILL_PROCESS, "x32 read");
        let both = compile(&p, &[Abi::X86_64, Abi::I386]).unwrap();
        assert_eq!(run(&both, Abi::I386, nr(Abi::I386, "read"), [0; 6]), RET_ALLOW);
    }

    #[test]
    fn errno_rules_return_their_errno() {
        let p = profile(vec![
            (vec!["read"], LinuxSeccompAction::ScmpActAllow, None, vec![]),
            (vec!["clone3"], LinuxSeccompAction::ScmpActErrno, Some(38), vec![]),
        ]);
        let prog = compile(&p, &[Abi::X86_64]).unwrap();
        assert_eq!(run(&prog, Abi::X86_64, nr(Abi::X86_64, "clone3"), [0; 6]), RET_ERRNO | 38);
    }

    #[test]
    fn masked_eq_lets_clone_make_threads_but_not_namespaces() {
        let p = profile(vec![(
            vec!["clone"],
            LinuxSeccompAction::ScmpActAllow,
            None,
            vec![arg(0, LinuxSeccompOperator::ScmpCmpMaskedEq, 0x7E02_0000, None)],
        )]);
        for abi in ALL {
            let prog = compile(&p, &[abi]).unwrap();
            let clone = nr(abi, "clone");
            let thread = 0x003d_0f00; // CLONE_VM|FS|FILES|SIGHAND|THREAD|SYSVSEM|SETTLS|…
            assert_eq!(run(&prog, abi, clone, [thread, 0, 0, 0, 0, 0]), RET_ALLOW, "{abi:?}");
            assert_eq!(run(&prog, abi, clone, [0x1000_0000, 0, 0, 0, 0, 0]), RET_ERRNO | 1, "CLONE_NEWUSER");
        }
    }

    #[test]
    fn several_rules_of_one_call_are_alternatives() {
        let p = profile(vec![
            (
                vec!["personality"],
                LinuxSeccompAction::ScmpActAllow,
                None,
                vec![arg(0, LinuxSeccompOperator::ScmpCmpEq, 0, None)],
            ),
            (
                vec!["personality"],
                LinuxSeccompAction::ScmpActAllow,
                None,
                vec![arg(0, LinuxSeccompOperator::ScmpCmpEq, 8, None)],
            ),
            (
                vec!["personality"],
                LinuxSeccompAction::ScmpActAllow,
                None,
                vec![arg(0, LinuxSeccompOperator::ScmpCmpEq, 0xffff_ffff, None)],
            ),
        ]);
        let prog = compile(&p, &[Abi::Aarch64]).unwrap();
        let n = nr(Abi::Aarch64, "personality");
        for ok in [0, 8, 0xffff_ffff] {
            assert_eq!(run(&prog, Abi::Aarch64, n, [ok, 0, 0, 0, 0, 0]), RET_ALLOW, "{ok:#x}");
        }
        for bad in [0x0040_0000, 1, 0x1_0000_0000] {
            assert_eq!(run(&prog, Abi::Aarch64, n, [bad, 0, 0, 0, 0, 0]), RET_ERRNO | 1, "{bad:#x}");
        }
    }

    #[test]
    fn a_notify_action_or_a_bad_index_is_refused() {
        let p = profile(vec![(vec!["read"], LinuxSeccompAction::ScmpActNotify, None, vec![])]);
        assert!(matches!(compile(&p, &[Abi::X86_64]), Err(SeccompError::Unsupported(_))));
        let p = profile(vec![(
            vec!["read"],
            LinuxSeccompAction::ScmpActAllow,
            None,
            vec![arg(6, LinuxSeccompOperator::ScmpCmpEq, 0, None)],
        )]);
        assert!(matches!(compile(&p, &[Abi::X86_64]), Err(SeccompError::Invalid(_))));
    }

    /// Calls every ABI here has, for profiles made up by the property test below.
    const NAMES: [&str; 24] = [
        "read",
        "write",
        "close",
        "mmap",
        "munmap",
        "brk",
        "ioctl",
        "pipe2",
        "dup3",
        "socket",
        "connect",
        "accept4",
        "clone",
        "execve",
        "exit_group",
        "wait4",
        "kill",
        "fcntl",
        "flock",
        "fsync",
        "getcwd",
        "chdir",
        "unshare",
        "setns",
    ];

    proptest! {
        /// The binary search decides every number as the profile's rules say: the first
        /// rule naming a call decides it, a call no rule names gets the default.
        #[test]
        fn the_search_decides_every_number_as_the_rules_say(
            rules in proptest::collection::vec((proptest::collection::vec(0usize..NAMES.len(), 1..6), 0u32..4), 0..40),
            abi in 0usize..2,
        ) {
            let abi = [Abi::X86_64, Abi::I386][abi];
            let action = |a: u32| match a {
                0 => (LinuxSeccompAction::ScmpActAllow, None, RET_ALLOW),
                1 => (LinuxSeccompAction::ScmpActErrno, Some(38), RET_ERRNO | 38),
                2 => (LinuxSeccompAction::ScmpActLog, None, RET_LOG),
                _ => (LinuxSeccompAction::ScmpActErrno, None, RET_ERRNO | 1),
            };
            let mut expected = BTreeMap::new();
            let mut test_rules = Vec::new();
            for (names, a) in &rules {
                let (act, errno, ret) = action(*a);
                let names: Vec<&str> = names.iter().map(|i| NAMES[*i]).collect();
                for name in &names {
                    expected.entry(nr(abi, name)).or_insert(ret);
                }
                test_rules.push((names, act, errno, vec![]));
            }
            let prog = compile(&profile(test_rules), &[abi]).unwrap();
            for n in 0..=expected.keys().max().copied().unwrap_or(0) + 2 {
                let want = expected.get(&n).copied().unwrap_or(RET_ERRNO | 1);
                prop_assert_eq!(run(&prog, abi, n, [0; 6]), want, "number {}", n);
            }
        }
    }

    fn reference(op: LinuxSeccompOperator, a: u64, v: u64, two: u64, wide: bool) -> bool {
        let (a, v, two) = if wide { (a, v, two) } else { (a & 0xffff_ffff, v & 0xffff_ffff, two & 0xffff_ffff) };
        match op {
            LinuxSeccompOperator::ScmpCmpEq => a == v,
            LinuxSeccompOperator::ScmpCmpNe => a != v,
            LinuxSeccompOperator::ScmpCmpLt => a < v,
            LinuxSeccompOperator::ScmpCmpLe => a <= v,
            LinuxSeccompOperator::ScmpCmpGt => a > v,
            LinuxSeccompOperator::ScmpCmpGe => a >= v,
            LinuxSeccompOperator::ScmpCmpMaskedEq => a & v == two,
        }
    }

    fn any_value() -> impl Strategy<Value = u64> {
        prop_oneof![any::<u64>(), 0u64..4, Just(u32::MAX as u64), Just(1u64 << 32), (0u64..4).prop_map(|x| x << 32)]
    }

    proptest! {
        /// Every comparison agrees with plain 64-bit (or 32-bit) arithmetic, on every ABI.
        #[test]
        fn comparisons_agree_with_arithmetic(op in 0usize..7, a in any_value(), v in any_value(), two in any_value(), abi in 0usize..4, index in 0usize..6) {
            let ops = [
                LinuxSeccompOperator::ScmpCmpEq, LinuxSeccompOperator::ScmpCmpNe, LinuxSeccompOperator::ScmpCmpLt,
                LinuxSeccompOperator::ScmpCmpLe, LinuxSeccompOperator::ScmpCmpGt, LinuxSeccompOperator::ScmpCmpGe,
                LinuxSeccompOperator::ScmpCmpMaskedEq,
            ];
            let abi = ALL[abi];
            let p = profile(vec![(vec!["ioctl"], LinuxSeccompAction::ScmpActAllow, None, vec![arg(index, ops[op], v, Some(two))])]);
            let prog = compile(&p, &[abi]).unwrap();
            let mut args = [0u64; 6];
            args[index] = if abi.is_64bit() { a } else { a & 0xffff_ffff };
            let got = run(&prog, abi, nr(abi, "ioctl"), args) == RET_ALLOW;
            prop_assert_eq!(got, reference(ops[op], a, v, two, abi.is_64bit()));
        }
    }
}
