//! Gives back the page-table entries of the agent binary's code in the two processes
//! every running container keeps: its shim, and its init (a fork of the shim). Both run a
//! good part of libcontainer once, to make the container, and then only wait; without
//! this each kept ~4 MiB of the binary's code mapped, and PSS charged every container its
//! share of it for as long as it ran.
//!
//! `MADV_DONTNEED` on the binary's read-only mappings (code, read-only data) drops this
//! process's page-table entries only: the pages stay in the page cache, shared with the
//! agent and every other shim, and what the process still uses faults back in. Only
//! mappings that hold no private copy of a page (`Anonymous: 0 kB` in `smaps`): a
//! position-independent build's relocated read-only data, or a debugger's breakpoint,
//! would be lost by dropping them, and are left alone.

use std::sync::OnceLock;

/// The binary's read-only mappings, as (start, length), noted before the init is forked.
static CODE: OnceLock<Vec<(usize, usize)>> = OnceLock::new();

/// Notes where this binary's code is mapped; the container's init, a fork, inherits it.
pub fn note() {
    CODE.get_or_init(|| {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap_or_default();
        code_ranges(&smaps, note as fn() as usize)
    });
}

/// Drops this process's page-table entries for the noted code. Best effort.
#[allow(unsafe_code)]
pub fn release() {
    for &(start, len) in CODE.get().map(Vec::as_slice).unwrap_or_default() {
        // SAFETY: the range is a whole read-only, file-backed private mapping of this
        // binary with no anonymous (private) pages, as `smaps` said when noted; nothing
        // writes to it or maps over it later. MADV_DONTNEED on such a mapping only drops
        // page-table entries: the next access maps the same file bytes again.
        let _ = unsafe { rustix::mm::madvise(start as *mut _, len, rustix::mm::Advice::LinuxDontNeed) };
    }
}

/// The read-only mappings of the file that maps `inside` (an address of its code), from
/// `/proc/self/smaps`: not writable, private, with no anonymous pages.
pub fn code_ranges(smaps: &str, inside: usize) -> Vec<(usize, usize)> {
    struct Map<'a> {
        start: usize,
        end: usize,
        perms: &'a str,
        path: &'a str,
        anonymous_kb: Option<u64>,
    }
    let mut maps: Vec<Map> = Vec::new();
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let Some(first) = fields.next() else { continue };
        if let Some((a, b)) = first.split_once('-') {
            if let (Ok(start), Ok(end)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16)) {
                let perms = fields.next().unwrap_or("");
                let path = fields.nth(3).unwrap_or("");
                maps.push(Map { start, end, perms, path, anonymous_kb: None });
                continue;
            }
        }
        if first == "Anonymous:" {
            if let Some(m) = maps.last_mut() {
                m.anonymous_kb = fields.next().and_then(|v| v.parse().ok());
            }
        }
    }
    let Some(ours) = maps.iter().find(|m| m.start <= inside && inside < m.end).map(|m| m.path) else {
        return Vec::new();
    };
    if !ours.starts_with('/') {
        return Vec::new();
    }
    maps.iter()
        .filter(|m| {
            m.path == ours && matches!(m.perms, "r-xp" | "r--p") && m.anonymous_kb == Some(0) && m.end > m.start
        })
        .map(|m| (m.start, m.end - m.start))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
00400000-00600000 r--p 00000000 08:01 42 /usr/bin/shoal-agent
Size:               2048 kB
Anonymous:             0 kB
00600000-00c00000 r-xp 00200000 08:01 42 /usr/bin/shoal-agent
Size:               6144 kB
Anonymous:             0 kB
00c00000-00c10000 rw-p 00800000 08:01 42 /usr/bin/shoal-agent
Anonymous:            64 kB
00d00000-00d01000 r-xp 00900000 08:01 42 /usr/bin/shoal-agent
Anonymous:             4 kB
00e00000-00e10000 r--p 00a00000 08:01 42 /usr/bin/shoal-agent
Anonymous:            64 kB
7f0000000000-7f0000100000 r-xp 00000000 08:01 7 /usr/lib/libc.so
Anonymous:             0 kB
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0 [stack]
Anonymous:           132 kB
";

    #[test]
    fn only_the_binarys_own_clean_code_is_picked() {
        let ours = vec![(0x0040_0000, 0x0020_0000), (0x0060_0000, 0x0060_0000)];
        assert_eq!(code_ranges(SMAPS, 0x0070_0000), ours, "not the writable one, nor one with private pages");
        // An address in no file mapping, or in an anonymous one: nothing.
        assert!(code_ranges(SMAPS, 0x10).is_empty());
        assert!(code_ranges(SMAPS, 0x7ffd_0000_0010).is_empty());
        assert!(code_ranges("garbage\n-\nzz-yy r-xp", 1).is_empty());
    }

    /// On this very process: its code is found, dropped, and still runs.
    #[test]
    fn released_code_still_runs() {
        note();
        assert!(!CODE.get().unwrap().is_empty(), "the test binary's code mapping is found");
        release();
        assert_eq!(code_ranges(SMAPS, 0x0060_0000).len(), 2, "and runs again after being dropped");
    }
}
