//! What the engine runs and what it gives back: a generation request
//! (prompt ids, sampling, stop conditions) and the events of its stream.
//! Plain types; a caller makes a request through [`crate::validate`].

use std::time::Duration;

use crate::constrain::Grammar;

/// Most alternatives per position a request may ask for (OpenAI's limit).
pub const MAX_TOP_LOGPROBS: usize = 20;

/// How the next token is chosen. `Default` is plain sampling at temperature 1.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 picks the most likely token (greedy).
    pub temperature: f32,
    /// Keep only the `k` most likely tokens; `None` keeps all.
    pub top_k: Option<usize>,
    /// Keep the smallest set of tokens whose probability reaches `top_p` (0, 1].
    pub top_p: f32,
    /// Drop tokens less likely than `min_p` times the most likely one [0, 1].
    pub min_p: f32,
    /// Above 1 discourages tokens already in the prompt or the output (divides
    /// a positive logit, multiplies a negative one), as in CTRL / transformers.
    pub repetition_penalty: f32,
    /// Subtracted once from the logit of every token already generated [-2, 2].
    pub presence_penalty: f32,
    /// Subtracted from a token's logit once per time it was generated [-2, 2].
    pub frequency_penalty: f32,
    /// Added to the logit of a token id before sampling.
    pub logit_bias: Vec<(u32, f32)>,
    /// Seeds this request's own random generator: the same seed gives the same
    /// tokens whatever else is in the batch.
    pub seed: Option<u64>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 1.0,
            top_k: None,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            logit_bias: Vec::new(),
            seed: None,
        }
    }
}

impl SamplingParams {
    /// Temperature 0: always the most likely token.
    pub fn greedy() -> Self {
        SamplingParams {
            temperature: 0.0,
            ..Default::default()
        }
    }

    pub fn is_greedy(&self) -> bool {
        self.temperature <= 1e-5 || self.top_k == Some(1)
    }
}

/// When a choice ends (besides the context running out).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct StopConditions {
    /// Most tokens to generate per choice; `None` = until the context is full.
    pub max_tokens: Option<usize>,
    /// Keep going past the model's end-of-sequence ids.
    pub ignore_eos: bool,
    /// Extra ids that end a choice (the id itself is generated but its text
    /// is not emitted).
    pub stop_token_ids: Vec<u32>,
    /// Strings that end a choice; the text up to the first match is emitted,
    /// the stop string itself never is.
    pub stop_strings: Vec<String>,
}

/// One generation request, as the engine runs it; a
/// [`ValidRequest`](crate::ValidRequest) holds one whose fields were checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// An id for logs (the server's request id).
    pub id: String,
    pub prompt: Vec<u32>,
    pub sampling: SamplingParams,
    pub stop: StopConditions,
    /// Independent choices generated from the one prompt (they share its cache
    /// blocks).
    pub n: usize,
    /// Return each generated token's log-probability and that many alternatives
    /// (0..=20); `None` returns none.
    pub logprobs: Option<usize>,
    /// Return each prompt token's log-probability (the first has none) and that
    /// many alternatives; `None` returns none.
    pub prompt_logprobs: Option<usize>,
    /// Drop special tokens from the streamed text.
    pub skip_special_tokens: bool,
    /// What every choice's output must match (constrained decoding).
    pub grammar: Option<Grammar>,
}

/// A token's log-probability under the model, with the most likely alternatives.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    pub token: u32,
    /// log softmax of the model's logits (before penalties, bias or temperature).
    pub logprob: f32,
    /// The most likely tokens at this position, most likely first.
    pub top: Vec<(u32, f32)>,
}

/// Why a choice ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FinishReason {
    /// An end-of-sequence id or a stop token id (the id).
    EosToken(u32),
    /// A stop string (the string).
    StopString(String),
    /// `max_tokens` reached.
    MaxTokens,
    /// The model's context is full.
    ContextLength,
    /// The request's grammar is complete: nothing may follow.
    GrammarComplete,
}

impl FinishReason {
    /// OpenAI's `finish_reason`: `stop` or `length`.
    pub fn as_openai(&self) -> &'static str {
        match self {
            FinishReason::EosToken(_)
            | FinishReason::StopString(_)
            | FinishReason::GrammarComplete => "stop",
            FinishReason::MaxTokens | FinishReason::ContextLength => "length",
        }
    }
}

/// Where a request's time went before its first token, for latency metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PromptTiming {
    /// From submission until the engine first scheduled it.
    pub queue: Duration,
    /// From its first step until its prompt was in the cache (its first
    /// token sampled), recomputes after a preemption included.
    pub prefill: Duration,
}

/// What the stream of a request yields.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The prompt is in the cache (sent once, before any token).
    Prompt {
        /// Prompt tokens whose cache rows were reused from an earlier request
        /// (prefix caching) instead of computed.
        cached_tokens: usize,
        /// One entry per prompt token (`None` for the first), when asked.
        logprobs: Option<Vec<Option<TokenLogprob>>>,
        /// How long the request queued and how long its prompt took.
        timing: PromptTiming,
    },
    /// A new token of choice `choice`. `text` is the text that became final
    /// with it (possibly empty: an incomplete character or a possible stop
    /// string is held back).
    Token {
        choice: usize,
        token: u32,
        text: String,
        logprob: Option<TokenLogprob>,
    },
    /// Choice `choice` ended. `text` is held-back text released at the end
    /// (possibly empty); `completion_tokens` counts its generated tokens.
    Finished {
        choice: usize,
        reason: FinishReason,
        text: String,
        completion_tokens: usize,
    },
    /// The engine failed while running this request; nothing more follows.
    Error(String),
}
