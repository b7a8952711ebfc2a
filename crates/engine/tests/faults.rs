//! The engine under injected faults (the `fault-injection` feature): a step
//! that panics fails only the requests it held and the engine goes on with
//! its bookkeeping intact; steps failing in a row, or a panic outside a
//! step, stop it and say so.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use ferroseek_engine::{
    Engine, EngineConfig, Error, Event, Faults, Limits, RequestStream, SamplingFields, Tokenizer,
    ValidRequest,
};
use ferroseek_model::{resolve_model, DeepSeekModel, HubOptions, LoadOptions};

/// A token id the prompts below never hold unless a test puts it there.
const MAGIC: u32 = 4000;

fn engine(faults: Faults, max_num_seqs: usize) -> Engine {
    let dir = common::repo_dir().join("models/tiny-deepseek-v3");
    let files = resolve_model(dir.to_str().unwrap(), &HubOptions::from_env(None)).unwrap();
    let model = DeepSeekModel::load(&files, &LoadOptions::default()).unwrap();
    let tokenizer = Arc::new(Tokenizer::from_dir(&dir).unwrap());
    let config = EngineConfig {
        kv_cache_bytes: 8 << 20,
        max_num_seqs,
        ..Default::default()
    };
    Engine::start_with_faults(model, tokenizer, config, faults).unwrap()
}

fn step_fault() -> Faults {
    Faults {
        step_panic_token: Some(MAGIC),
        ..Default::default()
    }
}

/// Ids in 4..3904, never [`MAGIC`].
fn prompt(seed: u32, len: usize) -> Vec<u32> {
    (0..len as u32)
        .map(|i| (i * 131 + seed * 977) % 3900 + 4)
        .collect()
}

fn poisoned(seed: u32, len: usize) -> Vec<u32> {
    let mut p = prompt(seed, len);
    p[len / 2] = MAGIC;
    p
}

fn greedy(id: &str, prompt: Vec<u32>, max_tokens: usize, n: usize) -> ValidRequest {
    let limits = Limits {
        vocab_size: 4032,
        max_num_seqs: 64,
        max_model_len: 4096,
    };
    SamplingFields {
        temperature: Some(0.0),
        max_tokens: Some(("max_tokens", max_tokens as i64)),
        ignore_eos: Some(true),
        n: Some(n as i64),
        ..Default::default()
    }
    .validate(&limits)
    .unwrap()
    .request(id, prompt)
    .unwrap()
}

/// How a stream ended.
#[derive(Debug, PartialEq)]
enum End {
    /// Every choice finished, with these tokens (choice 0's).
    Finished(Vec<u32>),
    /// An `Error` event, with its message.
    Error(String),
    /// The stream closed with choices unfinished and no error.
    Cut,
}

fn end(mut stream: RequestStream, n: usize) -> End {
    let mut tokens = Vec::new();
    let mut finished = 0;
    let mut error = None;
    while let Some(event) = stream.blocking_next() {
        match event {
            Event::Token {
                choice: 0, token, ..
            } => tokens.push(token),
            Event::Finished { .. } => finished += 1,
            Event::Error(e) => {
                assert!(error.is_none(), "one error at most");
                error = Some(e);
            }
            _ => {}
        }
    }
    match error {
        Some(e) => End::Error(e),
        None if finished == n => End::Finished(tokens),
        None => End::Cut,
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

fn idle_with_every_block_free(e: &Engine) {
    wait_until("the engine to be idle with every block free", || {
        let s = e.stats();
        s.blocks_used == 0 && s.running == 0 && s.waiting == 0
    });
}

#[test]
fn a_panicking_step_fails_its_requests_and_the_engine_goes_on() {
    let e = engine(step_fault(), 1);
    let expected = match end(e.submit(greedy("ref", prompt(3, 20), 8, 1)).unwrap(), 1) {
        End::Finished(tokens) => tokens,
        other => panic!("a plain request finishes: {other:?}"),
    };
    // Three times, so that three failures with good steps between them do
    // not add up to the limit of failures in a row.
    for round in 0..3 {
        // Two choices: the panic comes while the second is being forked.
        let bad = e.submit(greedy("bad", poisoned(round, 40), 50, 2)).unwrap();
        // It waits behind `bad` (one sequence fills the batch): not in the
        // failed step, so it is served.
        let next = e.submit(greedy("next", prompt(3, 20), 8, 1)).unwrap();
        match end(bad, 2) {
            End::Error(message) => assert!(message.contains("injected fault"), "{message}"),
            other => panic!("the failed step's request gets an error: {other:?}"),
        }
        assert_eq!(end(next, 1), End::Finished(expected.clone()));
        idle_with_every_block_free(&e);
        assert!(e.is_running() && !e.has_failed());
    }
    let o = end(e.submit(greedy("after", prompt(3, 20), 8, 1)).unwrap(), 1);
    assert_eq!(o, End::Finished(expected));
    assert_eq!(e.stats().failed_steps_total, 3);
}

#[test]
fn steps_failing_in_a_row_stop_the_engine_and_answer_everyone() {
    let e = engine(step_fault(), 1);
    // One at a time (one sequence per step): three failed steps in a row.
    let bad: Vec<_> = (0..3)
        .map(|i| e.submit(greedy("bad", poisoned(i, 10), 5, 1)).unwrap())
        .collect();
    let behind = e.submit(greedy("behind", prompt(1, 10), 5, 1)).unwrap();
    for stream in bad {
        assert!(matches!(end(stream, 1), End::Error(_)));
    }
    match end(behind, 1) {
        End::Error(message) => assert!(message.contains("repeated failures"), "{message}"),
        other => panic!("a request the engine held when it stopped gets an error: {other:?}"),
    }
    wait_until("the engine to stop", || !e.is_running());
    assert!(e.has_failed());
    assert!(matches!(
        e.submit(greedy("late", prompt(2, 10), 5, 1)),
        Err(Error::ShuttingDown)
    ));
}

#[test]
fn a_panic_outside_a_step_stops_the_engine() {
    let faults = Faults {
        loop_panic_token: Some(MAGIC),
        ..Default::default()
    };
    let e = engine(faults, 4);
    let mut running = e.submit(greedy("running", prompt(1, 10), 2000, 1)).unwrap();
    assert!(matches!(
        running.blocking_next(),
        Some(Event::Prompt { .. })
    ));
    let bad = e.submit(greedy("bad", poisoned(2, 10), 5, 1)).unwrap();
    assert_eq!(end(bad, 1), End::Cut);
    assert_eq!(end(running, 1), End::Cut);
    wait_until("the engine to report its failure", || e.has_failed());
    assert!(!e.is_running());
    assert!(matches!(
        e.submit(greedy("late", prompt(2, 10), 5, 1)),
        Err(Error::ShuttingDown)
    ));
}

#[test]
fn a_shutdown_is_not_a_failure() {
    let e = engine(Faults::default(), 4);
    let s = e.submit(greedy("last", prompt(1, 5), 5, 1)).unwrap();
    e.shutdown();
    assert!(matches!(end(s, 1), End::Finished(_)));
    wait_until("the engine to stop", || !e.is_running());
    std::thread::sleep(Duration::from_millis(50));
    assert!(!e.has_failed());
}
