//! The engine's error type: every failure a user, a client or a model folder
//! can cause, each saying what was wrong and where.

use std::path::PathBuf;

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

    /// The `tokenizers` crate failed to encode or decode.
    #[error("tokenizer failed to {action}: {reason}")]
    Tokenizer {
        action: &'static str,
        reason: String,
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
}

/// Result with the engine's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
