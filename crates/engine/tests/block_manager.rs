//! Property test of the block manager: over any sequence of allocations,
//! growths, shares (forks), releases, prefix registrations and prefix
//! reuses, no block is leaked, none is owned by more tables than its count
//! says, and the free count is exactly the unowned blocks.

use ferroseek_engine::block_manager::{chain_hash, BlockManager};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    /// Grow table `t` (or a new one) to cover `tokens` positions.
    Grow { t: usize, tokens: usize },
    /// Fork table `t`: a new table sharing its blocks.
    Share { t: usize },
    /// Release table `t`.
    Release { t: usize },
    /// Register table `t`'s first block as holding `[key; 4]`.
    Register { t: usize, key: u32 },
    /// A new table from the cached prefix `[key; 4]`.
    Reuse { key: u32 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..8usize, 1..80usize).prop_map(|(t, tokens)| Op::Grow { t, tokens }),
        1 => (0..8usize).prop_map(|t| Op::Share { t }),
        2 => (0..8usize).prop_map(|t| Op::Release { t }),
        1 => (0..8usize, 0..3u32).prop_map(|(t, key)| Op::Register { t, key }),
        1 => (0..3u32).prop_map(|key| Op::Reuse { key }),
    ]
}

fn check(bm: &BlockManager, tables: &[Vec<u32>]) {
    let mut owners = vec![0u32; bm.num_blocks()];
    for t in tables {
        for &b in t {
            owners[b as usize] += 1;
        }
    }
    let mut free = 0;
    for (b, &o) in owners.iter().enumerate() {
        assert_eq!(bm.ref_count(b as u32), o, "block {b}: count vs owners");
        if o == 0 {
            free += 1;
        }
    }
    assert_eq!(bm.num_free(), free, "free list vs unowned blocks");
    assert_eq!(bm.num_used() + bm.num_free(), bm.num_blocks());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn no_block_is_leaked_or_double_owned(ops in proptest::collection::vec(op(), 1..120)) {
        let mut bm = BlockManager::new(24, 4);
        let mut tables: Vec<Vec<u32>> = Vec::new();
        for op in ops {
            match op {
                Op::Grow { t, tokens } => {
                    if t >= tables.len() {
                        tables.push(Vec::new());
                    }
                    let i = t.min(tables.len() - 1);
                    // Shared blocks are never written: only grow a table whose
                    // blocks it owns alone, as the scheduler does.
                    let before = tables[i].clone();
                    let free = bm.num_free();
                    match bm.grow(&mut tables[i], tokens) {
                        Ok(()) => prop_assert!(tables[i].len() * 4 >= tokens),
                        Err(e) => {
                            prop_assert_eq!(&tables[i], &before);
                            prop_assert_eq!(e.free, free);
                        }
                    }
                }
                Op::Share { t } if t < tables.len() => {
                    let copy = bm.share(&tables[t]);
                    tables.push(copy);
                }
                Op::Register { t, key } if t < tables.len() && !tables[t].is_empty() => {
                    let tokens = [key; 4];
                    bm.register(tables[t][0], chain_hash(0, &tokens), &tokens);
                }
                Op::Reuse { key } => {
                    let (table, _) = bm.take_prefix(&[key; 4], 1);
                    if !table.is_empty() {
                        tables.push(table);
                    }
                }
                Op::Release { t } if t < tables.len() => {
                    let mut table = tables.swap_remove(t);
                    bm.release(&mut table);
                    prop_assert!(table.is_empty());
                }
                _ => {}
            }
            check(&bm, &tables);
        }
        for mut t in tables.drain(..) {
            bm.release(&mut t);
        }
        prop_assert_eq!(bm.num_free(), 24);
    }
}
