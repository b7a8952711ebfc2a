//! The loop on the engine thread. Each step it (a) takes new requests,
//! (b) drops cancelled ones, (c) asks the [`Scheduler`] for the step's work,
//! (d) runs ONE forward over all of it — prefill chunks and decode tokens
//! together —, (e) samples one token for every sequence whose tokens are all
//! in the cache, and (f) streams text out, ending choices on eos ids, stop
//! ids, stop strings, `max_tokens` or the context length.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};

use rayon::prelude::*;
use tokio::sync::mpsc as async_mpsc;

use ferroseek_model::{Batch, DeepSeekModel, LatentCache, LogitsRows, SeqInput};

use super::{Shared, Submission};
use crate::detokenizer::{IncrementalDecoder, StopMatcher, StopOutcome};
use crate::request::{Event, FinishReason, StopConditions, TokenLogprob};
use crate::sampling::{token_logprob, Sampler};
use crate::scheduler::{Scheduler, Sequence};
use crate::tokenizer::Tokenizer;

/// What one request needs across its choices.
struct Group {
    tx: async_mpsc::UnboundedSender<Event>,
    id: String,
    stop: StopConditions,
    max_tokens: usize,
    logprobs: Option<usize>,
    /// Alternatives wanted and the log-probabilities gathered so far, by position.
    prompt_logprobs: Option<(usize, Vec<Option<TokenLogprob>>)>,
    prompt_sent: bool,
    /// Choices not finished.
    remaining: usize,
    n: usize,
}

/// What the engine keeps per sequence.
pub(super) struct SeqData {
    group: u64,
    sampler: Sampler,
    decoder: IncrementalDecoder,
    stop: StopMatcher,
    /// Whether it has been admitted once (left the submit queue).
    admitted: bool,
    /// Samplers of the choices still to fork (parent only).
    fork_samplers: Vec<Sampler>,
    /// This step's sampled tokens: own, then one per choice to fork.
    sampled: Vec<(u32, Option<TokenLogprob>)>,
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
        Worker {
            model,
            cache,
            sched,
            groups: HashMap::new(),
            next_request: 0,
            eos: tokenizer.eos_token_ids().to_vec(),
            tokenizer,
            max_model_len,
            shared,
        }
    }

    pub(super) fn run(&mut self, rx: mpsc::Receiver<Submission>) {
        let mut open = true;
        loop {
            if self.sched.is_idle() {
                if !open {
                    return;
                }
                match rx.recv() {
                    Ok(s) => self.accept(s),
                    Err(_) => return,
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
                self.step();
            }
            self.publish();
        }
    }

    fn accept(&mut self, s: Submission) {
        let key = self.next_request;
        self.next_request += 1;
        let r = s.request;
        let samplers: Vec<Sampler> = (0..r.n)
            .map(|c| Sampler::new(r.sampling.clone(), &r.prompt, c))
            .collect();
        let mut samplers = samplers.into_iter();
        let sampler = samplers.next().expect("n >= 1 is validated");
        let data = SeqData {
            group: key,
            sampler,
            decoder: IncrementalDecoder::with_prompt(&r.prompt, r.skip_special_tokens),
            stop: StopMatcher::new(r.stop.stop_strings.iter().cloned()),
            admitted: false,
            fork_samplers: samplers.collect(),
            sampled: Vec::new(),
        };
        tracing::debug!(request_id = %r.id, prompt_tokens = r.prompt.len(), n = r.n, "queued");
        self.groups.insert(
            key,
            Group {
                tx: s.tx,
                id: r.id,
                stop: r.stop,
                max_tokens: s.max_tokens,
                logprobs: r.logprobs,
                prompt_logprobs: r.prompt_logprobs.map(|k| (k, vec![None; r.prompt.len()])),
                prompt_sent: false,
                remaining: r.n,
                n: r.n,
            },
        );
        self.sched.add(Sequence::new((key, 0), r.prompt, r.n, data));
    }

    /// Drops the sequences of requests whose stream was dropped.
    fn drop_cancelled(&mut self) {
        let closed: Vec<u64> = self
            .groups
            .iter()
            .filter(|(_, g)| g.tx.is_closed())
            .map(|(k, _)| *k)
            .collect();
        if closed.is_empty() {
            return;
        }
        let shared = &self.shared;
        self.sched.remove_where(|s| {
            let gone = closed.contains(&s.data.group);
            if gone && !s.data.admitted {
                shared.queued.fetch_sub(1, Ordering::SeqCst);
            }
            gone
        });
        for k in closed {
            if let Some(g) = self.groups.remove(&k) {
                tracing::debug!(request_id = %g.id, "cancelled by the client");
            }
        }
    }

    fn publish(&self) {
        let s = &self.shared;
        s.waiting.store(self.sched.waiting.len(), Ordering::Relaxed);
        s.running.store(self.sched.running.len(), Ordering::Relaxed);
        s.blocks_used
            .store(self.sched.blocks.num_used(), Ordering::Relaxed);
        s.cached_tokens
            .store(self.sched.cached_tokens(), Ordering::Relaxed);
        s.preemptions_total
            .store(self.sched.preemptions(), Ordering::Relaxed);
    }

    fn step(&mut self) {
        let step = self.sched.schedule();
        for key in &step.preempted {
            if let Some(g) = self.groups.get(&key.0) {
                tracing::debug!(request_id = %g.id, choice = key.1, "preempted: out of KV blocks");
            }
        }
        if step.work.is_empty() {
            return;
        }
        self.shared.steps_total.fetch_add(1, Ordering::Relaxed);
        // The batch, and which logits rows each work item gets.
        let mut batch = Batch::default();
        let mut rows = Vec::with_capacity(step.work.len());
        let mut modes = Vec::with_capacity(step.work.len());
        for &(i, n) in &step.work {
            let seq = &mut self.sched.running[i];
            if !seq.data.admitted {
                seq.data.admitted = true;
                self.shared.queued.fetch_sub(1, Ordering::SeqCst);
            }
            let group = &self.groups[&seq.data.group];
            let end = seq.num_computed + n;
            let samples = end == seq.tokens.len();
            let all = group.prompt_logprobs.is_some()
                && !group.prompt_sent
                && seq.key.1 == 0
                && seq.num_computed < seq.prompt_len;
            let logits = if all {
                LogitsRows::All
            } else if samples {
                LogitsRows::Last
            } else {
                LogitsRows::None
            };
            modes.push(logits);
            rows.push(match logits {
                LogitsRows::All => n,
                LogitsRows::Last => 1,
                LogitsRows::None => 0,
            });
            batch.seqs.push(SeqInput {
                tokens: seq.tokens[seq.num_computed..end].to_vec(),
                num_cached: seq.num_computed,
                block_table: seq.block_table.clone(),
                logits,
            });
        }
        let logits = self
            .model
            .forward(&batch, &mut self.cache)
            .and_then(|t| Ok(t.flatten_all()?.to_vec1::<f32>()?));
        let logits = match logits {
            Ok(l) => l,
            Err(e) => return self.fail_step(&step.work, &e.to_string()),
        };
        let vocab = self.model.config().vocab_size;
        // Row offsets of each work item.
        let mut offsets = Vec::with_capacity(rows.len());
        let mut at = 0;
        for &r in &rows {
            offsets.push(at);
            at += r;
        }
        // Bookkeeping and prompt log-probabilities.
        let mut sample_row: Vec<Option<usize>> = vec![None; self.sched.running.len()];
        for (w, &(i, n)) in step.work.iter().enumerate() {
            let start = self.sched.running[i].num_computed;
            self.sched.advance(i, n);
            let seq = &self.sched.running[i];
            if modes[w] == LogitsRows::All {
                // All rows: position p predicts token p + 1.
                let group = self.groups.get_mut(&seq.data.group).expect("group exists");
                if let Some((k, lps)) = group.prompt_logprobs.as_mut() {
                    for j in 0..n {
                        let p = start + j;
                        if p + 1 < seq.prompt_len {
                            let row =
                                &logits[(offsets[w] + j) * vocab..(offsets[w] + j + 1) * vocab];
                            lps[p + 1] = Some(token_logprob(row, seq.tokens[p + 1], *k));
                        }
                    }
                }
            }
            if seq.num_computed == seq.tokens.len() {
                sample_row[i] = Some(offsets[w] + rows[w] - 1);
            }
        }
        // Sampling, in parallel over sequences (each has its own generator).
        let groups = &self.groups;
        self.sched
            .running
            .par_iter_mut()
            .zip(sample_row.par_iter())
            .for_each(|(seq, row)| {
                let Some(row) = *row else { return };
                let logits = &logits[row * vocab..(row + 1) * vocab];
                let group = &groups[&seq.data.group];
                if group.max_tokens == 0 {
                    return;
                }
                let want = group.logprobs;
                let d = &mut seq.data;
                let pick = |s: &mut Sampler| {
                    let t = s.sample(logits);
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
        // Emission, from the back so that indices stay valid across forks and
        // finishes.
        let sampled: Vec<usize> = (0..sample_row.len())
            .filter(|&i| sample_row[i].is_some())
            .collect();
        for &i in sampled.iter().rev() {
            self.after_prompt(i);
            let results = std::mem::take(&mut self.sched.running[i].data.sampled);
            if results.is_empty() {
                // max_tokens = 0: the prompt was all that was asked for.
                self.finish_unsampled(i);
                continue;
            }
            if results.len() > 1 {
                let firsts: Vec<u32> = results[1..].iter().map(|r| r.0).collect();
                let parent = &mut self.sched.running[i];
                let mut samplers = std::mem::take(&mut parent.data.fork_samplers).into_iter();
                let group = parent.data.group;
                let prompt = parent.tokens[..parent.prompt_len].to_vec();
                let stops = self.groups[&group].stop.stop_strings.clone();
                let skip = parent.data.decoder.skip_special_tokens();
                self.sched.fork(i, &firsts, |_| SeqData {
                    group,
                    sampler: samplers.next().expect("one sampler per fork"),
                    decoder: IncrementalDecoder::with_prompt(&prompt, skip),
                    stop: StopMatcher::new(stops.iter().cloned()),
                    admitted: true,
                    fork_samplers: Vec::new(),
                    sampled: Vec::new(),
                });
                // Children first (they sit after the parent), from the back.
                for (c, (token, lp)) in results.iter().enumerate().skip(1).rev() {
                    let idx = i + c;
                    self.emit(idx, *token, lp.clone(), false);
                }
            }
            let (token, lp) = results.into_iter().next().expect("not empty");
            self.emit(i, token, lp, true);
        }
    }

    /// The prompt of running sequence `i` is in the cache: tell its request, once.
    fn after_prompt(&mut self, i: usize) {
        let seq = &self.sched.running[i];
        let group = self.groups.get_mut(&seq.data.group).expect("group exists");
        if group.prompt_sent {
            return;
        }
        group.prompt_sent = true;
        self.shared
            .prompt_tokens_total
            .fetch_add(seq.prompt_len as u64, Ordering::Relaxed);
        self.shared
            .cached_tokens_total
            .fetch_add(seq.prefix_hit as u64, Ordering::Relaxed);
        let logprobs = group.prompt_logprobs.take().map(|(_, l)| l);
        let _ = group.tx.send(Event::Prompt {
            cached_tokens: seq.prefix_hit,
            logprobs,
        });
    }

    /// A request with `max_tokens = 0`: every choice ends with no token.
    fn finish_unsampled(&mut self, i: usize) {
        let seq = self.sched.finish(i);
        if let Some(group) = self.groups.remove(&seq.data.group) {
            for choice in 0..group.n {
                let _ = group.tx.send(Event::Finished {
                    choice,
                    reason: FinishReason::MaxTokens,
                    text: String::new(),
                    completion_tokens: 0,
                });
            }
        }
    }

    /// Appends a sampled token to running sequence `i` (unless already there:
    /// a forked child starts with it), streams its text and ends the choice if
    /// a stop condition holds.
    fn emit(&mut self, i: usize, token: u32, logprob: Option<TokenLogprob>, append: bool) {
        self.shared
            .generation_tokens_total
            .fetch_add(1, Ordering::Relaxed);
        let tokenizer = &self.tokenizer;
        let seq = &mut self.sched.running[i];
        if append {
            seq.tokens.push(token);
        }
        let group = self.groups.get_mut(&seq.data.group).expect("group exists");
        let choice = seq.key.1;
        let stop_id = (!group.stop.ignore_eos && self.eos.contains(&token))
            || group.stop.stop_token_ids.contains(&token);
        let mut reason = None;
        let mut text = String::new();
        if stop_id {
            reason = Some(FinishReason::EosToken(token));
        } else {
            let piece = match seq.data.decoder.push(tokenizer, token) {
                Ok(p) => p.unwrap_or_default(),
                Err(e) => {
                    tracing::warn!(request_id = %group.id, "detokenization failed: {e}");
                    String::new()
                }
            };
            match seq.data.stop.push(&piece) {
                StopOutcome::Continue(t) => text = t,
                StopOutcome::Stopped { text: t, stop } => {
                    text = t;
                    reason = Some(FinishReason::StopString(stop));
                }
            }
        }
        let _ = group.tx.send(Event::Token {
            choice,
            token,
            text,
            logprob,
        });
        let generated = seq.num_generated();
        if reason.is_none() && generated >= group.max_tokens {
            reason = Some(FinishReason::MaxTokens);
        }
        if reason.is_none() && seq.tokens.len() >= self.max_model_len {
            reason = Some(FinishReason::ContextLength);
        }
        let Some(mut reason) = reason else { return };
        let mut tail = String::new();
        if !matches!(reason, FinishReason::StopString(_)) {
            let rest = seq
                .data
                .decoder
                .finish(tokenizer)
                .ok()
                .flatten()
                .unwrap_or_default();
            match seq.data.stop.push(&rest) {
                StopOutcome::Continue(t) => {
                    tail = t;
                    tail.push_str(&seq.data.stop.finish());
                }
                StopOutcome::Stopped { text, stop } => {
                    tail = text;
                    reason = FinishReason::StopString(stop);
                }
            }
        }
        let _ = group.tx.send(Event::Finished {
            choice,
            reason,
            text: tail,
            completion_tokens: generated,
        });
        group.remaining -= 1;
        let key = seq.data.group;
        if group.remaining == 0 {
            self.groups.remove(&key);
        }
        self.sched.finish(i);
    }

    /// The forward failed: every request in the step gets the error and goes.
    fn fail_step(&mut self, work: &[(usize, usize)], message: &str) {
        tracing::error!("forward pass failed: {message}");
        let groups: Vec<u64> = work
            .iter()
            .map(|&(i, _)| self.sched.running[i].data.group)
            .collect();
        self.sched.remove_where(|s| groups.contains(&s.data.group));
        for k in groups {
            if let Some(g) = self.groups.remove(&k) {
                let _ =
                    g.tx.send(Event::Error(format!("the model failed: {message}")));
            }
        }
    }
}
