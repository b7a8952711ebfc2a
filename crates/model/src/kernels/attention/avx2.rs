//! The AVX2 + FMA inner loops of an item's attention.

use std::arch::x86_64::*;

use super::Latent;
use crate::kernels::x86::exp256;

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

/// `out[h·rank + c] += Σ_t p[h·stride + t·step] · rows[t][c]` for `H`
/// heads, 16 columns at a time held in registers over all rows.
///
/// # Safety
/// The CPU has AVX2 and FMA (the lengths are checked).
#[inline(always)]
pub unsafe fn weighted_sums<E: Latent, const H: usize>(
    p: &[f32],
    (stride, step): (usize, usize),
    rows: &[&[E]],
    rank: usize,
    out: &mut [f32],
) {
    assert!(out.len() >= H * rank);
    assert!(rows.is_empty() || p.len() > (H - 1) * stride + (rows.len() - 1) * step);
    let (pp, op) = (p.as_ptr(), out.as_mut_ptr());
    let mut c = 0;
    while c + 16 <= rank {
        let mut acc = [[_mm256_setzero_ps(); 2]; H];
        for (t, v) in rows.iter().enumerate() {
            assert!(v.len() >= rank);
            let v0 = E::load8(v.as_ptr().add(c));
            let v1 = E::load8(v.as_ptr().add(c + 8));
            for (h, a) in acc.iter_mut().enumerate() {
                let w = _mm256_broadcast_ss(&*pp.add(h * stride + t * step));
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
                let w = p[h * stride + t * step];
                super::axpy(&mut out[h * rank + c..(h + 1) * rank], w, v);
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

/// Heads one call of [`head_scores`] takes at most: four vectors.
const HEAD_BLOCK: usize = 32;

/// `scores[(first + t)·stride + h]` := Σ_c qt[c·stride + h] · keys[t][c],
/// for every key and each of the `stride` columns (a multiple of 8, the
/// heads and the zero columns after them): [`super::avx512::scores_by_head`]
/// with vectors of eight heads.
///
/// # Safety
/// The CPU has AVX2 and FMA (the lengths are checked).
#[inline(always)]
pub unsafe fn scores_by_head(
    qt: &[f32],
    stride: usize,
    width: usize,
    keys: &[&[f32]],
    first: usize,
    scores: &mut [f32],
) {
    assert!(stride.is_multiple_of(8));
    assert!(qt.len() >= width * stride && scores.len() >= (first + keys.len()) * stride);
    let ahead = crate::kernels::x86::prefetches();
    let mut h = 0;
    while h < stride {
        let n = (stride - h).min(HEAD_BLOCK);
        let (qt, out) = (
            qt.as_ptr().add(h),
            scores.as_mut_ptr().add(first * stride + h),
        );
        match n / 8 {
            1 => key_blocks::<1, 8>(qt, stride, width, keys, out, ahead),
            2 => key_blocks::<2, 4>(qt, stride, width, keys, out, ahead),
            3 => key_blocks::<3, 3>(qt, stride, width, keys, out, ahead),
            _ => key_blocks::<4, 2>(qt, stride, width, keys, out, ahead),
        }
        h += n;
    }
}

/// [`head_scores`] over `keys`, `R` at a time ([`super::key_block`]),
/// asking for the next block's rows meanwhile where `ahead`.
///
/// # Safety
/// As [`head_scores`], for every block of `keys`.
#[inline(always)]
unsafe fn key_blocks<const V: usize, const R: usize>(
    qt: *const f32,
    stride: usize,
    width: usize,
    keys: &[&[f32]],
    out: *mut f32,
    ahead: bool,
) {
    for t in (0..keys.len()).step_by(R) {
        let (block, take, next) = super::key_block::<R>(keys, t);
        let out = out.add(t * stride);
        head_scores::<V, R>(qt, stride, width, (block, take), out, (next, ahead));
    }
}

/// `out[r·stride + 8v + i]` := Σ_c qt[c·stride + 8v + i] · keys[r][c] for
/// the first `take` of `R` keys over `V` vectors of eight heads
/// ([`super::avx512`]'s `head_scores` on AVX2: sixteen registers hold
/// `R·V` sums, `V` query vectors and a broadcast key number).
///
/// # Safety
/// The CPU has AVX2 and FMA; `qt` holds `width` rows `stride` apart of
/// `8·V` numbers, and `out` `take` such rows (the keys' lengths are
/// checked).
#[inline(always)]
unsafe fn head_scores<const V: usize, const R: usize>(
    qt: *const f32,
    stride: usize,
    width: usize,
    (keys, take): ([&[f32]; R], usize),
    out: *mut f32,
    (next, ahead): ([*const f32; R], bool),
) {
    assert!(keys.iter().all(|k| k.len() >= width) && take <= R);
    let mut acc = [[_mm256_setzero_ps(); V]; R];
    for c in 0..width {
        if ahead && c % 16 == 0 {
            for n in &next {
                crate::kernels::x86::prefetch(true, n.wrapping_add(c) as *const u8, 1);
            }
        }
        let mut q = [_mm256_setzero_ps(); V];
        for (v, q) in q.iter_mut().enumerate() {
            *q = _mm256_loadu_ps(qt.add(c * stride + 8 * v));
        }
        for (a, key) in acc.iter_mut().zip(&keys) {
            let k = _mm256_broadcast_ss(key.get_unchecked(c));
            for (a, q) in a.iter_mut().zip(&q) {
                *a = _mm256_fmadd_ps(*q, k, *a);
            }
        }
    }
    for (r, a) in acc[..take].iter().enumerate() {
        for (v, a) in a.iter().enumerate() {
            _mm256_storeu_ps(out.add(r * stride + 8 * v), *a);
        }
    }
}

/// Per column of `scores` (`[rows, stride]`, `stride` a multiple of 8):
/// each score replaced by exp(score − the column's max), and the first
/// `heads` columns' maxima and sums; eight columns at a time.
///
/// # Safety
/// The CPU has AVX2 and FMA.
#[inline(always)]
pub unsafe fn softmax_columns(
    scores: &mut [f32],
    stride: usize,
    heads: usize,
) -> Vec<super::RowStats> {
    assert!(stride.is_multiple_of(8) && heads <= stride);
    let rows = scores.len() / stride;
    let p = scores.as_mut_ptr();
    let mut stats = Vec::with_capacity(heads);
    let mut h = 0;
    while h < heads {
        let mut max = _mm256_set1_ps(f32::NEG_INFINITY);
        for t in 0..rows {
            max = _mm256_max_ps(max, _mm256_loadu_ps(p.add(t * stride + h)));
        }
        let mut sum = _mm256_setzero_ps();
        for t in 0..rows {
            let at = p.add(t * stride + h);
            let e = exp256(_mm256_sub_ps(_mm256_loadu_ps(at), max));
            _mm256_storeu_ps(at, e);
            sum = _mm256_add_ps(sum, e);
        }
        let (mut maxima, mut sums) = ([0f32; 8], [0f32; 8]);
        _mm256_storeu_ps(maxima.as_mut_ptr(), max);
        _mm256_storeu_ps(sums.as_mut_ptr(), sum);
        for (&max, &sum) in maxima.iter().zip(&sums).take(heads - h) {
            stats.push(super::RowStats { max, sum });
        }
        h += 8;
    }
    stats
}

/// [`super::softmax_rows`] eight scores at a time, with [`exp256`].
///
/// # Safety
/// The CPU has AVX2 and FMA.
#[inline(always)]
pub unsafe fn softmax_rows(scores: &mut [f32], context: usize) -> Vec<super::RowStats> {
    let mut stats = Vec::with_capacity(scores.len() / context);
    for s in scores.chunks_exact_mut(context) {
        let whole = s.len() / 8 * 8;
        let mut maxima = _mm256_set1_ps(f32::NEG_INFINITY);
        for c in (0..whole).step_by(8) {
            maxima = _mm256_max_ps(maxima, _mm256_loadu_ps(s.as_ptr().add(c)));
        }
        let mut lanes = [0f32; 8];
        _mm256_storeu_ps(lanes.as_mut_ptr(), maxima);
        let max = lanes
            .iter()
            .chain(&s[whole..])
            .copied()
            .fold(f32::NEG_INFINITY, f32::max);
        let mut sum = _mm256_setzero_ps();
        for c in (0..whole).step_by(8) {
            let at = s.as_mut_ptr().add(c);
            let e = exp256(_mm256_sub_ps(_mm256_loadu_ps(at), _mm256_set1_ps(max)));
            _mm256_storeu_ps(at, e);
            sum = _mm256_add_ps(sum, e);
        }
        _mm256_storeu_ps(lanes.as_mut_ptr(), sum);
        let mut total = lanes.iter().sum::<f32>();
        for v in &mut s[whole..] {
            *v = (*v - max).exp();
            total += *v;
        }
        stats.push(super::RowStats { max, sum: total });
    }
    stats
}
