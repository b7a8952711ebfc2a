//! The engine: one dedicated thread owns the model and the paged latent
//! cache (candle compute blocks, so it stays off the async runtime); callers
//! hold a cheap, cloneable [`Engine`] handle.
//!
//! [`Engine::submit`] takes a validated request, refuses at once what cannot
//! run (queue full, context too long: no waiting) and returns a [`RequestStream`] of
//! [`Event`]s. Dropping the stream cancels the request: at the next step its
//! sequences leave the batch and their blocks return to the pool. The loop
//! on the engine thread is in [`worker`].
//!
//! A step that fails (the model errs, or anything in the step panics) fails
//! only the requests it held; the engine goes on. When it cannot go on (a
//! panic outside a step, or [`worker::MAX_FAILED_STEPS`] steps failing in a
//! row) it stops and [`Engine::has_failed`] says so: the server then exits,
//! so that its supervisor restarts it.

#[cfg(feature = "fault-injection")]
mod fault;
mod worker;

#[cfg(feature = "fault-injection")]
pub use fault::Faults;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Instant;

use tokio::sync::mpsc as async_mpsc;

use ferroseek_model::{CacheDType, DeepSeekModel, LatentCache};

use crate::block_manager::BlockManager;
use crate::error::{Error, Result};
use crate::request::{Event, Request};
use crate::scheduler::{Scheduler, SchedulerLimits};
use crate::tokenizer::Tokenizer;
use crate::validate::{Limits, ValidRequest};
use worker::Worker;

/// How the engine batches and how much cache it keeps.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Most sequences in one step.
    pub max_num_seqs: usize,
    /// Most tokens (prefill and decode) in one step.
    pub max_num_batched_tokens: usize,
    /// Tokens per cache block.
    pub block_size: usize,
    /// Bytes of latent cache to allocate (all layers).
    pub kv_cache_bytes: usize,
    /// How the latent cache stores its numbers (bf16 holds twice the tokens).
    pub kv_cache_dtype: CacheDType,
    /// Longest sequence (prompt + generated); defaults to the model's.
    pub max_model_len: Option<usize>,
    /// Most requests waiting for their first step before new ones are refused.
    pub max_queue: usize,
    /// Most events a request's stream may hold unread, per choice. A client
    /// that falls this far behind (it stopped reading) is cancelled and its
    /// blocks freed: the engine never buffers without bound, nor waits.
    pub max_buffered_events: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            max_num_seqs: 64,
            max_num_batched_tokens: 2048,
            block_size: 16,
            kv_cache_bytes: 1 << 30,
            kv_cache_dtype: CacheDType::F32,
            max_model_len: None,
            max_queue: 1024,
            max_buffered_events: 4096,
        }
    }
}

/// A snapshot of the engine's counters, for `/metrics`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EngineStats {
    /// Sequences waiting to be (re)admitted.
    pub waiting: usize,
    /// Sequences in the running batch.
    pub running: usize,
    pub blocks_total: usize,
    pub blocks_used: usize,
    pub block_size: usize,
    /// Tokens held in the cache by running sequences.
    pub cached_tokens: usize,
    pub prompt_tokens_total: u64,
    pub generation_tokens_total: u64,
    /// Prompt tokens served from blocks computed for an earlier request.
    pub cached_tokens_total: u64,
    pub preemptions_total: u64,
    pub steps_total: u64,
    /// Steps that failed; their requests got an error.
    pub failed_steps_total: u64,
}

#[derive(Debug, Default)]
struct Shared {
    accepting: AtomicBool,
    /// Requests submitted and not yet admitted to a step (or dropped).
    queued: AtomicUsize,
    waiting: AtomicUsize,
    running: AtomicUsize,
    blocks_used: AtomicUsize,
    cached_tokens: AtomicUsize,
    prompt_tokens_total: AtomicU64,
    generation_tokens_total: AtomicU64,
    preemptions_total: AtomicU64,
    cached_tokens_total: AtomicU64,
    steps_total: AtomicU64,
    failed_steps_total: AtomicU64,
    /// Set when the engine thread has stopped.
    stopped: AtomicBool,
    /// Set when it stopped because it could not go on (not a shutdown).
    failed: AtomicBool,
}

struct Submission {
    request: Request,
    max_tokens: usize,
    tx: async_mpsc::Sender<Event>,
    /// The caller's span (the server's request span): the engine thread
    /// enters it for the work it does for this request, so its log lines
    /// name the request.
    span: tracing::Span,
    submitted: Instant,
}

struct Inner {
    commands: std::sync::Mutex<Option<mpsc::Sender<Submission>>>,
    shared: Arc<Shared>,
    tokenizer: Arc<Tokenizer>,
    max_model_len: usize,
    vocab_size: usize,
    blocks_total: usize,
    block_size: usize,
    max_num_seqs: usize,
    max_queue: usize,
    max_buffered_events: usize,
}

/// Far below tokio's own limit on a bounded channel's capacity.
const MAX_CHANNEL_CAPACITY: usize = 1 << 24;

/// A cheap, cloneable handle to the engine thread.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

/// The events of one request. Dropping it cancels the request.
#[derive(Debug)]
pub struct RequestStream {
    rx: async_mpsc::Receiver<Event>,
}

impl RequestStream {
    /// The next event; `None` once every choice finished or after an error.
    /// `None` before every choice finished means the engine stopped.
    pub async fn next(&mut self) -> Option<Event> {
        self.rx.recv().await
    }

    /// [`RequestStream::next`] for code outside an async runtime.
    pub fn blocking_next(&mut self) -> Option<Event> {
        self.rx.blocking_recv()
    }
}

impl Engine {
    /// Allocates the cache and starts the engine thread.
    pub fn start(
        model: DeepSeekModel,
        tokenizer: Arc<Tokenizer>,
        config: EngineConfig,
    ) -> Result<Engine> {
        #[cfg(feature = "fault-injection")]
        return Self::start_with_faults(model, tokenizer, config, Faults::from_env());
        #[cfg(not(feature = "fault-injection"))]
        Self::spawn(model, tokenizer, config)
    }

    /// [`Engine::start`] with `faults` armed (tests only).
    #[cfg(feature = "fault-injection")]
    pub fn start_with_faults(
        model: DeepSeekModel,
        tokenizer: Arc<Tokenizer>,
        config: EngineConfig,
        faults: Faults,
    ) -> Result<Engine> {
        Self::spawn(model, tokenizer, config, faults)
    }

    fn spawn(
        model: DeepSeekModel,
        tokenizer: Arc<Tokenizer>,
        config: EngineConfig,
        #[cfg(feature = "fault-injection")] faults: Faults,
    ) -> Result<Engine> {
        let invalid = |msg: String| Error::Config(msg);
        if config.max_num_seqs == 0 || config.max_num_batched_tokens == 0 {
            return Err(invalid(
                "`max_num_seqs` and `max_num_batched_tokens` must be at least 1".into(),
            ));
        }
        if config.block_size == 0 {
            return Err(invalid("the block size must be at least 1".into()));
        }
        let cfg = model.config().clone();
        let max_model_len = config
            .max_model_len
            .unwrap_or(model.max_positions())
            .min(model.max_positions());
        if max_model_len == 0 {
            return Err(invalid("`max_model_len` must be at least 1".into()));
        }
        let cache = LatentCache::with_memory_budget(
            &cfg,
            config.kv_cache_bytes,
            config.block_size,
            config.kv_cache_dtype,
        )
        .map_err(Error::KvCache)?;
        let blocks_total = cache.num_blocks();
        let blocks = BlockManager::new(blocks_total, config.block_size);
        let shared = Arc::new(Shared {
            accepting: AtomicBool::new(true),
            ..Default::default()
        });
        let (tx, rx) = mpsc::channel();
        let mut worker = Worker::new(
            model,
            cache,
            Scheduler::new(
                SchedulerLimits {
                    max_num_seqs: config.max_num_seqs,
                    max_num_batched_tokens: config.max_num_batched_tokens,
                },
                blocks,
            ),
            tokenizer.clone(),
            max_model_len,
            shared.clone(),
        );
        #[cfg(feature = "fault-injection")]
        {
            worker.faults = faults;
        }
        let thread_shared = shared.clone();
        std::thread::Builder::new()
            .name("ferroseek-engine".into())
            .spawn(move || {
                // Marks the engine stopped however the loop ends, a panic
                // included: submit() then refuses, and every open stream ends
                // (its sender is dropped with the worker).
                let _stopped = StopGuard(thread_shared);
                worker.run(rx);
            })
            .map_err(Error::Thread)?;
        Ok(Engine {
            inner: Arc::new(Inner {
                commands: std::sync::Mutex::new(Some(tx)),
                shared,
                tokenizer,
                max_model_len,
                vocab_size: cfg.vocab_size,
                blocks_total,
                block_size: config.block_size,
                max_num_seqs: config.max_num_seqs,
                max_queue: config.max_queue,
                max_buffered_events: config.max_buffered_events,
            }),
        })
    }

    pub fn tokenizer(&self) -> &Arc<Tokenizer> {
        &self.inner.tokenizer
    }

    /// Longest sequence (prompt + generated) the engine serves.
    pub fn max_model_len(&self) -> usize {
        self.inner.max_model_len
    }

    /// Whether the engine takes requests (false after [`Engine::shutdown`] or a crash).
    pub fn is_running(&self) -> bool {
        self.inner.shared.accepting.load(Ordering::SeqCst)
            && !self.inner.shared.stopped.load(Ordering::SeqCst)
    }

    /// Whether the engine stopped because it could not go on: a panic
    /// outside a step, or too many steps failing in a row. Requests it held
    /// were answered with an error where it could; the process should exit.
    pub fn has_failed(&self) -> bool {
        self.inner.shared.failed.load(Ordering::SeqCst)
    }

    /// Stops taking requests; those already submitted run to the end, then the
    /// engine thread exits.
    pub fn shutdown(&self) {
        self.inner.shared.accepting.store(false, Ordering::SeqCst);
        if let Ok(mut commands) = self.inner.commands.lock() {
            commands.take();
        }
    }

    pub fn stats(&self) -> EngineStats {
        let s = &self.inner.shared;
        EngineStats {
            waiting: s.waiting.load(Ordering::Relaxed),
            running: s.running.load(Ordering::Relaxed),
            blocks_total: self.inner.blocks_total,
            blocks_used: s.blocks_used.load(Ordering::Relaxed),
            block_size: self.inner.block_size,
            cached_tokens: s.cached_tokens.load(Ordering::Relaxed),
            prompt_tokens_total: s.prompt_tokens_total.load(Ordering::Relaxed),
            generation_tokens_total: s.generation_tokens_total.load(Ordering::Relaxed),
            cached_tokens_total: s.cached_tokens_total.load(Ordering::Relaxed),
            preemptions_total: s.preemptions_total.load(Ordering::Relaxed),
            steps_total: s.steps_total.load(Ordering::Relaxed),
            failed_steps_total: s.failed_steps_total.load(Ordering::Relaxed),
        }
    }

    /// What requests for this engine are validated against
    /// ([`SamplingFields::validate`](crate::SamplingFields::validate)).
    pub fn limits(&self) -> Limits {
        Limits {
            vocab_size: self.inner.vocab_size,
            max_num_seqs: self.inner.max_num_seqs,
            max_model_len: self.inner.max_model_len,
        }
    }

    /// Queues `request` when it fits the context and the cache. Never
    /// waits: a full queue is [`Error::QueueFull`] at once. The engine's log
    /// lines for the request go in the caller's current span (one named
    /// `request` with its id when the caller has none).
    pub fn submit(&self, request: ValidRequest) -> Result<RequestStream> {
        let submitted = Instant::now();
        let request = request.into_request();
        let max_tokens = self.fit(&request)?;
        let inner = &self.inner;
        if !self.is_running() {
            return Err(Error::ShuttingDown);
        }
        if inner.shared.queued.fetch_add(1, Ordering::SeqCst) >= inner.max_queue {
            inner.shared.queued.fetch_sub(1, Ordering::SeqCst);
            return Err(Error::QueueFull {
                limit: inner.max_queue,
            });
        }
        let span = match tracing::Span::current() {
            span if span.is_none() => tracing::debug_span!("request", id = %request.id),
            span => span,
        };
        // tokio allocates a bounded channel's slots as they fill, not up front.
        let capacity = inner
            .max_buffered_events
            .saturating_mul(request.n)
            .clamp(1, MAX_CHANNEL_CAPACITY);
        let (tx, rx) = async_mpsc::channel(capacity);
        let sent = inner.commands.lock().ok().and_then(|c| {
            c.as_ref().map(|c| {
                c.send(Submission {
                    request,
                    max_tokens,
                    tx,
                    span,
                    submitted,
                })
                .is_ok()
            })
        });
        match sent {
            Some(true) => Ok(RequestStream { rx }),
            _ => {
                inner.shared.queued.fetch_sub(1, Ordering::SeqCst);
                Err(Error::ShuttingDown)
            }
        }
    }

    /// The request's effective `max_tokens`, or why it can never fit this
    /// engine's context or cache (its fields were checked by validation).
    fn fit(&self, r: &Request) -> Result<usize> {
        let inner = &self.inner;
        let prompt = r.prompt.len();
        let room = inner.max_model_len.saturating_sub(prompt);
        let max_tokens = match r.stop.max_tokens {
            Some(m) => m,
            None => room,
        };
        if prompt + max_tokens.max(usize::from(r.stop.max_tokens != Some(0))) > inner.max_model_len
        {
            return Err(Error::ContextTooLong {
                prompt_tokens: prompt,
                max_tokens: max_tokens.max(1),
                max_model_len: inner.max_model_len,
            });
        }
        let capacity = inner.blocks_total * inner.block_size;
        // One choice alone must fit; the others may be preempted meanwhile.
        let needed = (prompt + max_tokens).div_ceil(inner.block_size) * inner.block_size;
        if needed > capacity {
            return Err(Error::CacheTooSmall {
                needed_tokens: prompt + max_tokens,
                capacity_tokens: capacity,
            });
        }
        Ok(max_tokens)
    }
}

struct StopGuard(Arc<Shared>);

impl Drop for StopGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            tracing::error!(
                "the engine thread panicked outside a step; no more requests are taken"
            );
            self.0.failed.store(true, Ordering::SeqCst);
        }
        self.0.stopped.store(true, Ordering::SeqCst);
        self.0.accepting.store(false, Ordering::SeqCst);
    }
}
