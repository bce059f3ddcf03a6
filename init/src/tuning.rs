//! Kernel memory settings chosen for a small container host (issue 17, docs/decisions.md "Lean and fast").
//!
//! Debian's kernel turns transparent huge pages on for every process, and when THP is on the kernel raises
//! `vm.min_free_kbytes` from its own formula (5.5 MiB on a 2 GiB machine) to 44 MiB, so huge pages stay
//! easy to assemble. Through the watermarks derived from it, that keeps about 100 MiB of a 2 GiB machine
//! out of MemAvailable: memory no container can use before the kernel starts reclaiming. Ferry keeps THP
//! (turning it off made `docker run` about 13 % slower under TCG: runc and the shim are Go programs whose
//! heaps get huge pages) and gives `min_free_kbytes` back the kernel's formula. A user who wants another
//! value writes it in bootsync.sh, which runs later in the boot.
use crate::log;

const MIN_FREE: &str = "/proc/sys/vm/min_free_kbytes";

/// The kernel's own default (mm/page_alloc.c, calculate_min_free_kbytes): sqrt(lowmem KiB × 16),
/// clamped to [128, 262144]. MemTotal stands in for the kernel's low memory (64-bit: all of it).
pub fn default_min_free_kbytes(mem_total_kib: u64) -> u64 {
    mem_total_kib.saturating_mul(16).isqrt().clamp(128, 262_144)
}

fn mem_total_kib() -> Option<u64> {
    let m = std::fs::read_to_string("/proc/meminfo").ok()?;
    m.lines().find_map(|l| l.strip_prefix("MemTotal:")?.trim().strip_suffix("kB")?.trim().parse().ok())
}

/// Apply the setting when it lowers the kernel's; a failure is a warning (the kernel's value works).
pub fn apply() {
    let (Some(total), Ok(now)) = (mem_total_kib(), std::fs::read_to_string(MIN_FREE)) else {
        log::warn(&format!("memory: cannot read MemTotal or {MIN_FREE}; min_free_kbytes left as it is"));
        return;
    };
    let v = default_min_free_kbytes(total);
    let now: u64 = now.trim().parse().unwrap_or(0);
    if now <= v {
        return;
    }
    match std::fs::write(MIN_FREE, v.to_string()) {
        Ok(()) => log::line(&format!("memory: min_free_kbytes {now} -> {v} (the kernel's value without huge pages)")),
        Err(e) => log::warn(&format!("memory: {MIN_FREE}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn min_free_follows_the_kernels_formula() {
        // A 2 GiB QEMU guest's MemTotal: the kernel booted with transparent_hugepage=never said 5500
        // (its low memory is a little less than MemTotal); with THP on it says 45056.
        let v = default_min_free_kbytes(2_018_920);
        assert!((5500..=5700).contains(&v), "{v}");
        assert_eq!(default_min_free_kbytes(1), 128, "floor");
        assert_eq!(default_min_free_kbytes(u64::MAX), 262_144, "ceiling, no overflow");
        assert_eq!(default_min_free_kbytes(16 << 20), 16_384, "16 GiB: sqrt(16 Mi × 16) KiB");
    }
}
