//! Finding the FAT boot partition of a disk image from its partition table (MBR, or
//! GPT behind a protective MBR). Pure: the caller reads the sectors asked for. Every
//! field read is checked against the image's size, since an image is untrusted bytes.
//! Sectors are 512 bytes, as on SD cards and the images written to them.

/// Bytes in a sector.
pub const SECTOR: u64 = 512;
/// Most GPT entries read (the usual array has 128).
pub const MAX_GPT_ENTRIES: u32 = 1024;

/// A partition, in bytes from the start of the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Partition {
    /// 1-based, as `fdisk` and `/dev/sdX1` count.
    pub number: usize,
    /// Offset of its first byte.
    pub start: u64,
    /// Its length.
    pub len: u64,
    /// Whether its type says FAT (MBR 0x01/0x04/0x06/0x0b/0x0c/0x0e/0xef; GPT EFI
    /// system or basic data).
    pub fat: bool,
}

/// What sector 0 says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Table {
    /// An MBR table and its partitions.
    Mbr(Vec<Partition>),
    /// A protective MBR: the GPT header is in sector 1.
    Gpt,
}

const MBR_FAT: [u8; 7] = [0x01, 0x04, 0x06, 0x0b, 0x0c, 0x0e, 0xef];
// On-disk (mixed-endian) bytes of the EFI system and Microsoft basic data type GUIDs.
const GPT_ESP: [u8; 16] =
    [0x28, 0x73, 0x2a, 0xc1, 0x1f, 0xf8, 0xd2, 0x11, 0xba, 0x4b, 0x00, 0xa0, 0xc9, 0x3e, 0xc9, 0x3b];
const GPT_BASIC: [u8; 16] =
    [0xa2, 0xa0, 0xd0, 0xeb, 0xe5, 0xb9, 0x33, 0x44, 0x87, 0xc0, 0x68, 0xb6, 0xb7, 0x26, 0x99, 0xc7];

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn checked(number: usize, first: u64, sectors: u64, disk_len: u64, fat: bool) -> Result<Partition, String> {
    let start = first.checked_mul(SECTOR);
    let len = sectors.checked_mul(SECTOR);
    match (start, len) {
        (Some(start), Some(len)) if start.checked_add(len).is_some_and(|end| end <= disk_len) => {
            Ok(Partition { number, start, len, fat })
        }
        _ => Err(format!("partition {number} runs past the end of the image ({disk_len} bytes): is the image whole?")),
    }
}

/// Reads sector 0 of a disk of `disk_len` bytes.
pub fn mbr(sector0: &[u8], disk_len: u64) -> Result<Table, String> {
    if sector0.len() < 512 || sector0[510..512] != [0x55, 0xaa] {
        return Err("no partition table (no MBR signature in the first sector): is this a whole-disk image?".into());
    }
    let mut parts = Vec::new();
    for i in 0..4 {
        let e = &sector0[446 + 16 * i..446 + 16 * (i + 1)];
        let kind = e[4];
        if kind == 0xee {
            return Ok(Table::Gpt);
        }
        let (first, sectors) = (u64::from(u32_at(e, 8)), u64::from(u32_at(e, 12)));
        if kind == 0 || sectors == 0 {
            continue;
        }
        parts.push(checked(i + 1, first, sectors, disk_len, MBR_FAT.contains(&kind))?);
    }
    Ok(Table::Mbr(parts))
}

/// Where a GPT's entries are: (byte offset, count, size of one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GptEntries {
    /// Byte offset of the array.
    pub offset: u64,
    /// Number of entries.
    pub count: u32,
    /// Bytes per entry.
    pub size: u32,
}

impl GptEntries {
    /// Bytes to read.
    pub fn bytes(&self) -> usize {
        self.count as usize * self.size as usize
    }
}

/// Reads the GPT header in sector 1.
pub fn gpt_header(sector1: &[u8], disk_len: u64) -> Result<GptEntries, String> {
    if sector1.len() < 92 || &sector1[..8] != b"EFI PART" {
        return Err("the protective MBR promises a GPT, but sector 1 has no GPT header".into());
    }
    let lba = u64_at(sector1, 72);
    let count = u32_at(sector1, 80);
    let size = u32_at(sector1, 84);
    if count == 0 || count > MAX_GPT_ENTRIES || !(128..=4096).contains(&size) || !size.is_multiple_of(8) {
        return Err(format!("GPT header with {count} entries of {size} bytes is not one this reads"));
    }
    let bytes = u64::from(count) * u64::from(size);
    let offset = lba.checked_mul(SECTOR).filter(|o| o.checked_add(bytes).is_some_and(|end| end <= disk_len));
    let offset = offset.ok_or("the GPT's partition entries lie past the end of the image")?;
    Ok(GptEntries { offset, count, size })
}

/// Reads a GPT's partition entries.
pub fn gpt_partitions(entries: &[u8], at: GptEntries, disk_len: u64) -> Result<Vec<Partition>, String> {
    let mut parts = Vec::new();
    for (i, e) in entries.chunks_exact(at.size as usize).take(at.count as usize).enumerate() {
        let kind: [u8; 16] = e[..16].try_into().expect("16 bytes");
        if kind == [0; 16] {
            continue;
        }
        let (first, last) = (u64_at(e, 32), u64_at(e, 40));
        if last < first {
            return Err(format!("GPT partition {} ends before it starts", i + 1));
        }
        parts.push(checked(i + 1, first, last - first + 1, disk_len, kind == GPT_ESP || kind == GPT_BASIC)?);
    }
    Ok(parts)
}

/// The boot partition: the first FAT one (partition 1 on Raspberry Pi OS).
pub fn boot_partition(parts: &[Partition]) -> Result<Partition, String> {
    parts.iter().find(|p| p.fat).copied().ok_or_else(|| {
        "no FAT partition in the partition table: the board's OS must boot from a FAT partition (as Raspberry Pi OS does)"
            .into()
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Sector 0 with the given (type, first sector, sectors) entries.
    pub(crate) fn mbr_sector(entries: &[(u8, u32, u32)]) -> Vec<u8> {
        let mut s = vec![0u8; 512];
        for (i, (kind, first, n)) in entries.iter().enumerate() {
            let e = &mut s[446 + 16 * i..446 + 16 * (i + 1)];
            e[4] = *kind;
            e[8..12].copy_from_slice(&first.to_le_bytes());
            e[12..16].copy_from_slice(&n.to_le_bytes());
        }
        s[510] = 0x55;
        s[511] = 0xaa;
        s
    }

    #[test]
    fn the_raspberry_pi_layout_is_found() {
        // FAT32 (LBA) boot at 8192, Linux root after it.
        let s = mbr_sector(&[(0x0c, 8192, 1_048_576), (0x83, 1_056_768, 4_000_000)]);
        let Table::Mbr(parts) = mbr(&s, 3 << 30).unwrap() else { panic!("not an MBR") };
        assert_eq!(parts.len(), 2);
        let boot = boot_partition(&parts).unwrap();
        assert_eq!(boot, Partition { number: 1, start: 8192 * 512, len: 1_048_576 * 512, fat: true });
        assert!(!parts[1].fat);
    }

    #[test]
    fn broken_tables_are_refused_with_a_reason() {
        assert!(mbr(&[0u8; 512], 1 << 20).unwrap_err().contains("no partition table"));
        assert!(mbr(&[0u8; 100], 1 << 20).is_err());
        let s = mbr_sector(&[(0x0c, 2048, 1 << 20)]);
        // A truncated image: the partition claims more than there is.
        assert!(mbr(&s, 1 << 20).unwrap_err().contains("past the end"));
        // u32::MAX sectors from u32::MAX: 4 TiB past a 1 TiB disk.
        let s = mbr_sector(&[(0x0c, u32::MAX, u32::MAX)]);
        assert!(mbr(&s, 1 << 40).is_err());
        let s = mbr_sector(&[(0x83, 2048, 2048)]);
        let Table::Mbr(parts) = mbr(&s, 4 << 20).unwrap() else { panic!() };
        assert!(boot_partition(&parts).unwrap_err().contains("no FAT partition"));
    }

    #[test]
    fn a_gpt_disk_is_read_through_its_header() {
        let s = mbr_sector(&[(0xee, 1, u32::MAX)]);
        assert_eq!(mbr(&s, 64 << 20).unwrap(), Table::Gpt);
        let mut h = vec![0u8; 512];
        h[..8].copy_from_slice(b"EFI PART");
        h[72..80].copy_from_slice(&2u64.to_le_bytes());
        h[80..84].copy_from_slice(&128u32.to_le_bytes());
        h[84..88].copy_from_slice(&128u32.to_le_bytes());
        let at = gpt_header(&h, 64 << 20).unwrap();
        assert_eq!(at, GptEntries { offset: 1024, count: 128, size: 128 });
        let mut entries = vec![0u8; at.bytes()];
        // Entry 1: a Linux root; entry 2: the EFI system partition.
        entries[..16].copy_from_slice(&[1; 16]);
        entries[32..40].copy_from_slice(&40_000u64.to_le_bytes());
        entries[40..48].copy_from_slice(&80_000u64.to_le_bytes());
        entries[128..144].copy_from_slice(&GPT_ESP);
        entries[160..168].copy_from_slice(&2048u64.to_le_bytes());
        entries[168..176].copy_from_slice(&34_815u64.to_le_bytes());
        let parts = gpt_partitions(&entries, at, 64 << 20).unwrap();
        assert_eq!(
            boot_partition(&parts).unwrap(),
            Partition { number: 2, start: 2048 * 512, len: 32768 * 512, fat: true }
        );
        // Hostile headers: too many entries, or entries past the end.
        h[80..84].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(gpt_header(&h, 64 << 20).is_err());
        h[80..84].copy_from_slice(&128u32.to_le_bytes());
        h[72..80].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(gpt_header(&h, 64 << 20).is_err());
        assert!(gpt_header(b"not a gpt header", 64 << 20).is_err());
    }
}
