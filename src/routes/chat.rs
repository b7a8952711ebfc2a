//! `POST /v1/chat/completions`, whole or streamed.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};

use ferroseek_engine::{ChoiceDelta, ChoiceOutput, SamplingFields, TokenLogprob};

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
use crate::structured;
use crate::validate;

#[utoipa::path(
    post,
    path = "/v1/chat/completions",
    request_body = ChatCompletionRequest,
    responses(
        (status = 200, description = "A chat completion, or with `stream: true` an SSE stream of `chat.completion.chunk`s ending with `data: [DONE]`", body = ChatCompletionResponse),
        crate::routes::GenerationErrors,
    )
)]
pub async fn chat_completions(
    State(state): State<AppState>,
    Extension(request_id): Extension<RequestId>,
    JsonBody(req): JsonBody<ChatCompletionRequest>,
) -> Result<Response, ApiError> {
    let (start, ready, model) = crate::routes::begin(&state, req.model.as_deref())?;
    let logprobs_on = req.logprobs.unwrap_or(false);
    let top_logprobs = match (logprobs_on, req.top_logprobs) {
        (true, k) => Some(k.unwrap_or(0)),
        (false, Some(0)) => None,
        // Refused below once its range is checked: it needs `logprobs: true`.
        (false, k) => k,
    };
    let base = validate::engine_fields(&req.sampling);
    let fields = SamplingFields {
        max_tokens: req
            .max_completion_tokens
            .map(|m| ("max_completion_tokens", m))
            .or(base.max_tokens),
        min_max_tokens: 1,
        logprobs: top_logprobs.map(|k| ("top_logprobs", k)),
        ..base
    };
    let valid = validate::validate(&fields, ready)?;
    if !logprobs_on && valid.logprobs().is_some() {
        return Err(ApiError::invalid(
            "top_logprobs",
            "`top_logprobs` needs `logprobs: true`",
        ));
    }
    let (stream, include_usage) = validate::streaming(&req.sampling)?;
    let continue_final_message = chat_prompt::continues_final_message(
        &req.messages,
        req.continue_final_message,
        req.add_generation_prompt,
    )?;
    let prompt = chat_prompt::build(
        ready,
        &req.messages,
        &TemplateOptions {
            tools: req.tools.as_deref(),
            add_generation_prompt: req.add_generation_prompt.unwrap_or(true),
            chat_template_kwargs: req.chat_template_kwargs.as_ref(),
            thinking: req.thinking.as_ref(),
            reasoning_effort: req.reasoning_effort.as_deref(),
            continue_final_message,
        },
    )
    .await?;
    let prompt_tokens = prompt.ids.len();
    tracing::debug!(prompt = %prompt.text, "rendered chat prompt");
    // When the prompt opened reasoning, the grammar holds only the answer.
    let start_after = prompt
        .opens_reasoning
        .then(|| ready.engine.tokenizer().token_to_id("</think>"))
        .flatten();
    let asked = structured::asked(&req.sampling)?;
    let valid = valid.with_grammar(structured::compile(ready, asked, start_after).await?);
    let n = valid.n();
    let logprobs = valid.logprobs().is_some();
    let request = valid.request(request_id.0.clone(), prompt.ids)?;
    let events = ready.engine.submit(request)?;
    tracing::info!(
        prompt_tokens,
        n,
        stream,
        user = req.sampling.user.as_deref().unwrap_or(""),
        "chat completion"
    );
    let generation = Generation {
        state: state.clone(),
        shape: ChatShape {
            state: state.clone(),
            n,
            logprobs,
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
