//! The engine's error type: every failure a user, a client or a model folder
//! can cause, each saying what was wrong and where. A refused request is one
//! of these too: `QueueFull` and `ShuttingDown` are momentary (HTTP 429/503),
//! `ContextTooLong`, `CacheTooSmall` and `InvalidParameter` are the
//! request's fault (400).

use std::path::PathBuf;

use ferroseek_model::ModelError;

use crate::validate::InvalidParameter;

/// Errors of the ferroseek engine.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file of the model folder could not be read.
    #[error("cannot read `{}`: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A file of the model folder was read but its content is not what it
    /// should be (bad JSON, a field of the wrong type, a token not in the
    /// vocabulary).
    #[error("invalid `{}`: {reason}", path.display())]
    InvalidFile { path: PathBuf, reason: String },

    /// The model folder has no tokenizer file the engine can read.
    #[error("the model has neither `tokenizer.json` nor `tiktoken.model`")]
    NoTokenizer,

    /// The `tokenizers` crate failed to encode or decode.
    #[error("tokenizer failed to {action}: {source}")]
    Tokenizer {
        action: &'static str,
        #[source]
        source: tokenizers::Error,
    },

    /// The model has no chat template, or none that fits the request.
    #[error("no chat template: {0}")]
    NoChatTemplate(String),

    /// The chat template does not compile.
    #[error("chat template `{name}` does not compile: {message}")]
    TemplateSyntax { name: String, message: String },

    /// The template refused the conversation with `raise_exception(msg)`;
    /// `0` is the template's own message, meant for the client.
    #[error("{0}")]
    TemplateRaised(String),

    /// Rendering failed for another reason (a Python-style type error, an
    /// undefined attribute, a missing filter); the message says where.
    #[error("chat template `{name}` failed to render: {message}")]
    TemplateRender { name: String, message: String },

    /// The engine's configuration cannot work (the message says why).
    #[error("invalid engine configuration: {0}")]
    Config(String),

    /// The latent cache cannot be allocated as configured.
    #[error("invalid engine configuration: KV cache: {0}")]
    KvCache(#[source] ModelError),

    /// The operating system would not start the engine thread.
    #[error("cannot start the engine thread: {0}")]
    Thread(#[source] std::io::Error),

    /// The model failed while computing.
    #[error(transparent)]
    Model(#[from] ModelError),

    /// The waiting queue holds `limit` requests already.
    #[error("the server is overloaded: {limit} requests are already waiting; retry later")]
    QueueFull { limit: usize },

    /// The engine stopped (shutting down or failed).
    #[error("the engine is not running")]
    ShuttingDown,

    /// Prompt plus generation can never fit the model's context.
    #[error(
        "this model's maximum context length is {max_model_len} tokens, but the request needs {} ({prompt_tokens} in the prompt and {max_tokens} to generate); shorten the prompt or lower `max_tokens`",
        prompt_tokens + max_tokens
    )]
    ContextTooLong {
        prompt_tokens: usize,
        max_tokens: usize,
        max_model_len: usize,
    },

    /// Prompt plus generation of one choice can never fit the whole cache.
    #[error(
        "the request needs {needed_tokens} tokens of KV cache but the whole cache holds {capacity_tokens}; shorten the prompt, lower `max_tokens` or `n`, or start the server with a larger `--kv-cache-memory`"
    )]
    CacheTooSmall {
        needed_tokens: usize,
        capacity_tokens: usize,
    },

    /// A request field out of range (found by [`crate::validate`]): the
    /// field at fault, as the OpenAI API names it, and what is wrong.
    #[error(transparent)]
    InvalidParameter(#[from] InvalidParameter),
}

/// Result with the engine's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
