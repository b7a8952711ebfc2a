//! The AVX-512 inner loops of an item's attention.

use std::arch::x86_64::*;

use super::Latent;
use crate::kernels::x86::exp512;

/// Lanes `0..n` of a 16-lane mask (all for `n >= 16`).
#[inline(always)]
fn lanes(n: usize) -> __mmask16 {
    if n >= 16 {
        0xffff
    } else {
        (1u16 << n) - 1
    }
}

/// `out[r][h]` = the dot product of the `h`-th of `H` consecutive
/// `width`-long query rows of `q` with `keys[r]`.
///
/// # Safety
/// The CPU has AVX-512F and AVX-512BW (the lengths are checked).
#[inline(always)]
pub unsafe fn dots<E: Latent, const H: usize, const R: usize>(
    q: &[f32],
    width: usize,
    keys: [&[E]; R],
    out: &mut [[f32; 4]; R],
) {
    assert!(q.len() >= H * width && keys.iter().all(|k| k.len() >= width));
    let qp = q.as_ptr();
    let mut acc = [[_mm512_setzero_ps(); R]; H];
    let mut c = 0;
    while c < width {
        // Masked-off lanes are neither read nor faulted on.
        let m = lanes(width - c);
        let mut k = [_mm512_setzero_ps(); R];
        for (k, key) in k.iter_mut().zip(&keys) {
            *k = E::load16(key.as_ptr().add(c), m);
        }
        for (h, a) in acc.iter_mut().enumerate() {
            let qv = _mm512_maskz_loadu_ps(m, qp.add(h * width + c));
            for (a, k) in a.iter_mut().zip(&k) {
                *a = _mm512_fmadd_ps(qv, *k, *a);
            }
        }
        c += 16;
    }
    for (r, o) in out.iter_mut().enumerate() {
        *o = crate::kernels::x86::reduce4(&std::array::from_fn::<_, H, _>(|h| acc[h][r]));
    }
}

/// [`super::softmax_rows`] sixteen scores at a time, with
/// [`exp512`]: glibc's scalar `expf` took about a tenth of the
/// attention (`--bench kernels -- attention`).
///
/// # Safety
/// The CPU has AVX-512F.
#[inline(always)]
pub unsafe fn softmax_rows(scores: &mut [f32], context: usize) -> Vec<super::RowStats> {
    // A loop, not `map`: a closure's body is a function of its own, without
    // the caller's target features, so the intrinsics inlined into it would
    // be calls (a tenth of the decode attention's time, by perf).
    let mut stats = Vec::with_capacity(scores.len() / context);
    for s in scores.chunks_exact_mut(context) {
        stats.push(softmax_row(s));
    }
    stats
}

/// [`softmax_rows`] of one row.
///
/// # Safety
/// The CPU has AVX-512F.
#[inline(always)]
pub unsafe fn softmax_row(s: &mut [f32]) -> super::RowStats {
    let mut maxima = _mm512_set1_ps(f32::NEG_INFINITY);
    for chunk in s.chunks(16) {
        let m = lanes(chunk.len());
        maxima = _mm512_mask_max_ps(maxima, m, maxima, _mm512_maskz_loadu_ps(m, chunk.as_ptr()));
    }
    let max = _mm512_reduce_max_ps(maxima);
    let mut sum = _mm512_setzero_ps();
    for chunk in s.chunks_mut(16) {
        let m = lanes(chunk.len());
        let p = chunk.as_mut_ptr();
        let v = _mm512_maskz_loadu_ps(m, p);
        let e = exp512(_mm512_sub_ps(v, _mm512_set1_ps(max)));
        _mm512_mask_storeu_ps(p, m, e);
        sum = _mm512_mask_add_ps(sum, m, sum, e);
    }
    super::RowStats {
        max,
        sum: _mm512_reduce_add_ps(sum),
    }
}

/// `out[h·rank + c] += Σ_t p[h·stride + t] · rows[t][c]` for `H` heads:
/// 64 columns at a time held in registers over all rows, then 16 (the
/// last ones masked).
///
/// # Safety
/// The CPU has AVX-512F and AVX-512BW (the lengths are checked).
#[inline(always)]
pub unsafe fn weighted_sums<E: Latent, const H: usize>(
    p: &[f32],
    stride: usize,
    rows: &[&[E]],
    rank: usize,
    out: &mut [f32],
) {
    assert!(p.len() >= (H - 1) * stride + rows.len() && out.len() >= H * rank);
    let mut c = 0;
    while c + 64 <= rank {
        columns::<E, H, 4>(p, stride, rows, rank, c, 0xffff, out);
        c += 64;
    }
    while c < rank {
        columns::<E, H, 1>(p, stride, rows, rank, c, lanes(rank - c), out);
        c += 16;
    }
}

/// `dst[..src.len()]` := `src`, widened sixteen numbers at a time.
///
/// # Safety
/// The CPU has AVX-512F and AVX-512BW (the lengths are checked).
#[inline(always)]
pub unsafe fn widen<E: Latent>(src: &[E], dst: &mut [f32]) {
    assert!(dst.len() >= src.len());
    let mut c = 0;
    while c < src.len() {
        let m = lanes(src.len() - c);
        let v = E::load16(src.as_ptr().add(c), m);
        _mm512_mask_storeu_ps(dst.as_mut_ptr().add(c), m, v);
        c += 16;
    }
}

/// [`weighted_sums`] for the `16·V` columns from `c`, the last 16 of
/// them masked by `last`.
///
/// # Safety
/// The CPU has AVX-512F and AVX-512BW; `p` holds `H` rows `stride` apart
/// of `rows.len()` numbers, `out` and every row at least `H·rank` and
/// `rank` numbers, and the columns `c..c + 16·V` lie within `rank` but for
/// the lanes `last` masks off (as [`weighted_sums`] calls it).
#[inline(always)]
unsafe fn columns<E: Latent, const H: usize, const V: usize>(
    p: &[f32],
    stride: usize,
    rows: &[&[E]],
    rank: usize,
    c: usize,
    last: __mmask16,
    out: &mut [f32],
) {
    let mask = |i: usize| if i + 1 == V { last } else { 0xffff };
    let mut acc = [[_mm512_setzero_ps(); V]; H];
    for (t, row) in rows.iter().enumerate() {
        assert!(row.len() >= rank);
        let mut v = [_mm512_setzero_ps(); V];
        for (i, v) in v.iter_mut().enumerate() {
            *v = E::load16(row.as_ptr().add(c + 16 * i), mask(i));
        }
        for (h, a) in acc.iter_mut().enumerate() {
            let w = _mm512_set1_ps(*p.as_ptr().add(h * stride + t));
            for i in 0..V {
                a[i] = _mm512_fmadd_ps(w, v[i], a[i]);
            }
        }
    }
    for (h, a) in acc.iter().enumerate() {
        for (i, a) in a.iter().enumerate() {
            let o = out.as_mut_ptr().add(h * rank + c + 16 * i);
            let sum = _mm512_add_ps(_mm512_maskz_loadu_ps(mask(i), o), *a);
            _mm512_mask_storeu_ps(o, mask(i), sum);
        }
    }
}
