//! The server's one error type and its HTTP form: OpenAI's error body
//! `{"error": {"message", "type", "param", "code"}}` with the status that
//! fits. Every rejection the server makes — bad JSON, a bad field, a wrong
//! key, an unknown model, a full queue — goes through [`ApiError`].

use axum::http::header::{CONNECTION, RETRY_AFTER};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use ferroseek_engine::{Error as EngineError, InvalidParameter};

/// OpenAI's error body.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ErrorResponse {
    pub error: ErrorDetail,
}

/// What went wrong, for the client.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// A sentence that names the field in backticks.
    pub message: String,
    /// `invalid_request_error`, `authentication_error`, `not_found_error`,
    /// `rate_limit_error`, `service_unavailable_error` or `server_error`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The request field at fault, when there is one (`messages[0].role`).
    pub param: Option<String>,
    /// A machine-readable code (`model_not_found`, `invalid_api_key`, ...).
    pub code: Option<String>,
}

/// An error answer: status plus OpenAI's body.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub detail: ErrorDetail,
}

impl ApiError {
    fn new(status: StatusCode, kind: &str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            detail: ErrorDetail {
                message: message.into(),
                kind: kind.to_string(),
                param: None,
                code: None,
            },
        }
    }

    /// 400: the request is wrong; `param` names the field.
    pub fn invalid(param: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message).with_param(param)
    }

    /// 400 with no single field at fault (the body as a whole).
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }

    /// 404 for a model this server does not serve.
    pub fn model_not_found(model: &str, served: &[String]) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            format!(
                "the model `{model}` does not exist; this server serves {}",
                served
                    .iter()
                    .map(|m| format!("`{m}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )
        .with_param("model")
        .with_code("model_not_found")
    }

    /// 404 for a path the server does not have.
    pub fn no_route(method: &str, path: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            format!("no route for {method} {path}"),
        )
        .with_code("unknown_url")
    }

    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request_error",
            "this route does not accept that HTTP method",
        )
        .with_code("method_not_allowed")
    }

    /// 401: no key or a wrong key.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "invalid_request_error", message)
            .with_code("invalid_api_key")
    }

    /// 413: the body is over `--max-body-size`.
    pub fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            format!("the request body is larger than the server's limit of {limit} bytes"),
        )
        .with_code("request_too_large")
    }

    /// 408: the body did not arrive within `--body-read-timeout`.
    pub fn body_timeout(limit: std::time::Duration) -> Self {
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            "invalid_request_error",
            format!(
                "the request body did not arrive within the server's limit of {} s",
                limit.as_secs()
            ),
        )
        .with_code("request_timeout")
    }

    /// 503: the model is not loaded yet, or the server is stopping.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "service_unavailable_error",
            message,
        )
        .with_code("service_unavailable")
    }

    /// 500: a failure that is the server's, not the request's.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", message)
    }

    pub fn with_param(mut self, param: impl Into<String>) -> Self {
        self.detail.param = Some(param.into());
        self
    }

    pub fn with_code(mut self, code: impl Into<String>) -> Self {
        self.detail.code = Some(code.into());
        self
    }

    pub fn body(&self) -> ErrorResponse {
        ErrorResponse {
            error: self.detail.clone(),
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status.as_u16(), self.detail.message)
    }
}

/// Seconds a 429 tells the client to wait (`Retry-After`). A full queue
/// drains as running requests finish, which takes seconds; one second is
/// what OpenAI's client libraries would otherwise back off from at first,
/// and keeps a retrying client from hammering without leaving it idle long.
pub const RETRY_AFTER_SECONDS: u64 = 1;

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::warn!(status = self.status.as_u16(), "{}", self.detail.message);
        } else {
            tracing::info!(status = self.status.as_u16(), "{}", self.detail.message);
        }
        let mut response = (self.status, Json(self.body())).into_response();
        if self.status == StatusCode::TOO_MANY_REQUESTS {
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECONDS));
        }
        if matches!(
            self.status,
            StatusCode::PAYLOAD_TOO_LARGE | StatusCode::REQUEST_TIMEOUT
        ) {
            // The body was left unread: the connection cannot carry another
            // request, and a client told so opens a new one instead of
            // writing into a socket the server is closing.
            response
                .headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

/// Each kind of engine error as the client sees it: a refused request is
/// its fault (400, the field named from the error's data) or momentary
/// (429, 503); a chat template that will not render is about `messages`;
/// the rest are the server's (500).
impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        let message = e.to_string();
        match e {
            EngineError::QueueFull { .. } => {
                ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limit_error", message)
                    .with_code("queue_full")
            }
            EngineError::ShuttingDown => {
                ApiError::unavailable("the server is shutting down and takes no new requests")
            }
            EngineError::ContextTooLong { .. } | EngineError::CacheTooSmall { .. } => {
                ApiError::bad_request(message).with_code("context_length_exceeded")
            }
            EngineError::InvalidParameter(e) => e.into(),
            EngineError::TemplateRaised(msg) => ApiError::invalid(
                "messages",
                format!("the model's chat template refused the conversation: {msg}"),
            ),
            EngineError::NoChatTemplate(msg) => ApiError::bad_request(format!(
                "this model has no usable chat template ({msg}); use /v1/completions, or start the server with `--chat-template`"
            )),
            EngineError::TemplateSyntax { .. } | EngineError::TemplateRender { .. } => {
                ApiError::invalid("messages", message)
            }
            EngineError::Io { .. }
            | EngineError::InvalidFile { .. }
            | EngineError::NoTokenizer
            | EngineError::Tokenizer { .. }
            | EngineError::Config(_)
            | EngineError::KvCache(_)
            | EngineError::Thread(_)
            | EngineError::Model(_) => ApiError::internal(message),
        }
    }
}

impl From<InvalidParameter> for ApiError {
    fn from(e: InvalidParameter) -> Self {
        ApiError::invalid(e.param, e.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn submit_errors_map_to_openai_statuses() {
        let status = |e: EngineError| ApiError::from(e).status;
        assert_eq!(
            status(EngineError::QueueFull { limit: 3 }),
            StatusCode::TOO_MANY_REQUESTS
        );
        assert_eq!(
            status(EngineError::ShuttingDown),
            StatusCode::SERVICE_UNAVAILABLE
        );
        let e = ApiError::from(EngineError::ContextTooLong {
            prompt_tokens: 10,
            max_tokens: 20,
            max_model_len: 16,
        });
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert_eq!(e.detail.code.as_deref(), Some("context_length_exceeded"));
    }

    #[test]
    fn every_429_says_when_to_retry() {
        let response = ApiError::from(EngineError::QueueFull { limit: 3 }).into_response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[RETRY_AFTER], "1");
        let response = ApiError::bad_request("no").into_response();
        assert!(response.headers().get(RETRY_AFTER).is_none());
    }

    #[test]
    fn an_unread_body_closes_the_connection() {
        for e in [
            ApiError::too_large(10),
            ApiError::body_timeout(std::time::Duration::from_secs(1)),
        ] {
            assert_eq!(e.into_response().headers()[CONNECTION], "close");
        }
        let response = ApiError::bad_request("no").into_response();
        assert!(response.headers().get(CONNECTION).is_none());
    }

    #[test]
    fn invalid_parameters_carry_their_field_to_param() {
        let e = ApiError::from(InvalidParameter::new(
            "top_p",
            "`top_p` must be in (0, 1], got 2",
        ));
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert_eq!(e.detail.param.as_deref(), Some("top_p"));
        assert_eq!(e.detail.message, "`top_p` must be in (0, 1], got 2");
        let e = ApiError::from(EngineError::from(InvalidParameter::new("n", "bad `n`")));
        assert_eq!(e.detail.param.as_deref(), Some("n"));
    }

    #[test]
    fn template_errors_are_about_the_messages() {
        let e = ApiError::from(EngineError::TemplateRaised("no system role".into()));
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert_eq!(e.detail.param.as_deref(), Some("messages"));
        assert!(e.detail.message.ends_with(": no system role"));
        let e = ApiError::from(EngineError::NoChatTemplate("none in the folder".into()));
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert!(e.detail.param.is_none());
        let e = ApiError::from(EngineError::Config("no blocks".into()));
        assert_eq!(e.status, StatusCode::INTERNAL_SERVER_ERROR);
    }

    #[test]
    fn error_body_has_openai_fields() {
        let body =
            serde_json::to_value(ApiError::invalid("n", "`n` must be at least 1").body()).unwrap();
        assert_eq!(body["error"]["type"], "invalid_request_error");
        assert_eq!(body["error"]["param"], "n");
        assert!(body["error"]["code"].is_null());
        assert_eq!(body["error"]["message"], "`n` must be at least 1");
    }
}
