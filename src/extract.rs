//! The JSON body extractor. axum's own `Json` answers bad bodies in plain
//! text with 415/422; OpenAI clients expect 400 with OpenAI's error body,
//! and a message that names the field (`messages[0].role`), so bodies are
//! parsed here with serde_path_to_error. Reading the body has a deadline
//! (`--body-read-timeout`), so a client trickling it cannot hold a request
//! open: 408.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use crate::error::ApiError;
use crate::openai::common::SamplingRequest;
use crate::state::AppState;

/// A request body parsed as JSON into `T`; every failure is an [`ApiError`].
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let limit = state.settings().body_read_timeout;
        let read = tokio::time::timeout(limit, Bytes::from_request(req, state));
        let bytes = read.await.map_err(|_| ApiError::body_timeout(limit))?;
        let bytes = bytes.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::too_large(state.settings().max_body_size)
            } else {
                ApiError::bad_request(format!(
                    "cannot read the request body: {}",
                    rejection.body_text()
                ))
            }
        })?;
        parse_json(&bytes).map(JsonBody)
    }
}

/// Parses `bytes` as one JSON value of type `T`.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request(
            "the request body is empty; expected a JSON object",
        ));
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_data() && path != "." {
            field_error(&path, &inner)
        } else if inner.is_data() {
            let message = format!("invalid request body: {inner}");
            match missing_field(&inner.to_string()) {
                Some(field) => ApiError::invalid(field, message),
                None => {
                    flattened_field_error(bytes).unwrap_or_else(|| ApiError::bad_request(message))
                }
            }
        } else {
            ApiError::bad_request(format!("the request body is not valid JSON: {inner}"))
        }
    })?;
    de.end()
        .map_err(|e| ApiError::bad_request(format!("the request body is not valid JSON: {e}")))?;
    Ok(value)
}

fn field_error(path: &str, inner: &serde_json::Error) -> ApiError {
    ApiError::invalid(path, format!("`{path}`: {inner}"))
}

/// serde reports an error inside a `#[serde(flatten)]` struct without its
/// path. The sampling fields are the one flattened part of our bodies, so
/// they are parsed alone to name the field at fault.
fn flattened_field_error(bytes: &[u8]) -> Option<ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let e = serde_path_to_error::deserialize::<_, SamplingRequest>(&mut de).err()?;
    let path = e.path().to_string();
    let inner = e.into_inner();
    (inner.is_data() && path != ".").then(|| field_error(&path, &inner))
}

/// The field named by serde's "missing field `x`" message.
fn missing_field(message: &str) -> Option<String> {
    let rest = message.strip_prefix("missing field `")?;
    Some(rest[..rest.find('`')?].to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Body {
        name: String,
        items: Option<Vec<Item>>,
    }

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Item {
        size: u32,
    }

    #[test]
    fn wrong_type_names_the_nested_field() {
        let e = parse_json::<Body>(br#"{"name": "a", "items": [{"size": "big"}]}"#).unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert_eq!(e.detail.param.as_deref(), Some("items[0].size"));
        assert!(e
            .detail
            .message
            .starts_with("`items[0].size`: invalid type"));
    }

    #[test]
    fn syntax_errors_and_trailing_garbage_are_bad_requests() {
        for body in [&b"{"[..], b"{\"name\": \"a\"} x", b"   ", b"[1, 2]"] {
            let e = parse_json::<Body>(body).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{body:?}");
        }
        let e = parse_json::<Body>(b"{}").unwrap_err();
        assert!(e.detail.message.contains("missing field `name`"));
    }
}
