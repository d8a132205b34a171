//! What the board says about itself: hostname, architecture, CPUs and memory, read from
//! the kernel, and the devices it has of those boards give containers (for
//! `--constraint node.devices==/dev/i2c-1`).

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

/// The kinds of device (by the start of their name in `/dev`) a board offers to
/// containers, as the board configurations list them (`board-configs/`): I²C and SPI
/// buses, GPIO chips, serial ports (on-board, USB, the Pi's `serial0` links), cameras.
/// Not `ttyS*`: every x86 machine has 32 of them, present or not.
pub const DEVICE_KINDS: [&str; 11] =
    ["i2c-", "spidev", "gpiochip", "gpiomem", "ttyAMA", "ttyUSB", "ttyACM", "serial", "video", "media", "hidraw"];

/// Of the names in `/dev`, those of [`DEVICE_KINDS`], as paths, sorted, at most
/// [`shoal_proto::MAX_NODE_DEVICES`].
pub fn board_devices(names: impl Iterator<Item = String>) -> Vec<String> {
    let mut out: Vec<String> = names
        .filter(|n| DEVICE_KINDS.iter().any(|k| n.starts_with(k) && n.len() > k.len()))
        .filter(|n| n.len() <= 59 && !n.contains('/'))
        .map(|n| format!("/dev/{n}"))
        .collect();
    out.sort();
    out.truncate(shoal_proto::MAX_NODE_DEVICES);
    out
}

/// The devices of [`DEVICE_KINDS`] this board has now.
pub fn devices() -> Vec<String> {
    let names = std::fs::read_dir("/dev")
        .map(|d| d.filter_map(|e| e.ok()).filter_map(|e| e.file_name().into_string().ok()).collect::<Vec<_>>())
        .unwrap_or_default();
    board_devices(names.into_iter())
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
        agent_version: shoal_proto::text_lossy(&crate::upgrade::own_version()),
        missing_features: crate::kernel::missing(&crate::kernel::Facts::read())
            .iter()
            .take(shoal_proto::MAX_MISSING_FEATURES)
            .map(|m| shoal_proto::text_lossy(m))
            .collect::<Vec<_>>()
            .try_into()
            .unwrap_or_default(),
        devices: devices()
            .iter()
            .map(|d| shoal_proto::text_lossy(d))
            .collect::<Vec<_>>()
            .try_into()
            .unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_boards_devices_are_those_containers_use() {
        let names = ["i2c-1", "ttyS0", "gpiochip0", "serial0", "null", "video0", "spidev0.0", "i2c-", "ttyUSB0"];
        assert_eq!(
            board_devices(names.iter().map(|n| n.to_string())),
            ["/dev/gpiochip0", "/dev/i2c-1", "/dev/serial0", "/dev/spidev0.0", "/dev/ttyUSB0", "/dev/video0"]
        );
    }

    #[test]
    fn meminfo_total_is_read_in_bytes() {
        assert_eq!(parse_meminfo_total("MemTotal:       1000 kB\nMemFree: 5 kB\n"), Some(1_024_000));
        assert_eq!(parse_meminfo_total("garbage"), None);
    }
}
