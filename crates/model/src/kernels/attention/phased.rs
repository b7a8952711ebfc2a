//! The whole absorbed attention in one parallel region of four phases,
//! for any number of tokens: the latent queries per head, the attention's
//! work items, the split contexts merged, the outputs per head.

use super::matrices::{token_chunks, HeadMatrices};
use super::plan::Plan;
use super::{Latent, LatentShape, RowStats, SeqSpan};
use crate::kernels::parallel::{self, Disjoint};

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
/// numbers are the unfused steps'.
pub fn phased_absorbed_attention<E: Latent, UK, UV>(
    q_nope: &[f32],
    q_pe: &[f32],
    cache: &[E],
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
