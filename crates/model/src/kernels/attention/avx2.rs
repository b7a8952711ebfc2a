//! The AVX2 + FMA inner loops of an item's attention.

use std::arch::x86_64::*;

use super::Latent;

/// # Safety
/// The CPU has AVX (called from the AVX2 + FMA paths).
#[inline(always)]
unsafe fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
}

/// `out[h]` = the dot product of the `h`-th of `H` consecutive
/// `width`-long query rows of `q` with `key`.
///
/// # Safety
/// The CPU has AVX2 and FMA (the lengths are checked).
#[inline(always)]
pub unsafe fn dots<E: Latent, const H: usize>(
    q: &[f32],
    width: usize,
    key: &[E],
    out: &mut [f32; 4],
) {
    assert!(q.len() >= H * width && key.len() >= width);
    let (qp, kp) = (q.as_ptr(), key.as_ptr());
    let mut acc = [_mm256_setzero_ps(); H];
    let mut c = 0;
    while c + 8 <= width {
        let k = E::load8(kp.add(c));
        for (h, a) in acc.iter_mut().enumerate() {
            *a = _mm256_fmadd_ps(_mm256_loadu_ps(qp.add(h * width + c)), k, *a);
        }
        c += 8;
    }
    for h in 0..H {
        out[h] = hsum(acc[h]);
        for i in c..width {
            out[h] += q[h * width + i] * key[i].to_f32();
        }
    }
}

/// `out[h·rank + c] += Σ_t p[h·stride + t] · rows[t][c]` for `H` heads,
/// 16 columns at a time held in registers over all rows.
///
/// # Safety
/// The CPU has AVX2 and FMA (the lengths are checked).
#[inline(always)]
pub unsafe fn weighted_sums<E: Latent, const H: usize>(
    p: &[f32],
    stride: usize,
    rows: &[&[E]],
    rank: usize,
    out: &mut [f32],
) {
    assert!(p.len() >= (H - 1) * stride + rows.len() && out.len() >= H * rank);
    let (pp, op) = (p.as_ptr(), out.as_mut_ptr());
    let mut c = 0;
    while c + 16 <= rank {
        let mut acc = [[_mm256_setzero_ps(); 2]; H];
        for (t, v) in rows.iter().enumerate() {
            assert!(v.len() >= rank);
            let v0 = E::load8(v.as_ptr().add(c));
            let v1 = E::load8(v.as_ptr().add(c + 8));
            for (h, a) in acc.iter_mut().enumerate() {
                let w = _mm256_broadcast_ss(&*pp.add(h * stride + t));
                a[0] = _mm256_fmadd_ps(w, v0, a[0]);
                a[1] = _mm256_fmadd_ps(w, v1, a[1]);
            }
        }
        for (h, a) in acc.iter().enumerate() {
            let o = op.add(h * rank + c);
            _mm256_storeu_ps(o, _mm256_add_ps(_mm256_loadu_ps(o), a[0]));
            _mm256_storeu_ps(o.add(8), _mm256_add_ps(_mm256_loadu_ps(o.add(8)), a[1]));
        }
        c += 16;
    }
    if c < rank {
        for (t, row) in rows.iter().enumerate() {
            let v = &row[c..rank];
            for h in 0..H {
                super::axpy(&mut out[h * rank + c..(h + 1) * rank], p[h * stride + t], v);
            }
        }
    }
}

/// `dst[..src.len()]` := `src`, widened eight numbers at a time.
///
/// # Safety
/// The CPU has AVX2 and F16C (the lengths are checked).
#[inline(always)]
pub unsafe fn widen<E: Latent>(src: &[E], dst: &mut [f32]) {
    assert!(dst.len() >= src.len());
    let mut c = 0;
    while c + 8 <= src.len() {
        _mm256_storeu_ps(dst.as_mut_ptr().add(c), E::load8(src.as_ptr().add(c)));
        c += 8;
    }
    for (d, s) in dst[c..src.len()].iter_mut().zip(&src[c..]) {
        *d = s.to_f32();
    }
}
