//! The decode matmul against the machine's read bandwidth and candle's
//! matmul, measured side by side in one run.
//!
//! `cargo bench -p ferroseek-model --bench kernels`. A STREAM-like loop
//! (a parallel sum over a buffer far larger than the caches) gives the read
//! bandwidth; then `x [m, 4096] · Wᵀ` with W `[8192, 4096]` for m = 1, 4, 8,
//! 16, 32 and 64 (where the kernel hands over to candle): our kernel on an
//! f32, a bf16 and a Q8_0 weight, candle's matmul (or quantized matmul) on
//! the same. GB/s = weight bytes / time (the weight is read once per call).
//! Q8_0 also at prompt sizes, 256 and 512 rows, where the packed kernel
//! takes 16 rows at a time on AMX tiles if the CPU has AMX-INT8
//! (`FERROSEEK_AMX=off` measures its VNNI kernel there instead).
//! The packed kernel in each of its formats (Q8_0, Q4_K, Q6_K) against
//! candle's quantized matmul on the same blocks (`-- packed` runs only
//! this part), and the time to repack each format's stored blocks against
//! copying them (`-- repack`).
//! Last, the absorbed attention kernel at the benchmark model's geometry (16
//! heads, latent 256 + rope 64, 16-row cache blocks) for one decode token:
//! GFLOP/s at several context lengths (`-- attention` runs only this part).

use std::time::Instant;

use candle_core::{DType, Device, Module, Tensor};
use ferroseek_model::kernels::attention::{absorbed_attention, LatentShape, SeqSpan};
use ferroseek_model::kernels::gemv::{matmul_groups, matmul_rows, WeightRows};
use ferroseek_model::kernels::packed::{self, Packed, PackedQ8};

const N: usize = 8192;
const K: usize = 4096;
const REPEATS: usize = 9;

fn median_secs(mut f: impl FnMut()) -> f64 {
    f();
    let mut t: Vec<f64> = (0..REPEATS)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64()
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[REPEATS / 2]
}

fn main() {
    // `cargo bench --bench kernels -- attention` (or `-- grouped`, or
    // `-- q8_0`) runs that part only.
    if std::env::args().skip(1).any(|a| a == "attention") {
        attention();
        return;
    }
    if std::env::args().skip(1).any(|a| a == "grouped") {
        grouped();
        return;
    }
    if std::env::args().skip(1).any(|a| a == "packed") {
        formats();
        return;
    }
    if std::env::args().skip(1).any(|a| a == "repack") {
        repack();
        return;
    }
    let threads = rayon::current_num_threads();
    let bandwidth = ferroseek_model::testing::read_bandwidth_gbps();
    println!("threads: {threads}; read bandwidth (parallel sum over 1 GiB): {bandwidth:.1} GB/s");
    let w32 = weight();
    let w16 = w32.to_dtype(DType::BF16).unwrap();
    let host32: Vec<f32> = w32.flatten_all().unwrap().to_vec1().unwrap();
    let host16: Vec<half::bf16> = w16.flatten_all().unwrap().to_vec1().unwrap();
    let q8 =
        candle_core::quantized::QTensor::quantize(&w32, candle_core::quantized::GgmlDType::Q8_0)
            .unwrap();
    let q8_data = q8.data().unwrap().to_vec();
    let q8_mm = candle_core::quantized::QMatMul::from_qtensor(q8).unwrap();
    let only_q8_0 = std::env::args().skip(1).any(|a| a == "q8_0");
    let packed = Packed::available().then(|| Packed::Q8_0(PackedQ8::new(&q8_data, N, K).unwrap()));
    println!("| q8_0 | m | f32 tiles GB/s | packed GB/s | candle GB/s | best ours / bandwidth |");
    println!("|---|---:|---:|---:|---:|---:|");
    for m in [1usize, 4, 8, 16, 32, 64, 256, 512] {
        let x: Vec<f32> = (0..m * K).map(|i| (i % 13) as f32 * 0.01).collect();
        let gb = q8_data.len() as f64 / 1e9;
        let ours = median_secs(|| {
            std::hint::black_box(matmul_rows(&x, m, K, WeightRows::Q8_0(&q8_data), N));
        });
        let vnni = packed.as_ref().map(|p| {
            median_secs(|| {
                std::hint::black_box(packed::matmul_groups(&x, m, &[p]));
            })
        });
        let xt = Tensor::from_vec(x.clone(), (m, K), &Device::Cpu).unwrap();
        let theirs = median_secs(|| {
            std::hint::black_box(q8_mm.forward(&xt).unwrap());
        });
        let best = vnni.map_or(ours, |v| v.min(ours));
        println!(
            "| q8_0 | {m} | {:.1} | {} | {:.1} | {:.0}% |",
            gb / ours,
            vnni.map_or("-".into(), |v| format!("{:.1}", gb / v)),
            gb / theirs,
            100.0 * gb / best / bandwidth
        );
    }
    if only_q8_0 {
        return;
    }
    println!("| weight | m | ferroseek kernel GB/s | candle matmul GB/s | kernel / bandwidth |");
    println!("|---|---:|---:|---:|---:|");
    for (name, bytes, tensor) in [("f32", 4usize, &w32), ("bf16", 2, &w16)] {
        let lin = candle_nn::Linear::new(tensor.clone(), None);
        for m in [1usize, 4, 8, 16, 32, 64] {
            let x: Vec<f32> = (0..m * K).map(|i| (i % 13) as f32 * 0.01).collect();
            let ours = median_secs(|| {
                let rows = match name {
                    "f32" => WeightRows::F32(&host32),
                    _ => WeightRows::Bf16(&host16),
                };
                std::hint::black_box(matmul_rows(&x, m, K, rows, N));
            });
            let xt = Tensor::from_vec(x.clone(), (m, K), &Device::Cpu)
                .unwrap()
                .to_dtype(tensor.dtype())
                .unwrap();
            let theirs = median_secs(|| {
                std::hint::black_box(lin.forward(&xt).unwrap());
            });
            let gb = (N * K * bytes) as f64 / 1e9;
            println!(
                "| {name} | {m} | {:.1} | {:.1} | {:.0}% |",
                gb / ours,
                gb / theirs,
                100.0 * gb / ours / bandwidth
            );
        }
    }
    grouped();
    formats();
    repack();
    attention();
}

/// The `[8192, 4096]` f32 weight every product here multiplies: a
/// deterministic fill in [-0.5, 0.5).
fn weight() -> Tensor {
    let w: Vec<f32> = (0..N * K)
        .map(|i| ((i * 2_654_435_761usize) % 1000) as f32 / 1000.0 - 0.5)
        .collect();
    Tensor::from_vec(w, (N, K), &Device::Cpu).unwrap()
}

/// `x [m, 4096] · Wᵀ` with W `[8192, 4096]` in each format the packed
/// kernel runs: its time per call and GB/s of the format's bytes, beside
/// candle's quantized matmul on the same blocks.
fn formats() {
    use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
    if !Packed::available() {
        println!("packed formats: skipped, the CPU lacks AVX-512-VNNI");
        return;
    }
    let w = weight();
    println!("| format | m | packed ms | packed GB/s | candle ms | candle / packed time |");
    println!("|---|---:|---:|---:|---:|---:|");
    use GgmlDType::{Q2K, Q3K, Q4K, Q4_0, Q5K, Q5_0, Q5_1, Q6K, Q8_0};
    for ggml in [Q8_0, Q4K, Q5K, Q6K, Q3K, Q2K, Q4_0, Q5_0, Q5_1] {
        let q = QTensor::quantize(&w, ggml).unwrap();
        let pack = Packed::new(&q.data().unwrap(), ggml, N, K).unwrap();
        let mm = QMatMul::from_qtensor(q).unwrap();
        for m in [1usize, 8, 64, 512] {
            let x: Vec<f32> = (0..m * K).map(|i| (i % 13) as f32 * 0.01).collect();
            let ours = median_secs(|| {
                std::hint::black_box(packed::matmul_groups(&x, m, &[&pack]));
            });
            let xt = Tensor::from_vec(x, (m, K), &Device::Cpu).unwrap();
            let theirs = median_secs(|| {
                std::hint::black_box(mm.forward(&xt).unwrap());
            });
            println!(
                "| {} | {m} | {:.2} | {:.1} | {:.2} | {:.2} |",
                pack.format(),
                ours * 1e3,
                pack.bytes() as f64 / 1e9 / ours,
                theirs * 1e3,
                theirs / ours
            );
        }
    }
}

/// Loading a stored weight: GGML's blocks of the `[8192, 4096]` weight
/// repacked for the packed kernels (on the compute pool, into fresh
/// memory, as a GGUF load does), beside copying the same bytes into a
/// fresh buffer, the least a load that reads them could do.
fn repack() {
    use candle_core::quantized::{GgmlDType, QTensor};
    if !Packed::available() {
        println!("repack: skipped, the CPU lacks AVX-512-VNNI");
        return;
    }
    let w = weight();
    println!("| format | MB | repack ms | copy ms | repack / copy |");
    println!("|---|---:|---:|---:|---:|");
    use GgmlDType::{Q2K, Q3K, Q4K, Q4_0, Q5K, Q5_0, Q5_1, Q6K, Q8_0};
    for ggml in [Q8_0, Q4K, Q5K, Q6K, Q3K, Q2K, Q4_0, Q5_0, Q5_1] {
        let data = QTensor::quantize(&w, ggml)
            .unwrap()
            .data()
            .unwrap()
            .to_vec();
        let repack = median_secs(|| {
            std::hint::black_box(Packed::new(&data, ggml, N, K).unwrap());
        });
        let copy = median_secs(|| {
            std::hint::black_box(data.to_vec());
        });
        println!(
            "| {ggml:?} | {:.1} | {:.2} | {:.2} | {:.2} |",
            data.len() as f64 / 1e6,
            repack * 1e3,
            copy * 1e3,
            repack / copy
        );
    }
}

/// MLA's absorbed per-head matrices in Q8_0 at the benchmark model's
/// geometry: 16 heads of `[256, 128]` (`w_uk`), every head's slice of the
/// input rows in one call: the decode kernel's f32 tiles, and (with
/// AVX-512-VNNI) the repacked int8 kernel.
fn grouped() {
    let (heads, n, k) = (16usize, 256usize, 128usize);
    let w: Vec<f32> = (0..n * k)
        .map(|i| ((i * 2_654_435_761usize) % 1000) as f32 / 1000.0 - 0.5)
        .collect();
    let w = Tensor::from_vec(w, (n, k), &Device::Cpu).unwrap();
    let q8 = candle_core::quantized::QTensor::quantize(&w, candle_core::quantized::GgmlDType::Q8_0)
        .unwrap();
    let data = q8.data().unwrap().to_vec();
    let weights = vec![WeightRows::Q8_0(&data); heads];
    let packed = Packed::available().then(|| Packed::Q8_0(PackedQ8::new(&data, n, k).unwrap()));
    println!("| grouped q8_0, 16 x [256, 128] | m | f32 tiles GB/s | packed VNNI GB/s |");
    println!("|---|---:|---:|---:|");
    let gb = (heads * data.len()) as f64 / 1e9;
    for m in [1usize, 4, 8, 16] {
        let x: Vec<f32> = (0..m * heads * k).map(|i| (i % 13) as f32 * 0.01).collect();
        let tiles = median_secs(|| {
            std::hint::black_box(matmul_groups(&x, m, k, &weights, n));
        });
        let vnni = packed.as_ref().map_or(String::from("-"), |p| {
            let packs = vec![p; heads];
            let secs = median_secs(|| {
                std::hint::black_box(packed::matmul_groups(&x, m, &packs));
            });
            format!("{:.1}", gb / secs)
        });
        println!("| | {m} | {:.1} | {vnni} |", gb / tiles);
    }
}

/// One decode token's absorbed attention over `context` cached rows, on
/// an f32 cache, a bf16 one and an fp8 one (`--kv-cache-dtype`).
fn attention() {
    let shape = LatentShape {
        heads: 16,
        rank: 256,
        width: 320,
        block_size: 16,
    };
    println!(
        "| attention context | µs per token, f32 cache | bf16 cache | fp8 cache | GFLOP/s, f32 | bf16 | fp8 |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    for context in [128usize, 512, 2048, 8192, 16384] {
        let blocks = context.div_ceil(shape.block_size);
        // Blocks in a scrambled order, as a long-running cache holds them.
        let table: Vec<u32> = (0..blocks as u32)
            .map(|b| (b * 7) % blocks as u32)
            .collect();
        let cache: Vec<f32> = (0..blocks * shape.block_size * shape.width)
            .map(|i| ((i * 2_654_435_761usize) % 1000) as f32 / 1000.0 - 0.5)
            .collect();
        let narrow: Vec<half::bf16> = cache.iter().map(|&v| half::bf16::from_f32(v)).collect();
        let fp8: Vec<float8::F8E4M3> = cache.iter().map(|&v| float8::F8E4M3::from_f32(v)).collect();
        let queries: Vec<f32> = (0..shape.heads * shape.width)
            .map(|i| (i % 17) as f32 * 0.01)
            .collect();
        let seqs = [SeqSpan {
            start: 0,
            num_new: 1,
            num_cached: context - 1,
            block_table: &table,
        }];
        let wide = median_secs(|| {
            std::hint::black_box(absorbed_attention(&queries, &cache, &seqs, shape, 0.1));
        });
        let half = median_secs(|| {
            std::hint::black_box(absorbed_attention(&queries, &narrow, &seqs, shape, 0.1));
        });
        let quarter = median_secs(|| {
            std::hint::black_box(absorbed_attention(&queries, &fp8, &seqs, shape, 0.1));
        });
        let flops = 2.0 * (shape.heads * context * (shape.width + shape.rank)) as f64;
        let times = [wide, half, quarter];
        let micros = times.map(|t| format!("{:.1}", t * 1e6)).join(" | ");
        let rates = times.map(|t| format!("{:.1}", flops / t / 1e9)).join(" | ");
        println!("| {context} | {micros} | {rates} |");
    }
}
