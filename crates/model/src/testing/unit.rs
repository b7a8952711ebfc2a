//! What the crate's unit tests share: deterministic fills, tensor
//! distances, and weights quantized by candle beside their packed form.

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};

use crate::kernels::packed::{
    Legacy, PackedLegacy, PackedQ2K, PackedQ3K, PackedQ4K, PackedQ5K, PackedQ6K, PackedQ8,
};

/// A deterministic pseudo-random fill in [-1, 1).
pub fn values(len: usize, seed: usize) -> Vec<f32> {
    (0..len)
        .map(|i| (((i + seed) * 2_654_435_761) % 1000) as f32 / 500.0 - 1.0)
        .collect()
}

/// The largest |number| of `t`.
pub fn max_abs(t: &Tensor) -> f32 {
    t.abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// The largest |difference| between `a` and `b`.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    max_abs(&(a - b).unwrap())
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

/// A `[n, k]` fill quantized to `ggml` by candle.
pub fn quantized(n: usize, k: usize, seed: usize, ggml: GgmlDType) -> QTensor {
    let w = Tensor::from_vec(values(n * k, seed), (n, k), &Device::Cpu).unwrap();
    QTensor::quantize(&w, ggml).unwrap()
}

/// A `[n, k]` fill in candle's `ggml`, and packed by `pack`.
fn packed<P>(
    (n, k, seed): (usize, usize, usize),
    ggml: GgmlDType,
    pack: impl FnOnce(&[u8], usize, usize) -> Option<P>,
) -> (QTensor, P) {
    let q = quantized(n, k, seed, ggml);
    let p = pack(&q.data().unwrap(), n, k).expect("a shape that tiles");
    (q, p)
}

/// A `[n, k]` fill in candle's Q8_0, and packed.
pub fn packed_q8_0(n: usize, k: usize, seed: usize) -> (QTensor, PackedQ8) {
    packed((n, k, seed), GgmlDType::Q8_0, PackedQ8::new)
}

/// A `[n, k]` fill in candle's Q4_K, and packed.
pub fn packed_q4k(n: usize, k: usize, seed: usize) -> (QTensor, PackedQ4K) {
    packed((n, k, seed), GgmlDType::Q4K, PackedQ4K::new)
}

/// A `[n, k]` fill in candle's Q5_K, and packed.
pub fn packed_q5k(n: usize, k: usize, seed: usize) -> (QTensor, PackedQ5K) {
    packed((n, k, seed), GgmlDType::Q5K, PackedQ5K::new)
}

/// A `[n, k]` fill in candle's Q6_K, and packed.
pub fn packed_q6k(n: usize, k: usize, seed: usize) -> (QTensor, PackedQ6K) {
    packed((n, k, seed), GgmlDType::Q6K, PackedQ6K::new)
}

/// A `[n, k]` fill in candle's Q3_K, and packed.
pub fn packed_q3k(n: usize, k: usize, seed: usize) -> (QTensor, PackedQ3K) {
    packed((n, k, seed), GgmlDType::Q3K, PackedQ3K::new)
}

/// A `[n, k]` fill in candle's Q2_K, and packed.
pub fn packed_q2k(n: usize, k: usize, seed: usize) -> (QTensor, PackedQ2K) {
    packed((n, k, seed), GgmlDType::Q2K, PackedQ2K::new)
}

/// A `[n, k]` fill in candle's `ggml` (Q4_0, Q4_1, Q5_0 or Q5_1), and
/// packed.
pub fn packed_legacy(n: usize, k: usize, seed: usize, ggml: GgmlDType) -> (QTensor, PackedLegacy) {
    let format = Legacy::of(ggml).expect("a legacy format");
    packed((n, k, seed), ggml, |data, n, k| {
        PackedLegacy::new(data, format, n, k)
    })
}
