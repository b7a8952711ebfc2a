//! GGML's 32-number formats of 4 and 5 bits (Q4_0, Q4_1, Q5_0, Q5_1)
//! repacked for the VNNI kernel.
//!
//! A block holds 32 weights of one row, `q` unsigned (4 bits, or 4 and a
//! fifth), under an f16 `d`: `w = d·(q - 8)` (Q4_0), `d·(q - 16)` (Q5_0), or
//! `d·q + m` with an f16 `m` (Q4_1, Q5_1). Here each 16-row tile keeps a
//! block's nibbles as GGML stores them, byte `j` holding weight `j` in its
//! low nibble and `j + 16` in its high one, reordered as `[4 k-quads][16
//! rows][4 bytes]`: one load and two masks give the `vpdpbusd` operands for
//! the input's quads `q` and `q + 4`. The 5-bit formats' fifth bits follow
//! as one more 64 bytes, `[16 rows][4 bytes]`, a byte holding the bits of
//! quad `q`'s two weights at bits `4 + q` (the low nibble's) and `q` (the
//! high one's), joined to the nibbles as [`PackedQ5K`](super::PackedQ5K)
//! joins its own. Beside them, per block, the 16 rows' `d`, then (Q4_1,
//! Q5_1) their `m`. The integer sum of a block is exact, the `_0` formats'
//! offset taken off through the input block's sum: bytes as GGML's, 4.5,
//! 5, 5.5 and 6 bits a weight. Where a file's rows are not whole 256-wide
//! super-blocks (DeepSeek-V2-Lite's 1408-wide expert down projections),
//! llama.cpp stores a K-quant's weights in these.

use super::super_blocks::{Layout, SuperBlocks, Unit};
use super::{BLOCK, TILE};

/// Nibble bytes per tile and block.
pub(crate) const TILE_NIBBLES: usize = TILE * BLOCK / 2;
/// Fifth-bit bytes per tile and block (the 5-bit formats).
pub(crate) const TILE_FIFTHS: usize = TILE * BLOCK / 8;

/// One `[n, k]` weight in a legacy format (`n` a multiple of 16, `k` of
/// 32), repacked. Per unit: the nibbles `[4][16][4]`, then the fifth bits
/// `[16][4]`; the rows' `d` (`[16]`), then their `m` (`[16]`).
pub type PackedLegacy = SuperBlocks<Legacy>;

/// Which legacy format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Legacy {
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
}

impl Legacy {
    /// The format of `ggml`, if it is one of these.
    pub fn of(ggml: candle_core::quantized::GgmlDType) -> Option<Legacy> {
        use candle_core::quantized::GgmlDType;
        match ggml {
            GgmlDType::Q4_0 => Some(Legacy::Q4_0),
            GgmlDType::Q4_1 => Some(Legacy::Q4_1),
            GgmlDType::Q5_0 => Some(Legacy::Q5_0),
            GgmlDType::Q5_1 => Some(Legacy::Q5_1),
            _ => None,
        }
    }

    /// The format's name, as candle's GGML types are named.
    pub fn name(self) -> &'static str {
        match self {
            Legacy::Q4_0 => "q4_0",
            Legacy::Q4_1 => "q4_1",
            Legacy::Q5_0 => "q5_0",
            Legacy::Q5_1 => "q5_1",
        }
    }

    /// Whether its numbers have a fifth bit.
    pub(crate) fn fifths(self) -> bool {
        matches!(self, Legacy::Q5_0 | Legacy::Q5_1)
    }

    /// Whether its blocks have a min `m` (else an offset of half the
    /// numbers' range).
    pub(crate) fn min(self) -> bool {
        matches!(self, Legacy::Q4_1 | Legacy::Q5_1)
    }

    /// What a number's `q` is less of in the `_0` formats.
    pub(crate) fn offset(self) -> i32 {
        match self {
            Legacy::Q4_0 => 8,
            Legacy::Q5_0 => 16,
            Legacy::Q4_1 | Legacy::Q5_1 => 0,
        }
    }
}

/// Where quad `quad`'s weights' fifth bits sit in their byte: the low
/// nibble's (weight `4·quad + b`) at `4 + quad`, the high one's (weight
/// `16 + 4·quad + b`) at `quad`.
pub(crate) const fn fifth_shifts(quad: usize) -> (usize, usize) {
    (4 + quad, quad)
}

impl Layout for Legacy {
    type Scale = u8;

    fn width(self) -> usize {
        BLOCK
    }
    fn bits(self) -> usize {
        TILE_NIBBLES + if self.fifths() { TILE_FIFTHS } else { 0 }
    }
    fn d(self) -> usize {
        TILE * if self.min() { 2 } else { 1 }
    }
    fn scales(self) -> usize {
        0
    }
    fn numbers(self, (bits, d, _): Unit<'_, u8>, r: usize, out: &mut [f32]) {
        let scale = d[r].to_f32();
        let min = if self.min() {
            d[TILE + r].to_f32()
        } else {
            0.0
        };
        for (i, o) in out.iter_mut().enumerate() {
            let (high, within) = (i / 16, i % 16);
            let (quad, b) = (within / 4, within % 4);
            let mut q = bits[(quad * TILE + r) * 4 + b] >> (4 * high) & 0x0F;
            if self.fifths() {
                let (low_at, high_at) = fifth_shifts(quad);
                let at = if high == 0 { low_at } else { high_at };
                q |= (bits[TILE_NIBBLES + r * 4 + b] >> at & 1) << 4;
            }
            *o = scale * (q as i32 - self.offset()) as f32 + min;
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub(super) mod vnni {
    use std::arch::x86_64::*;

    use super::super::q4k::vnni::operands;
    use super::super::{Row, ROWS};
    use super::{Legacy, BLOCK, TILE, TILE_FIFTHS, TILE_NIBBLES};
    use crate::kernels::x86::{prefetch, tile_prefetches};

    /// How far ahead of the block in use its bits are prefetched, where it
    /// helps (`x86::tile_prefetches`): about 4 KB, as for Q8_0.
    const PREFETCH_BLOCKS: usize = 16;

    /// [`tiles`] on Q4_0 units.
    ///
    /// # Safety
    /// As [`tiles`].
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub unsafe fn q4_0<const R: usize>(
        rows: &[Row],
        bits: &[u8],
        d: &[half::f16],
        out: &mut [[f32; TILE]; ROWS],
    ) {
        tiles::<R, false, false>(rows, bits, d, Legacy::Q4_0.offset(), out)
    }

    /// [`tiles`] on Q4_1 units.
    ///
    /// # Safety
    /// As [`tiles`].
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub unsafe fn q4_1<const R: usize>(
        rows: &[Row],
        bits: &[u8],
        d: &[half::f16],
        out: &mut [[f32; TILE]; ROWS],
    ) {
        tiles::<R, false, true>(rows, bits, d, Legacy::Q4_1.offset(), out)
    }

    /// [`tiles`] on Q5_0 units.
    ///
    /// # Safety
    /// As [`tiles`].
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub unsafe fn q5_0<const R: usize>(
        rows: &[Row],
        bits: &[u8],
        d: &[half::f16],
        out: &mut [[f32; TILE]; ROWS],
    ) {
        tiles::<R, true, false>(rows, bits, d, Legacy::Q5_0.offset(), out)
    }

    /// [`tiles`] on Q5_1 units.
    ///
    /// # Safety
    /// As [`tiles`].
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub unsafe fn q5_1<const R: usize>(
        rows: &[Row],
        bits: &[u8],
        d: &[half::f16],
        out: &mut [[f32; TILE]; ROWS],
    ) {
        tiles::<R, true, true>(rows, bits, d, Legacy::Q5_1.offset(), out)
    }

    /// The 16 dots of one tile's rows with each of the first `R` of `rows`,
    /// its units of 4-bit numbers, with `FIFTHS` of 5, with `MIN` each
    /// block's min beside its scale, else `offset` taken off every number:
    /// each load of bits serves every row, with two integer sums per row
    /// (the low nibbles' and the high ones').
    ///
    /// # Safety
    /// The CPU has AVX-512F, AVX-512BW and AVX-512VNNI; `R` is at most
    /// [`ROWS`] (the lengths are checked).
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn tiles<const R: usize, const FIFTHS: bool, const MIN: bool>(
        rows: &[Row],
        bits: &[u8],
        d: &[half::f16],
        offset: i32,
        out: &mut [[f32; TILE]; ROWS],
    ) {
        let unit = TILE_NIBBLES + if FIFTHS { TILE_FIFTHS } else { 0 };
        let factors = TILE * if MIN { 2 } else { 1 };
        let blocks = rows[0].scales.len();
        assert!(bits.len() >= blocks * unit && d.len() >= blocks * factors);
        for row in &rows[..R] {
            assert!(row.q.len() >= blocks * BLOCK && row.sums.len() >= blocks);
        }
        let on = tile_prefetches(R);
        let mut total = [_mm512_setzero_ps(); R];
        for b in 0..blocks {
            let bp = bits.as_ptr().add(b * unit);
            prefetch(on, bp.wrapping_add(PREFETCH_BLOCKS * unit), unit / 64);
            let fifths = if FIFTHS {
                _mm512_loadu_si512(bp.add(TILE_NIBBLES) as *const _)
            } else {
                _mm512_setzero_si512()
            };
            // The `_0` formats' offset, taken off the first sum.
            let mut acc = [[_mm512_setzero_si512(); 2]; R];
            if !MIN {
                for (a, row) in acc.iter_mut().zip(rows) {
                    a[0] = _mm512_set1_epi32(-offset * row.sums[b]);
                }
            }
            for quad in 0..4 {
                let v = _mm512_loadu_si512(bp.add(quad * 64) as *const _);
                let shift = _mm_cvtsi32_si128(quad as i32);
                let w = operands(v, FIFTHS.then_some((fifths, shift)));
                for (a, row) in acc.iter_mut().zip(rows) {
                    for (half, w) in w.iter().enumerate() {
                        let at = b * BLOCK + half * 16 + quad * 4;
                        let x = (row.q.as_ptr().add(at) as *const i32).read_unaligned();
                        a[half] = _mm512_dpbusd_epi32(a[half], *w, _mm512_set1_epi32(x));
                    }
                }
            }
            let dp = d.as_ptr().add(b * factors);
            let dv = _mm512_cvtph_ps(_mm256_loadu_si256(dp as *const _));
            let mv = if MIN {
                _mm512_cvtph_ps(_mm256_loadu_si256(dp.add(TILE) as *const _))
            } else {
                _mm512_setzero_ps()
            };
            for ((t, a), row) in total.iter_mut().zip(&acc).zip(rows) {
                let sum = _mm512_cvtepi32_ps(_mm512_add_epi32(a[0], a[1]));
                let dot = if MIN {
                    _mm512_fmadd_ps(
                        sum,
                        dv,
                        _mm512_mul_ps(mv, _mm512_set1_ps(row.sums[b] as f32)),
                    )
                } else {
                    _mm512_mul_ps(sum, dv)
                };
                *t = _mm512_fmadd_ps(dot, _mm512_set1_ps(row.scales[b]), *t);
            }
        }
        for (o, t) in out.iter_mut().zip(&total) {
            _mm512_storeu_ps(o.as_mut_ptr(), *t);
        }
    }
}
