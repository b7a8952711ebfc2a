//! The engine end to end on the embedded default model: batching changes
//! nothing a request sees, preemption and recompute change nothing,
//! cancellation frees the cache, refusals are immediate, stop conditions
//! end choices with the right reason, engine log lines name their request.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use std::collections::BTreeMap;

use ferroseek_engine::{
    Engine, EngineConfig, Error, Event, FinishReason, Limits, PromptTiming, SamplingFields,
    Tokenizer, ValidRequest,
};
use ferroseek_model::{
    resolve_model, Batch, CacheDType, DeepSeekModel, HubOptions, LatentCache, LoadOptions,
    LogitsRows, SeqInput,
};

fn model_dir() -> std::path::PathBuf {
    common::repo_dir().join("models/tiny-deepseek-v3")
}

fn load() -> (DeepSeekModel, Arc<Tokenizer>) {
    let dir = model_dir();
    let files = resolve_model(dir.to_str().unwrap(), &HubOptions::from_env(None)).unwrap();
    let model = DeepSeekModel::load(&files, &LoadOptions::default()).unwrap();
    let tokenizer = Tokenizer::from_dir(&dir).unwrap();
    (model, Arc::new(tokenizer))
}

fn engine(config: EngineConfig) -> Engine {
    let (model, tokenizer) = load();
    Engine::start(model, tokenizer, config).unwrap()
}

fn small_config() -> EngineConfig {
    EngineConfig {
        kv_cache_bytes: 8 << 20,
        ..Default::default()
    }
}

/// Everything one request streamed.
#[derive(Debug, Default, Clone, PartialEq)]
struct Outcome {
    tokens: Vec<Vec<u32>>,
    text: Vec<String>,
    reasons: Vec<Option<FinishReason>>,
    completion_tokens: Vec<usize>,
    prompt_events: usize,
    cached_tokens: usize,
    timing: PromptTiming,
    prompt_logprobs: Option<Vec<Option<ferroseek_engine::TokenLogprob>>>,
    logprobs: Vec<Vec<ferroseek_engine::TokenLogprob>>,
}

fn collect(mut stream: ferroseek_engine::RequestStream, n: usize) -> Outcome {
    let mut o = Outcome {
        tokens: vec![Vec::new(); n],
        text: vec![String::new(); n],
        reasons: vec![None; n],
        completion_tokens: vec![0; n],
        logprobs: vec![Vec::new(); n],
        ..Default::default()
    };
    while let Some(event) = stream.blocking_next() {
        match event {
            Event::Prompt {
                logprobs,
                cached_tokens,
                timing,
            } => {
                assert!(
                    o.tokens.iter().all(Vec::is_empty),
                    "prompt event comes first"
                );
                o.prompt_events += 1;
                o.cached_tokens = cached_tokens;
                o.timing = timing;
                o.prompt_logprobs = logprobs;
            }
            Event::Token {
                choice,
                token,
                text,
                logprob,
            } => {
                assert!(o.reasons[choice].is_none(), "token after finish");
                o.tokens[choice].push(token);
                o.text[choice].push_str(&text);
                o.logprobs[choice].extend(logprob);
            }
            Event::Finished {
                choice,
                reason,
                text,
                completion_tokens,
            } => {
                assert!(o.reasons[choice].is_none(), "finished twice");
                o.text[choice].push_str(&text);
                o.reasons[choice] = Some(reason);
                o.completion_tokens[choice] = completion_tokens;
            }
            Event::Error(e) => panic!("engine error: {e}"),
        }
    }
    assert_eq!(o.prompt_events, 1, "exactly one prompt event");
    assert!(
        o.reasons.iter().all(Option::is_some),
        "every choice finished"
    );
    o
}

fn prompt(seed: u32, len: usize) -> Vec<u32> {
    (0..len as u32)
        .map(|i| (i * 131 + seed * 977) % 3900 + 4)
        .collect()
}

/// The embedded model's limits with the default `max_num_seqs`.
const LIMITS: Limits = Limits {
    vocab_size: 4032,
    max_num_seqs: 64,
    max_model_len: 4096,
};

fn request(id: &str, prompt: Vec<u32>, fields: SamplingFields) -> ValidRequest {
    fields
        .validate(&LIMITS)
        .unwrap()
        .request(id, prompt)
        .unwrap()
}

/// Greedy decoding of `max_tokens` tokens, past eos.
fn greedy_fields(max_tokens: usize) -> SamplingFields<'static> {
    SamplingFields {
        temperature: Some(0.0),
        max_tokens: Some(("max_tokens", max_tokens as i64)),
        ignore_eos: Some(true),
        ..Default::default()
    }
}

fn greedy(id: &str, prompt: Vec<u32>, max_tokens: usize) -> ValidRequest {
    request(id, prompt, greedy_fields(max_tokens))
}

/// Sampling at temperature 1 with `seed`, `max_tokens` tokens past eos.
fn seeded_fields(seed: i64, max_tokens: usize) -> SamplingFields<'static> {
    SamplingFields {
        seed: Some(seed),
        max_tokens: Some(("max_tokens", max_tokens as i64)),
        ignore_eos: Some(true),
        ..Default::default()
    }
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Stats are published after each step, so they may trail the last event.
fn blocks_return(e: &Engine) {
    wait_until("every KV block to return to the pool", || {
        e.stats().blocks_used == 0
    });
}

#[test]
fn concurrent_greedy_requests_get_the_tokens_they_get_alone() {
    let e = engine(small_config());
    let requests: Vec<ValidRequest> = (0..8)
        .map(|i| greedy(&format!("r{i}"), prompt(i, 5 + 7 * i as usize), 20))
        .collect();
    let alone: Vec<Outcome> = requests
        .iter()
        .map(|r| collect(e.submit(r.clone()).unwrap(), 1))
        .collect();
    let streams: Vec<_> = requests
        .iter()
        .map(|r| e.submit(r.clone()).unwrap())
        .collect();
    let together: Vec<Outcome> = streams.into_iter().map(|s| collect(s, 1)).collect();
    for (i, (a, t)) in alone.iter().zip(&together).enumerate() {
        assert_eq!(a.tokens, t.tokens, "request {i}");
        assert_eq!(a.tokens[0].len(), 20);
        assert_eq!(a.reasons[0], Some(FinishReason::MaxTokens));
        assert_eq!(a.completion_tokens[0], 20);
    }
    blocks_return(&e);
}

#[test]
fn seeded_sampling_repeats_alone_and_under_load() {
    let e = engine(small_config());
    let seeded = |id: &str, seed: i64| {
        let fields = SamplingFields {
            temperature: Some(0.9),
            top_p: Some(0.95),
            ..seeded_fields(seed, 24)
        };
        request(id, prompt(3, 12), fields)
    };
    let alone = collect(e.submit(seeded("alone", 1234)).unwrap(), 1);
    // The same request among unseeded ones of other lengths.
    let mut noise = Vec::new();
    for i in 0..6 {
        let fields = SamplingFields {
            max_tokens: Some(("max_tokens", 30)),
            ignore_eos: Some(true),
            ..Default::default()
        };
        let r = request(
            &format!("noise{i}"),
            prompt(10 + i, 3 + 5 * i as usize),
            fields,
        );
        noise.push(e.submit(r).unwrap());
    }
    let loaded = collect(e.submit(seeded("loaded", 1234)).unwrap(), 1);
    for s in noise {
        collect(s, 1);
    }
    assert_eq!(alone.tokens, loaded.tokens);
    // A different seed takes a different path.
    let other = collect(e.submit(seeded("other", 99)).unwrap(), 1);
    assert_ne!(alone.tokens, other.tokens);
}

#[test]
fn preemption_and_recompute_give_the_same_tokens() {
    // Room for 12 blocks of 4 tokens: 6 sequences of 8 + 16 tokens cannot all
    // fit, so newer ones are preempted and recomputed.
    let (model, _) = load();
    let block_bytes = LatentCache::bytes_per_block(model.config(), 4, CacheDType::F32);
    drop(model);
    let config = EngineConfig {
        block_size: 4,
        kv_cache_bytes: 12 * block_bytes,
        ..Default::default()
    };
    let reference = engine(small_config());
    let tight = engine(config);
    let requests: Vec<ValidRequest> = (0..6)
        .map(|i| greedy(&format!("p{i}"), prompt(20 + i, 8), 16))
        .collect();
    let alone: Vec<Outcome> = requests
        .iter()
        .map(|r| collect(reference.submit(r.clone()).unwrap(), 1))
        .collect();
    let streams: Vec<_> = requests
        .iter()
        .map(|r| tight.submit(r.clone()).unwrap())
        .collect();
    let squeezed: Vec<Outcome> = streams.into_iter().map(|s| collect(s, 1)).collect();
    for (a, s) in alone.iter().zip(&squeezed) {
        assert_eq!(a.tokens, s.tokens);
        assert_eq!(a.text, s.text);
    }
    let stats = tight.stats();
    assert!(
        stats.preemptions_total > 0,
        "the test must preempt: {stats:?}"
    );
    blocks_return(&tight);
}

#[test]
fn chunked_prefill_gives_the_same_tokens_and_prompt_logprobs() {
    let whole = engine(small_config());
    let chunked = engine(EngineConfig {
        max_num_batched_tokens: 7,
        ..small_config()
    });
    let fields = SamplingFields {
        logprobs: Some(("logprobs", 2)),
        prompt_logprobs: Some(("prompt_logprobs", 3)),
        ..greedy_fields(12)
    };
    let r = request("c", prompt(5, 40), fields);
    let a = collect(whole.submit(r.clone()).unwrap(), 1);
    let b = collect(chunked.submit(r.clone()).unwrap(), 1);
    assert_eq!(a.tokens, b.tokens);
    let (pa, pb) = (a.prompt_logprobs.unwrap(), b.prompt_logprobs.unwrap());
    assert_eq!(pa.len(), 40);
    assert!(pa[0].is_none() && pb[0].is_none());
    for (x, y) in pa.iter().zip(&pb).skip(1) {
        let (x, y) = (x.as_ref().unwrap(), y.as_ref().unwrap());
        assert_eq!(x.token, y.token);
        assert!((x.logprob - y.logprob).abs() < 1e-4);
        assert_eq!(x.top.len(), 3);
    }
    // Greedy picks the most likely token: its log-probability tops the list.
    for lp in &a.logprobs[0] {
        assert_eq!(lp.top[0].0, lp.token);
        assert_eq!(lp.top.len(), 2);
    }
}

#[test]
fn prompt_logprobs_match_a_direct_forward() {
    let e = engine(small_config());
    let p = prompt(9, 17);
    let fields = SamplingFields {
        prompt_logprobs: Some(("prompt_logprobs", 1)),
        ..greedy_fields(0)
    };
    let r = request("lp", p.clone(), fields);
    let o = collect(e.submit(r).unwrap(), 1);
    assert_eq!(o.reasons[0], Some(FinishReason::MaxTokens));
    assert!(o.tokens[0].is_empty());
    let lps = o.prompt_logprobs.unwrap();

    let (model, _) = load();
    let mut cache = LatentCache::new(model.config(), 4, 16).unwrap();
    let batch = Batch {
        seqs: vec![SeqInput {
            tokens: p.clone(),
            num_cached: 0,
            block_table: vec![0, 1],
            logits: LogitsRows::All,
        }],
    };
    let logits = model.forward(&batch, &mut cache).unwrap();
    let log_probs = candle_nn::ops::log_softmax(&logits, 1)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    for pos in 1..p.len() {
        let expected = log_probs[pos - 1][p[pos] as usize];
        let got = lps[pos].as_ref().unwrap().logprob;
        assert!(
            (expected - got).abs() < 1e-4,
            "position {pos}: {expected} vs {got}"
        );
    }
}

#[test]
fn n_choices_share_the_prompt_and_sample_independently() {
    let e = engine(small_config());
    // Greedy: every choice equals the single greedy answer.
    let single = collect(e.submit(greedy("g1", prompt(4, 21), 10)).unwrap(), 1);
    let fields = SamplingFields {
        n: Some(3),
        ..greedy_fields(10)
    };
    let r = request("g3", prompt(4, 21), fields);
    let three = collect(e.submit(r).unwrap(), 3);
    for c in 0..3 {
        assert_eq!(three.tokens[c], single.tokens[0], "choice {c}");
    }
    // Seeded sampling: choices differ from each other, and repeat as a whole.
    let fields = SamplingFields {
        n: Some(3),
        ..seeded_fields(5, 16)
    };
    let r = request("s3", prompt(4, 21), fields);
    let a = collect(e.submit(r.clone()).unwrap(), 3);
    let b = collect(e.submit(r).unwrap(), 3);
    assert_eq!(a.tokens, b.tokens);
    assert!(a.tokens[0] != a.tokens[1] || a.tokens[1] != a.tokens[2]);
    blocks_return(&e);
}

#[test]
fn streamed_text_is_the_decoded_tokens() {
    let e = engine(small_config());
    let (_, tokenizer) = load();
    let r = request(
        "t",
        tokenizer.encode("Hello there, how are", false).unwrap(),
        seeded_fields(3, 40),
    );
    let o = collect(e.submit(r).unwrap(), 1);
    assert_eq!(o.text[0], tokenizer.decode(&o.tokens[0], true).unwrap());
}

#[test]
fn stop_strings_stop_ids_and_eos_end_choices() {
    let e = engine(small_config());
    let (_, tokenizer) = load();
    let base = greedy("base", prompt(6, 9), 30);
    let full = collect(e.submit(base).unwrap(), 1);
    let text = full.text[0].clone();
    assert!(text.chars().count() > 6, "need some text to cut: {text:?}");

    // A stop string from the middle of the text: cut before it, reason stop.
    let start = text.char_indices().nth(3).unwrap().0;
    let end = text.char_indices().nth(6).unwrap().0;
    let stop = text[start..end].to_string();
    let stops = [stop.clone()];
    let fields = SamplingFields {
        stop: Some(&stops),
        ..greedy_fields(30)
    };
    let r = request("base", prompt(6, 9), fields);
    let o = collect(e.submit(r).unwrap(), 1);
    assert_eq!(o.reasons[0], Some(FinishReason::StopString(stop.clone())));
    let first = text.find(&stop).unwrap();
    assert_eq!(o.text[0], text[..first]);
    assert!(o.tokens[0].len() < full.tokens[0].len());

    // A stop token id: the choice ends on it, its text is not emitted.
    let id = full.tokens[0][4];
    let fields = SamplingFields {
        stop_token_ids: Some(&[id]),
        ..greedy_fields(30)
    };
    let r = request("base", prompt(6, 9), fields);
    let o = collect(e.submit(r).unwrap(), 1);
    let at = full.tokens[0].iter().position(|&t| t == id).unwrap();
    assert_eq!(o.tokens[0], full.tokens[0][..=at]);
    assert_eq!(o.reasons[0], Some(FinishReason::EosToken(id)));
    assert_eq!(
        o.text[0],
        tokenizer.decode(&full.tokens[0][..at], true).unwrap()
    );

    // The same id as the model's eos (via the tokenizer's list) unless ignored.
    let eos = tokenizer.eos_token_ids()[0];
    let bias = BTreeMap::from([(eos.to_string(), 100.0)]);
    let fields = SamplingFields {
        ignore_eos: Some(false),
        logit_bias: Some(&bias),
        ..greedy_fields(30)
    };
    let o = collect(e.submit(request("base", prompt(6, 9), fields)).unwrap(), 1);
    assert_eq!(o.tokens[0], vec![eos]);
    assert_eq!(o.reasons[0], Some(FinishReason::EosToken(eos)));
    assert_eq!(o.reasons[0].as_ref().unwrap().as_openai(), "stop");
    let fields = SamplingFields {
        logit_bias: Some(&bias),
        ..greedy_fields(3)
    };
    let o = collect(e.submit(request("base", prompt(6, 9), fields)).unwrap(), 1);
    assert_eq!(o.tokens[0], vec![eos; 3]);
    assert_eq!(o.reasons[0].as_ref().unwrap().as_openai(), "length");
}

#[test]
fn context_length_ends_generation_without_max_tokens() {
    let e = engine(EngineConfig {
        max_model_len: Some(24),
        ..small_config()
    });
    let fields = SamplingFields {
        max_tokens: None,
        ..greedy_fields(0)
    };
    let r = request("ctx", prompt(1, 20), fields);
    let o = collect(e.submit(r).unwrap(), 1);
    assert_eq!(o.tokens[0].len(), 4);
    assert_eq!(o.reasons[0], Some(FinishReason::MaxTokens));
    // Asking for more than fits is refused up front, naming the numbers.
    let err = e.submit(greedy("long", prompt(1, 20), 5)).unwrap_err();
    assert!(matches!(
        err,
        Error::ContextTooLong {
            prompt_tokens: 20,
            max_tokens: 5,
            max_model_len: 24
        }
    ));
    assert!(err.to_string().contains("maximum context length is 24"));
}

#[test]
fn impossible_requests_are_refused_up_front() {
    let (model, tokenizer) = load();
    let block_bytes = LatentCache::bytes_per_block(model.config(), 16, CacheDType::F32);
    let e = Engine::start(
        model,
        tokenizer,
        EngineConfig {
            kv_cache_bytes: 4 * block_bytes,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(e.stats().blocks_total, 4);
    let err = e.submit(greedy("big", prompt(1, 60), 10)).unwrap_err();
    assert!(matches!(
        err,
        Error::CacheTooSmall {
            needed_tokens: 70,
            capacity_tokens: 64
        }
    ));
    // What validation refuses never reaches the engine; it checks the
    // fields against the engine's own limits.
    let limits = e.limits();
    assert_eq!(limits, LIMITS);
    let refused = |fields: SamplingFields, prompt: Vec<u32>| {
        fields
            .validate(&limits)
            .and_then(|v| v.request("bad", prompt))
            .unwrap_err()
    };
    let err = refused(SamplingFields::default(), vec![]);
    assert_eq!(err.param, "prompt");
    let err = refused(greedy_fields(1), vec![5, 999_999]);
    assert!(
        err.param == "prompt" && err.message.contains("999999"),
        "{err}"
    );
    for (fields, param) in [
        (
            SamplingFields {
                top_p: Some(0.0),
                ..greedy_fields(1)
            },
            "top_p",
        ),
        (
            SamplingFields {
                logprobs: Some(("logprobs", 21)),
                ..greedy_fields(1)
            },
            "logprobs",
        ),
        (
            SamplingFields {
                temperature: Some(f64::NAN),
                ..greedy_fields(1)
            },
            "temperature",
        ),
        (
            SamplingFields {
                n: Some(0),
                ..greedy_fields(1)
            },
            "n",
        ),
    ] {
        let err = refused(fields, vec![5]);
        assert_eq!(err.param, param);
        assert!(err.message.contains(&format!("`{param}`")), "{err}");
    }
}

#[test]
fn a_full_queue_refuses_at_once() {
    let e = engine(EngineConfig {
        max_num_seqs: 1,
        max_queue: 2,
        ..small_config()
    });
    let mut running = e.submit(greedy("a", prompt(1, 5), 2000)).unwrap();
    // Wait until it runs, so that it has left the queue.
    assert!(matches!(
        running.blocking_next(),
        Some(Event::Prompt { .. })
    ));
    let b = e.submit(greedy("b", prompt(2, 5), 2)).unwrap();
    let c = e.submit(greedy("c", prompt(3, 5), 2)).unwrap();
    assert!(matches!(
        e.submit(greedy("d", prompt(4, 5), 2)),
        Err(Error::QueueFull { limit: 2 })
    ));
    drop(running);
    collect_after_prompt(b);
    collect_after_prompt(c);
    blocks_return(&e);
    // With room again, requests are accepted.
    collect(e.submit(greedy("e", prompt(5, 5), 2)).unwrap(), 1);
}

fn collect_after_prompt(s: ferroseek_engine::RequestStream) {
    collect(s, 1);
}

#[test]
fn a_dropped_stream_frees_its_blocks() {
    let e = engine(small_config());
    let mut streams: Vec<_> = (0..4)
        .map(|i| {
            let fields = SamplingFields {
                n: Some(2),
                ..greedy_fields(4000)
            };
            e.submit(request(&format!("d{i}"), prompt(i, 40), fields))
                .unwrap()
        })
        .collect();
    // Let them all start generating.
    for s in streams.iter_mut() {
        loop {
            if let Some(Event::Token { .. }) = s.blocking_next() {
                break;
            }
        }
    }
    wait_until("all 8 choices to run", || {
        let s = e.stats();
        s.running == 8 && s.blocks_used > 0
    });
    drop(streams);
    wait_until("cancelled requests to leave", || {
        let s = e.stats();
        s.blocks_used == 0 && s.running == 0
    });
    // The engine goes on serving.
    collect(e.submit(greedy("after", prompt(1, 5), 3)).unwrap(), 1);
}

#[test]
fn a_stream_left_unread_is_cancelled_once_full() {
    let e = engine(EngineConfig {
        max_buffered_events: 8,
        ..small_config()
    });
    let mut stalled = e.submit(greedy("stalled", prompt(1, 5), 2000)).unwrap();
    // Nothing reads `stalled`: once 8 events wait in it, the engine drops
    // the request rather than buffer 2000 tokens.
    wait_until("the stalled request to leave", || {
        let s = e.stats();
        s.running == 0 && s.waiting == 0 && s.blocks_used == 0 && s.generation_tokens_total > 0
    });
    let mut events = 0;
    while let Some(event) = stalled.blocking_next() {
        events += 1;
        assert!(!matches!(event, Event::Finished { .. }), "{event:?}");
    }
    assert_eq!(events, 8, "the stream holds what fit, then ends");
    // The engine goes on serving (5 tokens: their events always fit).
    let o = collect(e.submit(greedy("after", prompt(2, 5), 5)).unwrap(), 1);
    assert_eq!(o.tokens[0].len(), 5);
}

#[test]
fn shutdown_refuses_new_requests_and_finishes_running_ones() {
    let e = engine(small_config());
    let s = e.submit(greedy("last", prompt(1, 5), 5)).unwrap();
    e.shutdown();
    assert!(matches!(
        e.submit(greedy("late", prompt(1, 5), 5)),
        Err(Error::ShuttingDown)
    ));
    let o = collect(s, 1);
    assert_eq!(o.tokens[0].len(), 5);
}

#[test]
fn a_repeated_prefix_is_served_from_the_cache_with_the_same_tokens() {
    let cached = engine(small_config());
    let fresh = engine(small_config());
    let system = prompt(42, 50);
    let ask = |tail: u32| {
        let mut p = system.clone();
        p.extend(prompt(tail, 7));
        greedy(&format!("q{tail}"), p, 12)
    };
    let first = collect(cached.submit(ask(1)).unwrap(), 1);
    assert_eq!(first.cached_tokens, 0);
    // The second request shares the first 50 tokens: 3 full blocks of 16.
    let second = collect(cached.submit(ask(2)).unwrap(), 1);
    assert_eq!(second.cached_tokens, 48);
    let alone = collect(fresh.submit(ask(2)).unwrap(), 1);
    assert_eq!(second.tokens, alone.tokens);
    // The same request again reuses everything but its last token's block.
    let again = collect(cached.submit(ask(2)).unwrap(), 1);
    assert_eq!(again.cached_tokens, 48);
    assert_eq!(again.tokens, alone.tokens);
    assert_eq!(cached.stats().cached_tokens_total, 96);
}

#[test]
fn the_prompt_event_reports_queue_and_prefill_time() {
    let e = engine(small_config());
    let start = Instant::now();
    let o = collect(e.submit(greedy("t", prompt(7, 40), 2)).unwrap(), 1);
    let elapsed = start.elapsed();
    assert!(o.timing.prefill > Duration::ZERO, "{:?}", o.timing);
    assert!(
        o.timing.queue + o.timing.prefill <= elapsed,
        "{:?}",
        o.timing
    );
}

/// Log lines written through `tracing_subscriber::fmt`, kept for reading.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut logs) = self.0.lock() {
            logs.extend_from_slice(buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn engine_log_lines_carry_the_callers_request_span() {
    let logs = Logs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    // Global, as a server's is: the engine logs from its own thread, and
    // tracing caches per call site whether a line is wanted, so a subscriber
    // scoped to this test's thread would miss lines the other tests' engines
    // reached first. Only this test sets one; the others' lines name their
    // own requests.
    tracing::subscriber::set_global_default(subscriber).unwrap();
    let e = engine(small_config());
    // The engine's own id for the request differs from the span's: the
    // lines below can only name `req-42` through the span.
    let span = tracing::info_span!("request", id = %"req-42");
    let stream = span.in_scope(|| e.submit(greedy("engine-id", prompt(3, 5), 2)).unwrap());
    collect(stream, 1);
    let other = e.submit(greedy("no-span", prompt(4, 5), 1)).unwrap();
    collect(other, 1);
    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    let line = |what: &str, id: &str| {
        text.lines()
            .find(|l| l.contains(what) && l.contains(id))
            .unwrap_or_else(|| panic!("no `{what}` line for {id} in:\n{text}"))
            .to_string()
    };
    assert!(line("queued", "req-42").contains("request{id=req-42}"));
    assert!(line("finished", "req-42").contains("request{id=req-42}"));
    // A caller without a span gets one named after the request's own id.
    assert!(line("finished", "no-span").contains("request{id=no-span}"));
    assert!(!text.contains("engine-id"), "{text}");
}

/// The engine's grammar compiler for the embedded model.
fn grammars(tokenizer: &Arc<Tokenizer>) -> ferroseek_engine::Grammars {
    let table = ferroseek_engine::TokenTable::new(tokenizer, LIMITS.vocab_size);
    ferroseek_engine::Grammars::new(tokenizer.clone(), &table).unwrap()
}

#[test]
fn constrained_choices_match_their_grammar_and_leave_neighbours_alone() {
    let (model, tokenizer) = load();
    let g = grammars(&tokenizer);
    let e = Engine::start(model, tokenizer.clone(), small_config()).unwrap();
    let schema = serde_json::json!({
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 8},
            "age": {"type": "integer", "minimum": 0, "maximum": 120}
        },
        "required": ["name", "age"],
        "additionalProperties": false
    });
    let grammar = g
        .compile(&ferroseek_engine::GrammarSpec::JsonSchema(schema), None)
        .unwrap();
    let constrained = |id: &str, n: i64| {
        let fields = SamplingFields {
            n: Some(n),
            ignore_eos: Some(false),
            ..seeded_fields(7, 200)
        };
        fields
            .validate(&LIMITS)
            .unwrap()
            .with_grammar(Some(grammar.clone()))
            .request(id, prompt(8, 9))
            .unwrap()
    };
    let check = |o: &Outcome| {
        for (c, text) in o.text.iter().enumerate() {
            let v: serde_json::Value = serde_json::from_str(text)
                .unwrap_or_else(|err| panic!("choice {c}: {text:?}: {err}"));
            assert!(v["name"].as_str().unwrap().chars().count() <= 8, "{text}");
            assert!((0..=120).contains(&v["age"].as_i64().unwrap()), "{text}");
            assert_eq!(v.as_object().unwrap().len(), 2, "{text}");
            assert_eq!(o.reasons[c], Some(FinishReason::GrammarComplete));
        }
    };
    let alone = collect(e.submit(constrained("c", 3)).unwrap(), 3);
    check(&alone);
    // Forked choices follow the grammar each on their own path.
    assert!(alone.text[0] != alone.text[1] || alone.text[1] != alone.text[2]);

    // Unconstrained neighbours decode as they do alone, and the constrained
    // request as it does alone.
    let plain: Vec<ValidRequest> = (0..4)
        .map(|i| greedy(&format!("p{i}"), prompt(20 + i, 6 + 3 * i as usize), 24))
        .collect();
    let plain_alone: Vec<Outcome> = plain
        .iter()
        .map(|r| collect(e.submit(r.clone()).unwrap(), 1))
        .collect();
    let mut streams: Vec<_> = plain.iter().map(|r| e.submit(r.clone()).unwrap()).collect();
    let together = collect(e.submit(constrained("c2", 3)).unwrap(), 3);
    for (i, s) in streams.drain(..).enumerate() {
        assert_eq!(collect(s, 1).tokens, plain_alone[i].tokens, "neighbour {i}");
    }
    assert_eq!(together.tokens, alone.tokens);
    blocks_return(&e);
}

#[test]
fn a_grammar_waits_for_its_start_token() {
    let (model, tokenizer) = load();
    let g = grammars(&tokenizer);
    let end_think = tokenizer.token_to_id("</think>").unwrap();
    let e = Engine::start(model, tokenizer.clone(), small_config()).unwrap();
    let grammar = g
        .compile(
            &ferroseek_engine::GrammarSpec::Regex("(yes|no)".into()),
            Some(end_think),
        )
        .unwrap();
    // The thinking part is free until </think>, forced here by a bias.
    let bias = BTreeMap::from([(end_think.to_string(), 100.0)]);
    let fields = SamplingFields {
        logit_bias: Some(&bias),
        skip_special_tokens: Some(false),
        ..seeded_fields(3, 50)
    };
    let r = fields
        .validate(&LIMITS)
        .unwrap()
        .with_grammar(Some(grammar))
        .request("t", prompt(2, 5))
        .unwrap();
    let o = collect(e.submit(r).unwrap(), 1);
    assert_eq!(o.tokens[0][0], end_think);
    let answer = o.text[0].strip_prefix("</think>").unwrap();
    assert!(["yes", "no"].contains(&answer), "{:?}", o.text[0]);
    assert_eq!(o.reasons[0], Some(FinishReason::GrammarComplete));
}
