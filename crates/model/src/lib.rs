//! ferroseek-model: the DeepSeek-V2/V3 forward pass on candle.
//!
//! Multi-head Latent Attention over a paged latent cache (absorbed for decode),
//! DeepSeekMoE with every routing method DeepSeek released, YaRN rope, and
//! Hugging Face checkpoint loading from a folder or the hub cache. The model knows
//! nothing of requests: [`DeepSeekModel::forward`] takes a flattened [`Batch`] and
//! a [`LatentCache`] and returns logits.

pub mod batch;
pub mod cache;
pub mod config;
pub mod error;
pub mod layers;
pub mod model;
pub mod parallel;
pub mod random;
pub mod weights;

pub use batch::{Batch, LogitsRows, SeqInput};
pub use cache::LatentCache;
pub use config::DeepSeekConfig;
pub use error::{ModelError, Result};
pub use layers::linear::{Quantization, WeightFormat};
pub use layers::mla::AttentionMode;
pub use model::{DTypeChoice, DeepSeekModel, LoadOptions};
pub use weights::{resolve_model, Checkpoint, HubOptions, ModelFiles};
