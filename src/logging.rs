//! Logs through `tracing`: human-readable lines by default, one JSON object
//! per line with `--log-format json`. `RUST_LOG` filters (default `info`).
//! Each HTTP request runs in a `request{id=...}` span, so every line it logs
//! names it, the engine thread's lines for it included (the engine enters
//! the span of the request it works for).

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::cli::LogFormat;

pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // A line that cannot be written is dropped. tracing would report the
    // failure with `eprintln!`, which panics when stderr is a pipe whose
    // reader went away, taking down whatever thread logged: a request's,
    // the engine's, the signal handler's.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .log_internal_errors(false);
    let result = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
    };
    if let Err(e) = result {
        eprintln!("cannot set up logging: {e}");
    }
}
