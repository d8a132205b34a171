//! What the board says about itself: hostname, architecture, CPUs and memory, read from
//! the kernel.

use shoal_proto::{BoundedVec, Label, NodeDescription, Resources, MAX_LABELS};

/// The kernel's hostname, or `localhost` when it can't be read.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "localhost".into())
}

/// Total memory from `/proc/meminfo`, in bytes.
pub fn memory_bytes() -> u64 {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    parse_meminfo_total(&text).unwrap_or(0)
}

fn parse_meminfo_total(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Describes this board.
pub fn describe(hostname: &str, advertise_addr: Option<&str>, labels: &[Label]) -> NodeDescription {
    let labels: BoundedVec<Label, MAX_LABELS> =
        labels.iter().take(MAX_LABELS).cloned().collect::<Vec<_>>().try_into().unwrap_or_default();
    NodeDescription {
        hostname: shoal_proto::text_lossy(hostname),
        arch: shoal_proto::text_lossy(std::env::consts::ARCH),
        os: shoal_proto::text_lossy(std::env::consts::OS),
        advertise_addr: advertise_addr.map(shoal_proto::text_lossy),
        labels,
        resources: Resources {
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get().min(u16::MAX as usize) as u16),
            memory_bytes: memory_bytes(),
        },
        agent_version: shoal_proto::text_lossy(env!("CARGO_PKG_VERSION")),
        missing_features: crate::kernel::missing(&crate::kernel::Facts::read())
            .iter()
            .take(shoal_proto::MAX_MISSING_FEATURES)
            .map(|m| shoal_proto::text_lossy(m))
            .collect::<Vec<_>>()
            .try_into()
            .unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_total_is_read_in_bytes() {
        assert_eq!(parse_meminfo_total("MemTotal:       1000 kB\nMemFree: 5 kB\n"), Some(1_024_000));
        assert_eq!(parse_meminfo_total("garbage"), None);
    }
}
