//! Validation at the edge: the sampling fields both generation APIs share
//! ([`SamplingRequest`]) become the engine's [`SamplingFields`], which the
//! engine's one validation checks against the engine's limits; only what is
//! HTTP's own (`stream_options`) is checked here. Behind this point values
//! are trusted.

use ferroseek_engine::{SamplingFields, ValidSampling};

use crate::error::ApiError;
use crate::openai::common::SamplingRequest;
use crate::state::Ready;

/// The shared fields as the engine's; the route adds what differs between
/// chat and completions (the name, floor and default of `max_tokens`, and
/// the log-probability fields).
pub fn engine_fields(req: &SamplingRequest) -> SamplingFields<'_> {
    SamplingFields {
        max_tokens: req.max_tokens.map(|m| ("max_tokens", m)),
        temperature: req.temperature,
        top_p: req.top_p,
        n: req.n,
        stop: req.stop.as_ref().map(|s| s.as_slice()),
        presence_penalty: req.presence_penalty,
        frequency_penalty: req.frequency_penalty,
        logit_bias: req.logit_bias.as_ref(),
        seed: req.seed,
        top_k: req.top_k,
        min_p: req.min_p,
        repetition_penalty: req.repetition_penalty,
        ignore_eos: req.ignore_eos,
        stop_token_ids: req.stop_token_ids.as_deref(),
        skip_special_tokens: req.skip_special_tokens,
        ..Default::default()
    }
}

/// `fields` checked against the engine's limits; those left out take the
/// model's defaults (`--generation-config`).
pub fn validate(fields: &SamplingFields, ready: &Ready) -> Result<ValidSampling, ApiError> {
    Ok(fields.validate_with(&ready.engine.limits(), &ready.sampling_defaults)?)
}

/// `(stream, include_usage)` of a request; `stream_options` only goes with
/// `stream: true`, as OpenAI has it.
pub fn streaming(req: &SamplingRequest) -> Result<(bool, bool), ApiError> {
    let stream = req.stream.unwrap_or(false);
    let options = req.stream_options.as_ref();
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
