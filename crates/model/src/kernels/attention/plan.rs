//! How a call's tokens are split into work items: per token, its context
//! in chunks (long ones split, flash-decoding style), each chunk a work
//! item per group of heads; and how an item attends and split contexts
//! merge.

use super::item::{Item, Path, HEAD_MAJOR};
use super::{axpy, context_rows, Latent, LatentShape, RowStats, SeqSpan};
use crate::kernels::parallel::{self, Disjoint};

/// Number of heads one work item handles, given `spans` (each token's
/// context chunks, counted over all tokens): enough items to keep every
/// thread busy, as few as possible so that each cache row is shared by many
/// heads.
pub(super) fn heads_per_item(heads: usize, spans: usize) -> usize {
    let wanted = busy_items();
    let mut groups = 1;
    while spans * groups < wanted && groups * 2 <= heads && heads.is_multiple_of(groups * 2) {
        groups *= 2;
    }
    heads / groups
}

/// Work items that keep every thread busy: two a thread.
fn busy_items() -> usize {
    2 * parallel::threads()
}

/// Most cache rows one work item reads. A longer context is split into
/// chunks, attended separately and merged by their softmax statistics
/// (flash-decoding): an item's rows then stay in L2 while each of its heads
/// reads them, and one sequence's long context is spread over every thread
/// instead of every thread reading all of it for a few heads.
pub(super) const CHUNK_ROWS: usize = 512;

/// Fewest cache rows of a chunk split off only to keep the threads busy
/// ([`chunks_for`]).
pub(super) const MIN_CHUNK_ROWS: usize = 64;

/// Most numbers the partial outputs of split contexts may take in one call
/// (64 MB): a long prompt's prefill, thousands of tokens each with a long
/// context, would otherwise hold tokens × chunks × heads × rank of them. So
/// many tokens keep every thread busy unsplit anyway.
pub(super) const PARTIAL_BUDGET: usize = 16 << 20;

/// How many chunks a token's `context` is split into, in a call of `tokens`
/// tokens whose per-chunk partial output is `per_chunk` numbers: chunks of
/// at most [`CHUNK_ROWS`], and more of them (down to [`MIN_CHUNK_ROWS`])
/// where the call's tokens would otherwise make fewer than `spans` chunks
/// in all.
///
/// [`Plan::new`] asks for [`busy_items`] chunks where items keep
/// [`HEAD_MAJOR`] heads or more: it then splits the heads only when the
/// chunks cannot keep the threads busy, so that a decoding token's items
/// keep all their heads and run the head-major kernel. On the 2-vCPU Xeon
/// without AMX, a decode step of the benchmark model at q8_0 after 1024
/// tokens took 3.81 → 3.53 ms, after 768 3.48 → 3.27, after 512 3.26 →
/// 3.16 (best of four alternated rounds of 32 steps, in process); after
/// 1536 within 1%.
pub(super) fn chunks_for(context: usize, tokens: usize, per_chunk: usize, spans: usize) -> usize {
    let affordable = PARTIAL_BUDGET / (tokens * per_chunk).max(1);
    let spread = spans.div_ceil(tokens.max(1)).min(context / MIN_CHUNK_ROWS);
    context
        .div_ceil(CHUNK_ROWS)
        .max(spread)
        .min(affordable)
        .max(1)
}

/// One work item: some heads of one token against a range of its context.
pub(super) struct Work {
    token: usize,
    rows: std::ops::Range<usize>,
    first_head: usize,
    /// Where a chunk of a split context leaves its unnormalised output and
    /// statistics; `None`: the whole context, normalised into the output.
    partial: Option<usize>,
}

/// Per token of `seqs`, in order: its sequence and how many cache rows it
/// sees.
pub(super) fn owners<'s>(seqs: &'s [SeqSpan<'s>]) -> Vec<(&'s SeqSpan<'s>, usize)> {
    seqs.iter()
        .flat_map(|span| (0..span.num_new).map(move |j| (span, span.num_cached + j + 1)))
        .collect()
}

/// How a call's tokens are split into work items: per token, its context
/// in chunks (long ones split), each chunk a work item per group of heads.
pub(super) struct Plan<'s> {
    /// Per token: its sequence and how many cache rows it sees.
    pub(super) owner: Vec<(&'s SeqSpan<'s>, usize)>,
    /// Per token: how many chunks its context is split into.
    pub(super) chunks: Vec<usize>,
    /// Heads per work item.
    pub(super) group: usize,
    pub(super) works: Vec<Work>,
    /// Work items of split contexts, each with a partial output.
    pub(super) partials: usize,
    /// Per token: its first partial (split tokens only matter).
    pub(super) first_partial: Vec<usize>,
}

impl<'s> Plan<'s> {
    pub(super) fn new(seqs: &'s [SeqSpan<'s>], shape: LatentShape) -> Plan<'s> {
        let LatentShape { heads, rank, .. } = shape;
        let owner = owners(seqs);
        // Items of many heads: split contexts before heads (`chunks_for`).
        let spans = if heads >= HEAD_MAJOR { busy_items() } else { 0 };
        let chunks: Vec<usize> = owner
            .iter()
            .map(|&(_, context)| chunks_for(context, owner.len(), heads * rank, spans))
            .collect();
        let group = heads_per_item(heads, chunks.iter().sum());
        let groups_per_token = heads / group;
        let mut works = Vec::new();
        let mut partials = 0;
        let mut first_partial = Vec::with_capacity(owner.len());
        for (token, (&(_, context), &n)) in owner.iter().zip(&chunks).enumerate() {
            first_partial.push(partials);
            for c in 0..n {
                for g in 0..groups_per_token {
                    works.push(Work {
                        token,
                        rows: c * context / n..(c + 1) * context / n,
                        first_head: g * group,
                        partial: (n > 1).then(|| {
                            partials += 1;
                            partials - 1
                        }),
                    });
                }
            }
        }
        Plan {
            owner,
            chunks,
            group,
            works,
            partials,
            first_partial,
        }
    }

    /// Work items `range`: each writes its heads' rows of `out` (`[tokens,
    /// heads, rank]`), normalised, or (split contexts) its partial output
    /// and statistics.
    ///
    /// # Safety
    /// No other thread runs these items meanwhile, and the buffers have the
    /// plan's sizes.
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn attend<E: Latent>(
        &self,
        range: std::ops::Range<usize>,
        queries: &[f32],
        cache: &[E],
        shape: LatentShape,
        scale: f32,
        out: &Disjoint<f32>,
        partial_out: &Disjoint<f32>,
        partial_stats: &Disjoint<RowStats>,
    ) {
        let LatentShape {
            heads, rank, width, ..
        } = shape;
        let (group, path) = (self.group, Path::detect());
        let mut rows: Vec<&[E]> = Vec::new();
        for work in &self.works[range] {
            let (span, _) = self.owner[work.token];
            // The item's cache rows, found once (not per head or per
            // column block).
            context_rows(span, work.rows.clone(), cache, shape, &mut rows);
            let item = Item {
                q: &queries[(work.token * heads + work.first_head) * width..][..group * width],
                group,
                width,
                rank,
                scale,
            };
            match work.partial {
                None => {
                    let start = (work.token * heads + work.first_head) * rank;
                    let out = out.slice(start..start + group * rank);
                    let stats = item.attend_on(path, &rows, out);
                    for (o, s) in out.chunks_exact_mut(rank).zip(stats) {
                        o.iter_mut().for_each(|v| *v /= s.sum);
                    }
                }
                Some(p) => {
                    let out = partial_out.slice(p * group * rank..(p + 1) * group * rank);
                    let stats = item.attend_on(path, &rows, out);
                    partial_stats
                        .slice(p * group..(p + 1) * group)
                        .copy_from_slice(&stats);
                }
            }
        }
    }

    /// The tokens whose contexts were split.
    pub(super) fn split_tokens(&self) -> Vec<usize> {
        (0..self.owner.len())
            .filter(|&t| self.chunks[t] > 1)
            .collect()
    }

    /// Split token `token`'s chunks merged into `out` (its `[heads, rank]`
    /// rows), each rescaled to the largest maximum.
    pub(super) fn merge(
        &self,
        token: usize,
        out: &mut [f32],
        partial_out: &[f32],
        partial_stats: &[RowStats],
        shape: LatentShape,
    ) {
        let LatentShape { heads, rank, .. } = shape;
        let (group, n) = (self.group, self.chunks[token]);
        let groups_per_token = heads / group;
        for h in 0..heads {
            let (g, i) = (h / group, h % group);
            let parts: Vec<usize> = (0..n)
                .map(|c| self.first_partial[token] + c * groups_per_token + g)
                .collect();
            let max = parts
                .iter()
                .map(|&p| partial_stats[p * group + i].max)
                .fold(f32::NEG_INFINITY, f32::max);
            let o = &mut out[h * rank..][..rank];
            let mut sum = 0f32;
            for &p in &parts {
                let stats = partial_stats[p * group + i];
                let factor = (stats.max - max).exp();
                sum += factor * stats.sum;
                axpy(o, factor, &partial_out[(p * group + i) * rank..][..rank]);
            }
            o.iter_mut().for_each(|v| *v /= sum);
        }
    }
}
