//! The building blocks of a DeepSeek decoder, one struct per Hugging Face module.

pub mod attention_kernel;
pub mod decode_matmul;
pub mod linear;
pub mod mla;
pub mod moe;
pub mod norm;
pub mod rope;
#[cfg(target_arch = "x86_64")]
mod x86;
