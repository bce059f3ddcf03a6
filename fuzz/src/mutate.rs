//! A small deterministic mutator for the stable runner: the byte-level moves a fuzzer makes (bit flips,
//! boundary values, octal digits for tar fields, inserted, deleted and copied ranges, splices from other
//! inputs), driven by a fixed-seed xorshift so a failure names its iteration and replays exactly.

/// xorshift64* (Vigna): fast, and good enough to pick mutations.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// 0..n (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
}

/// Bytes that sit on parser boundaries: zero, sign and size limits, tar's octal digits and padding, path
/// separators, `=` and whitespace for the text formats.
const INTERESTING: &[u8] = b"\x00\x01\x02\x7f\x80\xff\xfe\x35\x55\xaa\xee01234567 /.=\t\n-H";
const WIDE: &[u64] = &[0, 1, 0x7f, 0x80, 0xff, 0xffff, 0x7fff_ffff, 0x8000_0000, 0xffff_ffff, u64::MAX, 512, 4096, 1 << 20];

/// One to four mutations of `input`, the result cut to `max_len`. `others` are splice partners.
pub fn mutate(rng: &mut Rng, input: &[u8], others: &[Vec<u8>], max_len: usize) -> Vec<u8> {
    let mut d = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        let len = d.len();
        match rng.below(9) {
            0 if len > 0 => {
                let i = rng.below(len);
                d[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                d[i] = INTERESTING[rng.below(INTERESTING.len())];
            }
            2 if len > 0 => {
                let i = rng.below(len);
                d[i] = rng.next_u64() as u8;
            }
            3 if len >= 8 => {
                // A wide value at any offset, either byte order (GPT is little-endian, DHCP big-endian).
                let v = WIDE[rng.below(WIDE.len())];
                let w = [1, 2, 4, 8][rng.below(4)].min(len);
                let i = rng.below(len - w + 1);
                let bytes = if rng.below(2) == 0 { v.to_le_bytes() } else { v.to_be_bytes() };
                let from = if rng.below(2) == 0 { 0 } else { 8 - w };
                d[i..i + w].copy_from_slice(&bytes[from..from + w]);
            }
            4 if len > 0 => {
                // Delete a range.
                let i = rng.below(len);
                let n = 1 + rng.below((len - i).min(64));
                d.drain(i..i + n);
            }
            5 => {
                // Insert random or repeated bytes.
                let i = rng.below(len + 1);
                let n = 1 + rng.below(32);
                let b = rng.next_u64() as u8;
                let fill: Vec<u8> = (0..n).map(|_| if rng.below(2) == 0 { b } else { rng.next_u64() as u8 }).collect();
                d.splice(i..i, fill);
            }
            6 if len > 1 => {
                // Copy a range over another place in the same input.
                let (a, b) = (rng.below(len), rng.below(len));
                let n = 1 + rng.below((len - a.max(b)).min(128));
                let chunk = d[a..a + n].to_vec();
                d[b..b + n].copy_from_slice(&chunk);
            }
            7 if !others.is_empty() => {
                // Splice: our head, another input's tail.
                let o = &others[rng.below(others.len())];
                let (i, j) = (rng.below(len + 1), rng.below(o.len() + 1));
                d.truncate(i);
                d.extend_from_slice(&o[j..]);
            }
            8 if len > 0 => {
                // An octal or decimal number written over a field (tar sizes and modes, option values).
                let i = rng.below(len);
                let s = format!("{:o}", WIDE[rng.below(WIDE.len())] >> rng.below(40));
                let n = s.len().min(len - i);
                d[i..i + n].copy_from_slice(&s.as_bytes()[..n]);
            }
            _ => {}
        }
    }
    d.truncate(max_len);
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_bounded() {
        let seed = b"boot2docker, please format-me".to_vec();
        let run = || {
            let mut r = Rng::new(7);
            (0..200).map(|_| mutate(&mut r, &seed, std::slice::from_ref(&seed), 40)).collect::<Vec<_>>()
        };
        let (a, b) = (run(), run());
        assert_eq!(a, b, "the same seed gives the same inputs");
        assert!(a.iter().all(|m| m.len() <= 40));
        assert!(a.iter().filter(|m| **m != seed).count() > 150, "most iterations change the input");
    }
}
