//! Tokenizer work off the async runtime, and the vocabulary's token table
//! (each id's bytes, for `logprobs`), which the engine crate builds.

pub use ferroseek_engine::TokenTable;

use crate::error::ApiError;

/// Runs tokenizer work (templating, encoding or decoding a prompt) on
/// tokio's blocking threads: a long prompt takes long enough to hold up the
/// requests the async runtime is serving meanwhile.
pub async fn off_runtime<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| ApiError::internal(format!("preparing the prompt failed: {e}")))?
}
