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
//!
//! - `plan`: how a call's tokens split into work items, and how split
//!   contexts merge.
//! - `unfused`: the attention step alone ([`absorbed_attention`]), between
//!   the per-head matrices the caller runs.
//! - `fused` and `phased`: the per-head matrices (`matrices`) and the
//!   attention in one parallel region, for few tokens and for any number.
//! - `item`: one work item's scores, softmax and weighted sums, with the
//!   `avx2` and `avx512` inner loops.
//! - `expanded`: the expanded form for prompts, where it costs less: per-head
//!   keys and values rebuilt from the latents, then tiled matrix products.

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
mod expanded;
mod fused;
mod item;
mod matrices;
mod phased;
mod plan;
#[cfg(test)]
mod tests;
mod unfused;

pub use expanded::{expanded_attention, expanded_pays, UpProjection};
pub(crate) use fused::{fused_absorbed_attention, fused_pays};
pub(crate) use matrices::HeadMatrices;
pub(crate) use phased::{phased_absorbed_attention, phases_fit};
pub use unfused::absorbed_attention;

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

/// Per head of a work item: the largest score and the sum of `exp(score -
/// max)` over its rows; its output rows are left unnormalised.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct RowStats {
    pub(super) max: f32,
    pub(super) sum: f32,
}

/// `rows` := the cache rows at positions `positions` of `span`'s context,
/// read in place through its block table.
pub(super) fn context_rows<'c>(
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
