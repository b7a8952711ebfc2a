//! What every handler shares: the settings from the command line, the
//! engine once the model is loaded, and the metrics.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use ferroseek_engine::{Engine, ToolCallFormat};

use crate::cli::ApiKey;
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::tokens::TokenTable;

/// The parts of the configuration the HTTP layer needs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Names clients may use in `model`; the first is reported back.
    pub served_names: Vec<String>,
    /// What `--model` named (shown as `root` in `/v1/models`).
    pub root: String,
    pub api_key: Option<ApiKey>,
    pub max_body_size: usize,
    /// How long reading a JSON body may take (`--body-read-timeout`).
    pub body_read_timeout: std::time::Duration,
    pub cors_allow_origin: Vec<String>,
}

/// The loaded model: what exists once loading finished.
pub struct Ready {
    pub engine: Engine,
    pub tokens: TokenTable,
    /// Compiles the grammars of structured output for this vocabulary.
    pub grammars: std::sync::Arc<ferroseek_engine::Grammars>,
    /// The model's vocabulary size (ids `0..vocab_size` are valid).
    pub vocab_size: usize,
    /// What a request's left-out sampling fields take (`--generation-config`).
    pub sampling_defaults: ferroseek_engine::SamplingParams,
    /// The tokenizer has `<think>`/`</think>`: split reasoning from content.
    pub reasoning: bool,
    /// How the model writes tool calls (`--tool-call-parser`, else detected
    /// from the chat template); `None`: calls stay text.
    pub tool_format: Option<ToolCallFormat>,
    /// The special tokens taken out of the text of a request that keeps
    /// them for the tool-call parser (all but the format's markup).
    pub hidden_special_tokens: Arc<[String]>,
    /// Unix seconds of loading.
    pub created: u64,
}

struct Shared {
    settings: Settings,
    ready: OnceLock<Ready>,
    metrics: Metrics,
    stopping: AtomicBool,
}

/// Cheap to clone; one per server.
#[derive(Clone)]
pub struct AppState {
    shared: Arc<Shared>,
}

impl AppState {
    pub fn new(settings: Settings, metrics: Metrics) -> Self {
        AppState {
            shared: Arc::new(Shared {
                settings,
                ready: OnceLock::new(),
                metrics,
                stopping: AtomicBool::new(false),
            }),
        }
    }

    pub fn settings(&self) -> &Settings {
        &self.shared.settings
    }

    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    /// Marks the model loaded; the first call wins.
    pub fn set_ready(&self, ready: Ready) {
        if self.shared.ready.set(ready).is_err() {
            tracing::warn!("the model was already loaded");
        }
    }

    /// The loaded model, or 503 while loading.
    pub fn ready(&self) -> Result<&Ready, ApiError> {
        self.shared
            .ready
            .get()
            .ok_or_else(|| ApiError::unavailable("the model is still loading; retry shortly"))
    }

    pub fn engine(&self) -> Option<&Engine> {
        self.shared.ready.get().map(|r| &r.engine)
    }

    /// Stop taking generation requests (SIGTERM/SIGINT).
    pub fn begin_shutdown(&self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        if let Some(engine) = self.engine() {
            engine.shutdown();
        }
    }

    pub fn is_stopping(&self) -> bool {
        self.shared.stopping.load(Ordering::SeqCst)
    }

    /// The name to report for a request's `model`: the first served name
    /// when the request names none; 404 for a name this server does not serve.
    pub fn resolve_model(&self, requested: Option<&str>) -> Result<String, ApiError> {
        let names = &self.settings().served_names;
        match requested {
            None | Some("") => Ok(names.first().cloned().unwrap_or_default()),
            Some(name) if names.iter().any(|n| n == name) => Ok(name.to_string()),
            Some(name) => Err(ApiError::model_not_found(name, names)),
        }
    }
}
