//! Starts the kernel's wait for a cgroup move early, so that a new container's own move
//! finds it partly or wholly behind it.
//!
//! Why: moving a process into a cgroup (a write to `cgroup.procs`) takes the kernel's
//! global `cgroup_threadgroup_rwsem` for writing, and the first writer after a quiet
//! spell first waits for an RCU grace period: 5–15 ms on the development machine, the
//! largest part of a container's start (docs/runtime.md, "Start-up"). Writers that
//! arrive while that wait is under way share it, and writers within a grace period after
//! the last one left do not wait at all. libcontainer's first move comes late, after the
//! bundle, the overlay, the shim's exec and the container's first fork; [`start`], called
//! when that work begins, moves this process into the cgroup it is already in, on a
//! thread of its own. Nothing moves (the kernel skips a move to the same cgroup); the
//! cost is a thread asleep in the kernel for one grace period.
//!
//! Only an optimisation: where the cgroup can't be found or written, nothing happens and
//! the container's own move waits as it would have.

use std::path::{Path, PathBuf};

/// Where the cgroup hierarchies are mounted on every board the agent supports (the
/// runtime assumes it elsewhere too: see `swap::CGROUP_ROOT`).
const CGROUP_MOUNTS: &str = "/sys/fs/cgroup";

/// Starts a no-op move of this process into its own cgroup on a thread of its own.
pub fn start() {
    let spawned = std::thread::Builder::new().name("cgroup-warmup".into()).stack_size(64 * 1024).spawn(|| {
        let _ = move_into_own_cgroup();
    });
    // No thread: the container's own move will wait, as without this.
    drop(spawned);
}

/// Moves this process into the cgroup it is in (the kernel moves nothing, but takes the
/// lock, and waits as any move would), here and now: `None` where no cgroup was found.
/// [`start`] runs it on a thread; `runtime-bench` times it, to say whether a machine's
/// cgroup moves wait for a grace period at all.
pub fn move_into_own_cgroup() -> Option<std::io::Result<()>> {
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let procs = own_procs_file(Path::new(CGROUP_MOUNTS), &own, |p| p.exists())?;
    // "0" is the writing process itself, in v1 and v2 alike. A refusal (a v2 cgroup with
    // controllers enabled for children, say) still took the lock, and so still started
    // the wait.
    Some(std::fs::write(procs, "0"))
}

/// The `cgroup.procs` of this process's own cgroup, from `/proc/self/cgroup` (`own`)
/// and the hierarchies mounted under `mounts`: the unified (v2) one when there is one,
/// at `mounts` itself (a v2 board) or at `mounts/unified` (the hybrid layout), else the
/// first v1 hierarchy, at `mounts/<its controllers>`. `exists` says whether a file is
/// there. A path that climbs out of the hierarchy (`..`) is refused.
fn own_procs_file(mounts: &Path, own: &str, exists: impl Fn(&Path) -> bool) -> Option<PathBuf> {
    let lines: Vec<(&str, &str)> = own
        .lines()
        .filter_map(|line| {
            let mut fields = line.splitn(3, ':');
            let (_id, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
            Some((controllers, path))
        })
        .collect();
    let unified = lines.iter().filter(|(controllers, _)| controllers.is_empty()).flat_map(|(_, path)| {
        [mounts.to_path_buf(), mounts.join("unified")].into_iter().map(move |root| (root, *path))
    });
    let v1 = lines
        .iter()
        .filter(|(controllers, _)| !controllers.is_empty())
        .map(|(controllers, path)| (mounts.join(controllers.trim_start_matches("name=")), *path));
    unified.chain(v1).find_map(|(root, path)| {
        let relative = Path::new(path).strip_prefix("/").ok()?;
        if relative.components().any(|c| !matches!(c, std::path::Component::Normal(_))) {
            return None;
        }
        // The hierarchy's own file first: a v2 board's `/sys/fs/cgroup` is no hybrid's tmpfs.
        exists(&root.join("cgroup.procs")).then(|| root.join(relative).join("cgroup.procs"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(own: &str, present: &[&str]) -> Option<PathBuf> {
        own_procs_file(Path::new("/cg"), own, |p| present.iter().any(|q| Path::new(q) == p))
    }

    #[test]
    fn a_v2_board_uses_the_unified_hierarchy_at_the_mount_point() {
        let own = "0::/system.slice/shoal-agent.service\n";
        assert_eq!(
            found(own, &["/cg/cgroup.procs"]),
            Some(PathBuf::from("/cg/system.slice/shoal-agent.service/cgroup.procs"))
        );
    }

    #[test]
    fn the_hybrid_layout_uses_the_unified_hierarchy_beside_the_v1_ones() {
        let own = "4:memory:/process_api/x\n1:cpu:/\n0::/\n";
        assert_eq!(
            found(own, &["/cg/unified/cgroup.procs", "/cg/memory/cgroup.procs"]),
            Some(PathBuf::from("/cg/unified/cgroup.procs"))
        );
    }

    #[test]
    fn a_v1_board_uses_its_first_mounted_hierarchy() {
        let own = "9:name=systemd:/a\n4:memory:/b\n3:cpu,cpuacct:/c\n";
        assert_eq!(found(own, &["/cg/systemd/cgroup.procs"]), Some(PathBuf::from("/cg/systemd/a/cgroup.procs")));
        assert_eq!(
            found(own, &["/cg/cpu,cpuacct/cgroup.procs"]),
            Some(PathBuf::from("/cg/cpu,cpuacct/c/cgroup.procs"))
        );
    }

    #[test]
    fn nothing_is_written_where_no_hierarchy_is_found_or_the_path_climbs_out() {
        assert_eq!(found("0::/\n", &[]), None);
        assert_eq!(found("0::/../../etc\n", &["/cg/cgroup.procs"]), None);
        assert_eq!(found("garbage", &["/cg/cgroup.procs"]), None);
    }
}
