//! Admin API errors: a status code and `{"error": {"code": "...", "message": "..."}}`.

use axum::Json;
use axum::http::StatusCode;
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
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: self.message,
                details: self.details,
            },
        };
        (status, Json(body)).into_response()
    }
}
