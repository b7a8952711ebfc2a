//! The paged latent KV cache: per layer, a pool of fixed-size blocks of
//! `[c_kv | k_pe]` rows (`kv_lora_rank + qk_rope_head_dim` f32 numbers per token),
//! the only per-token state MLA needs. Which blocks a sequence owns is the
//! engine's business; a sequence hands its block table to the forward pass.

use crate::config::DeepSeekConfig;
use crate::error::{ModelError, Result};

#[derive(Debug, Clone)]
pub struct LatentCache {
    block_size: usize,
    num_blocks: usize,
    width: usize,
    /// One `[num_blocks * block_size, width]` pool per layer.
    layers: Vec<Vec<f32>>,
}

impl LatentCache {
    pub fn new(cfg: &DeepSeekConfig, num_blocks: usize, block_size: usize) -> Result<Self> {
        if block_size == 0 || num_blocks == 0 {
            return Err(ModelError::Batch(format!(
                "a cache needs at least one block of at least one token (got {num_blocks} blocks of {block_size})"
            )));
        }
        let width = cfg.latent_width();
        let per_layer = num_blocks * block_size * width;
        Ok(LatentCache {
            block_size,
            num_blocks,
            width,
            layers: (0..cfg.num_hidden_layers)
                .map(|_| vec![0f32; per_layer])
                .collect(),
        })
    }

    /// As many blocks as fit in `bytes`.
    pub fn with_memory_budget(
        cfg: &DeepSeekConfig,
        bytes: usize,
        block_size: usize,
    ) -> Result<Self> {
        let per_block = Self::bytes_per_block(cfg, block_size);
        let blocks = bytes / per_block.max(1);
        if blocks == 0 {
            return Err(ModelError::Batch(format!(
                "a KV cache budget of {bytes} bytes holds no block (one block of {block_size} tokens takes {per_block} bytes)"
            )));
        }
        Self::new(cfg, blocks, block_size)
    }

    /// Bytes one block takes across all layers.
    pub fn bytes_per_block(cfg: &DeepSeekConfig, block_size: usize) -> usize {
        block_size * cfg.latent_width() * cfg.num_hidden_layers * std::mem::size_of::<f32>()
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
        for layer in &mut self.layers {
            layer.copy_within(src * len..(src + 1) * len, dst * len);
        }
        Ok(())
    }

    pub(crate) fn layer_mut(&mut self, layer: usize) -> &mut [f32] {
        &mut self.layers[layer]
    }
}
