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

/// A byte's worth of one row's fifth bits for each of the four quads,
/// from GGML's word (weight `j`'s at bit `j`): for byte `b` of a quad,
/// weights `4·quad + b` and `16 + 4·quad + b`.
fn fifths_byte(word: u32, b: usize) -> u8 {
    (0..4).fold(0u8, |byte, quad| {
        let (low_at, high_at) = fifth_shifts(quad);
        let low = (word >> (4 * quad + b) & 1) as u8;
        let high = (word >> (16 + 4 * quad + b) & 1) as u8;
        byte | low << low_at | high << high_at
    })
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
                for b in 0..4 {
                    bits[TILE_NIBBLES + r * 4 + b] = fifths_byte(word, b);
                }
            }
        };
        PackedLegacy::repack(format, data, (n, k), format.block_bytes(), true, put)
    }
}
