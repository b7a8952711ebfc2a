//! The building blocks of a DeepSeek decoder, one struct per Hugging Face module.

pub mod attention_kernel;
pub mod decode_matmul;
pub mod linear;
pub mod mla;
pub mod moe;
pub mod norm;
pub mod packed;
pub mod rope;
#[cfg(target_arch = "x86_64")]
pub(crate) mod x86;

/// Helpers the layers' unit tests share.
#[cfg(test)]
pub(crate) mod testing {
    use candle_core::quantized::QTensor;
    use candle_core::Device;

    /// A deterministic pseudo-random fill in [-1, 1).
    pub fn values(len: usize, seed: usize) -> Vec<f32> {
        (0..len)
            .map(|i| (((i + seed) * 2_654_435_761) % 1000) as f32 / 500.0 - 1.0)
            .collect()
    }

    /// The largest |number| of `t`.
    pub fn max_abs(t: &candle_core::Tensor) -> f32 {
        t.abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    /// A quantized weight's numbers, row-major.
    pub fn dequantized(q: &QTensor) -> Vec<f32> {
        q.dequantize(&Device::Cpu)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    }
}
