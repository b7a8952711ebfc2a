//! The packed kernels against the same integer arithmetic done plainly.

use super::input::quantize_block;
use super::*;
use crate::testing::unit::{
    dequantized, packed_legacy, packed_q2k, packed_q3k, packed_q4k, packed_q5k, packed_q6k,
    packed_q8_0, values as fill,
};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};

/// The kernel equals the same integer arithmetic done plainly (exact up
/// to f32 rounding), and stays within activation quantization of the
/// f32 product with the dequantized weights.
#[test]
fn packed_kernel_matches_the_integer_arithmetic() {
    if !PackedQ8::available() {
        return;
    }
    for (m, groups, n, k) in [
        (1, 3, 16, 32),
        (2, 16, 256, 128),
        (5, 2, 48, 256),
        (11, 2, 16, 64),
    ] {
        let x = fill(m * groups * k, 1);
        let weights: Vec<QTensor> = (0..groups)
            .map(|g| {
                let w = Tensor::from_vec(fill(n * k, 100 + g), (n, k), &Device::Cpu).unwrap();
                QTensor::quantize(&w, GgmlDType::Q8_0).unwrap()
            })
            .collect();
        let packs: Vec<Packed> = weights
            .iter()
            .map(|w| Packed::Q8_0(PackedQ8::new(&w.data().unwrap(), n, k).unwrap()))
            .collect();
        let got = matmul_groups(&x, m, &packs.iter().collect::<Vec<_>>());
        for (g, w) in weights.iter().enumerate() {
            let data = w.data().unwrap();
            let deq = dequantized(w);
            for i in 0..m {
                let xs = &x[(i * groups + g) * k..][..k];
                for j in 0..n {
                    let mut exact = 0f64;
                    let mut plain = 0f64;
                    for b in 0..k / BLOCK {
                        let mut q = [0i8; BLOCK];
                        let dx = quantize_block(&xs[b * BLOCK..][..BLOCK], &mut q);
                        let block = &data[(j * k / BLOCK + b) * Q8_0_BYTES..];
                        let dw = half::f16::from_le_bytes([block[0], block[1]]).to_f32();
                        let dot: i32 = (0..BLOCK)
                            .map(|c| block[2 + c] as i8 as i32 * q[c] as i32)
                            .sum();
                        exact += (dw * dx) as f64 * dot as f64;
                    }
                    for c in 0..k {
                        plain += deq[j * k + c] as f64 * xs[c] as f64;
                    }
                    let have = got[i * groups * n + g * n + j] as f64;
                    assert!(
                        (have - exact).abs() <= 1e-4 * (1.0 + exact.abs()),
                        "{m}x{groups}x{n}x{k} row {i} group {g} column {j}: {have} vs {exact}"
                    );
                    // Activation quantization: well under 1% of the scale.
                    let norm = (k as f64).sqrt();
                    assert!((have - plain).abs() <= 0.02 * norm, "{have} vs f32 {plain}");
                }
            }
        }
    }
}

/// Each job multiplies its own rows, wherever they start in the input
/// and whatever its width and format, exactly as a call for each row
/// alone does; the outputs follow one another, and a job without rows
/// adds none.
#[test]
fn each_job_takes_its_own_rows() {
    if !Packed::available() {
        return;
    }
    let x = fill(6 * 256, 3);
    let a = Packed::Q8_0(packed_q8_0(48, 64, 10).1);
    let b = Packed::Q4K(packed_q4k(32, 256, 20).1);
    let c = Packed::Q8_0(packed_q8_0(16, 32, 30).1);
    let d = Packed::Q6K(packed_q6k(16, 256, 35).1);
    let e = Packed::Q5K(packed_q5k(16, 512, 36).1);
    let f = Packed::Legacy(packed_legacy(32, 96, 37, GgmlDType::Q5_1).1);
    let g = Packed::Q3K(packed_q3k(16, 256, 38).1);
    let h = Packed::Q2K(packed_q2k(32, 256, 39).1);
    let jobs = vec![
        (&g, vec![1024, 256]),
        (&h, vec![0, 768]),
        (&e, vec![512, 0]),
        (&f, vec![64, 1024, 0]),
        (&a, vec![0, 192, 64]),
        (&b, vec![512, 0, 1024, 32, 96, 1280, 160, 224, 288]),
        (&a, vec![]),
        (&c, vec![1280]),
        (&d, vec![256, 0, 1024]),
    ];
    let got = matmul_each(&x, &jobs);
    let mut want = Vec::new();
    for (pack, starts) in &jobs {
        let k = pack.dims().1;
        for &s in starts {
            want.extend(matmul_groups(&x[s..s + k], 1, &[pack]));
        }
    }
    assert_eq!(got, want);
}

/// On the calling thread, a weight gives the numbers the pool's call
/// gives, for both formats and row counts below, at and past a tile's
/// eight rows.
#[test]
fn here_equals_the_pools_call() {
    if !Packed::available() {
        return;
    }
    let q8 = Packed::Q8_0(packed_q8_0(48, 128, 50).1);
    let q4 = Packed::Q4K(packed_q4k(32, 256, 60).1);
    let q5 = Packed::Q5K(packed_q5k(16, 256, 62).1);
    let q6 = Packed::Q6K(packed_q6k(32, 512, 65).1);
    let q5_0 = Packed::Legacy(packed_legacy(32, 160, 66, GgmlDType::Q5_0).1);
    let q3 = Packed::Q3K(packed_q3k(16, 512, 67).1);
    let q2 = Packed::Q2K(packed_q2k(16, 512, 68).1);
    for pack in [&q8, &q4, &q5, &q6, &q5_0, &q3, &q2] {
        let (n, k) = pack.dims();
        for m in [1, 3, 8, 11] {
            let x = fill(m * k, m);
            let mut got = vec![0f32; m * n];
            matmul_here(&x, pack, &mut got);
            assert_eq!(got, matmul_groups(&x, m, &[pack]), "{m} rows of {k}");
        }
    }
}

/// `p`, packed from candle's `q` (`[n, k]`, GGML blocks of `bytes` for
/// `width` numbers), against `exact(block, inputs)`: one block's integer
/// arithmetic done plainly on GGML's own block and `width` inputs (each 32
/// quantized as the kernels quantize them). Exact up to f32 rounding for 1
/// to 9 input rows (one below the tile's 8, some, 8, one past), and within
/// activation quantization of the f32 product with candle's dequantized
/// weights.
fn check_blocks(
    q: &QTensor,
    p: &Packed,
    (bytes, width): (usize, usize),
    exact: impl Fn(&[u8], &[f32]) -> f64,
) {
    let (n, k) = p.dims();
    let data = q.data().unwrap();
    let deq = dequantized(q);
    for m in [1, 3, 8, 9] {
        let x: Vec<f32> = fill(m * k, m).iter().map(|v| v * 3.0).collect();
        let got = matmul_groups(&x, m, &[p]);
        for i in 0..m {
            let xs = &x[i * k..][..k];
            for j in 0..n {
                let want: f64 = (0..k / width)
                    .map(|sb| {
                        let block = &data[(j * k / width + sb) * bytes..][..bytes];
                        exact(block, &xs[sb * width..][..width])
                    })
                    .sum();
                let plain: f64 = (0..k).map(|c| deq[j * k + c] as f64 * xs[c] as f64).sum();
                let have = got[i * n + j] as f64;
                assert!(
                    (have - want).abs() <= 1e-4 * (1.0 + want.abs()),
                    "{} {m} rows, row {i} column {j}: {have} vs {want}",
                    p.format()
                );
                let norm = (k as f64).sqrt() * 3.0;
                assert!((have - plain).abs() <= 0.02 * norm, "{have} vs f32 {plain}");
            }
        }
    }
}

/// Sub-block `sub`'s 32 inputs quantized as the kernels quantize them,
/// and their scale.
fn quantized_inputs(inputs: &[f32], sub: usize) -> ([i8; BLOCK], f32) {
    let mut xq = [0i8; BLOCK];
    let dx = quantize_block(&inputs[sub * BLOCK..][..BLOCK], &mut xq);
    (xq, dx)
}

/// The Q4_K and Q5_K kernels equal the same integer arithmetic done
/// plainly on GGML's own blocks: per sub-block `x_scale · (d·scale · Σ q·x
/// - dmin·min · Σ x)`, `q` a nibble plus, for Q5_K, 16 times its fifth bit.
#[test]
fn q4k_and_q5k_kernels_match_the_integer_arithmetic() {
    if !Packed::available() {
        return;
    }
    let (n, k) = (32, 512);
    let (q4, p4) = packed_q4k(n, k, 40);
    let (q5, p5) = packed_q5k(n, k, 43);
    // Each format's block size, and where its fifth bits and nibbles start.
    for (q, p, bytes, fifths) in [
        (q4, Packed::Q4K(p4), 144, None),
        (q5, Packed::Q5K(p5), 176, Some(16)),
    ] {
        let nibbles = 16 + fifths.map_or(0, |_| 32);
        check_blocks(&q, &p, (bytes, 256), |block, inputs| {
            let d = half::f16::from_le_bytes([block[0], block[1]]).to_f32();
            let dmin = half::f16::from_le_bytes([block[2], block[3]]).to_f32();
            (0..8)
                .map(|sub| {
                    let (xq, dx) = quantized_inputs(inputs, sub);
                    let (sc, mn) = crate::quant::q4k::scale_min(sub, &block[4..16]);
                    let level = |c: usize| {
                        let nibble = block[nibbles + sub / 2 * 32 + c] >> (4 * (sub % 2)) & 0x0F;
                        let fifth = fifths.map_or(0, |at| block[at + c] >> sub & 1);
                        (nibble + 16 * fifth) as i32
                    };
                    let dot: i32 = (0..BLOCK).map(|c| level(c) * xq[c] as i32).sum();
                    let sum: i32 = xq.iter().map(|&v| v as i32).sum();
                    let inner = (d * sc as f32) as f64 * dot as f64
                        - (dmin * mn as f32) as f64 * sum as f64;
                    dx as f64 * inner
                })
                .sum()
        });
    }
}

/// Repacked Q2_K, Q3_K, Q5_K and Q6_K blocks hold candle's numbers to the
/// bit: every level, scale, min and `d` lands where the kernel reads it.
#[test]
fn q2k_q3k_q5k_and_q6k_packing_keep_candles_numbers() {
    let (q, p) = packed_q2k(48, 768, 47);
    assert_eq!(p.dequantize(), dequantized(&q));
    let (q, p) = packed_q3k(48, 768, 45);
    assert_eq!(p.dequantize(), dequantized(&q));
    let (q, p) = packed_q5k(48, 768, 44);
    assert_eq!(p.dequantize(), dequantized(&q));
    let (q, p) = packed_q6k(48, 768, 41);
    assert_eq!(p.dequantize(), dequantized(&q));
}

/// The Q6_K kernel equals the same integer arithmetic done plainly on
/// GGML's own blocks: per sub-block of 16 `x_scale · d·scale · Σ (u - 32)·x`.
#[test]
fn q6k_kernel_matches_the_integer_arithmetic() {
    if !Packed::available() {
        return;
    }
    let (q, p) = packed_q6k(32, 512, 42);
    check_blocks(&q, &Packed::Q6K(p), (210, 256), |block, inputs| {
        let d = half::f16::from_le_bytes([block[208], block[209]]).to_f32();
        let levels = crate::quant::q6k::levels(block);
        let mut exact = 0f64;
        for b in 0..8 {
            let (xq, dx) = quantized_inputs(inputs, b);
            for half in 0..2 {
                let scale = block[192 + 2 * b + half] as i8;
                let dot: i32 = (0..16)
                    .map(|c| {
                        (levels[b * BLOCK + half * 16 + c] as i32 - 32) * xq[half * 16 + c] as i32
                    })
                    .sum();
                exact += dx as f64 * (d * scale as f32) as f64 * dot as f64;
            }
        }
        exact
    });
}

/// The Q2_K kernel (Q6_K's, with 2-bit levels and mins) equals the same
/// integer arithmetic done plainly on GGML's own blocks: per sub-block of
/// 16 `x_scale · (d·s · Σ u·x - dmin·m · Σ x)`, `u` weight `128h + 32j +
/// l`'s bit pair (bits `2j..2j + 2` of byte `32h + l` of the 64), `s` and
/// `m` the low and high nibbles of the sub-block's byte.
#[test]
fn q2k_kernel_matches_the_integer_arithmetic() {
    if !Packed::available() {
        return;
    }
    let (q, p) = packed_q2k(32, 512, 48);
    check_blocks(&q, &Packed::Q2K(p), (84, 256), |block, inputs| {
        let (packed, pairs, d) = (&block[..16], &block[16..80], &block[80..]);
        let d_ = |at: usize| half::f16::from_le_bytes([d[at], d[at + 1]]).to_f32();
        let (d, dmin) = (d_(0), d_(2));
        let mut exact = 0f64;
        for b in 0..8 {
            let (xq, dx) = quantized_inputs(inputs, b);
            let (h, j) = (b / 4, b % 4);
            for half in 0..2 {
                let byte = packed[2 * b + half];
                let (scale, min) = ((byte & 0x0F) as f32, (byte >> 4) as f32);
                let (mut dot, mut sum) = (0i32, 0i32);
                for c in 0..16 {
                    let l = half * 16 + c;
                    let u = pairs[32 * h + l] >> (2 * j) & 3;
                    dot += u as i32 * xq[l] as i32;
                    sum += xq[l] as i32;
                }
                exact += dx as f64
                    * ((d * scale) as f64 * dot as f64 - (dmin * min) as f64 * sum as f64);
            }
        }
        exact
    });
}

/// The Q3_K kernel (Q6_K's, with 3-bit levels) equals the same integer
/// arithmetic done plainly on GGML's own blocks: per sub-block of 16
/// `x_scale · d·(s - 32) · Σ (u - 4)·x`, `u` weight `128h + 32j + l`'s bit
/// pair (bits `2j..2j + 2` of byte `32h + l` of the 64) and third bit (bit
/// `4h + j` of byte `l` of the 32), `s` its 6-bit scale.
#[test]
fn q3k_kernel_matches_the_integer_arithmetic() {
    if !Packed::available() {
        return;
    }
    let (q, p) = packed_q3k(32, 512, 46);
    check_blocks(&q, &Packed::Q3K(p), (110, 256), |block, inputs| {
        let (thirds, pairs, packed, d) =
            (&block[..32], &block[32..96], &block[96..108], &block[108..]);
        let d = half::f16::from_le_bytes([d[0], d[1]]).to_f32();
        // GGML's scale layout: low nibbles in bytes 0..8 (sub-blocks 0..8
        // then 8..16 in their high nibbles), top two bits in bytes 8..12.
        let scale = |s: usize| {
            let low = packed[s % 8] >> (4 * (s / 8)) & 0x0F;
            let top = packed[8 + s % 4] >> (2 * (s / 4)) & 3;
            (low | top << 4) as i32 - 32
        };
        let mut exact = 0f64;
        for b in 0..8 {
            let (xq, dx) = quantized_inputs(inputs, b);
            let (h, j) = (b / 4, b % 4);
            for half in 0..2 {
                let dot: i32 = (0..16)
                    .map(|c| {
                        let l = half * 16 + c;
                        let pair = pairs[32 * h + l] >> (2 * j) & 3;
                        let third = thirds[l] >> (4 * h + j) & 1;
                        ((pair | third << 2) as i32 - 4) * xq[l] as i32
                    })
                    .sum();
                let s = scale(2 * b + half);
                exact += dx as f64 * (d * s as f32) as f64 * dot as f64;
            }
        }
        exact
    });
}

/// Each legacy format's repacked blocks hold candle's numbers to the bit,
/// and its kernel equals the integer arithmetic done plainly on GGML's own
/// blocks: per block `x_scale · (d · Σ (q - offset)·x + m · Σ x)`, `q` a
/// nibble plus, in the 5-bit formats, 16 times its fifth bit (bit `j` of
/// the block's word for weight `j`).
#[test]
fn legacy_formats_keep_candles_numbers_and_match_the_integer_arithmetic() {
    use GgmlDType::{Q4_0, Q4_1, Q5_0, Q5_1};
    for (ggml, seed) in [(Q4_0, 80), (Q4_1, 81), (Q5_0, 82), (Q5_1, 83)] {
        let (q, p) = packed_legacy(48, 96, seed, ggml);
        assert_eq!(p.dequantize(), dequantized(&q), "{ggml:?}");
        if !Packed::available() {
            continue;
        }
        let (q, p) = packed_legacy(32, 160, seed + 10, ggml);
        let format = p.layout;
        let bytes = ggml.type_size();
        check_blocks(&q, &Packed::Legacy(p), (bytes, BLOCK), |block, inputs| {
            let f16_at = |at: usize| half::f16::from_le_bytes([block[at], block[at + 1]]).to_f32();
            let (d, m) = (f16_at(0), if format.min() { f16_at(2) } else { 0.0 });
            let mut at = if format.min() { 4 } else { 2 };
            let word = if format.fifths() {
                at += 4;
                u32::from_le_bytes(block[at - 4..at].try_into().unwrap())
            } else {
                0
            };
            let (xq, dx) = quantized_inputs(inputs, 0);
            let level = |j: usize| {
                let nibble = block[at + j % 16] >> (4 * (j / 16)) & 0x0F;
                let fifth = (word >> j & 1) as u8;
                (nibble + 16 * fifth) as i32 - format.offset()
            };
            let dot: i32 = (0..BLOCK).map(|j| level(j) * xq[j] as i32).sum();
            let sum: i32 = xq.iter().map(|&v| v as i32).sum();
            dx as f64 * (d as f64 * dot as f64 + m as f64 * sum as f64)
        });
    }
}

/// The AMX kernel gives the VNNI kernel's numbers to the bit, for input
/// rows a matrix's (evenly spaced, and strided as one group's of
/// several), an expert's (picked out of order, so copied together), and
/// rows past the last whole group of 16 (left to the VNNI kernel). Runs
/// where the CPU has AMX-INT8 and says it was skipped elsewhere.
#[test]
fn amx_tiles_give_the_vnni_numbers() {
    #[cfg(target_arch = "x86_64")]
    if Packed::available() && amx::available() {
        let (n, k) = (48, 256);
        let pack = Packed::Q8_0(packed_q8_0(n, k, 70).1);
        let x = fill(64 * 3 * k, 71);
        let input = quantize_rows(&x);
        let scattered: Vec<usize> = (0..37).map(|i| (i * 29 % 64) * k).collect();
        for (what, starts) in [
            ("a matrix's", (0..40).map(|i| i * k).collect::<Vec<_>>()),
            ("strided", (0..33).map(|i| (i * 3 + 1) * k).collect()),
            ("scattered", scattered),
        ] {
            let rows = input.view().rows(starts.iter().copied(), k);
            let groups = amx_groups(&pack, &rows, k).expect("whole groups of 16");
            assert_eq!(groups.rows(), rows.len() / 16 * 16);
            for tile in 0..n / TILE {
                let (mut amx, mut vnni) = (vec![], vec![]);
                // SAFETY: `available` said yes to both kernels.
                unsafe {
                    tile_rows(&pack, tile, &rows, Some(&groups), |i, d| amx.push((i, *d)));
                    tile_rows(&pack, tile, &rows, None, |i, d| vnni.push((i, *d)));
                }
                amx.sort_by_key(|&(i, _)| i);
                assert_eq!(amx, vnni, "{what} rows, tile {tile}");
            }
        }
        return;
    }
    eprintln!("skipped: this CPU has no AMX-INT8 (or Linux gave no tile state)");
}

/// Line buffers start on a 64-byte boundary, hold zeros, and keep their
/// bytes through a clone and a join, small ones and ones of huge pages.
#[test]
fn lines_are_aligned_zeros_that_clone_and_join() {
    for bytes in [0, 64, 4096 + 64, 5 << 20] {
        let mut lines = Lines::zeroed(bytes);
        assert_eq!(lines.len(), bytes);
        assert!(
            (lines.as_ptr() as usize).is_multiple_of(64),
            "{bytes} bytes"
        );
        assert!(lines.iter().all(|&b| b == 0));
        for (i, b) in lines.iter_mut().enumerate() {
            *b = (i % 251) as u8;
        }
        let copy = lines.clone();
        assert_eq!(copy, lines);
        assert!((copy.as_ptr() as usize).is_multiple_of(64));
        let mut joined = lines.clone();
        joined.extend(copy);
        assert_eq!(&joined[..bytes], &lines[..]);
        assert_eq!(&joined[bytes..], &lines[..]);
        assert!((joined.as_ptr() as usize).is_multiple_of(64));
    }
}
