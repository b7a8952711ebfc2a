//! `ferroseek`: an OpenAI-compatible HTTP server for DeepSeek-architecture
//! models. `main` parses the command line, starts listening at once (so
//! `/health` answers 503 while the model loads), loads the model off the
//! async runtime, and on SIGTERM/SIGINT stops taking requests, lets the
//! running ones finish (bounded by `--shutdown-timeout`) and exits 0. If the
//! engine fails beyond recovery it does the same, then exits 1, so that a
//! supervisor restarts it (`/health` says 503 meanwhile).
//!
//! The parts:
//! - `cli`: the flags (`ServeArgs`), each also a `FERROSEEK_*` variable,
//!   and the API key type that never prints.
//! - `routes`: the router, the API-key check, request ids and spans; one
//!   module per route group (`chat`, `completions`, `misc`).
//! - `openai`: the wire types, as serde structs and OpenAPI schemas; the
//!   sampling fields chat and completions share are one flattened struct.
//! - `extract`: the JSON body extractor, whose errors name the field.
//! - `validate`: turns the shared sampling fields into the engine's
//!   `SamplingFields`, which the engine's one validation checks.
//! - `error`: `ApiError`, every refusal as OpenAI's error body and status.
//! - `generate`, `reasoning`, `tokens`: streaming (SSE) and timing, the
//!   `<think>` split, token texts for log-probabilities.
//! - `chat_prompt`: messages to prompt ids through the chat template.
//! - `metrics`, `logging`: the Prometheus registry behind `/metrics`; text
//!   or JSON log lines.
//! - `load`, `device`, `generation_defaults`, `embedded`: loading a model
//!   onto a device, its sampling defaults, and the small model built into
//!   the binary.
//! - `state`: what every handler shares (settings, the loaded engine).
//! - `serve`: accepting connections, with a deadline for request headers.

mod chat_prompt;
mod cli;
mod device;
mod embedded;
mod error;
mod extract;
mod generate;
mod generation_defaults;
mod load;
mod logging;
mod metrics;
mod openai;
mod routes;
mod serve;
mod state;
mod structured;
mod tokens;
mod tools;
mod validate;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, Context as _, Result};
use clap::Parser;
use tokio::sync::watch;

use crate::cli::{Cli, ServeArgs};
use crate::state::{AppState, Settings};

fn main() -> ExitCode {
    let args = Cli::parse().into_serve();
    logging::init(args.log_format);
    // Before any compute thread exists (`--threads`, else one per core).
    ferroseek_model::set_threads(args.threads);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = match runtime.block_on(serve(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    };
    // Do not wait for a model load still running on a blocking thread.
    runtime.shutdown_background();
    code
}

async fn serve(args: ServeArgs) -> Result<()> {
    // Before listening: a device that cannot be had is a start-up error, not
    // a server that answers 503 forever.
    let device = args.device.open()?;
    let (served_names, root) = load::served_names(&args);
    let settings = Settings {
        served_names,
        root,
        api_key: args.api_key.clone(),
        max_body_size: args.max_body_size,
        body_read_timeout: Duration::from_secs(args.body_read_timeout),
        cors_allow_origin: args.cors_allow_origin.clone(),
    };
    let metrics = metrics::Metrics::new().context("cannot set up metrics")?;
    let state = AppState::new(settings, metrics);
    let addr = SocketAddr::new(args.host, args.port);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let local = listener.local_addr().unwrap_or(addr);
    tracing::info!(
        models = ?state.settings().served_names,
        auth = state.settings().api_key.is_some(),
        "listening on http://{local}"
    );

    let (stop_tx, mut stop_rx) = watch::channel(false);
    let signalled = stop_tx.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        let _ = signalled.send(true);
    });
    let graceful = {
        let state = state.clone();
        let mut stop_rx = stop_rx.clone();
        async move {
            let _ = stop_rx.wait_for(|stop| *stop).await;
            state.begin_shutdown();
        }
    };
    let mut server = tokio::spawn(serve::serve(
        listener,
        routes::app(state.clone()),
        Duration::from_secs(args.header_read_timeout),
        graceful,
    ));

    let load_args = args.clone();
    let mut loading = tokio::task::spawn_blocking(move || load::load(&load_args, device));
    tokio::select! {
        loaded = &mut loading => {
            let ready = loaded.map_err(|e| anyhow!("model loading panicked: {e}"))??;
            state.set_ready(ready);
            if state.is_stopping() {
                state.begin_shutdown();
            }
        }
        _ = stop_rx.wait_for(|stop| *stop) => {
            tracing::info!("stopped while loading");
            return Ok(());
        }
        ended = &mut server => {
            return Err(anyhow!("the HTTP server stopped: {ended:?}"));
        }
    }

    let mut engine_failed = false;
    tokio::select! {
        ended = &mut server => return match ended {
            Ok(()) => Ok(()),
            Err(e) => Err(anyhow!("the HTTP server panicked: {e}")),
        },
        _ = stop_rx.wait_for(|stop| *stop) => {}
        _ = engine_failure(&state) => {
            tracing::error!("the engine failed and cannot go on; stopping");
            engine_failed = true;
            let _ = stop_tx.send(true);
        }
    }
    let timeout = Duration::from_secs(args.shutdown_timeout);
    tracing::info!(
        timeout_seconds = args.shutdown_timeout,
        "stopping: no new requests; waiting for running ones"
    );
    match tokio::time::timeout(timeout, server).await {
        Ok(_) => tracing::info!("all requests finished; bye"),
        Err(_) => tracing::warn!("running requests did not finish in time; exiting anyway"),
    }
    if engine_failed {
        return Err(anyhow!(
            "exiting with an error after the engine failed, for a supervisor to restart the server"
        ));
    }
    Ok(())
}

/// Resolves once the engine has stopped because it could not go on (not
/// after a shutdown).
async fn engine_failure(state: &AppState) {
    let Some(engine) = state.engine() else {
        return std::future::pending().await;
    };
    // A flag the engine thread sets; polled, as nothing waits on it otherwise.
    while !engine.has_failed() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// SIGINT (Ctrl-C) or SIGTERM.
async fn wait_for_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!("cannot listen for Ctrl-C: {e}");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!("cannot listen for SIGTERM: {e}");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("SIGINT received"),
        _ = term => tracing::info!("SIGTERM received"),
    }
}
