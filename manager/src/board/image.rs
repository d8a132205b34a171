//! The I/O of `board prepare`: finding the boot partition in an image file (or an SD
//! card's device file), and reading and writing files on its FAT file system through
//! the `fatfs` crate over a [`Window`] of the file. Nothing is mounted, so it needs no
//! root and runs on macOS as on Linux.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;

use super::disk::{self, Partition, Table, SECTOR};
use super::plan::{Plan, AGENT, DIR};
use super::BoardError;

/// A byte range of a file seen as a whole file: the partition the FAT driver works on.
/// Reads stop at its end; writes past it fail, so a confused file system can never
/// write over the next partition.
pub struct Window<F> {
    inner: F,
    start: u64,
    len: u64,
    pos: u64,
}

impl<F: Seek> Window<F> {
    /// `len` bytes of `inner` from `start`.
    pub fn new(inner: F, start: u64, len: u64) -> Self {
        Self { inner, start, len, pos: 0 }
    }
}

impl<F: Read + Seek> Read for Window<F> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.len.saturating_sub(self.pos);
        let n = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        if n == 0 {
            return Ok(0);
        }
        self.inner.seek(SeekFrom::Start(self.start + self.pos))?;
        let got = self.inner.read(&mut buf[..n])?;
        self.pos += got as u64;
        Ok(got)
    }
}

impl<F: Write + Seek> Write for Window<F> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let left = self.len.saturating_sub(self.pos);
        let n = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        if n == 0 && !buf.is_empty() {
            return Err(io::Error::new(io::ErrorKind::WriteZero, "write past the end of the partition"));
        }
        self.inner.seek(SeekFrom::Start(self.start + self.pos))?;
        let put = self.inner.write(&buf[..n])?;
        self.pos += put as u64;
        Ok(put)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl<F> Seek for Window<F> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let new = match to {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        match new {
            Some(n) if n <= self.len => {
                self.pos = n;
                Ok(n)
            }
            _ => Err(io::Error::new(io::ErrorKind::InvalidInput, "seek outside the partition")),
        }
    }
}

fn read_at(file: &mut File, offset: u64, len: usize, path: &Path) -> Result<Vec<u8>, BoardError> {
    let mut buf = vec![0u8; len];
    file.seek(SeekFrom::Start(offset))
        .and_then(|_| file.read_exact(&mut buf))
        .map_err(BoardError::io(format!("reading the partition table of {}", path.display())))?;
    Ok(buf)
}

/// The FAT boot partition of the disk image or device `file` (at `path`, for messages).
pub fn boot_partition(file: &mut File, path: &Path) -> Result<Partition, BoardError> {
    let disk_err = |reason: String| BoardError::Disk { path: path.to_owned(), reason };
    // A block device's metadata says 0 bytes: its size is where its end is.
    let len = file.seek(SeekFrom::End(0)).map_err(BoardError::io(format!("sizing {}", path.display())))?;
    if len < 2 * SECTOR {
        return Err(disk_err(format!("only {len} bytes: not a disk image")));
    }
    let sector0 = read_at(file, 0, SECTOR as usize, path)?;
    let parts = match disk::mbr(&sector0, len).map_err(disk_err)? {
        Table::Mbr(parts) => parts,
        Table::Gpt => {
            let sector1 = read_at(file, SECTOR, SECTOR as usize, path)?;
            let at = disk::gpt_header(&sector1, len).map_err(disk_err)?;
            let entries = read_at(file, at.offset, at.bytes(), path)?;
            disk::gpt_partitions(&entries, at, len).map_err(disk_err)?
        }
    };
    disk::boot_partition(&parts).map_err(disk_err)
}

type Fs = fatfs::FileSystem<Window<File>>;

fn open_fat(path: &Path) -> Result<(Fs, Partition), BoardError> {
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(BoardError::io(format!("opening {}", path.display())))?;
    let part = boot_partition(&mut file, path)?;
    let fs = fatfs::FileSystem::new(Window::new(file, part.start, part.len), fatfs::FsOptions::new()).map_err(|e| {
        BoardError::Disk {
            path: path.to_owned(),
            reason: format!("partition {} is marked FAT but its file system cannot be read ({e})", part.number),
        }
    })?;
    Ok((fs, part))
}

fn read_file(fs: &Fs, name: &str) -> io::Result<Vec<u8>> {
    let mut f = fs.root_dir().open_file(name)?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf)?;
    Ok(buf)
}

fn write_file(fs: &Fs, name: &str, data: &[u8]) -> Result<(), BoardError> {
    let what = || format!("writing {name} to the boot partition");
    let mut f = fs.root_dir().create_file(name).map_err(BoardError::io(what()))?;
    f.truncate().and_then(|_| f.write_all(data)).and_then(|_| f.flush()).map_err(BoardError::io(what()))?;
    // Read it back: an SD card that silently drops writes fails here, not at first boot.
    if read_file(fs, name).map_err(BoardError::io(format!("reading back {name}")))? != data {
        return Err(BoardError::Invalid(format!("{name} read back differs from what was written: try another card")));
    }
    Ok(())
}

/// What was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    /// The boot partition's number.
    pub partition: usize,
    /// The new kernel command line.
    pub cmdline: String,
}

/// Writes the agent and the plan's files onto the boot partition of the image or
/// device at `path`, in place, and the new `cmdline.txt` last (so a partly prepared
/// image does not run a half-written first-boot step).
pub fn prepare(path: &Path, plan: &Plan, agent: &[u8]) -> Result<Prepared, BoardError> {
    let (fs, part) = open_fat(path)?;
    let old = read_file(&fs, "cmdline.txt").map_err(|e| {
        BoardError::Invalid(format!(
            "no readable cmdline.txt on the FAT boot partition of {} ({e}): is it a Raspberry Pi OS image?",
            path.display()
        ))
    })?;
    let cmdline = plan.cmdline(&String::from_utf8_lossy(&old))?;
    let files = plan.files();
    let needed: u64 = agent.len() as u64 + files.iter().map(|f| f.1.len() as u64).sum::<u64>();
    let stats = fs.stats().map_err(BoardError::io("reading the boot partition's free space"))?;
    // One cluster per file at least, on top of the bytes.
    let free = u64::from(stats.free_clusters()) * u64::from(stats.cluster_size());
    if free < needed + (files.len() as u64 + 2) * u64::from(stats.cluster_size()) {
        return Err(BoardError::Invalid(format!(
            "the boot partition has {free} bytes free and needs about {needed}: remove files from it or use a larger partition"
        )));
    }
    match fs.root_dir().create_dir(DIR) {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(BoardError::io(format!("making {DIR}/ on the boot partition"))(e)),
    }
    write_file(&fs, &format!("{DIR}/{AGENT}"), agent)?;
    for (name, data) in &files {
        write_file(&fs, &format!("{DIR}/{name}"), data)?;
    }
    write_file(&fs, "cmdline.txt", cmdline.as_bytes())?;
    fs.unmount().map_err(BoardError::io("writing the boot partition's file system"))?;
    Ok(Prepared { partition: part.number, cmdline })
}

/// Reads a file (`cmdline.txt`, `shoal/join.args`, …) from the boot partition of the
/// image at `path`: for checking a prepared image.
pub fn read(path: &Path, name: &str) -> Result<Vec<u8>, BoardError> {
    let (fs, _) = open_fat(path)?;
    read_file(&fs, name)
        .map_err(BoardError::io(format!("reading {name} from the boot partition of {}", path.display())))
}

/// Checks that `bytes` is an ELF executable for the board's target (class and machine):
/// an agent for the wrong board would fail at its first boot, far from the laptop.
pub fn check_agent(bytes: &[u8], target: &str, elf: (bool, u16)) -> Result<(), BoardError> {
    let wrong = |why: &str| {
        BoardError::Invalid(format!(
            "the agent is {why}, not a {target} build: build it with scripts/build-agents.sh or pass --agent"
        ))
    };
    if bytes.len() < 64 || &bytes[..4] != b"\x7fELF" || bytes[5] != 1 {
        return Err(wrong("not a little-endian ELF executable"));
    }
    let (wide, machine) = elf;
    let class_ok = bytes[4] == if wide { 2 } else { 1 };
    let m = u16::from_le_bytes([bytes[18], bytes[19]]);
    if !class_ok || m != machine {
        return Err(wrong(&format!("for ELF machine {m} ({}-bit)", if bytes[4] == 2 { 64 } else { 32 })));
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::board::config::BoardConfig;
    use crate::board::disk::tests::mbr_sector;
    use shoal_proto::Label;

    /// A 16 MiB image: an MBR, a FAT partition from 1 MiB to 9 MiB holding
    /// `cmdline.txt`, and a Linux partition after it.
    pub(crate) fn synthetic_image(path: &Path, cmdline: &str) {
        let mut f = std::fs::OpenOptions::new().create(true).truncate(true).read(true).write(true).open(path).unwrap();
        f.set_len(16 << 20).unwrap();
        f.write_all(&mbr_sector(&[(0x0c, 2048, 16384), (0x83, 18432, 14336)])).unwrap();
        fatfs::format_volume(Window::new(&mut f, 1 << 20, 8 << 20), fatfs::FormatVolumeOptions::new()).unwrap();
        let fs = fatfs::FileSystem::new(Window::new(&mut f, 1 << 20, 8 << 20), fatfs::FsOptions::new()).unwrap();
        fs.root_dir().create_file("cmdline.txt").unwrap().write_all(cmdline.as_bytes()).unwrap();
        fs.root_dir().create_file("config.txt").unwrap().write_all(b"arm_64bit=1\n").unwrap();
        fs.unmount().unwrap();
    }

    /// An "agent": an ELF header for aarch64 and enough bytes to span many clusters.
    pub(crate) fn fake_agent() -> Vec<u8> {
        let mut a = vec![0u8; 300_000];
        a[..4].copy_from_slice(b"\x7fELF");
        a[4] = 2;
        a[5] = 1;
        a[18..20].copy_from_slice(&183u16.to_le_bytes());
        for (i, b) in a.iter_mut().enumerate().skip(64) {
            *b = (i % 251) as u8;
        }
        a
    }

    fn rpi4() -> BoardConfig {
        let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../board-configs/rpi4.toml")).unwrap();
        BoardConfig::parse(&text).unwrap()
    }

    fn scratch(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("shoal-board-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_prepared_image_holds_the_agent_its_join_and_first_boot_step() {
        let dir = scratch("prepare");
        let img = dir.join("sd.img");
        synthetic_image(&img, "console=serial0,115200 root=PARTUUID=abcd-02 rootwait\n");
        let root_before = {
            let mut f = File::open(&img).unwrap();
            read_at(&mut f, 9 << 20, 7 << 20, &img).unwrap()
        };
        let labels = [Label::parse("site=barn").unwrap()];
        let t1 = shoal_proto::JoinToken::new([1; 32], [1; 25]).to_string();
        let plan = Plan::new(rpi4(), "192.0.2.1:4242", &t1, Some("pi-1"), &labels, None).unwrap();
        let agent = fake_agent();
        let done = prepare(&img, &plan, &agent).unwrap();
        assert_eq!(done.partition, 1);
        assert_eq!(read(&img, "shoal/shoal-agent").unwrap(), agent);
        let cmdline = String::from_utf8(read(&img, "cmdline.txt").unwrap()).unwrap();
        assert_eq!(cmdline, done.cmdline);
        assert!(cmdline.starts_with("console=serial0,115200 root=PARTUUID=abcd-02 rootwait cgroup_enable=memory"));
        assert!(cmdline.contains(" systemd.run=/boot/firmware/shoal/firstboot.sh "));
        let args = String::from_utf8(read(&img, "shoal/join.args").unwrap()).unwrap();
        assert!(args.contains("--label\nboard=rpi4\n--label\nsite=barn\n192.0.2.1:4242\n"), "{args}");
        for f in ["shoal/firstboot.sh", "shoal/start.sh", "shoal/shoal-agent.service", "shoal/hostname", "config.txt"] {
            assert!(!read(&img, f).unwrap().is_empty(), "{f}");
        }
        // Nothing outside the boot partition changed.
        let mut f = File::open(&img).unwrap();
        assert_eq!(read_at(&mut f, 9 << 20, 7 << 20, &img).unwrap(), root_before);
        // Preparing again (another token) replaces the files and keeps one set of flags.
        let t2 = shoal_proto::JoinToken::new([2; 32], [2; 25]).to_string();
        let plan2 = Plan::new(rpi4(), "192.0.2.1:4242", &t2, None, &[], None).unwrap();
        let again = prepare(&img, &plan2, &agent[..100_000]).unwrap();
        assert_eq!(again.cmdline, cmdline);
        assert_eq!(read(&img, "shoal/shoal-agent").unwrap(), &agent[..100_000]);
        assert!(String::from_utf8(read(&img, "shoal/join.args").unwrap()).unwrap().contains(&t2));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn images_that_cannot_be_prepared_say_why() {
        let dir = scratch("bad");
        let t = shoal_proto::JoinToken::new([1; 32], [1; 25]).to_string();
        let plan = Plan::new(rpi4(), "m", &t, None, &[], None).unwrap();
        // No cmdline.txt: not a Raspberry Pi OS image.
        let img = dir.join("no-cmdline.img");
        synthetic_image(&img, "");
        let (fs, _) = open_fat(&img).unwrap();
        fs.root_dir().remove("cmdline.txt").unwrap();
        fs.unmount().unwrap();
        let e = prepare(&img, &plan, &fake_agent()).unwrap_err().to_string();
        assert!(e.contains("no readable cmdline.txt"), "{e}");
        // An agent bigger than the partition.
        let img = dir.join("small.img");
        synthetic_image(&img, "root=/dev/mmcblk0p2\n");
        let mut big = fake_agent();
        big.resize(9 << 20, 0);
        let e = prepare(&img, &plan, &big).unwrap_err().to_string();
        assert!(e.contains("bytes free"), "{e}");
        assert_eq!(read(&img, "cmdline.txt").unwrap(), b"root=/dev/mmcblk0p2\n", "cmdline.txt changed");
        // The FAT partition's bytes are garbage.
        let img = dir.join("garbage.img");
        let mut f = File::create(&img).unwrap();
        f.set_len(16 << 20).unwrap();
        f.write_all(&mbr_sector(&[(0x0c, 2048, 16384)])).unwrap();
        let e = prepare(&img, &plan, &fake_agent()).unwrap_err().to_string();
        assert!(e.contains("cannot be read"), "{e}");
        // Not a disk image at all.
        std::fs::write(dir.join("tiny.img"), b"hello").unwrap();
        assert!(prepare(&dir.join("tiny.img"), &plan, &fake_agent())
            .unwrap_err()
            .to_string()
            .contains("not a disk image"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_window_keeps_the_file_system_inside_its_partition() {
        let mut w = Window::new(io::Cursor::new(vec![0u8; 100]), 10, 20);
        assert_eq!(w.write(&[1; 50]).unwrap(), 20);
        assert!(w.write(&[1]).is_err());
        assert!(w.seek(SeekFrom::Start(21)).is_err());
        assert!(w.seek(SeekFrom::Current(-100)).is_err());
        assert_eq!(w.seek(SeekFrom::End(-5)).unwrap(), 15);
        let inner = w.inner.into_inner();
        assert!(inner[..10].iter().all(|b| *b == 0) && inner[30..].iter().all(|b| *b == 0));
        assert!(inner[10..30].iter().all(|b| *b == 1));
    }

    #[test]
    fn an_agent_for_another_board_is_refused() {
        let a = fake_agent();
        assert!(check_agent(&a, "aarch64-unknown-linux-musl", (true, 183)).is_ok());
        let e = check_agent(&a, "armv7-unknown-linux-gnueabihf", (false, 40)).unwrap_err().to_string();
        assert!(e.contains("ELF machine 183") && e.contains("scripts/build-agents.sh"), "{e}");
        assert!(check_agent(b"#!/bin/sh\necho hi\n", "x", (true, 62)).is_err());
    }
}
