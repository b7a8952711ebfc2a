//! MLA's per-head matrices around the attention, as the fused and the
//! phased kernels run them: a chunk of tokens of one head at a time, on
//! the calling thread.

use super::LatentShape;

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
pub(super) struct Scratch {
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
    pub(super) fn check(&self, q_nope: &[f32], q_pe: &[f32], tokens: usize, shape: LatentShape) {
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

    pub(super) fn scratch(&self, tokens: usize, rank: usize) -> Scratch {
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
    pub(super) fn queries(
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
    pub(super) fn outputs<'l>(
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
pub(super) fn token_chunks(tokens: usize) -> impl Iterator<Item = std::ops::Range<usize>> {
    (0..tokens)
        .step_by(FUSED_TOKENS)
        .map(move |c| c..(c + FUSED_TOKENS).min(tokens))
}

/// Tokens a fused work item takes through its three steps at once: its
/// per-head matrices are read once per this many tokens (from cache after
/// the first), and its buffers stay small however long the prompt.
pub(super) const FUSED_TOKENS: usize = 32;
