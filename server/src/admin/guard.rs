//! The admin API's manners: Host and Origin checks against DNS rebinding and cross-site
//! requests, the bearer token (constant-time) on every route but the probes', and the body
//! limit.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{Request, State};
use axum::http::{HeaderMap, Uri, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use supersocket_proto::{ErrorCode, MAX_ADMIN_BODY};

use super::AdminState;
use super::error::ApiError;
use crate::secret::constant_time_eq;

/// Routes open without a token, for probes.
const HEALTH_ROUTES: [&str; 3] = ["/livez", "/healthz", "/readyz"];

/// Checks every request before it reaches a handler.
pub async fn guard(State(state): State<AdminState>, request: Request, next: Next) -> Response {
    if let Err(error) = check(&state, request.uri(), request.headers()) {
        return error.into_response();
    }
    next.run(request).await
}

fn check(state: &AdminState, uri: &Uri, headers: &HeaderMap) -> Result<(), ApiError> {
    // A unix socket is out of a browser's reach: Host and Origin say nothing there.
    if let Some(own) = state.own {
        let host = match headers.get(header::HOST).map(|v| v.to_str()) {
            Some(Ok(host)) if host_allowed(host, own) => Some(host),
            Some(Ok(host)) => {
                return Err(ApiError::new(
                    ErrorCode::Forbidden,
                    format!("Host {host:?} is not this admin API's address (use {own} or localhost)"),
                ));
            }
            Some(Err(_)) => {
                return Err(ApiError::new(
                    ErrorCode::Forbidden,
                    "the Host header is not visible ASCII",
                ));
            }
            None => return Err(ApiError::new(ErrorCode::Forbidden, "a request needs a Host header")),
        };
        if let Some(origin) = headers.get(header::ORIGIN) {
            let origin = origin.to_str().unwrap_or("");
            let same = origin
                .strip_prefix("http://")
                .is_some_and(|authority| Some(authority) == host);
            if !same {
                return Err(ApiError::new(
                    ErrorCode::Forbidden,
                    format!("cross-origin request from {origin:?} refused"),
                ));
            }
        }
    }
    if !HEALTH_ROUTES.contains(&uri.path()) {
        authorized(state, headers)?;
    }
    let length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if length.is_some_and(|n| n > MAX_ADMIN_BODY as u64) {
        return Err(ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!("request body over {MAX_ADMIN_BODY} bytes"),
        ));
    }
    Ok(())
}

/// Whether the request carries the bearer token, when one is set.
pub fn authorized(state: &AdminState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(token) = state.host.admin_token() else {
        return Ok(());
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if constant_time_eq(given.as_bytes(), token.as_bytes()) {
        Ok(())
    } else {
        Err(ApiError::new(ErrorCode::Unauthorized, "missing or wrong bearer token"))
    }
}

/// A Host is fine when it names this machine's loopback, or is an IP literal this listener
/// answers on (a DNS name other than localhost is what a rebinding attack would send).
fn host_allowed(host: &str, own: SocketAddr) -> bool {
    let name = match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) && !name.ends_with(':') => name,
        _ => host,
    };
    let name = name.trim_start_matches('[').trim_end_matches(']');
    if name.eq_ignore_ascii_case("localhost") || name.to_ascii_lowercase().ends_with(".localhost") {
        return true;
    }
    match name.parse::<IpAddr>() {
        Ok(ip) => ip.is_loopback() || ip == own.ip() || own.ip().is_unspecified(),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        let own: SocketAddr = "127.0.0.1:2020".parse().unwrap();
        for ok in [
            "127.0.0.1:2020",
            "localhost:2020",
            "localhost",
            "[::1]:2020",
            "127.0.0.2",
            "app.localhost",
        ] {
            assert!(host_allowed(ok, own), "{ok}");
        }
        for bad in [
            "evil.example:2020",
            "evil.example",
            "10.0.0.1:2020",
            "localhost.evil.example",
        ] {
            assert!(!host_allowed(bad, own), "{bad}");
        }
        let any: SocketAddr = "0.0.0.0:2020".parse().unwrap();
        assert!(host_allowed("10.0.0.1:2020", any));
        assert!(!host_allowed("admin.example:2020", any));
    }

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"s3cret", b"s3cret"));
        assert!(!constant_time_eq(b"s3cre", b"s3cret"));
        assert!(!constant_time_eq(b"s3cret!", b"s3cret"));
        assert!(!constant_time_eq(b"", b"s3cret"));
    }
}
