//! The GEMV tiles against one another and against a plain matmul.

use super::*;

fn reference(x: &[f32], m: usize, k: usize, w: &[f32], n: usize) -> Vec<f32> {
    let mut out = vec![0f32; m * n];
    for i in 0..m {
        for j in 0..n {
            out[i * n + j] = (0..k)
                .map(|c| x[i * k + c] as f64 * w[j * k + c] as f64)
                .sum::<f64>() as f32;
        }
    }
    out
}

/// Whether this CPU runs `simd` (detection picks only the widest).
fn simd_available(simd: Simd) -> bool {
    matches!(
        (Simd::detect(), simd),
        (_, Simd::Portable) | (Simd::Avx512, _) | (Simd::Avx2, Simd::Avx2)
    )
}

#[test]
fn portable_tiles_equal_the_simd_ones() {
    let k = 200;
    let x: Vec<f32> = (0..4 * k)
        .map(|i| ((i * 7 % 23) as f32 - 11.0) / 9.0)
        .collect();
    let w: Vec<f32> = (0..k).map(|i| ((i * 5 % 19) as f32 - 9.0) / 7.0).collect();
    let wb: Vec<bf16> = w.iter().map(|&v| bf16::from_f32(v)).collect();
    let q = candle_core::quantized::QTensor::quantize(
        &candle_core::Tensor::from_vec(w[..192].to_vec(), (1, 192), &candle_core::Device::Cpu)
            .unwrap(),
        candle_core::quantized::GgmlDType::Q8_0,
    )
    .unwrap();
    let q = q.data().unwrap().to_vec();
    let xq: Vec<f32> = x.chunks(k).flat_map(|r| r[..192].to_vec()).collect();
    for t in 1..=4 {
        let run = |simd: Simd| {
            [
                F32_TILES.run(simd, &w, &x, k, t, k),
                BF16_TILES.run(simd, &wb, &x, k, t, k),
                Q8_0_TILES.run(simd, &q, &xq, 192, t, 192),
            ]
        };
        let portable = run(Simd::Portable);
        for simd in [Simd::Avx2, Simd::Avx512] {
            if !simd_available(simd) {
                continue;
            }
            let simd_dots = run(simd);
            for (p, s) in portable.iter().flatten().zip(simd_dots.iter().flatten()) {
                assert!(
                    (p - s).abs() < 1e-4 * (1.0 + p.abs()),
                    "{simd:?}, t = {t}: {p} vs {s}"
                );
            }
        }
    }
}

#[test]
fn shared_input_equals_one_call_per_weight() {
    let (m, k, n) = (3, 48, 10);
    let x: Vec<f32> = (0..m * k)
        .map(|i| ((i * 13 % 29) as f32 - 14.0) / 9.0)
        .collect();
    let w: Vec<Vec<f32>> = (0..2)
        .map(|s| {
            (0..n * k)
                .map(|i| ((i * 7 + s) % 31) as f32 / 15.0 - 1.0)
                .collect()
        })
        .collect();
    let both = matmul_shared(
        &x,
        m,
        k,
        &[WeightRows::F32(&w[0]), WeightRows::F32(&w[1])],
        n,
    );
    let one: Vec<Vec<f32>> = w
        .iter()
        .map(|w| matmul_rows(&x, m, k, WeightRows::F32(w), n))
        .collect();
    for i in 0..m {
        for g in 0..2 {
            assert_eq!(&both[i * 2 * n + g * n..][..n], &one[g][i * n..][..n]);
        }
    }
}

#[test]
fn q8_0_matches_candle_dequantized() {
    use candle_core::quantized::{GgmlDType, QTensor};
    use candle_core::{Device, Tensor};
    for (m, k, n) in [
        (1, 32, 3),
        (3, 96, 40),
        (4, 256, 17),
        (6, 64, 33),
        (5, 544, 37),
    ] {
        let x: Vec<f32> = (0..m * k)
            .map(|i| ((i * 31 % 97) as f32 - 48.0) / 50.0)
            .collect();
        let w: Vec<f32> = (0..n * k)
            .map(|i| ((i * 17 % 89) as f32 - 44.0) / 40.0)
            .collect();
        let wt = Tensor::from_vec(w, (n, k), &Device::Cpu).unwrap();
        let q = QTensor::quantize(&wt, GgmlDType::Q8_0).unwrap();
        let deq = crate::testing::unit::dequantized(&q);
        let expected = reference(&x, m, k, &deq, n);
        let data = q.data().unwrap();
        let got = matmul_rows(&x, m, k, WeightRows::Q8_0(&data), n);
        for i in 0..m * n {
            assert!(
                (expected[i] - got[i]).abs() < 1e-4 * (1.0 + expected[i].abs()),
                "q8_0 {m}x{k}x{n} at {i}: {} vs {}",
                expected[i],
                got[i]
            );
        }
    }
}

#[test]
fn matches_a_plain_matmul_for_every_shape_edge() {
    for (m, k, n) in [
        (1, 16, 3),
        (3, 37, 40),
        (4, 64, 17),
        (7, 200, 65),
        (9, 5, 33),
        (1, 1024, 1),
        (5, 544, 37),
        (2, 16, 4),
    ] {
        let x: Vec<f32> = (0..m * k)
            .map(|i| ((i * 31 % 97) as f32 - 48.0) / 50.0)
            .collect();
        let w: Vec<f32> = (0..n * k)
            .map(|i| ((i * 17 % 89) as f32 - 44.0) / 40.0)
            .collect();
        let expected = reference(&x, m, k, &w, n);
        let got = matmul_rows(&x, m, k, WeightRows::F32(&w), n);
        let wb: Vec<bf16> = w.iter().map(|&v| bf16::from_f32(v)).collect();
        let wr: Vec<f32> = wb.iter().map(|v| v.to_f32()).collect();
        let expected_b = reference(&x, m, k, &wr, n);
        let got_b = matmul_rows(&x, m, k, WeightRows::Bf16(&wb), n);
        for i in 0..m * n {
            assert!(
                (expected[i] - got[i]).abs() < 1e-4 * (1.0 + expected[i].abs()),
                "f32 {m}x{k}x{n} at {i}"
            );
            assert!(
                (expected_b[i] - got_b[i]).abs() < 1e-4 * (1.0 + expected_b[i].abs()),
                "bf16 {m}x{k}x{n} at {i}"
            );
        }
    }
}
