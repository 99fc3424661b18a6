//! The admin API's routes that change the config (SPEC §10): the config as JSON with its
//! `ETag`, servers added, replaced and removed, a whole config applied or checked. Bodies are
//! JSON, or TOML with `Content-Type: application/toml`.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Map, Value};
use supersocket_proto::{ConfigCheck, ErrorBody, ErrorCode, ReloadReport, ServerInfo};
use utoipa::IntoParams;

use super::AdminState;
use super::error::ApiError;
use crate::config::{EditError, parse_body, parse_duration};
use crate::host::{ChangeError, Changed, Edit};

/// `GET /api/v1/config`: the config in the file's schema, secrets masked, with its `ETag`.
#[utoipa::path(get, path = "/api/v1/config", tag = "config", responses(
    (status = 200, description = "The effective config, secrets shown as `***`.", body = super::openapi::ConfigSpec,
        headers(("ETag" = String, description = "The config's tag, for `If-Match`."))),
))]
pub async fn get_config(State(state): State<AdminState>) -> Response {
    let (config, etag) = state.host.config_json();
    with_etag(Json(config), &etag)
}

/// Query of the writes that stop servers.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct WriteQuery {
    /// How long the sessions of a server stopped by the change may drain (`500ms`, `10s`,
    /// `5m`); the config's `shutdown_timeout` when not given.
    timeout: Option<String>,
    /// A whole config: accept one without servers (every server is removed).
    allow_empty: Option<bool>,
}

impl WriteQuery {
    fn timeout(&self) -> Result<Option<std::time::Duration>, ApiError> {
        self.timeout
            .as_deref()
            .map(|text| parse_duration(text).map_err(|e| ApiError::bad_request(format!("timeout: {e}"))))
            .transpose()
    }
}

/// `POST /api/v1/servers`: 201 with the new server (started if `autostart`).
#[utoipa::path(post, path = "/api/v1/servers", tag = "config", params(("If-Match" = Option<String>, Header, description = "The config's `ETag` the change was made against; 412 if it changed since.")),
    request_body(description = "One server's config (SPEC §3), as JSON or as TOML with `Content-Type: application/toml`.",
        content((super::openapi::ServerSpec = "application/json"), (String = "application/toml"))),
    responses(
        (status = 201, description = "The new server, started if `autostart`.", body = ServerInfo, headers(("ETag" = String, description = "The config's tag after the change, for `If-Match`."))),
        (status = 400, description = "The config is invalid (every error in `details`), or a listener cannot be bound; nothing changed.", body = ErrorBody),
        (status = 409, description = "The name is taken, the file changed on disk, or the host is shutting down.", body = ErrorBody),
        (status = 412, description = "`If-Match` is not the config's `ETag`.", body = ErrorBody),
        (status = 500, description = "The change could not be written or applied.", body = ErrorBody),
    ))]
pub async fn add_server(
    State(state): State<AdminState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let server = body_table(&headers, &body)?;
    let name = server
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let changed = change(&state, &headers, Edit::Add(server), None).await?;
    let info = server_info(&state, &name)?;
    Ok((StatusCode::CREATED, with_etag(Json(info), &changed.etag)).into_response())
}

/// `PUT /api/v1/servers/{name}`: the server with its new config.
#[utoipa::path(put, path = "/api/v1/servers/{name}", tag = "config", params(("name" = String, Path, description = "The server.", example = "EchoServerA"), WriteQuery, ("If-Match" = Option<String>, Header, description = "The config's `ETag` the change was made against; 412 if it changed since.")),
    request_body(description = "One server's config (SPEC §3), as JSON or as TOML with `Content-Type: application/toml`.",
        content((super::openapi::ServerSpec = "application/json"), (String = "application/toml"))),
    responses(
        (status = 200, description = "The server with its new config, applied as a reload of it is.", body = ServerInfo, headers(("ETag" = String, description = "The config's tag after the change, for `If-Match`."))),
        (status = 400, description = "The config is invalid (every error in `details`), or a listener cannot be bound; nothing changed.", body = ErrorBody),
        (status = 404, description = "No such server.", body = ErrorBody),
        (status = 409, description = "The server is a replica, the file changed on disk, or the host is shutting down.", body = ErrorBody),
        (status = 412, description = "`If-Match` is not the config's `ETag`.", body = ErrorBody),
        (status = 500, description = "The change could not be written or applied.", body = ErrorBody),
    ))]
pub async fn replace_server(
    State(state): State<AdminState>,
    Path(name): Path<String>,
    Query(query): Query<WriteQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let server = body_table(&headers, &body)?;
    let changed = change(&state, &headers, Edit::Replace(name.clone(), server), query.timeout()?).await?;
    Ok(with_etag(Json(server_info(&state, &name)?), &changed.etag))
}

/// `DELETE /api/v1/servers/{name}?timeout=DUR`: drains it, then removes it; 204.
#[utoipa::path(delete, path = "/api/v1/servers/{name}", tag = "config", params(("name" = String, Path, description = "The server.", example = "EchoServerA"), WriteQuery, ("If-Match" = Option<String>, Header, description = "The config's `ETag` the change was made against; 412 if it changed since.")), responses(
    (status = 204, description = "The server drained and was removed.", headers(("ETag" = String, description = "The config's tag after the change, for `If-Match`."))),
    (status = 400, description = "A bad `timeout`.", body = ErrorBody),
    (status = 404, description = "No such server.", body = ErrorBody),
    (status = 409, description = "The server is a replica, the file changed on disk, or the host is shutting down.", body = ErrorBody),
    (status = 412, description = "`If-Match` is not the config's `ETag`.", body = ErrorBody),
    (status = 500, description = "The change could not be written or applied.", body = ErrorBody),
))]
pub async fn remove_server(
    State(state): State<AdminState>,
    Path(name): Path<String>,
    Query(query): Query<WriteQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let changed = change(&state, &headers, Edit::Remove(name), query.timeout()?).await?;
    Ok(with_etag(StatusCode::NO_CONTENT, &changed.etag))
}

/// `PUT /api/v1/config`: a whole config, applied as a reload is; answers as a reload.
#[utoipa::path(put, path = "/api/v1/config", tag = "config", params(WriteQuery, ("If-Match" = Option<String>, Header, description = "The config's `ETag` the change was made against; 412 if it changed since.")),
    request_body(description = "A whole config (SPEC §3), as JSON or as TOML with `Content-Type: application/toml`.",
        content((super::openapi::ConfigSpec = "application/json"), (String = "application/toml"))),
    responses(
        (status = 200, description = "What changed, as a reload answers.", body = ReloadReport, headers(("ETag" = String, description = "The config's tag after the change, for `If-Match`."))),
        (status = 400, description = "The config is invalid (every error in `details`), has no servers, or a listener cannot be bound; nothing changed.", body = ErrorBody),
        (status = 409, description = "The file changed on disk, or the host is shutting down.", body = ErrorBody),
        (status = 412, description = "`If-Match` is not the config's `ETag`.", body = ErrorBody),
        (status = 500, description = "The change could not be written, or some of it applied (`start_failed`, each in `details`).", body = ErrorBody),
    ))]
pub async fn replace_config(
    State(state): State<AdminState>,
    Query(query): Query<WriteQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let config = body_table(&headers, &body)?;
    let edit = Edit::Whole {
        config,
        allow_empty: query.allow_empty.unwrap_or(false),
    };
    let changed = change(&state, &headers, edit, query.timeout()?).await?;
    Ok(with_etag(Json(changed.report), &changed.etag))
}

/// `POST /api/v1/config/check`: a dry run of a whole config.
#[utoipa::path(post, path = "/api/v1/config/check", tag = "config", params(WriteQuery),
    request_body(description = "A whole config, as JSON or as TOML with `Content-Type: application/toml`: any table, \
        checked against the config's schema (`ConfigSpec`); what does not fit is reported in the answer's `errors`.",
        content((Object = "application/json"), (String = "application/toml"))),
    responses(
        (status = 200, description = "Whether the config is valid, its errors, and what applying it would do.", body = ConfigCheck),
        (status = 400, description = "The body is not a JSON or TOML table.", body = ErrorBody),
    ))]
pub async fn check_config(
    State(state): State<AdminState>,
    Query(query): Query<WriteQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<ConfigCheck>, ApiError> {
    let config = body_table(&headers, &body)?;
    let allow_empty = query.allow_empty.unwrap_or(false);
    Ok(Json(state.host.check(config, allow_empty).await))
}

/// Records a server's `autostart` (`start|stop?save=true`).
pub(super) async fn save_autostart(
    state: &AdminState,
    headers: &HeaderMap,
    name: &str,
    on: bool,
) -> Result<(), ApiError> {
    change(state, headers, Edit::Autostart(name.to_owned(), on), None)
        .await
        .map(drop)
}

/// Makes a change with the request's `If-Match`.
async fn change(
    state: &AdminState,
    headers: &HeaderMap,
    edit: Edit,
    timeout: Option<std::time::Duration>,
) -> Result<Changed, ApiError> {
    let if_match = match headers.get(header::IF_MATCH).map(HeaderValue::to_str) {
        Some(Ok(tag)) => Some(tag),
        Some(Err(_)) => return Err(ApiError::bad_request("If-Match is not visible ASCII")),
        None => None,
    };
    state.host.change(edit, if_match, timeout).await.map_err(answer)
}

/// The answer to a change that was not made.
fn answer(error: ChangeError) -> ApiError {
    let message = error.to_string();
    let nothing = "nothing was changed";
    match error {
        ChangeError::ShuttingDown => ApiError::new(ErrorCode::Conflict, message),
        ChangeError::Stale { .. } => ApiError::new(ErrorCode::PreconditionFailed, message),
        ChangeError::Edit(EditError::NoServer(name)) => ApiError::no_server(&name),
        ChangeError::Edit(EditError::NameTaken(_) | EditError::Replica { .. } | EditError::Replicated(_)) => {
            ApiError::new(ErrorCode::Conflict, message)
        }
        ChangeError::Edit(EditError::Body(_) | EditError::Masked(_)) => ApiError::bad_request(message),
        ChangeError::Invalid(errors) => ApiError::with_details(
            ErrorCode::BadRequest,
            format!("{message}; {nothing}"),
            errors.0.iter().map(ToString::to_string).collect(),
        ),
        ChangeError::Unbindable(failures) => {
            ApiError::with_details(ErrorCode::BadRequest, format!("{message}; {nothing}"), failures)
        }
        ChangeError::FileChanged(_) => ApiError::new(ErrorCode::Conflict, format!("{message}; {nothing}")),
        ChangeError::Persist(_) => ApiError::new(ErrorCode::Internal, format!("{message}; {nothing}")),
        ChangeError::Unapplied(failures) => ApiError::with_details(ErrorCode::StartFailed, message, failures),
    }
}

/// A body as a table: TOML with `Content-Type: application/toml`, else JSON.
fn body_table(headers: &HeaderMap, body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    let toml = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("application/toml"));
    let text = std::str::from_utf8(body).map_err(|_| ApiError::bad_request("the body is not UTF-8"))?;
    parse_body(text, toml).map_err(|e| ApiError::bad_request(format!("body: {e}")))
}

fn server_info(state: &AdminState, name: &str) -> Result<ServerInfo, ApiError> {
    Ok(state
        .host
        .instance(name)
        .ok_or_else(|| ApiError::no_server(name))?
        .info())
}

fn with_etag(response: impl IntoResponse, etag: &str) -> Response {
    let mut response = response.into_response();
    if let Ok(value) = HeaderValue::from_str(etag) {
        response.headers_mut().insert(header::ETAG, value);
    }
    response
}
