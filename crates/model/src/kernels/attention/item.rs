//! One work item's attention: some heads of one token against the cache
//! rows it sees, in plain loops or with AVX2 or AVX-512, chosen at run time.

#[cfg(target_arch = "x86_64")]
use super::{avx2, avx512};
use super::{axpy, dot, Latent, RowStats};

/// The instruction set the kernel runs on, chosen at run time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Path {
    Plain,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

impl Path {
    pub(super) fn detect() -> Path {
        #[cfg(target_arch = "x86_64")]
        {
            use std::is_x86_feature_detected as has;
            // The AVX-512 path also uses AVX2 and FMA instructions, and
            // AVX-512BW's masked loads of 16- and 8-bit numbers (bf16 and
            // fp8 caches); the AVX2 path F16C's widening (fp8 caches).
            if has!("avx2") && has!("fma") && has!("f16c") {
                if has!("avx512f") && has!("avx512bw") && has!("avx512vl") {
                    return Path::Avx512;
                }
                return Path::Avx2;
            }
        }
        Path::Plain
    }

    /// `dst[..src.len()]` := `src`, widened with this path's vector loads
    /// (an fp8 number's plain widening is a function call).
    pub(super) fn widen<E: Latent>(self, src: &[E], dst: &mut [f32]) {
        match self {
            Path::Plain => E::widen(src, dst),
            // SAFETY: `Path::detect` found the features each path needs.
            #[cfg(target_arch = "x86_64")]
            Path::Avx2 => unsafe { widen_avx2(src, dst) },
            #[cfg(target_arch = "x86_64")]
            Path::Avx512 => unsafe { widen_avx512(src, dst) },
        }
    }
}

/// [`avx2::widen`] where the features are on.
///
/// # Safety
/// The CPU has AVX2 and F16C.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,f16c")]
unsafe fn widen_avx2<E: Latent>(src: &[E], dst: &mut [f32]) {
    avx2::widen(src, dst)
}

/// [`avx512::widen`] where the features are on.
///
/// # Safety
/// The CPU has AVX-512F and AVX-512BW.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn widen_avx512<E: Latent>(src: &[E], dst: &mut [f32]) {
    avx512::widen(src, dst)
}

/// One work item: `group` heads of one token against the cache rows it sees.
pub(super) struct Item<'a> {
    /// The heads' queries, `[group, width]`.
    pub(super) q: &'a [f32],
    pub(super) group: usize,
    pub(super) width: usize,
    pub(super) rank: usize,
    pub(super) scale: f32,
}

impl Item<'_> {
    /// `out` (`[group, rank]`) = per head, Σ exp(scale · q·rowᵀ - max) ·
    /// c_kv over `rows`, on `path`, with each head's max and sum.
    pub(super) fn attend_on<E: Latent>(
        &self,
        path: Path,
        rows: &[&[E]],
        out: &mut [f32],
    ) -> Vec<RowStats> {
        match path {
            Path::Plain => self.attend(rows, out),
            // SAFETY: `Path::detect` found the features each path needs.
            #[cfg(target_arch = "x86_64")]
            Path::Avx2 => unsafe { self.attend_avx2(rows, out) },
            #[cfg(target_arch = "x86_64")]
            Path::Avx512 => unsafe { self.attend_avx512(rows, out) },
        }
    }

    /// The same work with AVX2 + FMA intrinsics: four heads' dot products
    /// (or weighted sums) advance together, so each cache row is loaded
    /// once per four heads, the FMA chains are independent, and the output
    /// sums stay in registers across all rows.
    ///
    /// # Safety
    /// The CPU has AVX2, FMA and F16C.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn attend_avx2<E: Latent>(
        &self,
        rows: &[&[E]],
        out: &mut [f32],
    ) -> Vec<RowStats> {
        let (context, group, width, rank) = (rows.len(), self.group, self.width, self.rank);
        if group >= HEAD_MAJOR {
            return self.attend_by_head_on::<E, false>(rows, out);
        }
        let mut scores = vec![0f32; group * context];
        let Some(mut scratch) = widening::<E>(group, width) else {
            self.scores_avx2(rows, 0, &mut scores);
            let softmax = |s: &mut [f32], context| avx2::softmax_rows(s, context);
            return weigh(&mut scores, group, rank, out, softmax, |n, p, o| {
                sums::<E, false>(n, p, (context, 1), rows, rank, o)
            });
        };
        self.attend_widened::<E, false>(rows, &mut scratch, scores, out)
    }

    /// The scores of `keys`, rows `first..` of the item's context, into
    /// their columns of `scores` (`[group, context]`).
    ///
    /// # Safety
    /// The CPU has AVX2, FMA and F16C.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn scores_avx2<K: Latent>(&self, keys: &[&[K]], first: usize, scores: &mut [f32]) {
        let (q, group, width) = (self.q, self.group, self.width);
        let context = scores.len() / group;
        let mut h = 0;
        while h < group {
            let n = (group - h).min(4);
            let qh = &q[h * width..];
            let mut dots = [0f32; 4];
            for (t, key) in keys.iter().enumerate() {
                match n {
                    4 => avx2::dots::<K, 4>(qh, width, key, &mut dots),
                    3 => avx2::dots::<K, 3>(qh, width, key, &mut dots),
                    2 => avx2::dots::<K, 2>(qh, width, key, &mut dots),
                    _ => avx2::dots::<K, 1>(qh, width, key, &mut dots),
                }
                for (i, d) in dots[..n].iter().enumerate() {
                    scores[(h + i) * context + first + t] = d * self.scale;
                }
            }
            h += n;
        }
    }

    /// The AVX-512 version: four heads against `KEYS` cache rows at a time
    /// for the scores (independent sums; each row loaded once per four heads,
    /// each query chunk once per `KEYS` rows), and four heads' weighted
    /// sums over 64 columns held in sixteen registers across all rows.
    /// Two rows, not four: with four, sixteen sums and four keys left the
    /// compiler short of registers, and it kept one sum on the stack, its
    /// load and store in the inner loop (`--bench kernels -- attention`).
    /// A narrow cache's rows are widened [`WIDE_ROWS`] at a time first.
    ///
    /// # Safety
    /// The CPU has AVX-512F, AVX-512BW, AVX-512VL, AVX2 and FMA.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
    pub(super) unsafe fn attend_avx512<E: Latent>(
        &self,
        rows: &[&[E]],
        out: &mut [f32],
    ) -> Vec<RowStats> {
        let (context, group, width, rank) = (rows.len(), self.group, self.width, self.rank);
        if group >= HEAD_MAJOR {
            return self.attend_by_head_on::<E, true>(rows, out);
        }
        let mut scores = vec![0f32; group * context];
        let Some(mut scratch) = widening::<E>(group, width) else {
            self.scores_avx512(rows, 0, &mut scores);
            let softmax = |s: &mut [f32], context| avx512::softmax_rows(s, context);
            return weigh(&mut scores, group, rank, out, softmax, |n, p, o| {
                sums::<E, true>(n, p, (context, 1), rows, rank, o)
            });
        };
        self.attend_widened::<E, true>(rows, &mut scratch, scores, out)
    }

    /// [`Self::attend_avx512`] (`AVX512`) or [`Self::attend_avx2`] for
    /// items of [`HEAD_MAJOR`] heads or more, the scores head-major
    /// (`[context, heads]`, on AVX2 the heads padded to a multiple of
    /// eight): each key number is broadcast once against a vector of
    /// sixteen (eight) heads' query numbers ([`avx512::scores_by_head`],
    /// [`avx2::scores_by_head`]), where the row-major kernels load each
    /// key once per four heads and reduce every sum across a vector's
    /// lanes. Rows of a cache in another type than f32 are widened
    /// [`WIDE_ROWS`] at a time first; those of [`Latent::WIDEN_FIRST`]
    /// types again for the weighted sums.
    ///
    /// # Safety
    /// The CPU has what the path `AVX512` names needs.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn attend_by_head_on<E: Latent, const AVX512: bool>(
        &self,
        rows: &[&[E]],
        out: &mut [f32],
    ) -> Vec<RowStats> {
        let (context, group, width, rank) = (rows.len(), self.group, self.width, self.rank);
        // Scores a row: AVX-512 masks its last vector of heads, AVX2 pads.
        let stride = if AVX512 {
            group
        } else {
            group.next_multiple_of(8)
        };
        // The queries by column, `[width, stride]`, the scale folded in.
        let mut qt = vec![0f32; width * stride];
        for (h, q) in self.q.chunks_exact(width).take(group).enumerate() {
            for (c, &v) in q.iter().enumerate() {
                qt[c * stride + h] = v * self.scale;
            }
        }
        let mut scores = vec![0f32; context * stride];
        // A function, not a closure: a closure's body would lack the
        // caller's target features.
        #[inline(always)]
        unsafe fn score<const AVX512: bool>(
            (qt, group, stride, width): (&[f32], usize, usize, usize),
            keys: &[&[f32]],
            first: usize,
            scores: &mut [f32],
        ) {
            if AVX512 {
                avx512::scores_by_head(qt, group, width, keys, first, scores)
            } else {
                avx2::scores_by_head(qt, stride, width, keys, first, scores)
            }
        }
        let shape = (&qt[..], group, stride, width);
        let mut scratch = vec![];
        let tiles = (0..context).step_by(WIDE_ROWS);
        let tile = |t: usize| &rows[t..(t + WIDE_ROWS).min(context)];
        match E::as_f32(rows) {
            Some(keys) => score::<AVX512>(shape, keys, 0, &mut scores),
            None => {
                scratch.resize(WIDE_ROWS * width, 0.0);
                for t in tiles.clone() {
                    let rows = tile(t);
                    let keys = &widened::<E, AVX512>(rows, width, &mut scratch)[..rows.len()];
                    score::<AVX512>(shape, keys, t, &mut scores);
                }
            }
        }
        let stats = if AVX512 {
            avx512::softmax_columns(&mut scores, group)
        } else {
            avx2::softmax_columns(&mut scores, stride, group)
        };
        // Per head `h`, its weights `scores[t·stride + h]`.
        let strides = (1, stride);
        let mut h = 0;
        while h < group {
            // Sixteen heads a pass read each row's numbers once (AVX-512).
            let n = match group - h {
                left if AVX512 && left >= 16 => 16,
                left if AVX512 && left >= 8 => 8,
                left => left.min(4),
            };
            let o = &mut out[h * rank..];
            if E::WIDEN_FIRST {
                for t in tiles.clone() {
                    let rows = tile(t);
                    let values = &widened::<E, AVX512>(rows, rank, &mut scratch)[..rows.len()];
                    let p = &scores[t * stride + h..];
                    sums::<f32, AVX512>(n, p, strides, values, rank, o);
                }
            } else {
                sums::<E, AVX512>(n, &scores[h..], strides, rows, rank, o);
            }
            h += n;
        }
        stats
    }

    /// [`Self::attend_avx512`] (`AVX512`) or [`Self::attend_avx2`] on a
    /// cache whose rows are widened [`WIDE_ROWS`] at a time into `scratch`
    /// first, for the scores and again for the sums.
    ///
    /// # Safety
    /// The CPU has what the path `AVX512` names needs.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn attend_widened<E: Latent, const AVX512: bool>(
        &self,
        rows: &[&[E]],
        scratch: &mut [f32],
        mut scores: Vec<f32>,
        out: &mut [f32],
    ) -> Vec<RowStats> {
        let (context, group, width, rank) = (rows.len(), self.group, self.width, self.rank);
        let tiles = (0..context).step_by(WIDE_ROWS);
        let tile = |t: usize| &rows[t..(t + WIDE_ROWS).min(context)];
        for t in tiles.clone() {
            let rows = tile(t);
            let keys = &widened::<E, AVX512>(rows, width, scratch)[..rows.len()];
            if AVX512 {
                self.scores_avx512(keys, t, &mut scores);
            } else {
                self.scores_avx2(keys, t, &mut scores);
            }
        }
        let stats = if AVX512 {
            avx512::softmax_rows(&mut scores, context)
        } else {
            avx2::softmax_rows(&mut scores, context)
        };
        for t in tiles {
            let rows = tile(t);
            let values = &widened::<E, AVX512>(rows, rank, scratch)[..rows.len()];
            let mut h = 0;
            while h < group {
                let n = (group - h).min(4);
                let (p, o) = (&scores[h * context + t..], &mut out[h * rank..]);
                sums::<f32, AVX512>(n, p, (context, 1), values, rank, o);
                h += n;
            }
        }
        stats
    }

    /// The scores of `keys`, rows `first..` of the item's context, into
    /// their columns of `scores` (`[group, context]`).
    ///
    /// # Safety
    /// The CPU has AVX-512F, AVX-512BW, AVX-512VL, AVX2 and FMA.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
    unsafe fn scores_avx512<K: Latent>(&self, keys: &[&[K]], first: usize, scores: &mut [f32]) {
        const KEYS: usize = 2;
        let (q, group, width) = (self.q, self.group, self.width);
        let (rows, context) = (keys.len(), scores.len() / group);
        let mut h = 0;
        while h < group {
            let n = (group - h).min(4);
            let qh = &q[h * width..];
            let mut dots = [[0f32; 4]; KEYS];
            let mut t = 0;
            while t < rows {
                // The last few rows repeat the final one to fill the block.
                let take = (rows - t).min(KEYS);
                let keys: [&[K]; KEYS] = std::array::from_fn(|r| keys[t + r.min(take - 1)]);
                match n {
                    4 => avx512::dots::<K, 4, KEYS>(qh, width, keys, &mut dots),
                    3 => avx512::dots::<K, 3, KEYS>(qh, width, keys, &mut dots),
                    2 => avx512::dots::<K, 2, KEYS>(qh, width, keys, &mut dots),
                    _ => avx512::dots::<K, 1, KEYS>(qh, width, keys, &mut dots),
                }
                for (r, row) in dots[..take].iter().enumerate() {
                    for (i, d) in row[..n].iter().enumerate() {
                        scores[(h + i) * context + first + t + r] = d * self.scale;
                    }
                }
                t += take;
            }
            h += n;
        }
    }

    /// [`Self::attend_on`] in plain loops.
    pub(super) fn attend<E: Latent>(&self, rows: &[&[E]], out: &mut [f32]) -> Vec<RowStats> {
        let Item {
            q,
            group,
            width,
            rank,
            scale,
        } = *self;
        let context = rows.len();
        let mut scores = vec![0f32; group * context];
        for (t, key) in rows.iter().enumerate() {
            for h in 0..group {
                scores[h * context + t] = dot(&q[h * width..(h + 1) * width], key) * scale;
            }
        }
        let stats = softmax_rows(&mut scores, context);
        for (t, row) in rows.iter().enumerate() {
            let value = &row[..rank];
            for h in 0..group {
                axpy(
                    &mut out[h * rank..(h + 1) * rank],
                    scores[h * context + t],
                    value,
                );
            }
        }
        stats
    }
}

/// Items of this many heads or more take [`Item::attend_by_head_on`] on
/// AVX-512 and AVX2: a vector of sixteen heads, or two of eight.
pub(super) const HEAD_MAJOR: usize = 16;

/// Rows of an fp8 cache an item widens at a time, into an f32
/// scratch that stays in L1 while every head reads it: a row is widened
/// twice (for the scores, then the sums) instead of once per four heads in
/// each. With sixteen heads an item, about a sixth less time at 2k to
/// 16k rows with AVX-512 and an eighth with AVX2 (`--bench kernels --
/// attention`; 64 rows at a time gained less); a bf16 cache, whose
/// widening is two instructions, lost 5% to 8% by it, and items of four
/// heads lost by it on either.
#[cfg(target_arch = "x86_64")]
const WIDE_ROWS: usize = 16;

/// The scratch `group` heads widen [`WIDE_ROWS`] rows of `width` into, if
/// that pays: where `E`'s widening is dear ([`Latent::WIDEN_FIRST`]) and
/// more than four heads read each row. `None`: the rows are read as they
/// are.
#[cfg(target_arch = "x86_64")]
fn widening<E: Latent>(group: usize, width: usize) -> Option<Vec<f32>> {
    (E::WIDEN_FIRST && group > 4).then(|| vec![0f32; WIDE_ROWS * width])
}

/// The first `cols` numbers of each of `rows` (at most [`WIDE_ROWS`]),
/// widened into `scratch` with AVX-512 (`AVX512`) or AVX2; the first
/// `rows.len()` of the slices returned are theirs.
///
/// # Safety
/// The CPU has AVX-512F and AVX-512BW (`AVX512`), or AVX2 and F16C.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn widened<'s, E: Latent, const AVX512: bool>(
    rows: &[&[E]],
    cols: usize,
    scratch: &'s mut [f32],
) -> [&'s [f32]; WIDE_ROWS] {
    for (row, dst) in rows.iter().zip(scratch.chunks_exact_mut(cols)) {
        if AVX512 {
            avx512::widen(&row[..cols], dst);
        } else {
            avx2::widen(&row[..cols], dst);
        }
    }
    let scratch = &*scratch;
    std::array::from_fn(|r| &scratch[r * cols..][..cols])
}

/// The weighted sums of `n` heads (16, 8, or at most 4; AVX2: at most 4)
/// into their output rows `o`: head `h`'s numerators at `p[h·stride +
/// t·step]` for `(stride, step)` = `strides`, with AVX-512 (`AVX512`,
/// [`avx512::weighted_sums`]) or AVX2 ([`avx2::weighted_sums`]).
///
/// # Safety
/// The CPU has AVX-512F and AVX-512BW (`AVX512`), or AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn sums<E: Latent, const AVX512: bool>(
    n: usize,
    p: &[f32],
    strides: (usize, usize),
    rows: &[&[E]],
    rank: usize,
    o: &mut [f32],
) {
    match (AVX512, n) {
        (true, 16) => avx512::weighted_sums::<E, 16>(p, strides, rows, rank, o),
        (true, 8) => avx512::weighted_sums::<E, 8>(p, strides, rows, rank, o),
        (true, 4) => avx512::weighted_sums::<E, 4>(p, strides, rows, rank, o),
        (true, 3) => avx512::weighted_sums::<E, 3>(p, strides, rows, rank, o),
        (true, 2) => avx512::weighted_sums::<E, 2>(p, strides, rows, rank, o),
        (true, _) => avx512::weighted_sums::<E, 1>(p, strides, rows, rank, o),
        (false, 4) => avx2::weighted_sums::<E, 4>(p, strides, rows, rank, o),
        (false, 3) => avx2::weighted_sums::<E, 3>(p, strides, rows, rank, o),
        (false, 2) => avx2::weighted_sums::<E, 2>(p, strides, rows, rank, o),
        (false, _) => avx2::weighted_sums::<E, 1>(p, strides, rows, rank, o),
    }
}

/// The rest of an item once its `[group, context]` scores are in: softmax
/// numerators per head (`softmax`, as [`softmax_rows`]), then `sums(n, p,
/// o)` adding the weighted sums of `n` ≤ 4 heads (numerators `p`, output
/// rows `o`) into the output.
#[inline(always)]
pub(super) fn weigh(
    scores: &mut [f32],
    group: usize,
    rank: usize,
    out: &mut [f32],
    softmax: impl Fn(&mut [f32], usize) -> Vec<RowStats>,
    sums: impl Fn(usize, &[f32], &mut [f32]),
) -> Vec<RowStats> {
    let context = scores.len() / group;
    let stats = softmax(scores, context);
    let mut h = 0;
    while h < group {
        let n = (group - h).min(4);
        sums(n, &scores[h * context..], &mut out[h * rank..]);
        h += n;
    }
    stats
}

/// Replaces each `context`-long row of scores by `exp(score - max)` and
/// returns the rows' max and sum.
#[inline(always)]
pub(super) fn softmax_rows(scores: &mut [f32], context: usize) -> Vec<RowStats> {
    scores
        .chunks_exact_mut(context)
        .map(|s| softmax_row(s, f32::NEG_INFINITY))
        .collect()
}

/// [`softmax_rows`] of one row, its maximum taken no lower than `floor`
/// (an online softmax's running maximum).
#[inline(always)]
pub(super) fn softmax_row(s: &mut [f32], floor: f32) -> RowStats {
    let max = s.iter().copied().fold(floor, f32::max);
    let mut sum = 0f32;
    for v in s.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    RowStats { max, sum }
}
