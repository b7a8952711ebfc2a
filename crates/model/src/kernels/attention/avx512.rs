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

/// Heads one call of [`head_scores`] takes at most: four vectors.
const HEAD_BLOCK: usize = 64;

/// `scores[(first + t)·heads + h]` := Σ_c qt[c·heads + h] · keys[t][c], for
/// every key and head: the scores of `keys` with the head-major layout
/// [`head_scores`] writes (`qt`: `[width, heads]`, the heads' query columns).
///
/// # Safety
/// The CPU has AVX-512F (the lengths are checked).
#[inline(always)]
pub unsafe fn scores_by_head(
    qt: &[f32],
    heads: usize,
    width: usize,
    keys: &[&[f32]],
    first: usize,
    scores: &mut [f32],
) {
    assert!(qt.len() >= width * heads && scores.len() >= (first + keys.len()) * heads);
    let ahead = crate::kernels::x86::prefetches();
    let mut h = 0;
    while h < heads {
        let n = (heads - h).min(HEAD_BLOCK);
        let last = lanes(n - 16 * ((n - 1) / 16));
        let (qt, out) = (
            qt.as_ptr().add(h),
            scores.as_mut_ptr().add(first * heads + h),
        );
        match n.div_ceil(16) {
            1 => key_blocks::<1, 8>(qt, heads, width, last, keys, out, ahead),
            2 => key_blocks::<2, 8>(qt, heads, width, last, keys, out, ahead),
            3 => key_blocks::<3, 8>(qt, heads, width, last, keys, out, ahead),
            _ => key_blocks::<4, 6>(qt, heads, width, last, keys, out, ahead),
        }
        h += n;
    }
}

/// [`head_scores`] over `keys`, `R` at a time ([`super::key_block`]).
///
/// # Safety
/// As [`head_scores`], for every block of `keys`.
#[inline(always)]
unsafe fn key_blocks<const V: usize, const R: usize>(
    qt: *const f32,
    stride: usize,
    width: usize,
    last: __mmask16,
    keys: &[&[f32]],
    out: *mut f32,
    ahead: bool,
) {
    for t in (0..keys.len()).step_by(R) {
        let (block, take, next) = super::key_block::<R>(keys, t);
        let out = out.add(t * stride);
        head_scores::<V, R>(qt, stride, width, last, (block, take), out, (next, ahead));
    }
}

/// `out[r·stride + 16v + i]` := Σ_c qt[c·stride + 16v + i] · keys[r][c]
/// for the first `take` of `R` keys, over `V` vectors of heads (the last
/// one's lanes masked by `last`): each key number is broadcast once for
/// every head, and the sums stay in registers over the whole width, with
/// no reduction across lanes at the end. Where `ahead`
/// ([`crate::kernels::x86::prefetches`]), the rows `next` points at (the
/// next block's, `width` numbers each) are asked for a cache line every
/// sixteen columns: a long context's rows come from memory, and without
/// that a decode step after 8k tokens took half as long again (17-19
/// against 12-14 ms, the benchmark model at q8_0 on a Xeon, alternated in
/// one process).
///
/// # Safety
/// The CPU has AVX-512F; `qt` holds `width` rows `stride` apart of the
/// `V` vectors' unmasked lanes, and `out` `take` such rows (the keys'
/// lengths are checked).
#[inline(always)]
unsafe fn head_scores<const V: usize, const R: usize>(
    qt: *const f32,
    stride: usize,
    width: usize,
    last: __mmask16,
    (keys, take): ([&[f32]; R], usize),
    out: *mut f32,
    (next, ahead): ([*const f32; R], bool),
) {
    assert!(keys.iter().all(|k| k.len() >= width) && take <= R);
    let mask = |v: usize| if v + 1 == V { last } else { 0xffff };
    let mut acc = [[_mm512_setzero_ps(); V]; R];
    for c in 0..width {
        if ahead && c % 16 == 0 {
            for n in &next {
                crate::kernels::x86::prefetch(true, n.wrapping_add(c) as *const u8, 1);
            }
        }
        let mut q = [_mm512_setzero_ps(); V];
        for (v, q) in q.iter_mut().enumerate() {
            *q = _mm512_maskz_loadu_ps(mask(v), qt.add(c * stride + 16 * v));
        }
        for (a, key) in acc.iter_mut().zip(&keys) {
            let k = _mm512_set1_ps(*key.get_unchecked(c));
            for (a, q) in a.iter_mut().zip(&q) {
                *a = _mm512_fmadd_ps(*q, k, *a);
            }
        }
    }
    for (r, a) in acc[..take].iter().enumerate() {
        for (v, a) in a.iter().enumerate() {
            _mm512_mask_storeu_ps(out.add(r * stride + 16 * v), mask(v), *a);
        }
    }
}

/// Per column (head) of `scores` (`[rows, heads]`): each score replaced by
/// exp(score − the column's max), and the column's max and sum; sixteen
/// heads at a time.
///
/// # Safety
/// The CPU has AVX-512F.
#[inline(always)]
pub unsafe fn softmax_columns(scores: &mut [f32], heads: usize) -> Vec<super::RowStats> {
    let rows = scores.len() / heads;
    let p = scores.as_mut_ptr();
    let mut stats = Vec::with_capacity(heads);
    let mut h = 0;
    while h < heads {
        // Masked-off lanes read as 0 and are never stored or returned.
        let m = lanes(heads - h);
        let mut max = _mm512_set1_ps(f32::NEG_INFINITY);
        for t in 0..rows {
            max = _mm512_max_ps(max, _mm512_maskz_loadu_ps(m, p.add(t * heads + h)));
        }
        let mut sum = _mm512_setzero_ps();
        for t in 0..rows {
            let at = p.add(t * heads + h);
            let e = exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, at), max));
            _mm512_mask_storeu_ps(at, m, e);
            sum = _mm512_add_ps(sum, e);
        }
        let (mut maxima, mut sums) = ([0f32; 16], [0f32; 16]);
        _mm512_storeu_ps(maxima.as_mut_ptr(), max);
        _mm512_storeu_ps(sums.as_mut_ptr(), sum);
        for (&max, &sum) in maxima.iter().zip(&sums).take(heads - h) {
            stats.push(super::RowStats { max, sum });
        }
        h += 16;
    }
    stats
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
        stats.push(softmax_row(s, f32::NEG_INFINITY));
    }
    stats
}

/// [`softmax_rows`] of one row, its maximum taken no lower than `floor`
/// (an online softmax's running maximum).
///
/// # Safety
/// The CPU has AVX-512F.
#[inline(always)]
pub unsafe fn softmax_row(s: &mut [f32], floor: f32) -> super::RowStats {
    let mut maxima = _mm512_set1_ps(floor);
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

/// `out[h·rank + c] += Σ_t p[h·stride + t·step] · rows[t][c]` for `H`
/// heads: 64 columns at a time held in registers over all rows, then 16
/// (the last ones masked).
///
/// # Safety
/// The CPU has AVX-512F and AVX-512BW (the lengths are checked).
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
    let mut c = 0;
    if H > 8 {
        while c + 16 <= rank {
            columns::<E, H, 1>(p, (stride, step), rows, rank, c, 0xffff, out);
            c += 16;
        }
    } else if H > 4 {
        while c + 32 <= rank {
            columns::<E, H, 2>(p, (stride, step), rows, rank, c, 0xffff, out);
            c += 32;
        }
    }
    while c + 64 <= rank {
        columns::<E, H, 4>(p, (stride, step), rows, rank, c, 0xffff, out);
        c += 64;
    }
    while c < rank {
        columns::<E, H, 1>(p, (stride, step), rows, rank, c, lanes(rank - c), out);
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
/// of `rows.len()` numbers `step` apart, `out` and every row at least `H·rank` and
/// `rank` numbers, and the columns `c..c + 16·V` lie within `rank` but for
/// the lanes `last` masks off (as [`weighted_sums`] calls it).
#[inline(always)]
unsafe fn columns<E: Latent, const H: usize, const V: usize>(
    p: &[f32],
    (stride, step): (usize, usize),
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
            let w = _mm512_set1_ps(*p.as_ptr().add(h * stride + t * step));
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
