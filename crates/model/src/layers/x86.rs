//! Small AVX-512 helpers the kernels share.

use std::arch::x86_64::*;

/// The sums of `H <= 4` vectors, in order (the rest zero).
#[inline(always)]
pub(crate) unsafe fn reduce4<const H: usize>(acc: &[__m512; H]) -> [f32; 4] {
    let mut y = [_mm256_setzero_ps(); 4];
    for (y, a) in y.iter_mut().zip(acc) {
        let high = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(*a)));
        *y = _mm256_add_ps(_mm512_castps512_ps256(*a), high);
    }
    // Per 128-bit lane: [Σy0, Σy1, Σy2, Σy3] of that lane's halves.
    let s = _mm256_hadd_ps(_mm256_hadd_ps(y[0], y[1]), _mm256_hadd_ps(y[2], y[3]));
    let s = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps::<1>(s));
    let mut out = [0f32; 4];
    _mm_storeu_ps(out.as_mut_ptr(), s);
    out
}
