//! The classic MBR partition table, for disks boot2docker formatted itself (DESIGN §4): partition 2 is
//! 1000 MiB of swap (type 0x82, no label) at the start, partition 1 the ext4 data on the rest. Ferry
//! reads it to find that swap and grows partition 1 when the virtual disk was enlarged.
use ferry_contract::gpt::SECTOR;

pub const TYPE_SWAP: u8 = 0x82;
pub const TYPE_LINUX: u8 = 0x83;
const PROTECTIVE: u8 = 0xEE;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Part {
    /// 1 to 4, as the kernel numbers primary partitions.
    pub number: u32,
    pub kind: u8,
    pub first: u64,
    pub sectors: u64,
}

/// The primary partitions of a classic MBR in `sector0`; empty for no MBR, or a GPT's protective one.
pub fn parse(sector0: &[u8]) -> Vec<Part> {
    if sector0.len() < 512 || sector0[510..512] != [0x55, 0xAA] {
        return vec![];
    }
    let parts: Vec<Part> = (0..4)
        .filter_map(|i| {
            let e = &sector0[446 + 16 * i..446 + 16 * (i + 1)];
            let le = |o: usize| u32::from_le_bytes([e[o], e[o + 1], e[o + 2], e[o + 3]]) as u64;
            (e[4] != 0 && le(12) != 0).then(|| Part { number: i as u32 + 1, kind: e[4], first: le(8), sectors: le(12) })
        })
        .collect();
    if parts.iter().any(|p| p.kind == PROTECTIVE) {
        return vec![];
    }
    parts
}

/// Sector 0 with partition 1 grown to the end of a disk of `disk_sectors`, when partition 1 is a Linux
/// partition that ends last and the disk has grown by more than a MiB past it. None when there is nothing
/// to do. Err says why a grown disk is left as it is (the console shows it).
pub fn grown(sector0: &[u8], disk_sectors: u64) -> Result<Option<Vec<u8>>, String> {
    let parts = parse(sector0);
    let Some(p1) = parts.iter().find(|p| p.number == 1) else { return Ok(None) };
    let end = p1.first + p1.sectors;
    if disk_sectors <= end + (1 << 20) / SECTOR {
        return Ok(None);
    }
    if p1.kind != TYPE_LINUX || parts.iter().any(|p| p.first + p.sectors > end) {
        return Err("partition 1 is not the last Linux partition; not growing it".into());
    }
    // An MBR counts sectors in 32 bits: 2 TiB is as far as it reaches.
    let sectors = (disk_sectors - p1.first).min(u32::MAX as u64);
    if sectors <= p1.sectors {
        return Ok(None);
    }
    let mut out = sector0[..512].to_vec();
    let e = 446;
    out[e + 12..e + 16].copy_from_slice(&(sectors as u32).to_le_bytes());
    // The end's CHS address: past what CHS can say, so the "use LBA" marker, as partitioning tools write.
    out[e + 5..e + 8].copy_from_slice(&[0xFE, 0xFF, 0xFF]);
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table boot2docker's fdisk script wrote on a disk of `mib` MiB.
    fn b2d(mib: u64) -> Vec<u8> {
        let mut s = vec![0u8; 512];
        let mut entry = |i: usize, kind: u8, first: u64, n: u64| {
            let e = 446 + 16 * i;
            s[e + 4] = kind;
            s[e + 8..e + 12].copy_from_slice(&(first as u32).to_le_bytes());
            s[e + 12..e + 16].copy_from_slice(&(n as u32).to_le_bytes());
        };
        let swap = 1000 * 2048;
        entry(1, TYPE_SWAP, 2048, swap);
        entry(0, TYPE_LINUX, 2048 + swap, mib * 2048 - 2048 - swap);
        s[510] = 0x55;
        s[511] = 0xAA;
        s
    }

    #[test]
    fn boot2docker_layout_parses() {
        let p = parse(&b2d(4096));
        assert_eq!(p.len(), 2);
        assert_eq!(p[0], Part { number: 1, kind: TYPE_LINUX, first: 2048 + 2_048_000, sectors: 4096 * 2048 - 2048 - 2_048_000 });
        assert_eq!((p[1].number, p[1].kind), (2, TYPE_SWAP));
        assert!(parse(&[0u8; 512]).is_empty());
        let mut gpt = vec![0u8; 512];
        gpt[446 + 4] = PROTECTIVE;
        gpt[446 + 12] = 1;
        gpt[510..512].copy_from_slice(&[0x55, 0xAA]);
        assert!(parse(&gpt).is_empty());
    }

    #[test]
    fn partition_1_grows_to_the_end() {
        let s = b2d(4096);
        assert_eq!(grown(&s, 4096 * 2048), Ok(None));
        let g = grown(&s, 6144 * 2048).unwrap().unwrap();
        let p = parse(&g);
        assert_eq!(p[0].first + p[0].sectors, 6144 * 2048);
        assert_eq!(p[1], parse(&s)[1], "swap untouched");
        assert_eq!(g[..446], s[..446], "boot code untouched");
        // 3 TiB: capped at what 32 bits can count.
        let big = grown(&s, 3 << 31).unwrap().unwrap();
        assert_eq!(parse(&big)[0].sectors, u32::MAX as u64);
        // Swap placed after the data: refused with a reason.
        let mut odd = s.clone();
        odd[446 + 16 + 8..446 + 16 + 12].copy_from_slice(&(4000u32 * 2048).to_le_bytes());
        assert!(grown(&odd, 6144 * 2048).unwrap_err().contains("not the last"));
    }
}
