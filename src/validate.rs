//! Validation at the edge: the sampling fields both generation APIs share
//! are checked here and turned into the engine's [`SamplingParams`] and
//! [`StopConditions`]; behind this point values are trusted. Every message
//! names the field: "`top_p` must be in (0, 1], got 1.5".

use std::collections::BTreeMap;

use ferroseek_engine::{SamplingParams, StopConditions, MAX_TOP_LOGPROBS};

use crate::error::ApiError;
use crate::openai::common::{StopField, StreamOptions};

/// Most stop strings per request. OpenAI allows 4; vLLM-based tools send
/// more, so we allow 16.
pub const MAX_STOP_STRINGS: usize = 16;
/// Longest stop string, in bytes.
pub const MAX_STOP_LEN: usize = 1024;
/// Most `logit_bias` entries (OpenAI's limit).
pub const MAX_LOGIT_BIAS: usize = 300;

/// What the model and the server allow.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub vocab_size: usize,
    pub max_num_seqs: usize,
    pub max_model_len: usize,
}

/// The sampling fields of a chat or completion request, as sent.
#[derive(Debug, Default)]
pub struct SamplingFields<'a> {
    pub max_tokens: Option<(&'static str, i64)>,
    /// Smallest `max_tokens` allowed (1 for chat, 0 for completions).
    pub min_max_tokens: i64,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub n: Option<i64>,
    pub stop: Option<&'a StopField>,
    pub presence_penalty: Option<f64>,
    pub frequency_penalty: Option<f64>,
    pub logit_bias: Option<&'a BTreeMap<String, f64>>,
    pub seed: Option<i64>,
    pub top_k: Option<i64>,
    pub min_p: Option<f64>,
    pub repetition_penalty: Option<f64>,
    pub ignore_eos: Option<bool>,
    pub stop_token_ids: Option<&'a [u32]>,
}

/// Checked sampling and stopping, ready for an engine request.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidSampling {
    pub sampling: SamplingParams,
    pub stop: StopConditions,
    pub n: usize,
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
const PENALTY: Allowed = Allowed {
    ok: |v| (-2.0..=2.0).contains(&v),
    rule: "in [-2, 2]",
};

impl Allowed {
    /// `value` as f32 when finite and allowed; else what is wrong with it.
    pub fn check(&self, name: &str, value: f64) -> Result<f32, String> {
        if value.is_finite() && (self.ok)(value) {
            Ok(value as f32)
        } else {
            Err(format!("`{name}` must be {}, got {value}", self.rule))
        }
    }
}

fn check_range(name: &str, value: Option<f64>, allowed: Allowed) -> Result<Option<f32>, ApiError> {
    value
        .map(|v| allowed.check(name, v))
        .transpose()
        .map_err(|message| ApiError::invalid(name, message))
}

impl SamplingFields<'_> {
    /// [`Self::validate_with`] the OpenAI defaults.
    #[cfg(test)]
    pub fn validate(&self, limits: &Limits) -> Result<ValidSampling, ApiError> {
        self.validate_with(limits, &SamplingParams::default())
    }

    /// Checks the fields; those left out take `defaults` (the model's
    /// generation config, or the OpenAI defaults).
    pub fn validate_with(
        &self,
        limits: &Limits,
        defaults: &SamplingParams,
    ) -> Result<ValidSampling, ApiError> {
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
                return Err(ApiError::invalid(
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
                return Err(ApiError::invalid(
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
                return Err(ApiError::invalid(
                    name,
                    format!(
                        "`{name}` must be between {} and {} (the model's context length), got {m}",
                        self.min_max_tokens, limits.max_model_len
                    ),
                ));
            }
            stop.max_tokens = Some(m as usize);
        }
        if let Some(field) = self.stop {
            stop.stop_strings = check_stop(field.clone().into_vec())?;
        }
        if let Some(ids) = self.stop_token_ids {
            if let Some((i, id)) = ids
                .iter()
                .enumerate()
                .find(|(_, &id)| id as usize >= limits.vocab_size)
            {
                return Err(ApiError::invalid(
                    format!("stop_token_ids[{i}]"),
                    format!(
                        "`stop_token_ids[{i}]` is {id}, outside the vocabulary (ids 0..{})",
                        limits.vocab_size
                    ),
                ));
            }
            stop.stop_token_ids = ids.to_vec();
        }
        Ok(ValidSampling { sampling, stop, n })
    }

    fn logit_bias(&self, limits: &Limits) -> Result<Vec<(u32, f32)>, ApiError> {
        let Some(map) = self.logit_bias else {
            return Ok(Vec::new());
        };
        if map.len() > MAX_LOGIT_BIAS {
            return Err(ApiError::invalid(
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
                    ApiError::invalid(
                        "logit_bias",
                        format!(
                            "`logit_bias` key `{key}` is not a token id of this model (ids 0..{})",
                            limits.vocab_size
                        ),
                    )
                })?;
            if !(-100.0..=100.0).contains(&bias) {
                return Err(ApiError::invalid(
                    "logit_bias",
                    format!("`logit_bias` value for token {id} must be in [-100, 100], got {bias}"),
                ));
            }
            out.push((id, bias as f32));
        }
        Ok(out)
    }
}

fn check_stop(stops: Vec<String>) -> Result<Vec<String>, ApiError> {
    if stops.len() > MAX_STOP_STRINGS {
        return Err(ApiError::invalid(
            "stop",
            format!(
                "`stop` has {} strings; at most {MAX_STOP_STRINGS} are allowed",
                stops.len()
            ),
        ));
    }
    for (i, s) in stops.iter().enumerate() {
        if s.is_empty() || s.len() > MAX_STOP_LEN {
            return Err(ApiError::invalid(
                "stop",
                format!(
                    "`stop[{i}]` must be between 1 and {MAX_STOP_LEN} bytes long, got {}",
                    s.len()
                ),
            ));
        }
    }
    Ok(stops)
}

/// `(stream, include_usage)` of a request; `stream_options` only goes with
/// `stream: true`, as OpenAI has it.
pub fn check_streaming(
    stream: Option<bool>,
    options: Option<&StreamOptions>,
) -> Result<(bool, bool), ApiError> {
    let stream = stream.unwrap_or(false);
    if options.is_some() && !stream {
        return Err(ApiError::invalid(
            "stream_options",
            "`stream_options` is only allowed with `stream: true`",
        ));
    }
    Ok((
        stream,
        options.and_then(|o| o.include_usage).unwrap_or(false),
    ))
}

/// `top_logprobs`/`logprobs` alternatives: 0..=20.
pub fn check_top_logprobs(name: &str, k: i64) -> Result<usize, ApiError> {
    if (0..=MAX_TOP_LOGPROBS as i64).contains(&k) {
        Ok(k as usize)
    } else {
        Err(ApiError::invalid(
            name,
            format!("`{name}` must be between 0 and {MAX_TOP_LOGPROBS}, got {k}"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        vocab_size: 100,
        max_num_seqs: 8,
        max_model_len: 256,
    };

    fn param_of(fields: SamplingFields) -> Option<String> {
        fields.validate(&LIMITS).err().and_then(|e| e.detail.param)
    }

    /// The model's generation config fills the fields a request leaves
    /// out, and only those.
    #[test]
    fn left_out_fields_take_the_model_defaults() {
        let model = SamplingParams {
            temperature: 0.6,
            top_p: 0.95,
            top_k: Some(20),
            ..Default::default()
        };
        let got = SamplingFields::default()
            .validate_with(&LIMITS, &model)
            .unwrap()
            .sampling;
        assert_eq!(got, model);
        let got = SamplingFields {
            temperature: Some(0.0),
            top_p: Some(0.5),
            top_k: Some(-1),
            ..Default::default()
        }
        .validate_with(&LIMITS, &model)
        .unwrap()
        .sampling;
        assert_eq!((got.temperature, got.top_p, got.top_k), (0.0, 0.5, None));
    }

    #[test]
    fn defaults_are_openai_defaults() {
        let v = SamplingFields::default().validate(&LIMITS).unwrap();
        assert_eq!(v.sampling, SamplingParams::default());
        assert_eq!(v.n, 1);
        assert_eq!(v.stop.max_tokens, None);
    }

    #[test]
    fn out_of_range_values_name_their_field() {
        let cases: Vec<(SamplingFields, &str)> = vec![
            (
                SamplingFields {
                    temperature: Some(2.5),
                    ..Default::default()
                },
                "temperature",
            ),
            (
                SamplingFields {
                    temperature: Some(-0.1),
                    ..Default::default()
                },
                "temperature",
            ),
            (
                SamplingFields {
                    top_p: Some(0.0),
                    ..Default::default()
                },
                "top_p",
            ),
            (
                SamplingFields {
                    min_p: Some(1.5),
                    ..Default::default()
                },
                "min_p",
            ),
            (
                SamplingFields {
                    presence_penalty: Some(3.0),
                    ..Default::default()
                },
                "presence_penalty",
            ),
            (
                SamplingFields {
                    frequency_penalty: Some(-2.5),
                    ..Default::default()
                },
                "frequency_penalty",
            ),
            (
                SamplingFields {
                    repetition_penalty: Some(0.0),
                    ..Default::default()
                },
                "repetition_penalty",
            ),
            (
                SamplingFields {
                    top_k: Some(-2),
                    ..Default::default()
                },
                "top_k",
            ),
            (
                SamplingFields {
                    n: Some(0),
                    ..Default::default()
                },
                "n",
            ),
            (
                SamplingFields {
                    n: Some(9),
                    ..Default::default()
                },
                "n",
            ),
            (
                SamplingFields {
                    max_tokens: Some(("max_tokens", -1)),
                    ..Default::default()
                },
                "max_tokens",
            ),
            (
                SamplingFields {
                    max_tokens: Some(("max_tokens", 257)),
                    ..Default::default()
                },
                "max_tokens",
            ),
            (
                SamplingFields {
                    stop_token_ids: Some(&[5, 100]),
                    ..Default::default()
                },
                "stop_token_ids[1]",
            ),
        ];
        for (fields, param) in cases {
            assert_eq!(param_of(fields).as_deref(), Some(param));
        }
    }

    #[test]
    fn logit_bias_needs_ids_in_vocab_and_values_in_range() {
        let ok = BTreeMap::from([("5".to_string(), -100.0), ("7".to_string(), 3.5)]);
        let v = SamplingFields {
            logit_bias: Some(&ok),
            ..Default::default()
        }
        .validate(&LIMITS)
        .unwrap();
        assert_eq!(v.sampling.logit_bias, vec![(5, -100.0), (7, 3.5)]);
        for (key, value) in [("100", 1.0), ("x", 1.0), ("-1", 1.0), ("5", 100.5)] {
            let bad = BTreeMap::from([(key.to_string(), value)]);
            let fields = SamplingFields {
                logit_bias: Some(&bad),
                ..Default::default()
            };
            assert_eq!(
                param_of(fields).as_deref(),
                Some("logit_bias"),
                "{key}: {value}"
            );
        }
    }

    #[test]
    fn stop_strings_are_limited() {
        let many = StopField::Many((0..17).map(|i| i.to_string()).collect());
        assert_eq!(
            param_of(SamplingFields {
                stop: Some(&many),
                ..Default::default()
            })
            .as_deref(),
            Some("stop")
        );
        let empty = StopField::One(String::new());
        assert!(SamplingFields {
            stop: Some(&empty),
            ..Default::default()
        }
        .validate(&LIMITS)
        .is_err());
        let one = StopField::One("\n\n".into());
        let v = SamplingFields {
            stop: Some(&one),
            top_k: Some(-1),
            ..Default::default()
        }
        .validate(&LIMITS)
        .unwrap();
        assert_eq!(v.stop.stop_strings, ["\n\n"]);
        assert_eq!(v.sampling.top_k, None);
    }
}
