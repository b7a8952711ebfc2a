//! The model crate's error type: every failure names what was wrong and where.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A `config.json` field has a value this implementation does not support,
    /// or values that contradict each other.
    #[error("config.json: `{field}` {message}")]
    Config { field: String, message: String },

    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// `field` is where in the document it went wrong (`kv_lora_rank`,
    /// `rope_scaling.factor`), empty when the text is not JSON at all.
    #[error("{}: invalid JSON{}: {source}", path.display(), if field.is_empty() { String::new() } else { format!(" in `{field}`") })]
    Json {
        path: PathBuf,
        field: String,
        #[source]
        source: serde_json::Error,
    },

    #[error("tensor `{name}` is missing from the checkpoint ({searched})")]
    MissingTensor { name: String, searched: String },

    #[error("tensor `{name}` in {file} has shape {found:?}, expected {expected:?}")]
    TensorShape {
        name: String,
        file: PathBuf,
        expected: Vec<usize>,
        found: Vec<usize>,
    },

    #[error("model `{model}`: {message}")]
    Hub { model: String, message: String },

    /// A GGUF file that cannot be read, or whose metadata or tensors this
    /// implementation does not support; `message` names the key or tensor.
    #[error("{}: {message}", path.display())]
    Gguf { path: PathBuf, message: String },

    /// The caller handed the forward pass a batch that does not fit the cache
    /// or the model (a bug in the caller, reported rather than panicking).
    #[error("invalid batch: {0}")]
    Batch(String),

    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, ModelError>;

impl ModelError {
    pub(crate) fn config(field: &str, message: impl Into<String>) -> Self {
        ModelError::Config {
            field: field.to_string(),
            message: message.into(),
        }
    }
}

/// Reads and parses a JSON file, naming the file in either error.
pub(crate) fn read_json<T: serde::de::DeserializeOwned>(path: &std::path::Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse_json(&text, path)
}

/// Parses JSON text, naming `path` and the field that failed.
pub(crate) fn parse_json<T: serde::de::DeserializeOwned>(
    text: &str,
    path: &std::path::Path,
) -> Result<T> {
    let mut de = serde_json::Deserializer::from_str(text);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let field = e.path().to_string();
        ModelError::Json {
            path: path.to_path_buf(),
            field: if field == "." { String::new() } else { field },
            source: e.into_inner(),
        }
    })
}
