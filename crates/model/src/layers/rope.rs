//! Rotary position embedding on the rope part of queries and keys, with YaRN
//! scaling (Peng et al. 2023, "YaRN: Efficient Context Window Extension"), computed
//! as DeepSeek's code and `transformers`' `_compute_yarn_parameters` do.
//!
//! DeepSeek checkpoints rotate adjacent pairs `(x[2i], x[2i+1])` by
//! `position * inv_freq[i]` (GPT-J style). The tables are built once at load.

use std::f64::consts::PI;

use crate::config::{yarn_mscale, DeepSeekConfig, Yarn};

#[derive(Debug, Clone)]
pub struct Rope {
    half: usize,
    positions: usize,
    /// `[positions, half]`, already multiplied by YaRN's magnitude factor.
    cos: Vec<f32>,
    sin: Vec<f32>,
}

fn yarn_inv_freq(dim: usize, base: f64, y: &Yarn) -> Vec<f64> {
    let correction_dim = |rotations: f64| {
        dim as f64 * (y.original_max_position_embeddings as f64 / (rotations * 2.0 * PI)).ln()
            / (2.0 * base.ln())
    };
    let low = correction_dim(y.beta_fast).floor().max(0.0);
    let high = correction_dim(y.beta_slow).ceil().min(dim as f64 - 1.0);
    let high = if low == high { high + 0.001 } else { high };
    (0..dim / 2)
        .map(|i| {
            let extrapolated = 1.0 / base.powf(2.0 * i as f64 / dim as f64);
            let interpolated = extrapolated / y.factor;
            let ramp = ((i as f64 - low) / (high - low)).clamp(0.0, 1.0);
            let keep = 1.0 - ramp;
            interpolated * (1.0 - keep) + extrapolated * keep
        })
        .collect()
}

impl Rope {
    /// Tables for positions `0..positions`.
    pub fn new(cfg: &DeepSeekConfig, positions: usize) -> Self {
        let dim = cfg.qk_rope_head_dim;
        let base = cfg.rope_theta;
        let (inv_freq, magnitude) = match &cfg.yarn {
            Some(y) => (
                yarn_inv_freq(dim, base, y),
                yarn_mscale(y.factor, y.mscale) / yarn_mscale(y.factor, y.mscale_all_dim),
            ),
            None => (
                (0..dim / 2)
                    .map(|i| 1.0 / base.powf(2.0 * i as f64 / dim as f64))
                    .collect(),
                1.0,
            ),
        };
        // Frequencies in f32 as the reference keeps them, angles in f64.
        let inv_freq: Vec<f32> = inv_freq.iter().map(|&f| f as f32).collect();
        let half = dim / 2;
        let mut cos = Vec::with_capacity(positions * half);
        let mut sin = Vec::with_capacity(positions * half);
        for p in 0..positions {
            for &f in &inv_freq {
                let angle = (p as f32 * f) as f64;
                cos.push((angle.cos() * magnitude) as f32);
                sin.push((angle.sin() * magnitude) as f32);
            }
        }
        Rope {
            half,
            positions,
            cos,
            sin,
        }
    }

    pub fn max_positions(&self) -> usize {
        self.positions
    }

    /// Rotates one rope vector (`2 * half` values) in place for `position`.
    /// The caller guarantees `position < max_positions()`.
    pub fn rotate(&self, x: &mut [f32], position: usize) {
        let base = position * self.half;
        let cos = &self.cos[base..base + self.half];
        let sin = &self.sin[base..base + self.half];
        for (pair, (&c, &s)) in x.chunks_exact_mut(2).zip(cos.iter().zip(sin)) {
            let (a, b) = (pair[0], pair[1]);
            pair[0] = a * c - b * s;
            pair[1] = a * s + b * c;
        }
    }
}
