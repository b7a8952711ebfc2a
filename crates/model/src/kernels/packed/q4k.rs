//! Q4_K and Q5_K weights repacked for the VNNI kernel.
//!
//! A Q4_K super-block holds 256 weights of one row: eight sub-blocks of 32,
//! each with a 6-bit scale and a 6-bit min, under the super-block's f16 `d`
//! and `dmin`: `w = d·scale·q - dmin·min`, `q` in 0..16. Here each group of
//! 16 rows keeps its nibbles as Q4_K stores them, one byte holding sub-block
//! `2p`'s number in its low nibble and sub-block `2p + 1`'s in its high
//! one, reordered as `[4 pairs][8 k-quads][16 rows][4 bytes]`: one load and
//! two masks give two vectors of four numbers for sixteen rows, each a
//! `vpdpbusd` operand as it is (the numbers are unsigned). Beside them, per
//! super-block, the 16 rows' `d` and `dmin` (f16) and their sub-blocks'
//! scales and mins, one byte each: 2368 bytes per 16 x 256 weights (4.6 bits
//! a weight, against Q4_K's 4.5; candle's repacked tiles take 6 and keep
//! the original beside them). A sub-block's scale is `d · scale` in f32, as
//! Q4_K dequantizes; an input block of 32 meets one sub-block, so each dot
//! is `x_scale · (d·scale · Σ q·x - dmin·min · Σ x)` with exact integer sums.
//!
//! Q5_K is Q4_K with a fifth bit per number (`q` in 0..32, the same scales,
//! mins and formula). Its fifth bits follow the nibbles as one more plane,
//! `[8 k-quads][16 rows][4 bytes]`, a byte holding one weight position's
//! bits of all eight sub-blocks: pair `p`'s first sub-block's at bit `4 +
//! p`, its second's at bit `p`. A shift by `p` and a mask put the pair's
//! two bits at bits 4 and 0, and one bitwise select each joins them to the
//! nibbles, as the Q6_K kernel joins its high bits: 2880 bytes per 16 x 256
//! weights (5.6 bits a weight, against Q5_K's 5.5).

use super::super_blocks::{Layout, SuperBlocks, Unit};
use super::{BLOCK, TILE};

pub(crate) use super::super_blocks::SUPER;
/// Nibble bytes per tile and super-block.
pub(crate) const TILE_QUADS: usize = TILE * SUPER / 2;
/// `d` and `dmin` per tile and super-block.
pub(crate) const TILE_D: usize = 2 * TILE;
/// Scales and mins per tile and super-block.
pub(crate) const TILE_SCALES: usize = 2 * 8 * TILE;
/// Bytes of Q5_K's fifth bits per tile and super-block.
pub(crate) const TILE_FIFTHS: usize = TILE * SUPER / 8;

/// Where sub-block `j`'s fifth bit sits in its byte of Q5_K's plane.
pub(crate) const fn fifth_shift(j: usize) -> usize {
    if j.is_multiple_of(2) {
        4 + j / 2
    } else {
        j / 2
    }
}

/// One `[n, k]` Q4_K weight (`n` a multiple of 16, `k` of 256), repacked.
/// Per unit: Q4_K's nibble bytes `[4][8][16][4]`; each row's `d`, then its
/// `dmin` (`[2][16]`); each sub-block's scale, then its min (`[2][8][16]`).
pub type PackedQ4K = SuperBlocks<Q4K>;

/// The Q4_K layout.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Q4K;

/// One `[n, k]` Q5_K weight (`n` a multiple of 16, `k` of 256), repacked:
/// [`PackedQ4K`]'s unit with the fifth bits after the nibbles
/// (`[8][16][4]`).
pub type PackedQ5K = SuperBlocks<Q5K>;

/// The Q5_K layout.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Q5K;

/// Row `r`'s 256 numbers in a Q4_K unit, or a Q5_K one with `fifths`.
fn numbers((quads, d, scales): Unit<'_, u8>, fifths: bool, r: usize, out: &mut [f32]) {
    let (d, dmin) = (d[r].to_f32(), d[TILE + r].to_f32());
    for (j, out) in out.chunks_exact_mut(BLOCK).enumerate() {
        let scale = d * scales[j * TILE + r] as f32;
        let min = dmin * scales[(8 + j) * TILE + r] as f32;
        let (pair, shift) = (j / 2, 4 * (j % 2));
        for (i, o) in out.iter_mut().enumerate() {
            let at = ((i / 4) * TILE + r) * 4 + i % 4;
            let mut q = (quads[pair * TILE_QUADS / 4 + at] >> shift) & 0x0F;
            if fifths {
                q |= (quads[TILE_QUADS + at] >> fifth_shift(j) & 1) << 4;
            }
            *o = scale * q as f32 - min;
        }
    }
}

impl Layout for Q4K {
    type Scale = u8;

    fn bits(self) -> usize {
        TILE_QUADS
    }
    fn d(self) -> usize {
        TILE_D
    }
    fn scales(self) -> usize {
        TILE_SCALES
    }
    fn numbers(self, unit: Unit<'_, u8>, r: usize, out: &mut [f32]) {
        numbers(unit, false, r, out)
    }
}

impl Layout for Q5K {
    type Scale = u8;

    fn bits(self) -> usize {
        TILE_QUADS + TILE_FIFTHS
    }
    fn d(self) -> usize {
        TILE_D
    }
    fn scales(self) -> usize {
        TILE_SCALES
    }
    fn numbers(self, unit: Unit<'_, u8>, r: usize, out: &mut [f32]) {
        numbers(unit, true, r, out)
    }
}

#[cfg(target_arch = "x86_64")]
pub(super) mod vnni {
    use std::arch::x86_64::*;

    use super::super::{Row, ROWS};
    use super::{BLOCK, SUPER, TILE, TILE_D, TILE_FIFTHS, TILE_QUADS, TILE_SCALES};
    use crate::kernels::x86::{prefetch, tile_prefetches};

    /// How far ahead of the super-block in use the nibbles are prefetched,
    /// where it helps (`x86::tile_prefetches`; 4 KB, as for Q8_0).
    const PREFETCH_SUPERS: usize = 2;

    /// The two `vpdpbusd` operands in 64 bytes `v` of nibble pairs: the low
    /// nibbles, and the high ones. With `fifths`, 64 bytes of fifth bits
    /// and a shift that brings the wanted pair of them to bits 4 (the low
    /// nibble's) and 0 (the high one's) of each byte, each number is
    /// joined with its fifth bit (`0x0F ? nibble : fifth`, one
    /// `vpternlogd`), as Q5_K and the 5-bit legacy formats store them.
    /// (Needs AVX-512F and AVX-512BW, as its callers do.)
    #[target_feature(enable = "avx512f,avx512bw")]
    #[inline]
    pub(in crate::kernels::packed) fn operands(
        v: __m512i,
        fifths: Option<(__m512i, __m128i)>,
    ) -> [__m512i; 2] {
        let low = _mm512_set1_epi8(0x0F);
        let high = _mm512_srli_epi16::<4>(v);
        match fifths {
            Some((bits, shift)) => {
                let h = _mm512_and_si512(_mm512_srl_epi16(bits, shift), _mm512_set1_epi8(0x11));
                [
                    _mm512_ternarylogic_epi32::<0xE4>(v, h, low),
                    _mm512_ternarylogic_epi32::<0xE4>(high, _mm512_slli_epi16::<4>(h), low),
                ]
            }
            None => [_mm512_and_si512(v, low), _mm512_and_si512(high, low)],
        }
    }

    /// [`tiles`] on Q4_K units.
    ///
    /// # Safety
    /// As [`tiles`].
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub unsafe fn tile<const R: usize>(
        rows: &[Row],
        quads: &[u8],
        d: &[half::f16],
        scales: &[u8],
        out: &mut [[f32; TILE]; ROWS],
    ) {
        tiles::<R, false>(rows, quads, d, scales, out)
    }

    /// [`tiles`] on Q5_K units.
    ///
    /// # Safety
    /// As [`tiles`].
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub unsafe fn tile_q5k<const R: usize>(
        rows: &[Row],
        bits: &[u8],
        d: &[half::f16],
        scales: &[u8],
        out: &mut [[f32; TILE]; ROWS],
    ) {
        tiles::<R, true>(rows, bits, d, scales, out)
    }

    /// The 16 dots of one tile's rows with each of the first `R` of `rows`,
    /// its units Q4_K's, or with `FIFTHS` Q5_K's: each load of bits serves
    /// every row, with two integer sums per row (the pair's two
    /// sub-blocks).
    ///
    /// # Safety
    /// The CPU has AVX-512F, AVX-512BW and AVX-512VNNI; `R` is at most
    /// [`ROWS`] (the lengths are checked).
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn tiles<const R: usize, const FIFTHS: bool>(
        rows: &[Row],
        bits: &[u8],
        d: &[half::f16],
        scales: &[u8],
        out: &mut [[f32; TILE]; ROWS],
    ) {
        let unit = TILE_QUADS + if FIFTHS { TILE_FIFTHS } else { 0 };
        let supers = rows[0].scales.len() * BLOCK / SUPER;
        assert!(bits.len() >= supers * unit && d.len() >= supers * TILE_D);
        assert!(scales.len() >= supers * TILE_SCALES);
        for row in &rows[..R] {
            assert!(row.q.len() >= supers * SUPER && row.sums.len() >= supers * 8);
        }
        let on = tile_prefetches(R);
        let mut total = [_mm512_setzero_ps(); R];
        for sb in 0..supers {
            let qp = bits.as_ptr().add(sb * unit);
            let hp = qp.add(TILE_QUADS);
            prefetch(on, qp.wrapping_add(PREFETCH_SUPERS * unit), unit / 64);
            let dp = d.as_ptr().add(sb * TILE_D);
            let dv = _mm512_cvtph_ps(_mm256_loadu_si256(dp as *const _));
            let mv = _mm512_cvtph_ps(_mm256_loadu_si256(dp.add(TILE) as *const _));
            let sp = scales.as_ptr().add(sb * TILE_SCALES);
            for pair in 0..4 {
                let shift = _mm_cvtsi32_si128(pair as i32);
                let mut acc = [[_mm512_setzero_si512(); 2]; R];
                for quad in 0..8 {
                    let v = _mm512_loadu_si512(qp.add((pair * 8 + quad) * 64) as *const _);
                    let fifths =
                        FIFTHS.then(|| (_mm512_loadu_si512(hp.add(quad * 64) as *const _), shift));
                    let w = operands(v, fifths);
                    for (a, row) in acc.iter_mut().zip(rows) {
                        for (half, w) in w.iter().enumerate() {
                            let at = (sb * 8 + 2 * pair + half) * BLOCK + quad * 4;
                            let x = (row.q.as_ptr().add(at) as *const i32).read_unaligned();
                            a[half] = _mm512_dpbusd_epi32(a[half], *w, _mm512_set1_epi32(x));
                        }
                    }
                }
                for half in 0..2 {
                    let j = 2 * pair + half;
                    let widen = |p: *const u8| {
                        _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(p as *const _)))
                    };
                    let scale = _mm512_mul_ps(dv, widen(sp.add(j * TILE)));
                    let min = _mm512_mul_ps(mv, widen(sp.add((8 + j) * TILE)));
                    let b = sb * 8 + j;
                    for ((t, a), row) in total.iter_mut().zip(&acc).zip(rows) {
                        let dot = _mm512_mul_ps(_mm512_cvtepi32_ps(a[half]), scale);
                        let sum = _mm512_set1_ps(row.sums[b] as f32);
                        let dot = _mm512_fnmadd_ps(min, sum, dot);
                        *t = _mm512_fmadd_ps(dot, _mm512_set1_ps(row.scales[b]), *t);
                    }
                }
            }
        }
        for (o, t) in out.iter_mut().zip(&total) {
            _mm512_storeu_ps(o.as_mut_ptr(), *t);
        }
    }
}
