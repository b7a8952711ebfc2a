//! `DeepseekV2ForCausalLM` / `DeepseekV3ForCausalLM`: embedding, decoder layers
//! (MLA + dense MLP or MoE), final norm and `lm_head`, run over a flattened batch
//! of sequences at different positions against the paged latent cache.
//!
//! The forward pass holds no request state: it takes the batch and the cache and
//! returns logits.

use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Embedding, VarBuilder};

use crate::batch::{Batch, LogitsRows};
use crate::cache::LatentCache;
use crate::checkpoint::{Checkpoint, CheckpointFormat, GgufCheckpoint, ModelFiles};
use crate::config::DeepSeekConfig;
use crate::error::{ModelError, Result};
use crate::kernels::attention::SeqSpan;
use crate::kernels::parallel;
use crate::layers::linear::{Linear, WeightFormat};
use crate::layers::mla::{Attention, AttentionDType, AttentionMode, BatchLayout};
use crate::layers::moe::{Mlp, Moe};
use crate::layers::norm::RmsNorm;
use crate::layers::rope::Rope;
use crate::quant::Quantization;

/// The precision weights are held and computed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DTypeChoice {
    /// The checkpoint's own dtype, except where the device computes it slowly:
    /// on CPU, bf16 and FP8 checkpoints compute in f32 (candle's CPU matmul converts a
    /// bf16 weight to f32 on every call).
    #[default]
    Auto,
    F32,
    BF16,
    F16,
}

impl DTypeChoice {
    /// The dtype weight matrices are kept in. The same as the compute dtype,
    /// except that on CPU `auto` keeps a bf16 checkpoint's matrices (every
    /// linear layer and the embedding table) in bf16 while computing in f32:
    /// the decode kernel widens them in registers, so a decode step reads half
    /// the bytes of f32, and nothing is rounded that f32 compute would keep.
    pub fn resolve_weights(self, checkpoint: Option<DType>, device: &Device) -> DType {
        match (self, checkpoint, device.is_cpu()) {
            (DTypeChoice::Auto, Some(DType::BF16), true) => DType::BF16,
            _ => self.resolve(checkpoint, device),
        }
    }

    /// The dtype activations are computed in.
    pub fn resolve(self, checkpoint: Option<DType>, device: &Device) -> DType {
        match self {
            DTypeChoice::F32 => DType::F32,
            DTypeChoice::BF16 => DType::BF16,
            DTypeChoice::F16 => DType::F16,
            DTypeChoice::Auto => match (checkpoint, device.is_cpu()) {
                (Some(DType::F16), _) => DType::F16,
                (Some(DType::BF16), false) => DType::BF16,
                (None | Some(DType::F8E4M3), false) => DType::BF16,
                _ => DType::F32,
            },
        }
    }
}

impl std::str::FromStr for DTypeChoice {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(DTypeChoice::Auto),
            "f32" | "float32" => Ok(DTypeChoice::F32),
            "bf16" | "bfloat16" => Ok(DTypeChoice::BF16),
            "f16" | "float16" => Ok(DTypeChoice::F16),
            other => Err(format!(
                "unknown dtype `{other}` (expected auto, f32, bf16 or f16)"
            )),
        }
    }
}

#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub dtype: DTypeChoice,
    pub device: Device,
    pub attention: AttentionMode,
    /// What prompts' attention multiplies.
    pub attention_dtype: AttentionDType,
    /// Longest context to prepare rope tables for; defaults to
    /// `max_position_embeddings`.
    pub max_positions: Option<usize>,
    /// Quantize the linear weights at load.
    pub quantize: Quantization,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            dtype: DTypeChoice::Auto,
            device: Device::Cpu,
            attention: AttentionMode::Auto,
            attention_dtype: AttentionDType::F32,
            max_positions: None,
            quantize: Quantization::None,
        }
    }
}

#[derive(Debug, Clone)]
enum FeedForward {
    Dense(Box<Mlp>),
    Moe(Box<Moe>),
}

impl FeedForward {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            FeedForward::Dense(mlp) => mlp.forward(x),
            FeedForward::Moe(moe) => moe.forward(x),
        }
    }
}

#[derive(Debug, Clone)]
struct DecoderLayer {
    input_layernorm: RmsNorm,
    self_attn: Attention,
    post_attention_layernorm: RmsNorm,
    mlp: FeedForward,
}

impl DecoderLayer {
    fn new(
        cfg: &DeepSeekConfig,
        layer: usize,
        vb: VarBuilder,
        weights: WeightFormat,
    ) -> candle_core::Result<Self> {
        let h = cfg.hidden_size;
        let mlp = match &cfg.moe {
            Some(moe) if cfg.is_moe_layer(layer) => {
                FeedForward::Moe(Box::new(Moe::new(h, moe, cfg.arch, vb.pp("mlp"), weights)?))
            }
            _ => FeedForward::Dense(Box::new(Mlp::new(
                h,
                cfg.intermediate_size,
                vb.pp("mlp"),
                weights,
            )?)),
        };
        Ok(DecoderLayer {
            input_layernorm: RmsNorm::new(h, cfg.rms_norm_eps, vb.pp("input_layernorm"))?,
            self_attn: Attention::new(cfg, vb.pp("self_attn"), weights)?,
            post_attention_layernorm: RmsNorm::new(
                h,
                cfg.rms_norm_eps,
                vb.pp("post_attention_layernorm"),
            )?,
            mlp,
        })
    }
}

pub struct DeepSeekModel {
    cfg: DeepSeekConfig,
    embed_tokens: Embedding,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    lm_head: Linear,
    rope: Rope,
    device: Device,
    dtype: DType,
    weights: WeightFormat,
    attention: AttentionMode,
    attention_dtype: AttentionDType,
}

impl DeepSeekModel {
    /// Loads a checkpoint's config and weights.
    pub fn load(files: &ModelFiles, options: &LoadOptions) -> Result<Self> {
        if files.format == CheckpointFormat::Gguf {
            return Self::load_gguf(files, options);
        }
        let cfg = DeepSeekConfig::from_file(&files.config)?;
        let checkpoint = Checkpoint::open(&files.weights, cfg.fp8.clone())?;
        let stored = cfg
            .torch_dtype
            .or_else(|| checkpoint.stored_dtype("model.embed_tokens.weight"));
        let dtype = options.dtype.resolve(stored, &options.device);
        let weights = WeightFormat {
            dtype: options.dtype.resolve_weights(stored, &options.device),
            quantize: options.quantize,
        };
        let vb = checkpoint.var_builder(dtype, &options.device);
        Self::new(cfg, vb, weights, options)
    }

    /// A GGUF checkpoint. A file whose matrices are quantized is held
    /// quantized, as Q8_0 unless `options.quantize` asks for Q4_K; weights
    /// stored as Q8_0 or Q4_K keep their blocks either way.
    fn load_gguf(files: &ModelFiles, options: &LoadOptions) -> Result<Self> {
        let checkpoint = GgufCheckpoint::open(&files.weights)?;
        let cfg = checkpoint.config()?;
        let quantized = checkpoint
            .stored_type("blk.0.attn_kv_a_mqa.weight")
            .is_some_and(|t| !matches!(t, GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16));
        let stored = match checkpoint.stored_type("token_embd.weight") {
            Some(GgmlDType::BF16) => Some(DType::BF16),
            Some(GgmlDType::F16) => Some(DType::F16),
            _ => Some(DType::F32),
        };
        let quantize = match options.quantize {
            Quantization::None if quantized => Quantization::Q8_0,
            other => other,
        };
        let dtype = options.dtype.resolve(stored, &options.device);
        let weights = WeightFormat {
            dtype: options.dtype.resolve_weights(stored, &options.device),
            quantize,
        };
        let vb = checkpoint.var_builder(dtype, &options.device);
        Self::new(cfg, vb, weights, options)
    }

    /// `vb` gives tensors in the compute dtype; weight matrices are held as
    /// `weights` says (see [`DTypeChoice::resolve_weights`]).
    pub fn new(
        cfg: DeepSeekConfig,
        vb: VarBuilder,
        weights: WeightFormat,
        options: &LoadOptions,
    ) -> Result<Self> {
        if weights.quantize != Quantization::None && vb.dtype() != DType::F32 {
            return Err(ModelError::config(
                "quantize",
                format!(
                    "needs f32 compute (quantized matmuls take f32 activations), not {:?}; use --dtype auto or f32",
                    vb.dtype()
                ),
            ));
        }
        let (v, h) = (cfg.vocab_size, cfg.hidden_size);
        let m = vb.pp("model");
        let embed_weight = m
            .pp("embed_tokens")
            .set_dtype(weights.dtype)
            .get((v, h), "weight")?;
        // Layer by layer on threads of their own (on the CPU): a layer's
        // weights are many copies and repackings, each too small to split
        // well on the pool.
        let on_cpu = vb.device().is_cpu();
        let layers = parallel::map_on_threads(on_cpu, cfg.num_hidden_layers, |l| {
            DecoderLayer::new(&cfg, l, m.pp("layers").pp(l), weights)
        })?;
        let lm_head = if cfg.tie_word_embeddings {
            Linear::from_weight(embed_weight.clone())
        } else {
            Linear::load(h, v, vb.pp("lm_head"), weights)?
        };
        let positions = options
            .max_positions
            .unwrap_or(cfg.max_position_embeddings)
            .max(1);
        Ok(DeepSeekModel {
            embed_tokens: Embedding::new(embed_weight, h),
            layers,
            norm: RmsNorm::new(h, cfg.rms_norm_eps, m.pp("norm"))?,
            lm_head,
            rope: Rope::new(&cfg, positions),
            device: vb.device().clone(),
            dtype: vb.dtype(),
            weights,
            attention: options.attention,
            attention_dtype: options.attention_dtype,
            cfg,
        })
    }

    pub fn config(&self) -> &DeepSeekConfig {
        &self.cfg
    }

    /// The dtype activations are computed in.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Bytes of weights one sequence's decode step reads, in the form they
    /// are held in memory: every layer's attention, its dense MLP or its
    /// router, shared experts and `num_experts_per_tok` routed experts, the
    /// embedding row and the lm_head. The roofline of decoding is memory
    /// bandwidth divided by this (plus the sequence's latent cache rows).
    pub fn decode_weight_bytes(&self) -> usize {
        let layers: usize = self
            .layers
            .iter()
            .map(|l| {
                l.self_attn.decode_weight_bytes()
                    + match &l.mlp {
                        FeedForward::Dense(mlp) => mlp.weight_bytes(),
                        FeedForward::Moe(moe) => moe.decode_weight_bytes(),
                    }
            })
            .sum();
        let embed_row = self.cfg.hidden_size * self.weights.dtype.size_in_bytes();
        layers + embed_row + self.lm_head.weight_bytes()
    }

    /// How the weight matrices are held.
    pub fn weights(&self) -> WeightFormat {
        self.weights
    }

    /// The dtype dense weight matrices are kept in.
    pub fn weights_dtype(&self) -> DType {
        self.weights.dtype
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Longest context the rope tables cover.
    pub fn max_positions(&self) -> usize {
        self.rope.max_positions()
    }

    /// Chooses how attention is computed: per sequence by cost (the default),
    /// or always absorbed or always expanded (all give the same numbers).
    pub fn set_attention_mode(&mut self, mode: AttentionMode) {
        self.attention = mode;
    }

    /// Chooses what the expanded form's products multiply: f32 (the
    /// default) or bf16 on AMX tiles ([`AttentionDType`]).
    pub fn set_attention_dtype(&mut self, dtype: AttentionDType) {
        self.attention_dtype = dtype;
    }

    fn layout<'a>(&self, batch: &'a Batch, cache: &LatentCache) -> Result<BatchLayout<'a>> {
        let bs = cache.block_size();
        let mut layout = BatchLayout {
            seqs: Vec::with_capacity(batch.seqs.len()),
            positions: Vec::with_capacity(batch.num_tokens()),
            slots: Vec::with_capacity(batch.num_tokens()),
            block_size: bs,
            device: self.device.clone(),
        };
        for (i, seq) in batch.seqs.iter().enumerate() {
            if seq.tokens.is_empty() {
                return Err(ModelError::Batch(format!("sequence {i} has no new tokens")));
            }
            let end = seq.num_cached + seq.tokens.len();
            if end > self.rope.max_positions() {
                return Err(ModelError::Batch(format!(
                    "sequence {i} reaches position {end}, beyond the {} positions prepared",
                    self.rope.max_positions()
                )));
            }
            if seq.block_table.len() * bs < end {
                return Err(ModelError::Batch(format!(
                    "sequence {i} needs {} blocks for {end} tokens but has {}",
                    end.div_ceil(bs),
                    seq.block_table.len()
                )));
            }
            if let Some(b) = seq
                .block_table
                .iter()
                .find(|&&b| b as usize >= cache.num_blocks())
            {
                return Err(ModelError::Batch(format!(
                    "sequence {i} uses block {b} of a cache of {} blocks",
                    cache.num_blocks()
                )));
            }
            if let Some(t) = seq
                .tokens
                .iter()
                .find(|&&t| t as usize >= self.cfg.vocab_size)
            {
                return Err(ModelError::Batch(format!(
                    "token id {t} is outside the vocabulary of {} tokens",
                    self.cfg.vocab_size
                )));
            }
            layout.seqs.push(SeqSpan {
                start: layout.positions.len(),
                num_new: seq.tokens.len(),
                num_cached: seq.num_cached,
                block_table: &seq.block_table,
            });
            for p in seq.num_cached..end {
                layout.positions.push(p);
                layout
                    .slots
                    .push(seq.block_table[p / bs] as usize * bs + p % bs);
            }
        }
        Ok(layout)
    }

    /// Runs the new tokens of every sequence in one pass, writing their latents
    /// into `cache`, and returns the requested logits as `[rows, vocab]` f32.
    pub fn forward(&self, batch: &Batch, cache: &mut LatentCache) -> Result<Tensor> {
        if batch.seqs.is_empty() {
            return Err(ModelError::Batch("the batch is empty".into()));
        }
        let layout = self.layout(batch, cache)?;
        let ids: Vec<u32> = batch
            .seqs
            .iter()
            .flat_map(|s| s.tokens.iter().copied())
            .collect();
        let ids = Tensor::new(ids.as_slice(), &self.device)?;
        let mut x = self.embed_tokens.forward(&ids)?.to_dtype(self.dtype)?;
        for (l, layer) in self.layers.iter().enumerate() {
            let h = layer.input_layernorm.forward(&x)?;
            let h = layer.self_attn.forward(
                &h,
                &layout,
                &self.rope,
                cache.layer_mut(l),
                (self.attention, self.attention_dtype),
            )?;
            x = (x + h)?;
            let h = layer.post_attention_layernorm.forward(&x)?;
            x = (&x + layer.mlp.forward(&h)?)?;
        }
        let rows: Vec<u32> = batch
            .seqs
            .iter()
            .zip(&layout.seqs)
            .flat_map(|(seq, span)| {
                let (start, n) = (span.start as u32, span.num_new as u32);
                match seq.logits {
                    LogitsRows::None => 0..0,
                    LogitsRows::Last => start + n - 1..start + n,
                    LogitsRows::All => start..start + n,
                }
            })
            .collect();
        if rows.is_empty() {
            return Ok(Tensor::zeros(
                (0, self.cfg.vocab_size),
                DType::F32,
                &self.device,
            )?);
        }
        let n = rows.len();
        let rows = Tensor::from_vec(rows, n, &self.device)?;
        let x = self.norm.forward(&x.index_select(&rows, 0)?)?;
        Ok(self.lm_head.forward(&x)?.to_dtype(DType::F32)?)
    }
}
