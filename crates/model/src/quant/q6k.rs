//! Q6_K, Q3_K and Q2_K blocks as GGML stores them, into the packed
//! layouts of [`PackedQ6K`], [`PackedQ3K`] and [`PackedQ2K`].

use crate::kernels::packed::q6k::{
    high_shift, Q2K, Q3K, Q6K, SUPER, TILE_LOW, TILE_PAIRS, TILE_SCALES,
};
use crate::kernels::packed::super_blocks::place_quads;
use crate::kernels::packed::{PackedQ2K, PackedQ3K, PackedQ6K, BLOCK, TILE};

/// Bytes of one Q6_K block: 128 of low nibbles, 64 of high bit pairs, 16
/// scales, `d`.
const Q6K_BYTES: usize = 210;

/// The 256 levels (`u`, 0..64, the weight being `d·scale·(u - 32)`) of one
/// GGML Q6_K block. GGML orders them in two halves of 128: in each, byte
/// `l` (0..32) of the half's 64 nibble bytes holds weights `l` (low
/// nibble) and `l + 64` (high), byte `l + 32` weights `l + 32` and `l +
/// 96`, and byte `l` of its 32 high-bit bytes the top two bits of weights
/// `l`, `l + 32`, `l + 64` and `l + 96`, two bits each from the bottom.
#[cfg(test)]
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
        PackedQ6K::repack(Q6K, data, (n, k), Q6K_BYTES, true, put)
    }
}

/// One GGML Q6_K block placed as row `r` of its unit, four bytes at a time
/// (the same bits [`levels`] reads one weight at a time; a weight at a
/// time made most of a Q4_K_M file's load). Pair `p` of blocks (weights
/// `64p..64p + 64`) lies in half `p / 2` of GGML's nibbles: block `2p`'s
/// weight `i` in byte `i` of the half's first 32, block `2p + 1`'s in
/// byte `i` of its second 32, both in the low nibble for even `p` and the
/// high one for odd. Group `g` of four blocks (half `g`) has its high bit
/// pairs in byte `i` of the half's 32, blocks `4g..4g + 4` from the
/// bottom, which [`high_shift`] places at bits 4, 0, 6 and 2.
fn put(block: &[u8], r: usize, (bits, d, scales): (&mut [u8], &mut [half::f16], &mut [i8])) {
    d[r] = half::f16::from_le_bytes([block[208], block[209]]);
    for (s, &scale) in block[192..208].iter().enumerate() {
        scales[s * TILE + r] = scale as i8;
    }
    let (low, high) = (
        &block[..SUPER / 2],
        &block[SUPER / 2..SUPER / 2 + SUPER / 4],
    );
    debug_assert_eq!(
        [high_shift(0), high_shift(1), high_shift(2), high_shift(3)],
        [4, 0, 6, 2]
    );
    // Four bytes (a k-quad) at a time, as one word: every mask and shift
    // keeps its bits inside their byte.
    let word =
        |bytes: &[u8], quad: usize| u32::from_le_bytes(bytes[4 * quad..][..4].try_into().unwrap());
    let (bits_low, bits_high) = bits.split_at_mut(TILE_LOW);
    let (low_out, _) = bits_low.as_chunks_mut::<4>();
    for pair in 0..4 {
        let half = &low[64 * (pair / 2)..][..64];
        let (first, second) = half.split_at(BLOCK);
        for quad in 0..8 {
            let (x, y) = (word(first, quad), word(second, quad));
            let v = if pair % 2 == 0 {
                (x & 0x0F0F_0F0F) | (y << 4 & 0xF0F0_F0F0)
            } else {
                (x >> 4 & 0x0F0F_0F0F) | (y & 0xF0F0_F0F0)
            };
            low_out[(pair * 8 + quad) * TILE + r] = v.to_le_bytes();
        }
    }
    let (high_out, _) = bits_high.as_chunks_mut::<4>();
    for group in 0..2 {
        for quad in 0..8 {
            let x = word(&high[32 * group..], quad);
            let v = (x & 0x0303_0303) << 4
                | (x & 0x0C0C_0C0C) >> 2
                | (x & 0x3030_3030) << 2
                | (x & 0xC0C0_C0C0) >> 4;
            high_out[(group * 8 + quad) * TILE + r] = v.to_le_bytes();
        }
    }
}

/// Bytes of one Q3_K block: 32 of third bits, 64 of low bit pairs, 12 of
/// scales, `d`.
const Q3K_BYTES: usize = 110;

/// A Q3_K block's 16 sub-block scales less 32, unpacked as GGML does: the
/// low nibbles from bytes 0..8, the top two bits from bytes 8..12.
fn q3k_scales(packed: &[u8]) -> [i8; 16] {
    let word = |i: usize| u32::from_le_bytes(packed[4 * i..4 * i + 4].try_into().unwrap());
    let (a0, a1, tmp) = (word(0), word(1), word(2));
    let (m1, m2) = (0x0303_0303u32, 0x0f0f_0f0fu32);
    let aux = [
        (a0 & m2) | ((tmp & m1) << 4),
        (a1 & m2) | (((tmp >> 2) & m1) << 4),
        ((a0 >> 4) & m2) | (((tmp >> 4) & m1) << 4),
        ((a1 >> 4) & m2) | (((tmp >> 6) & m1) << 4),
    ];
    std::array::from_fn(|s| (aux[s / 4] >> (8 * (s % 4))) as u8 as i8 - 32)
}

impl PackedQ3K {
    /// `data`: GGML's (candle's) Q3_K blocks of a `[n, k]` weight,
    /// row-major. `None` when the shape does not tile. Tiles are repacked
    /// on the compute pool.
    ///
    /// A Q3_K weight `128h + 32j' + l` (half `h`) has its bit pair at bits
    /// `2j'..2j' + 2` of byte `32h + l` of the 64, and its third bit at bit
    /// `4h + j'` of byte `l` of the 32: for block `j = 4h + j'` of the
    /// super-block, exactly where [`PackedQ3K`] reads them, so the bytes
    /// move four at a time.
    pub fn new(data: &[u8], n: usize, k: usize) -> Option<PackedQ3K> {
        let put = |block: &[u8],
                   r: usize,
                   (bits, d, scales): (&mut [u8], &mut [half::f16], &mut [i8])| {
            let (thirds, rest) = block.split_at(32);
            let (pairs, rest) = rest.split_at(64);
            d[r] = half::f16::from_le_bytes([rest[12], rest[13]]);
            for (s, scale) in q3k_scales(&rest[..12]).into_iter().enumerate() {
                scales[s * TILE + r] = scale;
            }
            let (pairs_out, thirds_out) = bits.split_at_mut(TILE_PAIRS);
            place_quads(pairs, r, pairs_out);
            place_quads(thirds, r, thirds_out);
        };
        PackedQ3K::repack(Q3K, data, (n, k), Q3K_BYTES, true, put)
    }
}

/// Bytes of one Q2_K block: 16 of scales and mins (a nibble each), 64 of
/// bit pairs, `d`, `dmin`.
const Q2K_BYTES: usize = 84;

impl PackedQ2K {
    /// `data`: GGML's (candle's) Q2_K blocks of a `[n, k]` weight,
    /// row-major. `None` when the shape does not tile. Tiles are repacked
    /// on the compute pool.
    ///
    /// Q2_K's bit pairs lie as Q3_K's (weight `128h + 32j + l` at bits
    /// `2j..2j + 2` of byte `32h + l`), so its bytes move four at a time;
    /// sub-block `s`'s scale is the low nibble of byte `s`, its min the
    /// high one.
    pub fn new(data: &[u8], n: usize, k: usize) -> Option<PackedQ2K> {
        let put = |block: &[u8],
                   r: usize,
                   (bits, d, scales): (&mut [u8], &mut [half::f16], &mut [i8])| {
            let (packed, rest) = block.split_at(16);
            let (pairs, rest) = rest.split_at(64);
            d[r] = half::f16::from_le_bytes([rest[0], rest[1]]);
            d[TILE + r] = half::f16::from_le_bytes([rest[2], rest[3]]);
            for (s, &byte) in packed.iter().enumerate() {
                scales[s * TILE + r] = (byte & 0x0F) as i8;
                scales[TILE_SCALES + s * TILE + r] = (byte >> 4) as i8;
            }
            place_quads(pairs, r, bits);
        };
        PackedQ2K::repack(Q2K, data, (n, k), Q2K_BYTES, true, put)
    }
}
