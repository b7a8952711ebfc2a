//! ferroseek-engine: everything between an HTTP request and the model's
//! forward pass. This part turns conversations into token ids (the
//! tokenizer and the model's chat template, rendered as Hugging Face
//! transformers renders it) and generated ids back into streamed text
//! (incremental detokenization and stop strings). `validate` is the one
//! check of a request's sampling and limits; the engine takes only the
//! [`ValidRequest`] it makes. The engine knows nothing
//! of HTTP or JSON request types: the server converts its OpenAI types into
//! the plain types here.

pub mod block_manager;
pub mod engine;
pub mod error;
pub mod output;
pub mod request;
pub mod sampling;
pub mod scheduler;
pub mod template;
pub mod tokenizer;
pub mod validate;

pub use engine::{Engine, EngineConfig, EngineStats, RequestStream};
pub use error::{Error, Result};
pub use output::{
    ChoiceDelta, ChoiceOutput, IncrementalDecoder, SeqText, StopMatcher, StopOutcome,
};
pub use request::{
    Event, FinishReason, Request, SamplingParams, StopConditions, SubmitError, TokenLogprob,
    MAX_TOP_LOGPROBS,
};
pub use template::{
    ChatInput, ChatMessage, ChatTemplate, ContentPart, MessageContent, Role, SpecialTokens,
    TemplateSource, ToolCall,
};
pub use tokenizer::{Tokenizer, TokenizerFiles};
pub use validate::{InvalidParameter, Limits, SamplingFields, ValidRequest, ValidSampling};
