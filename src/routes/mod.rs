//! The router: routes, the API-key check, request ids and per-request
//! spans, request counting, CORS, the body limit, and OpenAI-shaped answers
//! for unknown routes and methods.

pub mod chat;
pub mod completions;
pub mod misc;

use std::time::Instant;

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderName, HeaderValue, Method};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use tower_http::cors::{AllowOrigin, Any, CorsLayer};
use tracing::Instrument;

use crate::error::{ApiError, ErrorResponse};
use crate::state::{AppState, Ready};

/// The id of one HTTP request: logged on every line of it, returned in
/// `x-request-id`, and part of the completion's `id`.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The whole HTTP API over `state`.
pub fn app(state: AppState) -> Router {
    let protected = Router::new()
        .route("/v1/chat/completions", post(chat::chat_completions))
        .route("/v1/completions", post(completions::completions))
        .route("/v1/models", get(misc::list_models))
        .route("/v1/models/{*id}", get(misc::get_model))
        .route("/tokenize", post(misc::tokenize))
        .route("/detokenize", post(misc::detokenize))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            require_api_key,
        ));
    let mut router = Router::new()
        .merge(protected)
        .route("/health", get(misc::health))
        .route("/metrics", get(misc::metrics))
        .route("/openapi.json", get(misc::openapi))
        .fallback(no_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(state.settings().max_body_size))
        .layer(middleware::from_fn_with_state(state.clone(), observe));
    if let Some(cors) = cors_layer(&state.settings().cors_allow_origin) {
        router = router.layer(cors);
    }
    router.with_state(state)
}

/// Where a generation request starts: the time it came (for the latency
/// metrics), the loaded model, and the served name its `model` asks for.
pub fn begin<'a>(
    state: &'a AppState,
    model: Option<&str>,
) -> Result<(Instant, &'a Ready, String), ApiError> {
    let start = Instant::now();
    Ok((start, state.ready()?, state.resolve_model(model)?))
}

/// The refusals of a generation route, for the OpenAPI document (never
/// built: each variant only describes a status and its body).
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
pub enum GenerationErrors {
    /// Invalid request
    #[response(status = 400)]
    Invalid(ErrorResponse),
    /// Missing or wrong API key
    #[response(status = 401)]
    Unauthorized(ErrorResponse),
    /// Unknown model
    #[response(status = 404)]
    UnknownModel(ErrorResponse),
    /// The body did not arrive within `--body-read-timeout`
    #[response(status = 408)]
    Timeout(ErrorResponse),
    /// Body over `--max-body-size`
    #[response(status = 413)]
    TooLarge(ErrorResponse),
    /// Queue full (with `Retry-After`)
    #[response(status = 429)]
    QueueFull(ErrorResponse),
    /// The engine failed while running the request
    #[response(status = 500)]
    ServerError(ErrorResponse),
    /// Loading or shutting down
    #[response(status = 503)]
    Unavailable(ErrorResponse),
}

/// The errors of the tokenizer routes.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
pub enum TokenizerErrors {
    /// Invalid request
    #[response(status = 400)]
    Invalid(ErrorResponse),
    /// Missing or wrong API key
    #[response(status = 401)]
    Unauthorized(ErrorResponse),
    /// Unknown model
    #[response(status = 404)]
    UnknownModel(ErrorResponse),
    /// The body did not arrive within `--body-read-timeout`
    #[response(status = 408)]
    Timeout(ErrorResponse),
    /// Body over `--max-body-size`
    #[response(status = 413)]
    TooLarge(ErrorResponse),
    /// The tokenizer failed
    #[response(status = 500)]
    ServerError(ErrorResponse),
    /// Loading or shutting down
    #[response(status = 503)]
    Unavailable(ErrorResponse),
}

fn cors_layer(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let layer = CorsLayer::new()
        .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
        .allow_headers(Any);
    if origins.iter().any(|o| o == "*") {
        return Some(layer.allow_origin(Any));
    }
    let list: Vec<HeaderValue> = origins
        .iter()
        .filter_map(|o| match HeaderValue::from_str(o) {
            Ok(v) => Some(v),
            Err(_) => {
                tracing::warn!(origin = %o, "ignoring a CORS origin that is not a valid header value");
                None
            }
        })
        .collect();
    Some(layer.allow_origin(AllowOrigin::list(list)))
}

/// Gives the request an id and a span, logs it, counts its answer.
async fn observe(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 64 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_string)
        .unwrap_or_else(new_request_id);
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let span =
        tracing::info_span!("request", id = %id, method = %req.method(), path = %req.uri().path());
    req.extensions_mut().insert(RequestId(id.clone()));
    let mut response = next.run(req).instrument(span.clone()).await;
    let status = response.status();
    span.in_scope(|| tracing::debug!(status = status.as_u16(), "answered"));
    state
        .metrics()
        .requests
        .with_label_values(&[route.as_str(), status.as_str()])
        .inc();
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    response
}

/// 24 random hex digits.
fn new_request_id() -> String {
    format!("{:024x}", rand::random::<u128>() >> 32)
}

/// `Authorization: Bearer <key>` when the server has a key.
async fn require_api_key(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let Some(expected) = state.settings().api_key.as_ref() else {
        return next.run(req).await;
    };
    let given = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    match given {
        None => ApiError::unauthorized("missing API key: send it as `Authorization: Bearer <key>`")
            .into_response(),
        Some(key) if expected.matches(key) => next.run(req).await,
        Some(_) => ApiError::unauthorized("incorrect API key").into_response(),
    }
}

async fn no_route(req: Request) -> ApiError {
    ApiError::no_route(req.method().as_str(), req.uri().path())
}

async fn method_not_allowed() -> ApiError {
    ApiError::method_not_allowed()
}

#[cfg(test)]
mod tests;
