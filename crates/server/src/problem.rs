//! Every error answered as `application/problem+json` (RFC 9457), mapped in this one place, with a
//! stable `type` per error.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use marketgov_engine::Error as EngineError;
use serde_json::json;

/// The base of every problem `type`.
pub const PROBLEM_BASE: &str = "https://marketgov.dev/problems/";

/// An error answer.
#[derive(Debug)]
pub struct Problem {
    /// The HTTP status.
    pub status: StatusCode,
    /// The stable code (the last segment of `type`).
    pub code: &'static str,
    /// A sentence for humans.
    pub detail: String,
    /// Seconds to wait before retrying, for overload.
    pub retry_after: Option<u32>,
    /// Further members of the problem object (RFC 9457 extension members).
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl Problem {
    /// A problem with `status`, `code` and `detail`.
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            code,
            detail: detail.into(),
            retry_after: None,
            extra: serde_json::Map::new(),
        }
    }

    /// Adds an extension member.
    #[must_use]
    pub fn with(mut self, name: &str, value: serde_json::Value) -> Self {
        self.extra.insert(name.to_owned(), value);
        self
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let mut body = json!({
            "type": format!("{PROBLEM_BASE}{}", self.code),
            "title": self.code.replace('_', " "),
            "status": self.status.as_u16(),
            "detail": self.detail,
        });
        if let Some(obj) = body.as_object_mut() {
            obj.extend(self.extra);
        }
        let mut response = (self.status, body.to_string()).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(seconds) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

impl From<EngineError> for Problem {
    fn from(e: EngineError) -> Self {
        let detail = e.to_string();
        match e {
            EngineError::Invalid(_) => {
                Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_input", detail)
            }
            EngineError::KeyReused { .. } => Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency_key_reused",
                detail,
            ),
            EngineError::KeyInFlight { .. } => {
                Problem::new(StatusCode::CONFLICT, "idempotency_key_in_flight", detail)
            }
            EngineError::BadKey => {
                Problem::new(StatusCode::BAD_REQUEST, "invalid_idempotency_key", detail)
            }
            EngineError::Overloaded(_) => Problem {
                retry_after: Some(1),
                ..Problem::new(StatusCode::TOO_MANY_REQUESTS, "overloaded", detail)
            },
            EngineError::Store(_) | EngineError::ShuttingDown => Problem {
                retry_after: Some(5),
                ..Problem::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", detail)
            },
            EngineError::DecisionPanicked { .. } => Problem::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "parked_for_review",
                detail,
            ),
            _ => Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", detail),
        }
    }
}
