//! Q6_K weights as GGML stores them, into the packed layout of
//! [`PackedQ6K`].

use crate::kernels::packed::q6k::{high_shift, SUPER, TILE_LOW};
use crate::kernels::packed::{PackedQ6K, BLOCK, TILE};

/// Bytes of one Q6_K block: 128 of low nibbles, 64 of high bit pairs, 16
/// scales, `d`.
const Q6K_BYTES: usize = 210;

/// The 256 levels (`u`, 0..64, the weight being `d·scale·(u - 32)`) of one
/// GGML Q6_K block. GGML orders them in two halves of 128: in each, byte
/// `l` (0..32) of the half's 64 nibble bytes holds weights `l` (low
/// nibble) and `l + 64` (high), byte `l + 32` weights `l + 32` and `l +
/// 96`, and byte `l` of its 32 high-bit bytes the top two bits of weights
/// `l`, `l + 32`, `l + 64` and `l + 96`, two bits each from the bottom.
pub(crate) fn levels(block: &[u8]) -> [u8; SUPER] {
    let (low, rest) = block.split_at(SUPER / 2);
    let high = &rest[..SUPER / 4];
    let mut out = [0u8; SUPER];
    for (i, o) in out.iter_mut().enumerate() {
        let (half, quarter, l) = (i / 128, i % 128 / 32, i % 32);
        let byte = low[64 * half + l + 32 * (quarter % 2)];
        let nibble = byte >> (4 * (quarter / 2)) & 0x0F;
        let top = high[32 * half + l] >> (2 * quarter) & 3;
        *o = nibble | top << 4;
    }
    out
}

impl PackedQ6K {
    /// `data`: GGML's (candle's) Q6_K blocks of a `[n, k]` weight,
    /// row-major. `None` when the shape does not tile. Tiles are repacked
    /// on the compute pool.
    pub fn new(data: &[u8], n: usize, k: usize) -> Option<PackedQ6K> {
        let put = |block: &[u8],
                   r: usize,
                   (bits, d, scales): (&mut [u8], &mut [half::f16], &mut [i8])| {
            d[r] = half::f16::from_le_bytes([block[208], block[209]]);
            for (s, &scale) in block[192..208].iter().enumerate() {
                scales[s * TILE + r] = scale as i8;
            }
            for (i, u) in levels(block).into_iter().enumerate() {
                let (j, within) = (i / BLOCK, i % BLOCK);
                let (quad, b) = (within / 4, within % 4);
                bits[((j / 2 * 8 + quad) * TILE + r) * 4 + b] |= (u & 0x0F) << (4 * (j % 2));
                bits[TILE_LOW + ((j / 4 * 8 + quad) * TILE + r) * 4 + b] |=
                    (u >> 4) << high_shift(j);
            }
        };
        PackedQ6K::repack(data, (n, k), Q6K_BYTES, true, put)
    }
}
