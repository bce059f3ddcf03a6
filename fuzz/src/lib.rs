//! Fuzz targets for the parsers of untrusted input, and a seeded mutation loop that runs them on stable.
//!
//! Each target takes arbitrary bytes, must never panic, and checks what its parser promises (a parsed
//! archive writes back to itself, a parsed GPT the writers accept reads back equal, no flag the engine
//! manager owns reaches dockerd, ...). The same functions serve three runners:
//! - `cargo +nightly fuzz run --features libfuzzer TARGET` (fuzz_targets/, coverage-guided, libFuzzer);
//! - `tests/corpus.rs` on stable: every file of `corpus/TARGET/` (the saved corpus and every crash ever
//!   found), the seeds below, and a fixed-seed mutation loop over them; in CI through `./ferry test`;
//! - the same loop, longer: `FERRY_FUZZ_ITERATIONS=1000000 cargo test --release -p ferry-fuzz`.
use ferry_contract::gpt::{self, Table};
use ferry_contract::{shares, userdata};

pub mod mutate;
pub mod seeds;

/// A target: its name (the corpus folder and the cargo-fuzz binary) and its body.
pub struct Target {
    pub name: &'static str,
    pub run: fn(&[u8]),
    /// Inputs longer than this are cut (what the parser itself would read, or a little more).
    pub max_len: usize,
    /// Mutations per stable run (tests/corpus.rs) at the default FERRY_FUZZ_ITERATIONS; the GPT target
    /// checksums 16 KiB several times per input, so it gets fewer.
    pub stable_runs: usize,
}

pub const TARGETS: &[Target] = &[
    Target { name: "userdata", run: userdata, max_len: 64 << 10, stable_runs: 20_000 },
    Target { name: "gpt", run: gpt, max_len: (gpt::PRIMARY_SECTORS * gpt::SECTOR) as usize, stable_runs: 5_000 },
    Target { name: "mbr", run: mbr, max_len: 512 + 8, stable_runs: 20_000 },
    Target { name: "dhcp", run: dhcp, max_len: 1500, stable_runs: 20_000 },
    Target { name: "sntp", run: sntp, max_len: 128, stable_runs: 20_000 },
    Target { name: "profile", run: profile, max_len: 16 << 10, stable_runs: 20_000 },
    Target { name: "cmdline", run: cmdline, max_len: 4096, stable_runs: 20_000 },
    Target { name: "shares", run: shares, max_len: 4096, stable_runs: 20_000 },
];

pub fn target(name: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|t| t.name == name)
}

/// userdata.tar from the format-me disk or fw_cfg: a parsed archive holds only clean relative paths, and
/// when every path fits USTAR's name field it writes back to an archive that parses to the same entries.
pub fn userdata(data: &[u8]) {
    let Ok(entries) = userdata::parse(data) else { return };
    for e in &entries {
        assert!(userdata::clean_path(&e.path).as_deref() == Ok(e.path.as_str()), "unclean path {:?} accepted", e.path);
        assert!(!e.path.is_empty(), "empty path accepted");
    }
    if entries.iter().all(|e| e.path.len() <= 100) {
        let again = userdata::parse(&userdata::write(&entries));
        assert_eq!(again.as_ref().ok(), Some(&entries), "write(parse(x)) does not parse back: {again:?}");
    }
}

/// The primary GPT of a disk: the input is the disk's first sectors (zero-padded). With the low bit of
/// the first byte set, the header and entry checksums are made right first, so the fuzzer gets past them
/// to the fields behind. A parsed table never panics the writers, and what they accept reads back equal.
pub fn gpt(data: &[u8]) {
    let len = (gpt::PRIMARY_SECTORS * gpt::SECTOR) as usize;
    let mut head = data[..data.len().min(len)].to_vec();
    head.resize(len, 0);
    if data.first().is_some_and(|b| b & 1 == 1) {
        fix_gpt_checksums(&mut head);
    }
    let Ok(t) = Table::parse_primary(&head) else { return };
    let _ = t.backup();
    let _ = t.backup_offset();
    let _ = (t.first_usable(), t.last_usable());
    let mbr = t.protective_mbr(&head[..440]);
    if let Ok(primary) = t.primary_header_and_entries() {
        let mut again = mbr;
        again.extend(primary);
        let back = Table::parse_primary(&again);
        assert_eq!(back.as_ref().ok(), Some(&t), "a table the writer accepted reads back different: {back:?}");
    }
    // What init does with a disk grown by 1 GiB: the same writers on a larger table.
    let mut grown = t.clone();
    grown.sectors = grown.sectors.saturating_add(1 << 21);
    let _ = grown.backup();
    let _ = grown.primary_header_and_entries();
}

/// Header size in bytes 12..16, header CRC in 16..20, entry array CRC in 88..92 (UEFI spec, 5.3.2).
fn fix_gpt_checksums(head: &mut [u8]) {
    let s = gpt::SECTOR as usize;
    let entries_crc = gpt::crc32(&head[2 * s..2 * s + 128 * 128]);
    head[s + 88..s + 92].copy_from_slice(&entries_crc.to_le_bytes());
    let hsize = u32::from_le_bytes([head[s + 12], head[s + 13], head[s + 14], head[s + 15]]) as usize;
    if (92..=s).contains(&hsize) {
        head[s + 16..s + 20].fill(0);
        let crc = gpt::crc32(&head[s..s + hsize]);
        head[s + 16..s + 20].copy_from_slice(&crc.to_le_bytes());
    }
}

/// Sector 0 of a boot2docker (MBR) disk, then 8 bytes of disk size: reading it and growing partition 1
/// never panics, and a grown sector still reads as the same partitions with partition 1 larger.
pub fn mbr(data: &[u8]) {
    let (sector, size) = data.split_at(data.len().min(512));
    let parts = ferry_init::mbr::parse(sector);
    let mut n = [0u8; 8];
    n[..size.len().min(8)].copy_from_slice(&size[..size.len().min(8)]);
    let disk_sectors = u64::from_le_bytes(n);
    if let Ok(Some(out)) = ferry_init::mbr::grown(sector, disk_sectors) {
        let after = ferry_init::mbr::parse(&out);
        assert_eq!(after.len(), parts.len(), "growing changed the partition count");
        let (old, new) = (parts.iter().find(|p| p.number == 1), after.iter().find(|p| p.number == 1));
        match (old, new) {
            (Some(o), Some(n)) => assert!(n.sectors > o.sectors && n.first == o.first, "partition 1 not grown: {o:?} -> {n:?}"),
            _ => panic!("partition 1 lost by growing"),
        }
    }
}

/// A DHCP reply from the network (any host on the segment can send one): parsing and every accessor of
/// the lease never panic. The transaction id is the packet's own, so the parser gets past that check.
pub fn dhcp(data: &[u8]) {
    let xid = data.get(4..8).map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
    let Some((_, lease)) = ferry_init::dhcp::parse(data, xid) else { return };
    let _ = lease.timers();
    let _ = lease.gateway();
    let _ = lease.static_routes();
    let _ = lease.search_list();
}

/// An SNTP reply: the request's transmit time is taken from the reply's originate field (what a matching
/// reply has), and a reply that is accepted gives finite figures.
pub fn sntp(data: &[u8]) {
    let mut req = ferry_init::sntp::request(1_700_000_000.0);
    if let Some(orig) = data.get(24..32) {
        req[40..48].copy_from_slice(orig);
    }
    if let Ok(s) = ferry_init::sntp::parse_reply(data, &req, 1_700_000_000.5) {
        assert!(s.offset.is_finite() && s.delay.is_finite(), "non-finite sample {s:?}");
    }
}

/// What the profile exported (`env -0` output): turning it into dockerd's flags never lets a flag the
/// engine manager owns (-H, --tls*, the config file) through from EXTRA_ARGS.
pub fn profile(data: &[u8]) {
    let vars = ferry_engine::profile::parse_env0(data);
    let p = ferry_engine::profile::from_vars(&vars);
    let _ = p.notes.len();
    // DOCKER_STORAGE's value is dockerd's --storage-driver argument, whatever it says; leave it out.
    let extra: Vec<(String, String)> = vars.into_iter().filter(|(k, _)| k != "DOCKER_STORAGE").collect();
    for a in ferry_engine::profile::from_vars(&extra).args {
        assert!(ferry_engine::profile::owned(&a).is_none(), "owned flag {a:?} reached dockerd's arguments");
    }
}

/// The kernel command line (the host or boot loader writes it): never panics, and a hostname it accepts
/// is a valid one.
pub fn cmdline(data: &[u8]) {
    let c = ferry_init::cmdline::Cmdline::parse(&String::from_utf8_lossy(data));
    if let Some(h) = &c.hostname {
        assert!(ferry_contract::names::valid_hostname(h), "invalid hostname {h:?} accepted");
    }
    if let Some(d) = &c.disk {
        assert!(d.starts_with("/dev/") && !d.contains(".."), "disk {d:?} accepted");
    }
}

/// The share list from fw_cfg: accepted shares have guest paths the checker accepts, and the list the
/// host would write for them reads back the same.
pub fn shares(data: &[u8]) {
    let (ok, _) = shares::parse(&String::from_utf8_lossy(data));
    for s in &ok {
        assert!(shares::check_guest_path(&s.guest).is_ok(), "guest path {:?} accepted", s.guest);
    }
    let (again, bad) = shares::parse(&shares::format(&ok));
    assert_eq!(again, ok, "format(parse(x)) reads back different: {bad:?}");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The stable loop starts from inputs each parser accepts, so its mutations land inside the formats.
    #[test]
    fn seeds_are_well_formed() {
        for s in seeds::of("userdata") {
            assert!(userdata::parse(&s).is_ok_and(|e| e.len() == 4 || s.len() == 1024), "{:?}", userdata::parse(&s));
        }
        for s in seeds::of("gpt") {
            assert!(Table::parse_primary(&s).is_ok_and(|t| t.partitions.len() == 2));
        }
        for s in seeds::of("mbr") {
            assert_eq!(ferry_init::mbr::parse(&s[..512]).len(), 2);
        }
        for s in seeds::of("dhcp") {
            assert!(ferry_init::dhcp::parse(&s, 0x1234_5678).is_some());
        }
        let sntp = seeds::of("sntp");
        let mut req = ferry_init::sntp::request(1_700_000_000.0);
        req[40..48].copy_from_slice(&sntp[0][24..32]);
        assert!(ferry_init::sntp::parse_reply(&sntp[0], &req, 1_700_000_000.5).is_ok());
        let p = ferry_engine::profile::from_vars(&ferry_engine::profile::parse_env0(&seeds::of("profile")[0]));
        assert!(p.tls_files.is_some() && p.args.contains(&"--insecure-registry".to_string()), "{p:?}");
        let c = ferry_init::cmdline::Cmdline::parse(&String::from_utf8_lossy(&seeds::of("cmdline")[0]));
        assert_eq!(c.hostname.as_deref(), Some("default"));
        assert_eq!(shares::parse(&String::from_utf8_lossy(&seeds::of("shares")[1])).0.len(), 2);
    }

    /// The gpt target's mend gets a mutated header past its checksum, into the fields behind it.
    #[test]
    fn gpt_mend_reaches_past_the_checksums() {
        let mut s = seeds::of("gpt").remove(0);
        s[512 + 40] ^= 1; // first usable LBA: the header CRC no longer matches
        assert!(Table::parse_primary(&s).is_err());
        fix_gpt_checksums(&mut s);
        assert!(Table::parse_primary(&s).is_ok());
    }
}
