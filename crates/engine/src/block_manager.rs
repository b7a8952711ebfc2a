//! Who owns which block of the paged latent cache, and which full blocks
//! can be reused by a later prompt (prefix caching).
//!
//! The cache is a pool of fixed-size blocks; a sequence's block table lists
//! the blocks holding its positions in order. Blocks are reference-counted:
//! the `n` choices of one request share the blocks of their common prompt,
//! and a block returns to the pool when its last owner lets it go.
//!
//! A full block's latent rows depend only on the tokens up to its end, so a
//! full block is registered under a hash chained over the whole prefix
//! (the previous block's hash and this block's tokens; the tokens are kept
//! and compared too). A new sequence whose prompt starts with registered
//! blocks takes them instead of recomputing them. A free block keeps its
//! contents and registration until it is handed out again; the free list
//! hands out the least recently freed block first, so a popular prefix
//! stays cached as long as possible.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::hash::{Hash, Hasher};

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

/// The hash of a full block given the hash of the blocks before it (0 for
/// the first block).
pub fn chain_hash(parent: u64, tokens: &[u32]) -> u64 {
    let mut h = DefaultHasher::new();
    parent.hash(&mut h);
    tokens.hash(&mut h);
    h.finish()
}

#[derive(Debug, Clone)]
struct Cached {
    block: u32,
    tokens: Vec<u32>,
}

/// Allocation, reference counts and the prefix cache of the cache's blocks.
#[derive(Debug, Clone)]
pub struct BlockManager {
    block_size: usize,
    /// Owners per block; 0 = free.
    ref_counts: Vec<u32>,
    /// Free blocks, least recently freed first. May hold stale entries of
    /// blocks taken back by a prefix hit; those are skipped.
    free: VecDeque<u32>,
    num_free: usize,
    /// Registered full blocks by chain hash.
    cached: HashMap<u64, Cached>,
    /// The hash each block is registered under.
    block_hash: Vec<Option<u64>>,
}

impl BlockManager {
    pub fn new(num_blocks: usize, block_size: usize) -> Self {
        assert!(block_size > 0, "block size must be positive");
        BlockManager {
            block_size,
            ref_counts: vec![0; num_blocks],
            free: (0..num_blocks as u32).collect(),
            num_free: num_blocks,
            cached: HashMap::new(),
            block_hash: vec![None; num_blocks],
        }
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    pub fn num_blocks(&self) -> usize {
        self.ref_counts.len()
    }

    pub fn num_free(&self) -> usize {
        self.num_free
    }

    pub fn num_used(&self) -> usize {
        self.num_blocks() - self.num_free
    }

    /// Registered blocks (in use or free but still holding their prefix).
    pub fn num_cached(&self) -> usize {
        self.cached.len()
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

    /// Takes the least recently freed block, dropping its registration.
    fn pop_free(&mut self) -> Option<u32> {
        while let Some(block) = self.free.pop_front() {
            if self.ref_counts[block as usize] != 0 {
                continue; // stale: taken back by a prefix hit
            }
            if let Some(h) = self.block_hash[block as usize].take() {
                if self.cached.get(&h).is_some_and(|c| c.block == block) {
                    self.cached.remove(&h);
                }
            }
            self.num_free -= 1;
            self.ref_counts[block as usize] = 1;
            return Some(block);
        }
        None
    }

    /// Grows `table` to cover `tokens` positions; on failure nothing changes.
    pub fn grow(&mut self, table: &mut Vec<u32>, tokens: usize) -> Result<(), OutOfBlocks> {
        let needed = self.missing(table, tokens);
        if needed > self.num_free {
            return Err(OutOfBlocks {
                needed,
                free: self.num_free,
            });
        }
        for _ in 0..needed {
            let block = self.pop_free().expect("counted free blocks exist");
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

    /// Lets go of every block of `table` (emptying it); blocks with no owner
    /// left return to the pool (keeping their registration until reused).
    pub fn release(&mut self, table: &mut Vec<u32>) {
        // Last blocks first, so that a prefix's first blocks, the most shared,
        // are the last evicted.
        for block in table.drain(..).rev() {
            let count = &mut self.ref_counts[block as usize];
            debug_assert!(*count > 0, "releasing a free block");
            *count = count.saturating_sub(1);
            if *count == 0 {
                self.free.push_back(block);
                self.num_free += 1;
            }
        }
    }

    /// Registers full `block`, holding `tokens`, under `hash` (the chain hash
    /// of its prefix). A hash already registered keeps its block.
    pub fn register(&mut self, block: u32, hash: u64, tokens: &[u32]) {
        debug_assert_eq!(tokens.len(), self.block_size);
        if self.cached.contains_key(&hash) || self.block_hash[block as usize].is_some() {
            return;
        }
        self.cached.insert(
            hash,
            Cached {
                block,
                tokens: tokens.to_vec(),
            },
        );
        self.block_hash[block as usize] = Some(hash);
    }

    /// The registered blocks that hold the start of `tokens`, taken (one more
    /// owner each), with their chain hashes. At most `max_blocks` blocks.
    pub fn take_prefix(&mut self, tokens: &[u32], max_blocks: usize) -> (Vec<u32>, Vec<u64>) {
        let mut table = Vec::new();
        let mut hashes = Vec::new();
        let mut parent = 0;
        for chunk in tokens.chunks_exact(self.block_size).take(max_blocks) {
            let h = chain_hash(parent, chunk);
            let Some(c) = self.cached.get(&h).filter(|c| c.tokens == chunk) else {
                break;
            };
            let block = c.block;
            let count = &mut self.ref_counts[block as usize];
            if *count == 0 {
                self.num_free -= 1; // its free-list entry goes stale
            }
            *count += 1;
            table.push(block);
            hashes.push(h);
            parent = h;
        }
        (table, hashes)
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

    #[test]
    fn freed_registered_blocks_are_found_until_reused() {
        let mut bm = BlockManager::new(3, 2);
        let tokens = [1, 2, 3, 4, 5];
        let mut t = Vec::new();
        bm.grow(&mut t, 5).unwrap();
        let h0 = chain_hash(0, &tokens[..2]);
        let h1 = chain_hash(h0, &tokens[2..4]);
        bm.register(t[0], h0, &tokens[..2]);
        bm.register(t[1], h1, &tokens[2..4]);
        let first = t.clone();
        bm.release(&mut t);
        assert_eq!(bm.num_free(), 3);
        // Same prefix: both full blocks come back, owned again.
        let (table, hashes) = bm.take_prefix(&tokens, 2);
        assert_eq!(table, first[..2]);
        assert_eq!(hashes, vec![h0, h1]);
        assert_eq!(bm.num_free(), 1);
        // Another prefix shares only what matches.
        let (other, _) = bm.take_prefix(&[1, 2, 9, 9], 2);
        assert_eq!(other, first[..1]);
        assert_eq!(bm.ref_count(first[0]), 2);
        let mut table = table;
        let mut other = other;
        bm.release(&mut table);
        bm.release(&mut other);
        // Reusing every block evicts the registrations.
        let mut all = Vec::new();
        bm.grow(&mut all, 6).unwrap();
        assert_eq!(bm.num_cached(), 0);
        assert!(bm.take_prefix(&tokens, 2).0.is_empty());
    }
}
