//! What the chat and completion handlers share once a request is in the
//! engine: ids, latency measurement, log-probability formatting and the SSE
//! framing.

use std::convert::Infallible;
use std::time::Instant;

use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::Stream;
use serde::Serialize;

use ferroseek_engine::TokenLogprob;

use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::openai::chat::{ChatTokenLogprob, TopLogprob};
use crate::openai::common::finite_logprob;
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
    use futures_util::StreamExt;
    Sse::new(stream.map(|d| Ok::<_, Infallible>(d.into_event()))).into_response()
}
