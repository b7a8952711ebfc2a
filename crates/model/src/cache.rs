//! The paged latent KV cache: per layer, a pool of fixed-size blocks of
//! `[c_kv | k_pe]` rows (`kv_lora_rank + qk_rope_head_dim` numbers per token),
//! the only per-token state MLA needs. Which blocks a sequence owns is the
//! engine's business; a sequence hands its block table to the forward pass.
//!
//! The rows are stored as f32, bf16 or fp8 e4m3 ([`CacheDType`]); the
//! attention kernels widen them to f32 as they load them, so only the
//! storage rounds.

use float8::F8E4M3;
use half::bf16;

use crate::config::DeepSeekConfig;
use crate::error::{ModelError, Result};

/// How the cache stores its numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CacheDType {
    /// As computed: the reference's numbers.
    #[default]
    F32,
    /// Half the bytes per token (twice the tokens in a memory budget, half
    /// the bytes a decode step reads at long context), each number rounded
    /// to bf16's 8 significant bits.
    Bf16,
    /// A quarter of the bytes per token, each number rounded to fp8 e4m3's
    /// 4 significant bits (±448 at most; larger ones saturate).
    Fp8,
}

impl CacheDType {
    pub fn bytes(self) -> usize {
        match self {
            CacheDType::F32 => 4,
            CacheDType::Bf16 => 2,
            CacheDType::Fp8 => 1,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            CacheDType::F32 => "f32",
            CacheDType::Bf16 => "bf16",
            CacheDType::Fp8 => "fp8",
        }
    }
}

impl std::str::FromStr for CacheDType {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "f32" | "float32" => Ok(CacheDType::F32),
            "bf16" | "bfloat16" => Ok(CacheDType::Bf16),
            "fp8" | "fp8_e4m3" => Ok(CacheDType::Fp8),
            other => Err(format!(
                "unknown KV cache dtype `{other}` (expected f32, bf16 or fp8)"
            )),
        }
    }
}

/// One `[num_blocks * block_size, width]` pool per layer, in one storage.
#[derive(Debug, Clone)]
enum Pools {
    F32(Vec<Vec<f32>>),
    Bf16(Vec<Vec<bf16>>),
    Fp8(Vec<Vec<F8E4M3>>),
}

/// One layer's rows, as the forward pass writes and reads them.
pub enum LayerRows<'a> {
    F32(&'a mut [f32]),
    Bf16(&'a mut [bf16]),
    Fp8(&'a mut [F8E4M3]),
}

#[derive(Debug, Clone)]
pub struct LatentCache {
    block_size: usize,
    num_blocks: usize,
    width: usize,
    pools: Pools,
}

impl LatentCache {
    /// An f32 cache of `num_blocks` blocks of `block_size` tokens.
    pub fn new(cfg: &DeepSeekConfig, num_blocks: usize, block_size: usize) -> Result<Self> {
        Self::with_dtype(cfg, num_blocks, block_size, CacheDType::F32)
    }

    pub fn with_dtype(
        cfg: &DeepSeekConfig,
        num_blocks: usize,
        block_size: usize,
        dtype: CacheDType,
    ) -> Result<Self> {
        if block_size == 0 || num_blocks == 0 {
            return Err(ModelError::Batch(format!(
                "a cache needs at least one block of at least one token (got {num_blocks} blocks of {block_size})"
            )));
        }
        let width = cfg.latent_width();
        let per_layer = num_blocks * block_size * width;
        let layers = cfg.num_hidden_layers;
        let pools = match dtype {
            CacheDType::F32 => Pools::F32((0..layers).map(|_| vec![0.0; per_layer]).collect()),
            CacheDType::Bf16 => {
                Pools::Bf16((0..layers).map(|_| vec![bf16::ZERO; per_layer]).collect())
            }
            CacheDType::Fp8 => {
                Pools::Fp8((0..layers).map(|_| vec![F8E4M3::ZERO; per_layer]).collect())
            }
        };
        Ok(LatentCache {
            block_size,
            num_blocks,
            width,
            pools,
        })
    }

    /// As many blocks as fit in `bytes`.
    pub fn with_memory_budget(
        cfg: &DeepSeekConfig,
        bytes: usize,
        block_size: usize,
        dtype: CacheDType,
    ) -> Result<Self> {
        let per_block = Self::bytes_per_block(cfg, block_size, dtype);
        let blocks = bytes / per_block.max(1);
        if blocks == 0 {
            return Err(ModelError::Batch(format!(
                "a KV cache budget of {bytes} bytes holds no block (one block of {block_size} tokens takes {per_block} bytes in {})",
                dtype.name()
            )));
        }
        Self::with_dtype(cfg, blocks, block_size, dtype)
    }

    /// Bytes one block takes across all layers.
    pub fn bytes_per_block(cfg: &DeepSeekConfig, block_size: usize, dtype: CacheDType) -> usize {
        block_size * cfg.latent_width() * cfg.num_hidden_layers * dtype.bytes()
    }

    pub fn dtype(&self) -> CacheDType {
        match self.pools {
            Pools::F32(_) => CacheDType::F32,
            Pools::Bf16(_) => CacheDType::Bf16,
            Pools::Fp8(_) => CacheDType::Fp8,
        }
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    pub fn num_blocks(&self) -> usize {
        self.num_blocks
    }

    pub fn num_slots(&self) -> usize {
        self.num_blocks * self.block_size
    }

    /// Copies block `src` into block `dst` in every layer (copy-on-write of a
    /// shared, partly filled block when sequences diverge).
    pub fn copy_block(&mut self, src: u32, dst: u32) -> Result<()> {
        let (src, dst) = (src as usize, dst as usize);
        if src >= self.num_blocks || dst >= self.num_blocks {
            return Err(ModelError::Batch(format!(
                "copy of block {src} to {dst} outside a cache of {} blocks",
                self.num_blocks
            )));
        }
        let len = self.block_size * self.width;
        fn copy<T: Copy>(layers: &mut [Vec<T>], (src, dst): (usize, usize), len: usize) {
            for layer in layers {
                layer.copy_within(src * len..(src + 1) * len, dst * len);
            }
        }
        match &mut self.pools {
            Pools::F32(layers) => copy(layers, (src, dst), len),
            Pools::Bf16(layers) => copy(layers, (src, dst), len),
            Pools::Fp8(layers) => copy(layers, (src, dst), len),
        }
        Ok(())
    }

    pub(crate) fn layer_mut(&mut self, layer: usize) -> LayerRows<'_> {
        match &mut self.pools {
            Pools::F32(layers) => LayerRows::F32(&mut layers[layer]),
            Pools::Bf16(layers) => LayerRows::Bf16(&mut layers[layer]),
            Pools::Fp8(layers) => LayerRows::Fp8(&mut layers[layer]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> DeepSeekConfig {
        DeepSeekConfig::from_json(
            &serde_json::json!({
                "model_type": "deepseek_v2", "vocab_size": 32, "hidden_size": 64,
                "intermediate_size": 64, "num_hidden_layers": 3, "num_attention_heads": 4,
                "kv_lora_rank": 32, "qk_nope_head_dim": 16, "qk_rope_head_dim": 8,
                "v_head_dim": 16, "q_lora_rank": null, "rope_theta": 10000.0,
                "rms_norm_eps": 1e-6, "max_position_embeddings": 512
            })
            .to_string(),
        )
        .unwrap()
    }

    /// A bf16 cache takes two bytes a number: twice the blocks in a budget.
    #[test]
    fn a_bf16_cache_holds_twice_the_blocks() {
        let cfg = config();
        // 3 layers of 40-wide rows, blocks of 16.
        assert_eq!(
            LatentCache::bytes_per_block(&cfg, 16, CacheDType::F32),
            16 * 40 * 3 * 4
        );
        assert_eq!(
            LatentCache::bytes_per_block(&cfg, 16, CacheDType::Bf16),
            16 * 40 * 3 * 2
        );
        assert_eq!(
            LatentCache::bytes_per_block(&cfg, 16, CacheDType::Fp8),
            16 * 40 * 3
        );
        let budget = 10 * LatentCache::bytes_per_block(&cfg, 16, CacheDType::F32);
        for (dtype, blocks) in [
            (CacheDType::F32, 10),
            (CacheDType::Bf16, 20),
            (CacheDType::Fp8, 40),
        ] {
            let cache = LatentCache::with_memory_budget(&cfg, budget, 16, dtype).unwrap();
            assert_eq!((cache.num_blocks(), cache.dtype()), (blocks, dtype));
        }
        let err = LatentCache::with_memory_budget(&cfg, 100, 16, CacheDType::Bf16).unwrap_err();
        assert!(err.to_string().contains("in bf16"), "{err}");
    }

    /// Copy-on-write copies a block in every layer, in either storage.
    #[test]
    fn blocks_copy_in_every_layer() {
        let cfg = config();
        for dtype in [CacheDType::F32, CacheDType::Bf16, CacheDType::Fp8] {
            let mut cache = LatentCache::with_dtype(&cfg, 4, 2, dtype).unwrap();
            let len = 2 * 40;
            for layer in 0..3 {
                match cache.layer_mut(layer) {
                    LayerRows::F32(rows) => rows[len..2 * len].fill(layer as f32 + 1.0),
                    LayerRows::Bf16(rows) => {
                        rows[len..2 * len].fill(bf16::from_f32(layer as f32 + 1.0))
                    }
                    LayerRows::Fp8(rows) => {
                        rows[len..2 * len].fill(F8E4M3::from_f32(layer as f32 + 1.0))
                    }
                }
            }
            cache.copy_block(1, 3).unwrap();
            for layer in 0..3 {
                let copied: Vec<f32> = match cache.layer_mut(layer) {
                    LayerRows::F32(rows) => rows[3 * len..].to_vec(),
                    LayerRows::Bf16(rows) => rows[3 * len..].iter().map(|v| v.to_f32()).collect(),
                    LayerRows::Fp8(rows) => rows[3 * len..].iter().map(|v| v.to_f32()).collect(),
                };
                assert!(copied.iter().all(|&v| v == layer as f32 + 1.0), "{dtype:?}");
            }
            assert!(cache.copy_block(1, 4).is_err());
        }
        assert_eq!("bf16".parse::<CacheDType>(), Ok(CacheDType::Bf16));
        assert!("fp9"
            .parse::<CacheDType>()
            .unwrap_err()
            .contains("f32, bf16 or fp8"));
    }
}
