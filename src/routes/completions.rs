//! `POST /v1/completions`: one engine request per prompt, `n` choices each
//! (choice `index` = prompt number × n + choice), whole or streamed.

use std::collections::VecDeque;
use std::time::Instant;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use futures_util::stream::{self, BoxStream, SelectAll, StreamExt};
use tracing::Instrument;

use ferroseek_engine::{Event, Request, RequestStream, TokenLogprob};

use crate::error::ApiError;
use crate::extract::JsonBody;
use crate::generate::{sse_response, system_fingerprint, SseData, Timing};
use crate::openai::common::{finite_logprob, unix_now, TokenMap, Usage};
use crate::openai::completions::{
    CompletionChoice, CompletionLogprobs, CompletionRequest, CompletionResponse, PromptField,
};
use crate::routes::RequestId;
use crate::state::{AppState, Ready};
use crate::tokens::{off_runtime, TokenTable};
use crate::validate::{check_streaming, check_top_logprobs, SamplingFields};

/// OpenAI's default `max_tokens` for this API.
const DEFAULT_MAX_TOKENS: i64 = 16;

/// One prompt of the request, tokenized.
struct Prompt {
    ids: Vec<u32>,
    /// What `echo` puts before the output.
    text: String,
}

/// Text and log-probabilities to add to one choice.
struct Piece {
    index: usize,
    text: String,
    logprobs: Option<CompletionLogprobs>,
    finish_reason: Option<String>,
}

/// One choice's running state.
#[derive(Default)]
struct Choice {
    /// Character offset in the choice's text where the next token starts.
    offset: usize,
    completion_tokens: usize,
    finish_reason: Option<String>,
}

/// The request's progress over all prompts and choices.
struct Completion {
    state: AppState,
    id: String,
    model: String,
    created: u64,
    prompts: Vec<Prompt>,
    n: usize,
    echo: bool,
    logprobs: bool,
    skip_special_tokens: bool,
    include_usage: bool,
    choices: Vec<Choice>,
    cached_tokens: usize,
    timing: Timing,
}

#[utoipa::path(
    post,
    path = "/v1/completions",
    request_body = CompletionRequest,
    responses(
        (status = 200, description = "A completion, or with `stream: true` an SSE stream of `text_completion` chunks ending with `data: [DONE]`", body = CompletionResponse),
        (status = 400, description = "Invalid request", body = crate::error::ErrorResponse),
        (status = 404, description = "Unknown model", body = crate::error::ErrorResponse),
        (status = 429, description = "Queue full", body = crate::error::ErrorResponse),
        (status = 503, description = "Loading or shutting down", body = crate::error::ErrorResponse),
    )
)]
pub async fn completions(
    State(state): State<AppState>,
    Extension(request_id): Extension<RequestId>,
    JsonBody(req): JsonBody<CompletionRequest>,
) -> Result<Response, ApiError> {
    let start = Instant::now();
    let ready = state.ready()?;
    let model = state.resolve_model(req.model.as_deref())?;
    let limits = crate::routes::limits(&state, ready);
    let valid = SamplingFields {
        max_tokens: Some(("max_tokens", req.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS))),
        min_max_tokens: 0,
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
    if let Some(best_of) = req.best_of.filter(|&b| b != valid.n as i64) {
        return Err(ApiError::invalid(
            "best_of",
            format!("`best_of` other than `n` is not supported, got {best_of}"),
        ));
    }
    if req.suffix.as_deref().is_some_and(|s| !s.is_empty()) {
        return Err(ApiError::invalid("suffix", "`suffix` is not supported"));
    }
    let logprobs = req
        .logprobs
        .map(|k| check_top_logprobs("logprobs", k))
        .transpose()?;
    let (stream, include_usage) = check_streaming(req.stream, req.stream_options.as_ref())?;
    let echo = req.echo.unwrap_or(false);
    let skip_special_tokens = req.skip_special_tokens.unwrap_or(true);
    let (tokenizing, add_special_tokens) = (state.clone(), req.add_special_tokens.unwrap_or(true));
    let prompts =
        off_runtime(move || tokenize_prompts(tokenizing.ready()?, req.prompt, add_special_tokens))
            .await?;
    let n = valid.n;
    let mut streams = Vec::with_capacity(prompts.len());
    for (p, prompt) in prompts.iter().enumerate() {
        let request = Request {
            id: if prompts.len() == 1 {
                request_id.0.clone()
            } else {
                format!("{}-{p}", request_id.0)
            },
            prompt: prompt.ids.clone(),
            sampling: valid.sampling.clone(),
            stop: valid.stop.clone(),
            n,
            logprobs,
            prompt_logprobs: if echo { logprobs } else { None },
            skip_special_tokens,
        };
        // A refusal drops the streams already submitted, cancelling them.
        let events = ready.engine.submit(request).map_err(|e| {
            let e = ApiError::from(e);
            if prompts.len() > 1 && e.detail.param.is_none() {
                e.with_param(format!("prompt[{p}]"))
            } else {
                e
            }
        })?;
        streams.push(events);
    }
    tracing::info!(
        prompts = prompts.len(),
        prompt_tokens = prompts.iter().map(|p| p.ids.len()).sum::<usize>(),
        n,
        stream,
        user = req.user.as_deref().unwrap_or(""),
        "completion"
    );
    let choices = prompts.len() * n;
    let completion = Completion {
        state: state.clone(),
        id: format!("cmpl-{}", request_id.0),
        model,
        created: unix_now(),
        prompts,
        n,
        echo,
        logprobs: logprobs.is_some(),
        skip_special_tokens,
        include_usage,
        choices: (0..choices).map(|_| Choice::default()).collect(),
        cached_tokens: 0,
        timing: Timing::new(start, choices),
    };
    let events = merge(streams);
    if stream {
        let span = tracing::Span::current();
        let s = CompletionStream {
            completion,
            events,
            queue: VecDeque::new(),
            done: false,
        };
        Ok(sse_response(stream::unfold(s, move |s| {
            s.next_data().instrument(span.clone())
        })))
    } else {
        collect(completion, events)
            .await
            .map(|r| Json(r).into_response())
    }
}

fn tokenize_prompts(
    ready: &Ready,
    prompt: PromptField,
    add_special_tokens: bool,
) -> Result<Vec<Prompt>, ApiError> {
    let tokenizer = ready.engine.tokenizer();
    let encode = |text: String| -> Result<Prompt, ApiError> {
        let ids = tokenizer
            .encode(&text, add_special_tokens)
            .map_err(|e| ApiError::internal(format!("cannot tokenize the prompt: {e}")))?;
        Ok(Prompt { ids, text })
    };
    let from_ids = |ids: Vec<u32>| -> Prompt {
        let text = tokenizer.decode(&ids, true).unwrap_or_default();
        Prompt { ids, text }
    };
    let prompts: Vec<Prompt> = match prompt {
        PromptField::Text(text) => vec![encode(text)?],
        PromptField::Texts(texts) => texts.into_iter().map(encode).collect::<Result<_, _>>()?,
        PromptField::Ids(ids) => vec![from_ids(ids)],
        PromptField::IdLists(lists) => lists.into_iter().map(from_ids).collect(),
    };
    if prompts.is_empty() {
        return Err(ApiError::invalid(
            "prompt",
            "`prompt` must not be an empty list",
        ));
    }
    for (i, p) in prompts.iter().enumerate() {
        if let Some(&id) = p.ids.iter().find(|&&id| id as usize >= ready.vocab_size) {
            return Err(ApiError::invalid(
                "prompt",
                format!(
                    "`prompt` {i} holds token id {id}, outside the vocabulary (ids 0..{})",
                    ready.vocab_size
                ),
            ));
        }
    }
    if let Some(i) = prompts.iter().position(|p| p.ids.is_empty()) {
        return Err(ApiError::invalid(
            "prompt",
            format!("`prompt` {i} is empty (no tokens)"),
        ));
    }
    Ok(prompts)
}

type Tagged = BoxStream<'static, (usize, Event)>;

/// The events of all prompts as one stream, each tagged with its prompt number.
fn merge(streams: Vec<RequestStream>) -> SelectAll<Tagged> {
    stream::select_all(streams.into_iter().enumerate().map(|(p, events)| {
        stream::unfold(events, move |mut events| async move {
            events.next().await.map(|e| ((p, e), events))
        })
        .boxed()
    }))
}

/// Log-probabilities of the prompt tokens, for `echo`.
fn prompt_logprobs(
    table: &TokenTable,
    ids: &[u32],
    entries: Option<&[Option<TokenLogprob>]>,
    skip_special_tokens: bool,
) -> CompletionLogprobs {
    let mut out = CompletionLogprobs::default();
    let mut offset = 0;
    for (i, &id) in ids.iter().enumerate() {
        let entry = entries.and_then(|e| e.get(i)).and_then(Option::as_ref);
        out.tokens.push(table.text(id));
        out.token_logprobs
            .push(entry.map(|lp| finite_logprob(lp.logprob)));
        out.top_logprobs.push(entry.map(|lp| top_map(table, lp)));
        out.text_offset.push(offset);
        offset += token_chars(table, id, skip_special_tokens);
    }
    out
}

fn top_map(table: &TokenTable, lp: &TokenLogprob) -> TokenMap {
    TokenMap(
        lp.top
            .iter()
            .map(|&(id, l)| (table.text(id), finite_logprob(l)))
            .collect(),
    )
}

/// Characters the token adds to the text (none for a skipped special token).
fn token_chars(table: &TokenTable, id: u32, skip_special_tokens: bool) -> usize {
    if skip_special_tokens && table.is_special(id) {
        0
    } else {
        table.text(id).chars().count()
    }
}

impl Completion {
    fn ready(&self) -> Result<&Ready, ApiError> {
        self.state.ready()
    }

    /// What an event adds to the choices; `Err` for an engine failure.
    fn on_event(&mut self, p: usize, event: Event) -> Result<Vec<Piece>, ApiError> {
        let mut pieces = Vec::new();
        match event {
            Event::Prompt {
                cached_tokens,
                logprobs,
                timing,
            } => {
                self.state.metrics().observe_prompt(&timing);
                self.cached_tokens += cached_tokens;
                if !self.echo {
                    return Ok(pieces);
                }
                let Some(prompt) = self.prompts.get(p) else {
                    return Ok(pieces);
                };
                let ready = self.ready()?;
                let mut lps = prompt_logprobs(
                    &ready.tokens,
                    &prompt.ids,
                    logprobs.as_deref(),
                    self.skip_special_tokens,
                );
                // Offsets index the echoed text: never past its end, where
                // the generated text starts.
                let offset = prompt.text.chars().count();
                for o in &mut lps.text_offset {
                    *o = (*o).min(offset);
                }
                for c in 0..self.n {
                    let index = p * self.n + c;
                    if let Some(choice) = self.choices.get_mut(index) {
                        choice.offset = offset;
                    }
                    pieces.push(Piece {
                        index,
                        text: prompt.text.clone(),
                        logprobs: self.logprobs.then(|| lps.clone()),
                        finish_reason: None,
                    });
                }
            }
            Event::Token {
                choice,
                token,
                text,
                logprob,
            } => {
                let index = p * self.n + choice;
                self.timing.token(self.state.metrics(), index);
                let logprobs = match logprob {
                    Some(lp) if self.logprobs => {
                        let ready = self.ready()?;
                        let offset = self.choices.get(index).map_or(0, |c| c.offset);
                        Some(CompletionLogprobs {
                            tokens: vec![ready.tokens.text(lp.token)],
                            token_logprobs: vec![Some(finite_logprob(lp.logprob))],
                            top_logprobs: vec![Some(top_map(&ready.tokens, &lp))],
                            text_offset: vec![offset],
                        })
                    }
                    _ => None,
                };
                let added = match self.ready() {
                    Ok(ready) => token_chars(&ready.tokens, token, self.skip_special_tokens),
                    Err(_) => text.chars().count(),
                };
                if let Some(c) = self.choices.get_mut(index) {
                    c.offset += added;
                }
                if !text.is_empty() || logprobs.is_some() {
                    pieces.push(Piece {
                        index,
                        text,
                        logprobs,
                        finish_reason: None,
                    });
                }
            }
            Event::Finished {
                choice,
                reason,
                text,
                completion_tokens,
            } => {
                let index = p * self.n + choice;
                if let Some(c) = self.choices.get_mut(index) {
                    c.finish_reason = Some(reason.as_openai().to_string());
                    c.completion_tokens = completion_tokens;
                }
                pieces.push(Piece {
                    index,
                    text,
                    logprobs: None,
                    finish_reason: Some(reason.as_openai().to_string()),
                });
            }
            Event::Error(message) => {
                return Err(ApiError::internal(format!("generation failed: {message}")))
            }
        }
        Ok(pieces)
    }

    fn usage(&self) -> Usage {
        Usage::new(
            self.prompts.iter().map(|p| p.ids.len()).sum(),
            self.choices.iter().map(|c| c.completion_tokens).sum(),
            self.cached_tokens,
            0,
        )
    }

    fn unfinished(&self) -> bool {
        self.choices.iter().any(|c| c.finish_reason.is_none())
    }

    fn response(
        &self,
        choices: Vec<CompletionChoice>,
        usage: Option<Option<Usage>>,
    ) -> CompletionResponse {
        CompletionResponse {
            id: self.id.clone(),
            object: "text_completion",
            created: self.created,
            model: self.model.clone(),
            system_fingerprint: system_fingerprint(),
            choices,
            usage,
        }
    }
}

async fn collect(
    mut completion: Completion,
    mut events: SelectAll<Tagged>,
) -> Result<CompletionResponse, ApiError> {
    let mut choices: Vec<CompletionChoice> = (0..completion.choices.len())
        .map(|index| CompletionChoice {
            index,
            text: String::new(),
            logprobs: completion.logprobs.then(CompletionLogprobs::default),
            finish_reason: None,
        })
        .collect();
    while let Some((p, event)) = events.next().await {
        for piece in completion.on_event(p, event)? {
            let Some(choice) = choices.get_mut(piece.index) else {
                continue;
            };
            choice.text.push_str(&piece.text);
            if let (Some(all), Some(more)) = (&mut choice.logprobs, piece.logprobs) {
                all.append(more);
            }
            if piece.finish_reason.is_some() {
                choice.finish_reason = piece.finish_reason;
            }
        }
    }
    completion
        .timing
        .finish(completion.state.metrics(), "completions");
    if completion.unfinished() {
        return Err(ApiError::internal("the engine ended the request early"));
    }
    let usage = completion.usage();
    Ok(completion.response(choices, Some(Some(usage))))
}

struct CompletionStream {
    completion: Completion,
    events: SelectAll<Tagged>,
    queue: VecDeque<SseData>,
    done: bool,
}

impl CompletionStream {
    async fn next_data(mut self) -> Option<(SseData, Self)> {
        loop {
            if let Some(data) = self.queue.pop_front() {
                return Some((data, self));
            }
            if self.done {
                return None;
            }
            match self.events.next().await {
                Some((p, event)) => self.on_event(p, event),
                None => self.on_end(),
            }
        }
    }

    fn on_event(&mut self, p: usize, event: Event) {
        let usage = self.completion.include_usage.then_some(None);
        match self.completion.on_event(p, event) {
            Ok(pieces) => {
                for piece in pieces {
                    let chunk = self.completion.response(
                        vec![CompletionChoice {
                            index: piece.index,
                            text: piece.text,
                            logprobs: piece.logprobs,
                            finish_reason: piece.finish_reason,
                        }],
                        usage.clone(),
                    );
                    self.queue.push_back(SseData::json(&chunk));
                }
            }
            Err(e) => {
                tracing::warn!("{}", e.detail.message);
                self.queue.push_back(SseData::error(&e));
                self.queue.push_back(SseData::Done);
                self.done = true;
            }
        }
    }

    fn on_end(&mut self) {
        self.done = true;
        let c = &self.completion;
        c.timing.finish(c.state.metrics(), "completions");
        if c.unfinished() {
            let e = ApiError::internal("the engine ended the request early");
            self.queue.push_back(SseData::error(&e));
        } else if c.include_usage {
            let chunk = c.response(Vec::new(), Some(Some(c.usage())));
            self.queue.push_back(SseData::json(&chunk));
        }
        self.queue.push_back(SseData::Done);
    }
}

impl Drop for CompletionStream {
    fn drop(&mut self) {
        if !self.done {
            tracing::info!(id = %self.completion.id, "client went away mid-stream; request cancelled");
        }
    }
}
