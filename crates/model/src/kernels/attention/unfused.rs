//! The attention step alone: latent queries in, attended latents out,
//! the per-head matrices around it left to the caller.

use super::plan::Plan;
use super::{Latent, LatentShape, RowStats, SeqSpan};
use crate::kernels::parallel::{self, Disjoint};

/// `queries`: `[tokens, heads, width]`; `cache`: the layer's `[slots, width]` rows.
/// Returns `[tokens, heads, rank]`: per head, softmax(scale · q·rowᵀ) · c_kv.
/// Token `j` of a sequence sees cache positions `0..=num_cached + j`.
pub fn absorbed_attention<E: Latent>(
    queries: &[f32],
    cache: &[E],
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
