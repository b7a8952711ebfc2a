//! The decode GEMV's tiles with AVX2 + FMA (+ F16C for Q8_0 scales): one
//! weight row against up to four input rows.

use half::bf16;
use std::arch::x86_64::*;

/// # Safety
/// The CPU has AVX2 and FMA.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn hsum(v: __m256) -> f32 {
    let lo = _mm256_castps256_ps128(v);
    let hi = _mm256_extractf128_ps(v, 1);
    let s = _mm_add_ps(lo, hi);
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    _mm_cvtss_f32(s)
}

/// Eight bf16 at `p` widened to f32.
///
/// # Safety
/// The CPU has AVX2 and FMA, and `p` points at 8 readable bf16.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn load_bf16(p: *const bf16) -> __m256 {
    let h = _mm_loadu_si128(p as *const __m128i);
    _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16))
}

/// One weight row (`$load(c)` gives its 8 weights at column `c`,
/// `$scalar(c)` one) against `t` ≤ 4 input rows.
macro_rules! tile {
    ($name:ident, $inner:ident, $elem:ty, $load:expr, $scalar:expr) => {
        /// `T` is a constant so that the accumulators live in registers.
        ///
        /// # Safety
        /// The CPU has AVX2 and FMA; `w` holds `k` weights, and `xs` `T` rows
        /// `stride` apart of `k` numbers each.
        #[inline]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn $inner<const T: usize>(
            w: &[$elem],
            xs: &[f32],
            stride: usize,
            k: usize,
            dots: &mut [f32; 4],
        ) {
            let wp = w.as_ptr();
            let xp = xs.as_ptr();
            // Two accumulators per input row hide the FMA latency.
            let mut a0 = [_mm256_setzero_ps(); T];
            let mut a1 = [_mm256_setzero_ps(); T];
            let main = k / 16 * 16;
            let on = prefetches();
            let mut c = 0;
            while c < main {
                // Where the hardware prefetcher alone leaves the weight
                // stream short of the bandwidth (see `prefetches`), the
                // bytes a few rows of work ahead are asked for.
                prefetch(on, (wp.add(c) as *const u8).wrapping_add(PREFETCH_BYTES), 1);
                let w0 = $load(wp.add(c));
                let w1 = $load(wp.add(c + 8));
                for r in 0..T {
                    let x = xp.add(r * stride + c);
                    a0[r] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x), a0[r]);
                    a1[r] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x.add(8)), a1[r]);
                }
                c += 16;
            }
            for r in 0..T {
                let mut s = hsum(_mm256_add_ps(a0[r], a1[r]));
                for cc in main..k {
                    s += $scalar(*wp.add(cc)) * *xp.add(r * stride + cc);
                }
                dots[r] = s;
            }
        }

        /// # Safety
        /// The CPU has AVX2 and FMA; `w` holds `k` weights, and `xs` `t` (at most
        /// 4) rows `stride` apart of `k` numbers each.
        #[target_feature(enable = "avx2,fma")]
        pub unsafe fn $name(
            w: &[$elem],
            xs: &[f32],
            stride: usize,
            t: usize,
            k: usize,
            dots: &mut [f32; 4],
        ) {
            match t {
                1 => $inner::<1>(w, xs, stride, k, dots),
                2 => $inner::<2>(w, xs, stride, k, dots),
                3 => $inner::<3>(w, xs, stride, k, dots),
                _ => $inner::<4>(w, xs, stride, k, dots),
            }
        }
    };
}

use super::PREFETCH_BYTES;
use crate::kernels::x86::{prefetch, prefetches};

tile!(dot_tile_f32, tile_f32, f32, load_f32, |v: f32| v);
tile!(dot_tile_bf16, tile_bf16, bf16, load_bf16, |v: bf16| v
    .to_f32());

/// Q8_0 rows: per block, the 32 weights are widened once and used for
/// every input row; the block's dot is scaled into the running sum.
///
/// # Safety
/// The CPU has AVX2, FMA and F16C; `w` holds `k / 32` Q8_0 blocks (`k` a
/// multiple of 32), and `xs` `T` rows `stride` apart of `k` numbers each.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q8_0_tile<const T: usize>(
    w: &[u8],
    xs: &[f32],
    stride: usize,
    k: usize,
    dots: &mut [f32; 4],
) {
    let wp = w.as_ptr();
    let xp = xs.as_ptr();
    let mut total = [_mm256_setzero_ps(); T];
    for b in 0..k / 32 {
        let block = wp.add(b * 34);
        // The f16 scale, widened by the F16C instruction (half's portable
        // conversion is a call per block, which dominated the kernel).
        let bits = u16::from_le_bytes([*block, *block.add(1)]);
        let scale = _mm256_cvtph_ps(_mm_set1_epi16(bits as i16));
        let q = block.add(2);
        let mut wv = [_mm256_setzero_ps(); 4];
        for (i, v) in wv.iter_mut().enumerate() {
            let bytes = _mm_loadl_epi64(q.add(8 * i) as *const __m128i);
            *v = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(bytes));
        }
        for (r, tot) in total.iter_mut().enumerate() {
            let x = xp.add(r * stride + b * 32);
            let mut acc = _mm256_mul_ps(wv[0], _mm256_loadu_ps(x));
            acc = _mm256_fmadd_ps(wv[1], _mm256_loadu_ps(x.add(8)), acc);
            acc = _mm256_fmadd_ps(wv[2], _mm256_loadu_ps(x.add(16)), acc);
            acc = _mm256_fmadd_ps(wv[3], _mm256_loadu_ps(x.add(24)), acc);
            *tot = _mm256_fmadd_ps(scale, acc, *tot);
        }
    }
    for r in 0..T {
        dots[r] = hsum(total[r]);
    }
}

/// # Safety
/// The CPU has AVX2, FMA and F16C; `w` holds `k / 32` Q8_0 blocks (`k` a
/// multiple of 32), and `xs` `t` (at most 4) rows `stride` apart of `k`
/// numbers each.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_tile_q8_0(
    w: &[u8],
    xs: &[f32],
    stride: usize,
    t: usize,
    k: usize,
    dots: &mut [f32; 4],
) {
    match t {
        1 => q8_0_tile::<1>(w, xs, stride, k, dots),
        2 => q8_0_tile::<2>(w, xs, stride, k, dots),
        3 => q8_0_tile::<3>(w, xs, stride, k, dots),
        _ => q8_0_tile::<4>(w, xs, stride, k, dots),
    }
}

/// # Safety
/// The CPU has AVX2 and FMA, and `p` points at 8 readable f32.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn load_f32(p: *const f32) -> __m256 {
    _mm256_loadu_ps(p)
}
