//! The loop on the engine thread. Each step it (a) takes new requests,
//! (b) drops cancelled ones, (c) asks the [`Scheduler`] for the step's work,
//! (d) runs ONE forward over all of it — prefill chunks and decode tokens
//! together — while a second thread computes the grammar masks of the
//! constrained sequences about to sample, (e) samples one token for every
//! sequence whose tokens are all in the cache, and (f) streams text out,
//! ending choices on eos ids, stop ids, stop strings, a complete grammar,
//! `max_tokens` or the context length.
//!
//! Work done for one request runs in that request's span (the caller's, see
//! [`Engine::submit`](super::Engine::submit)), so its log lines name it.
//!
//! A step that fails costs only its own requests ([`recovery`]).

mod recovery;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::time::Instant;

use rayon::prelude::*;
use tokio::sync::mpsc as async_mpsc;

use ferroseek_model::{Batch, DeepSeekModel, LatentCache, LogitsRows, ModelError, SeqInput};

#[cfg(feature = "fault-injection")]
use super::Faults;
use super::{Shared, Submission};
use crate::constrain::{Committed, SeqConstraint};
use crate::error::Result;
use crate::output::{SeqText, StopOutcome};
use crate::request::{Event, FinishReason, PromptTiming, StopConditions, TokenLogprob};
use crate::sampling::{token_logprob, Sampler};
use crate::scheduler::{Scheduler, SeqId, Sequence};
use crate::tokenizer::Tokenizer;

/// Steps that may fail in a row before the engine gives up.
pub(super) const MAX_FAILED_STEPS: u32 = 3;

/// How long the engine waits idle before it hands the memory its steps
/// freed back to the operating system.
const RELEASE_MEMORY_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

/// Returns the allocator's free pages to the operating system. glibc keeps
/// what a burst freed (a long prompt's activations, a batch's logits) in
/// each thread's arena, so a server's resident memory would stay at its
/// busiest moment's; trimming once the engine is idle brings it back to
/// what is live, and costs nothing while requests come one after another.
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks and releases the allocator's own free
    // lists; it is safe to call from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// What one request needs across its choices; keyed by the request number
/// its sequences' ids carry.
struct Group {
    tx: async_mpsc::Sender<Event>,
    /// Its stream filled up unread: the client stopped reading.
    overflowed: bool,
    span: tracing::Span,
    submitted: Instant,
    /// When the engine first scheduled it.
    first_scheduled: Option<Instant>,
    stop: StopConditions,
    skip_special_tokens: bool,
    max_tokens: usize,
    logprobs: Option<usize>,
    /// Alternatives wanted and the log-probabilities gathered so far, by position.
    prompt_logprobs: Option<(usize, Vec<Option<TokenLogprob>>)>,
    prompt_sent: bool,
    /// Choices not finished.
    remaining: usize,
    n: usize,
}

impl Group {
    /// Sends without waiting. A stream left unread until it is full marks
    /// the request for cancellation; a stream whose client went away is
    /// noticed by `drop_cancelled`.
    fn send(&mut self, event: Event) {
        if let Err(async_mpsc::error::TrySendError::Full(_)) = self.tx.try_send(event) {
            self.overflowed = true;
        }
    }
}

/// What the engine keeps per sequence.
pub(super) struct SeqData {
    sampler: Sampler,
    text: SeqText,
    /// The request's grammar, as far as this sequence got in it.
    constraint: Option<SeqConstraint>,
    /// Whether it has been admitted once (left the submit queue).
    admitted: bool,
    /// Samplers of the choices still to fork (parent only).
    fork_samplers: Vec<Sampler>,
    /// This step's sampled tokens: own, then one per choice to fork.
    sampled: Vec<(u32, Option<TokenLogprob>)>,
}

impl SeqData {
    fn new(sampler: Sampler, prompt: &[u32], group: &Group) -> Self {
        SeqData {
            sampler,
            text: SeqText::new(prompt, group.skip_special_tokens, &group.stop.stop_strings),
            constraint: None,
            admitted: false,
            fork_samplers: Vec::new(),
            sampled: Vec::new(),
        }
    }

    /// Pushes `token` through the detokenizer and the stop strings: the text
    /// that became final with it, and the stop string it completed, if any.
    fn text_of(
        &mut self,
        tokenizer: &Tokenizer,
        token: u32,
    ) -> Result<(String, Option<FinishReason>)> {
        Ok(finished_by(self.text.push(tokenizer, token)?))
    }

    /// The choice ends: the text held back so far, and the stop string it
    /// completes, if any.
    fn final_text(&mut self, tokenizer: &Tokenizer) -> (String, Option<FinishReason>) {
        finished_by(self.text.finish(tokenizer))
    }
}

/// The text a stop-string check let through, and the stop string it found.
fn finished_by(outcome: StopOutcome) -> (String, Option<FinishReason>) {
    match outcome {
        StopOutcome::Continue(text) => (text, None),
        StopOutcome::Stopped { text, stop } => (text, Some(FinishReason::StopString(stop))),
    }
}

/// One step's forward pass: the batch, and which logits rows each scheduled
/// sequence gets.
struct StepBatch {
    batch: Batch,
    items: Vec<BatchItem>,
}

struct BatchItem {
    id: SeqId,
    /// Tokens computed this step.
    tokens: usize,
    logits: LogitsRows,
    /// Its first row in the step's logits, and how many it has.
    first_row: usize,
    rows: usize,
    /// It samples after this step (its last token gets a logits row).
    samples: bool,
}

pub(super) struct Worker {
    model: DeepSeekModel,
    cache: LatentCache,
    sched: Scheduler<SeqData>,
    groups: HashMap<u64, Group>,
    next_request: u64,
    tokenizer: Arc<Tokenizer>,
    eos: Vec<u32>,
    max_model_len: usize,
    shared: Arc<Shared>,
    /// A core is free while the forward runs: masks are computed beside it.
    spare_core: bool,
    /// Steps failed since the last good one.
    failed_steps: u32,
    #[cfg(feature = "fault-injection")]
    pub(super) faults: Faults,
}

impl Worker {
    pub(super) fn new(
        model: DeepSeekModel,
        cache: LatentCache,
        sched: Scheduler<SeqData>,
        tokenizer: Arc<Tokenizer>,
        max_model_len: usize,
        shared: Arc<Shared>,
    ) -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let spare_core = !model.device().is_cpu() || cores > ferroseek_model::compute_threads();
        Worker {
            spare_core,
            model,
            cache,
            sched,
            groups: HashMap::new(),
            next_request: 0,
            eos: tokenizer.eos_token_ids().to_vec(),
            tokenizer,
            max_model_len,
            shared,
            failed_steps: 0,
            #[cfg(feature = "fault-injection")]
            faults: Faults::default(),
        }
    }

    pub(super) fn run(&mut self, rx: mpsc::Receiver<Submission>) {
        let mut open = true;
        loop {
            if self.sched.is_idle() {
                if !open {
                    return;
                }
                let next = match rx.recv_timeout(RELEASE_MEMORY_AFTER) {
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        release_free_memory();
                        rx.recv().ok()
                    }
                    next => next.ok(),
                };
                match next {
                    Some(s) => self.accept(s),
                    None => return,
                }
            }
            loop {
                match rx.try_recv() {
                    Ok(s) => self.accept(s),
                    Err(mpsc::TryRecvError::Empty) => break,
                    Err(mpsc::TryRecvError::Disconnected) => {
                        open = false;
                        break;
                    }
                }
            }
            self.drop_cancelled();
            if !self.sched.is_idle() {
                if let Err(last) = self.guarded_step() {
                    return self.give_up(&rx, &last);
                }
            }
            self.publish();
        }
    }

    fn accept(&mut self, s: Submission) {
        #[cfg(feature = "fault-injection")]
        self.faults.in_loop(&s.request.prompt);
        let key = self.next_request;
        self.next_request += 1;
        let r = s.request;
        let group = Group {
            tx: s.tx,
            overflowed: false,
            span: s.span,
            submitted: s.submitted,
            first_scheduled: None,
            stop: r.stop,
            skip_special_tokens: r.skip_special_tokens,
            max_tokens: s.max_tokens,
            logprobs: r.logprobs,
            prompt_logprobs: r.prompt_logprobs.map(|k| (k, vec![None; r.prompt.len()])),
            prompt_sent: false,
            remaining: r.n,
            n: r.n,
        };
        let mut samplers = (0..r.n).map(|c| Sampler::new(r.sampling.clone(), &r.prompt, c));
        let Some(sampler) = samplers.next() else {
            // n = 0 never passes validation; the stream just ends.
            self.shared.queued.fetch_sub(1, Ordering::SeqCst);
            return;
        };
        let mut data = SeqData::new(sampler, &r.prompt, &group);
        data.fork_samplers = samplers.collect();
        data.constraint = r.grammar.as_ref().map(|g| g.start());
        group.span.in_scope(|| {
            tracing::debug!(prompt_tokens = r.prompt.len(), n = r.n, "queued");
        });
        self.groups.insert(key, group);
        self.sched.add(Sequence::new(key, r.prompt, r.n, data));
    }

    /// Drops the sequences of requests whose stream was dropped.
    fn drop_cancelled(&mut self) {
        let closed: Vec<u64> = self
            .groups
            .iter()
            .filter(|(_, g)| g.tx.is_closed() || g.overflowed)
            .map(|(k, _)| *k)
            .collect();
        if closed.is_empty() {
            return;
        }
        let shared = &self.shared;
        self.sched.remove_where(|s| {
            let gone = closed.contains(&s.id().request);
            if gone && !s.data.admitted {
                shared.queued.fetch_sub(1, Ordering::SeqCst);
            }
            gone
        });
        for k in closed {
            if let Some(g) = self.groups.remove(&k) {
                g.span.in_scope(|| {
                    if g.overflowed {
                        tracing::warn!(
                            "cancelled: the client stopped reading its stream ({} events unread)",
                            g.tx.max_capacity()
                        )
                    } else {
                        tracing::debug!("cancelled by the client")
                    }
                });
            }
        }
    }

    fn publish(&self) {
        let s = &self.shared;
        s.waiting.store(self.sched.num_waiting(), Ordering::Relaxed);
        s.running.store(self.sched.num_running(), Ordering::Relaxed);
        s.blocks_used
            .store(self.sched.blocks().num_used(), Ordering::Relaxed);
        s.cached_tokens
            .store(self.sched.cached_tokens(), Ordering::Relaxed);
        s.preemptions_total
            .store(self.sched.preemptions(), Ordering::Relaxed);
    }

    /// One step: plan, one forward, prompt log-probabilities, sampling, and
    /// the events of what was sampled. `in_step` gets the requests in the
    /// step as soon as they are known, for [`Worker::guarded_step`] to fail
    /// should the step fail.
    fn step(&mut self, in_step: &mut Option<HashSet<u64>>) -> Result<()> {
        let step = self.sched.schedule();
        *in_step = Some(step.work.iter().map(|(id, _)| id.request).collect());
        for id in &step.preempted {
            if let Some(g) = self.groups.get(&id.request) {
                g.span.in_scope(|| {
                    tracing::debug!(choice = id.choice, "preempted: out of KV blocks");
                });
            }
        }
        if step.work.is_empty() {
            return Ok(());
        }
        self.shared.steps_total.fetch_add(1, Ordering::Relaxed);
        let batch = self.build_batch(&step.work);
        let logits = self.forward_and_mask(&batch)?;
        self.record_prompt_logprobs(&batch.items, &logits);
        let to_sample = self.advance(&batch.items);
        self.sample(&to_sample, &logits);
        self.emit_sampled(&to_sample);
        Ok(())
    }

    /// The step's batch: each scheduled sequence's next tokens, and which
    /// logits rows it needs (all of a prompt chunk whose log-probabilities
    /// were asked for, the last one to sample from, or none mid-prompt).
    fn build_batch(&mut self, work: &[(SeqId, usize)]) -> StepBatch {
        let mut out = StepBatch {
            batch: Batch::default(),
            items: Vec::with_capacity(work.len()),
        };
        let mut next_row = 0;
        let now = Instant::now();
        for &(id, n) in work {
            let Some(seq) = self.sched.get_mut(id) else {
                continue;
            };
            let group = self.groups.get_mut(&id.request).expect("group exists");
            if !seq.data.admitted {
                seq.data.admitted = true;
                group.first_scheduled.get_or_insert(now);
                self.shared.queued.fetch_sub(1, Ordering::SeqCst);
            }
            let start = seq.num_computed();
            let end = start + n;
            let all = group.prompt_logprobs.is_some()
                && !group.prompt_sent
                && id.choice == 0
                && start < seq.prompt_len();
            let (logits, rows) = if all {
                (LogitsRows::All, n)
            } else if end == seq.tokens().len() {
                (LogitsRows::Last, 1)
            } else {
                (LogitsRows::None, 0)
            };
            out.batch.seqs.push(SeqInput {
                tokens: seq.tokens()[start..end].to_vec(),
                num_cached: start,
                block_table: seq.block_table().to_vec(),
                logits,
            });
            out.items.push(BatchItem {
                id,
                tokens: n,
                logits,
                first_row: next_row,
                rows,
                samples: rows > 0 && end == seq.tokens().len(),
            });
            next_row += rows;
        }
        out
    }

    /// Runs the model over the batch, and computes the grammar masks of the
    /// constrained sequences that sample after it: on a second thread while
    /// the forward runs when a core is spare for it (a GPU runs the model,
    /// or the compute pool leaves cores free), so they cost the step nothing
    /// while they take less time than the forward pass; else just before
    /// it. Returns the logits rows asked for, flat.
    fn forward_and_mask(&mut self, step: &StepBatch) -> Result<Vec<f32>> {
        let mut sampling: Vec<SeqId> = step
            .items
            .iter()
            .filter(|i| i.samples)
            .map(|i| i.id)
            .collect();
        sampling.sort_unstable();
        let mut masks: Vec<&mut SeqConstraint> = self
            .sched
            .running_mut()
            .iter_mut()
            .filter(|s| sampling.binary_search(&s.id()).is_ok())
            .filter_map(|s| s.data.constraint.as_mut())
            .filter(|c| c.is_active())
            .collect();
        let (model, cache) = (&mut self.model, &mut self.cache);
        if masks.is_empty() {
            return forward(model, cache, &step.batch);
        }
        if !self.spare_core {
            // Every core runs the forward: a thread beside it would stall
            // the pool's barriers, so the masks go first.
            masks.iter_mut().for_each(|c| c.prepare());
            return forward(model, cache, &step.batch);
        }
        std::thread::scope(|scope| {
            scope.spawn(move || masks.iter_mut().for_each(|c| c.prepare()));
            forward(model, cache, &step.batch)
        })
    }

    /// Prompt log-probabilities from chunks computed with all their rows:
    /// position p predicts token p + 1. Runs before [`Worker::advance`].
    fn record_prompt_logprobs(&mut self, items: &[BatchItem], logits: &[f32]) {
        let vocab = self.model.config().vocab_size;
        for item in items.iter().filter(|i| i.logits == LogitsRows::All) {
            let Some(seq) = self.sched.get(item.id) else {
                continue;
            };
            let group = self.groups.get_mut(&item.id.request).expect("group exists");
            let Some((k, lps)) = group.prompt_logprobs.as_mut() else {
                continue;
            };
            let start = seq.num_computed();
            for j in 0..item.tokens {
                let p = start + j;
                if p + 1 < seq.prompt_len() {
                    let row = &logits[(item.first_row + j) * vocab..][..vocab];
                    lps[p + 1] = Some(token_logprob(row, seq.tokens()[p + 1], *k));
                }
            }
        }
    }

    /// Records the step's tokens as cached. Returns the sequences now caught
    /// up, with the logits row to sample each from, in arrival order.
    fn advance(&mut self, items: &[BatchItem]) -> Vec<(SeqId, usize)> {
        let mut to_sample = Vec::new();
        for item in items {
            self.sched.advance(item.id, item.tokens);
            if self.sched.get(item.id).is_some_and(Sequence::is_caught_up) && item.rows > 0 {
                to_sample.push((item.id, item.first_row + item.rows - 1));
            }
        }
        to_sample
    }

    /// Samples each caught-up sequence's next token (and its forks' first
    /// ones), in parallel: each sequence has its own generator.
    fn sample(&mut self, to_sample: &[(SeqId, usize)], logits: &[f32]) {
        let vocab = self.model.config().vocab_size;
        let groups = &self.groups;
        self.sched.running_mut().par_iter_mut().for_each(|seq| {
            let Ok(at) = to_sample.binary_search_by_key(&seq.id(), |s| s.0) else {
                return;
            };
            let row = to_sample[at].1;
            let logits = &logits[row * vocab..(row + 1) * vocab];
            let group = &groups[&seq.id().request];
            if group.max_tokens == 0 {
                return;
            }
            let want = group.logprobs;
            let d = &mut seq.data;
            // A grammar's mask applies to this sequence's own copy of its row.
            let masked = d.constraint.as_mut().filter(|c| c.is_active()).map(|c| {
                let mut row = logits.to_vec();
                c.apply(&mut row);
                row
            });
            let allowed = masked.as_deref().unwrap_or(logits);
            // Log-probabilities are the model's, before the mask.
            let pick = |s: &mut Sampler| {
                let t = s.sample(allowed);
                (t, want.map(|k| token_logprob(logits, t, k)))
            };
            let own = pick(&mut d.sampler);
            d.sampled.push(own);
            let mut forks = std::mem::take(&mut d.fork_samplers);
            for s in forks.iter_mut() {
                let t = pick(s);
                d.sampled.push(t);
            }
            d.fork_samplers = forks;
        });
    }

    /// Streams what was sampled, from the newest sequence back, so that the
    /// forks and finishes of one leave the ones before it as they were.
    fn emit_sampled(&mut self, to_sample: &[(SeqId, usize)]) {
        for &(id, _) in to_sample.iter().rev() {
            self.after_prompt(id);
            let Some(seq) = self.sched.get_mut(id) else {
                continue;
            };
            let mut sampled = std::mem::take(&mut seq.data.sampled).into_iter();
            let Some((token, logprob)) = sampled.next() else {
                // max_tokens = 0: the prompt was all that was asked for.
                self.finish_unsampled(id);
                continue;
            };
            let forks: Vec<_> = sampled.collect();
            if !forks.is_empty() {
                self.fork(id, forks);
            }
            self.emit(id, token, logprob, true);
        }
    }

    /// Makes the other choices of sequence `id`, each starting with its own
    /// first token, and streams those tokens (the newest choice first).
    fn fork(&mut self, id: SeqId, firsts: Vec<(u32, Option<TokenLogprob>)>) {
        let Some(parent) = self.sched.get_mut(id) else {
            return;
        };
        let samplers = std::mem::take(&mut parent.data.fork_samplers);
        let prompt = parent.tokens()[..parent.prompt_len()].to_vec();
        let group = &self.groups[&id.request];
        let constraint = parent.data.constraint.clone();
        let children = firsts.iter().zip(samplers).map(|(&(token, _), sampler)| {
            let mut data = SeqData::new(sampler, &prompt, group);
            data.admitted = true;
            // The parent's state before its first token: each child commits its own.
            data.constraint = constraint.clone();
            (token, data)
        });
        self.sched.fork(id, children.collect());
        for (c, (token, logprob)) in firsts.into_iter().enumerate().rev() {
            self.emit(SeqId::new(id.request, c + 1), token, logprob, false);
        }
    }

    /// The prompt of sequence `id` is in the cache: tell its request, once.
    fn after_prompt(&mut self, id: SeqId) {
        let Some(seq) = self.sched.get(id) else {
            return;
        };
        let group = self.groups.get_mut(&id.request).expect("group exists");
        if group.prompt_sent {
            return;
        }
        group.prompt_sent = true;
        self.shared
            .prompt_tokens_total
            .fetch_add(seq.prompt_len() as u64, Ordering::Relaxed);
        self.shared
            .cached_tokens_total
            .fetch_add(seq.prefix_hit() as u64, Ordering::Relaxed);
        let logprobs = group.prompt_logprobs.take().map(|(_, l)| l);
        let now = Instant::now();
        let scheduled = group.first_scheduled.unwrap_or(now);
        let timing = PromptTiming {
            queue: scheduled.saturating_duration_since(group.submitted),
            prefill: now.saturating_duration_since(scheduled),
        };
        group.send(Event::Prompt {
            cached_tokens: seq.prefix_hit(),
            logprobs,
            timing,
        });
    }

    /// A request with `max_tokens = 0`: every choice ends with no token.
    fn finish_unsampled(&mut self, id: SeqId) {
        self.sched.finish(id);
        if let Some(mut group) = self.groups.remove(&id.request) {
            for choice in 0..group.n {
                group.send(Event::Finished {
                    choice,
                    reason: FinishReason::MaxTokens,
                    text: String::new(),
                    completion_tokens: 0,
                });
            }
        }
    }

    /// Appends a sampled token to sequence `id` (unless already there: a
    /// forked child starts with it), streams its text and ends the choice if
    /// a stop condition holds.
    fn emit(&mut self, id: SeqId, token: u32, logprob: Option<TokenLogprob>, append: bool) {
        self.shared
            .generation_tokens_total
            .fetch_add(1, Ordering::Relaxed);
        let Some(seq) = self.sched.get_mut(id) else {
            return;
        };
        if append {
            seq.push_token(token);
        }
        #[cfg(feature = "fault-injection")]
        self.faults.in_step(&seq.tokens()[..seq.prompt_len()]);
        let group = self.groups.get_mut(&id.request).expect("group exists");
        let stop_id = (!group.stop.ignore_eos && self.eos.contains(&token))
            || group.stop.stop_token_ids.contains(&token);
        let grammar_ended = match seq.data.constraint.as_mut().map(|c| c.commit(token)) {
            None | Some(Committed::Continue) => false,
            Some(Committed::Complete) => true,
            Some(Committed::Failed(e)) => {
                group.span.in_scope(|| {
                    tracing::warn!(choice = id.choice, "constrained decoding ended: {e}")
                });
                true
            }
        };
        let (text, mut reason) = if stop_id {
            (String::new(), Some(FinishReason::EosToken(token)))
        } else {
            seq.data
                .text_of(&self.tokenizer, token)
                .unwrap_or_else(|e| {
                    group
                        .span
                        .in_scope(|| tracing::warn!("detokenization failed: {e}"));
                    (String::new(), None)
                })
        };
        group.send(Event::Token {
            choice: id.choice,
            token,
            text,
            logprob,
        });
        let generated = seq.num_generated();
        if reason.is_none() && grammar_ended {
            reason = Some(FinishReason::GrammarComplete);
        }
        if reason.is_none() && generated >= group.max_tokens {
            reason = Some(FinishReason::MaxTokens);
        }
        if reason.is_none() && seq.tokens().len() >= self.max_model_len {
            reason = Some(FinishReason::ContextLength);
        }
        let Some(mut reason) = reason else { return };
        let mut tail = String::new();
        if !matches!(reason, FinishReason::StopString(_)) {
            let (text, stop) = seq.data.final_text(&self.tokenizer);
            tail = text;
            reason = stop.unwrap_or(reason);
        }
        group.span.in_scope(|| {
            tracing::debug!(
                choice = id.choice,
                ?reason,
                completion_tokens = generated,
                "finished"
            )
        });
        group.send(Event::Finished {
            choice: id.choice,
            reason,
            text: tail,
            completion_tokens: generated,
        });
        group.remaining -= 1;
        if group.remaining == 0 {
            self.groups.remove(&id.request);
        }
        self.sched.finish(id);
    }
}

/// Runs the model over the batch: the logits rows it asked for, flat.
fn forward(model: &mut DeepSeekModel, cache: &mut LatentCache, batch: &Batch) -> Result<Vec<f32>> {
    let logits = model.forward(batch, cache)?;
    let flat = logits.flatten_all().and_then(|t| t.to_vec1::<f32>());
    Ok(flat.map_err(ModelError::from)?)
}
