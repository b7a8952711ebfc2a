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

/// Number of heads one work item handles, given `spans` (each token's
/// context chunks, counted over all tokens): enough items to keep every
/// thread busy, as few as possible so that each cache row is shared by many
/// heads.
fn heads_per_item(heads: usize, spans: usize) -> usize {
    let threads = parallel::threads();
    let mut groups = 1;
    while spans * groups < 2 * threads && groups * 2 <= heads && heads.is_multiple_of(groups * 2) {
        groups *= 2;
    }
    heads / groups
}

/// Most cache rows one work item reads. A longer context is split into
/// chunks, attended separately and merged by their softmax statistics
/// (flash-decoding): an item's rows then stay in L2 while each of its heads
/// reads them, and one sequence's long context is spread over every thread
/// instead of every thread reading all of it for a few heads.
const CHUNK_ROWS: usize = 512;

/// Most numbers the partial outputs of split contexts may take in one call
/// (64 MB): a long prompt's prefill, thousands of tokens each with a long
/// context, would otherwise hold tokens × chunks × heads × rank of them. So
/// many tokens keep every thread busy unsplit anyway.
const PARTIAL_BUDGET: usize = 16 << 20;

/// How many chunks a token's `context` is split into, in a call of `tokens`
/// tokens whose per-chunk partial output is `per_chunk` numbers.
fn chunks_for(context: usize, tokens: usize, per_chunk: usize) -> usize {
    let affordable = PARTIAL_BUDGET / (tokens * per_chunk).max(1);
    context.div_ceil(CHUNK_ROWS).min(affordable).max(1)
}

/// Per head of a work item: the largest score and the sum of `exp(score -
/// max)` over its rows; its output rows are left unnormalised.
#[derive(Debug, Clone, Copy, Default)]
struct RowStats {
    max: f32,
    sum: f32,
}

/// One work item: some heads of one token against a range of its context.
struct Work {
    token: usize,
    rows: std::ops::Range<usize>,
    first_head: usize,
    /// Where a chunk of a split context leaves its unnormalised output and
    /// statistics; `None`: the whole context, normalised into the output.
    partial: Option<usize>,
}

/// Per token of `seqs`, in order: its sequence and how many cache rows it
/// sees.
fn owners<'s>(seqs: &'s [SeqSpan<'s>]) -> Vec<(&'s SeqSpan<'s>, usize)> {
    seqs.iter()
        .flat_map(|span| (0..span.num_new).map(move |j| (span, span.num_cached + j + 1)))
        .collect()
}

/// How a call's tokens are split into work items: per token, its context
/// in chunks (long ones split), each chunk a work item per group of heads.
struct Plan<'s> {
    /// Per token: its sequence and how many cache rows it sees.
    owner: Vec<(&'s SeqSpan<'s>, usize)>,
    /// Per token: how many chunks its context is split into.
    chunks: Vec<usize>,
    /// Heads per work item.
    group: usize,
    works: Vec<Work>,
    /// Work items of split contexts, each with a partial output.
    partials: usize,
    /// Per token: its first partial (split tokens only matter).
    first_partial: Vec<usize>,
}

impl<'s> Plan<'s> {
    fn new(seqs: &'s [SeqSpan<'s>], shape: LatentShape) -> Plan<'s> {
        let LatentShape { heads, rank, .. } = shape;
        let owner = owners(seqs);
        let chunks: Vec<usize> = owner
            .iter()
            .map(|&(_, context)| chunks_for(context, owner.len(), heads * rank))
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
    unsafe fn attend(
        &self,
        range: std::ops::Range<usize>,
        queries: &[f32],
        cache: &[f32],
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
        let mut rows: Vec<&[f32]> = Vec::new();
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
    fn split_tokens(&self) -> Vec<usize> {
        (0..self.owner.len())
            .filter(|&t| self.chunks[t] > 1)
            .collect()
    }

    /// Split token `token`'s chunks merged into `out` (its `[heads, rank]`
    /// rows), each rescaled to the largest maximum.
    fn merge(
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
    let LatentShape { heads, rank, .. } = shape;
    let plan = Plan::new(seqs, shape);
    let tokens = plan.owner.len();
    let mut out = vec![0f32; tokens * heads * rank];
    let mut partial_out = vec![0f32; plan.partials * plan.group * rank];
    let mut partial_stats = vec![RowStats::default(); plan.partials * plan.group];
    {
        let (dst, partial_dst, stats_dst) = (
            Disjoint::new(&mut out),
            Disjoint::new(&mut partial_out),
            Disjoint::new(&mut partial_stats),
        );
        parallel::for_ranges(plan.works.len(), |range| {
            // SAFETY: each item owns its slices of the output buffers.
            unsafe {
                plan.attend(
                    range,
                    queries,
                    cache,
                    shape,
                    scale,
                    &dst,
                    &partial_dst,
                    &stats_dst,
                )
            }
        });
    }
    for token in plan.split_tokens() {
        let o = &mut out[token * heads * rank..][..heads * rank];
        plan.merge(token, o, &partial_out, &partial_stats, shape);
    }
    out
}

/// `rows` := the cache rows at positions `positions` of `span`'s context,
/// read in place through its block table.
fn context_rows<'c>(
    span: &SeqSpan,
    positions: std::ops::Range<usize>,
    cache: &'c [f32],
    shape: LatentShape,
    rows: &mut Vec<&'c [f32]>,
) {
    let LatentShape {
        width, block_size, ..
    } = shape;
    rows.clear();
    rows.extend(positions.map(|t| {
        let slot = span.block_table[t / block_size] as usize * block_size + t % block_size;
        &cache[slot * width..(slot + 1) * width]
    }));
}

/// MLA's per-head matrices around the attention, for
/// [`fused_absorbed_attention`]: each call runs one head's matrix on the
/// calling thread (the caller has already split the work over the pool).
pub struct HeadMatrices<UK, UV> {
    /// `qk_nope_head_dim`: the width of a head's `q_nope`.
    pub nope: usize,
    /// `v_head_dim`: the width of a head's output.
    pub v_dim: usize,
    /// `uk(head, x, out)`: `x` (`[m, nope]`) times the head's `W_UK`,
    /// into `out` (`[m, rank]`): its latent queries.
    pub uk: UK,
    /// `uv(head, x, out)`: `x` (`[m, rank]`, attended latents) times the
    /// head's `W_UV`, into `out` (`[m, v_dim]`).
    pub uv: UV,
}

/// A thread's buffers for [`HeadMatrices`]' calls: a chunk of tokens'
/// rows of one head, in and out.
struct Scratch {
    x: Vec<f32>,
    y: Vec<f32>,
}

impl<UK, UV> HeadMatrices<UK, UV>
where
    UK: Fn(usize, &[f32], &mut [f32]) + Sync,
    UV: Fn(usize, &[f32], &mut [f32]) + Sync,
{
    /// Checks a call's inputs: `[tokens, heads, nope]` and `[tokens,
    /// heads, width - rank]`.
    fn check(&self, q_nope: &[f32], q_pe: &[f32], tokens: usize, shape: LatentShape) {
        let rope = shape.width - shape.rank;
        let heads = shape.heads;
        let nope = self.nope;
        assert_eq!(
            q_nope.len(),
            tokens * heads * nope,
            "q_nope is not [tokens, heads, nope]"
        );
        assert_eq!(
            q_pe.len(),
            tokens * heads * rope,
            "q_pe is not [tokens, heads, rope]"
        );
    }

    fn scratch(&self, tokens: usize, rank: usize) -> Scratch {
        let m = FUSED_TOKENS.min(tokens);
        Scratch {
            x: vec![0f32; m * self.nope.max(rank)],
            y: vec![0f32; m * rank.max(self.v_dim)],
        }
    }

    /// Head `h`'s latent queries for the tokens `chunk` (at most
    /// [`FUSED_TOKENS`]): `put(t, lat, pe)` takes the `t`-th token's
    /// `W_UK · q_nope` and its `q_pe`.
    #[allow(clippy::too_many_arguments)]
    fn queries(
        &self,
        h: usize,
        chunk: std::ops::Range<usize>,
        q_nope: &[f32],
        q_pe: &[f32],
        shape: LatentShape,
        scratch: &mut Scratch,
        mut put: impl FnMut(usize, &[f32], &[f32]),
    ) {
        let LatentShape {
            heads, rank, width, ..
        } = shape;
        let (nope, rope, m) = (self.nope, width - rank, chunk.len());
        for (t, token) in chunk.clone().enumerate() {
            let from = (token * heads + h) * nope;
            scratch.x[t * nope..][..nope].copy_from_slice(&q_nope[from..][..nope]);
        }
        (self.uk)(h, &scratch.x[..m * nope], &mut scratch.y[..m * rank]);
        for (t, token) in chunk.enumerate() {
            let pe = &q_pe[(token * heads + h) * rope..][..rope];
            put(t, &scratch.y[t * rank..][..rank], pe);
        }
    }

    /// Head `h`'s outputs for the tokens `chunk` (at most
    /// [`FUSED_TOKENS`]), from `latent(t)`, the `t`-th token's attended
    /// latent: `put(t, out)` takes `W_UV · latent`.
    fn outputs<'l>(
        &self,
        h: usize,
        chunk: std::ops::Range<usize>,
        rank: usize,
        latent: impl Fn(usize) -> &'l [f32],
        scratch: &mut Scratch,
        mut put: impl FnMut(usize, &[f32]),
    ) {
        let (v_dim, m) = (self.v_dim, chunk.len());
        for t in 0..m {
            scratch.x[t * rank..][..rank].copy_from_slice(latent(t));
        }
        (self.uv)(h, &scratch.x[..m * rank], &mut scratch.y[..m * v_dim]);
        for t in 0..m {
            put(t, &scratch.y[t * v_dim..][..v_dim]);
        }
    }
}

/// The chunks of [`FUSED_TOKENS`] tokens of `0..tokens`.
fn token_chunks(tokens: usize) -> impl Iterator<Item = std::ops::Range<usize>> {
    (0..tokens)
        .step_by(FUSED_TOKENS)
        .map(move |c| c..(c + FUSED_TOKENS).min(tokens))
}

/// Tokens a fused work item takes through its three steps at once: its
/// per-head matrices are read once per this many tokens (from cache after
/// the first), and its buffers stay small however long the prompt.
const FUSED_TOKENS: usize = 32;

/// Whether [`fused_absorbed_attention`] is the faster fused kernel for
/// `heads` heads and `tokens` tokens whose longest context is `context`
/// rows; elsewhere [`phased_absorbed_attention`] is. Its work items are
/// groups of heads, each over every token and its whole context: that
/// keeps the pool busy only with two items per thread, and it reads each
/// cache row once per item, where [`absorbed_attention`]'s items share a
/// row among more heads once there are enough tokens to give each thread
/// two (on a Zen 4 EPYC, a batch-8 step of the benchmark model took 2-3%
/// longer than unfused) and split contexts longer than [`CHUNK_ROWS`].
/// With fewer tokens and shorter contexts both split the heads alike, and
/// it needs no barrier between its steps.
pub fn fused_pays(heads: usize, tokens: usize, context: usize) -> bool {
    let threads = parallel::threads();
    heads >= 2 * threads && tokens < 2 * threads && context <= CHUNK_ROWS
}

/// A whole absorbed attention, in one parallel region: per head, the
/// latent query (`W_UK` times `q_nope`, beside `q_pe`), attention over the
/// cache as [`absorbed_attention`] computes it, and `W_UV` times the
/// attended latent. Work items are groups of heads over every token, so a
/// decode step runs no separate region (and no host-side step between
/// regions) for the two per-head matrices, which are small enough that
/// those fixed costs weighed as much as reading them. On a Zen 4 EPYC, ms
/// a decode step of the benchmark model, unfused -> fused, median of 20
/// alternating rounds in one process: q4_k batch 1 2.51 -> 2.39, batch 3
/// 5.68 -> 5.27; q8_0 batch 1 4.13 -> 3.94, batch 3 5.63 -> 5.34 (the
/// attention's share of a q4_k batch-1 step: 644 -> 594-610 µs).
///
/// `q_nope`: `[tokens, heads, nope]`; `q_pe`: `[tokens, heads, width -
/// rank]` (rotated). Returns `[tokens, heads, v_dim]`. Any call gives the
/// unfused steps' numbers; [`fused_pays`] says when it is the faster.
pub fn fused_absorbed_attention<UK, UV>(
    q_nope: &[f32],
    q_pe: &[f32],
    cache: &[f32],
    seqs: &[SeqSpan],
    shape: LatentShape,
    scale: f32,
    matrices: &HeadMatrices<UK, UV>,
) -> Vec<f32>
where
    UK: Fn(usize, &[f32], &mut [f32]) + Sync,
    UV: Fn(usize, &[f32], &mut [f32]) + Sync,
{
    let LatentShape {
        heads, rank, width, ..
    } = shape;
    let v_dim = matrices.v_dim;
    let owner = owners(seqs);
    let tokens = owner.len();
    matrices.check(q_nope, q_pe, tokens, shape);
    // As many heads per item as leave two items per thread: each cache
    // row loaded serves that many heads.
    let mut group = heads;
    while heads / group < 2 * parallel::threads() && group.is_multiple_of(2) {
        group /= 2;
    }
    let mut out = vec![0f32; tokens * heads * v_dim];
    let dst = Disjoint::new(&mut out);
    let path = Path::detect();
    parallel::for_ranges(heads / group, |items| {
        let mut rows: Vec<&[f32]> = Vec::new();
        let mut scratch = matrices.scratch(tokens, rank);
        let m = FUSED_TOKENS.min(tokens);
        // `[m, group, width]` queries, then `[m, group, rank]` latents.
        let mut queries = vec![0f32; m * group * width];
        let mut latents = vec![0f32; m * group * rank];
        for item in items {
            let first = item * group;
            for chunk in token_chunks(tokens) {
                for g in 0..group {
                    let put = |t: usize, lat: &[f32], pe: &[f32]| {
                        let q = &mut queries[(t * group + g) * width..][..width];
                        q[..rank].copy_from_slice(lat);
                        q[rank..].copy_from_slice(pe);
                    };
                    let (from, to) = (q_nope, q_pe);
                    matrices.queries(first + g, chunk.clone(), from, to, shape, &mut scratch, put);
                }
                for t in 0..chunk.len() {
                    let (span, context) = owner[chunk.start + t];
                    context_rows(span, 0..context, cache, shape, &mut rows);
                    let item = Item {
                        q: &queries[t * group * width..][..group * width],
                        group,
                        width,
                        rank,
                        scale,
                    };
                    let lat = &mut latents[t * group * rank..][..group * rank];
                    lat.fill(0.0);
                    let stats = item.attend_on(path, &rows, lat);
                    for (o, s) in lat.chunks_exact_mut(rank).zip(stats) {
                        o.iter_mut().for_each(|v| *v /= s.sum);
                    }
                }
                for g in 0..group {
                    let h = first + g;
                    let latent = |t: usize| &latents[(t * group + g) * rank..][..rank];
                    let put = |t: usize, y: &[f32]| {
                        let at = ((chunk.start + t) * heads + h) * v_dim;
                        // SAFETY: head `h`'s columns of each token are
                        // written by this item alone.
                        unsafe { dst.slice(at..at + v_dim) }.copy_from_slice(y);
                    };
                    matrices.outputs(h, chunk.clone(), rank, latent, &mut scratch, put);
                }
            }
        }
    });
    out
}

/// Whether [`phased_absorbed_attention`] keeps the pool busy with `heads`
/// heads: its first and last phases share the heads among the threads
/// (a per-head matrix is one task), so with fewer heads than threads some
/// would idle there, where the unfused steps split each matrix's tiles.
pub fn phases_fit(heads: usize) -> bool {
    heads >= parallel::threads()
}

/// [`fused_absorbed_attention`]'s three steps for any number of tokens, in
/// one parallel region ([`parallel::team`]) of four phases: per head, the
/// latent queries of every token; the attention's work items as
/// [`absorbed_attention`] splits them (a token's row read once for many
/// heads, long contexts in chunks); the split contexts' chunks merged;
/// per head, `W_UV` times every token's attended latent. Where
/// [`fused_pays`] says no, this saves the host-side steps between the
/// three calls of the unfused path (and the calls' own fixed costs). The
/// numbers are the unfused steps'. On a Zen 4 EPYC, ms a decode step of
/// the benchmark model, unfused -> phased, alternating rounds in one
/// process: q8_0 batch 4 5.81 -> 5.64, batch 8 8.73 -> 8.55, batch 16
/// 13.19 -> 13.19; q4_k batch 8 10.23 -> 9.82, batch 16 17.30 -> 16.53;
/// a 128-token prefill within 2% either way.
pub fn phased_absorbed_attention<UK, UV>(
    q_nope: &[f32],
    q_pe: &[f32],
    cache: &[f32],
    seqs: &[SeqSpan],
    shape: LatentShape,
    scale: f32,
    matrices: &HeadMatrices<UK, UV>,
) -> Vec<f32>
where
    UK: Fn(usize, &[f32], &mut [f32]) + Sync,
    UV: Fn(usize, &[f32], &mut [f32]) + Sync,
{
    let LatentShape {
        heads, rank, width, ..
    } = shape;
    let v_dim = matrices.v_dim;
    let plan = Plan::new(seqs, shape);
    let tokens = plan.owner.len();
    matrices.check(q_nope, q_pe, tokens, shape);
    let split = plan.split_tokens();
    let mut queries = vec![0f32; tokens * heads * width];
    let mut latents = vec![0f32; tokens * heads * rank];
    let mut partial_out = vec![0f32; plan.partials * plan.group * rank];
    let mut partial_stats = vec![RowStats::default(); plan.partials * plan.group];
    let mut out = vec![0f32; tokens * heads * v_dim];
    // Every buffer is reached through these pointers alone until the
    // region ends.
    let (queries, latents) = (Disjoint::new(&mut queries), Disjoint::new(&mut latents));
    let (partial_dst, stats_dst) = (
        Disjoint::new(&mut partial_out),
        Disjoint::new(&mut partial_stats),
    );
    let dst = Disjoint::new(&mut out);
    parallel::team(|member| {
        let mut scratch = matrices.scratch(tokens, rank);
        // Per head, the latent queries of every token, `[lat | pe]`.
        member.share(heads, |hs| {
            for h in hs {
                for chunk in token_chunks(tokens) {
                    let first = chunk.start;
                    let put = |t: usize, lat: &[f32], pe: &[f32]| {
                        let at = (first + t) * heads + h;
                        // SAFETY: head `h`'s query rows are this task's alone.
                        let q = unsafe { queries.slice(at * width..(at + 1) * width) };
                        q[..rank].copy_from_slice(lat);
                        q[rank..].copy_from_slice(pe);
                    };
                    matrices.queries(h, chunk, q_nope, q_pe, shape, &mut scratch, put);
                }
            }
        });
        member.barrier();
        // SAFETY: nothing writes the queries after the barrier.
        let queries = unsafe { queries.view(0..tokens * heads * width) };
        member.share(plan.works.len(), |range| {
            // SAFETY: each item owns its slices of the outputs.
            unsafe {
                plan.attend(
                    range,
                    queries,
                    cache,
                    shape,
                    scale,
                    &latents,
                    &partial_dst,
                    &stats_dst,
                )
            }
        });
        member.barrier();
        member.share(split.len(), |range| {
            // SAFETY: the partials are written no more; each split token's
            // rows of the latents are this task's alone.
            let (partials, stats) = unsafe {
                (
                    partial_dst.view(0..plan.partials * plan.group * rank),
                    stats_dst.view(0..plan.partials * plan.group),
                )
            };
            for &token in &split[range] {
                let rows = token * heads * rank..(token + 1) * heads * rank;
                let o = unsafe { latents.slice(rows) };
                plan.merge(token, o, partials, stats, shape);
            }
        });
        member.barrier();
        // SAFETY: nothing writes the latents after the barrier.
        let latents = unsafe { latents.view(0..tokens * heads * rank) };
        // Per head, `W_UV` times every token's attended latent.
        member.share(heads, |hs| {
            for h in hs {
                for chunk in token_chunks(tokens) {
                    let first = chunk.start;
                    let latent = |t: usize| &latents[((first + t) * heads + h) * rank..][..rank];
                    let put = |t: usize, y: &[f32]| {
                        let at = ((first + t) * heads + h) * v_dim;
                        // SAFETY: head `h`'s output rows are this task's alone.
                        unsafe { dst.slice(at..at + v_dim) }.copy_from_slice(y);
                    };
                    matrices.outputs(h, chunk, rank, latent, &mut scratch, put);
                }
            }
        });
    });
    out
}

/// The instruction set the kernel runs on, chosen at run time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path {
    Plain,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

impl Path {
    fn detect() -> Path {
        #[cfg(target_arch = "x86_64")]
        {
            use std::is_x86_feature_detected as has;
            // The AVX-512 path also uses AVX2 and FMA instructions.
            if has!("avx2") && has!("fma") {
                if has!("avx512f") {
                    return Path::Avx512;
                }
                return Path::Avx2;
            }
        }
        Path::Plain
    }
}

/// One work item: `group` heads of one token against the cache rows it sees.
struct Item<'a> {
    /// The heads' queries, `[group, width]`.
    q: &'a [f32],
    group: usize,
    width: usize,
    rank: usize,
    scale: f32,
}

impl Item<'_> {
    /// `out` (`[group, rank]`) = per head, Σ exp(scale · q·rowᵀ - max) ·
    /// c_kv over `rows`, on `path`, with each head's max and sum.
    fn attend_on(&self, path: Path, rows: &[&[f32]], out: &mut [f32]) -> Vec<RowStats> {
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
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn attend_avx2(&self, rows: &[&[f32]], out: &mut [f32]) -> Vec<RowStats> {
        let (q, context, group, width, rank) =
            (self.q, rows.len(), self.group, self.width, self.rank);
        let mut scores = vec![0f32; group * context];
        let mut h = 0;
        while h < group {
            let n = (group - h).min(4);
            let qh = &q[h * width..];
            let mut dots = [0f32; 4];
            for (t, key) in rows.iter().enumerate() {
                match n {
                    4 => avx2::dots::<4>(qh, width, key, &mut dots),
                    3 => avx2::dots::<3>(qh, width, key, &mut dots),
                    2 => avx2::dots::<2>(qh, width, key, &mut dots),
                    _ => avx2::dots::<1>(qh, width, key, &mut dots),
                }
                for (i, d) in dots[..n].iter().enumerate() {
                    scores[(h + i) * context + t] = d * self.scale;
                }
            }
            h += n;
        }
        weigh(
            &mut scores,
            group,
            rank,
            out,
            softmax_rows,
            |n, p, o| match n {
                4 => avx2::weighted_sums::<4>(p, rows, rank, o),
                3 => avx2::weighted_sums::<3>(p, rows, rank, o),
                2 => avx2::weighted_sums::<2>(p, rows, rank, o),
                _ => avx2::weighted_sums::<1>(p, rows, rank, o),
            },
        )
    }

    /// The AVX-512 version: four heads against `KEYS` cache rows at a time
    /// for the scores (independent sums; each row loaded once per four heads,
    /// each query chunk once per `KEYS` rows), and four heads' weighted
    /// sums over 64 columns held in sixteen registers across all rows.
    /// Two rows, not four: with four, sixteen sums and four keys left the
    /// compiler short of registers, and it kept one sum on the stack, its
    /// load and store in the inner loop (`--bench kernels -- attention` on
    /// a Zen 4 EPYC, two threads: 110 -> 123 GFLOP/s at 512 and 2048 rows).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx2,fma")]
    unsafe fn attend_avx512(&self, rows: &[&[f32]], out: &mut [f32]) -> Vec<RowStats> {
        const KEYS: usize = 2;
        let (q, context, group, width, rank) =
            (self.q, rows.len(), self.group, self.width, self.rank);
        let mut scores = vec![0f32; group * context];
        let mut h = 0;
        while h < group {
            let n = (group - h).min(4);
            let qh = &q[h * width..];
            let mut dots = [[0f32; 4]; KEYS];
            let mut t = 0;
            while t < context {
                // The last few rows repeat the final one to fill the block.
                let take = (context - t).min(KEYS);
                let keys: [&[f32]; KEYS] = std::array::from_fn(|r| rows[t + r.min(take - 1)]);
                match n {
                    4 => avx512::dots::<4, KEYS>(qh, width, keys, &mut dots),
                    3 => avx512::dots::<3, KEYS>(qh, width, keys, &mut dots),
                    2 => avx512::dots::<2, KEYS>(qh, width, keys, &mut dots),
                    _ => avx512::dots::<1, KEYS>(qh, width, keys, &mut dots),
                }
                for (r, row) in dots[..take].iter().enumerate() {
                    for (i, d) in row[..n].iter().enumerate() {
                        scores[(h + i) * context + t + r] = d * self.scale;
                    }
                }
                t += take;
            }
            h += n;
        }
        let softmax = |s: &mut [f32], context| avx512::softmax_rows(s, context);
        weigh(&mut scores, group, rank, out, softmax, |n, p, o| match n {
            4 => avx512::weighted_sums::<4>(p, rows, rank, o),
            3 => avx512::weighted_sums::<3>(p, rows, rank, o),
            2 => avx512::weighted_sums::<2>(p, rows, rank, o),
            _ => avx512::weighted_sums::<1>(p, rows, rank, o),
        })
    }

    /// [`Self::attend_on`] in plain loops.
    fn attend(&self, rows: &[&[f32]], out: &mut [f32]) -> Vec<RowStats> {
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

/// The rest of an item once its `[group, context]` scores are in: softmax
/// numerators per head (`softmax`, as [`softmax_rows`]), then `sums(n, p,
/// o)` adding the weighted sums of `n` ≤ 4 heads (numerators `p`, output
/// rows `o`) into the output.
#[inline(always)]
fn weigh(
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
fn softmax_rows(scores: &mut [f32], context: usize) -> Vec<RowStats> {
    scores
        .chunks_exact_mut(context)
        .map(|s| {
            let max = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0f32;
            for v in s.iter_mut() {
                *v = (*v - max).exp();
                sum += *v;
            }
            RowStats { max, sum }
        })
        .collect()
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    #[inline(always)]
    unsafe fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
    }

    /// `out[h]` = the dot product of the `h`-th of `H` consecutive
    /// `width`-long query rows of `q` with `key`.
    #[inline(always)]
    pub unsafe fn dots<const H: usize>(q: &[f32], width: usize, key: &[f32], out: &mut [f32; 4]) {
        assert!(q.len() >= H * width && key.len() >= width);
        let (qp, kp) = (q.as_ptr(), key.as_ptr());
        let mut acc = [_mm256_setzero_ps(); H];
        let mut c = 0;
        while c + 8 <= width {
            let k = _mm256_loadu_ps(kp.add(c));
            for (h, a) in acc.iter_mut().enumerate() {
                *a = _mm256_fmadd_ps(_mm256_loadu_ps(qp.add(h * width + c)), k, *a);
            }
            c += 8;
        }
        for h in 0..H {
            out[h] = hsum(acc[h]);
            for i in c..width {
                out[h] += q[h * width + i] * key[i];
            }
        }
    }

    /// `out[h·rank + c] += Σ_t p[h·context + t] · rows[t][c]` for `H` heads,
    /// 16 columns at a time held in registers over all rows.
    #[inline(always)]
    pub unsafe fn weighted_sums<const H: usize>(
        p: &[f32],
        rows: &[&[f32]],
        rank: usize,
        out: &mut [f32],
    ) {
        let context = rows.len();
        assert!(p.len() >= H * context && out.len() >= H * rank);
        let (pp, op) = (p.as_ptr(), out.as_mut_ptr());
        let mut c = 0;
        while c + 16 <= rank {
            let mut acc = [[_mm256_setzero_ps(); 2]; H];
            for (t, v) in rows.iter().enumerate() {
                assert!(v.len() >= rank);
                let v0 = _mm256_loadu_ps(v.as_ptr().add(c));
                let v1 = _mm256_loadu_ps(v.as_ptr().add(c + 8));
                for (h, a) in acc.iter_mut().enumerate() {
                    let w = _mm256_broadcast_ss(&*pp.add(h * context + t));
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
                    super::axpy(
                        &mut out[h * rank + c..(h + 1) * rank],
                        p[h * context + t],
                        v,
                    );
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use crate::layers::x86::exp512;

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
    #[inline(always)]
    pub unsafe fn dots<const H: usize, const R: usize>(
        q: &[f32],
        width: usize,
        keys: [&[f32]; R],
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
                *k = _mm512_maskz_loadu_ps(m, key.as_ptr().add(c));
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
            *o = crate::layers::x86::reduce4(&std::array::from_fn::<_, H, _>(|h| acc[h][r]));
        }
    }

    /// [`super::softmax_rows`] sixteen scores at a time, with
    /// [`exp512`]: glibc's scalar `expf` took about a tenth of the
    /// attention (`--bench kernels -- attention` on a Zen 4 EPYC, two
    /// threads: 123 -> 138 GFLOP/s at 512 rows).
    #[inline(always)]
    pub unsafe fn softmax_rows(scores: &mut [f32], context: usize) -> Vec<super::RowStats> {
        scores
            .chunks_exact_mut(context)
            .map(|s| {
                let max = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
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
            })
            .collect()
    }

    /// `out[h·rank + c] += Σ_t p[h·context + t] · rows[t][c]` for `H` heads:
    /// 64 columns at a time held in registers over all rows, then 16 (the
    /// last ones masked).
    #[inline(always)]
    pub unsafe fn weighted_sums<const H: usize>(
        p: &[f32],
        rows: &[&[f32]],
        rank: usize,
        out: &mut [f32],
    ) {
        assert!(p.len() >= H * rows.len() && out.len() >= H * rank);
        let mut c = 0;
        while c + 64 <= rank {
            columns::<H, 4>(p, rows, rank, c, 0xffff, out);
            c += 64;
        }
        while c < rank {
            columns::<H, 1>(p, rows, rank, c, lanes(rank - c), out);
            c += 16;
        }
    }

    /// [`weighted_sums`] for the `16·V` columns from `c`, the last 16 of
    /// them masked by `last`.
    #[inline(always)]
    unsafe fn columns<const H: usize, const V: usize>(
        p: &[f32],
        rows: &[&[f32]],
        rank: usize,
        c: usize,
        last: __mmask16,
        out: &mut [f32],
    ) {
        let context = rows.len();
        let mask = |i: usize| if i + 1 == V { last } else { 0xffff };
        let mut acc = [[_mm512_setzero_ps(); V]; H];
        for (t, row) in rows.iter().enumerate() {
            assert!(row.len() >= rank);
            let mut v = [_mm512_setzero_ps(); V];
            for (i, v) in v.iter_mut().enumerate() {
                *v = _mm512_maskz_loadu_ps(mask(i), row.as_ptr().add(c + 16 * i));
            }
            for (h, a) in acc.iter_mut().enumerate() {
                let w = _mm512_set1_ps(*p.as_ptr().add(h * context + t));
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
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic pseudo-random fill in [-1, 1).
    fn fill(n: usize, seed: u32) -> Vec<f32> {
        (0..n as u32)
            .map(|i| {
                let x = (i.wrapping_mul(2_654_435_761) ^ seed.wrapping_mul(40_503)) % 2001;
                x as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    /// The SIMD loops equal the plain ones for odd head counts, widths and
    /// ranks with tails, and contexts that cross cache blocks and leave a
    /// partial block of key rows.
    #[test]
    fn simd_paths_match_plain_loops() {
        let mut paths = vec![];
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                paths.push(Path::Avx2);
            }
            if std::is_x86_feature_detected!("avx512f") {
                paths.push(Path::Avx512);
            }
        }
        for (group, rank, rope, context) in [
            (4, 256, 64, 300),
            (3, 40, 12, 17),
            (1, 16, 8, 1),
            (7, 24, 5, 33),
            (5, 72, 9, 6),
            (2, 8, 3, 2),
        ] {
            let width = rank + rope;
            let q = fill(group * width, 1);
            let cache = fill(320 * width, 2);
            // 40 blocks of 8 rows, in a scrambled order.
            let rows: Vec<&[f32]> = (0..context)
                .map(|t| {
                    let slot = (t / 8 * 17 % 40) * 8 + t % 8;
                    &cache[slot * width..(slot + 1) * width]
                })
                .collect();
            let item = Item {
                q: &q,
                group,
                width,
                rank,
                scale: 0.3,
            };
            let normalised = |out: &mut Vec<f32>, stats: Vec<RowStats>| {
                for (o, s) in out.chunks_exact_mut(rank).zip(stats) {
                    o.iter_mut().for_each(|v| *v /= s.sum);
                }
            };
            let mut plain = vec![0f32; group * rank];
            let stats = item.attend(&rows, &mut plain);
            normalised(&mut plain, stats);
            for &path in &paths {
                let mut simd = vec![0f32; group * rank];
                let stats = item.attend_on(path, &rows, &mut simd);
                normalised(&mut simd, stats);
                for (a, b) in plain.iter().zip(&simd) {
                    assert!(
                        (a - b).abs() <= 1e-5 * (1.0 + a.abs()),
                        "{path:?}: {a} vs {b} ({group}, {rank}, {rope}, {context})"
                    );
                }
            }
        }
    }

    /// Whole calls against a direct softmax in f64: sequences whose contexts
    /// are split into chunks (merged by their statistics) and ones that are
    /// not, several new tokens each, blocks in a scrambled order.
    #[test]
    fn split_contexts_match_a_direct_softmax() {
        let (heads, rank, rope, block_size) = (4, 40, 8, 16);
        let width = rank + rope;
        let blocks = 160;
        let cache = fill(blocks * block_size * width, 3);
        let table: Vec<u32> = (0..blocks as u32).map(|b| b * 37 % blocks as u32).collect();
        let seqs = [
            // 3 new tokens over 700 cached rows: split.
            SeqSpan {
                start: 0,
                num_new: 3,
                num_cached: 700,
                block_table: &table,
            },
            // Short: one chunk each.
            SeqSpan {
                start: 3,
                num_new: 2,
                num_cached: 30,
                block_table: &table[50..],
            },
            // Exactly one chunk, then one row over.
            SeqSpan {
                start: 5,
                num_new: 2,
                num_cached: CHUNK_ROWS - 1,
                block_table: &table[100..],
            },
        ];
        let tokens = 7;
        let queries = fill(tokens * heads * width, 4);
        let shape = LatentShape {
            heads,
            rank,
            width,
            block_size,
        };
        let got = absorbed_attention(&queries, &cache, &seqs, shape, 0.2);
        let mut token = 0;
        for span in &seqs {
            for j in 0..span.num_new {
                let context = span.num_cached + j + 1;
                let row = |t: usize| {
                    let slot =
                        span.block_table[t / block_size] as usize * block_size + t % block_size;
                    &cache[slot * width..(slot + 1) * width]
                };
                for h in 0..heads {
                    let q = &queries[(token * heads + h) * width..][..width];
                    let scores: Vec<f64> = (0..context)
                        .map(|t| {
                            let key = row(t);
                            0.2 * (0..width).map(|c| q[c] as f64 * key[c] as f64).sum::<f64>()
                        })
                        .collect();
                    let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                    let total: f64 = weights.iter().sum();
                    for c in 0..rank {
                        let want = (0..context)
                            .map(|t| weights[t] * row(t)[c] as f64)
                            .sum::<f64>()
                            / total;
                        let have = got[(token * heads + h) * rank + c] as f64;
                        assert!(
                            (want - have).abs() <= 1e-5 * (1.0 + want.abs()),
                            "token {token} head {h} column {c}: {have} vs {want}"
                        );
                    }
                }
                token += 1;
            }
        }
    }

    /// Both fused kernels equal the three steps run one after another (the
    /// per-head matrices here plain f32 products): sequences mid-decode,
    /// one with a context long enough to be split into chunks, one a
    /// prompt longer than an item's chunk of tokens, blocks in a scrambled
    /// order, a head count no power of two.
    #[test]
    fn fused_equals_the_steps_one_after_another() {
        let (heads, nope, rank, rope, v_dim, block_size) = (12, 24, 40, 8, 20, 16);
        let width = rank + rope;
        let blocks = 60;
        let cache = fill(blocks * block_size * width, 5);
        let table: Vec<u32> = (0..blocks as u32).map(|b| b * 7 % blocks as u32).collect();
        let seqs = [
            SeqSpan {
                start: 0,
                num_new: 2,
                num_cached: 700,
                block_table: &table,
            },
            SeqSpan {
                start: 2,
                num_new: 37,
                num_cached: 3,
                block_table: &table[45..],
            },
        ];
        let tokens = 39;
        let (w_uk, w_uv) = (fill(heads * rank * nope, 6), fill(heads * v_dim * rank, 7));
        // `out[i, r] = Σ_c x[i, c] · w[head][r, c]` for `[rows, cols]` weights.
        let product = |w: &[f32], head: usize, rows: usize, x: &[f32], out: &mut [f32]| {
            let cols = x.len() / (out.len() / rows);
            let w = &w[head * rows * cols..][..rows * cols];
            for (x, out) in x.chunks_exact(cols).zip(out.chunks_exact_mut(rows)) {
                for (o, w) in out.iter_mut().zip(w.chunks_exact(cols)) {
                    *o = dot(x, w);
                }
            }
        };
        let matrices = HeadMatrices {
            nope,
            v_dim,
            uk: |h: usize, x: &[f32], out: &mut [f32]| product(&w_uk, h, rank, x, out),
            uv: |h: usize, x: &[f32], out: &mut [f32]| product(&w_uv, h, v_dim, x, out),
        };
        let (q_nope, q_pe) = (
            fill(tokens * heads * nope, 8),
            fill(tokens * heads * rope, 9),
        );
        let shape = LatentShape {
            heads,
            rank,
            width,
            block_size,
        };
        let mut queries = vec![0f32; tokens * heads * width];
        for (i, q) in queries.chunks_exact_mut(width).enumerate() {
            (matrices.uk)(i % heads, &q_nope[i * nope..][..nope], &mut q[..rank]);
            q[rank..].copy_from_slice(&q_pe[i * rope..][..rope]);
        }
        let latents = absorbed_attention(&queries, &cache, &seqs, shape, 0.3);
        let mut want = vec![0f32; tokens * heads * v_dim];
        for (i, out) in want.chunks_exact_mut(v_dim).enumerate() {
            (matrices.uv)(i % heads, &latents[i * rank..][..rank], out);
        }
        for run in [fused_absorbed_attention, phased_absorbed_attention] {
            let got = run(&q_nope, &q_pe, &cache, &seqs, shape, 0.3, &matrices);
            assert_eq!(got.len(), want.len());
            for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (a - b).abs() <= 1e-6 * (1.0 + b.abs()),
                    "number {i}: fused {a}, steps {b}"
                );
            }
        }
    }

    /// Long contexts split into 512-row chunks, unless the partial outputs
    /// of that many tokens would pass the budget.
    #[test]
    fn split_contexts_stay_within_the_partial_budget() {
        // One decode token of DeepSeek-V3's attention (128 heads, rank 512).
        let per_chunk = 128 * 512;
        assert_eq!(chunks_for(100, 1, per_chunk), 1);
        assert_eq!(chunks_for(2048, 1, per_chunk), 4);
        assert_eq!(chunks_for(2049, 1, per_chunk), 5);
        // A 128K-token context: as many chunks as the budget allows.
        assert_eq!(
            chunks_for(131_072, 1, per_chunk),
            PARTIAL_BUDGET / per_chunk
        );
        // A long prompt's prefill: no split.
        assert_eq!(chunks_for(8192, 4096, per_chunk), 1);
        assert!(16 * chunks_for(65_536, 16, per_chunk) * per_chunk <= PARTIAL_BUDGET);
    }
}
