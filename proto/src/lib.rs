//! Wire types of the SuperSocket admin API, shared by the host (`supersocketd`) and the CLI
//! (`supersocket`).
//!
//! Only serde types, constants and the duration format (`"500ms"`, `"10s"`) live here: what
//! crosses the wire, nothing that runs.

pub mod agent;
mod duration;

pub use duration::{format_duration, parse_duration};
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Path prefix of the versioned admin API.
pub const API_PREFIX: &str = "/api/v1";

/// Largest request body the admin API accepts (bigger ones get 413).
pub const MAX_ADMIN_BODY: usize = 1024 * 1024;

/// The life-cycle state of one server instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ServerState {
    /// Not running; listeners closed.
    Stopped,
    /// Binding listeners (or waiting for its agent to report ready).
    Starting,
    /// Accepting and serving sessions.
    Running,
    /// Listeners closed, sessions draining.
    Stopping,
    /// Process isolation: the agent died and waits for its next restart.
    Backoff,
    /// Could not start, or gave up restarting; only an explicit start leaves it.
    Failed,
}

impl ServerState {
    /// The lower-case name used in JSON, tables and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stopped => "stopped",
            Self::Starting => "starting",
            Self::Running => "running",
            Self::Stopping => "stopping",
            Self::Backoff => "backoff",
            Self::Failed => "failed",
        }
    }
}

impl std::fmt::Display for ServerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where an instance runs relative to the host.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Isolation {
    /// On the host's shared runtime.
    #[default]
    None,
    /// On a runtime with worker threads of its own, inside the host.
    Runtime,
    /// In a supervised child agent process.
    Process,
}

impl Isolation {
    /// The lower-case name used in config, JSON and tables.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Runtime => "runtime",
            Self::Process => "process",
        }
    }
}

impl std::fmt::Display for Isolation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One bound listener of a running instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ListenerInfo {
    /// The bound IP address.
    pub ip: String,
    /// The bound port (the real one when the config asked for 0 or a fallback was used).
    pub port: u16,
    /// Whether the listener speaks TLS.
    pub tls: bool,
}

/// `Server`: one instance as the admin API reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ServerInfo {
    /// Unique instance name.
    pub name: String,
    /// Server type (`echo`, `command`, ...).
    #[serde(rename = "type")]
    pub server_type: String,
    /// Current life-cycle state.
    pub state: ServerState,
    /// Isolation level it runs at.
    pub isolation: Isolation,
    /// Whether the host starts it at boot.
    pub autostart: bool,
    /// The agent's pid under process isolation (`null` while no agent runs), else the host's.
    pub pid: Option<u32>,
    /// Bound addresses while running, empty otherwise.
    pub listeners: Vec<ListenerInfo>,
    /// Sessions open now.
    pub sessions: u64,
    /// Configured connection limit.
    pub max_connections: u64,
    /// Sessions accepted since the host started.
    pub total_sessions: u64,
    /// Packages decoded since the host started.
    pub total_packages: u64,
    /// Bytes received from peers.
    pub bytes_in: u64,
    /// Bytes sent to peers.
    pub bytes_out: u64,
    /// When the current run started (RFC 3339 UTC), if running.
    pub started_at: Option<String>,
    /// Seconds since `started_at`, 0 when not running.
    pub uptime_secs: u64,
    /// Restarts by the supervisor (process isolation).
    pub restarts: u64,
    /// Why the last start or run failed, if it did.
    pub last_error: Option<String>,
    /// The server's `labels` from the config (selectors of `start|stop|restart --label`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Resident memory of its agent (process isolation, while one runs), sampled each second;
    /// `null` otherwise (an instance in the host's process shares the host's).
    #[serde(default)]
    pub rss_bytes: Option<u64>,
    /// CPU of its agent over the last second, in percent of one core; `null` as `rss_bytes`.
    #[serde(default)]
    pub cpu_percent: Option<f64>,
}

/// `Session`: one open connection of an instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SessionInfo {
    /// Opaque id, unique in the host for its lifetime.
    pub id: String,
    /// The peer's address.
    pub remote: String,
    /// The local address the peer connected to.
    pub local: String,
    /// When the session was accepted (RFC 3339 UTC).
    pub started_at: String,
    /// Last time bytes moved in either direction (RFC 3339 UTC).
    pub last_active_at: String,
    /// Bytes received from the peer.
    pub bytes_in: u64,
    /// Bytes sent to the peer.
    pub bytes_out: u64,
}

/// The answer of `GET /api/v1/host`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HostInfo {
    /// Version of `supersocketd`.
    pub version: String,
    /// Process id of the host.
    pub pid: u32,
    /// When the host started (RFC 3339 UTC).
    pub started_at: String,
    /// Seconds since the host started.
    pub uptime_secs: u64,
    /// The config file in use, or `null` for the embedded default.
    pub config_path: Option<String>,
    /// Whether changes made through the API are written to `config_path` (false only while
    /// the embedded default is in use and nothing was changed yet).
    #[serde(default)]
    pub persisted: bool,
    /// `running`, or `stopping` once a shutdown has begun.
    pub state: String,
    /// The host process's resident memory, sampled each second (agents' not included).
    #[serde(default)]
    pub rss_bytes: Option<u64>,
    /// The host process's CPU over the last second, in percent of one core.
    #[serde(default)]
    pub cpu_percent: Option<f64>,
}

/// The answer of `GET /livez` and `GET /healthz`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Liveness {
    /// Always `ok`: the host answers while it runs.
    pub status: String,
}

/// One line of the readiness answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ReadyCheck {
    /// The instance (or `host`) checked.
    pub name: String,
    /// Whether this check passes.
    pub ok: bool,
    /// The instance's state (or the host's).
    pub state: String,
    /// With `?verbose`: why the check passes or fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// The answer of `GET /readyz` (200 when `ready`, else 503).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Readiness {
    /// True when every check passes.
    pub ready: bool,
    /// One check per autostart instance, plus the host itself.
    pub checks: Vec<ReadyCheck>,
}

/// The answer of `GET /api/v1/route/{type}?key=K`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RouteInfo {
    /// The server type routed over.
    #[serde(rename = "type")]
    pub server_type: String,
    /// The routing key.
    pub key: String,
    /// The instance picked.
    pub server: String,
    /// Its index among the running instances of the type.
    pub index: usize,
    /// How many running instances of the type there are.
    pub of: usize,
}

/// The answer of `POST .../sessions/{id}/send` (202).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SendReceipt {
    /// The session the bytes were queued for.
    pub session: String,
    /// How many bytes were queued.
    pub bytes: usize,
}

/// The answer of `POST /api/v1/reload`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ReloadReport {
    /// Servers created.
    pub added: Vec<String>,
    /// Servers stopped and dropped.
    pub removed: Vec<String>,
    /// Servers restarted with their new settings.
    pub changed: Vec<String>,
    /// Servers whose new settings were applied while they ran, every session kept.
    #[serde(default)]
    pub updated: Vec<String>,
    /// Servers left untouched.
    pub unchanged: Vec<String>,
}

/// Data of a `state` event of `GET /api/v1/events`: an instance changed state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StateEvent {
    /// The instance.
    pub name: String,
    /// Its new state.
    pub state: ServerState,
    /// Why it failed or stopped on its own, if it did.
    pub last_error: Option<String>,
}

/// One running instance's counters in a `stats` event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ServerStats {
    /// The instance.
    pub name: String,
    /// Open sessions.
    pub sessions: u64,
    /// Bytes received since the host started.
    pub bytes_in: u64,
    /// Bytes sent since the host started.
    pub bytes_out: u64,
    /// Packages handled since the host started.
    pub packages: u64,
    /// What its agent uses (process isolation), as in `Server`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rss_bytes: Option<u64>,
    /// What its agent uses (process isolation), as in `Server`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_percent: Option<f64>,
}

/// Data of a `stats` event: every running instance's counters, once a second.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StatsEvent {
    /// The second it describes (RFC 3339 UTC).
    pub at: String,
    /// One entry per running instance, in config order.
    pub servers: Vec<ServerStats>,
}

/// Data of a `config` event: a change of the config was applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ConfigEvent {
    /// The `ETag` of the config now.
    pub etag: String,
    /// What changed.
    pub report: ReloadReport,
}

/// Data of the `error` event that ends an events or log stream whose reader fell behind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StreamError {
    /// Why the stream ended, and what to do (reconnect without `Last-Event-ID`).
    pub reason: String,
}

/// One second of an instance's history (`GET /api/v1/servers/{name}/history`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HistorySample {
    /// The second, in seconds since the Unix epoch.
    pub at: u64,
    /// Open sessions.
    pub sessions: u64,
    /// Bytes received since the host started.
    pub bytes_in: u64,
    /// Bytes sent since the host started.
    pub bytes_out: u64,
    /// Packages handled since the host started.
    pub packages: u64,
}

/// One line of an instance's log (`GET /api/v1/servers/{name}/logs`, and the data of its `log`
/// events with `follow`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LogLine {
    /// When the host took it (RFC 3339 UTC, milliseconds).
    pub at: String,
    /// `error`, `warn`, `info`, `debug` or `trace`; `output` for what an agent wrote to its
    /// stderr that is not a log record.
    pub level: String,
    /// `host` (the host, about this instance or from its sessions) or `agent` (its agent
    /// process, under process isolation).
    pub source: String,
    /// The message and its fields (`key=value`), without the instance's name.
    pub message: String,
}

/// What a config change does to one server (`POST /api/v1/config/check`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum PlanAction {
    /// Created (and started if `autostart`).
    Add,
    /// Stopped (its sessions drained) and dropped.
    Remove,
    /// Stopped (its sessions drained) and started with the new settings.
    Restart,
    /// The new settings applied while it runs: no session is closed.
    Update,
    /// Unchanged.
    Keep,
}

impl PlanAction {
    /// The name used on the wire and in tables.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Add => "add",
            Self::Remove => "remove",
            Self::Restart => "restart",
            Self::Update => "update",
            Self::Keep => "keep",
        }
    }
}

impl std::fmt::Display for PlanAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One server in a plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PlanStep {
    /// The server.
    pub name: String,
    /// What the change does to it.
    pub action: PlanAction,
    /// Sessions it holds now that the change would drain (`remove` and `restart`; 0 otherwise).
    pub sessions: u64,
    /// The top-level keys of its config that differ (for `restart` and `update`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changes: Vec<String>,
}

/// The answer of `POST /api/v1/config/check`: a dry run of a whole config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ConfigCheck {
    /// Whether the config would be accepted.
    pub valid: bool,
    /// Every error, each naming its server and key (empty when valid).
    pub errors: Vec<String>,
    /// What applying it would do, server by server in the new config's order, then the
    /// servers it removes (empty when invalid).
    pub plan: Vec<PlanStep>,
}

/// Body of `POST .../sessions/{id}/send`: exactly one of the two fields.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SendRequest {
    /// Text sent as is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// Bytes, base64-encoded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base64: Option<String>,
}

/// Machine-readable error codes of the admin API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// 400
    BadRequest,
    /// 401
    Unauthorized,
    /// 403
    Forbidden,
    /// 404
    NotFound,
    /// 405
    MethodNotAllowed,
    /// 409
    Conflict,
    /// 413
    PayloadTooLarge,
    /// 431
    HeadersTooLarge,
    /// 500, with the cause of a failed start
    StartFailed,
    /// 500
    Internal,
    /// 503: the server did not answer in time (its agent is frozen or overloaded)
    Unavailable,
    /// 412: `If-Match` names a config that is no longer the current one
    PreconditionFailed,
}

impl ErrorCode {
    /// The HTTP status that goes with the code.
    pub fn status(self) -> u16 {
        match self {
            Self::BadRequest => 400,
            Self::Unauthorized => 401,
            Self::Forbidden => 403,
            Self::NotFound => 404,
            Self::MethodNotAllowed => 405,
            Self::Conflict => 409,
            Self::PayloadTooLarge => 413,
            Self::HeadersTooLarge => 431,
            Self::StartFailed | Self::Internal => 500,
            Self::Unavailable => 503,
            Self::PreconditionFailed => 412,
        }
    }
}

/// The `error` member of an error answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorDetail {
    /// What kind of error.
    pub code: ErrorCode,
    /// A sentence a user can act on.
    pub message: String,
    /// Every problem, when there are several (a reload of a broken config lists each).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<String>,
}

/// Every non-2xx answer of the admin API: `{"error": {"code": "...", "message": "..."}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enums_use_the_names_of_the_spec() {
        assert_eq!(serde_json::to_string(&ServerState::Backoff).unwrap(), "\"backoff\"");
        assert_eq!(ServerState::Running.to_string(), "running");
        assert_eq!(serde_json::to_string(&Isolation::Process).unwrap(), "\"process\"");
        assert_eq!(
            serde_json::to_string(&ErrorCode::StartFailed).unwrap(),
            "\"start_failed\""
        );
    }

    #[test]
    fn server_type_is_named_type_in_json() {
        let route = RouteInfo {
            server_type: "chat".into(),
            key: "room-3".into(),
            server: "chat-2".into(),
            index: 1,
            of: 3,
        };
        let json = serde_json::to_value(&route).unwrap();
        assert_eq!(json["type"], "chat");
    }
}
