//! Absorbed multi-head latent attention read straight out of the paged cache
//! (DeepSeek-V2 paper, §2.1.2 and appendix C: the key projection is folded into
//! the query, the value projection is applied after attention).
//!
//! Each query row is `[q_lat (kv_lora_rank) | q_pe (qk_rope_head_dim)]` and each
//! cache row is `[c_kv | k_pe]`, so a score is one dot product of `latent_width`
//! numbers and the output is the attention-weighted sum of the `c_kv` parts. The
//! cache is read in place through each sequence's block table: nothing is gathered
//! into a contiguous copy. Work is split over (token, group of heads); within an
//! item every cache row is loaded once and used for all of its heads.

use crate::parallel::{self, Disjoint};

/// Where one sequence's tokens sit in the flattened batch and in the cache.
#[derive(Debug, Clone, Copy)]
pub struct SeqSpan<'a> {
    /// Row of its first new token in the batch.
    pub start: usize,
    pub num_new: usize,
    /// Tokens already in the cache before this step.
    pub num_cached: usize,
    pub block_table: &'a [u32],
}

/// Geometry of a call.
#[derive(Debug, Clone, Copy)]
pub struct LatentShape {
    pub heads: usize,
    /// `kv_lora_rank`: the part of each row that is also the value.
    pub rank: usize,
    /// `kv_lora_rank + qk_rope_head_dim`.
    pub width: usize,
    pub block_size: usize,
}

#[inline(always)]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    // Eight independent accumulators let the compiler keep them in vector lanes.
    let mut acc = [0f32; 8];
    let (ca, ra) = a.as_chunks::<8>();
    let (cb, rb) = b.as_chunks::<8>();
    for (x, y) in ca.iter().zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut tail = 0f32;
    for (x, y) in ra.iter().zip(rb) {
        tail += x * y;
    }
    acc.iter().sum::<f32>() + tail
}

#[inline(always)]
fn axpy(out: &mut [f32], alpha: f32, x: &[f32]) {
    for (o, v) in out.iter_mut().zip(x) {
        *o += alpha * v;
    }
}

/// Number of heads one work item handles: enough items to keep every thread busy,
/// as few as possible so that each cache row is shared by many heads.
fn heads_per_item(heads: usize, tokens: usize) -> usize {
    let threads = parallel::threads();
    let mut groups = 1;
    while tokens * groups < 2 * threads && groups * 2 <= heads && heads.is_multiple_of(groups * 2) {
        groups *= 2;
    }
    heads / groups
}

/// `queries`: `[tokens, heads, width]`; `cache`: the layer's `[slots, width]` rows.
/// Returns `[tokens, heads, rank]`: per head, softmax(scale · q·rowᵀ) · c_kv.
/// Token `j` of a sequence sees cache positions `0..=num_cached + j`.
pub fn absorbed_attention(
    queries: &[f32],
    cache: &[f32],
    seqs: &[SeqSpan],
    shape: LatentShape,
    scale: f32,
) -> Vec<f32> {
    let LatentShape {
        heads,
        rank,
        width,
        block_size,
    } = shape;
    let tokens = seqs.iter().map(|s| s.num_new).sum::<usize>();
    let mut out = vec![0f32; tokens * heads * rank];
    let group = heads_per_item(heads, tokens);
    let groups_per_token = heads / group;
    // Per token: its sequence and its index within the new tokens.
    let owner: Vec<(usize, usize)> = seqs
        .iter()
        .enumerate()
        .flat_map(|(s, span)| (0..span.num_new).map(move |j| (s, j)))
        .collect();
    let items = tokens * groups_per_token;
    let dst = Disjoint::new(&mut out);
    #[cfg(target_arch = "x86_64")]
    let simd = std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma");
    parallel::for_ranges(items, |range| {
        for item in range {
            // SAFETY: item `item` owns exactly this slice of the output.
            let out = unsafe { dst.slice(item * group * rank..(item + 1) * group * rank) };
            let token = item / groups_per_token;
            let first_head = (item % groups_per_token) * group;
            let (s, j) = owner[token];
            let span = &seqs[s];
            let context = span.num_cached + j + 1;
            let q = &queries[(token * heads + first_head) * width..][..group * width];
            let row = |t: usize| {
                let slot = span.block_table[t / block_size] as usize * block_size + t % block_size;
                &cache[slot * width..(slot + 1) * width]
            };
            let item = Item {
                q,
                context,
                group,
                width,
                rank,
                scale,
            };
            #[cfg(target_arch = "x86_64")]
            if simd {
                // SAFETY: the CPU has AVX2 and FMA (checked above).
                unsafe { item.attend_avx2(row, out) };
                continue;
            }
            item.attend(row, out);
        }
    });
    out
}

/// One work item: `group` heads of one token against `context` cache rows.
struct Item<'a> {
    /// The heads' queries, `[group, width]`.
    q: &'a [f32],
    context: usize,
    group: usize,
    width: usize,
    rank: usize,
    scale: f32,
}

impl Item<'_> {
    /// The same loops compiled for AVX2 + FMA (the build targets baseline
    /// x86-64, so the plain version vectorises with 4-wide SSE only).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn attend_avx2<'c>(&self, row: impl Fn(usize) -> &'c [f32], out: &mut [f32]) {
        self.attend(row, out)
    }

    /// `out` (`[group, rank]`) = per head, softmax(scale · q·rowᵀ) · c_kv.
    #[inline(always)]
    fn attend<'c>(&self, row: impl Fn(usize) -> &'c [f32], out: &mut [f32]) {
        let Item {
            q,
            context,
            group,
            width,
            rank,
            scale,
        } = *self;
        let mut scores = vec![0f32; group * context];
        for t in 0..context {
            let key = row(t);
            for h in 0..group {
                scores[h * context + t] = dot(&q[h * width..(h + 1) * width], key) * scale;
            }
        }
        let mut norms = vec![0f32; group];
        for (h, s) in scores.chunks_exact_mut(context).enumerate() {
            let max = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0f32;
            for v in s.iter_mut() {
                *v = (*v - max).exp();
                sum += *v;
            }
            norms[h] = 1.0 / sum;
        }
        for t in 0..context {
            let value = &row(t)[..rank];
            for h in 0..group {
                axpy(
                    &mut out[h * rank..(h + 1) * rank],
                    scores[h * context + t],
                    value,
                );
            }
        }
        for (h, o) in out.chunks_exact_mut(rank).enumerate() {
            o.iter_mut().for_each(|v| *v *= norms[h]);
        }
    }
}
