//! Loading a compiled filter into the calling process: the one system call with a raw
//! pointer that seccomp needs. The filter applies to this process and every process it
//! starts afterwards, and cannot be removed.
#![allow(unsafe_code)]

use super::bpf::{Insn, MAX_INSNS};
use super::SeccompError;

/// Loads `program` as this process's seccomp filter. The caller must already have
/// `no_new_privileges` set (libcontainer sets it from the spec) or `CAP_SYS_ADMIN`.
pub fn install(program: &[Insn]) -> Result<(), SeccompError> {
    if program.is_empty() || program.len() > MAX_INSNS {
        return Err(SeccompError::TooLarge(program.len()));
    }
    let fprog = libc::sock_fprog {
        len: program.len() as u16,
        // `Insn` is `#[repr(C)]` with the same fields, sizes and order as `sock_filter`.
        filter: program.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: `fprog` points at `program`, which is alive and unchanged for the whole
    // call; the kernel copies the filter before returning and keeps no pointer to it.
    // PR_SET_SECCOMP reads only `fprog` (and the instructions it points at).
    let rc = unsafe {
        libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER as libc::c_ulong,
            &fprog as *const libc::sock_fprog as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    if rc != 0 {
        return Err(SeccompError::Install(std::io::Error::last_os_error()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const _: () = assert!(std::mem::size_of::<Insn>() == std::mem::size_of::<libc::sock_filter>());
    const _: () = assert!(std::mem::align_of::<Insn>() == std::mem::align_of::<libc::sock_filter>());

    #[test]
    fn an_empty_program_is_refused_before_the_kernel_sees_it() {
        assert!(matches!(install(&[]), Err(SeccompError::TooLarge(0))));
    }
}
