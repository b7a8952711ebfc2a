//! What the chat and completion handlers share once a request is in the
//! engine: one driver that reads the engine's events, runs each choice's
//! output pipeline and hands the result to the route's [`Shape`] (a stream
//! of chunks, or one body at the end), and with it latency measurement,
//! log-probability formatting and the SSE framing.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Instant;

use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, BoxStream, SelectAll, StreamExt};
use futures_util::Stream;
use serde::Serialize;
use tracing::Instrument;

use ferroseek_engine::{ChoiceDelta, ChoiceOutput, Event, RequestStream, TokenLogprob};

use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::openai::chat::{ChatTokenLogprob, TopLogprob};
use crate::openai::common::{finite_logprob, Usage};
use crate::state::AppState;
use crate::tokens::TokenTable;

/// `system_fingerprint`: the build that answered.
pub fn system_fingerprint() -> String {
    format!("fp_ferroseek_{}", env!("CARGO_PKG_VERSION"))
}

/// Latency of one generation request, recorded into the metrics.
pub struct Timing {
    start: Instant,
    first_token_seen: bool,
    last_token: Vec<Option<Instant>>,
}

impl Timing {
    pub fn new(start: Instant, choices: usize) -> Self {
        Timing {
            start,
            first_token_seen: false,
            last_token: vec![None; choices],
        }
    }

    /// A token of choice `choice` arrived.
    pub fn token(&mut self, metrics: &Metrics, choice: usize) {
        let now = Instant::now();
        if !self.first_token_seen {
            self.first_token_seen = true;
            metrics
                .time_to_first_token
                .observe((now - self.start).as_secs_f64());
        }
        if let Some(slot) = self.last_token.get_mut(choice) {
            if let Some(last) = *slot {
                metrics
                    .inter_token_latency
                    .observe((now - last).as_secs_f64());
            }
            *slot = Some(now);
        }
    }

    pub fn finish(&self, metrics: &Metrics, endpoint: &str) {
        metrics
            .request_latency
            .with_label_values(&[endpoint])
            .observe(self.start.elapsed().as_secs_f64());
    }
}

/// A token's log-probability in the chat shape.
pub fn chat_logprob(table: &TokenTable, lp: &TokenLogprob) -> ChatTokenLogprob {
    ChatTokenLogprob {
        token: table.text(lp.token),
        logprob: finite_logprob(lp.logprob),
        bytes: Some(table.bytes(lp.token).to_vec()),
        top_logprobs: lp
            .top
            .iter()
            .map(|&(id, logprob)| TopLogprob {
                token: table.text(id),
                logprob: finite_logprob(logprob),
                bytes: Some(table.bytes(id).to_vec()),
            })
            .collect(),
    }
}

/// One SSE `data:` payload: a JSON chunk, the end marker, or an error.
pub enum SseData {
    Json(String),
    Done,
}

impl SseData {
    pub fn json(value: &impl Serialize) -> SseData {
        match serde_json::to_string(value) {
            Ok(s) => SseData::Json(s),
            Err(e) => SseData::error(&ApiError::internal(format!("cannot encode a chunk: {e}"))),
        }
    }

    /// An error after the stream started: OpenAI's error body as an event.
    pub fn error(e: &ApiError) -> SseData {
        SseData::Json(serde_json::to_string(&e.body()).unwrap_or_else(|_| {
            r#"{"error":{"message":"internal error","type":"server_error","param":null,"code":null}}"#
                .to_string()
        }))
    }

    fn into_event(self) -> SseEvent {
        match self {
            SseData::Json(s) => SseEvent::default().data(s),
            SseData::Done => SseEvent::default().data("[DONE]"),
        }
    }
}

/// The SSE response for a stream of payloads.
pub fn sse_response(stream: impl Stream<Item = SseData> + Send + 'static) -> Response {
    Sse::new(stream.map(|d| Ok::<_, Infallible>(d.into_event()))).into_response()
}

/// What every chunk and response of a request repeats.
pub struct Head {
    pub id: String,
    pub model: String,
    pub created: u64,
}

/// How a route shapes a generation into its JSON: one chunk per part while
/// streaming, or the parts gathered per choice into one body at the end.
pub trait Shape: Send + 'static {
    /// One choice's share of a chunk.
    type Part: Send;
    /// One choice of the whole response.
    type Whole;
    /// The route's label in the latency metric.
    const ENDPOINT: &'static str;

    /// The parts that open the stream, before any event.
    fn opening(&self) -> Vec<Self::Part> {
        Vec::new()
    }

    /// The prompt of engine request `p` is in the cache, with its tokens'
    /// log-probabilities if asked for.
    fn prompt(
        &mut self,
        p: usize,
        logprobs: Option<Vec<Option<TokenLogprob>>>,
    ) -> Result<Vec<Self::Part>, ApiError> {
        let _ = (p, logprobs);
        Ok(Vec::new())
    }

    /// Choice `index` generated `token`, which made `delta` final: its
    /// parts (several where one chunk cannot carry it all, such as a tool
    /// call's start and its arguments).
    fn token(
        &mut self,
        index: usize,
        token: u32,
        delta: ChoiceDelta,
        logprob: Option<TokenLogprob>,
    ) -> Result<Vec<Self::Part>, ApiError>;

    /// Choice `index` ended for `reason`, with `delta` its last text.
    fn finished(&mut self, index: usize, delta: ChoiceDelta, reason: &str) -> Vec<Self::Part>;

    /// A streamed chunk; `usage` as `stream_options.include_usage` wants it.
    fn chunk(&self, head: &Head, parts: Vec<Self::Part>, usage: Option<Option<Usage>>) -> SseData;

    /// Choice `index` before any part.
    fn empty(&self, index: usize) -> Self::Whole;

    /// The choice a part belongs to.
    fn index(part: &Self::Part) -> usize;

    /// Adds a part to its choice.
    fn add(whole: &mut Self::Whole, part: Self::Part);

    /// The whole response.
    fn body(&self, head: &Head, choices: Vec<Self::Whole>, usage: Usage) -> Response;
}

/// What the driver needs to know about a request.
pub struct Generation<S> {
    pub state: AppState,
    pub shape: S,
    pub head: Head,
    /// Prompt tokens over all engine requests.
    pub prompt_tokens: usize,
    pub include_usage: bool,
    /// When the HTTP request arrived.
    pub start: Instant,
}

impl<S: Shape> Generation<S> {
    /// The response to engine requests `streams`, each with `outputs.len() /
    /// streams.len()` choices (choice `index` = request number × that +
    /// choice): SSE chunks when `stream`, else the whole body.
    pub async fn respond(
        self,
        streams: Vec<RequestStream>,
        outputs: Vec<ChoiceOutput>,
        stream: bool,
    ) -> Result<Response, ApiError> {
        let driver = Driver {
            n: outputs.len() / streams.len().max(1),
            timing: Timing::new(self.start, outputs.len()),
            choices: outputs
                .into_iter()
                .map(|output| Progress {
                    output,
                    completion_tokens: 0,
                    finished: false,
                })
                .collect(),
            cached_tokens: 0,
            events: merge(streams),
            gen: self,
        };
        if stream {
            Ok(SseDriver::response(driver))
        } else {
            driver.collect().await
        }
    }
}

type Tagged = BoxStream<'static, (usize, Event)>;

/// The events of all engine requests as one stream, each tagged with its number.
fn merge(streams: Vec<RequestStream>) -> SelectAll<Tagged> {
    stream::select_all(streams.into_iter().enumerate().map(|(p, events)| {
        stream::unfold(events, move |mut events| async move {
            events.next().await.map(|e| ((p, e), events))
        })
        .boxed()
    }))
}

/// One choice's progress.
struct Progress {
    output: ChoiceOutput,
    completion_tokens: usize,
    finished: bool,
}

/// Turns engine events into the route's parts, keeping the counts.
struct Driver<S> {
    gen: Generation<S>,
    /// Choices per engine request.
    n: usize,
    choices: Vec<Progress>,
    cached_tokens: usize,
    timing: Timing,
    events: SelectAll<Tagged>,
}

impl<S: Shape> Driver<S> {
    /// What event `event` of engine request `p` adds; `Err` for an engine failure.
    fn on_event(&mut self, p: usize, event: Event) -> Result<Vec<S::Part>, ApiError> {
        match event {
            Event::Prompt {
                cached_tokens,
                logprobs,
                timing,
            } => {
                self.gen.state.metrics().observe_prompt(&timing);
                self.cached_tokens += cached_tokens;
                self.gen.shape.prompt(p, logprobs)
            }
            Event::Token {
                choice,
                token,
                text,
                logprob,
            } => {
                let index = p * self.n + choice;
                self.timing.token(self.gen.state.metrics(), index);
                let Some(c) = self.choices.get_mut(index) else {
                    return Ok(Vec::new());
                };
                let delta = c.output.token(&text);
                self.gen.shape.token(index, token, delta, logprob)
            }
            Event::Finished {
                choice,
                reason,
                text,
                completion_tokens,
            } => {
                let index = p * self.n + choice;
                let Some(c) = self.choices.get_mut(index) else {
                    return Ok(Vec::new());
                };
                c.completion_tokens = completion_tokens;
                c.finished = true;
                let delta = c.output.finish(&text);
                Ok(self.gen.shape.finished(index, delta, reason.as_openai()))
            }
            Event::Error(message) => {
                Err(ApiError::internal(format!("generation failed: {message}")))
            }
        }
    }

    /// The events ended: the request's latency, and whether every choice finished.
    fn end(&self) -> Result<Usage, ApiError> {
        self.timing.finish(self.gen.state.metrics(), S::ENDPOINT);
        if self.choices.iter().any(|c| !c.finished) {
            return Err(ApiError::internal("the engine ended the request early"));
        }
        Ok(Usage::new(
            self.gen.prompt_tokens,
            self.choices.iter().map(|c| c.completion_tokens).sum(),
            self.cached_tokens,
            self.choices
                .iter()
                .map(|c| c.output.reasoning_tokens())
                .sum(),
        ))
    }

    /// Waits for the whole response.
    async fn collect(mut self) -> Result<Response, ApiError> {
        let mut wholes: Vec<S::Whole> = (0..self.choices.len())
            .map(|index| self.gen.shape.empty(index))
            .collect();
        let mut add = |parts: Vec<S::Part>| {
            for part in parts {
                if let Some(whole) = wholes.get_mut(S::index(&part)) {
                    S::add(whole, part);
                }
            }
        };
        add(self.gen.shape.opening());
        while let Some((p, event)) = self.events.next().await {
            add(self.on_event(p, event)?);
        }
        let usage = self.end()?;
        Ok(self.gen.shape.body(&self.gen.head, wholes, usage))
    }
}

/// The streamed response: its state lives in the response body, so a
/// client that goes away drops it, and with it the engine requests.
struct SseDriver<S> {
    driver: Driver<S>,
    queue: VecDeque<SseData>,
    done: bool,
}

impl<S: Shape> SseDriver<S> {
    fn response(driver: Driver<S>) -> Response {
        let mut s = SseDriver {
            driver,
            queue: VecDeque::new(),
            done: false,
        };
        let opening = s.driver.gen.shape.opening();
        s.push_parts(opening);
        let span = tracing::Span::current();
        sse_response(stream::unfold(s, move |s| {
            s.next_data().instrument(span.clone())
        }))
    }

    async fn next_data(mut self) -> Option<(SseData, Self)> {
        loop {
            if let Some(data) = self.queue.pop_front() {
                return Some((data, self));
            }
            if self.done {
                return None;
            }
            match self.driver.events.next().await {
                Some((p, event)) => match self.driver.on_event(p, event) {
                    Ok(parts) => self.push_parts(parts),
                    Err(e) => {
                        tracing::warn!("{}", e.detail.message);
                        self.end_with_error(&e);
                    }
                },
                None => match self.driver.end() {
                    Ok(usage) => {
                        self.done = true;
                        if self.driver.gen.include_usage {
                            let gen = &self.driver.gen;
                            let chunk = gen.shape.chunk(&gen.head, Vec::new(), Some(Some(usage)));
                            self.queue.push_back(chunk);
                        }
                        self.queue.push_back(SseData::Done);
                    }
                    Err(e) => self.end_with_error(&e),
                },
            }
        }
    }

    /// One chunk per part.
    fn push_parts(&mut self, parts: Vec<S::Part>) {
        let gen = &self.driver.gen;
        let usage = gen.include_usage.then_some(None);
        for part in parts {
            let chunk = gen.shape.chunk(&gen.head, vec![part], usage.clone());
            self.queue.push_back(chunk);
        }
    }

    /// An error after the stream started: an error event, then the end.
    fn end_with_error(&mut self, e: &ApiError) {
        self.queue.push_back(SseData::error(e));
        self.queue.push_back(SseData::Done);
        self.done = true;
    }
}

impl<S> Drop for SseDriver<S> {
    fn drop(&mut self) {
        if !self.done {
            tracing::info!(request_id = %self.driver.gen.head.id, "client went away mid-stream; request cancelled");
        }
    }
}
