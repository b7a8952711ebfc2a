//! The small routes: health, models, tokenize/detokenize, metrics and the
//! OpenAPI document.

use axum::extract::{Path, State};
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use axum::Json;
use utoipa::OpenApi;

use ferroseek_engine::validate::check_token_ids;

use crate::chat_prompt::{self, TemplateOptions};
use crate::error::ApiError;
use crate::extract::JsonBody;
use crate::openai::misc::{
    DetokenizeRequest, DetokenizeResponse, HealthResponse, ModelCard, ModelList, TokenizeRequest,
    TokenizeResponse,
};
use crate::state::AppState;
use crate::tokens::off_runtime;

#[utoipa::path(
    get,
    path = "/health",
    responses(
        (status = 200, description = "The model is loaded", body = HealthResponse),
        (status = 503, description = "Loading or shutting down", body = crate::error::ErrorResponse),
    )
)]
pub async fn health(State(state): State<AppState>) -> Result<Json<HealthResponse>, ApiError> {
    if state.is_stopping() {
        return Err(ApiError::unavailable("the server is shutting down"));
    }
    let ready = state.ready()?;
    if !ready.engine.is_running() {
        return Err(ApiError::unavailable("the engine has stopped"));
    }
    Ok(Json(HealthResponse { status: "ok" }))
}

fn cards(state: &AppState) -> Result<Vec<ModelCard>, ApiError> {
    let ready = state.ready()?;
    let settings = state.settings();
    Ok(settings
        .served_names
        .iter()
        .map(|name| ModelCard {
            id: name.clone(),
            object: "model",
            created: ready.created,
            owned_by: "ferroseek".to_string(),
            root: settings.root.clone(),
            max_model_len: ready.engine.max_model_len(),
        })
        .collect())
}

#[utoipa::path(
    get,
    path = "/v1/models",
    responses(
        (status = 200, description = "The served models", body = ModelList),
        (status = 401, description = "Missing or wrong API key", body = crate::error::ErrorResponse),
    )
)]
pub async fn list_models(State(state): State<AppState>) -> Result<Json<ModelList>, ApiError> {
    Ok(Json(ModelList {
        object: "list",
        data: cards(&state)?,
    }))
}

#[utoipa::path(
    get,
    path = "/v1/models/{id}",
    params(("id" = String, Path, description = "A served model name; it may contain `/` and start with one (`/models/x`, sent as `/v1/models//models/x` or `%2F`-encoded)")),
    responses(
        (status = 200, description = "The model", body = ModelCard),
        (status = 401, description = "Missing or wrong API key", body = crate::error::ErrorResponse),
        (status = 404, description = "Not served here", body = crate::error::ErrorResponse),
    )
)]
pub async fn get_model(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<ModelCard>, ApiError> {
    let mut cards = cards(&state)?;
    // The wildcard holds the path after `/v1/models/`, decoded: a name that
    // starts with `/` arrives whole. A client that doubles the slash before
    // an ordinary name is served too.
    let position = |name: &str| cards.iter().position(|card| card.id == name);
    match position(&id).or_else(|| position(id.trim_start_matches('/'))) {
        Some(i) => Ok(Json(cards.swap_remove(i))),
        None => Err(ApiError::model_not_found(
            &id,
            &state.settings().served_names,
        )),
    }
}

#[utoipa::path(
    post,
    path = "/tokenize",
    request_body = TokenizeRequest,
    responses(
        (status = 200, description = "The token ids", body = TokenizeResponse),
        crate::routes::TokenizerErrors,
    )
)]
pub async fn tokenize(
    State(state): State<AppState>,
    JsonBody(req): JsonBody<TokenizeRequest>,
) -> Result<Json<TokenizeResponse>, ApiError> {
    let ready = state.ready()?;
    state.resolve_model(req.model.as_deref())?;
    let tokenizer = ready.engine.tokenizer();
    let ids = match (&req.prompt, &req.messages) {
        (Some(prompt), None) => {
            let (tokenizer, prompt) = (tokenizer.clone(), prompt.clone());
            let add_special_tokens = req.add_special_tokens.unwrap_or(true);
            off_runtime(move || {
                tokenizer
                    .encode(&prompt, add_special_tokens)
                    .map_err(|e| ApiError::internal(format!("cannot tokenize: {e}")))
            })
            .await?
        }
        (None, Some(messages)) => {
            let options = TemplateOptions {
                add_generation_prompt: req.add_generation_prompt.unwrap_or(true),
                chat_template_kwargs: req.chat_template_kwargs.as_ref(),
                ..Default::default()
            };
            chat_prompt::build(ready, messages, &options).await?.ids
        }
        _ => {
            return Err(ApiError::bad_request(
                "give exactly one of `prompt` (text) and `messages` (a conversation)",
            ))
        }
    };
    Ok(Json(TokenizeResponse {
        count: ids.len(),
        max_model_len: ready.engine.max_model_len(),
        token_strs: req
            .return_token_strs
            .unwrap_or(false)
            .then(|| ids.iter().map(|&id| ready.tokens.text(id)).collect()),
        tokens: ids,
    }))
}

#[utoipa::path(
    post,
    path = "/detokenize",
    request_body = DetokenizeRequest,
    responses(
        (status = 200, description = "The text", body = DetokenizeResponse),
        crate::routes::TokenizerErrors,
    )
)]
pub async fn detokenize(
    State(state): State<AppState>,
    JsonBody(req): JsonBody<DetokenizeRequest>,
) -> Result<Json<DetokenizeResponse>, ApiError> {
    let ready = state.ready()?;
    state.resolve_model(req.model.as_deref())?;
    check_token_ids("tokens", &req.tokens, ready.vocab_size)?;
    let prompt = ready
        .engine
        .tokenizer()
        .decode(&req.tokens, false)
        .map_err(|e| ApiError::internal(format!("cannot detokenize: {e}")))?;
    Ok(Json(DetokenizeResponse { prompt }))
}

#[utoipa::path(
    get,
    path = "/metrics",
    responses((status = 200, description = "Prometheus text exposition", body = String, content_type = "text/plain"))
)]
pub async fn metrics(State(state): State<AppState>) -> Response {
    let stats = state.engine().map(|e| e.stats());
    let body = state.metrics().render(stats.as_ref());
    (
        [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        body,
    )
        .into_response()
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "ferroseek",
        description = "An OpenAI-compatible inference server for DeepSeek-architecture models"
    ),
    paths(
        crate::routes::chat::chat_completions,
        crate::routes::completions::completions,
        list_models,
        get_model,
        tokenize,
        detokenize,
        health,
        metrics,
        openapi,
    ),
    components(schemas(crate::openai::chat::ChatCompletionChunk))
)]
pub struct ApiDoc;

#[utoipa::path(
    get,
    path = "/openapi.json",
    responses((status = 200, description = "This document", body = Object))
)]
pub async fn openapi() -> Response {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    Json(doc).into_response()
}
