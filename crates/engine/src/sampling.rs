//! Choosing the next token from a row of logits.
//!
//! Order of operations, as vLLM and transformers apply them: logit bias,
//! repetition penalty (prompt and output tokens), presence and frequency
//! penalties (output tokens, as OpenAI defines them), then greedy argmax, or
//! temperature, `top_k`, `min_p`, `top_p` and a draw from this sequence's own
//! random generator. Reported log-probabilities are those of the model's own
//! distribution (log softmax of the raw logits), as vLLM reports by default.

use std::collections::HashMap;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::request::{SamplingParams, TokenLogprob};

/// The sampling state of one sequence: its parameters, its random generator
/// and the counts its penalties need.
#[derive(Debug, Clone)]
pub struct Sampler {
    params: SamplingParams,
    rng: ChaCha8Rng,
    /// Times each token was generated (presence/frequency penalties).
    output_counts: HashMap<u32, u32>,
    /// Tokens of the prompt or the output (repetition penalty).
    seen: HashMap<u32, ()>,
}

impl Sampler {
    /// The sampler of choice `choice` of a request; a seeded request's choices
    /// each get their own stream derived from the seed.
    pub fn new(params: SamplingParams, prompt: &[u32], choice: usize) -> Self {
        let rng = match params.seed {
            Some(seed) => ChaCha8Rng::seed_from_u64(
                seed ^ (choice as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
            ),
            None => ChaCha8Rng::seed_from_u64(rand::rng().random()),
        };
        let seen = if params.repetition_penalty != 1.0 {
            prompt.iter().map(|&t| (t, ())).collect()
        } else {
            HashMap::new()
        };
        Sampler {
            params,
            rng,
            output_counts: HashMap::new(),
            seen,
        }
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Picks the next token from `logits` and records it as generated.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        let token = self.choose(logits);
        *self.output_counts.entry(token).or_insert(0) += 1;
        if self.params.repetition_penalty != 1.0 {
            self.seen.insert(token, ());
        }
        token
    }

    fn choose(&mut self, logits: &[f32]) -> u32 {
        let p = &self.params;
        let needs_adjusting = !p.logit_bias.is_empty()
            || p.repetition_penalty != 1.0
            || p.presence_penalty != 0.0
            || p.frequency_penalty != 0.0;
        let adjusted;
        let logits = if needs_adjusting {
            adjusted = self.adjust(logits);
            &adjusted[..]
        } else {
            logits
        };
        if p.is_greedy() {
            return argmax(logits);
        }
        let inv_t = 1.0 / p.temperature;
        // Candidates (token, scaled logit), most likely first after filtering.
        let mut cands: Vec<(u32, f32)> = match p.top_k {
            Some(k) if k > 0 && k < logits.len() => top_k(logits, k),
            _ => logits
                .iter()
                .enumerate()
                .map(|(i, &l)| (i as u32, l))
                .collect(),
        };
        cands.retain(|(_, l)| l.is_finite());
        if cands.is_empty() {
            return argmax(logits);
        }
        let max = cands.iter().map(|c| c.1).fold(f32::NEG_INFINITY, f32::max);
        // Unnormalised probabilities, in place.
        for c in cands.iter_mut() {
            c.1 = ((c.1 - max) * inv_t).exp();
        }
        if p.min_p > 0.0 {
            // The most likely token has weight exp(0) = 1.
            cands.retain(|c| c.1 >= p.min_p);
        }
        if p.top_p < 1.0 {
            cands.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            let total: f32 = cands.iter().map(|c| c.1).sum();
            let target = p.top_p * total;
            let mut cum = 0.0;
            let mut keep = cands.len();
            for (i, c) in cands.iter().enumerate() {
                cum += c.1;
                if cum >= target {
                    keep = i + 1;
                    break;
                }
            }
            cands.truncate(keep.max(1));
        }
        let total: f32 = cands.iter().map(|c| c.1).sum();
        let mut r = self.rng.random::<f32>() * total;
        for &(tok, w) in &cands {
            if r < w {
                return tok;
            }
            r -= w;
        }
        cands.last().map(|c| c.0).unwrap_or(0)
    }

    /// Bias and penalties applied to a copy of `logits`.
    fn adjust(&self, logits: &[f32]) -> Vec<f32> {
        let p = &self.params;
        let mut out = logits.to_vec();
        let vocab = out.len();
        if p.repetition_penalty != 1.0 {
            for &t in self.seen.keys() {
                if let Some(l) = out.get_mut(t as usize) {
                    *l = if *l > 0.0 {
                        *l / p.repetition_penalty
                    } else {
                        *l * p.repetition_penalty
                    };
                }
            }
        }
        if p.presence_penalty != 0.0 || p.frequency_penalty != 0.0 {
            for (&t, &count) in &self.output_counts {
                if let Some(l) = out.get_mut(t as usize) {
                    *l -= p.presence_penalty + p.frequency_penalty * count as f32;
                }
            }
        }
        for &(t, bias) in &p.logit_bias {
            if (t as usize) < vocab {
                out[t as usize] += bias;
            }
        }
        out
    }
}

/// The first index of the largest value (NaN never wins).
pub fn argmax(values: &[f32]) -> u32 {
    let mut best = 0usize;
    let mut best_v = f32::NEG_INFINITY;
    for (i, &v) in values.iter().enumerate() {
        if v > best_v {
            best = i;
            best_v = v;
        }
    }
    best as u32
}

/// The `k` largest (index, value) pairs, largest first (lower index on ties).
pub fn top_k(values: &[f32], k: usize) -> Vec<(u32, f32)> {
    let k = k.min(values.len());
    if k == 0 {
        return Vec::new();
    }
    let better = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    if k <= 32 {
        // A small sorted buffer beats sorting the whole vocabulary.
        let mut best: Vec<(u32, f32)> = Vec::with_capacity(k + 1);
        for (i, &v) in values.iter().enumerate() {
            if v.is_nan() || (best.len() == k && v <= best[k - 1].1) {
                continue;
            }
            let item = (i as u32, v);
            let at = best.partition_point(|b| better(b, &item).is_lt());
            best.insert(at, item);
            best.truncate(k);
        }
        return best;
    }
    let mut all: Vec<(u32, f32)> = values
        .iter()
        .enumerate()
        .filter(|(_, v)| !v.is_nan())
        .map(|(i, &v)| (i as u32, v))
        .collect();
    let k = k.min(all.len());
    if k < all.len() {
        all.select_nth_unstable_by(k - 1, better);
        all.truncate(k);
    }
    all.sort_unstable_by(better);
    all
}

/// log(sum(exp(values))), computed stably.
pub fn log_sum_exp(values: &[f32]) -> f32 {
    let max = values.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if !max.is_finite() {
        return max;
    }
    let sum: f64 = values.iter().map(|&v| ((v - max) as f64).exp()).sum();
    max + sum.ln() as f32
}

/// The log-probability of `token` under softmax(`logits`), with the `top`
/// most likely alternatives.
pub fn token_logprob(logits: &[f32], token: u32, top: usize) -> TokenLogprob {
    let lse = log_sum_exp(logits);
    TokenLogprob {
        token,
        logprob: logits
            .get(token as usize)
            .map_or(f32::NEG_INFINITY, |l| l - lse),
        top: top_k(logits, top)
            .into_iter()
            .map(|(t, l)| (t, l - lse))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(f: impl FnOnce(&mut SamplingParams)) -> SamplingParams {
        let mut p = SamplingParams::default();
        f(&mut p);
        p
    }

    #[test]
    fn greedy_takes_first_maximum() {
        let mut s = Sampler::new(SamplingParams::greedy(), &[], 0);
        assert_eq!(s.sample(&[0.0, 3.0, 3.0, 1.0]), 1);
    }

    #[test]
    fn top_k_matches_full_sort() {
        let v: Vec<f32> = (0..500).map(|i| ((i * 7919) % 503) as f32 * 0.1).collect();
        let mut sorted: Vec<(u32, f32)> =
            v.iter().enumerate().map(|(i, &x)| (i as u32, x)).collect();
        sorted.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        for k in [1, 5, 20, 33, 100, 500] {
            assert_eq!(top_k(&v, k), sorted[..k].to_vec(), "k = {k}");
        }
    }

    #[test]
    fn logit_bias_can_force_and_forbid() {
        let logits = [5.0, 0.0, 0.0];
        let mut s = Sampler::new(params(|p| p.logit_bias = vec![(2, 100.0)]), &[], 0);
        assert_eq!(s.sample(&logits), 2);
        let mut s = Sampler::new(
            params(|p| {
                p.temperature = 0.0;
                p.logit_bias = vec![(0, -100.0)];
            }),
            &[],
            0,
        );
        assert_eq!(s.sample(&logits), 1);
    }

    #[test]
    fn penalties_push_away_from_repeats() {
        let logits = [2.0, 1.9, -1.0];
        let mut s = Sampler::new(
            params(|p| {
                p.temperature = 0.0;
                p.frequency_penalty = 0.5;
            }),
            &[],
            0,
        );
        assert_eq!(s.sample(&logits), 0);
        assert_eq!(s.sample(&logits), 1);
        let mut s = Sampler::new(
            params(|p| {
                p.temperature = 0.0;
                p.repetition_penalty = 1.2;
            }),
            &[0],
            0,
        );
        assert_eq!(s.sample(&logits), 1);
    }

    #[test]
    fn top_p_and_min_p_restrict_the_draw() {
        let logits = [3.0, 2.9, -5.0, -5.0];
        let mut s = Sampler::new(params(|p| p.top_p = 0.5), &[], 0);
        for _ in 0..200 {
            assert_eq!(s.sample(&logits), 0);
        }
        let mut s = Sampler::new(params(|p| p.min_p = 0.5), &[], 0);
        for _ in 0..200 {
            assert!(s.sample(&logits) < 2);
        }
        let mut s = Sampler::new(params(|p| p.top_k = Some(1)), &[], 0);
        assert_eq!(s.sample(&[0.0, 1.0, 0.5]), 1);
    }

    #[test]
    fn draws_follow_the_distribution() {
        // p = softmax([ln 3, 0]) = [0.75, 0.25].
        let logits = [3f32.ln(), 0.0];
        let mut s = Sampler::new(params(|p| p.seed = Some(7)), &[], 0);
        let n = 20_000;
        let zeros = (0..n).filter(|_| s.sample(&logits) == 0).count();
        let frac = zeros as f64 / n as f64;
        assert!((frac - 0.75).abs() < 0.02, "frequency of token 0: {frac}");
    }

    #[test]
    fn seeded_samplers_repeat() {
        let logits: Vec<f32> = (0..50).map(|i| (i as f32 * 0.37).sin()).collect();
        let run = |choice| {
            let mut s = Sampler::new(params(|p| p.seed = Some(42)), &[], choice);
            (0..30).map(|_| s.sample(&logits)).collect::<Vec<_>>()
        };
        assert_eq!(run(0), run(0));
        assert_ne!(run(0), run(1));
    }

    #[test]
    fn logprobs_are_normalised() {
        let logits = [1.0, 2.0, 3.0];
        let lp = token_logprob(&logits, 2, 3);
        let total: f32 = lp.top.iter().map(|t| t.1.exp()).sum();
        assert!((total - 1.0).abs() < 1e-6);
        assert_eq!(lp.top[0].0, 2);
        assert!((lp.logprob - lp.top[0].1).abs() < 1e-7);
    }
}
