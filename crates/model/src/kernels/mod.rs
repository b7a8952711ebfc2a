//! The CPU compute kernels the layers call, apart from the model's
//! structure: each reads plain slices and knows nothing of checkpoints.
//!
//! - [`attention`]: absorbed multi-head latent attention straight out of
//!   the paged cache, unfused or fused with MLA's per-head matrices.
//! - [`gemv`]: `x · Wᵀ` for the few rows of a decode step over f32, bf16
//!   and Q8_0 weights, reading each weight once.
//! - [`packed`]: the int8 AVX-512-VNNI kernels over Q8_0 and Q4_K weights
//!   held in their own tiled layout.
//! - `experts`, `silu`, `rms_norm`: the routed experts' MLPs on the packed
//!   kernels, SwiGLU's activation, RMSNorm's rows.
//! - [`parallel`]: the one compute pool every kernel (and candle) runs on.
//! - `x86`: the AVX-512 helpers the kernels share (horizontal sums,
//!   prefetching, a vector `exp`).
//!
//! Each picks its instruction set at run time; the SIMD paths give the
//! plain loops' numbers (their unit tests compare them).

pub mod attention;
pub(crate) mod experts;
pub mod gemv;
pub mod packed;
pub mod parallel;
pub(crate) mod rms_norm;
pub(crate) mod silu;
#[cfg(target_arch = "x86_64")]
pub(crate) mod x86;
