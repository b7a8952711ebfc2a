//! `/metrics` in Prometheus' text format. The server's own counters and
//! latency histograms live in a `prometheus` registry; the engine's gauges
//! and token counters are read from [`EngineStats`] at scrape time, so they
//! are never out of date.

use std::fmt::Write;

use ferroseek_engine::{EngineStats, PromptTiming};
use prometheus::{Encoder, Histogram, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

pub struct Metrics {
    registry: Registry,
    /// Answers by route and status code.
    pub requests: IntCounterVec,
    /// Seconds from receiving a generation request to its first token.
    pub time_to_first_token: Histogram,
    /// Seconds between two tokens of one choice.
    pub inter_token_latency: Histogram,
    /// Seconds from receiving a generation request to its last event.
    pub request_latency: HistogramVec,
    /// Seconds a request waited in the engine's queue before its first step.
    pub queue_time: Histogram,
    /// Seconds from a request's first step until its prompt was computed.
    pub prefill_time: Histogram,
}

/// Latency buckets from 1 ms to 60 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.5, 5.0,
    10.0, 20.0, 40.0, 60.0,
];

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "ferroseek_http_requests_total",
                "HTTP requests answered, by route and status code",
            ),
            &["route", "status"],
        )?;
        let time_to_first_token = latency_histogram(
            "ferroseek_time_to_first_token_seconds",
            "Seconds from receiving a generation request to its first generated token",
        )?;
        let inter_token_latency = latency_histogram(
            "ferroseek_inter_token_latency_seconds",
            "Seconds between two consecutive tokens of one choice",
        )?;
        let request_latency = HistogramVec::new(
            HistogramOpts::new(
                "ferroseek_request_duration_seconds",
                "Seconds from receiving a generation request to its end, by endpoint",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["endpoint"],
        )?;
        let queue_time = latency_histogram(
            "ferroseek_request_queue_time_seconds",
            "Seconds a request waited in the engine's queue before its first step",
        )?;
        let prefill_time = latency_histogram(
            "ferroseek_request_prefill_time_seconds",
            "Seconds from a request's first step until its prompt was computed",
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(time_to_first_token.clone()))?;
        registry.register(Box::new(inter_token_latency.clone()))?;
        registry.register(Box::new(request_latency.clone()))?;
        registry.register(Box::new(queue_time.clone()))?;
        registry.register(Box::new(prefill_time.clone()))?;
        Ok(Metrics {
            registry,
            requests,
            time_to_first_token,
            inter_token_latency,
            request_latency,
            queue_time,
            prefill_time,
        })
    }

    /// A request's prompt is computed: where its time went until then.
    pub fn observe_prompt(&self, timing: &PromptTiming) {
        self.queue_time.observe(timing.queue.as_secs_f64());
        self.prefill_time.observe(timing.prefill.as_secs_f64());
    }

    /// The whole exposition: the registry, then the engine's numbers when loaded.
    pub fn render(&self, engine: Option<&EngineStats>) -> String {
        let mut buf = Vec::new();
        if let Err(e) = prometheus::TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::warn!("cannot encode metrics: {e}");
        }
        let mut out = String::from_utf8_lossy(&buf).into_owned();
        if let Some(s) = engine {
            write_engine(&mut out, s);
        }
        out
    }
}

/// A histogram of seconds over [`LATENCY_BUCKETS`].
fn latency_histogram(name: &str, help: &str) -> Result<Histogram, prometheus::Error> {
    Histogram::with_opts(HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()))
}

fn metric(out: &mut String, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    let _ = writeln!(out, "{name} {value}");
}

fn write_engine(out: &mut String, s: &EngineStats) {
    let gauges: [(&str, &str, usize); 5] = [
        (
            "ferroseek_num_requests_waiting",
            "Sequences waiting for the engine (the queue depth)",
            s.waiting,
        ),
        (
            "ferroseek_num_requests_running",
            "Sequences in the running batch",
            s.running,
        ),
        (
            "ferroseek_kv_cache_blocks_used",
            "KV cache blocks in use",
            s.blocks_used,
        ),
        (
            "ferroseek_kv_cache_blocks_total",
            "KV cache blocks allocated at start-up",
            s.blocks_total,
        ),
        (
            "ferroseek_kv_cache_block_size",
            "Tokens per KV cache block",
            s.block_size,
        ),
    ];
    for (name, help, value) in gauges {
        metric(out, name, "gauge", help, value);
    }
    let usage = if s.blocks_total == 0 {
        0.0
    } else {
        s.blocks_used as f64 / s.blocks_total as f64
    };
    metric(
        out,
        "ferroseek_kv_cache_usage_ratio",
        "gauge",
        "Fraction of KV cache blocks in use",
        usage,
    );
    let counters: [(&str, &str, u64); 5] = [
        (
            "ferroseek_prompt_tokens_total",
            "Prompt tokens processed",
            s.prompt_tokens_total,
        ),
        (
            "ferroseek_generation_tokens_total",
            "Tokens generated",
            s.generation_tokens_total,
        ),
        (
            "ferroseek_prefix_cache_hit_tokens_total",
            "Prompt tokens served from cache blocks of earlier requests",
            s.cached_tokens_total,
        ),
        (
            "ferroseek_preemptions_total",
            "Sequences preempted for lack of KV cache blocks",
            s.preemptions_total,
        ),
        (
            "ferroseek_failed_steps_total",
            "Engine steps that failed; each of their requests got a server error",
            s.failed_steps_total,
        ),
    ];
    for (name, help, value) in counters {
        metric(out, name, "counter", help, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_server_and_engine_metrics() {
        let m = Metrics::new().unwrap();
        m.requests.with_label_values(&["/v1/models", "200"]).inc();
        m.time_to_first_token.observe(0.02);
        m.observe_prompt(&PromptTiming {
            queue: std::time::Duration::from_millis(3),
            prefill: std::time::Duration::from_millis(40),
        });
        let stats = EngineStats {
            blocks_total: 10,
            blocks_used: 4,
            ..Default::default()
        };
        let text = m.render(Some(&stats));
        assert!(
            text.contains(r#"ferroseek_http_requests_total{route="/v1/models",status="200"} 1"#)
        );
        assert!(text.contains("ferroseek_time_to_first_token_seconds_count 1"));
        assert!(text.contains("ferroseek_request_queue_time_seconds_sum 0.003\n"));
        assert!(text.contains("ferroseek_request_prefill_time_seconds_sum 0.04\n"));
        assert!(text.contains("ferroseek_kv_cache_blocks_used 4\n"));
        assert!(text.contains("ferroseek_kv_cache_usage_ratio 0.4\n"));
        assert!(text.contains("# TYPE ferroseek_generation_tokens_total counter"));
    }
}
