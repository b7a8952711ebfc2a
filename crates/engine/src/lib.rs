//! ferroseek-engine: everything between an HTTP request and the model's
//! forward pass. It knows nothing of HTTP or JSON: the server converts its
//! OpenAI types into the plain types here.
//!
//! - [`engine`]: the cheap, cloneable [`Engine`] handle (start, submit,
//!   stats, shutdown; a [`RequestStream`] of [`Event`]s per request) and
//!   the worker, the one thread that owns the model and the latent cache
//!   and runs the step loop: accept, drop cancelled, schedule, forward,
//!   sample, emit.
//! - [`scheduler`]: continuous batching, keyed by [`scheduler::SeqId`]:
//!   which tokens of which sequences go into the next forward (chunked
//!   prefill, decode, preemption and recompute, forking `n > 1` choices).
//! - [`block_manager`]: the paged cache's block pool, reference counts for
//!   shared blocks and the prefix cache (chain hashes of full blocks).
//! - [`sampling`]: temperature, top-k/top-p/min-p, penalties, logit bias
//!   and seeded generators per choice; log-probabilities.
//! - [`template`] and [`tokenizer`]: conversations to token ids, with the
//!   model's chat template rendered as Hugging Face transformers renders it.
//! - [`validate`]: the one check of a request's sampling and limits; the
//!   engine takes only the [`ValidRequest`] it makes.
//! - [`output`]: generated ids back to the text a client sees: incremental
//!   detokenization and stop strings per sequence (on the worker), the
//!   `<think>` split per choice (where events are read), and the tool-call
//!   parsers per family (not yet wired into the server).
//! - [`constrain`]: constrained decoding with llguidance: JSON schemas,
//!   regexes, choices, Lark grammars and each family's tool-call markup,
//!   masked per sequence, the masks computed while the forward pass runs.
//! - [`request`]: what the engine runs (sampling, stop conditions) and the
//!   events it gives back.
//! - [`error`]: the crate's one error type, refusals of a request included.

pub mod block_manager;
pub mod constrain;
pub mod engine;
pub mod error;
mod gguf_tokenizer;
pub mod output;
pub mod request;
pub mod sampling;
pub mod scheduler;
pub mod template;
pub mod token_table;
pub mod tokenizer;
pub mod validate;

pub use constrain::{FunctionSpec, Grammar, GrammarSpec, Grammars, ToolCallGrammar};
#[cfg(feature = "fault-injection")]
pub use engine::Faults;
pub use engine::{Engine, EngineConfig, EngineStats, RequestStream};
pub use error::{Error, Result};
pub use output::{
    ChoiceDelta, ChoiceOutput, IncrementalDecoder, SeqText, StopMatcher, StopOutcome,
    ToolCallDelta, ToolCallFormat, ToolCallOptions, ToolCallParser, ToolEvent,
};
pub use request::{
    Event, FinishReason, PromptTiming, Request, SamplingParams, StopConditions, TokenLogprob,
    MAX_TOP_LOGPROBS,
};
pub use template::{
    ChatInput, ChatMessage, ChatTemplate, ContentPart, MessageContent, Role, SpecialTokens,
    TemplateSource, ToolCall,
};
pub use token_table::TokenTable;
pub use tokenizer::{Tokenizer, TokenizerFiles};
pub use validate::{InvalidParameter, Limits, SamplingFields, ValidRequest, ValidSampling};
