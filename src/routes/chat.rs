//! `POST /v1/chat/completions`, whole or streamed.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};

use ferroseek_engine::{ChoiceDelta, ChoiceOutput, SamplingFields, TokenLogprob, ToolCallDelta};

use crate::chat_prompt::{self, TemplateOptions};
use crate::error::ApiError;
use crate::extract::JsonBody;
use crate::generate::{chat_logprob, system_fingerprint, Generation, Head, Shape, SseData};
use crate::openai::chat::{
    ChatChoice, ChatCompletionChunk, ChatCompletionRequest, ChatCompletionResponse, ChatLogprobs,
    ChatMessageOut, ChatTokenLogprob, ChunkChoice, Delta, FunctionCallOut, FunctionChunk,
    ToolCallChunk, ToolCallOut,
};
use crate::openai::common::{unix_now, Usage};
use crate::routes::RequestId;
use crate::state::AppState;
use crate::structured;
use crate::tools::ValidTools;
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
    let tools = ValidTools::new(
        req.tools.as_deref(),
        req.tool_choice.as_ref(),
        req.parallel_tool_calls,
    )?;
    let parser = tools.parser(ready.tool_format);
    let base = validate::engine_fields(&req.sampling);
    // Tool-call markup is made of special tokens in some families: the
    // parser needs them in the text. The others are taken out again after
    // decoding, unless the client asked to see them all.
    let hide_special_tokens = parser.is_some() && req.sampling.skip_special_tokens != Some(false);
    let skip_special_tokens = match parser {
        Some(_) => Some(false),
        None => base.skip_special_tokens,
    };
    let fields = SamplingFields {
        skip_special_tokens,
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
    // A call the request requires wins over `response_format`, which then
    // applies to no output of this turn.
    let asked_output = structured::asked(&req.sampling)?;
    let asked = tools.grammar(ready.tool_format)?.or(asked_output);
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
        shape: ChatShape::new(state.clone(), n, logprobs),
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
        .map(|_| {
            let output = ChoiceOutput::new(ready.reasoning, prompt.opens_reasoning);
            match &parser {
                None => output,
                Some(options) if hide_special_tokens => output
                    .with_tool_calls(options.clone())
                    .hiding(ready.hidden_special_tokens.clone()),
                Some(options) => output.with_tool_calls(options.clone()),
            }
        })
        .collect();
    generation.respond(vec![events], outputs, stream).await
}

/// The chat completion's JSON: a chunk per delta, the first of each choice
/// carrying the role, and a chunk per tool-call piece; or one message per
/// choice.
struct ChatShape {
    state: AppState,
    n: usize,
    logprobs: bool,
    /// Tool calls started, per choice.
    calls: Vec<usize>,
}

impl ChatShape {
    fn new(state: AppState, n: usize, logprobs: bool) -> Self {
        ChatShape {
            state,
            n,
            logprobs,
            calls: vec![0; n],
        }
    }

    /// A delta's parts: its text, then one per tool-call piece (a call's
    /// start gets its id here, once).
    fn parts(
        &mut self,
        index: usize,
        delta: ChoiceDelta,
        logprobs: Option<Vec<ChatTokenLogprob>>,
    ) -> Vec<ChunkChoice> {
        let mut parts = Vec::new();
        let text = Delta {
            role: None,
            content: Some(delta.content).filter(|s| !s.is_empty()),
            reasoning_content: Some(delta.reasoning).filter(|s| !s.is_empty()),
            tool_calls: None,
        };
        if text.content.is_some() || text.reasoning_content.is_some() {
            parts.push(part(index, text, None, None));
        }
        for piece in delta.tool_calls {
            let chunk = match piece {
                ToolCallDelta::Start { index: k, name } => {
                    if let Some(count) = self.calls.get_mut(index) {
                        *count += 1;
                    }
                    ToolCallChunk {
                        index: k,
                        id: Some(call_id()),
                        kind: Some("function"),
                        function: FunctionChunk {
                            name: Some(name),
                            arguments: String::new(),
                        },
                    }
                }
                ToolCallDelta::Arguments { index: k, fragment } => ToolCallChunk {
                    index: k,
                    id: None,
                    kind: None,
                    function: FunctionChunk {
                        name: None,
                        arguments: fragment,
                    },
                },
            };
            let delta = Delta {
                tool_calls: Some(vec![chunk]),
                ..Delta::default()
            };
            parts.push(part(index, delta, None, None));
        }
        if let Some(content) = logprobs {
            let logprobs = ChatLogprobs {
                content,
                refusal: None,
            };
            match parts.first_mut() {
                Some(first) => first.logprobs = Some(logprobs),
                None => parts.push(ChunkChoice {
                    logprobs: Some(logprobs),
                    ..part(index, Delta::default(), None, None)
                }),
            }
        }
        parts
    }

    /// The whole response.
    fn response(
        &self,
        head: &Head,
        mut choices: Vec<ChatChoice>,
        usage: Usage,
    ) -> ChatCompletionResponse {
        for choice in &mut choices {
            let message = &mut choice.message;
            // As OpenAI: no text around the calls is `content: null`.
            if message.tool_calls.is_some() && message.content.as_deref() == Some("") {
                message.content = None;
            }
        }
        ChatCompletionResponse {
            id: head.id.clone(),
            object: "chat.completion",
            created: head.created,
            model: head.model.clone(),
            system_fingerprint: system_fingerprint(),
            choices,
            usage,
        }
    }
}

/// A tool call's id.
fn call_id() -> String {
    format!("call_{:024x}", rand::random::<u128>() >> 32)
}

impl Shape for ChatShape {
    type Part = ChunkChoice;
    type Whole = ChatChoice;
    const ENDPOINT: &'static str = "chat";

    fn opening(&self) -> Vec<ChunkChoice> {
        let role = || Delta {
            role: Some("assistant"),
            content: Some(String::new()),
            ..Delta::default()
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
    ) -> Result<Vec<ChunkChoice>, ApiError> {
        let logprobs = match (&logprob, self.state.ready()) {
            (Some(lp), Ok(ready)) if self.logprobs => Some(vec![chat_logprob(&ready.tokens, lp)]),
            _ => None,
        };
        Ok(self.parts(index, delta, logprobs))
    }

    fn finished(&mut self, index: usize, delta: ChoiceDelta, reason: &str) -> Vec<ChunkChoice> {
        let mut parts = self.parts(index, delta, None);
        // A choice that called tools and ended by itself ends for them; one
        // cut at `length` stays `length`.
        let called = self.calls.get(index).is_some_and(|&c| c > 0);
        let reason = if called && reason == "stop" {
            "tool_calls"
        } else {
            reason
        };
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
                tool_calls: None,
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
        for chunk in part.delta.tool_calls.into_iter().flatten() {
            let calls = message.tool_calls.get_or_insert_default();
            match chunk.id {
                Some(id) => calls.push(ToolCallOut {
                    id,
                    kind: "function",
                    function: FunctionCallOut {
                        name: chunk.function.name.unwrap_or_default(),
                        arguments: chunk.function.arguments,
                    },
                }),
                None => {
                    if let Some(call) = calls.get_mut(chunk.index) {
                        call.function.arguments.push_str(&chunk.function.arguments);
                    }
                }
            }
        }
        if let (Some(all), Some(more)) = (&mut whole.logprobs, part.logprobs) {
            all.content.extend(more.content);
        }
        if part.finish_reason.is_some() {
            whole.finish_reason = part.finish_reason;
        }
    }

    fn body(&self, head: &Head, choices: Vec<ChatChoice>, usage: Usage) -> Response {
        Json(self.response(head, choices, usage)).into_response()
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

#[cfg(test)]
mod tests;
