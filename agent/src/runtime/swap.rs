//! Keeping a memory-limited container out of swap on cgroup v2.
//!
//! The OCI spec's `memory.swap` is memory+swap (cgroup v1's `memsw`); the agent sets it
//! equal to the limit, so the container may use no swap at all. On cgroup v1 libcgroups
//! writes that as is. On cgroup v2, where `memory.swap.max` is swap alone, libcgroups 0.7
//! converts it to `swap - limit` = 0 and then skips writing a 0, so the file stays at
//! `max`: on a board with swap a container over its limit is pushed to swap (an SD card)
//! instead of being OOM-killed. The shim calls [`limit_swap`] after libcontainer made the
//! cgroup and before the container's process runs, and writes the 0 itself.
//!
//! Not here: the limit itself (libcgroups writes `memory.max`).

use std::path::{Path, PathBuf};

use oci_spec::runtime::Spec;

/// Where the unified (v2) hierarchy is mounted on a board booted with cgroup v2.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// What to write to `memory.swap.max`, from the spec's memory limit and memory+swap
/// (`None`: leave it to libcgroups). Only the case libcgroups drops: swap == limit.
pub fn swap_max(limit: Option<i64>, swap: Option<i64>) -> Option<i64> {
    match (limit, swap) {
        (Some(limit), Some(swap)) if limit > 0 && swap == limit => Some(0),
        _ => None,
    }
}

/// Whether the hierarchy at `root` is cgroup v2's (`cgroup.controllers` there): only
/// then may [`limit_swap`] have something to write.
pub fn unified(root: &Path) -> bool {
    root.join("cgroup.controllers").exists()
}

/// The container's v2 cgroup directory under `root`, when this is a cgroup v2 board
/// (`cgroup.controllers` at the root: not so on v1 or the hybrid layout, whose memory
/// controller is v1 and already limits memory+swap).
fn v2_cgroup_dir(root: &Path, spec: &Spec) -> Option<PathBuf> {
    if !unified(root) {
        return None;
    }
    let path = spec.linux().as_ref()?.cgroups_path().as_ref()?;
    let relative = path.strip_prefix("/").unwrap_or(path);
    // The agent names it `/shoal/<id>`; refuse anything that climbs out of the root.
    if relative.components().any(|c| !matches!(c, std::path::Component::Normal(_))) {
        return None;
    }
    Some(root.join(relative))
}

/// Writes `memory.swap.max` = 0 for a memory-limited container on a cgroup v2 board
/// rooted at `root` (normally [`CGROUP_ROOT`]). A kernel without swap accounting has no
/// `memory.swap.max`, and nothing can be limited there: `Ok(false)`. `Ok(true)` when
/// written.
pub fn limit_swap(root: &Path, spec: &Spec) -> Result<bool, String> {
    let memory = spec.linux().as_ref().and_then(|l| l.resources().as_ref()).and_then(|r| r.memory().as_ref());
    let Some(memory) = memory else { return Ok(false) };
    let Some(value) = swap_max(memory.limit(), memory.swap()) else { return Ok(false) };
    let Some(dir) = v2_cgroup_dir(root, spec) else { return Ok(false) };
    let file = dir.join("memory.swap.max");
    if !file.exists() {
        return Ok(false);
    }
    std::fs::write(&file, value.to_string()).map_err(|e| {
        format!("setting {} to {value} (the container would swap past its memory limit): {e}", file.display())
    })?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{LinuxBuilder, LinuxMemoryBuilder, LinuxResourcesBuilder, SpecBuilder};

    fn spec(limit: Option<i64>, swap: Option<i64>) -> Spec {
        let mut memory = LinuxMemoryBuilder::default();
        if let Some(l) = limit {
            memory = memory.limit(l);
        }
        if let Some(s) = swap {
            memory = memory.swap(s);
        }
        let resources = LinuxResourcesBuilder::default().memory(memory.build().unwrap()).build().unwrap();
        let linux =
            LinuxBuilder::default().cgroups_path(PathBuf::from("/shoal/c1")).resources(resources).build().unwrap();
        SpecBuilder::default().linux(linux).build().unwrap()
    }

    /// A cgroup v2 root of its own for test `name`: tests run in parallel, and two of
    /// them sharing one removed each other's files.
    fn fake_v2_root(name: &str, swap_file: bool) -> PathBuf {
        let root = std::env::temp_dir().join(format!("shoal-swap-{}-{name}-{swap_file}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("shoal/c1")).unwrap();
        std::fs::write(root.join("cgroup.controllers"), "cpu memory\n").unwrap();
        if swap_file {
            std::fs::write(root.join("shoal/c1/memory.swap.max"), "max\n").unwrap();
        }
        root
    }

    #[test]
    fn only_the_dropped_zero_is_written() {
        assert_eq!(swap_max(Some(64 << 20), Some(64 << 20)), Some(0));
        assert_eq!(swap_max(Some(64 << 20), Some(128 << 20)), None);
        assert_eq!(swap_max(Some(64 << 20), Some(-1)), None);
        assert_eq!(swap_max(None, None), None);
        assert_eq!(swap_max(Some(-1), Some(-1)), None);
    }

    #[test]
    fn a_limited_container_gets_no_swap_on_v2() {
        let root = fake_v2_root("limited", true);
        assert_eq!(limit_swap(&root, &spec(Some(32 << 20), Some(32 << 20))), Ok(true));
        assert_eq!(std::fs::read_to_string(root.join("shoal/c1/memory.swap.max")).unwrap(), "0");
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn nothing_is_written_without_a_limit_v2_or_swap_accounting() {
        let root = fake_v2_root("nothing", true);
        assert_eq!(limit_swap(&root, &spec(None, None)), Ok(false));
        assert_eq!(std::fs::read_to_string(root.join("shoal/c1/memory.swap.max")).unwrap(), "max\n");
        // v1 or hybrid: no cgroup.controllers at the root.
        std::fs::remove_file(root.join("cgroup.controllers")).unwrap();
        assert_eq!(limit_swap(&root, &spec(Some(32 << 20), Some(32 << 20))), Ok(false));
        std::fs::remove_dir_all(&root).unwrap();
        // A kernel without swap accounting has no memory.swap.max.
        let root = fake_v2_root("nothing", false);
        assert_eq!(limit_swap(&root, &spec(Some(32 << 20), Some(32 << 20))), Ok(false));
        assert!(!root.join("shoal/c1/memory.swap.max").exists());
        std::fs::remove_dir_all(&root).unwrap();
    }
}
