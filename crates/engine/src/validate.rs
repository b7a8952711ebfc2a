//! The one validation of a request's sampling and limits. A caller (the
//! HTTP server) fills [`SamplingFields`] with the values as the client sent
//! them; [`SamplingFields::validate`] turns them into a [`ValidSampling`],
//! and [`ValidSampling::request`] adds a prompt to make the
//! [`ValidRequest`] that [`Engine::submit`](crate::Engine::submit) takes.
//! Behind this point values are trusted: the engine itself checks only what
//! only it knows (the context and the cache). Every message names the
//! field, "`top_p` must be in (0, 1], got 1.5", and the error carries the
//! field's name as data.

use std::collections::BTreeMap;

use crate::constrain::Grammar;
use crate::request::{Request, SamplingParams, StopConditions, MAX_TOP_LOGPROBS};

/// Most stop strings per request. OpenAI allows 4; vLLM-based tools send
/// more, so we allow 16.
pub const MAX_STOP_STRINGS: usize = 16;
/// Longest stop string, in bytes.
pub const MAX_STOP_LEN: usize = 1024;
/// Most `logit_bias` entries (OpenAI's limit).
pub const MAX_LOGIT_BIAS: usize = 300;

/// What the model and the engine allow; [`Engine::limits`](crate::Engine::limits)
/// gives an engine's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Token ids `0..vocab_size` exist.
    pub vocab_size: usize,
    /// Most choices (`n`) per request: all run in one batch.
    pub max_num_seqs: usize,
    /// Longest sequence (prompt + generated).
    pub max_model_len: usize,
}

/// A request field out of range: the field at fault, as the OpenAI API
/// names it (`top_p`, `stop_token_ids[1]`, `prompt`), and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct InvalidParameter {
    pub param: String,
    pub message: String,
}

impl InvalidParameter {
    pub fn new(param: impl Into<String>, message: impl Into<String>) -> Self {
        InvalidParameter {
            param: param.into(),
            message: message.into(),
        }
    }
}

/// The values a float sampling field allows, and how a message says so.
/// Shared by requests and the model's `generation_config.json`.
pub struct Allowed {
    pub ok: fn(f64) -> bool,
    pub rule: &'static str,
}

pub const TEMPERATURE: Allowed = Allowed {
    ok: |v| (0.0..=2.0).contains(&v),
    rule: "in [0, 2]",
};
pub const TOP_P: Allowed = Allowed {
    ok: |v| v > 0.0 && v <= 1.0,
    rule: "in (0, 1]",
};
pub const MIN_P: Allowed = Allowed {
    ok: |v| (0.0..=1.0).contains(&v),
    rule: "in [0, 1]",
};
pub const REPETITION_PENALTY: Allowed = Allowed {
    ok: |v| v > 0.0 && v <= 10.0,
    rule: "in (0, 10]",
};
/// `presence_penalty` and `frequency_penalty`.
pub const PENALTY: Allowed = Allowed {
    ok: |v| (-2.0..=2.0).contains(&v),
    rule: "in [-2, 2]",
};

impl Allowed {
    /// `value` as f32 when finite and allowed; else what is wrong with it.
    pub fn check(&self, name: &str, value: f64) -> Result<f32, InvalidParameter> {
        if value.is_finite() && (self.ok)(value) {
            Ok(value as f32)
        } else {
            Err(InvalidParameter::new(
                name,
                format!("`{name}` must be {}, got {value}", self.rule),
            ))
        }
    }
}

/// The sampling fields of a request, as the client sent them.
#[derive(Debug, Clone, Default)]
pub struct SamplingFields<'a> {
    /// Most tokens per choice, under the field's name (`max_tokens`,
    /// `max_completion_tokens`).
    pub max_tokens: Option<(&'static str, i64)>,
    /// Smallest `max_tokens` allowed (1 for chat, 0 for completions).
    pub min_max_tokens: i64,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub n: Option<i64>,
    pub stop: Option<&'a [String]>,
    pub presence_penalty: Option<f64>,
    pub frequency_penalty: Option<f64>,
    /// Token id (as a string) to a bias added to its logit.
    pub logit_bias: Option<&'a BTreeMap<String, f64>>,
    pub seed: Option<i64>,
    /// -1 or 0 keep every token.
    pub top_k: Option<i64>,
    pub min_p: Option<f64>,
    pub repetition_penalty: Option<f64>,
    pub ignore_eos: Option<bool>,
    pub stop_token_ids: Option<&'a [u32]>,
    /// Alternatives per generated token, under the field's name
    /// (`top_logprobs`, `logprobs`); given, the log-probabilities are returned.
    pub logprobs: Option<(&'static str, i64)>,
    /// Alternatives per prompt token, under the field's name; given, the
    /// prompt's log-probabilities are returned (the first token has none).
    pub prompt_logprobs: Option<(&'static str, i64)>,
    /// Drop special tokens from the text. Default true.
    pub skip_special_tokens: Option<bool>,
}

/// Checked sampling and stopping, ready to make requests of.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidSampling {
    sampling: SamplingParams,
    stop: StopConditions,
    n: usize,
    logprobs: Option<usize>,
    prompt_logprobs: Option<usize>,
    skip_special_tokens: bool,
    /// A compiled grammar the output must match.
    grammar: Option<Grammar>,
    /// What the fields were checked against; prompts are checked against it too.
    limits: Limits,
}

impl ValidSampling {
    pub fn sampling(&self) -> &SamplingParams {
        &self.sampling
    }

    pub fn stop(&self) -> &StopConditions {
        &self.stop
    }

    /// Choices per prompt.
    pub fn n(&self) -> usize {
        self.n
    }

    /// Alternatives per generated token, when log-probabilities are asked for.
    pub fn logprobs(&self) -> Option<usize> {
        self.logprobs
    }

    pub fn skip_special_tokens(&self) -> bool {
        self.skip_special_tokens
    }

    /// The same sampling with the output held to `grammar` (compiled by
    /// [`Grammars::compile`](crate::constrain::Grammars::compile), which is
    /// where a grammar is checked).
    pub fn with_grammar(mut self, grammar: Option<Grammar>) -> Self {
        self.grammar = grammar;
        self
    }

    pub fn grammar(&self) -> Option<&Grammar> {
        self.grammar.as_ref()
    }

    /// A request for `prompt` with this sampling; the prompt must hold at
    /// least one token and only ids of the vocabulary.
    pub fn request(
        &self,
        id: impl Into<String>,
        prompt: Vec<u32>,
    ) -> Result<ValidRequest, InvalidParameter> {
        if prompt.is_empty() {
            return Err(InvalidParameter::new("prompt", "the prompt is empty"));
        }
        let vocab_size = self.limits.vocab_size;
        if let Some(&t) = prompt.iter().find(|&&t| t as usize >= vocab_size) {
            return Err(InvalidParameter::new(
                "prompt",
                format!("prompt token id {t} is outside the vocabulary (ids 0..{vocab_size})"),
            ));
        }
        Ok(ValidRequest(Request {
            id: id.into(),
            prompt,
            sampling: self.sampling.clone(),
            stop: self.stop.clone(),
            n: self.n,
            logprobs: self.logprobs,
            prompt_logprobs: self.prompt_logprobs,
            skip_special_tokens: self.skip_special_tokens,
            grammar: self.grammar.clone(),
        }))
    }
}

/// A request whose every field was checked; only [`ValidSampling::request`]
/// makes one.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidRequest(Request);

impl ValidRequest {
    pub fn request(&self) -> &Request {
        &self.0
    }

    pub(crate) fn into_request(self) -> Request {
        self.0
    }
}

fn check_range(
    name: &str,
    value: Option<f64>,
    allowed: Allowed,
) -> Result<Option<f32>, InvalidParameter> {
    value.map(|v| allowed.check(name, v)).transpose()
}

impl SamplingFields<'_> {
    /// [`Self::validate_with`] the OpenAI defaults.
    pub fn validate(&self, limits: &Limits) -> Result<ValidSampling, InvalidParameter> {
        self.validate_with(limits, &SamplingParams::default())
    }

    /// Checks the fields; those left out take `defaults` (the model's
    /// generation config, or the OpenAI defaults).
    pub fn validate_with(
        &self,
        limits: &Limits,
        defaults: &SamplingParams,
    ) -> Result<ValidSampling, InvalidParameter> {
        let mut sampling = defaults.clone();
        let fields = [
            (
                "temperature",
                self.temperature,
                TEMPERATURE,
                &mut sampling.temperature,
            ),
            ("top_p", self.top_p, TOP_P, &mut sampling.top_p),
            ("min_p", self.min_p, MIN_P, &mut sampling.min_p),
            (
                "presence_penalty",
                self.presence_penalty,
                PENALTY,
                &mut sampling.presence_penalty,
            ),
            (
                "frequency_penalty",
                self.frequency_penalty,
                PENALTY,
                &mut sampling.frequency_penalty,
            ),
            (
                "repetition_penalty",
                self.repetition_penalty,
                REPETITION_PENALTY,
                &mut sampling.repetition_penalty,
            ),
        ];
        for (name, value, allowed, dst) in fields {
            if let Some(v) = check_range(name, value, allowed)? {
                *dst = v;
            }
        }
        sampling.top_k = match self.top_k {
            None => sampling.top_k,
            Some(-1) | Some(0) => None,
            Some(k) if k > 0 => Some(k as usize),
            Some(k) => {
                return Err(InvalidParameter::new(
                    "top_k",
                    format!(
                        "`top_k` must be a positive number of tokens, or -1 or 0 for all; got {k}"
                    ),
                ))
            }
        };
        sampling.seed = self.seed.map(|s| s as u64);
        sampling.logit_bias = self.logit_bias(limits)?;

        let n = match self.n {
            None => 1,
            Some(n) if n >= 1 && n as u64 <= limits.max_num_seqs as u64 => n as usize,
            Some(n) => {
                return Err(InvalidParameter::new(
                    "n",
                    format!(
                        "`n` must be between 1 and {} (the server's `--max-num-seqs`), got {n}",
                        limits.max_num_seqs
                    ),
                ))
            }
        };

        let mut stop = StopConditions {
            ignore_eos: self.ignore_eos.unwrap_or(false),
            ..Default::default()
        };
        if let Some((name, m)) = self.max_tokens {
            if m < self.min_max_tokens || m as u64 > limits.max_model_len as u64 {
                return Err(InvalidParameter::new(
                    name,
                    format!(
                        "`{name}` must be between {} and {} (the model's context length), got {m}",
                        self.min_max_tokens, limits.max_model_len
                    ),
                ));
            }
            stop.max_tokens = Some(m as usize);
        }
        if let Some(stops) = self.stop {
            stop.stop_strings = check_stop(stops)?;
        }
        if let Some(ids) = self.stop_token_ids {
            check_token_ids("stop_token_ids", ids, limits.vocab_size)?;
            stop.stop_token_ids = ids.to_vec();
        }
        let [logprobs, prompt_logprobs] = [self.logprobs, self.prompt_logprobs].map(|asked| {
            asked
                .map(|(name, k)| check_top_logprobs(name, k))
                .transpose()
        });
        Ok(ValidSampling {
            sampling,
            stop,
            n,
            logprobs: logprobs?,
            prompt_logprobs: prompt_logprobs?,
            skip_special_tokens: self.skip_special_tokens.unwrap_or(true),
            grammar: None,
            limits: *limits,
        })
    }

    fn logit_bias(&self, limits: &Limits) -> Result<Vec<(u32, f32)>, InvalidParameter> {
        let Some(map) = self.logit_bias else {
            return Ok(Vec::new());
        };
        if map.len() > MAX_LOGIT_BIAS {
            return Err(InvalidParameter::new(
                "logit_bias",
                format!(
                    "`logit_bias` has {} entries; at most {MAX_LOGIT_BIAS} are allowed",
                    map.len()
                ),
            ));
        }
        let mut out = Vec::with_capacity(map.len());
        for (key, &bias) in map {
            let id = key
                .trim()
                .parse::<u32>()
                .ok()
                .filter(|&id| (id as usize) < limits.vocab_size)
                .ok_or_else(|| {
                    InvalidParameter::new(
                        "logit_bias",
                        format!(
                            "`logit_bias` key `{key}` is not a token id of this model (ids 0..{})",
                            limits.vocab_size
                        ),
                    )
                })?;
            if !(-100.0..=100.0).contains(&bias) {
                return Err(InvalidParameter::new(
                    "logit_bias",
                    format!("`logit_bias` value for token {id} must be in [-100, 100], got {bias}"),
                ));
            }
            out.push((id, bias as f32));
        }
        Ok(out)
    }
}

fn check_stop(stops: &[String]) -> Result<Vec<String>, InvalidParameter> {
    if stops.len() > MAX_STOP_STRINGS {
        return Err(InvalidParameter::new(
            "stop",
            format!(
                "`stop` has {} strings; at most {MAX_STOP_STRINGS} are allowed",
                stops.len()
            ),
        ));
    }
    for (i, s) in stops.iter().enumerate() {
        if s.is_empty() || s.len() > MAX_STOP_LEN {
            return Err(InvalidParameter::new(
                "stop",
                format!(
                    "`stop[{i}]` must be between 1 and {MAX_STOP_LEN} bytes long, got {}",
                    s.len()
                ),
            ));
        }
    }
    Ok(stops.to_vec())
}

/// Every id of the list field `name` in `0..vocab_size`; else the first
/// that is not, named with its index (`stop_token_ids[1]`).
pub fn check_token_ids(name: &str, ids: &[u32], vocab_size: usize) -> Result<(), InvalidParameter> {
    match ids.iter().position(|&id| id as usize >= vocab_size) {
        None => Ok(()),
        Some(i) => Err(InvalidParameter::new(
            format!("{name}[{i}]"),
            format!(
                "`{name}[{i}]` is {}, outside the vocabulary (ids 0..{vocab_size})",
                ids[i]
            ),
        )),
    }
}

/// `top_logprobs`/`logprobs` alternatives: 0..=20.
fn check_top_logprobs(name: &str, k: i64) -> Result<usize, InvalidParameter> {
    if (0..=MAX_TOP_LOGPROBS as i64).contains(&k) {
        Ok(k as usize)
    } else {
        Err(InvalidParameter::new(
            name,
            format!("`{name}` must be between 0 and {MAX_TOP_LOGPROBS}, got {k}"),
        ))
    }
}

#[cfg(test)]
mod tests;
