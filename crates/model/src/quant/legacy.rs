//! GGML's Q4_0, Q4_1, Q5_0 and Q5_1 blocks into the packed layout of
//! [`PackedLegacy`].

use crate::kernels::packed::legacy::{fifth_shifts, Legacy, TILE_NIBBLES};
use crate::kernels::packed::super_blocks::place_quads;
use crate::kernels::packed::{PackedLegacy, TILE};

impl Legacy {
    /// Bytes of one GGML block: `d`, then `m` (Q4_1, Q5_1), then the fifth
    /// bits as a little-endian u32 (Q5_0, Q5_1), then 16 bytes of nibbles.
    fn block_bytes(self) -> usize {
        18 + if self.min() { 2 } else { 0 } + if self.fifths() { 4 } else { 0 }
    }
}

/// One row's fifth bits for a block's four quads, as the four bytes the
/// kernel reads, from GGML's word (weight `j`'s at bit `j`): byte `b`
/// holds, for each quad `q`, weight `4q + b`'s bit (the low nibble's) at
/// bit `4 + q` and weight `16 + 4q + b`'s (the high one's) at bit `q`,
/// as [`fifth_shifts`] places them. Each half-word is a 4×4 bit matrix
/// (row `q`, column `b`); transposed, its nibble `b` is byte `b`'s part.
fn fifths_word(word: u32) -> u32 {
    debug_assert!((0..4).all(|quad| fifth_shifts(quad) == (4 + quad, quad)));
    let transpose = |x: u32| {
        let t = (x ^ x >> 3) & 0x0A0A;
        let x = x ^ t ^ t << 3;
        let t = (x ^ x >> 6) & 0x00CC;
        x ^ t ^ t << 6
    };
    // Nibble `b` of 16 bits to the low nibble of byte `b`.
    let spread = |n: u32| (n & 0xF) | (n & 0xF0) << 4 | (n & 0xF00) << 8 | (n & 0xF000) << 12;
    spread(transpose(word & 0xFFFF)) << 4 | spread(transpose(word >> 16))
}

impl PackedLegacy {
    /// `data`: GGML's (candle's) blocks in `format` of a `[n, k]` weight,
    /// row-major. `None` when the shape does not tile. Tiles are repacked
    /// on the compute pool.
    pub fn new(data: &[u8], format: Legacy, n: usize, k: usize) -> Option<PackedLegacy> {
        let put = |block: &[u8],
                   r: usize,
                   (bits, d, _): (&mut [u8], &mut [half::f16], &mut [u8])| {
            let f16_at = |at: usize| half::f16::from_le_bytes([block[at], block[at + 1]]);
            d[r] = f16_at(0);
            let mut at = 2;
            if format.min() {
                d[TILE + r] = f16_at(2);
                at = 4;
            }
            let word = format.fifths().then(|| {
                let word =
                    u32::from_le_bytes([block[at], block[at + 1], block[at + 2], block[at + 3]]);
                at += 4;
                word
            });
            // GGML's byte `j` holds weights `j` and `j + 16`: quad `q`'s
            // four bytes land at `[q][r]`.
            place_quads(&block[at..at + 16], r, bits);
            if let Some(word) = word {
                bits[TILE_NIBBLES + r * 4..][..4].copy_from_slice(&fifths_word(word).to_le_bytes());
            }
        };
        PackedLegacy::repack(format, data, (n, k), format.block_bytes(), true, put)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bit transposes give each fifth bit the place the definition
    /// names, for every bit alone and for mixed words.
    #[test]
    fn fifths_land_where_the_kernel_reads_them() {
        let plain = |word: u32| {
            let byte = |b: usize| {
                (0..4).fold(0u8, |byte, quad| {
                    let (low_at, high_at) = fifth_shifts(quad);
                    let low = (word >> (4 * quad + b) & 1) as u8;
                    let high = (word >> (16 + 4 * quad + b) & 1) as u8;
                    byte | low << low_at | high << high_at
                })
            };
            u32::from_le_bytes([byte(0), byte(1), byte(2), byte(3)])
        };
        let words = (0..32).map(|j| 1u32 << j);
        let mixed = (0..1000u32).map(|i| i.wrapping_mul(2_654_435_761) ^ i << 7);
        for word in words.chain(mixed).chain([0, u32::MAX]) {
            assert_eq!(fifths_word(word), plain(word), "{word:#010x}");
        }
    }
}
