//! Finding a checkpoint (a local folder or a Hugging Face hub id, through the
//! standard hub cache) and reading its tensors by their checkpoint names.
//!
//! - `files`: which files make a checkpoint ([`ModelFiles`]), from a folder
//!   or a hub repository, single-file or sharded ([`resolve_model`]).
//! - `hub`: the hub cache and downloads ([`HubOptions`]).
//! - `safetensors`: [`Checkpoint`], the memory-mapped safetensors files,
//!   read on demand by tensor name through a candle `VarBuilder`, so weights
//!   the forward pass never asks for (V3's multi-token-prediction layer) are
//!   never touched.
//! - `fp8`: DeepSeek's block-scaled FP8 weights, dequantized at load.
//! - `gguf`: [`GgufCheckpoint`], llama.cpp's GGUF files of architecture
//!   `deepseek2`, their tensors under the Hugging Face names and their
//!   metadata as a config.
//!
//! The seam between a format and the model is the `VarBuilder`: the model
//! asks it for tensors by the names the Hugging Face checkpoint gives them,
//! in the shapes it expects, and never sees files.

mod files;
mod fp8;
mod gguf;
mod hub;
mod safetensors;

pub use files::{resolve_model, resolve_model_with_gguf_file, CheckpointFormat, ModelFiles};
pub use fp8::dequantize_block_fp8;
pub use gguf::{GgufCheckpoint, GgufVocab};
pub use hub::HubOptions;
pub use safetensors::Checkpoint;
