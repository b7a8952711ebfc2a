//! Q6_K weights repacked for the VNNI kernel.
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
#[derive(Debug, Clone, Copy)]
pub struct Q6K;

/// Weight `i` (0..256) of row `r` in a unit's `bits`: its `u` (0..64).
pub(crate) fn level(bits: &[u8], r: usize, i: usize) -> u8 {
    let (j, within) = (i / BLOCK, i % BLOCK);
    let (quad, b) = (within / 4, within % 4);
    let low = bits[((j / 2 * 8 + quad) * TILE + r) * 4 + b] >> (4 * (j % 2)) & 0x0F;
    let high = bits[TILE_LOW + ((j / 4 * 8 + quad) * TILE + r) * 4 + b] >> high_shift(j) & 3;
    low | high << 4
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
    fn numbers(self, (bits, d, scales): Unit<'_, i8>, r: usize, out: &mut [f32]) {
        let d = d[r].to_f32();
        for (i, o) in out.iter_mut().enumerate() {
            let scale = scales[i / 16 * TILE + r];
            *o = d * scale as f32 * (level(bits, r, i) as i32 - 32) as f32;
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub(super) mod vnni {
    use std::arch::x86_64::*;

    use super::super::{Row, ROWS};
    use super::{BLOCK, SUPER, TILE, TILE_BITS, TILE_LOW, TILE_SCALES};
    use crate::kernels::x86::{prefetch, tile_prefetches};

    /// How far ahead of the super-block in use its bits are prefetched,
    /// where it helps (`x86::tile_prefetches`).
    const PREFETCH_SUPERS: usize = 2;

    /// The 16 dots of one tile's rows with each of the first `R` of `rows`:
    /// each load of bits serves every row, with two integer sums per row
    /// (the pair's two blocks), each closed after 16 numbers (a
    /// sub-block).
    ///
    /// # Safety
    /// The CPU has AVX-512F, AVX-512BW and AVX-512VNNI; `R` is at most
    /// [`ROWS`] (the lengths are checked).
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub unsafe fn tile<const R: usize>(
        rows: &[Row],
        bits: &[u8],
        d: &[half::f16],
        scales: &[i8],
        out: &mut [[f32; TILE]; ROWS],
    ) {
        let supers = rows[0].scales.len() * BLOCK / SUPER;
        assert!(bits.len() >= supers * TILE_BITS && d.len() >= supers * TILE);
        assert!(scales.len() >= supers * TILE_SCALES);
        for row in &rows[..R] {
            assert!(row.q.len() >= supers * SUPER && row.half_offsets.len() >= supers * 16);
        }
        let nibble = _mm512_set1_epi8(0x0F);
        let pair_bits = _mm512_set1_epi8(0x33);
        let on = tile_prefetches(R);
        let mut total = [_mm512_setzero_ps(); R];
        for sb in 0..supers {
            let lp = bits.as_ptr().add(sb * TILE_BITS);
            let hp = lp.add(TILE_LOW);
            prefetch(
                on,
                lp.wrapping_add(PREFETCH_SUPERS * TILE_BITS),
                TILE_BITS / 64,
            );
            let dv = _mm512_cvtph_ps(_mm256_loadu_si256(d.as_ptr().add(sb * TILE) as *const _));
            let sp = scales.as_ptr().add(sb * TILE_SCALES);
            for pair in 0..4 {
                for half in 0..2 {
                    let mut acc = [[_mm512_setzero_si512(); 2]; R];
                    for (a, row) in acc.iter_mut().zip(rows) {
                        for (blk, a) in a.iter_mut().enumerate() {
                            let b = sb * 8 + 2 * pair + blk;
                            *a = _mm512_set1_epi32(row.half_offsets[2 * b + half]);
                        }
                    }
                    for quad in 4 * half..4 * half + 4 {
                        let v = _mm512_loadu_si512(lp.add((pair * 8 + quad) * 64) as *const _);
                        let mut h =
                            _mm512_loadu_si512(hp.add((pair / 2 * 8 + quad) * 64) as *const _);
                        if pair % 2 == 1 {
                            h = _mm512_srli_epi16::<2>(h);
                        }
                        // This pair's high bits alone, at bits 4-5 and 0-1.
                        let h = _mm512_and_si512(h, pair_bits);
                        // Bits 0-3 from the nibbles, 4-7 from the high
                        // bits (6-7 clear): `nibble ? a : b`.
                        let w = [
                            _mm512_ternarylogic_epi32::<0xE4>(v, h, nibble),
                            _mm512_ternarylogic_epi32::<0xE4>(
                                _mm512_srli_epi16::<4>(v),
                                _mm512_slli_epi16::<4>(h),
                                nibble,
                            ),
                        ];
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
}
