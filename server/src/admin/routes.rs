//! The admin API's handlers, one small function per route.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use base64::Engine as _;
use serde::Deserialize;
use supersocket_proto::{
    ErrorBody, ErrorCode, HostInfo, Liveness, Readiness, ReloadReport, RouteInfo, SendReceipt, SendRequest, ServerInfo,
    SessionInfo,
};
use utoipa::IntoParams;

use super::AdminState;
use super::error::ApiError;
use crate::config::parse_duration;
use crate::host::ReloadError;
use crate::instance::Instance;
use crate::outcome::OpError;
use crate::session::SessionId;

/// Sessions listed when no `limit` is given.
const DEFAULT_SESSION_LIMIT: usize = 1000;

/// `GET /livez`, `GET /healthz`: 200 while the host runs.
#[utoipa::path(get, path = "/livez", tag = "probes", responses((status = 200, description = "The host runs.", body = Liveness)))]
pub async fn livez() -> Json<Liveness> {
    Json(Liveness { status: "ok".into() })
}

/// Query of `GET /readyz`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ReadyQuery {
    /// Present (any value): each check says why it passes or fails; needs the token.
    verbose: Option<String>,
}

/// `GET /readyz`: 200 when every autostart server runs and the host is not stopping, else 503.
/// Open to probes; `?verbose` (instance names, states and errors) needs the token.
#[utoipa::path(get, path = "/readyz", tag = "probes", params(ReadyQuery), responses(
    (status = 200, description = "Every autostart server runs and the host is not stopping.", body = Readiness),
    (status = 503, description = "Some check fails.", body = Readiness),
    (status = 401, description = "`verbose` without the token.", body = ErrorBody),
))]
pub async fn readyz(
    State(state): State<AdminState>,
    Query(query): Query<ReadyQuery>,
    headers: HeaderMap,
) -> Result<(StatusCode, Json<Readiness>), ApiError> {
    if query.verbose.is_some() {
        super::guard::authorized(&state, &headers)?;
    }
    let readiness = state.host.readiness(query.verbose.is_some());
    let status = if readiness.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    Ok((status, Json(readiness)))
}

/// `GET /api/v1/host`.
#[utoipa::path(get, path = "/api/v1/host", tag = "host", responses((status = 200, description = "The host.", body = HostInfo)))]
pub async fn host_info(State(state): State<AdminState>) -> Json<HostInfo> {
    Json(state.host.info())
}

/// `GET /api/v1/servers`: every server in config order.
#[utoipa::path(get, path = "/api/v1/servers", tag = "servers", responses(
    (status = 200, description = "Every server, in config order.", body = Vec<ServerInfo>),
))]
pub async fn list_servers(State(state): State<AdminState>) -> Json<Vec<ServerInfo>> {
    Json(
        state
            .host
            .instances()
            .iter()
            .map(|i| state.host.server_info(i))
            .collect(),
    )
}

/// `GET /api/v1/servers/{name}`.
#[utoipa::path(get, path = "/api/v1/servers/{name}", tag = "servers", params(("name" = String, Path, description = "The server.", example = "EchoServerA")), responses(
    (status = 200, description = "The server.", body = ServerInfo),
    (status = 404, description = "No such server.", body = ErrorBody),
))]
pub async fn get_server(
    State(state): State<AdminState>,
    Path(name): Path<String>,
) -> Result<Json<ServerInfo>, ApiError> {
    let instance = instance(&state, &name)?;
    Ok(Json(state.host.server_info(&instance)))
}

fn instance(state: &AdminState, name: &str) -> Result<Arc<Instance>, ApiError> {
    state.host.instance(name).ok_or_else(|| ApiError::no_server(name))
}

/// Instance operations are refused once the host is shutting down.
fn operable(state: &AdminState, name: &str) -> Result<Arc<Instance>, ApiError> {
    if state.host.is_stopping() {
        return Err(ApiError::new(ErrorCode::Conflict, "the host is shutting down"));
    }
    instance(state, name)
}

/// Query of start, stop and restart.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StopQuery {
    /// Stop and restart: how long sessions may drain (`500ms`, `10s`, `5m`); the config's
    /// `shutdown_timeout` when not given.
    timeout: Option<String>,
    /// Also record the outcome as the server's `autostart` in the config (start and stop).
    save: Option<bool>,
}

impl StopQuery {
    /// The drain bound asked for, else the config's `shutdown_timeout`.
    fn timeout(&self, state: &AdminState) -> Result<Duration, ApiError> {
        match &self.timeout {
            Some(text) => parse_duration(text).map_err(|e| ApiError::bad_request(format!("timeout: {e}"))),
            None => Ok(state.host.shutdown_timeout()),
        }
    }
}

/// `POST /api/v1/servers/{name}/start?save=true`: the server once running, or
/// `start_failed`; with `save`, its `autostart` is first recorded as true (a record that cannot
/// be made leaves the server as it was).
#[utoipa::path(post, path = "/api/v1/servers/{name}/start", tag = "servers", params(("name" = String, Path, description = "The server.", example = "EchoServerA"), StopQuery,
        ("If-Match" = Option<String>, Header, description = "With `save`: the config's `ETag`; 412 if it changed since.")), responses(
    (status = 200, description = "The server, running (a running server is left as it is).", body = ServerInfo),
    (status = 404, description = "No such server.", body = ErrorBody),
    (status = 409, description = "The host is shutting down, or `save` cannot record a replica.", body = ErrorBody),
    (status = 412, description = "`save` with an `If-Match` that is not the config's `ETag`.", body = ErrorBody),
    (status = 500, description = "`start_failed`, with the cause; or `save` could not write the config.", body = ErrorBody),
))]
pub async fn start(
    State(state): State<AdminState>,
    Path(name): Path<String>,
    Query(query): Query<StopQuery>,
    headers: HeaderMap,
) -> Result<Json<ServerInfo>, ApiError> {
    let instance = operable(&state, &name)?;
    if query.save == Some(true) {
        super::changes::save_autostart(&state, &headers, &name, true).await?;
    }
    let started = instance.start().await;
    state.host.settle().await;
    started.map_err(|e| ApiError::new(ErrorCode::StartFailed, e.0))?;
    Ok(Json(instance.info()))
}

/// `POST /api/v1/servers/{name}/stop?timeout=5s&save=true`: the server once stopped; with
/// `save`, its `autostart` is first recorded as false (a record that cannot be made leaves the
/// server as it was).
#[utoipa::path(post, path = "/api/v1/servers/{name}/stop", tag = "servers", params(("name" = String, Path, description = "The server.", example = "EchoServerA"), StopQuery,
        ("If-Match" = Option<String>, Header, description = "With `save`: the config's `ETag`; 412 if it changed since.")), responses(
    (status = 200, description = "The server, stopped.", body = ServerInfo),
    (status = 404, description = "No such server.", body = ErrorBody),
    (status = 409, description = "The host is shutting down, or `save` cannot record a replica.", body = ErrorBody),
    (status = 412, description = "`save` with an `If-Match` that is not the config's `ETag`.", body = ErrorBody),
    (status = 500, description = "`save` could not write the config.", body = ErrorBody),
))]
pub async fn stop(
    State(state): State<AdminState>,
    Path(name): Path<String>,
    Query(query): Query<StopQuery>,
    headers: HeaderMap,
) -> Result<Json<ServerInfo>, ApiError> {
    let instance = operable(&state, &name)?;
    let timeout = query.timeout(&state)?;
    if query.save == Some(true) {
        super::changes::save_autostart(&state, &headers, &name, false).await?;
    }
    instance.stop(timeout).await;
    state.host.settle().await;
    Ok(Json(instance.info()))
}

/// `POST /api/v1/servers/{name}/restart`: the server once running again.
#[utoipa::path(post, path = "/api/v1/servers/{name}/restart", tag = "servers", params(("name" = String, Path, description = "The server.", example = "EchoServerA"), StopQuery), responses(
    (status = 200, description = "The server, running again.", body = ServerInfo),
    (status = 404, description = "No such server.", body = ErrorBody),
    (status = 409, description = "The host is shutting down.", body = ErrorBody),
    (status = 500, description = "`start_failed`, with the cause.", body = ErrorBody),
))]
pub async fn restart(
    State(state): State<AdminState>,
    Path(name): Path<String>,
    Query(query): Query<StopQuery>,
) -> Result<Json<ServerInfo>, ApiError> {
    let instance = operable(&state, &name)?;
    let timeout = query.timeout(&state)?;
    let restarted = instance.restart(timeout).await;
    state.host.settle().await;
    restarted.map_err(|e| ApiError::new(ErrorCode::StartFailed, e.0))?;
    Ok(Json(instance.info()))
}

/// Query of `GET .../sessions`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SessionsQuery {
    /// The most sessions to list (1000 when not given).
    #[param(value_type = Option<u64>, format = "uint64", minimum = 0)]
    limit: Option<String>,
}

/// `GET /api/v1/servers/{name}/sessions?limit=N`: open sessions, oldest first.
#[utoipa::path(get, path = "/api/v1/servers/{name}/sessions", tag = "sessions", params(("name" = String, Path, description = "The server.", example = "EchoServerA"), SessionsQuery), responses(
    (status = 200, description = "Its open sessions, oldest first.", body = Vec<SessionInfo>),
    (status = 404, description = "No such server.", body = ErrorBody),
    (status = 409, description = "The server is not running.", body = ErrorBody),
    (status = 500, description = "The server refused.", body = ErrorBody),
    (status = 503, description = "The server did not answer in time (its agent is frozen or gone).", body = ErrorBody),
))]
pub async fn sessions(
    State(state): State<AdminState>,
    Path(name): Path<String>,
    Query(query): Query<SessionsQuery>,
) -> Result<Json<Vec<SessionInfo>>, ApiError> {
    let instance = instance(&state, &name)?;
    let limit = match query.limit {
        Some(text) => text
            .parse()
            .map_err(|_| ApiError::bad_request(format!("limit {text:?} is not a count")))?,
        None => DEFAULT_SESSION_LIMIT,
    };
    let sessions = instance.sessions(limit).await;
    Ok(Json(sessions.map_err(|e| op_error(&name, None, e))?))
}

fn session_id(name: &str, id: &str) -> Result<SessionId, ApiError> {
    id.parse().map_err(|_| ApiError::no_session(name, id))
}

/// `POST /api/v1/servers/{name}/sessions/{id}/send`: `{"text": ...}` or `{"base64": ...}`; 202.
#[utoipa::path(post, path = "/api/v1/servers/{name}/sessions/{id}/send", tag = "sessions", params(("name" = String, Path, description = "The server.", example = "EchoServerA"), ("id" = String, Path, description = "The session's id.")),
    request_body(content = SendRequest, description = "Exactly one of `text` and `base64`."),
    responses(
        (status = 202, description = "The bytes are queued for the session.", body = SendReceipt),
        (status = 404, description = "No such server or session.", body = ErrorBody),
        (status = 409, description = "The server is not running, or the session's queue is full.", body = ErrorBody),
        (status = 500, description = "The server refused.", body = ErrorBody),
        (status = 503, description = "The server did not answer in time (its agent is frozen or gone).", body = ErrorBody),
    ))]
pub async fn send(
    State(state): State<AdminState>,
    Path((name, id)): Path<(String, String)>,
    body: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    let instance = instance(&state, &name)?;
    let session = session_id(&name, &id)?;
    let bytes = message(&body)?;
    let length = bytes.len();
    let sent = instance.send_to(session, bytes.into()).await;
    sent.map_err(|e| op_error(&name, Some(&id), e))?;
    Ok((
        StatusCode::ACCEPTED,
        Json(SendReceipt {
            session: id,
            bytes: length,
        }),
    ))
}

/// The bytes a send's body asks for: `{"text": ...}` or `{"base64": ...}`.
pub(super) fn message(body: &[u8]) -> Result<Vec<u8>, ApiError> {
    let request: SendRequest = serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("body: {e}")))?;
    match (request.text, request.base64) {
        (Some(text), None) => Ok(text.into_bytes()),
        (None, Some(encoded)) => base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(|e| ApiError::bad_request(format!("base64: {e}"))),
        _ => Err(ApiError::bad_request("give exactly one of `text` and `base64`")),
    }
}

/// Reads a send's body as a client may send it, and checks what must hold: the bytes it asks
/// for, or a 400; never a panic. For the property tests and the fuzz targets.
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) fn check_send_body(body: &[u8]) {
    if let Err(error) = message(body) {
        assert_eq!(error.status(), StatusCode::BAD_REQUEST);
    }
}

/// The answer to an operation on a server that did not succeed.
fn op_error(server: &str, session: Option<&str>, error: OpError) -> ApiError {
    match error {
        OpError::NoSession => ApiError::no_session(server, session.unwrap_or_default()),
        OpError::NotRunning => ApiError::new(ErrorCode::Conflict, format!("server {server:?} is not running")),
        OpError::Unanswered => ApiError::new(
            ErrorCode::Unavailable,
            format!("server {server:?} did not answer (its agent is frozen, overloaded or gone)"),
        ),
        e @ OpError::QueueFull => ApiError::new(ErrorCode::Conflict, e.to_string()),
        OpError::Refused(message) => ApiError::new(ErrorCode::Internal, format!("server {server:?}: {message}")),
    }
}

/// `DELETE /api/v1/servers/{name}/sessions/{id}`: closes it (`local_closing`); 204.
#[utoipa::path(delete, path = "/api/v1/servers/{name}/sessions/{id}", tag = "sessions", params(("name" = String, Path, description = "The server.", example = "EchoServerA"), ("id" = String, Path, description = "The session's id.")), responses(
    (status = 204, description = "The session is closed (`local_closing`)."),
    (status = 404, description = "No such server or session.", body = ErrorBody),
    (status = 409, description = "The server is not running.", body = ErrorBody),
    (status = 500, description = "The server refused.", body = ErrorBody),
    (status = 503, description = "The server did not answer in time (its agent is frozen or gone).", body = ErrorBody),
))]
pub async fn kick(
    State(state): State<AdminState>,
    Path((name, id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let instance = instance(&state, &name)?;
    let kicked = instance.kick(session_id(&name, &id)?).await;
    kicked.map_err(|e| op_error(&name, Some(&id), e))?;
    Ok(StatusCode::NO_CONTENT)
}

/// Query of `GET /api/v1/route/{type}`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RouteQuery {
    /// The routing key (a uid, a room).
    #[param(required = true, example = "room-1")]
    key: Option<String>,
}

/// `GET /api/v1/route/{type}?key=K`: the instance the dispatcher picks for the key.
#[utoipa::path(get, path = "/api/v1/route/{type}", tag = "servers",
    params(("type" = String, Path, description = "A server type.", example = "command"), RouteQuery),
    responses(
        (status = 200, description = "The instance picked: `crc32(key) % n` over the running ones of the type.", body = RouteInfo),
        (status = 404, description = "No running server of that type.", body = ErrorBody),
    ))]
pub async fn route(
    State(state): State<AdminState>,
    Path(server_type): Path<String>,
    Query(query): Query<RouteQuery>,
) -> Result<Json<RouteInfo>, ApiError> {
    let key = query
        .key
        .ok_or_else(|| ApiError::bad_request("give the routing key as ?key=..."))?;
    let route = state.host.route(&server_type, &key).ok_or_else(|| {
        ApiError::new(
            ErrorCode::NotFound,
            format!("no running server of type {server_type:?}"),
        )
    })?;
    Ok(Json(RouteInfo {
        server_type,
        key,
        server: route.instance.name().to_owned(),
        index: route.index,
        of: route.of,
    }))
}

/// Query of `POST /api/v1/reload`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ReloadQuery {
    /// Accept a config without servers (every server is removed).
    allow_empty: Option<bool>,
}

/// `POST /api/v1/reload`: what changed; 400 with every error of an invalid file (nothing
/// changed); 400 for a file without servers unless `?allow_empty=true`; 500 `start_failed`
/// listing each change that could not be applied (those servers keep their old config).
#[utoipa::path(post, path = "/api/v1/reload", tag = "config", params(ReloadQuery), responses(
    (status = 200, description = "What changed.", body = ReloadReport),
    (status = 400, description = "The file is invalid (every error in `details`), or has no servers; nothing changed.", body = ErrorBody),
    (status = 409, description = "The host is shutting down.", body = ErrorBody),
    (status = 500, description = "`start_failed`: each change that could not be applied, in `details`.", body = ErrorBody),
))]
pub async fn reload(
    State(state): State<AdminState>,
    Query(query): Query<ReloadQuery>,
) -> Result<Json<ReloadReport>, ApiError> {
    match state.host.reload(query.allow_empty.unwrap_or(false)).await {
        Ok(report) => Ok(Json(report)),
        Err(ReloadError::Invalid(errors)) => Err(ApiError::with_details(
            ErrorCode::BadRequest,
            format!("the config has {} error(s); nothing was changed", errors.0.len()),
            errors.0.iter().map(ToString::to_string).collect(),
        )),
        Err(ReloadError::Empty) => Err(ApiError::bad_request(
            "the config has no servers; nothing was changed (reload with ?allow_empty=true to remove them all)",
        )),
        Err(ReloadError::ShuttingDown) => Err(ApiError::new(ErrorCode::Conflict, "the host is shutting down")),
        Err(ReloadError::Unapplied { report, failures }) => Err(ApiError::with_details(
            ErrorCode::StartFailed,
            format!(
                "{} change(s) could not be applied and were left as they were; applied: {}",
                failures.len(),
                applied(&report)
            ),
            failures,
        )),
    }
}

/// What a partly applied reload did, in a few words.
fn applied(report: &ReloadReport) -> String {
    let groups = [
        ("added", &report.added),
        ("removed", &report.removed),
        ("changed", &report.changed),
    ];
    let done: Vec<String> = groups
        .iter()
        .filter(|(_, names)| !names.is_empty())
        .map(|(what, names)| format!("{what} {}", names.join(", ")))
        .collect();
    if done.is_empty() {
        "nothing".into()
    } else {
        done.join("; ")
    }
}

/// `GET /metrics`: Prometheus text.
#[utoipa::path(get, path = "/metrics", tag = "probes", responses(
    (status = 200, description = "Prometheus text exposition (0.0.4): per server state, sessions, accepted, rejected, bytes, packages; the host's uptime.",
        body = String, content_type = "text/plain"),
))]
pub async fn metrics(State(state): State<AdminState>) -> impl IntoResponse {
    let body = super::metrics::render(&state.host);
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
}

/// Any other path.
pub async fn not_found() -> ApiError {
    ApiError::new(ErrorCode::NotFound, "no such route")
}

/// A known path with the wrong method.
pub async fn method_not_allowed() -> ApiError {
    ApiError::new(ErrorCode::MethodNotAllowed, "this route does not take that method")
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Any body gets the bytes it asks for or a 400, never a panic.
        #[test]
        fn any_send_body_is_read_or_refused(body in proptest::collection::vec(any::<u8>(), 0..512)) {
            check_send_body(&body);
        }

        #[test]
        fn text_and_base64_bodies_give_their_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512), text in ".{0,64}") {
            let encoded = base64::engine::general_purpose::STANDARD.encode(&bytes);
            let body = serde_json::json!({ "base64": encoded }).to_string();
            prop_assert_eq!(message(body.as_bytes()).unwrap(), bytes);
            let body = serde_json::json!({ "text": text }).to_string();
            prop_assert_eq!(message(body.as_bytes()).unwrap(), text.into_bytes());
        }
    }
}
