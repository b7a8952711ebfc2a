//! Several input rows at once with AVX-512: a register-blocked kernel. A
//! block of up to 16 weight rows is widened to f32 once per 256 columns (a
//! 16 KB buffer that stays in L1; f32 weights are read in place), then every
//! four input rows meet every four weight rows in sixteen accumulators, with
//! one horizontal sum per four outputs. The dot tiles instead widen a
//! weight row once per four input rows and sum every output horizontally,
//! which leaves them compute-bound well below the memory speed from four
//! rows on.

use std::arch::x86_64::*;
use std::ops::Range;

use half::bf16;

use super::{WeightRows, Q8_0_BYTES};
use crate::kernels::x86::reduce4;

/// Weight rows per block, and columns per widened chunk.
const J: usize = 16;
const KC: usize = 256;

/// For weight rows `js` of `w` (`[n, k]`, `k` a multiple of 16): their
/// dots with every input row of `x` (`m` rows `stride` apart), handed to
/// `store(row, first weight row, dots)` a row's run of outputs at a time.
///
/// # Safety
/// The CPU has AVX-512F and BW, AVX2, FMA and F16C, and `js` are rows of
/// `w` (the input's length is checked).
#[target_feature(enable = "avx512f,avx512bw,avx2,fma,f16c")]
pub unsafe fn columns(
    w: WeightRows<'_>,
    js: Range<usize>,
    m: usize,
    stride: usize,
    k: usize,
    x: &[f32],
    store: impl Fn(usize, usize, &[f32]),
) {
    assert!(k.is_multiple_of(16) && x.len() >= (m - 1) * stride + k);
    let mut wide = vec![0f32; J * KC];
    let mut sums = vec![0f32; m * J];
    let mut j0 = js.start;
    while j0 < js.end {
        let rows = (js.end - j0).min(J);
        sums.iter_mut().for_each(|s| *s = 0.0);
        let mut k0 = 0;
        while k0 < k {
            let kc = (k - k0).min(KC);
            // The block's weights for columns k0..k0 + kc, as f32 rows
            // `wstride` apart.
            let (wp, wstride) = match w {
                WeightRows::F32(w) => (w.as_ptr().add(j0 * k + k0), k),
                WeightRows::Bf16(w) => {
                    for r in 0..rows {
                        widen_bf16(&w[(j0 + r) * k + k0..][..kc], &mut wide[r * KC..]);
                    }
                    (wide.as_ptr(), KC)
                }
                WeightRows::Q8_0(w) => {
                    let row = k / 32 * Q8_0_BYTES;
                    for r in 0..rows {
                        let blocks = &w[(j0 + r) * row + k0 / 32 * Q8_0_BYTES..];
                        widen_q8_0(&blocks[..kc / 32 * Q8_0_BYTES], &mut wide[r * KC..]);
                    }
                    (wide.as_ptr(), KC)
                }
            };
            let mut r0 = 0;
            while r0 < m {
                let xr = x.as_ptr().add(r0 * stride + k0);
                let sr = sums.as_mut_ptr().add(r0 * J);
                match (m - r0).min(4) {
                    4 => block::<4>(xr, stride, wp, wstride, rows, kc, sr),
                    3 => block::<3>(xr, stride, wp, wstride, rows, kc, sr),
                    2 => block::<2>(xr, stride, wp, wstride, rows, kc, sr),
                    _ => block::<1>(xr, stride, wp, wstride, rows, kc, sr),
                }
                r0 += 4;
            }
            k0 += kc;
        }
        for i in 0..m {
            store(i, j0, &sums[i * J..][..rows]);
        }
        j0 += rows;
    }
}

/// `sums[i·J + c] += x_i · w_c` over `kc` columns for `R` input rows and
/// the block's `rows` weight rows, four weight rows at a time.
///
/// # Safety
/// From AVX-512F code; `x` points at `R` rows `stride` apart, `w` at `rows`
/// weight rows `wstride` apart, each with `kc` readable numbers (`kc` a
/// multiple of 16), and `sums` at `R` writable rows of [`J`].
#[inline(always)]
unsafe fn block<const R: usize>(
    x: *const f32,
    stride: usize,
    w: *const f32,
    wstride: usize,
    rows: usize,
    kc: usize,
    sums: *mut f32,
) {
    let mut c = 0;
    while c + 4 <= rows {
        micro::<R, 4>(x, stride, w.add(c * wstride), wstride, kc, sums.add(c));
        c += 4;
    }
    while c < rows {
        micro::<R, 1>(x, stride, w.add(c * wstride), wstride, kc, sums.add(c));
        c += 1;
    }
}

/// `R` input rows against `C` ≤ 4 weight rows: `R·C` independent sums.
///
/// # Safety
/// As [`block`], for `C` weight rows.
#[inline(always)]
unsafe fn micro<const R: usize, const C: usize>(
    x: *const f32,
    stride: usize,
    w: *const f32,
    wstride: usize,
    kc: usize,
    sums: *mut f32,
) {
    let mut acc = [[_mm512_setzero_ps(); C]; R];
    let mut c = 0;
    while c < kc {
        let wv: [__m512; C] = std::array::from_fn(|j| _mm512_loadu_ps(w.add(j * wstride + c)));
        for (r, acc) in acc.iter_mut().enumerate() {
            let xv = _mm512_loadu_ps(x.add(r * stride + c));
            for (a, wv) in acc.iter_mut().zip(&wv) {
                *a = _mm512_fmadd_ps(xv, *wv, *a);
            }
        }
        c += 16;
    }
    for (r, acc) in acc.iter().enumerate() {
        let total = reduce4(acc);
        let s = sums.add(r * J);
        for (i, t) in total[..C].iter().enumerate() {
            *s.add(i) += t;
        }
    }
}

/// `src` (bf16) widened into the start of `dst`.
///
/// # Safety
/// From AVX-512F and BW code (the lengths are checked).
#[inline(always)]
unsafe fn widen_bf16(src: &[bf16], dst: &mut [f32]) {
    assert!(dst.len() >= src.len() && src.len().is_multiple_of(16));
    for (i, chunk) in src.chunks_exact(16).enumerate() {
        let h = _mm256_loadu_si256(chunk.as_ptr() as *const __m256i);
        let v = _mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h));
        _mm512_storeu_ps(dst.as_mut_ptr().add(16 * i), _mm512_castsi512_ps(v));
    }
}

/// Q8_0 blocks `src` dequantized into the start of `dst`.
///
/// # Safety
/// From AVX-512F, BW and F16C code (the lengths are checked).
#[inline(always)]
unsafe fn widen_q8_0(src: &[u8], dst: &mut [f32]) {
    assert!(dst.len() >= src.len() / Q8_0_BYTES * 32);
    for (b, block) in src.chunks_exact(Q8_0_BYTES).enumerate() {
        let bits = u16::from_le_bytes([block[0], block[1]]);
        let scale = _mm512_broadcastss_ps(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)));
        for i in 0..2 {
            let q = _mm_loadu_si128(block.as_ptr().add(2 + 16 * i) as *const __m128i);
            let v = _mm512_mul_ps(scale, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q)));
            _mm512_storeu_ps(dst.as_mut_ptr().add(32 * b + 16 * i), v);
        }
    }
}
