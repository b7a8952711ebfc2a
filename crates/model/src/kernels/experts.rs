//! Routed experts on the packed kernels: every active expert's MLP on its
//! own tokens, in one call of the packed kernel for all gate and up
//! projections and one for all down projections.

use super::packed::{self, Packed};
use super::silu::silu_times;

/// An MLP's quantized weights repacked for the VNNI kernels, on CPUs that
/// have them (the only copy). The gate and up projections stay two
/// weights, two jobs of the same kernel call on the same quantized input:
/// stacking them into one cost a copy of one of them at load, for nothing
/// at run time (each tile is read once per call either way).
#[derive(Debug, Clone)]
pub(crate) struct PackedMlp {
    pub(crate) gate: Packed,
    pub(crate) up: Packed,
    pub(crate) down: Packed,
}

impl PackedMlp {
    /// Each job `(mlp, rows)` applied to its rows of `x` (`[tokens, hidden]`,
    /// row-major): every job's `[rows, hidden]` output, one after another.
    /// Two calls of the packed kernel in all, one for every job's gate and
    /// up projections, one for their down projections.
    pub(crate) fn forward_each(
        x: &[f32],
        hidden: usize,
        jobs: &[(&PackedMlp, &[u32])],
    ) -> Vec<f32> {
        let first: Vec<(&Packed, Vec<usize>)> = jobs
            .iter()
            .flat_map(|(mlp, rows)| {
                let starts: Vec<usize> = rows.iter().map(|&r| r as usize * hidden).collect();
                [(&mlp.gate, starts.clone()), (&mlp.up, starts)]
            })
            .collect();
        // Per job: its rows' gate outputs, then their up outputs.
        let gate_up = packed::matmul_each(x, &first);
        let mut h = Vec::new();
        let mut second = Vec::with_capacity(jobs.len());
        let mut rows_in = gate_up.as_slice();
        for (mlp, rows) in jobs {
            let inter = mlp.down.dims().1;
            let start = h.len();
            let (gates, rest) = rows_in.split_at(2 * rows.len() * inter);
            rows_in = rest;
            let (gates, ups) = gates.split_at(rows.len() * inter);
            for (gate, up) in gates.chunks_exact(inter).zip(ups.chunks_exact(inter)) {
                silu_times(gate, up, &mut h);
            }
            second.push((
                &mlp.down,
                (0..rows.len()).map(|r| start + r * inter).collect(),
            ));
        }
        packed::matmul_each(&h, &second)
    }

    pub(crate) fn bytes(&self) -> usize {
        self.gate.bytes() + self.up.bytes() + self.down.bytes()
    }
}
