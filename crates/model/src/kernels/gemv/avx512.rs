//! One weight row against one input row with 16-lane AVX-512 vectors: half
//! the instructions per weight of the AVX2 tiles, which a single row needs
//! to keep up with memory (most of all Q8_0, whose widening is the work).
//! From two rows on the AVX2 tiles are as fast or faster (`--bench
//! kernels`; figures in `crates/model/benches/README.md`).

use half::bf16;
use std::arch::x86_64::*;

use super::PREFETCH_BYTES;
use crate::kernels::x86::{prefetch, prefetches};

/// Sixteen bf16 at `p` widened to f32.
///
/// # Safety
/// From AVX-512F and BW code, and `p` points at 16 readable bf16.
#[inline(always)]
unsafe fn load_bf16(p: *const bf16) -> __m512 {
    let h = _mm256_loadu_si256(p as *const __m256i);
    _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)))
}

/// # Safety
/// From AVX-512F code, and `p` points at 16 readable f32.
#[inline(always)]
unsafe fn load_f32(p: *const f32) -> __m512 {
    _mm512_loadu_ps(p)
}

/// A dense weight row's dot with `x`, 32 columns a step.
macro_rules! dot {
    ($name:ident, $elem:ty, $load:expr, $scalar:expr) => {
        /// # Safety
        /// The CPU has AVX-512F and AVX-512BW (the lengths are checked).
        #[target_feature(enable = "avx512f,avx512bw")]
        pub unsafe fn $name(w: &[$elem], x: &[f32], k: usize) -> f32 {
            assert!(w.len() >= k && x.len() >= k);
            let (wp, xp) = (w.as_ptr(), x.as_ptr());
            let (mut a0, mut a1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
            let main = k / 32 * 32;
            let on = prefetches();
            let mut c = 0;
            while c < main {
                prefetch(on, (wp.add(c) as *const u8).wrapping_add(PREFETCH_BYTES), 1);
                a0 = _mm512_fmadd_ps($load(wp.add(c)), _mm512_loadu_ps(xp.add(c)), a0);
                a1 = _mm512_fmadd_ps($load(wp.add(c + 16)), _mm512_loadu_ps(xp.add(c + 16)), a1);
                c += 32;
            }
            let mut s = _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
            for cc in main..k {
                s += $scalar(*wp.add(cc)) * *xp.add(cc);
            }
            s
        }
    };
}

dot!(dot_f32, f32, load_f32, |v: f32| v);
dot!(dot_bf16, bf16, load_bf16, |v: bf16| v.to_f32());

/// A Q8_0 row's dot with `x`: per block, the 32 weights are widened to
/// two vectors, scaled, and multiplied into two running sums.
///
/// # Safety
/// The CPU has AVX-512F, AVX-512BW and F16C (the lengths are checked).
#[target_feature(enable = "avx512f,avx512bw,f16c")]
pub unsafe fn dot_q8_0(w: &[u8], x: &[f32], k: usize) -> f32 {
    assert!(w.len() >= k / 32 * 34 && x.len() >= k);
    let (wp, xp) = (w.as_ptr(), x.as_ptr());
    let on = prefetches();
    let (mut a0, mut a1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
    for b in 0..k / 32 {
        let block = wp.add(b * 34);
        prefetch(on, block.wrapping_add(PREFETCH_BYTES), 1);
        let bits = u16::from_le_bytes([*block, *block.add(1)]);
        let scale = _mm512_broadcastss_ps(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)));
        let widen = |i: usize| {
            let q = _mm_loadu_si128(block.add(2 + 16 * i) as *const __m128i);
            _mm512_mul_ps(scale, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q)))
        };
        let (w0, w1) = (widen(0), widen(1));
        let x = xp.add(b * 32);
        a0 = _mm512_fmadd_ps(w0, _mm512_loadu_ps(x), a0);
        a1 = _mm512_fmadd_ps(w1, _mm512_loadu_ps(x.add(16)), a1);
    }
    _mm512_reduce_add_ps(_mm512_add_ps(a0, a1))
}
