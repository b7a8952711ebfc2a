//! Benchmark support, behind the `testing` feature (the crate's own tests
//! and benches, and the other crates' benches, enable it): the machine's
//! read bandwidth ([`read_bandwidth_gbps`]), and checkpoints of random
//! weights: a Hugging Face folder (`config.json` + `model.safetensors`) with every tensor a DeepSeek
//! config asks for, named as on the hub, so that any loader of real
//! checkpoints (ours, candle-transformers') reads it. Weights are uniform
//! with the variance of a 1/fan-in initialisation, norms are 1, so
//! activations stay in a realistic range through the layers.

use std::path::{Path, PathBuf};

use candle_core::DType;
use half::{bf16, f16};
use safetensors::tensor::{Dtype, TensorView};

use crate::config::{DeepSeekConfig, TopkMethod};
use crate::error::{ModelError, Result};

#[cfg(test)]
pub(crate) mod unit;

/// The benchmark model: DeepSeek-V2-Lite's architecture (no q LoRA, 64-wide
/// rope key, 128-wide heads, softmax greedy routing over fine-grained
/// experts plus 2 shared ones, one dense first layer) scaled to 265M
/// parameters (hidden 1024, 8 layers, 16 heads, kv_lora_rank 256, 32 routed
/// experts top-4 of width 256): ~530 MB in bf16. A decode step reads ~103M
/// of those parameters (attention, the dense layer, 4 routed + 2 shared
/// experts per layer, lm_head).
pub fn bench_config() -> serde_json::Value {
    serde_json::json!({
        "architectures": ["DeepseekV2ForCausalLM"],
        "model_type": "deepseek_v2",
        "vocab_size": 8000,
        "hidden_size": 1024,
        "intermediate_size": 2816,
        "moe_intermediate_size": 256,
        "num_hidden_layers": 8,
        "num_attention_heads": 16,
        "num_key_value_heads": 16,
        "n_shared_experts": 2,
        "n_routed_experts": 32,
        "num_experts_per_tok": 4,
        "routed_scaling_factor": 1.0,
        "topk_method": "greedy",
        "n_group": 1,
        "topk_group": 1,
        "scoring_func": "softmax",
        "norm_topk_prob": false,
        "first_k_dense_replace": 1,
        "moe_layer_freq": 1,
        "q_lora_rank": null,
        "kv_lora_rank": 256,
        "qk_nope_head_dim": 128,
        "qk_rope_head_dim": 64,
        "v_head_dim": 128,
        "hidden_act": "silu",
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "rope_scaling": null,
        "attention_bias": false,
        "tie_word_embeddings": false,
        "bos_token_id": 0,
        "eos_token_id": 1,
        "torch_dtype": "bfloat16"
    })
}

/// Every tensor a config needs: (name, shape).
pub fn tensor_shapes(cfg: &DeepSeekConfig) -> Vec<(String, Vec<usize>)> {
    let (h, v) = (cfg.hidden_size, cfg.vocab_size);
    let heads = cfg.num_attention_heads;
    let qk = cfg.qk_nope_head_dim + cfg.qk_rope_head_dim;
    let mut out: Vec<(String, Vec<usize>)> = vec![("model.embed_tokens.weight".into(), vec![v, h])];
    let mlp = |out: &mut Vec<(String, Vec<usize>)>, p: &str, inter: usize| {
        out.push((format!("{p}.gate_proj.weight"), vec![inter, h]));
        out.push((format!("{p}.up_proj.weight"), vec![inter, h]));
        out.push((format!("{p}.down_proj.weight"), vec![h, inter]));
    };
    for l in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{l}");
        out.push((format!("{p}.input_layernorm.weight"), vec![h]));
        out.push((format!("{p}.post_attention_layernorm.weight"), vec![h]));
        let a = format!("{p}.self_attn");
        match cfg.q_lora_rank {
            None => out.push((format!("{a}.q_proj.weight"), vec![heads * qk, h])),
            Some(r) => {
                out.push((format!("{a}.q_a_proj.weight"), vec![r, h]));
                out.push((format!("{a}.q_a_layernorm.weight"), vec![r]));
                out.push((format!("{a}.q_b_proj.weight"), vec![heads * qk, r]));
            }
        }
        out.push((
            format!("{a}.kv_a_proj_with_mqa.weight"),
            vec![cfg.kv_lora_rank + cfg.qk_rope_head_dim, h],
        ));
        out.push((format!("{a}.kv_a_layernorm.weight"), vec![cfg.kv_lora_rank]));
        out.push((
            format!("{a}.kv_b_proj.weight"),
            vec![
                heads * (cfg.qk_nope_head_dim + cfg.v_head_dim),
                cfg.kv_lora_rank,
            ],
        ));
        out.push((
            format!("{a}.o_proj.weight"),
            vec![h, heads * cfg.v_head_dim],
        ));
        match &cfg.moe {
            Some(moe) if cfg.is_moe_layer(l) => {
                let m = format!("{p}.mlp");
                out.push((format!("{m}.gate.weight"), vec![moe.n_routed_experts, h]));
                if moe.topk_method == TopkMethod::NoauxTc {
                    out.push((
                        format!("{m}.gate.e_score_correction_bias"),
                        vec![moe.n_routed_experts],
                    ));
                }
                for e in 0..moe.n_routed_experts {
                    mlp(
                        &mut out,
                        &format!("{m}.experts.{e}"),
                        moe.moe_intermediate_size,
                    );
                }
                if moe.n_shared_experts > 0 {
                    mlp(
                        &mut out,
                        &format!("{m}.shared_experts"),
                        moe.moe_intermediate_size * moe.n_shared_experts,
                    );
                }
            }
            _ => mlp(&mut out, &format!("{p}.mlp"), cfg.intermediate_size),
        }
    }
    out.push(("model.norm.weight".into(), vec![h]));
    if !cfg.tie_word_embeddings {
        out.push(("lm_head.weight".into(), vec![v, h]));
    }
    out
}

/// xorshift64*: fast, and enough for weights nobody reads for meaning.
pub(crate) struct Xorshift(pub(crate) u64);

impl Xorshift {
    /// Uniform in [0, 1).
    pub(crate) fn next_f32(&mut self) -> f32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let bits = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40;
        bits as f32 / (1u64 << 24) as f32
    }
}

/// Writes `config` and random weights stored as `dtype` (f32, bf16 or f16)
/// into `dir`; returns the folder.
pub fn write_random_checkpoint(
    dir: &Path,
    config: &serde_json::Value,
    dtype: DType,
    seed: u64,
) -> Result<PathBuf> {
    let io = |e: std::io::Error| ModelError::Io {
        path: dir.to_path_buf(),
        source: e,
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    let text = serde_json::to_string_pretty(config).expect("a JSON value serialises");
    let cfg = DeepSeekConfig::from_json(&text)?;
    std::fs::write(dir.join("config.json"), text).map_err(io)?;
    let (st_dtype, width) = match dtype {
        DType::F32 => (Dtype::F32, 4),
        DType::BF16 => (Dtype::BF16, 2),
        DType::F16 => (Dtype::F16, 2),
        other => {
            return Err(ModelError::Config {
                field: "dtype".into(),
                message: format!("of a random checkpoint must be f32, bf16 or f16, not {other:?}"),
            })
        }
    };
    let mut rng = Xorshift(seed.max(1).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let shapes = tensor_shapes(&cfg);
    let mut buffers: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::with_capacity(shapes.len());
    for (name, shape) in shapes {
        let count: usize = shape.iter().product();
        let is_norm = name.ends_with("norm.weight");
        let is_bias = name.ends_with("e_score_correction_bias");
        let fan_in = *shape.last().expect("no scalar tensors");
        let bound = (3.0 / fan_in as f32).sqrt();
        let mut bytes = Vec::with_capacity(count * width);
        for _ in 0..count {
            let x = if is_norm {
                1.0
            } else if is_bias {
                0.0
            } else {
                (rng.next_f32() * 2.0 - 1.0) * bound
            };
            match st_dtype {
                Dtype::F32 => bytes.extend_from_slice(&x.to_le_bytes()),
                Dtype::BF16 => bytes.extend_from_slice(&bf16::from_f32(x).to_le_bytes()),
                _ => bytes.extend_from_slice(&f16::from_f32(x).to_le_bytes()),
            }
        }
        buffers.push((name, shape, bytes));
    }
    let views: Vec<(String, TensorView<'_>)> = buffers
        .iter()
        .map(|(name, shape, bytes)| {
            let view = TensorView::new(st_dtype, shape.clone(), bytes)
                .expect("shape and byte count agree by construction");
            (name.clone(), view)
        })
        .collect();
    let path = dir.join("model.safetensors");
    safetensors::serialize_to_file(views, None, &path).map_err(|e| ModelError::Io {
        path: path.clone(),
        source: std::io::Error::other(e.to_string()),
    })?;
    Ok(dir.to_path_buf())
}

/// The benchmark checkpoint, generated once into `cache_dir/<dtype>` and
/// reused after.
pub fn bench_checkpoint(cache_dir: &Path, dtype: DType) -> Result<PathBuf> {
    checkpoint_in(cache_dir, "random-v2-lite-265m", bench_config(), dtype)
}

/// The benchmark model with low-rank queries (`q_lora_rank` 384, as
/// DeepSeek-V2 and V3 have them), generated as [`bench_checkpoint`] is.
/// llama.cpp reads a `deepseek2` GGUF without low-rank queries only at
/// V2-Lite's own depth (it tells the two apart by the layer count), so the
/// side by side with it (`benches/long_context.rs`, `benches/gguf.rs`)
/// runs this one. Its context is 32768 positions: llama.cpp serves no
/// more than a file's training context, and the long-context bench sends
/// 16k-token prompts.
pub fn bench_checkpoint_q_lora(cache_dir: &Path, dtype: DType) -> Result<PathBuf> {
    let mut config = bench_config();
    config["q_lora_rank"] = 384.into();
    config["max_position_embeddings"] = 32768.into();
    checkpoint_in(cache_dir, "random-v2-lite-q-lora", config, dtype)
}

/// `cache_dir/<name>-<dtype>`, written with `config` unless it holds a
/// checkpoint of exactly that config.
fn checkpoint_in(
    cache_dir: &Path,
    name: &str,
    config: serde_json::Value,
    dtype: DType,
) -> Result<PathBuf> {
    let dir = cache_dir.join(format!("{name}-{dtype:?}").to_lowercase());
    let complete = dir.join("model.safetensors").exists()
        && std::fs::read_to_string(dir.join("config.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            == Some(config.clone());
    if complete {
        return Ok(dir);
    }
    write_random_checkpoint(&dir, &config, dtype, 0x5EED)
}

/// The machine's memory read bandwidth in GB/s, STREAM-style: a parallel
/// sum over a fresh 1 GiB buffer (far beyond the caches), the best of six
/// runs. It runs on the pool the decode kernels use, every other run with
/// software prefetch 8 KB ahead and the others without (the kernels
/// prefetch on some CPUs only, and the best of both is the machine's
/// limit); sixteen independent lanes let the loop vectorise, so memory,
/// not the latency of one running sum, is the limit.
pub fn read_bandwidth_gbps() -> f64 {
    use crate::kernels::parallel::{self, Disjoint};
    const CHUNK: usize = 1 << 16;
    // Every page different, as the weights' are: nothing (a hypervisor
    // merging identical pages, say) can serve it from fewer pages.
    let big: Vec<f32> = (0..(256u64 << 20))
        .map(|i| {
            // splitmix64's finaliser: consecutive indices, unrelated bits.
            let mut z = i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            ((z ^ (z >> 31)) >> 40) as f32
        })
        .collect();
    let chunks = big.len() / CHUNK;
    let mut sums = vec![0f32; chunks];
    let mut best = f64::MAX;
    for run in 0..6 {
        #[cfg(target_arch = "x86_64")]
        let on = run % 2 == 0;
        #[cfg(not(target_arch = "x86_64"))]
        let _ = run;
        let t = std::time::Instant::now();
        let dst = Disjoint::new(&mut sums);
        parallel::for_ranges(chunks, |range| {
            for c in range {
                let chunk = &big[c * CHUNK..(c + 1) * CHUNK];
                let mut acc = [0f32; 16];
                for block in chunk.chunks_exact(16) {
                    #[cfg(target_arch = "x86_64")]
                    // SAFETY: a prefetch never faults, wherever it points.
                    unsafe {
                        let ahead = (block.as_ptr() as *const u8).wrapping_add(8192);
                        crate::kernels::x86::prefetch(on, ahead, 1);
                    }
                    for (a, v) in acc.iter_mut().zip(block) {
                        *a += v;
                    }
                }
                // SAFETY: chunk c is this task's alone.
                unsafe { dst.write(c, acc.iter().sum::<f32>()) };
            }
        });
        std::hint::black_box(&sums);
        best = best.min(t.elapsed().as_secs_f64());
    }
    (big.len() * 4) as f64 / best / 1e9
}
