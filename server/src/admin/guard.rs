//! The admin API's manners: Host and Origin checks against DNS rebinding and cross-site
//! requests, a bearer token (constant-time) on every route but the probes' and the dashboard's
//! page, whose role must allow the request, the body limit, and a log line for every write with
//! the token's name.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, Uri, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use supersocket_proto::{ErrorCode, MAX_ADMIN_BODY};

use super::AdminState;
use super::error::ApiError;
use crate::config::Role;
use crate::secret::constant_time_eq;

/// The probes' routes: open without a token.
const HEALTH_ROUTES: [&str; 3] = ["/livez", "/healthz", "/readyz"];

/// Whether `path` is open without a token: the probes; the dashboard's page, which holds no
/// data (the requests it makes carry the token); and the OpenAPI document, which describes
/// routes, never data.
pub(super) fn open_without_token(path: &str) -> bool {
    HEALTH_ROUTES.contains(&path) || path == "/" || path == super::openapi::PATH
}

/// Checks every request before it reaches a handler; logs every write with who asked, what
/// (method, path and query as sent) and what came of it, even when the client left before the
/// answer, and every request refused for its token.
pub async fn guard(State(state): State<AdminState>, request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path = request.uri().path_and_query().map_or("/", |p| p.as_str()).to_owned();
    let mut caller = None;
    let write = method != Method::GET && method != Method::HEAD;
    if let Err(error) = check(&state, &method, request.uri(), request.headers(), &mut caller) {
        let response = error.into_response();
        let status = response.status().as_u16();
        let token = caller.as_ref().map_or("-", |caller| caller.name.as_str());
        if write {
            tracing::info!(target: AUDIT, token, %method, path, status, "admin write");
        } else if status == 401 || status == 403 {
            tracing::info!(target: AUDIT, token, %method, path, status, "admin read refused");
        }
        return response;
    }
    if !write {
        return next.run(request).await;
    }
    let mut audit = Audit {
        token: caller.map_or_else(|| "-".to_owned(), |caller| caller.name),
        method,
        path,
        status: None,
    };
    let response = next.run(request).await;
    audit.status = Some(response.status().as_u16());
    response
}

/// The log target of the audit lines, for routing them apart.
const AUDIT: &str = "supersocket::audit";

/// A write let through, logged when its answer is made or when the client leaves first.
struct Audit {
    token: String,
    method: Method,
    /// Path and query, as sent.
    path: String,
    status: Option<u16>,
}

impl Drop for Audit {
    fn drop(&mut self) {
        let (token, method, path) = (&self.token, &self.method, &self.path);
        match self.status {
            Some(status) => tracing::info!(target: AUDIT, token, %method, path, status, "admin write"),
            None => tracing::info!(
                target: AUDIT,
                token,
                %method,
                path,
                "admin write: the client left before the answer (an operation begun goes on to its end)"
            ),
        }
    }
}

/// Who a request comes from: the name of its token, and its role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub name: String,
    pub role: Role,
}

/// Whether the request may reach its route; `caller` is set once the token is known (it stays
/// `None` for a probe).
fn check(
    state: &AdminState,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    caller: &mut Option<Caller>,
) -> Result<(), ApiError> {
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
    if !open_without_token(uri.path()) {
        let known = caller.insert(authorized(state, headers)?);
        let needed = needed(method, uri.path());
        if known.role < needed {
            return Err(ApiError::new(
                ErrorCode::Forbidden,
                format!(
                    "token {:?} has the role {}; {method} {} needs {}",
                    known.name,
                    known.role.as_str(),
                    uri.path(),
                    needed.as_str()
                ),
            ));
        }
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

/// The role a request needs: reading takes `read`; start, stop, restart, reload, send and kick
/// take `operate`; every other write takes `admin`.
fn needed(method: &Method, path: &str) -> Role {
    if method == Method::GET || method == Method::HEAD {
        return Role::Read;
    }
    let parts: Vec<&str> = path.trim_start_matches("/api/v1/").split('/').collect();
    let operates = matches!(
        (method, parts.as_slice()),
        (&Method::POST, ["reload"])
            | (&Method::POST, ["servers", _, "start" | "stop" | "restart"])
            | (&Method::DELETE, ["servers", _, "sessions", _])
            | (&Method::POST, ["servers", _, "sessions", _, "send"])
    );
    if operates { Role::Operate } else { Role::Admin }
}

/// The caller a request's bearer token names; with no token set, anyone, as `admin`.
pub fn authorized(state: &AdminState, headers: &HeaderMap) -> Result<Caller, ApiError> {
    let admin = state.host.admin_config();
    if !admin.requires_token() {
        return Ok(Caller {
            name: "-".to_owned(),
            role: Role::Admin,
        });
    }
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let single = admin.token.iter().map(|token| ("admin", token.as_str(), Role::Admin));
    let named = admin.tokens.iter().map(|t| (t.name.as_str(), t.token.as_str(), t.role));
    // Every token is compared, so the time taken does not tell which one came close.
    let mut found = None;
    for (name, token, role) in single.chain(named) {
        if constant_time_eq(given.as_bytes(), token.as_bytes()) && found.is_none() {
            found = Some(Caller {
                name: name.to_owned(),
                role,
            });
        }
    }
    found.ok_or_else(|| ApiError::new(ErrorCode::Unauthorized, "missing or wrong bearer token"))
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
    fn each_route_needs_its_role() {
        let path = |p: &str| format!("/api/v1/{p}");
        assert_eq!(needed(&Method::GET, &path("servers/A/sessions")), Role::Read);
        assert_eq!(needed(&Method::POST, &path("servers/A/stop")), Role::Operate);
        assert_eq!(needed(&Method::POST, &path("reload")), Role::Operate);
        assert_eq!(needed(&Method::DELETE, &path("servers/A/sessions/7")), Role::Operate);
        assert_eq!(needed(&Method::POST, &path("servers/A/sessions/7/send")), Role::Operate);
        assert_eq!(needed(&Method::DELETE, &path("servers/A")), Role::Admin);
        assert_eq!(needed(&Method::PUT, &path("config")), Role::Admin);
        assert_eq!(needed(&Method::POST, &path("servers")), Role::Admin);
    }

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"s3cret", b"s3cret"));
        assert!(!constant_time_eq(b"s3cre", b"s3cret"));
        assert!(!constant_time_eq(b"s3cret!", b"s3cret"));
        assert!(!constant_time_eq(b"", b"s3cret"));
    }
}
