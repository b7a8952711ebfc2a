//! The building blocks of a DeepSeek decoder, one struct per Hugging Face
//! module: [`linear`] (a projection, dense or quantized), [`mla`]
//! (`self_attn`), [`moe`] (`mlp`: the dense `Mlp`, the router and the
//! experts), [`norm`] (RMSNorm) and [`rope`] (YaRN rotary embeddings).
//! The compute they call lives in [`crate::kernels`].

pub mod linear;
pub mod mla;
pub mod moe;
pub mod norm;
pub mod rope;
