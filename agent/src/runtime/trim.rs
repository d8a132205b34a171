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
//!
//! The main thread's stack goes too, below where it now runs: making the container went
//! ~50 KiB deep (libcontainer's calls), the shim then waits near the top and the init a
//! little deeper, so the pages under the stack pointer hold nothing either will read
//! again, yet stayed dirty in both processes (the init's inherited from the shim's). They
//! are dropped from the process (`MADV_DONTNEED`: zero pages if ever touched again).

use std::sync::OnceLock;

/// The binary's read-only mappings, as (start, length), noted before the init is forked.
static CODE: OnceLock<Vec<(usize, usize)>> = OnceLock::new();
/// The main thread's stack mapping, as (start, end), noted with [`CODE`]: read again at
/// release time, `/proc/self/maps` and the code that parses it would fault back in more
/// of the binary (whole 64 KiB windows of it) than the stack gives back.
static STACK: OnceLock<Option<(usize, usize)>> = OnceLock::new();

/// Notes where this binary's code and the main stack are mapped; the container's init,
/// a fork, inherits it.
pub fn note() {
    CODE.get_or_init(|| {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap_or_default();
        STACK.get_or_init(|| stack_mapping(&smaps));
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
    release_stack();
}

/// Drops the pages of this thread's stack below the frame that calls it, if it runs on
/// the process's main stack as noted (another thread's is left alone).
#[inline(never)]
#[allow(unsafe_code)]
fn release_stack() {
    let here = 0u8;
    let here = std::hint::black_box(&here) as *const u8 as usize;
    let Some(Some(stack)) = STACK.get() else { return };
    if let Some((start, len)) = unused_stack(*stack, here, rustix::param::page_size()) {
        // SAFETY: the range lies in the main thread's stack mapping (noted from `smaps`
        // before; a stack mapping only ever grows down, so it still covers the range), more
        // than a page below a local of this very frame: no live frame is in it (only the
        // syscall itself runs below here, inside the page kept). What a later call puts
        // there faults in as zero pages, as for any stack growing into new pages.
        let _ = unsafe { rustix::mm::madvise(start as *mut _, len, rustix::mm::Advice::LinuxDontNeed) };
    }
}

/// The `[stack]` mapping in `maps` (`/proc/self/maps` or `smaps`), as (start, end).
pub fn stack_mapping(maps: &str) -> Option<(usize, usize)> {
    let line = maps.lines().find(|l| l.trim_end().ends_with("[stack]"))?;
    address_range(line.split_whitespace().next()?)
}

/// A mapping's `start-end` field (hexadecimal), as (start, end).
fn address_range(field: &str) -> Option<(usize, usize)> {
    let (a, b) = field.split_once('-')?;
    Some((usize::from_str_radix(a, 16).ok()?, usize::from_str_radix(b, 16).ok()?))
}

/// The part of the `stack` mapping (start, end) that lies more than a page below `here`
/// (an address in the running frame), page-aligned, as (start, length): none if `here` is
/// not in that mapping, or nothing lies below.
pub fn unused_stack((start, end): (usize, usize), here: usize, page: usize) -> Option<(usize, usize)> {
    if !(start <= here && here < end) || page == 0 {
        return None;
    }
    let below = (here / page).checked_sub(1)? * page;
    (below > start).then_some((start, below - start))
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
        if let Some((start, end)) = address_range(first) {
            let perms = fields.next().unwrap_or("");
            let path = fields.nth(3).unwrap_or("");
            maps.push(Map { start, end, perms, path, anonymous_kb: None });
            continue;
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

    #[test]
    fn only_the_main_stack_below_the_running_frame_is_picked() {
        let maps = "00400000-00600000 r-xp 00000000 08:01 42 /usr/bin/shoal-agent\n\
                    7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0                          [stack]\n";
        let page = 4096;
        let stack = stack_mapping(maps).unwrap();
        assert_eq!(stack, (0x7ffd_0000_0000, 0x7ffd_0002_1000));
        assert_eq!(stack_mapping(SMAPS), Some(stack), "smaps has the same line");
        // Running at +0x1_8010: the page holding it and the one below stay.
        assert_eq!(unused_stack(stack, 0x7ffd_0001_8010, page), Some((0x7ffd_0000_0000, 0x1_7000)));
        // Outside the main stack (another thread's), or too near its bottom: nothing.
        assert_eq!(unused_stack(stack, 0x0050_0000, page), None);
        assert_eq!(unused_stack(stack, 0x7ffd_0002_1000, page), None);
        assert_eq!(unused_stack(stack, 0x7ffd_0000_1010, page), None);
        assert_eq!(stack_mapping("garbage [stack]\n"), None);
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
