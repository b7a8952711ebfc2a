//! `POST /v1/completions`: one engine request per prompt, `n` choices each
//! (choice `index` = prompt number × n + choice), whole or streamed.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};

use ferroseek_engine::{ChoiceDelta, ChoiceOutput, SamplingFields, TokenLogprob};

use crate::error::ApiError;
use crate::extract::JsonBody;
use crate::generate::{system_fingerprint, Generation, Head, Shape, SseData};
use crate::openai::common::{finite_logprob, unix_now, TokenMap, Usage};
use crate::openai::completions::{
    CompletionChoice, CompletionLogprobs, CompletionRequest, CompletionResponse, PromptField,
};
use crate::routes::RequestId;
use crate::state::{AppState, Ready};
use crate::structured;
use crate::tokens::{off_runtime, TokenTable};
use crate::validate;

/// OpenAI's default `max_tokens` for this API.
const DEFAULT_MAX_TOKENS: i64 = 16;

/// One prompt of the request, tokenized.
struct Prompt {
    ids: Vec<u32>,
    /// What `echo` puts before the output.
    text: String,
}

/// The completion's JSON: a `text_completion` chunk per piece of text, or
/// one text per choice; with `echo`, each choice starts with its prompt.
struct CompletionShape {
    state: AppState,
    prompts: Vec<Prompt>,
    /// Choices per prompt.
    n: usize,
    echo: bool,
    logprobs: bool,
    skip_special_tokens: bool,
    /// Per choice: the character offset in its text where the next token starts.
    offsets: Vec<usize>,
}

#[utoipa::path(
    post,
    path = "/v1/completions",
    request_body = CompletionRequest,
    responses(
        (status = 200, description = "A completion, or with `stream: true` an SSE stream of `text_completion` chunks ending with `data: [DONE]`", body = CompletionResponse),
        crate::routes::GenerationErrors,
    )
)]
pub async fn completions(
    State(state): State<AppState>,
    Extension(request_id): Extension<RequestId>,
    JsonBody(req): JsonBody<CompletionRequest>,
) -> Result<Response, ApiError> {
    let (start, ready, model) = crate::routes::begin(&state, req.model.as_deref())?;
    let echo = req.echo.unwrap_or(false);
    let base = validate::engine_fields(&req.sampling);
    let fields = SamplingFields {
        max_tokens: Some(
            base.max_tokens
                .unwrap_or(("max_tokens", DEFAULT_MAX_TOKENS)),
        ),
        min_max_tokens: 0,
        logprobs: req.logprobs.map(|k| ("logprobs", k)),
        prompt_logprobs: req.logprobs.filter(|_| echo).map(|k| ("logprobs", k)),
        ..base
    };
    let valid = validate::validate(&fields, ready)?;
    if let Some(best_of) = req.best_of.filter(|&b| b != valid.n() as i64) {
        return Err(ApiError::invalid(
            "best_of",
            format!("`best_of` other than `n` is not supported, got {best_of}"),
        ));
    }
    if req.suffix.as_deref().is_some_and(|s| !s.is_empty()) {
        return Err(ApiError::invalid("suffix", "`suffix` is not supported"));
    }
    let (stream, include_usage) = validate::streaming(&req.sampling)?;
    let asked = structured::asked(&req.sampling)?;
    let valid = valid.with_grammar(structured::compile(ready, asked, None).await?);
    let skip_special_tokens = valid.skip_special_tokens();
    let (tokenizing, add_special_tokens) = (state.clone(), req.add_special_tokens.unwrap_or(true));
    let prompts =
        off_runtime(move || tokenize_prompts(tokenizing.ready()?, req.prompt, add_special_tokens))
            .await?;
    let n = valid.n();
    let logprobs = valid.logprobs().is_some();
    // Every prompt is checked before any is submitted.
    let several = prompts.len() > 1;
    let requests = prompts
        .iter()
        .enumerate()
        .map(|(p, prompt)| {
            let id = if several {
                format!("{}-{p}", request_id.0)
            } else {
                request_id.0.clone()
            };
            valid
                .request(id, prompt.ids.clone())
                .map_err(|e| name_prompt(e.into(), p, several))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut streams = Vec::with_capacity(prompts.len());
    for (p, request) in requests.into_iter().enumerate() {
        // A refusal drops the streams already submitted, cancelling them.
        let events = ready
            .engine
            .submit(request)
            .map_err(|e| name_prompt(e.into(), p, several))?;
        streams.push(events);
    }
    tracing::info!(
        prompts = prompts.len(),
        prompt_tokens = prompts.iter().map(|p| p.ids.len()).sum::<usize>(),
        n,
        stream,
        user = req.sampling.user.as_deref().unwrap_or(""),
        "completion"
    );
    let choices = prompts.len() * n;
    let generation = Generation {
        state: state.clone(),
        head: Head {
            id: format!("cmpl-{}", request_id.0),
            model,
            created: unix_now(),
        },
        prompt_tokens: prompts.iter().map(|p| p.ids.len()).sum(),
        include_usage,
        start,
        shape: CompletionShape {
            state: state.clone(),
            prompts,
            n,
            echo,
            logprobs,
            skip_special_tokens,
            offsets: vec![0; choices],
        },
    };
    let outputs = (0..choices).map(|_| ChoiceOutput::plain()).collect();
    generation.respond(streams, outputs, stream).await
}

/// With several prompts, an error about one of them names it: `prompt[1]`.
fn name_prompt(e: ApiError, p: usize, several: bool) -> ApiError {
    let about_prompt = e
        .detail
        .param
        .as_deref()
        .is_none_or(|param| param == "prompt");
    if several && about_prompt {
        e.with_param(format!("prompt[{p}]"))
    } else {
        e
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
    Ok(prompts)
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

impl CompletionShape {
    fn response(
        &self,
        head: &Head,
        choices: Vec<CompletionChoice>,
        usage: Option<Option<Usage>>,
    ) -> CompletionResponse {
        CompletionResponse {
            id: head.id.clone(),
            object: "text_completion",
            created: head.created,
            model: head.model.clone(),
            system_fingerprint: system_fingerprint(),
            choices,
            usage,
        }
    }
}

impl Shape for CompletionShape {
    type Part = CompletionChoice;
    type Whole = CompletionChoice;
    const ENDPOINT: &'static str = "completions";

    fn prompt(
        &mut self,
        p: usize,
        logprobs: Option<Vec<Option<TokenLogprob>>>,
    ) -> Result<Vec<CompletionChoice>, ApiError> {
        let mut parts = Vec::new();
        if !self.echo {
            return Ok(parts);
        }
        let Some(prompt) = self.prompts.get(p) else {
            return Ok(parts);
        };
        let ready = self.state.ready()?;
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
            if let Some(o) = self.offsets.get_mut(index) {
                *o = offset;
            }
            parts.push(CompletionChoice {
                index,
                text: prompt.text.clone(),
                logprobs: self.logprobs.then(|| lps.clone()),
                finish_reason: None,
            });
        }
        Ok(parts)
    }

    fn token(
        &mut self,
        index: usize,
        token: u32,
        delta: ChoiceDelta,
        logprob: Option<TokenLogprob>,
    ) -> Result<Vec<CompletionChoice>, ApiError> {
        let text = delta.content;
        let logprobs = match logprob {
            Some(lp) if self.logprobs => {
                let ready = self.state.ready()?;
                let offset = self.offsets.get(index).copied().unwrap_or(0);
                Some(CompletionLogprobs {
                    tokens: vec![ready.tokens.text(lp.token)],
                    token_logprobs: vec![Some(finite_logprob(lp.logprob))],
                    top_logprobs: vec![Some(top_map(&ready.tokens, &lp))],
                    text_offset: vec![offset],
                })
            }
            _ => None,
        };
        let added = match self.state.ready() {
            Ok(ready) => token_chars(&ready.tokens, token, self.skip_special_tokens),
            Err(_) => text.chars().count(),
        };
        if let Some(o) = self.offsets.get_mut(index) {
            *o += added;
        }
        Ok((!text.is_empty() || logprobs.is_some())
            .then_some(CompletionChoice {
                index,
                text,
                logprobs,
                finish_reason: None,
            })
            .into_iter()
            .collect())
    }

    fn finished(
        &mut self,
        index: usize,
        delta: ChoiceDelta,
        reason: &str,
    ) -> Vec<CompletionChoice> {
        vec![CompletionChoice {
            index,
            text: delta.content,
            logprobs: None,
            finish_reason: Some(reason.to_string()),
        }]
    }

    fn chunk(
        &self,
        head: &Head,
        parts: Vec<CompletionChoice>,
        usage: Option<Option<Usage>>,
    ) -> SseData {
        SseData::json(&self.response(head, parts, usage))
    }

    fn empty(&self, index: usize) -> CompletionChoice {
        CompletionChoice {
            index,
            text: String::new(),
            logprobs: self.logprobs.then(CompletionLogprobs::default),
            finish_reason: None,
        }
    }

    fn index(part: &CompletionChoice) -> usize {
        part.index
    }

    fn add(whole: &mut CompletionChoice, part: CompletionChoice) {
        whole.text.push_str(&part.text);
        if let (Some(all), Some(more)) = (&mut whole.logprobs, part.logprobs) {
            all.append(more);
        }
        if part.finish_reason.is_some() {
            whole.finish_reason = part.finish_reason;
        }
    }

    fn body(&self, head: &Head, choices: Vec<CompletionChoice>, usage: Usage) -> Response {
        Json(self.response(head, choices, Some(Some(usage)))).into_response()
    }
}
