//! The admin API's handlers, one small function per route.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::Deserialize;
use supersocket_proto::{ErrorCode, HostInfo, Readiness, ServerInfo};

use super::error::ApiError;
use crate::host::Host;

/// `GET /livez`, `GET /healthz`: 200 while the host runs.
pub async fn livez() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

/// Query of `GET /readyz`.
#[derive(Debug, Deserialize)]
pub struct ReadyQuery {
    verbose: Option<String>,
}

/// `GET /readyz`: 200 when every autostart server runs and the host is not stopping, else 503.
pub async fn readyz(State(host): State<Host>, Query(query): Query<ReadyQuery>) -> (StatusCode, Json<Readiness>) {
    let readiness = host.readiness(query.verbose.is_some());
    let status = if readiness.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(readiness))
}

/// `GET /api/v1/host`.
pub async fn host_info(State(host): State<Host>) -> Json<HostInfo> {
    Json(host.info())
}

/// `GET /api/v1/servers`: every server in config order.
pub async fn list_servers(State(host): State<Host>) -> Json<Vec<ServerInfo>> {
    Json(host.instances().iter().map(|i| i.info()).collect())
}

/// `GET /api/v1/servers/{name}`.
pub async fn get_server(State(host): State<Host>, Path(name): Path<String>) -> Result<Json<ServerInfo>, ApiError> {
    let instance = host.instance(&name).ok_or_else(|| ApiError::no_server(&name))?;
    Ok(Json(instance.info()))
}

/// Any other path.
pub async fn not_found() -> ApiError {
    ApiError::new(ErrorCode::NotFound, "no such route")
}
