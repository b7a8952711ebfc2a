//! ferroseek-model: the DeepSeek-V2/V3 forward pass on candle.
//!
//! Multi-head Latent Attention over a paged latent cache (absorbed for decode),
//! DeepSeekMoE with every routing method DeepSeek released, YaRN rope, and
//! Hugging Face checkpoint loading from a folder or the hub cache. The model knows
//! nothing of requests: [`DeepSeekModel::forward`] takes a flattened [`Batch`] and
//! a [`LatentCache`] and returns logits.
//!
//! Its parts:
//!
//! - [`config`]: `config.json`, parsed and checked ([`DeepSeekConfig`]).
//! - [`checkpoint`]: finding a checkpoint's files (a folder or the hub cache)
//!   and reading its tensors by name (safetensors, FP8 dequantized at load).
//! - [`quant`]: load-time quantization to Q8_0 or Q4_K, bit for bit as
//!   candle (GGML) quantizes, and packing for the int8 kernels.
//! - [`layers`]: one struct per Hugging Face module (linear projections,
//!   MLA, the MoE block and its MLPs, RMSNorm, rope), as the checkpoint
//!   names them.
//! - [`kernels`]: the CPU compute the layers call (attention over the paged
//!   cache, the decode GEMV, the packed VNNI kernels) and the compute pool.
//! - [`model`]: the decoder assembled from the layers ([`DeepSeekModel`]).
//! - [`cache`]: the paged latent KV cache ([`LatentCache`]).
//! - [`batch`]: one forward pass's input ([`Batch`]).
//! - [`error`]: the crate's error ([`ModelError`]).
//! - `testing` (cargo feature `testing`): benchmark support, such as
//!   checkpoints of random weights and the machine's read bandwidth.

pub mod batch;
pub mod cache;
pub mod checkpoint;
pub mod config;
pub mod error;
pub mod kernels;
pub mod layers;
pub mod model;
pub mod quant;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use batch::{Batch, LogitsRows, SeqInput};
pub use cache::{CacheDType, LatentCache};
pub use checkpoint::{
    resolve_model, resolve_model_with_gguf_file, Checkpoint, CheckpointFormat, GgufCheckpoint,
    GgufVocab, HubOptions, ModelFiles,
};
pub use config::DeepSeekConfig;
pub use error::{ModelError, Result};
pub use kernels::parallel::{set_threads, threads as compute_threads};
pub use layers::linear::WeightFormat;
pub use layers::mla::{AttentionDType, AttentionMode};
pub use model::{DTypeChoice, DeepSeekModel, LoadOptions};
pub use quant::Quantization;
