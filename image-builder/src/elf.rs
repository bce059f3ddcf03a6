//! The one ELF fact the build needs: whether an executable asks for a program interpreter (is dynamically
//! linked). image-builder/build.rs includes this file to refuse dynamic guest binaries.

/// Whether a 64-bit little-endian ELF file has a PT_INTERP program header; None when it is not one.
pub fn has_interpreter(elf: &[u8]) -> Option<bool> {
    if elf.get(0..4)? != b"\x7fELF" || elf.get(4)? != &2 || elf.get(5)? != &1 {
        return None;
    }
    let u16_at = |o: usize| Some(u16::from_le_bytes(elf.get(o..o + 2)?.try_into().ok()?) as usize);
    let phoff = usize::try_from(u64::from_le_bytes(elf.get(0x20..0x28)?.try_into().ok()?)).ok()?;
    let (phentsize, phnum) = (u16_at(0x36)?, u16_at(0x38)?);
    for i in 0..phnum {
        let at = phoff.checked_add(i.checked_mul(phentsize)?)?;
        let p_type = u32::from_le_bytes(elf.get(at..at + 4)?.try_into().ok()?);
        if p_type == 3 {
            return Some(true);
        }
    }
    Some(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_guest_binaries_and_a_dynamic_host_one() {
        assert_eq!(has_interpreter(crate::assets::INIT), Some(false), "init is static");
        assert_eq!(has_interpreter(crate::assets::FERRY_ENGINE), Some(false), "ferry-engine is static");
        let ls = std::fs::read("/bin/ls").expect("/bin/ls");
        assert_eq!(has_interpreter(&ls), Some(true), "Debian's ls is dynamic");
        assert_eq!(has_interpreter(b"#!/bin/sh\n"), None);
        assert_eq!(has_interpreter(&ls[..0x30]), None, "truncated headers are not an answer");
    }
}
