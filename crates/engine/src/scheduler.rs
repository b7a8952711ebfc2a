//! Iteration-level continuous batching: which tokens of which sequences go
//! into the next forward pass.
//!
//! Every sequence is a list of tokens (prompt, then generated) of which the
//! first `num_computed` are in the KV cache. A step schedules, for each
//! sequence, the next tokens not yet in the cache: a whole prompt, a chunk
//! of it, one decode token, or — after a preemption — the prompt and the
//! generated tokens again (recompute). Running sequences go first, oldest
//! first; then waiting ones are admitted in arrival order while the token
//! budget, `max_num_seqs` and the free blocks allow. When a running
//! sequence needs a block and none is free, the newest running sequence is
//! preempted: its blocks go back to the pool and it returns to the front of
//! the queue, to be recomputed when there is room.
//!
//! A request with `n > 1` choices is one sequence until its prompt is in the
//! cache; then [`Scheduler::fork`] makes the other choices, which share the
//! prompt's full blocks and recompute only the tokens of its last, partly
//! filled block (so no block is ever written by two sequences).
//!
//! Callers name sequences by [`SeqId`]; the scheduler keeps them in arrival
//! order and owns their place in the cache. It is generic over what the
//! engine keeps per sequence (`T`).

use std::collections::VecDeque;

use crate::block_manager::{chain_hash, BlockManager};

/// Names one sequence: its request's number and its choice. Ids order
/// sequences by arrival (request number, then choice).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SeqId {
    pub request: u64,
    pub choice: usize,
}

impl SeqId {
    pub fn new(request: u64, choice: usize) -> Self {
        SeqId { request, choice }
    }
}

/// One sequence: its tokens and where they stand in the cache. The
/// scheduler owns the cache bookkeeping; the engine's own state is `data`.
#[derive(Debug, Clone)]
pub struct Sequence<T> {
    id: SeqId,
    /// Prompt then generated tokens.
    tokens: Vec<u32>,
    prompt_len: usize,
    /// Tokens whose latent rows are in the cache (`tokens[..num_computed]`).
    num_computed: usize,
    block_table: Vec<u32>,
    /// Choices still to fork from this sequence once its prompt is computed.
    pending_forks: usize,
    /// Chain hashes of the full blocks of `block_table` registered so far.
    block_hashes: Vec<u64>,
    /// Tokens found in the prefix cache at its last admission.
    prefix_hit: usize,
    /// The engine's per-sequence state.
    pub data: T,
}

impl<T> Sequence<T> {
    /// Choice 0 of request `request`, to be forked into `n` choices once
    /// its prompt is in the cache.
    pub fn new(request: u64, prompt: Vec<u32>, n: usize, data: T) -> Self {
        Sequence {
            id: SeqId::new(request, 0),
            prompt_len: prompt.len(),
            tokens: prompt,
            num_computed: 0,
            block_table: Vec::new(),
            pending_forks: n.saturating_sub(1),
            block_hashes: Vec::new(),
            prefix_hit: 0,
            data,
        }
    }

    pub fn id(&self) -> SeqId {
        self.id
    }

    /// Prompt then generated tokens.
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    pub fn prompt_len(&self) -> usize {
        self.prompt_len
    }

    /// Tokens whose latent rows are in the cache (`tokens()[..num_computed()]`).
    pub fn num_computed(&self) -> usize {
        self.num_computed
    }

    /// Whether every token is in the cache: the next one can be sampled.
    pub fn is_caught_up(&self) -> bool {
        self.num_computed == self.tokens.len()
    }

    /// The cache blocks holding its tokens, in order.
    pub fn block_table(&self) -> &[u32] {
        &self.block_table
    }

    /// Tokens found in the prefix cache at its last admission.
    pub fn prefix_hit(&self) -> usize {
        self.prefix_hit
    }

    /// Tokens generated so far.
    pub fn num_generated(&self) -> usize {
        self.tokens.len() - self.prompt_len
    }

    /// Appends a generated token; the next step computes it.
    pub fn push_token(&mut self, token: u32) {
        self.tokens.push(token);
    }

    /// Sequences this one will count as once forked.
    fn width(&self) -> usize {
        1 + self.pending_forks
    }
}

/// The limits of one step.
#[derive(Debug, Clone, Copy)]
pub struct SchedulerLimits {
    pub max_num_seqs: usize,
    pub max_num_batched_tokens: usize,
}

/// The work of one step: which running sequences compute how many tokens,
/// in arrival order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Step {
    /// `(sequence, tokens to compute)`.
    pub work: Vec<(SeqId, usize)>,
    /// Sequences preempted during this step's scheduling.
    pub preempted: Vec<SeqId>,
}

impl Step {
    pub fn num_tokens(&self) -> usize {
        self.work.iter().map(|w| w.1).sum()
    }
}

#[derive(Debug)]
pub struct Scheduler<T> {
    limits: SchedulerLimits,
    /// Not in the cache; arrival order (preempted sequences come back in order).
    waiting: VecDeque<Sequence<T>>,
    /// Being computed; arrival order, so an id is found by binary search.
    running: Vec<Sequence<T>>,
    blocks: BlockManager,
    preemptions: u64,
}

impl<T> Scheduler<T> {
    pub fn new(limits: SchedulerLimits, blocks: BlockManager) -> Self {
        assert!(limits.max_num_seqs > 0 && limits.max_num_batched_tokens > 0);
        Scheduler {
            limits,
            waiting: VecDeque::new(),
            running: Vec::new(),
            blocks,
            preemptions: 0,
        }
    }

    pub fn limits(&self) -> SchedulerLimits {
        self.limits
    }

    pub fn is_idle(&self) -> bool {
        self.waiting.is_empty() && self.running.is_empty()
    }

    pub fn preemptions(&self) -> u64 {
        self.preemptions
    }

    /// Sequences waiting to be (re)admitted.
    pub fn num_waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Sequences in the running batch.
    pub fn num_running(&self) -> usize {
        self.running.len()
    }

    /// The block pool, to read its counters.
    pub fn blocks(&self) -> &BlockManager {
        &self.blocks
    }

    /// The running sequence `id`, if it runs.
    pub fn get(&self, id: SeqId) -> Option<&Sequence<T>> {
        self.position(id).map(|i| &self.running[i])
    }

    /// The running sequence `id`, if it runs.
    pub fn get_mut(&mut self, id: SeqId) -> Option<&mut Sequence<T>> {
        self.position(id).map(|i| &mut self.running[i])
    }

    /// Every running sequence, in arrival order: for work on all of them at
    /// once (sampling in parallel). Their place in the cache stays the
    /// scheduler's.
    pub fn running_mut(&mut self) -> &mut [Sequence<T>] {
        &mut self.running
    }

    fn position(&self, id: SeqId) -> Option<usize> {
        self.running.binary_search_by_key(&id, |s| s.id).ok()
    }

    /// Queues a new sequence behind every other.
    pub fn add(&mut self, seq: Sequence<T>) {
        debug_assert!(seq.block_table.is_empty() && seq.num_computed == 0);
        self.waiting.push_back(seq);
    }

    /// Chooses the work of the next step.
    pub fn schedule(&mut self) -> Step {
        let mut step = Step::default();
        let mut budget = self.limits.max_num_batched_tokens;
        let mut i = 0;
        while i < self.running.len() {
            if budget == 0 {
                break;
            }
            let seq = &self.running[i];
            let want = (seq.tokens.len() - seq.num_computed).min(budget);
            if want == 0 {
                i += 1;
                continue;
            }
            let target = seq.num_computed + want;
            // Make room, preempting from the newest end; maybe this one.
            loop {
                let seq = &mut self.running[i];
                if self.blocks.grow(&mut seq.block_table, target).is_ok() {
                    step.work.push((seq.id, want));
                    budget -= want;
                    i += 1;
                    break;
                }
                let last = self.running.len() - 1;
                step.preempted.push(self.running[last].id);
                self.preempt(last);
                if last == i {
                    break;
                }
            }
        }
        if !step.preempted.is_empty() {
            // Out of blocks: admitting more would only preempt again.
            return step;
        }
        while budget > 0 {
            let Some(seq) = self.waiting.front() else {
                break;
            };
            if !self.running.is_empty()
                && self.running.len() + seq.width() > self.limits.max_num_seqs
            {
                break;
            }
            let Some(mut seq) = self.waiting.pop_front() else {
                break;
            };
            // Reuse cached blocks of its prefix; at least one token is computed
            // (its logits are needed).
            let bs = self.blocks.block_size();
            let (table, hashes) = self
                .blocks
                .take_prefix(&seq.tokens, (seq.tokens.len() - 1) / bs);
            seq.num_computed = table.len() * bs;
            seq.prefix_hit = seq.num_computed;
            seq.block_table = table;
            seq.block_hashes = hashes;
            let want = (seq.tokens.len() - seq.num_computed).min(budget);
            if self
                .blocks
                .grow(&mut seq.block_table, seq.num_computed + want)
                .is_err()
            {
                self.blocks.release(&mut seq.block_table);
                seq.block_hashes.clear();
                seq.num_computed = 0;
                self.waiting.push_front(seq);
                break;
            }
            budget -= want;
            step.work.push((seq.id, want));
            let at = self.running.partition_point(|r| r.id < seq.id);
            self.running.insert(at, seq);
        }
        step.work.sort_unstable();
        step
    }

    /// Frees the blocks of running sequence `index` and puts it back in the queue.
    fn preempt(&mut self, index: usize) {
        let mut seq = self.running.remove(index);
        self.blocks.release(&mut seq.block_table);
        seq.block_hashes.clear();
        seq.num_computed = 0;
        self.preemptions += 1;
        let at = self.waiting.partition_point(|w| w.id < seq.id);
        self.waiting.insert(at, seq);
    }

    /// Records that `tokens` more of running sequence `id` are in the cache,
    /// and registers the blocks that became full for prefix reuse. Does
    /// nothing for a sequence that does not run.
    pub fn advance(&mut self, id: SeqId, tokens: usize) {
        let Some(index) = self.position(id) else {
            return;
        };
        let bs = self.blocks.block_size();
        let seq = &mut self.running[index];
        seq.num_computed += tokens;
        debug_assert!(seq.num_computed <= seq.tokens.len());
        for b in seq.block_hashes.len()..seq.num_computed / bs {
            let parent = seq.block_hashes.last().copied().unwrap_or(0);
            let content = &seq.tokens[b * bs..(b + 1) * bs];
            let hash = chain_hash(parent, content);
            self.blocks.register(seq.block_table[b], hash, content);
            seq.block_hashes.push(hash);
        }
    }

    /// Makes choices `1..=pending_forks` of running sequence `id` from
    /// `children`, choice `c` from `children[c - 1]`: its first generated
    /// token and its engine state. They share the full blocks of the prompt
    /// and run right after `id` (their ids follow it). Does nothing for a
    /// sequence that does not run.
    pub fn fork(&mut self, id: SeqId, children: Vec<(u32, T)>) {
        let Some(index) = self.position(id) else {
            return;
        };
        let parent = &mut self.running[index];
        let forks = std::mem::take(&mut parent.pending_forks);
        debug_assert_eq!(children.len(), forks);
        let block_size = self.blocks.block_size();
        let full = parent.prompt_len / block_size;
        let shared_table = parent.block_table[..full].to_vec();
        let shared_hashes = parent.block_hashes[..full.min(parent.block_hashes.len())].to_vec();
        let prompt = parent.tokens[..parent.prompt_len].to_vec();
        let children: Vec<Sequence<T>> = (1..)
            .zip(children)
            .map(|(c, (first, data))| {
                let mut tokens = prompt.clone();
                tokens.push(first);
                Sequence {
                    id: SeqId::new(id.request, c),
                    prompt_len: prompt.len(),
                    tokens,
                    num_computed: full * block_size,
                    block_table: self.blocks.share(&shared_table),
                    pending_forks: 0,
                    block_hashes: shared_hashes.clone(),
                    prefix_hit: 0,
                    data,
                }
            })
            .collect();
        let at = index + 1;
        self.running.splice(at..at, children);
    }

    /// Removes running sequence `id` (finished), freeing its blocks.
    pub fn finish(&mut self, id: SeqId) -> Option<Sequence<T>> {
        let mut seq = self.running.remove(self.position(id)?);
        self.blocks.release(&mut seq.block_table);
        Some(seq)
    }

    /// Removes every sequence, running or waiting, for which `drop` says so,
    /// freeing their blocks; returns how many went.
    pub fn remove_where(&mut self, mut drop: impl FnMut(&Sequence<T>) -> bool) -> usize {
        let before = self.running.len() + self.waiting.len();
        let blocks = &mut self.blocks;
        self.running.retain_mut(|s| {
            if drop(s) {
                blocks.release(&mut s.block_table);
                false
            } else {
                true
            }
        });
        self.waiting.retain(|s| !drop(s));
        before - self.running.len() - self.waiting.len()
    }

    /// The ids of every sequence, running then waiting.
    pub fn ids(&self) -> impl Iterator<Item = SeqId> + '_ {
        self.running.iter().chain(&self.waiting).map(|s| s.id)
    }

    /// Checks the bookkeeping a panic part-way through a step could have
    /// broken: running sequences in id order, each block owned exactly as
    /// many times as the block tables list it, the free count agreeing.
    pub fn check(&self) -> Result<(), String> {
        if !self.running.windows(2).all(|w| w[0].id < w[1].id) {
            return Err("running sequences are out of order".into());
        }
        let mut owners = vec![0u32; self.blocks.num_blocks()];
        for seq in self.running.iter().chain(&self.waiting) {
            if seq.num_computed > seq.tokens.len()
                || seq.block_table.len() < self.blocks.blocks_for(seq.num_computed)
            {
                return Err(format!("sequence {:?} is ahead of its blocks", seq.id));
            }
            for &b in &seq.block_table {
                match owners.get_mut(b as usize) {
                    Some(o) => *o += 1,
                    None => return Err(format!("block {b} does not exist")),
                }
            }
        }
        if let Some(b) = (0..owners.len()).find(|&b| owners[b] != self.blocks.ref_count(b as u32)) {
            return Err(format!(
                "block {b} has {} owners but {} block tables list it",
                self.blocks.ref_count(b as u32),
                owners[b]
            ));
        }
        let free = owners.iter().filter(|&&o| o == 0).count();
        if free != self.blocks.num_free() {
            return Err(format!(
                "{free} blocks have no owner but {} are counted free",
                self.blocks.num_free()
            ));
        }
        Ok(())
    }

    /// Removes every sequence and starts a fresh block pool, forgetting the
    /// prefix cache: for bookkeeping [`Scheduler::check`] found broken.
    pub fn clear(&mut self) -> Vec<Sequence<T>> {
        let blocks = BlockManager::new(self.blocks.num_blocks(), self.blocks.block_size());
        self.blocks = blocks;
        let mut gone: Vec<Sequence<T>> = self.running.drain(..).collect();
        gone.extend(self.waiting.drain(..));
        for seq in &mut gone {
            seq.block_table.clear();
            seq.block_hashes.clear();
            seq.num_computed = 0;
        }
        gone
    }

    /// Tokens in the cache over all running sequences (shared blocks counted once
    /// per owner).
    pub fn cached_tokens(&self) -> usize {
        self.running.iter().map(|s| s.num_computed).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sched(seqs: usize, tokens: usize, blocks: usize, block_size: usize) -> Scheduler<()> {
        Scheduler::new(
            SchedulerLimits {
                max_num_seqs: seqs,
                max_num_batched_tokens: tokens,
            },
            BlockManager::new(blocks, block_size),
        )
    }

    fn seq(req: u64, len: usize, n: usize) -> Sequence<()> {
        Sequence::new(req, vec![7; len], n, ())
    }

    /// Choice 0 of request `req`.
    fn id(req: u64) -> SeqId {
        SeqId::new(req, 0)
    }

    /// Runs one step's bookkeeping: every scheduled sequence computes its
    /// tokens and, if caught up, "samples" token 1.
    fn run(s: &mut Scheduler<()>) -> Step {
        let step = s.schedule();
        for &(i, n) in step.work.iter().rev() {
            s.advance(i, n);
            let seq = s.get_mut(i).unwrap();
            if seq.is_caught_up() {
                seq.push_token(1);
            }
        }
        step
    }

    #[test]
    fn budget_is_respected_and_long_prompts_are_chunked() {
        let mut s = sched(8, 10, 100, 4);
        s.add(seq(0, 25, 1));
        s.add(seq(1, 3, 1));
        let step = run(&mut s);
        assert_eq!(step.work, vec![(id(0), 10)]);
        let step = run(&mut s);
        assert_eq!(step.work, vec![(id(0), 10)]);
        // The last chunk of 5 leaves room for the second prompt, in one forward.
        let step = run(&mut s);
        assert_eq!(step.work, vec![(id(0), 5), (id(1), 3)]);
        // Both decode.
        let step = run(&mut s);
        assert_eq!(step.work, vec![(id(0), 1), (id(1), 1)]);
    }

    #[test]
    fn max_num_seqs_limits_admission() {
        let mut s = sched(2, 100, 100, 4);
        for r in 0..3 {
            s.add(seq(r, 2, 1));
        }
        let step = run(&mut s);
        assert_eq!(step.work.len(), 2);
        assert_eq!(s.num_waiting(), 1);
        assert_eq!(s.num_running(), 2);
    }

    #[test]
    fn newest_is_preempted_when_blocks_run_out() {
        // 4 blocks of 2 tokens: two sequences of 3 tokens take 2 blocks each.
        let mut s = sched(8, 100, 4, 2);
        s.add(seq(0, 3, 1));
        s.add(seq(1, 3, 1));
        run(&mut s); // both prefilled, each has 4 tokens now (3 computed)
        run(&mut s); // decode: position 3 fits in block 2 of each
                     // Now each has 5 tokens, 4 computed; the next needs a third block each.
        let step = run(&mut s);
        assert_eq!(step.preempted, vec![id(1)]);
        assert_eq!(step.work, vec![(id(0), 1)]);
        assert_eq!(s.num_waiting(), 1);
        assert_eq!(s.waiting[0].num_computed(), 0);
        assert!(s.get(id(1)).is_none(), "a preempted sequence does not run");
        assert_eq!(s.blocks().num_used(), 3);
        // Sequence 0 finishes; sequence 1 is recomputed. Its first block is
        // still in the prefix cache (sequence 0 took its second one), so
        // 3 of its 5 tokens are computed again.
        assert!(s.finish(id(0)).is_some());
        let step = run(&mut s);
        assert_eq!(step.work, vec![(id(1), 3)]);
        assert_eq!(s.get(id(1)).unwrap().prefix_hit(), 2);
    }

    #[test]
    fn a_sequence_that_cannot_grow_preempts_itself_last() {
        let mut s = sched(8, 100, 2, 2);
        s.add(seq(0, 4, 1));
        run(&mut s);
        let step = s.schedule();
        assert_eq!(step.preempted, vec![id(0)]);
        assert!(step.work.is_empty());
        assert_eq!(s.blocks().num_free(), 2);
    }

    #[test]
    fn forks_share_full_prompt_blocks() {
        let mut s = sched(8, 100, 10, 4);
        s.add(seq(0, 10, 3));
        let step = s.schedule();
        assert_eq!(step.work, vec![(id(0), 10)]);
        s.advance(id(0), 10);
        s.get_mut(id(0)).unwrap().push_token(5);
        s.fork(id(0), vec![(6, ()), (7, ())]);
        assert_eq!(s.num_running(), 3);
        let shared = s.get(id(0)).unwrap().block_table()[..2].to_vec();
        for c in 1..3 {
            let child = s.get(SeqId::new(0, c)).unwrap();
            assert_eq!(child.block_table(), shared);
            assert_eq!(child.num_computed(), 8);
            assert_eq!(child.tokens().last(), Some(&(5 + c as u32)));
        }
        assert_eq!(s.blocks().ref_count(shared[0]), 3);
        // Children recompute the partial block's two prompt tokens plus their token.
        let step = s.schedule();
        assert_eq!(
            step.work,
            vec![(id(0), 1), (SeqId::new(0, 1), 3), (SeqId::new(0, 2), 3)]
        );
        assert_eq!(s.blocks().num_used(), 3 + 2);
        s.remove_where(|_| true);
        assert_eq!(s.blocks().num_free(), 10);
    }

    #[test]
    fn a_shared_prefix_is_computed_once() {
        let mut s = sched(8, 100, 20, 4);
        let prompt: Vec<u32> = (0..14).collect();
        s.add(Sequence::new(0, prompt.clone(), 1, ()));
        run(&mut s);
        // Same first 12 tokens, then different: 3 full blocks are reused.
        let mut other = prompt[..12].to_vec();
        other.extend([90, 91, 92]);
        s.add(Sequence::new(1, other, 1, ()));
        let step = run(&mut s);
        assert_eq!(step.work, vec![(id(0), 1), (id(1), 3)]);
        let second = s.get(id(1)).unwrap();
        assert_eq!(second.prefix_hit(), 12);
        assert_eq!(
            second.block_table()[..3],
            s.get(id(0)).unwrap().block_table()[..3]
        );
        // A prompt of exactly 3 blocks still computes its last token.
        s.add(Sequence::new(2, prompt[..12].to_vec(), 1, ()));
        let step = run(&mut s);
        assert_eq!(step.work.last(), Some(&(id(2), 4)));
        assert_eq!(s.get(id(2)).unwrap().prefix_hit(), 8);
        s.remove_where(|_| true);
        assert_eq!(s.blocks().num_free(), 20);
    }

    #[test]
    fn check_finds_a_block_no_table_lists_and_clear_starts_afresh() {
        let mut s = sched(8, 64, 16, 4);
        s.add(seq(1, 10, 1));
        s.add(seq(2, 6, 1));
        run(&mut s);
        assert_eq!(s.check(), Ok(()));
        // A block taken from the pool that no sequence holds: what a panic
        // between allocating and recording a block would leave.
        let mut lost = Vec::new();
        s.blocks.grow(&mut lost, 1).unwrap();
        assert!(s.check().unwrap_err().contains("owners"));
        let gone = s.clear();
        assert_eq!(gone.len(), 2);
        assert!(s.is_idle());
        assert_eq!(s.blocks().num_used(), 0);
        assert_eq!(s.check(), Ok(()));
    }

    #[test]
    fn removing_frees_every_block() {
        let mut s = sched(8, 100, 10, 4);
        s.add(seq(0, 9, 1));
        s.add(seq(1, 9, 1));
        run(&mut s);
        assert_eq!(s.blocks().num_used(), 6);
        assert_eq!(s.remove_where(|q| q.id().request == 0), 1);
        assert_eq!(s.blocks().num_used(), 3);
        assert_eq!(s.remove_where(|_| true), 1);
        assert_eq!(s.blocks().num_used(), 0);
    }

    #[test]
    fn sequences_are_found_by_id_while_others_come_and_go() {
        let mut s = sched(8, 100, 20, 4);
        for r in [0, 1, 2] {
            s.add(seq(r, 5, 1));
        }
        run(&mut s);
        assert_eq!(s.num_running(), 3);
        // Finishing one in the middle leaves the others where their ids say.
        assert_eq!(s.finish(id(1)).map(|q| q.id()), Some(id(1)));
        assert!(s.finish(id(1)).is_none(), "finished once");
        assert!(s.get(id(1)).is_none());
        assert_eq!(s.get(id(2)).unwrap().num_computed(), 5);
        // A newcomer joins in arrival order, found by its id too.
        s.add(seq(3, 2, 1));
        let step = run(&mut s);
        assert_eq!(step.work, vec![(id(0), 1), (id(2), 1), (id(3), 2)]);
        let order: Vec<SeqId> = s.running_mut().iter().map(Sequence::id).collect();
        assert_eq!(order, vec![id(0), id(2), id(3)]);
    }

    #[test]
    fn unknown_ids_change_nothing() {
        let mut s = sched(8, 100, 20, 4);
        s.add(seq(0, 5, 2));
        // Still waiting: not running, so nothing to advance, fork or finish.
        s.advance(id(0), 3);
        s.fork(id(0), vec![(1, ())]);
        assert!(s.finish(id(0)).is_none());
        assert!(s.get_mut(id(0)).is_none());
        let step = run(&mut s);
        assert_eq!(step.work, vec![(id(0), 5)]);
        assert_eq!(s.num_running(), 1);
    }

    #[test]
    fn a_forked_choice_can_finish_before_its_parent() {
        let mut s = sched(8, 100, 20, 4);
        s.add(seq(0, 6, 3));
        run(&mut s);
        s.fork(id(0), vec![(8, ()), (9, ())]);
        let used = s.blocks().num_used();
        let child = s.finish(SeqId::new(0, 1)).unwrap();
        assert_eq!(child.num_generated(), 1);
        // Only its own block went; the shared prompt block stays with the others.
        assert_eq!(s.blocks().num_used(), used);
        let step = run(&mut s);
        assert_eq!(step.work, vec![(id(0), 1), (SeqId::new(0, 2), 3)]);
    }
}
