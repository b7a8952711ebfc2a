//! The packers and quantizers give candle's bytes, whole or split over threads.

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};

use super::{pack_rows, quantize_rows, QUANTIZE_SPLIT};
use crate::kernels::packed::{Packed, PackedQ4K, PackedQ8, BLOCK};
use crate::testing::unit::{dequantized, packed_q4k, packed_q8_0, values as fill};

/// Quantizing f32 weights straight into the packed layout gives the
/// bytes candle's Q8_0 blocks pack into: random weights, a block of
/// exact halves (which round away from zero), a block of zeros, and
/// tiny and huge magnitudes.
#[test]
fn quantizing_packs_what_candle_quantizes() {
    if !PackedQ8::available() {
        return;
    }
    let (n, k) = (32, 256);
    let mut w = fill(n * k, 70);
    // Row 0, block 0: max 127, so d = 1 and x·(1/d) = x: exact halves.
    for (i, v) in w[..BLOCK].iter_mut().enumerate() {
        *v = (i as f32 - 16.0) + 0.5;
    }
    w[BLOCK - 1] = 127.0;
    w[BLOCK..2 * BLOCK].fill(0.0);
    for (i, v) in w[k..k + BLOCK].iter_mut().enumerate() {
        *v = (i as f32 - 16.0) * 1e-30;
    }
    for (i, v) in w[2 * k..2 * k + BLOCK].iter_mut().enumerate() {
        *v = (i as f32 - 16.0) * 1e30;
    }
    let t = Tensor::from_vec(w.clone(), (n, k), &Device::Cpu).unwrap();
    let candle = QTensor::quantize(&t, GgmlDType::Q8_0).unwrap();
    let want = PackedQ8::new(&candle.data().unwrap(), n, k).unwrap();
    let got = PackedQ8::quantize(&w, n, k).unwrap();
    assert_eq!(got.scales, want.scales);
    assert!(got.quads == want.quads, "the packed numbers differ");
}

/// Our Q4_K quantization gives candle's bytes: random weights, and
/// super-blocks with a constant sub-block, all zeros, only positive or
/// only negative numbers, tiny and huge magnitudes; packed straight
/// from f32, it equals candle's blocks packed.
#[test]
fn q4k_quantizing_gives_candles_blocks() {
    let (n, k) = (32, 512);
    let mut w = fill(n * k, 80);
    w[..32].fill(0.25);
    w[256..512].fill(0.0);
    for v in &mut w[k..k + 256] {
        *v = v.abs() + 0.1;
    }
    for v in &mut w[k + 256..2 * k] {
        *v = -v.abs() - 0.1;
    }
    for v in &mut w[2 * k..2 * k + 256] {
        *v *= 1e-30;
    }
    for v in &mut w[2 * k + 256..3 * k] {
        *v *= 1e30;
    }
    let t = Tensor::from_vec(w.clone(), (n, k), &Device::Cpu).unwrap();
    let candle = QTensor::quantize(&t, GgmlDType::Q4K).unwrap();
    let candle = candle.data().unwrap();
    let ours = super::q4k::quantize_blocks(&w);
    assert_eq!(ours.len(), candle.len());
    let differing = ours
        .iter()
        .zip(candle.iter())
        .filter(|(a, b)| a != b)
        .count();
    assert_eq!(differing, 0, "{differing} bytes differ");
    if Packed::available() {
        let want = PackedQ4K::new(&candle, n, k).unwrap();
        let got = PackedQ4K::quantize(&w, n, k).unwrap();
        // Bit for bit: the huge block's scales overflow f16 to infinity.
        let bits = |p: &PackedQ4K| {
            p.dequantize()
                .iter()
                .map(|v| v.to_bits())
                .collect::<Vec<_>>()
        };
        assert!(bits(&got) == bits(&want), "packed differently");
    }
}

/// Unpacking a Q4_K weight gives candle's dequantized numbers exactly,
/// and a stacked one is the one packed from both weights' rows.
#[test]
fn q4k_packing_keeps_every_number() {
    let (qa, a) = packed_q4k(32, 512, 7);
    let (qb, b) = packed_q4k(16, 512, 8);
    assert_eq!(a.dequantize(), dequantized(&qa));
    let both = [qa.data().unwrap(), qb.data().unwrap()].concat();
    let whole = PackedQ4K::new(&both, 48, 512).unwrap();
    let stacked = PackedQ4K::stack(a, b);
    assert_eq!(stacked.dims(), (48, 512));
    assert_eq!(stacked.dequantize(), whole.dequantize());
    assert_eq!(stacked.dequantize()[32 * 512..], dequantized(&qb)[..]);
    assert!(PackedQ4K::new(&[0; 144 * 2], 16, 256 / 8).is_none());
}

/// A stacked weight is the one packed from both weights' rows.
#[test]
fn stacking_appends_rows() {
    let (qa, a) = packed_q8_0(32, 64, 1);
    let (qb, b) = packed_q8_0(16, 64, 2);
    let both = [qa.data().unwrap(), qb.data().unwrap()].concat();
    let whole = PackedQ8::new(&both, 48, 64).unwrap();
    let stacked = PackedQ8::stack(a, b);
    assert_eq!(stacked.dims(), (48, 64));
    assert_eq!(stacked.dequantize(), whole.dequantize());
    assert_eq!(stacked.quads, whole.quads);
}

/// Unpacking gives candle's dequantized numbers exactly.
#[test]
fn packing_keeps_every_number() {
    let (n, k) = (48, 96);
    let w = Tensor::from_vec(fill(n * k, 5), (n, k), &Device::Cpu).unwrap();
    let q = QTensor::quantize(&w, GgmlDType::Q8_0).unwrap();
    let packed = PackedQ8::new(&q.data().unwrap(), n, k).unwrap();
    assert_eq!(packed.dequantize(), dequantized(&q));
}

#[test]
fn shapes_that_do_not_tile_are_refused() {
    assert!(PackedQ8::new(&[0; 34 * 8], 8, 32).is_none());
    assert!(PackedQ8::new(&[], 16, 20).is_none());
}

/// Packing rows on several threads (parts of 112, 112 and 80 rows)
/// gives the weight packed whole; a shape that does not tile is left
/// to candle.
#[test]
fn split_packing_equals_packing_whole() {
    let (n, k) = (304, 512);
    assert!(n * k >= QUANTIZE_SPLIT);
    let v = fill(n * k, 9);
    for ggml in [GgmlDType::Q8_0, GgmlDType::Q4K] {
        let Some(ours) = pack_rows(&v, (n, k), ggml, 3).unwrap() else {
            assert!(!Packed::available());
            continue;
        };
        let whole = QTensor::quantize(&Tensor::from_slice(&v, (n, k), &Device::Cpu).unwrap(), ggml)
            .unwrap();
        let whole = Packed::new(&whole.data().unwrap(), ggml, n, k).unwrap();
        assert_eq!(ours.dims(), (n, k));
        assert_eq!(ours.dequantize(), whole.dequantize(), "{ggml:?}");
    }
    assert!(pack_rows(&v[..40 * k], (40, k), GgmlDType::Q8_0, 3)
        .unwrap()
        .is_none());
}

/// Quantizing rows on several threads gives candle's bytes exactly.
#[test]
fn split_quantization_equals_candles() {
    let (n, k) = (301, 256);
    assert!(n * k >= QUANTIZE_SPLIT);
    let v = fill(n * k, 7);
    for ggml in [GgmlDType::Q8_0, GgmlDType::Q4K] {
        let ours = quantize_rows(&v, (n, k), ggml, 3).unwrap();
        let whole = QTensor::quantize(&Tensor::from_slice(&v, (n, k), &Device::Cpu).unwrap(), ggml)
            .unwrap();
        assert_eq!(ours.shape().dims2().unwrap(), (n, k));
        assert!(ours.data().unwrap() == whole.data().unwrap(), "{ggml:?}");
    }
}
