//! `shoal board prepare` as a user runs it: a small synthetic SD card image (an MBR, a
//! FAT boot partition with Raspberry Pi OS's cmdline.txt, a Linux partition) is
//! prepared with the `shoal` binary, then read back. No root, no QEMU: this is the part
//! of the flash-ready image test that runs in CI (the QEMU boot is
//! `tests/board_image.rs`, opt-in).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use shoal_manager::board::image::{read, Window};

fn scratch() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("shoal-board-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// 16 MiB: FAT32-LBA partition 1 (1–9 MiB) holding cmdline.txt, Linux partition 2.
fn stock_image(path: &Path) {
    let mut f = std::fs::OpenOptions::new().create(true).truncate(true).read(true).write(true).open(path).unwrap();
    f.set_len(16 << 20).unwrap();
    let mut mbr = vec![0u8; 512];
    for (i, (kind, first, n)) in [(0x0cu8, 2048u32, 16384u32), (0x83, 18432, 14336)].into_iter().enumerate() {
        let e = &mut mbr[446 + 16 * i..462 + 16 * i];
        e[4] = kind;
        e[8..12].copy_from_slice(&first.to_le_bytes());
        e[12..16].copy_from_slice(&n.to_le_bytes());
    }
    mbr[510..].copy_from_slice(&[0x55, 0xaa]);
    f.write_all(&mbr).unwrap();
    fatfs::format_volume(Window::new(&mut f, 1 << 20, 8 << 20), fatfs::FormatVolumeOptions::new()).unwrap();
    let fs = fatfs::FileSystem::new(Window::new(&mut f, 1 << 20, 8 << 20), fatfs::FsOptions::new()).unwrap();
    let mut c = fs.root_dir().create_file("cmdline.txt").unwrap();
    c.write_all(
        b"console=serial0,115200 console=tty1 root=PARTUUID=6c586e13-02 rootfstype=ext4 fsck.repair=yes rootwait\n",
    )
    .unwrap();
    drop(c);
    fs.unmount().unwrap();
}

/// An ELF header for `machine` (64-bit) and some bytes.
fn agent(path: &Path, machine: u16) {
    let mut a = vec![7u8; 200_000];
    a[..4].copy_from_slice(b"\x7fELF");
    a[4] = 2;
    a[5] = 1;
    a[18..20].copy_from_slice(&machine.to_le_bytes());
    std::fs::write(path, a).unwrap();
}

fn token() -> String {
    shoal_proto::JoinToken::new([3; 32], [4; 25]).to_string()
}

fn shoal(dir: &Path, extra: &[&str]) -> std::process::Output {
    let configs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../board-configs");
    Command::new(env!("CARGO_BIN_EXE_shoal"))
        .args(["board", "prepare", "--board", "rpi4", "--image"])
        .arg(dir.join("stock.img"))
        .arg("--board-configs")
        .arg(configs)
        .args(["--manager", "192.0.2.10:4242", "--hostname", "pi-barn"])
        .args(extra)
        .env("SHOAL_JOIN_TOKEN", token())
        .env("SHOAL_DATA_DIR", dir.join("data"))
        .output()
        .unwrap()
}

#[test]
fn board_prepare_writes_a_stock_image_that_joins_on_first_boot() {
    let dir = scratch();
    stock_image(&dir.join("stock.img"));
    let stock = std::fs::read(dir.join("stock.img")).unwrap();
    agent(&dir.join("agent-arm64"), 183);
    agent(&dir.join("agent-x86"), 62);
    let out = dir.join("sd.img");
    let o = out.to_str().unwrap();
    let arm64 = dir.join("agent-arm64");
    let run = shoal(
        &dir,
        &["--out", o, "--agent", arm64.to_str().unwrap(), "--label", "site=barn", "--wifi", "barn net:correct horse"],
    );
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    assert!(String::from_utf8_lossy(&run.stdout).contains("joins 192.0.2.10:4242"));
    // The stock image is untouched; the new one has the agent, its join and first boot.
    assert_eq!(std::fs::read(dir.join("stock.img")).unwrap(), stock);
    assert_eq!(read(&out, "shoal/shoal-agent").unwrap(), std::fs::read(&arm64).unwrap());
    let cmdline = String::from_utf8(read(&out, "cmdline.txt").unwrap()).unwrap();
    assert_eq!(
        cmdline,
        "console=serial0,115200 console=tty1 root=PARTUUID=6c586e13-02 rootfstype=ext4 fsck.repair=yes rootwait \
         cgroup_enable=memory cgroup_memory=1 systemd.run=/boot/firmware/shoal/firstboot.sh \
         systemd.run_success_action=reboot systemd.unit=kernel-command-line.target\n"
    );
    assert_eq!(
        String::from_utf8(read(&out, "shoal/join.args").unwrap()).unwrap(),
        format!(
            "--token\n{}\n--hostname\npi-barn\n--label\nboard=rpi4\n--label\nsite=barn\n192.0.2.10:4242\n",
            token()
        )
    );
    let unit = String::from_utf8(read(&out, "shoal/shoal-agent.service").unwrap()).unwrap();
    assert!(unit.contains("Restart=always") && unit.contains("WantedBy=multi-user.target"));
    let nm = String::from_utf8(read(&out, "shoal/wifi.nmconnection").unwrap()).unwrap();
    assert!(nm.contains("ssid=barn net\n") && nm.contains("psk=correct horse\n"));
    assert_eq!(read(&out, "shoal/hostname").unwrap(), b"pi-barn\n");

    // Mistakes are refused before anything is written, and say what to do.
    let x86 = dir.join("agent-x86");
    let out2 = dir.join("sd2.img");
    let run = shoal(&dir, &["--out", out2.to_str().unwrap(), "--agent", x86.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success() && err.contains("not a aarch64-unknown-linux-musl build"), "{err}");
    assert!(!out2.exists());
    let run = shoal(&dir, &["--out", o, "--agent", arm64.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success() && err.contains("remove it first"), "{err}");
    assert!(out.exists(), "the earlier output was removed");
    let run = shoal(&dir, &["--out", out2.to_str().unwrap(), "--agent", arm64.to_str().unwrap(), "--wifi", "x:short"]);
    assert!(String::from_utf8_lossy(&run.stderr).contains("passphrase must be 8 to 63"));
    let run = shoal(&dir, &["--agent", arm64.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&run.stderr).contains("--out"));
    std::fs::remove_dir_all(&dir).unwrap();
}
