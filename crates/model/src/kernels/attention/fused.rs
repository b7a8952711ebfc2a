//! The whole absorbed attention in one parallel region whose work items
//! are groups of heads over every token: for few tokens and short
//! contexts.

use super::item::{Item, Path};
use super::matrices::{token_chunks, HeadMatrices, FUSED_TOKENS};
use super::plan::{owners, CHUNK_ROWS};
use super::{context_rows, Latent, LatentShape, SeqSpan};
use crate::kernels::parallel::{self, Disjoint};

/// Whether [`fused_absorbed_attention`] is the faster fused kernel for
/// `heads` heads and `tokens` tokens whose longest context is `context`
/// rows; elsewhere [`phased_absorbed_attention`] is. Its work items are
/// groups of heads, each over every token and its whole context: that
/// keeps the pool busy only with two items per thread, and it reads each
/// cache row once per item, where [`absorbed_attention`]'s items share a
/// row among more heads once there are enough tokens to give each thread
/// two (there a batch-8 step was slower fused than unfused) and split
/// contexts longer than [`CHUNK_ROWS`].
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
/// those fixed costs weighed as much as reading them (measurements in
/// `crates/model/benches/README.md`).
///
/// `q_nope`: `[tokens, heads, nope]`; `q_pe`: `[tokens, heads, width -
/// rank]` (rotated). Returns `[tokens, heads, v_dim]`. Any call gives the
/// unfused steps' numbers; [`fused_pays`] says when it is the faster.
pub fn fused_absorbed_attention<E: Latent, UK, UV>(
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
        let mut rows: Vec<&[E]> = Vec::new();
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
