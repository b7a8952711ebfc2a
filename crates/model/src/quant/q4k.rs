//! Q4_K weights as GGML quantizes them, and Q4_K and Q5_K blocks into the
//! packed layouts of [`PackedQ4K`] and [`PackedQ5K`].

use crate::kernels::packed::q4k::{fifth_shift, Q4K, Q5K, SUPER, TILE_QUADS};
use crate::kernels::packed::super_blocks::place_quads;
use crate::kernels::packed::{PackedQ4K, PackedQ5K, BLOCK, TILE};

/// Bytes of one Q4_K block: `d`, `dmin`, 12 bytes of scales, 128 of nibbles.
const Q4K_BYTES: usize = 144;
/// Bytes of one Q5_K block: `d`, `dmin`, 12 bytes of scales, 32 of fifth
/// bits, 128 of nibbles.
const Q5K_BYTES: usize = 176;

/// Sub-block `j`'s 6-bit scale and min in Q4_K's 12 packed bytes.
pub(crate) fn scale_min(j: usize, s: &[u8]) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        (
            (s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4),
            (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
        )
    }
}

/// `v` rounded to the nearest integer, halves away from zero, as
/// `v.round() as i32` gives it (saturating; NaN gives 0), without the call
/// to `roundf` that `round` costs on a baseline x86-64 build, and without
/// a branch. Below `2^23` in magnitude `v` minus its truncation is exact,
/// and a remainder of at least a half steps away from zero; above, `v` is
/// a whole number already.
fn nearest(v: f32) -> i32 {
    let t = v as i32;
    let rest = v - t as f32;
    let small = v.abs() < 8_388_608.0;
    t + (small & (rest >= 0.5)) as i32 - (small & (rest <= -0.5)) as i32
}

/// Each sub-block's scale and min for numbers `0..=15`: GGML's
/// `make_qkx1_quants` (the Q4_K quantization candle runs, five rounds),
/// step for step in the same f32 arithmetic, so the same results: start
/// from the range `[min(min, 0), max]`, then rounds of assigning levels and
/// refitting the scale (least squares) and the min (the mean residual,
/// kept ≤ 0), until no level changes. Its sums run in order, one
/// dependent addition after another; the eight sub-blocks of a super-block
/// go through their rounds side by side, so that eight such chains
/// overlap. Returns `(scale, -min)` per sub-block.
fn scales_and_mins(x: &[f32]) -> [(f32, f32); 8] {
    const SUBS: usize = SUPER / BLOCK;
    const NMAX: i32 = 15;
    let sub = |j: usize| &x[j * BLOCK..(j + 1) * BLOCK];
    let mut out = [(0f32, 0f32); SUBS];
    let mut active = [false; SUBS];
    let (mut min, mut inverse, mut scale) = ([0f32; SUBS], [0f32; SUBS], [0f32; SUBS]);
    for j in 0..SUBS {
        let lowest = *sub(j)
            .iter()
            .min_by(|a, b| a.total_cmp(b))
            .expect("32 numbers");
        let highest = *sub(j)
            .iter()
            .max_by(|a, b| a.total_cmp(b))
            .expect("32 numbers");
        // A constant sub-block keeps (0, 0).
        if highest != lowest {
            active[j] = true;
            min[j] = lowest.min(0.);
            inverse[j] = NMAX as f32 / (highest - min[j]);
            scale[j] = 1.0 / inverse[j];
        }
    }
    // Every sub-block goes through every round (the finished and the
    // constant ones too, their results no longer taken), so that the
    // loops have no branches.
    let mut levels = [[0u8; SUBS]; BLOCK];
    // `[i][j]`: the sub-blocks' `i`-th numbers side by side.
    let mut xt = [[0f32; SUBS]; BLOCK];
    for (i, row) in xt.iter_mut().enumerate() {
        for (j, v) in row.iter_mut().enumerate() {
            *v = x[j * BLOCK + i];
        }
    }
    for _ in 0..5 {
        if !active.contains(&true) {
            break;
        }
        let mut changed = [false; SUBS];
        let (mut sum_xl, mut sum_ll) = ([0f32; SUBS], [0i32; SUBS]);
        for (levels, xs) in levels.iter_mut().zip(&xt) {
            for j in 0..SUBS {
                let v = xs[j];
                let l = nearest(inverse[j] * (v - min[j])).clamp(0, NMAX);
                changed[j] |= l as u8 != levels[j];
                levels[j] = l as u8;
                sum_xl[j] += (v - min[j]) * l as f32;
                sum_ll[j] += l * l;
            }
        }
        for j in 0..SUBS {
            scale[j] = sum_xl[j] / sum_ll[j] as f32;
        }
        // As `Iterator::sum` adds floats: from -0.0, in order.
        let mut residual = [-0.0f32; SUBS];
        for (levels, xs) in levels.iter().zip(&xt) {
            for j in 0..SUBS {
                residual[j] += xs[j] - scale[j] * levels[j] as f32;
            }
        }
        for j in 0..SUBS {
            if !active[j] {
                continue;
            }
            min[j] = residual[j] / BLOCK as f32;
            if min[j] > 0.0 {
                min[j] = 0.0;
            }
            inverse[j] = 1.0 / scale[j];
            if !changed[j] {
                active[j] = false;
                out[j] = (scale[j], -min[j]);
            }
        }
    }
    for j in (0..SUBS).filter(|&j| active[j]) {
        out[j] = (scale[j], -min[j]);
    }
    out
}

/// `x` (whole super-blocks of 256) quantized to Q4_K blocks as candle
/// quantizes them (the same bytes; a test compares them): per sub-block of
/// 32 a scale and a min ([`scales_and_mins`]), both quantized to 6 bits
/// under the super-block's f16 `d` and `dmin`, then each number's 4-bit
/// level. candle's version allocates for every sub-block, calls `roundf`
/// for every number in every round, and waits on one running sum after
/// another, which made loading a model as q4_k slow.
pub(crate) fn quantize_blocks(x: &[f32]) -> Vec<u8> {
    assert!(x.len().is_multiple_of(SUPER), "not whole super-blocks");
    let mut out = Vec::with_capacity(x.len() / SUPER * Q4K_BYTES);
    for x in x.chunks_exact(SUPER) {
        let found = scales_and_mins(x);
        let scales = found.map(|f| f.0);
        let mins = found.map(|f| f.1);
        let max_scale = scales.iter().fold(0.0, |m: f32, &v| v.max(m));
        let max_min = mins.iter().fold(0.0, |m: f32, &v| v.max(m));
        let inv_scale = if max_scale > 0.0 {
            63.0 / max_scale
        } else {
            0.0
        };
        let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
        // The 6-bit scales and mins in Q4_K's 12 bytes (see `scale_min`).
        let mut packed = [0u8; 12];
        for j in 0..8 {
            let ls = nearest(inv_scale * scales[j]).min(63) as u8;
            let lm = nearest(inv_min * mins[j]).min(63) as u8;
            if j < 4 {
                packed[j] = ls;
                packed[j + 4] = lm;
            } else {
                packed[j + 4] = (ls & 0xF) | ((lm & 0xF) << 4);
                packed[j - 4] |= (ls >> 4) << 6;
                packed[j] |= (lm >> 4) << 6;
            }
        }
        let d = half::f16::from_f32(max_scale / 63.0);
        let dmin = half::f16::from_f32(max_min / 63.0);
        let mut levels = [0u8; SUPER];
        for (j, (sub, levels)) in x
            .chunks_exact(BLOCK)
            .zip(levels.chunks_exact_mut(BLOCK))
            .enumerate()
        {
            let (sc, m) = scale_min(j, &packed);
            let step = d.to_f32() * sc as f32;
            if step != 0.0 {
                let offset = dmin.to_f32() * m as f32;
                for (v, l) in sub.iter().zip(levels.iter_mut()) {
                    *l = nearest((v + offset) / step).clamp(0, 15) as u8;
                }
            }
        }
        out.extend_from_slice(&d.to_le_bytes());
        out.extend_from_slice(&dmin.to_le_bytes());
        out.extend_from_slice(&packed);
        // Sub-blocks 2p and 2p + 1 share bytes: low nibble, high nibble.
        for pair in levels.chunks_exact(2 * BLOCK) {
            let (low, high) = pair.split_at(BLOCK);
            out.extend(low.iter().zip(high).map(|(l, h)| l | (h << 4)));
        }
    }
    out
}

impl PackedQ4K {
    /// `data`: candle's Q4_K blocks of a `[n, k]` weight, row-major. `None`
    /// when the shape does not tile.
    pub fn new(data: &[u8], n: usize, k: usize) -> Option<PackedQ4K> {
        Self::from_blocks(data, n, k, true)
    }

    /// [`Self::new`], on the compute pool when `parallel` (see
    /// `SuperBlocks::repack`).
    fn from_blocks(data: &[u8], n: usize, k: usize, parallel: bool) -> Option<PackedQ4K> {
        let put = |block: &[u8], r: usize, unit: (&mut [u8], &mut [half::f16], &mut [u8])| {
            put_q4k(&block[..4], &block[4..16], &block[16..], r, unit)
        };
        PackedQ4K::repack(Q4K, data, (n, k), Q4K_BYTES, parallel, put)
    }

    /// `w` (`[n, k]` f32, row-major) quantized to Q4_K as candle quantizes
    /// it ([`quantize_blocks`]) and packed. `None` when the shape does not
    /// tile.
    pub fn quantize(w: &[f32], n: usize, k: usize) -> Option<PackedQ4K> {
        if !n.is_multiple_of(TILE) || !k.is_multiple_of(SUPER) {
            return None;
        }
        assert_eq!(w.len(), n * k, "not a [n, k] weight");
        // `pack_rows` calls this on row parts of its own threads.
        PackedQ4K::from_blocks(&quantize_blocks(w), n, k, false)
    }
}

/// One Q4_K-like block's parts placed as row `r` of its packed unit: `d`
/// and `dmin` (`ds`, 4 bytes), the 12 bytes of 6-bit scales and mins, and
/// the 128 nibble bytes (Q5_K's are Q4_K's).
fn put_q4k(
    ds: &[u8],
    packed_scales: &[u8],
    nibbles: &[u8],
    r: usize,
    (quads, d, scales): (&mut [u8], &mut [half::f16], &mut [u8]),
) {
    d[r] = half::f16::from_le_bytes([ds[0], ds[1]]);
    d[TILE + r] = half::f16::from_le_bytes([ds[2], ds[3]]);
    for j in 0..8 {
        let (scale, min) = scale_min(j, packed_scales);
        scales[j * TILE + r] = scale;
        scales[(8 + j) * TILE + r] = min;
    }
    // Quad `c` (`pair · 8 + quad`) of GGML's 32 lands at `[c][r]`.
    place_quads(nibbles, r, quads);
}

/// A byte of GGML's Q5_K fifth bits (sub-block `j`'s at bit `j`) with
/// its bits moved to where the kernel reads them ([`fifth_shift`]).
const FIFTHS: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut byte = 0;
    while byte < 256 {
        let mut j = 0;
        while j < 8 {
            table[byte] |= ((byte >> j & 1) << fifth_shift(j)) as u8;
            j += 1;
        }
        byte += 1;
    }
    table
};

impl PackedQ5K {
    /// `data`: GGML's (candle's) Q5_K blocks of a `[n, k]` weight,
    /// row-major. `None` when the shape does not tile. Tiles are repacked
    /// on the compute pool.
    pub fn new(data: &[u8], n: usize, k: usize) -> Option<PackedQ5K> {
        let put = |block: &[u8],
                   r: usize,
                   (bits, d, scales): (&mut [u8], &mut [half::f16], &mut [u8])| {
            let (quads, fifths) = bits.split_at_mut(TILE_QUADS);
            put_q4k(
                &block[..4],
                &block[4..16],
                &block[48..],
                r,
                (quads, d, scales),
            );
            // Byte `l` of GGML's 32 holds weight `l`'s fifth bit of every
            // sub-block: the same bits, moved to where the kernel reads
            // them.
            for (quad, four) in block[16..48].chunks_exact(4).enumerate() {
                for (b, &byte) in four.iter().enumerate() {
                    fifths[(quad * TILE + r) * 4 + b] = FIFTHS[byte as usize];
                }
            }
        };
        PackedQ5K::repack(Q5K, data, (n, k), Q5K_BYTES, true, put)
    }
}
