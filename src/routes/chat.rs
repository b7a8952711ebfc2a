//! `POST /v1/chat/completions`, whole or streamed.

use std::collections::VecDeque;
use std::time::Instant;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use tracing::Instrument;

use ferroseek_engine::{Event, Request, RequestStream};

use crate::chat_prompt::{self, TemplateOptions};
use crate::error::ApiError;
use crate::extract::JsonBody;
use crate::generate::{chat_logprob, sse_response, system_fingerprint, SseData, Timing};
use crate::openai::chat::{
    ChatChoice, ChatCompletionChunk, ChatCompletionRequest, ChatCompletionResponse, ChatLogprobs,
    ChatMessageOut, ChatTokenLogprob, ChunkChoice, Delta,
};
use crate::openai::common::{unix_now, Usage};
use crate::reasoning::{ReasoningSplitter, Split};
use crate::routes::RequestId;
use crate::state::AppState;
use crate::validate::{check_streaming, check_top_logprobs, SamplingFields};

/// What a response needs to know about its request.
struct Context {
    state: AppState,
    id: String,
    model: String,
    created: u64,
    n: usize,
    prompt_tokens: usize,
    logprobs: bool,
    include_usage: bool,
    timing: Timing,
}

/// One choice's progress: the reasoning split and the counts.
struct Choice {
    splitter: ReasoningSplitter,
    completion_tokens: usize,
    reasoning_tokens: usize,
    finish_reason: Option<String>,
}

impl Choice {
    fn new(reasoning: bool, opens_reasoning: bool) -> Self {
        Choice {
            splitter: ReasoningSplitter::new(reasoning, opens_reasoning),
            completion_tokens: 0,
            reasoning_tokens: 0,
            finish_reason: None,
        }
    }

    /// A token's text; the token counts as reasoning if it came inside `<think>`.
    fn token(&mut self, text: &str) -> Split {
        if self.splitter.inside() {
            self.reasoning_tokens += 1;
        }
        self.splitter.push(text)
    }

    fn finish(&mut self, text: &str, reason: &str, completion_tokens: usize) -> Split {
        let mut split = self.splitter.push(text);
        let rest = self.splitter.finish();
        split.reasoning.push_str(&rest.reasoning);
        split.content.push_str(&rest.content);
        self.finish_reason = Some(reason.to_string());
        self.completion_tokens = completion_tokens;
        split
    }
}

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
    )
    .await?;
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
    let ctx = Context {
        state: state.clone(),
        id: format!("chatcmpl-{}", request_id.0),
        model,
        created: unix_now(),
        n,
        prompt_tokens,
        logprobs: logprobs.is_some(),
        include_usage,
        timing: Timing::new(start, n),
    };
    let choices = (0..n)
        .map(|_| Choice::new(ready.reasoning, prompt.opens_reasoning))
        .collect();
    if stream {
        Ok(stream_response(ctx, choices, events))
    } else {
        collect(ctx, choices, events)
            .await
            .map(|r| Json(r).into_response())
    }
}

/// Waits for the whole completion.
async fn collect(
    mut ctx: Context,
    mut choices: Vec<Choice>,
    mut events: RequestStream,
) -> Result<ChatCompletionResponse, ApiError> {
    let mut content = vec![String::new(); ctx.n];
    let mut reasoning = vec![String::new(); ctx.n];
    let mut logprobs: Vec<Vec<ChatTokenLogprob>> = vec![Vec::new(); ctx.n];
    let mut cached_tokens = 0;
    let ready = ctx.state.ready()?;
    while let Some(event) = events.next().await {
        let (i, split) = match event {
            Event::Prompt {
                cached_tokens: c,
                timing,
                ..
            } => {
                ctx.state.metrics().observe_prompt(&timing);
                cached_tokens = c;
                continue;
            }
            Event::Token {
                choice,
                text,
                logprob,
                ..
            } => {
                ctx.timing.token(ctx.state.metrics(), choice);
                let Some(c) = choices.get_mut(choice) else {
                    continue;
                };
                if let (Some(lp), Some(list)) = (logprob, logprobs.get_mut(choice)) {
                    list.push(chat_logprob(&ready.tokens, &lp));
                }
                (choice, c.token(&text))
            }
            Event::Finished {
                choice,
                reason,
                text,
                completion_tokens,
            } => match choices.get_mut(choice) {
                Some(c) => (
                    choice,
                    c.finish(&text, reason.as_openai(), completion_tokens),
                ),
                None => continue,
            },
            Event::Error(message) => {
                return Err(ApiError::internal(format!("generation failed: {message}")))
            }
        };
        content[i].push_str(&split.content);
        reasoning[i].push_str(&split.reasoning);
    }
    ctx.timing.finish(ctx.state.metrics(), "chat");
    if choices.iter().any(|c| c.finish_reason.is_none()) {
        return Err(ApiError::internal("the engine ended the request early"));
    }
    let usage = usage(&ctx, &choices, cached_tokens);
    let choices = choices
        .into_iter()
        .zip(content.into_iter().zip(reasoning))
        .zip(logprobs)
        .enumerate()
        .map(
            |(index, ((c, (content, reasoning)), logprobs))| ChatChoice {
                index,
                message: ChatMessageOut {
                    role: "assistant",
                    content: Some(content),
                    reasoning_content: Some(reasoning).filter(|r| !r.is_empty()),
                    refusal: None,
                },
                logprobs: ctx.logprobs.then_some(ChatLogprobs {
                    content: logprobs,
                    refusal: None,
                }),
                finish_reason: c.finish_reason,
            },
        )
        .collect();
    Ok(ChatCompletionResponse {
        id: ctx.id,
        object: "chat.completion",
        created: ctx.created,
        model: ctx.model,
        system_fingerprint: system_fingerprint(),
        choices,
        usage,
    })
}

fn usage(ctx: &Context, choices: &[Choice], cached_tokens: usize) -> Usage {
    Usage::new(
        ctx.prompt_tokens,
        choices.iter().map(|c| c.completion_tokens).sum(),
        cached_tokens,
        choices.iter().map(|c| c.reasoning_tokens).sum(),
    )
}

/// The streamed completion: its state lives in the response body, so a
/// client that goes away drops it, and with it the engine request.
struct ChatStream {
    ctx: Context,
    choices: Vec<Choice>,
    events: RequestStream,
    cached_tokens: usize,
    queue: VecDeque<SseData>,
    done: bool,
}

fn stream_response(ctx: Context, choices: Vec<Choice>, events: RequestStream) -> Response {
    let mut stream = ChatStream {
        ctx,
        choices,
        events,
        cached_tokens: 0,
        queue: VecDeque::new(),
        done: false,
    };
    // The first chunk of every choice carries the role.
    for index in 0..stream.ctx.n {
        let delta = Delta {
            role: Some("assistant"),
            content: Some(String::new()),
            reasoning_content: None,
        };
        stream.push_chunk(index, delta, None, None);
    }
    let span = tracing::Span::current();
    sse_response(futures_util::stream::unfold(stream, move |s| {
        s.next_data().instrument(span.clone())
    }))
}

impl ChatStream {
    async fn next_data(mut self) -> Option<(SseData, Self)> {
        loop {
            if let Some(data) = self.queue.pop_front() {
                return Some((data, self));
            }
            if self.done {
                return None;
            }
            match self.events.next().await {
                Some(event) => self.on_event(event),
                None => self.on_end(),
            }
        }
    }

    fn push_chunk(
        &mut self,
        index: usize,
        delta: Delta,
        logprobs: Option<Vec<ChatTokenLogprob>>,
        finish_reason: Option<String>,
    ) {
        let chunk = ChatCompletionChunk {
            id: self.ctx.id.clone(),
            object: "chat.completion.chunk",
            created: self.ctx.created,
            model: self.ctx.model.clone(),
            system_fingerprint: system_fingerprint(),
            choices: vec![ChunkChoice {
                index,
                delta,
                logprobs: logprobs.map(|content| ChatLogprobs {
                    content,
                    refusal: None,
                }),
                finish_reason,
            }],
            usage: self.ctx.include_usage.then_some(None),
        };
        self.queue.push_back(SseData::json(&chunk));
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::Prompt {
                cached_tokens,
                timing,
                ..
            } => {
                self.ctx.state.metrics().observe_prompt(&timing);
                self.cached_tokens = cached_tokens;
            }
            Event::Token {
                choice,
                text,
                logprob,
                ..
            } => {
                self.ctx.timing.token(self.ctx.state.metrics(), choice);
                let Some(c) = self.choices.get_mut(choice) else {
                    return;
                };
                let split = c.token(&text);
                let logprobs = match (&logprob, self.ctx.state.ready()) {
                    (Some(lp), Ok(ready)) if self.ctx.logprobs => {
                        Some(vec![chat_logprob(&ready.tokens, lp)])
                    }
                    _ => None,
                };
                if !split.content.is_empty() || !split.reasoning.is_empty() || logprobs.is_some() {
                    self.push_chunk(choice, delta_of(split), logprobs, None);
                }
            }
            Event::Finished {
                choice,
                reason,
                text,
                completion_tokens,
            } => {
                let Some(c) = self.choices.get_mut(choice) else {
                    return;
                };
                let split = c.finish(&text, reason.as_openai(), completion_tokens);
                if !split.content.is_empty() || !split.reasoning.is_empty() {
                    self.push_chunk(choice, delta_of(split), None, None);
                }
                let reason = reason.as_openai().to_string();
                self.push_chunk(choice, Delta::default(), None, Some(reason));
            }
            Event::Error(message) => {
                let e = ApiError::internal(format!("generation failed: {message}"));
                tracing::warn!("{}", e.detail.message);
                self.queue.push_back(SseData::error(&e));
                self.queue.push_back(SseData::Done);
                self.done = true;
            }
        }
    }

    fn on_end(&mut self) {
        self.done = true;
        self.ctx.timing.finish(self.ctx.state.metrics(), "chat");
        if self.choices.iter().any(|c| c.finish_reason.is_none()) {
            let e = ApiError::internal("the engine ended the request early");
            self.queue.push_back(SseData::error(&e));
        } else if self.ctx.include_usage {
            let chunk = ChatCompletionChunk {
                id: self.ctx.id.clone(),
                object: "chat.completion.chunk",
                created: self.ctx.created,
                model: self.ctx.model.clone(),
                system_fingerprint: system_fingerprint(),
                choices: Vec::new(),
                usage: Some(Some(usage(&self.ctx, &self.choices, self.cached_tokens))),
            };
            self.queue.push_back(SseData::json(&chunk));
        }
        self.queue.push_back(SseData::Done);
    }
}

impl Drop for ChatStream {
    fn drop(&mut self) {
        if !self.done {
            tracing::info!(request_id = %self.ctx.id, "client went away mid-stream; request cancelled");
        }
    }
}

fn delta_of(split: Split) -> Delta {
    Delta {
        role: None,
        content: Some(split.content).filter(|s| !s.is_empty()),
        reasoning_content: Some(split.reasoning).filter(|s| !s.is_empty()),
    }
}
