//! Who owns which block of the paged latent cache.
//!
//! The cache is a pool of fixed-size blocks; a sequence's block table lists
//! the blocks holding its positions in order. Blocks are reference-counted:
//! the `n` choices of one request share the blocks of their common prompt,
//! and a block returns to the pool when its last owner lets it go.

use std::fmt;

/// A block table could not be grown: the pool has too few free blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutOfBlocks {
    pub needed: usize,
    pub free: usize,
}

impl fmt::Display for OutOfBlocks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "needed {} KV blocks, {} free", self.needed, self.free)
    }
}

/// Allocation and reference counts of the cache's blocks.
#[derive(Debug, Clone)]
pub struct BlockManager {
    block_size: usize,
    /// Owners per block; 0 = free.
    ref_counts: Vec<u32>,
    /// Free block ids; allocation pops from the end.
    free: Vec<u32>,
}

impl BlockManager {
    pub fn new(num_blocks: usize, block_size: usize) -> Self {
        assert!(block_size > 0, "block size must be positive");
        BlockManager {
            block_size,
            ref_counts: vec![0; num_blocks],
            // Reversed so that blocks are handed out from 0 upwards.
            free: (0..num_blocks as u32).rev().collect(),
        }
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    pub fn num_blocks(&self) -> usize {
        self.ref_counts.len()
    }

    pub fn num_free(&self) -> usize {
        self.free.len()
    }

    pub fn num_used(&self) -> usize {
        self.num_blocks() - self.num_free()
    }

    /// Owners of `block` (0 when free).
    pub fn ref_count(&self, block: u32) -> u32 {
        self.ref_counts[block as usize]
    }

    /// Blocks needed for a table to cover `tokens` positions.
    pub fn blocks_for(&self, tokens: usize) -> usize {
        tokens.div_ceil(self.block_size)
    }

    /// Blocks `table` lacks to cover `tokens` positions.
    pub fn missing(&self, table: &[u32], tokens: usize) -> usize {
        self.blocks_for(tokens).saturating_sub(table.len())
    }

    /// Grows `table` to cover `tokens` positions; on failure nothing changes.
    pub fn grow(&mut self, table: &mut Vec<u32>, tokens: usize) -> Result<(), OutOfBlocks> {
        let needed = self.missing(table, tokens);
        if needed > self.free.len() {
            return Err(OutOfBlocks {
                needed,
                free: self.free.len(),
            });
        }
        for _ in 0..needed {
            let block = self.free.pop().expect("checked above");
            debug_assert_eq!(self.ref_counts[block as usize], 0);
            self.ref_counts[block as usize] = 1;
            table.push(block);
        }
        Ok(())
    }

    /// A second owner for every block of `table` (a forked sequence shares them).
    pub fn share(&mut self, table: &[u32]) -> Vec<u32> {
        for &block in table {
            debug_assert!(self.ref_counts[block as usize] > 0, "sharing a free block");
            self.ref_counts[block as usize] += 1;
        }
        table.to_vec()
    }

    /// One free block, owned by the caller.
    pub fn allocate_one(&mut self) -> Result<u32, OutOfBlocks> {
        let mut table = Vec::with_capacity(1);
        self.grow(&mut table, self.block_size)?;
        Ok(table[0])
    }

    /// Lets go of every block of `table` (emptying it); blocks with no owner
    /// left return to the pool.
    pub fn release(&mut self, table: &mut Vec<u32>) {
        for block in table.drain(..) {
            let count = &mut self.ref_counts[block as usize];
            debug_assert!(*count > 0, "releasing a free block");
            *count = count.saturating_sub(1);
            if *count == 0 {
                self.free.push(block);
            }
        }
    }

    /// Lets go of one block.
    pub fn release_one(&mut self, block: u32) {
        self.release(&mut vec![block]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grow_covers_positions_and_fails_whole() {
        let mut bm = BlockManager::new(4, 16);
        let mut t = Vec::new();
        bm.grow(&mut t, 17).unwrap();
        assert_eq!(t.len(), 2);
        bm.grow(&mut t, 32).unwrap();
        assert_eq!(t.len(), 2);
        let err = bm.grow(&mut t, 100).unwrap_err();
        assert_eq!(err, OutOfBlocks { needed: 5, free: 2 });
        assert_eq!(t.len(), 2);
        assert_eq!(bm.num_free(), 2);
    }

    #[test]
    fn shared_blocks_return_when_last_owner_releases() {
        let mut bm = BlockManager::new(4, 2);
        let mut a = Vec::new();
        bm.grow(&mut a, 4).unwrap();
        let mut b = bm.share(&a);
        assert_eq!(bm.ref_count(a[0]), 2);
        bm.release(&mut a);
        assert_eq!(bm.num_free(), 2);
        bm.release(&mut b);
        assert_eq!(bm.num_free(), 4);
    }
}
