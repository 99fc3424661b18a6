//! Admin API errors: a status code and `{"error": {"code": "...", "message": "..."}}`.

use axum::Json;
use axum::extract::Request;
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use supersocket_proto::{ErrorBody, ErrorCode, ErrorDetail};

/// An error answer of the admin API.
#[derive(Debug)]
pub struct ApiError {
    code: ErrorCode,
    message: String,
    details: Vec<String>,
}

impl ApiError {
    /// An error of `code` with a message a user can act on.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            details: Vec::new(),
        }
    }

    /// 400 with one line per problem.
    pub fn with_details(code: ErrorCode, message: impl Into<String>, details: Vec<String>) -> Self {
        Self {
            code,
            message: message.into(),
            details,
        }
    }

    /// 400.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, message)
    }

    /// 404 for a server that does not exist.
    pub fn no_server(name: &str) -> Self {
        Self::new(ErrorCode::NotFound, format!("no server named {name:?}"))
    }

    /// 404 for a session that does not exist.
    pub fn no_session(server: &str, id: &str) -> Self {
        Self::new(ErrorCode::NotFound, format!("server {server:?} has no session {id:?}"))
    }

    /// An error answered with `status` by what lies below the handlers (the HTTP parser, a
    /// body limit), in the envelope.
    pub fn for_status(status: StatusCode, message: impl Into<String>) -> Self {
        let code = match status.as_u16() {
            401 => ErrorCode::Unauthorized,
            403 => ErrorCode::Forbidden,
            404 => ErrorCode::NotFound,
            405 => ErrorCode::MethodNotAllowed,
            409 => ErrorCode::Conflict,
            413 => ErrorCode::PayloadTooLarge,
            431 => ErrorCode::HeadersTooLarge,
            503 => ErrorCode::Unavailable,
            400..500 => ErrorCode::BadRequest,
            _ => ErrorCode::Internal,
        };
        Self::new(code, message)
    }

    /// Its status code.
    pub fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    /// Its body, the envelope of every error answer.
    pub fn body(self) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: self.message,
                details: self.details,
            },
        }
    }
}

/// Gives every error answer the envelope: those that come from below the handlers (a body
/// over the limit or too slow, a path that is not UTF-8) are plain text, and become JSON here.
pub async fn envelope(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    let json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || json {
        return response;
    }
    let text = axum::body::to_bytes(response.into_body(), 1024)
        .await
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let message = match text.trim() {
        "" => status.canonical_reason().unwrap_or("error").to_owned(),
        text => text.to_owned(),
    };
    (status, Json(ApiError::for_status(status, message).body())).into_response()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status(), Json(self.body())).into_response()
    }
}
