//! `POST /v1/chat/completions`, whole or streamed.

use std::time::Instant;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};

use ferroseek_engine::{ChoiceDelta, ChoiceOutput, Request, TokenLogprob};

use crate::chat_prompt::{self, TemplateOptions};
use crate::error::ApiError;
use crate::extract::JsonBody;
use crate::generate::{chat_logprob, system_fingerprint, Generation, Head, Shape, SseData};
use crate::openai::chat::{
    ChatChoice, ChatCompletionChunk, ChatCompletionRequest, ChatCompletionResponse, ChatLogprobs,
    ChatMessageOut, ChatTokenLogprob, ChunkChoice, Delta,
};
use crate::openai::common::{unix_now, Usage};
use crate::routes::RequestId;
use crate::state::AppState;
use crate::validate::{check_streaming, check_top_logprobs, SamplingFields};

#[utoipa::path(
    post,
    path = "/v1/chat/completions",
    request_body = ChatCompletionRequest,
    responses(
        (status = 200, description = "A chat completion, or with `stream: true` an SSE stream of `chat.completion.chunk`s ending with `data: [DONE]`", body = ChatCompletionResponse),
        (status = 400, description = "Invalid request", body = crate::error::ErrorResponse),
        (status = 404, description = "Unknown model", body = crate::error::ErrorResponse),
        (status = 429, description = "Queue full", body = crate::error::ErrorResponse),
        (status = 503, description = "Loading or shutting down", body = crate::error::ErrorResponse),
    )
)]
pub async fn chat_completions(
    State(state): State<AppState>,
    Extension(request_id): Extension<RequestId>,
    JsonBody(req): JsonBody<ChatCompletionRequest>,
) -> Result<Response, ApiError> {
    let start = Instant::now();
    let ready = state.ready()?;
    let model = state.resolve_model(req.model.as_deref())?;
    let limits = crate::routes::limits(&state, ready);
    let max_tokens = match (req.max_completion_tokens, req.max_tokens) {
        (Some(m), _) => Some(("max_completion_tokens", m)),
        (None, Some(m)) => Some(("max_tokens", m)),
        (None, None) => None,
    };
    let valid = SamplingFields {
        max_tokens,
        min_max_tokens: 1,
        temperature: req.temperature,
        top_p: req.top_p,
        n: req.n,
        stop: req.stop.as_ref(),
        presence_penalty: req.presence_penalty,
        frequency_penalty: req.frequency_penalty,
        logit_bias: req.logit_bias.as_ref(),
        seed: req.seed,
        top_k: req.top_k,
        min_p: req.min_p,
        repetition_penalty: req.repetition_penalty,
        ignore_eos: req.ignore_eos,
        stop_token_ids: req.stop_token_ids.as_deref(),
    }
    .validate_with(&limits, &ready.sampling_defaults)?;
    let top_logprobs = req
        .top_logprobs
        .map(|k| check_top_logprobs("top_logprobs", k))
        .transpose()?;
    let logprobs = match (req.logprobs.unwrap_or(false), top_logprobs) {
        (true, k) => Some(k.unwrap_or(0)),
        (false, Some(k)) if k > 0 => {
            return Err(ApiError::invalid(
                "top_logprobs",
                "`top_logprobs` needs `logprobs: true`",
            ))
        }
        (false, _) => None,
    };
    let (stream, include_usage) = check_streaming(req.stream, req.stream_options.as_ref())?;
    let prompt = chat_prompt::build(
        ready,
        &req.messages,
        &TemplateOptions {
            tools: req.tools.as_deref(),
            add_generation_prompt: req.add_generation_prompt.unwrap_or(true),
            chat_template_kwargs: req.chat_template_kwargs.as_ref(),
            thinking: req.thinking.as_ref(),
            reasoning_effort: req.reasoning_effort.as_deref(),
        },
    )?;
    let prompt_tokens = prompt.ids.len();
    tracing::debug!(prompt = %prompt.text, "rendered chat prompt");
    let n = valid.n;
    let request = Request {
        id: request_id.0.clone(),
        prompt: prompt.ids,
        sampling: valid.sampling,
        stop: valid.stop,
        n,
        logprobs,
        prompt_logprobs: None,
        skip_special_tokens: req.skip_special_tokens.unwrap_or(true),
    };
    let events = ready.engine.submit(request)?;
    tracing::info!(
        prompt_tokens,
        n,
        stream,
        user = req.user.as_deref().unwrap_or(""),
        "chat completion"
    );
    let generation = Generation {
        state: state.clone(),
        shape: ChatShape {
            state: state.clone(),
            n,
            logprobs: logprobs.is_some(),
        },
        head: Head {
            id: format!("chatcmpl-{}", request_id.0),
            model,
            created: unix_now(),
        },
        prompt_tokens,
        include_usage,
        start,
    };
    let outputs = (0..n)
        .map(|_| ChoiceOutput::new(ready.reasoning, prompt.opens_reasoning))
        .collect();
    generation.respond(vec![events], outputs, stream).await
}

/// The chat completion's JSON: a chunk per delta, the first of each choice
/// carrying the role; or one message per choice.
struct ChatShape {
    state: AppState,
    n: usize,
    logprobs: bool,
}

impl Shape for ChatShape {
    type Part = ChunkChoice;
    type Whole = ChatChoice;
    const ENDPOINT: &'static str = "chat";

    fn opening(&self) -> Vec<ChunkChoice> {
        let role = || Delta {
            role: Some("assistant"),
            content: Some(String::new()),
            reasoning_content: None,
        };
        (0..self.n)
            .map(|index| part(index, role(), None, None))
            .collect()
    }

    fn token(
        &mut self,
        index: usize,
        _: u32,
        delta: ChoiceDelta,
        logprob: Option<TokenLogprob>,
    ) -> Result<Option<ChunkChoice>, ApiError> {
        let logprobs = match (&logprob, self.state.ready()) {
            (Some(lp), Ok(ready)) if self.logprobs => Some(vec![chat_logprob(&ready.tokens, lp)]),
            _ => None,
        };
        Ok((!delta.is_empty() || logprobs.is_some())
            .then(|| part(index, delta_of(delta), logprobs, None)))
    }

    fn finished(&mut self, index: usize, delta: ChoiceDelta, reason: &str) -> Vec<ChunkChoice> {
        let mut parts = Vec::new();
        if !delta.is_empty() {
            parts.push(part(index, delta_of(delta), None, None));
        }
        parts.push(part(
            index,
            Delta::default(),
            None,
            Some(reason.to_string()),
        ));
        parts
    }

    fn chunk(&self, head: &Head, parts: Vec<ChunkChoice>, usage: Option<Option<Usage>>) -> SseData {
        SseData::json(&ChatCompletionChunk {
            id: head.id.clone(),
            object: "chat.completion.chunk",
            created: head.created,
            model: head.model.clone(),
            system_fingerprint: system_fingerprint(),
            choices: parts,
            usage,
        })
    }

    fn empty(&self, index: usize) -> ChatChoice {
        ChatChoice {
            index,
            message: ChatMessageOut {
                role: "assistant",
                content: Some(String::new()),
                reasoning_content: None,
                refusal: None,
            },
            logprobs: self.logprobs.then(|| ChatLogprobs {
                content: Vec::new(),
                refusal: None,
            }),
            finish_reason: None,
        }
    }

    fn index(part: &ChunkChoice) -> usize {
        part.index
    }

    fn add(whole: &mut ChatChoice, part: ChunkChoice) {
        let message = &mut whole.message;
        if let Some(content) = part.delta.content {
            message.content.get_or_insert_default().push_str(&content);
        }
        if let Some(reasoning) = part.delta.reasoning_content {
            message
                .reasoning_content
                .get_or_insert_default()
                .push_str(&reasoning);
        }
        if let (Some(all), Some(more)) = (&mut whole.logprobs, part.logprobs) {
            all.content.extend(more.content);
        }
        if part.finish_reason.is_some() {
            whole.finish_reason = part.finish_reason;
        }
    }

    fn body(&self, head: &Head, choices: Vec<ChatChoice>, usage: Usage) -> Response {
        Json(ChatCompletionResponse {
            id: head.id.clone(),
            object: "chat.completion",
            created: head.created,
            model: head.model.clone(),
            system_fingerprint: system_fingerprint(),
            choices,
            usage,
        })
        .into_response()
    }
}

fn part(
    index: usize,
    delta: Delta,
    logprobs: Option<Vec<ChatTokenLogprob>>,
    finish_reason: Option<String>,
) -> ChunkChoice {
    ChunkChoice {
        index,
        delta,
        logprobs: logprobs.map(|content| ChatLogprobs {
            content,
            refusal: None,
        }),
        finish_reason,
    }
}

fn delta_of(split: ChoiceDelta) -> Delta {
    Delta {
        role: None,
        content: Some(split.content).filter(|s| !s.is_empty()),
        reasoning_content: Some(split.reasoning).filter(|s| !s.is_empty()),
    }
}
