//! Q6_K, Q3_K and Q2_K weights repacked for the VNNI kernel.
//!
//! A Q6_K super-block holds 256 weights of one row: sixteen sub-blocks of
//! 16, each with a signed 8-bit scale, under the super-block's f16 `d`:
//! `w = d·scale·(u - 32)`, `u` in 0..64 (4 low bits and 2 high ones). Here
//! each group of 16 rows keeps the low bits as nibble pairs laid out as
//! [`PackedQ4K`](super::PackedQ4K)'s (`[4 pairs][8 k-quads][16 rows][4
//! bytes]`, block `2p` in the low nibble, `2p + 1` in the high one), and
//! the high bits of four blocks in one byte, `[2 groups][8 k-quads][16
//! rows][4 bytes]`: block `4g`'s at bits 4-5, `4g + 1`'s at 0-1, `4g + 2`'s
//! at 6-7, `4g + 3`'s at 2-3. So a pair's two high parts, masked (after a
//! shift for the second pair of the four), sit just where one more shift
//! puts them beside its nibbles, and a bitwise select (one `vpternlogd`)
//! joins each: two loads give two `vpdpbusd` operands of sixteen rows'
//! four numbers (unsigned, as `u` is). Beside them, per
//! super-block, the 16 rows' `d` (f16) and their sub-blocks' scales, a
//! byte each: 3360 bytes per 16 x 256 weights, Q6_K's own 6.56 bits a
//! weight. An input block of 32 meets two sub-blocks, so each dot is
//! `x_scale · Σ_halves d·scale · (Σ u·x - 32 · Σ x)`, the integer sums
//! exact (each half's sum starts at the input's `-32 · Σ x`).
//!
//! Q3_K is the same arithmetic with 3-bit levels, `w = d·scale·(u - 4)`
//! ([`PackedQ3K`]): the same kernel, its operands made of a bit pair and a
//! third bit, its sums starting at `-4 · Σ x`. Q2_K ([`PackedQ2K`]) has
//! 2-bit levels and a min per sub-block, `w = d·scale·u - dmin·min`: its
//! operands are Q3_K's bit pairs alone, its sums start at zero, and each
//! sub-block's min meets the input half's sum, `Σ x`, in floats.

use super::super_blocks::{Layout, SuperBlocks, Unit};
use super::{BLOCK, TILE};

pub(crate) use super::super_blocks::SUPER;
/// Bytes of low nibbles per tile and super-block.
pub(crate) const TILE_LOW: usize = TILE * SUPER / 2;
/// Bytes of both parts per tile and super-block: the nibbles, then the
/// high bits.
pub(crate) const TILE_BITS: usize = TILE_LOW + TILE * SUPER / 4;
/// Sub-block scales per tile and super-block.
pub(crate) const TILE_SCALES: usize = 16 * TILE;

/// Where the high bits of block `j` (0..8) of a super-block sit in their
/// byte.
pub(crate) fn high_shift(j: usize) -> usize {
    [4, 0, 6, 2][j % 4]
}

/// One `[n, k]` Q6_K weight (`n` a multiple of 16, `k` of 256), repacked.
/// Per unit: the nibbles `[4][8][16][4]`, then the high bits
/// `[2][8][16][4]`; each row's `d` (`[16]`); each sub-block's scale, by
/// row (`[16][16]`).
pub type PackedQ6K = SuperBlocks<Q6K>;

/// The Q6_K layout.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Q6K;

/// Weight `i` (0..256) of row `r` in a unit's `bits`: its `u` (0..64).
pub(crate) fn level(bits: &[u8], r: usize, i: usize) -> u8 {
    let (j, within) = (i / BLOCK, i % BLOCK);
    let (quad, b) = (within / 4, within % 4);
    let low = bits[((j / 2 * 8 + quad) * TILE + r) * 4 + b] >> (4 * (j % 2)) & 0x0F;
    let high = bits[TILE_LOW + ((j / 4 * 8 + quad) * TILE + r) * 4 + b] >> high_shift(j) & 3;
    low | high << 4
}

/// Bytes of Q3_K's low bit pairs per tile and super-block.
pub(crate) const TILE_PAIRS: usize = TILE * SUPER / 4;
/// Bytes of both Q3_K parts per tile and super-block: the bit pairs, then
/// the third bits.
pub(crate) const TILE_BITS_Q3K: usize = TILE_PAIRS + TILE * SUPER / 8;

/// One `[n, k]` Q3_K weight (`n` a multiple of 16, `k` of 256), repacked
/// for the same kernel as Q6_K's: per unit, the low bit pairs of four
/// blocks a byte (`[2][8][16][4]`, block `4g + t` at bits `2t..2t + 2`),
/// then the third bits of all eight a byte (`[8][16][4]`, block `j` at bit
/// `j`), both GGML's own bytes moved by four; each row's `d`; each
/// sub-block's scale less 32, by row (`[16][16]`). A weight is
/// `d·scale·(u - 4)`, `u` in 0..8: 1824 bytes per 16 x 256 weights, 3.56
/// bits a weight against Q3_K's 3.44.
pub type PackedQ3K = SuperBlocks<Q3K>;

/// The Q3_K layout.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Q3K;

/// Weight `i` (0..256) of row `r` in a Q3_K unit's `bits`: its `u` (0..8).
pub(crate) fn level_q3k(bits: &[u8], r: usize, i: usize) -> u8 {
    let (j, within) = (i / BLOCK, i % BLOCK);
    let (quad, b) = (within / 4, within % 4);
    // The bit pairs lie as Q2_K's.
    let third = bits[TILE_PAIRS + (quad * TILE + r) * 4 + b] >> j & 1;
    level_q2k(bits, r, i) | third << 2
}

/// One `[n, k]` Q2_K weight (`n` a multiple of 16, `k` of 256), repacked
/// for the same kernel as Q6_K's: per unit, the bit pairs of four blocks a
/// byte (`[2][8][16][4]`, block `4g + t` at bits `2t..2t + 2`, GGML's own
/// bytes moved by four, as Q3_K's); each row's `d`, then each row's
/// `dmin`; each sub-block's scale (0..16), by row (`[16][16]`), then each
/// sub-block's min, by row. A weight is `d·scale·u - dmin·min`, `u` in
/// 0..4: 1600 bytes per 16 x 256 weights, 3.13 bits a weight against
/// Q2_K's 2.63 (scales and mins a byte each, not a nibble).
pub type PackedQ2K = SuperBlocks<Q2K>;

/// The Q2_K layout.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Q2K;

/// Weight `i` (0..256) of row `r` in a Q2_K unit's `bits`: its `u` (0..4).
pub(crate) fn level_q2k(bits: &[u8], r: usize, i: usize) -> u8 {
    let (j, within) = (i / BLOCK, i % BLOCK);
    let (quad, b) = (within / 4, within % 4);
    bits[((j / 4 * 8 + quad) * TILE + r) * 4 + b] >> (2 * (j % 4)) & 3
}

impl Layout for Q2K {
    type Scale = i8;

    fn bits(self) -> usize {
        TILE_PAIRS
    }
    fn d(self) -> usize {
        2 * TILE
    }
    fn scales(self) -> usize {
        2 * TILE_SCALES
    }
    /// As candle dequantizes Q2_K: `(d·scale)·u - dmin·min`.
    fn numbers(self, (bits, d, scales): Unit<'_, i8>, r: usize, out: &mut [f32]) {
        let (d, dmin) = (d[r].to_f32(), d[TILE + r].to_f32());
        for (i, o) in out.iter_mut().enumerate() {
            let s = i / 16 * TILE + r;
            let (scale, min) = (scales[s] as f32, scales[TILE_SCALES + s] as f32);
            *o = d * scale * level_q2k(bits, r, i) as f32 - dmin * min;
        }
    }
}

/// Row `r`'s numbers in a unit: `d·scale·(u - offset)` per sub-block of
/// 16, `u` as `level(bits, r, i)` reads weight `i`'s.
fn numbers(
    (bits, d, scales): Unit<'_, i8>,
    r: usize,
    out: &mut [f32],
    level: fn(&[u8], usize, usize) -> u8,
    offset: i32,
) {
    let d = d[r].to_f32();
    for (i, o) in out.iter_mut().enumerate() {
        let scale = scales[i / 16 * TILE + r];
        *o = d * scale as f32 * (level(bits, r, i) as i32 - offset) as f32;
    }
}

impl Layout for Q3K {
    type Scale = i8;

    fn bits(self) -> usize {
        TILE_BITS_Q3K
    }
    fn d(self) -> usize {
        TILE
    }
    fn scales(self) -> usize {
        TILE_SCALES
    }
    fn numbers(self, unit: Unit<'_, i8>, r: usize, out: &mut [f32]) {
        numbers(unit, r, out, level_q3k, 4)
    }
}

impl Layout for Q6K {
    type Scale = i8;

    fn bits(self) -> usize {
        TILE_BITS
    }
    fn d(self) -> usize {
        TILE
    }
    fn scales(self) -> usize {
        TILE_SCALES
    }
    fn numbers(self, unit: Unit<'_, i8>, r: usize, out: &mut [f32]) {
        numbers(unit, r, out, level, 32)
    }
}

#[cfg(target_arch = "x86_64")]
pub(super) mod vnni {
    use std::arch::x86_64::*;

    use super::super::{Row, ROWS};
    use super::{BLOCK, SUPER, TILE, TILE_BITS, TILE_BITS_Q3K, TILE_LOW, TILE_PAIRS, TILE_SCALES};
    use crate::kernels::x86::{prefetch, tile_prefetches};

    /// How far ahead of the super-block in use its bits are prefetched,
    /// where it helps (`x86::tile_prefetches`).
    const PREFETCH_SUPERS: usize = 2;

    /// [`tiles`] on Q6_K units.
    ///
    /// # Safety
    /// As [`tiles`].
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub unsafe fn tile<const R: usize>(
        rows: &[Row],
        bits: &[u8],
        d: &[half::f16],
        scales: &[i8],
        out: &mut [[f32; TILE]; ROWS],
    ) {
        tiles::<R, false>(rows, bits, d, scales, out)
    }

    /// [`tiles`] on Q3_K units.
    ///
    /// # Safety
    /// As [`tiles`].
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub unsafe fn tile_q3k<const R: usize>(
        rows: &[Row],
        bits: &[u8],
        d: &[half::f16],
        scales: &[i8],
        out: &mut [[f32; TILE]; ROWS],
    ) {
        tiles::<R, true>(rows, bits, d, scales, out)
    }

    /// The 16 dots of one tile's rows with each of the first `R` of `rows`,
    /// its units Q6_K's, or with `Q3K` Q3_K's: each load of bits serves
    /// every row, with two integer sums per row (the pair's two blocks),
    /// each closed after 16 numbers (a sub-block). Q3_K's levels are
    /// offset by 4 where Q6_K's are by 32: its sums start at an eighth of
    /// the input's `-32 · Σ x`.
    ///
    /// # Safety
    /// The CPU has AVX-512F, AVX-512BW and AVX-512VNNI; `R` is at most
    /// [`ROWS`] (the lengths are checked).
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn tiles<const R: usize, const Q3K: bool>(
        rows: &[Row],
        bits: &[u8],
        d: &[half::f16],
        scales: &[i8],
        out: &mut [[f32; TILE]; ROWS],
    ) {
        let unit = if Q3K { TILE_BITS_Q3K } else { TILE_BITS };
        let supers = rows[0].scales.len() * BLOCK / SUPER;
        assert!(bits.len() >= supers * unit && d.len() >= supers * TILE);
        assert!(scales.len() >= supers * TILE_SCALES);
        for row in &rows[..R] {
            assert!(row.q.len() >= supers * SUPER && row.half_offsets.len() >= supers * 16);
        }
        let nibble = _mm512_set1_epi8(0x0F);
        let pair_bits = _mm512_set1_epi8(0x33);
        let on = tile_prefetches(R);
        let mut total = [_mm512_setzero_ps(); R];
        for sb in 0..supers {
            let lp = bits.as_ptr().add(sb * unit);
            let hp = lp.add(if Q3K { TILE_PAIRS } else { TILE_LOW });
            prefetch(on, lp.wrapping_add(PREFETCH_SUPERS * unit), unit / 64);
            let dv = _mm512_cvtph_ps(_mm256_loadu_si256(d.as_ptr().add(sb * TILE) as *const _));
            let sp = scales.as_ptr().add(sb * TILE_SCALES);
            for pair in 0..4 {
                for half in 0..2 {
                    let mut acc = [[_mm512_setzero_si512(); 2]; R];
                    for (a, row) in acc.iter_mut().zip(rows) {
                        for (blk, a) in a.iter_mut().enumerate() {
                            let b = sb * 8 + 2 * pair + blk;
                            let offset = row.half_offsets[2 * b + half];
                            *a = _mm512_set1_epi32(if Q3K { offset / 8 } else { offset });
                        }
                    }
                    for quad in 4 * half..4 * half + 4 {
                        let w = if Q3K {
                            let l = lp.add((pair / 2 * 8 + quad) * 64);
                            let l = _mm512_loadu_si512(l as *const _);
                            let h = _mm512_loadu_si512(hp.add(quad * 64) as *const _);
                            q3k_operands(l, h, pair)
                        } else {
                            q6k_operands(lp, hp, pair, quad, nibble, pair_bits)
                        };
                        for (a, row) in acc.iter_mut().zip(rows) {
                            for (blk, w) in w.iter().enumerate() {
                                let at = (sb * 8 + 2 * pair + blk) * BLOCK + quad * 4;
                                let x = (row.q.as_ptr().add(at) as *const i32).read_unaligned();
                                a[blk] = _mm512_dpbusd_epi32(a[blk], *w, _mm512_set1_epi32(x));
                            }
                        }
                    }
                    for blk in 0..2 {
                        let j = 2 * pair + blk;
                        let s = _mm_loadu_si128(sp.add((2 * j + half) * TILE) as *const _);
                        let scale = _mm512_mul_ps(dv, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(s)));
                        let b = sb * 8 + j;
                        for ((t, a), row) in total.iter_mut().zip(&acc).zip(rows) {
                            let scale = _mm512_mul_ps(scale, _mm512_set1_ps(row.scales[b]));
                            *t = _mm512_fmadd_ps(_mm512_cvtepi32_ps(a[blk]), scale, *t);
                        }
                    }
                }
            }
        }
        for (o, t) in out.iter_mut().zip(&total) {
            _mm512_storeu_ps(o.as_mut_ptr(), *t);
        }
    }

    /// The 16 dots of one tile's rows with each of the first `R` of `rows`,
    /// its units Q2_K's: [`tiles`]' loop on 2-bit levels, not offset (the
    /// sums start at zero), with each sub-block's `dmin·min · x_scale ·
    /// Σ x` taken off. A function of its own: folded into [`tiles`] as a
    /// third format, it made Q6_K's kernel a fifth slower at every batch
    /// size.
    ///
    /// # Safety
    /// As [`tiles`].
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub unsafe fn tile_q2k<const R: usize>(
        rows: &[Row],
        bits: &[u8],
        d: &[half::f16],
        scales: &[i8],
        out: &mut [[f32; TILE]; ROWS],
    ) {
        let supers = rows[0].scales.len() * BLOCK / SUPER;
        assert!(bits.len() >= supers * TILE_PAIRS && d.len() >= supers * 2 * TILE);
        assert!(scales.len() >= supers * 2 * TILE_SCALES);
        for row in &rows[..R] {
            assert!(row.q.len() >= supers * SUPER && row.half_offsets.len() >= supers * 16);
        }
        let on = tile_prefetches(R);
        let mut total = [_mm512_setzero_ps(); R];
        for sb in 0..supers {
            let lp = bits.as_ptr().add(sb * TILE_PAIRS);
            prefetch(
                on,
                lp.wrapping_add(PREFETCH_SUPERS * TILE_PAIRS),
                TILE_PAIRS / 64,
            );
            let dp = d.as_ptr().add(sb * 2 * TILE);
            let dv = _mm512_cvtph_ps(_mm256_loadu_si256(dp as *const _));
            let dmin = _mm512_cvtph_ps(_mm256_loadu_si256(dp.add(TILE) as *const _));
            let sp = scales.as_ptr().add(sb * 2 * TILE_SCALES);
            for pair in 0..4 {
                for half in 0..2 {
                    let mut acc = [[_mm512_setzero_si512(); 2]; R];
                    for quad in 4 * half..4 * half + 4 {
                        let l = _mm512_loadu_si512(lp.add((pair / 2 * 8 + quad) * 64) as *const _);
                        let w = q2k_operands(l, pair);
                        for (a, row) in acc.iter_mut().zip(rows) {
                            for (blk, w) in w.iter().enumerate() {
                                let at = (sb * 8 + 2 * pair + blk) * BLOCK + quad * 4;
                                let x = (row.q.as_ptr().add(at) as *const i32).read_unaligned();
                                a[blk] = _mm512_dpbusd_epi32(a[blk], *w, _mm512_set1_epi32(x));
                            }
                        }
                    }
                    for blk in 0..2 {
                        let s = 2 * (2 * pair + blk) + half;
                        let byte_row = |at: usize| {
                            let v = _mm_loadu_si128(sp.add(at) as *const _);
                            _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(v))
                        };
                        let scale = _mm512_mul_ps(dv, byte_row(s * TILE));
                        let min = _mm512_mul_ps(dmin, byte_row(TILE_SCALES + s * TILE));
                        let b = sb * 8 + 2 * pair + blk;
                        for ((t, a), row) in total.iter_mut().zip(&acc).zip(rows) {
                            let x_scale = _mm512_set1_ps(row.scales[b]);
                            let dot = _mm512_cvtepi32_ps(a[blk]);
                            *t = _mm512_fmadd_ps(dot, _mm512_mul_ps(scale, x_scale), *t);
                            // The half's `Σ x`: its offset is `-32 · Σ x`.
                            let sum = (-row.half_offsets[2 * b + half] / 32) as f32;
                            *t = _mm512_fnmadd_ps(min, _mm512_set1_ps(row.scales[b] * sum), *t);
                        }
                    }
                }
            }
        }
        for (o, t) in out.iter_mut().zip(&total) {
            _mm512_storeu_ps(o.as_mut_ptr(), *t);
        }
    }

    /// A Q6_K pair's two `vpdpbusd` operands for k-quad `quad`: its
    /// nibbles at `lp`, its high bit pairs at `hp`.
    ///
    /// # Safety
    /// The CPU has AVX-512F and AVX-512BW; `lp` and `hp` point into one
    /// unit's two parts.
    #[target_feature(enable = "avx512f,avx512bw")]
    #[inline]
    unsafe fn q6k_operands(
        lp: *const u8,
        hp: *const u8,
        pair: usize,
        quad: usize,
        nibble: __m512i,
        pair_bits: __m512i,
    ) -> [__m512i; 2] {
        let v = _mm512_loadu_si512(lp.add((pair * 8 + quad) * 64) as *const _);
        let mut h = _mm512_loadu_si512(hp.add((pair / 2 * 8 + quad) * 64) as *const _);
        if pair % 2 == 1 {
            h = _mm512_srli_epi16::<2>(h);
        }
        // This pair's high bits alone, at bits 4-5 and 0-1.
        let h = _mm512_and_si512(h, pair_bits);
        // Bits 0-3 from the nibbles, 4-7 from the high bits (6-7 clear):
        // `nibble ? a : b`.
        [
            _mm512_ternarylogic_epi32::<0xE4>(v, h, nibble),
            _mm512_ternarylogic_epi32::<0xE4>(
                _mm512_srli_epi16::<4>(v),
                _mm512_slli_epi16::<4>(h),
                nibble,
            ),
        ]
    }

    /// The `vpdpbusd` operands of a Q3_K pair's two blocks ([`q3k_operand`]).
    #[target_feature(enable = "avx512f,avx512bw")]
    #[inline]
    fn q3k_operands(l: __m512i, h: __m512i, pair: usize) -> [__m512i; 2] {
        match pair {
            0 => [q3k_operand::<0>(l, h), q3k_operand::<1>(l, h)],
            1 => [q3k_operand::<2>(l, h), q3k_operand::<3>(l, h)],
            2 => [q3k_operand::<4>(l, h), q3k_operand::<5>(l, h)],
            _ => [q3k_operand::<6>(l, h), q3k_operand::<7>(l, h)],
        }
    }

    /// Block `J`'s `vpdpbusd` operand in a Q3_K unit: its bit pair from
    /// `l` (bits `2·(J % 4)`), its third bit from `h` (bit `J`), joined as
    /// `pair | third << 2` by shifts of fixed counts and one bitwise
    /// select. Shifts move bits across a 16-bit lane's two bytes only into
    /// bits the masks drop.
    #[target_feature(enable = "avx512f,avx512bw")]
    #[inline]
    fn q3k_operand<const J: usize>(l: __m512i, h: __m512i) -> __m512i {
        let pair = match J % 4 {
            0 => l,
            1 => _mm512_srli_epi16::<2>(l),
            2 => _mm512_srli_epi16::<4>(l),
            _ => _mm512_srli_epi16::<6>(l),
        };
        let third = match J {
            0 => _mm512_slli_epi16::<2>(h),
            1 => _mm512_slli_epi16::<1>(h),
            2 => h,
            3 => _mm512_srli_epi16::<1>(h),
            4 => _mm512_srli_epi16::<2>(h),
            5 => _mm512_srli_epi16::<3>(h),
            6 => _mm512_srli_epi16::<4>(h),
            _ => _mm512_srli_epi16::<5>(h),
        };
        let third = _mm512_and_si512(third, _mm512_set1_epi8(0x04));
        // Bits 0-1 from the pair, the rest from the third bit: `0x03 ? a : b`.
        _mm512_ternarylogic_epi32::<0xE4>(pair, third, _mm512_set1_epi8(0x03))
    }

    /// The `vpdpbusd` operands of a Q2_K pair's two blocks: blocks
    /// `2·pair` and `2·pair + 1`'s bit pairs from `l` (block `J`'s at bits
    /// `2·(J % 4)`), each masked alone by shifts of fixed counts.
    #[target_feature(enable = "avx512f,avx512bw")]
    #[inline]
    fn q2k_operands(l: __m512i, pair: usize) -> [__m512i; 2] {
        let low = _mm512_set1_epi8(0x03);
        let (a, b) = if pair.is_multiple_of(2) {
            (l, _mm512_srli_epi16::<2>(l))
        } else {
            (_mm512_srli_epi16::<4>(l), _mm512_srli_epi16::<6>(l))
        };
        [_mm512_and_si512(a, low), _mm512_and_si512(b, low)]
    }
}
