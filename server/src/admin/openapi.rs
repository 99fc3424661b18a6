//! The admin API's OpenAPI 3.1 document (SPEC §12), served at `GET /api/v1/openapi.json`: made
//! from the handlers' `#[utoipa::path]` attributes and the wire types of `supersocket-proto`,
//! with the manners every route shares (the bearer token, Host and Origin checks, the body
//! limit) added here once.
//!
//! The document is served without a token, as the probes are: it describes routes, never data,
//! and a client needs it before it knows how to authenticate. The Host and Origin checks apply
//! to it as to every route. It describes the host that serves it: one with no token set asks
//! for none, so its document names no security requirement and no 401.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use serde::Deserialize;
use supersocket_proto::{ConfigEvent, ErrorBody, ServerStats, StateEvent, StatsEvent, StreamError};
use utoipa::openapi::path::{Operation, PathItem};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{Content, Ref, ResponseBuilder};
use utoipa::{Modify, OpenApi, ToSchema};

use super::{AdminState, changes, guard, live, routes};

/// Where the document is served.
pub const PATH: &str = "/api/v1/openapi.json";

/// The name of the bearer token's security scheme.
const BEARER: &str = "bearer";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "SuperSocket admin API",
        description = "The admin API of `supersocketd`: one host running many named socket server instances. \
            With a token set, every route but the probes (`/livez`, `/healthz`, `/readyz`) and this document needs \
            `Authorization: Bearer <token>`, and a token's role must allow the request (`read`: GET; `operate`: also \
            start, stop, restart, send, kick, reload; `admin`: everything). A `Host` that is not the admin's own \
            address or a loopback name, and a browser `Origin` that is not the admin's own, are refused with 403. \
            Bodies over 1 MiB get 413. Every error answer is `{\"error\": {\"code\", \"message\", \"details\"?}}`.",
        license(name = "MIT OR Apache-2.0"),
    ),
    paths(
        routes::livez,
        routes::readyz,
        routes::metrics,
        routes::host_info,
        routes::list_servers,
        changes::add_server,
        routes::get_server,
        changes::replace_server,
        changes::remove_server,
        routes::start,
        routes::stop,
        routes::restart,
        routes::sessions,
        routes::kick,
        routes::send,
        live::history,
        live::logs_of,
        live::events,
        routes::route,
        routes::reload,
        changes::get_config,
        changes::replace_config,
        changes::check_config,
        super::dashboard::page,
        document,
    ),
    components(schemas(StateEvent, StatsEvent, ServerStats, ConfigEvent, StreamError)),
    modifiers(&Manners),
    security(("bearer" = [])),
    tags(
        (name = "probes", description = "Liveness, readiness and metrics, open without a token (but `/metrics`)."),
        (name = "host", description = "The host process."),
        (name = "servers", description = "Server instances and their life cycle."),
        (name = "sessions", description = "The open sessions of an instance."),
        (name = "config", description = "The config: reload, read, check, and change it (written back to its file)."),
        (name = "live", description = "Events, per-second history and log lines."),
        (name = "meta", description = "This document."),
    ),
)]
struct ApiDoc;

/// The document of a host with a token, made once.
static GUARDED: LazyLock<String> = LazyLock::new(|| ApiDoc::openapi().to_json().unwrap_or_default());

/// The document of a host without a token, made once.
static OPEN: LazyLock<String> = LazyLock::new(|| {
    let mut openapi = ApiDoc::openapi();
    openapi.security = None;
    if let Some(components) = openapi.components.as_mut() {
        components.security_schemes.clear();
    }
    for item in openapi.paths.paths.values_mut() {
        for operation in operations(item) {
            operation.security = None;
            operation.responses.responses.remove("401");
        }
    }
    openapi.to_json().unwrap_or_default()
});

/// `GET /api/v1/openapi.json`.
#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "meta", responses(
    (status = 200, description = "This document (OpenAPI 3.1).", body = Object),
))]
pub async fn document(State(state): State<AdminState>) -> impl IntoResponse {
    let document = match state.host.admin_config().requires_token() {
        true => GUARDED.as_str(),
        false => OPEN.as_str(),
    };
    ([(header::CONTENT_TYPE, "application/json")], document)
}

/// What every route shares: the bearer scheme (and no token on the open routes), `/healthz` as
/// `/livez`, and the answers of the guard and of the layers below the handlers.
struct Manners;

impl Modify for Manners {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            BEARER,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "The admin token (`[admin] token`, `tokens` or `SUPERSOCKET_TOKEN`); not needed when none is set.",
                    ))
                    .build(),
            ),
        );
        let paths = &mut openapi.paths.paths;
        if let Some(livez) = paths.get("/livez").cloned() {
            let mut healthz = livez;
            if let Some(get) = healthz.get.as_mut() {
                get.operation_id = Some("healthz".into());
            }
            paths.insert("/healthz".into(), healthz);
        }
        for (path, item) in paths.iter_mut() {
            let open = guard::open_without_token(path);
            for operation in operations(item) {
                if open {
                    operation.security = Some(Vec::new());
                }
                shared_answers(operation, open);
            }
        }
    }
}

/// The operations of a path.
fn operations(item: &mut PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        item.get.as_mut(),
        item.put.as_mut(),
        item.post.as_mut(),
        item.delete.as_mut(),
        item.patch.as_mut(),
        item.head.as_mut(),
    ]
    .into_iter()
    .flatten()
}

/// Adds the answers any request may get before its handler runs, where the handler's own list
/// does not say more.
fn shared_answers(operation: &mut Operation, open: bool) {
    let takes_input = operation.request_body.is_some() || operation.parameters.as_ref().is_some_and(|p| !p.is_empty());
    let mut shared = vec![
        (
            "403",
            "Refused: a `Host` that is not this admin API's address, a cross-site `Origin`, or a token whose role may not do this.",
        ),
        ("431", "The request's line or headers are too large."),
    ];
    if !open {
        shared.push((
            "401",
            "A token is set and the request's bearer token is missing or wrong.",
        ));
    }
    if takes_input {
        shared.push(("400", "A parameter or the body cannot be read."));
    }
    if operation.request_body.is_some() {
        shared.push(("413", "The body is over 1 MiB."));
    }
    let responses = &mut operation.responses.responses;
    for (status, description) in shared {
        responses
            .entry(status.to_owned())
            .or_insert_with(|| error_answer(description).into());
    }
}

/// An answer with the error envelope.
fn error_answer(description: &str) -> utoipa::openapi::Response {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            Content::new(Some(Ref::from_schema_name(ErrorBody::name()))),
        )
        .build()
}

/// One Server-Sent Event of `GET /api/v1/events`, field by field.
#[derive(Deserialize, ToSchema)]
#[allow(dead_code)]
pub struct LiveEvent {
    /// What the event tells.
    event: LiveEventKind,
    /// JSON: a `StateEvent`, `StatsEvent` or `ConfigEvent` as `event` says; a `StreamError`
    /// for `error`, the last event of a stream whose reader fell behind.
    data: String,
    /// Its id, to resume after with `Last-Event-ID` (none on the first state of each server).
    id: Option<String>,
}

/// The kinds of event of `GET /api/v1/events`.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)]
pub enum LiveEventKind {
    /// A server's state changed (and, first, each server's state now): `StateEvent`.
    State,
    /// Every running server's counters, once a second: `StatsEvent`.
    Stats,
    /// A change of the config was applied: `ConfigEvent`.
    Config,
    /// The reader fell behind the journal; the stream ends.
    Error,
}

/// One Server-Sent Event of `GET /api/v1/servers/{name}/logs?follow`, field by field.
#[derive(Deserialize, ToSchema)]
#[allow(dead_code)]
pub struct LogEvent {
    /// `log` for a line; `error` (a `StreamError`) ends the stream of a reader that fell behind.
    #[schema(pattern = "^(log|error)$")]
    event: String,
    /// JSON: a `LogLine`, or a `StreamError` for `error`.
    data: String,
    /// Its id, to resume after with `Last-Event-ID`.
    id: Option<String>,
}

// The config as the API reads and writes it (SPEC §3), in the file's schema. The host reads it
// with its own schema walk (`config::schema`), which reports every problem with its key path;
// these types only describe that schema to clients.

/// A whole config (SPEC §3): the body of `PUT /api/v1/config` and `POST /api/v1/config/check`,
/// and the answer of `GET /api/v1/config` (secrets shown as `***`).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct ConfigSpec {
    /// The default isolation of every server.
    isolation: Option<supersocket_proto::Isolation>,
    /// Bound on draining sessions at stop and shutdown (`500ms`, `10s`, `5m`).
    shutdown_timeout: Option<String>,
    /// The admin API.
    admin: Option<AdminSpec>,
    /// The servers, in order.
    servers: Option<Vec<ServerSpec>>,
}

/// `[admin]`: where the admin API listens, its tokens and limits.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct AdminSpec {
    /// `IP:PORT` or `unix:/path`.
    listen: Option<String>,
    /// The `admin` token (`***` as the API shows it).
    token: Option<String>,
    /// A file holding the `admin` token.
    token_file: Option<String>,
    /// Named tokens with roles.
    tokens: Option<Vec<TokenSpec>>,
    /// Admin connections open at once.
    #[schema(minimum = 1, maximum = 100_000)]
    max_connections: Option<u32>,
    /// Time for a request's headers to arrive.
    header_timeout: Option<String>,
    /// An admin connection without a request closes after this long.
    idle_timeout: Option<String>,
}

/// One named token of `[admin] tokens`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct TokenSpec {
    /// Its name, in the log of every write.
    name: String,
    /// The secret (`***` as the API shows it), or `token_file`.
    token: Option<String>,
    /// A file holding the secret.
    token_file: Option<String>,
    /// `read`, `operate` or `admin`.
    role: Option<String>,
}

/// One server's config (SPEC §3): the body of `POST /api/v1/servers` and
/// `PUT /api/v1/servers/{name}`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct ServerSpec {
    /// Unique; letters, digits, `_`, `.`, `-`.
    #[schema(pattern = "^[A-Za-z0-9_.-]{1,128}$")]
    name: String,
    /// A built-in type (`echo`, `command`, `gate`, `connector`, `chat`, `ftp`) or one the host
    /// registered.
    #[serde(rename = "type")]
    server_type: String,
    /// Started with the host (default true).
    autostart: Option<bool>,
    /// Where it runs (default: the config's).
    isolation: Option<supersocket_proto::Isolation>,
    /// Worker threads of its own runtime (isolation `runtime`).
    #[schema(minimum = 1, maximum = 1024)]
    threads: Option<u32>,
    /// Expands to `name-1..N` on ports `port+0..port+N-1`.
    #[schema(minimum = 1, maximum = 1000)]
    replicas: Option<u32>,
    /// Its listeners (none for a backend-only server).
    listeners: Option<Vec<ListenerSpec>>,
    /// If a port is busy, try the next N.
    #[schema(minimum = 0, maximum = 1000)]
    port_fallback: Option<u32>,
    /// Connections beyond this are closed at once.
    #[schema(minimum = 1, maximum = 10_000_000)]
    max_connections: Option<u32>,
    /// Bytes; a longer package closes the session.
    #[schema(minimum = 1, maximum = 1_073_741_824)]
    max_package_length: Option<u32>,
    /// No bytes either way for this long closes a session (`300s`; `0s` is off).
    idle_timeout: Option<String>,
    /// Messages queued per session before backpressure.
    #[schema(minimum = 1, maximum = 1_000_000)]
    send_queue: Option<u32>,
    /// Bytes queued per session before backpressure.
    #[schema(minimum = 1, maximum = 1_073_741_824)]
    send_queue_bytes: Option<u32>,
    /// TLS: `{cert, key}` (PEM files) or `{self_signed: true}`.
    tls: Option<TlsSpec>,
    /// What the supervisor does when an agent dies (process isolation).
    restart: Option<RestartSpec>,
    /// The host name clients should use (gate answers).
    advertise: Option<String>,
    /// Type-specific settings (secrets shown as `***`).
    options: Option<BTreeMap<String, serde_json::Value>>,
    /// Labels to select servers by.
    labels: Option<BTreeMap<String, String>>,
}

/// One listener of a server.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct ListenerSpec {
    /// `Any`, `IPv6Any`, `Loopback` or an address (default `Any`).
    ip: Option<String>,
    /// 0 picks a free port.
    #[schema(minimum = 0, maximum = 65535)]
    port: u32,
    /// The listen queue.
    #[schema(minimum = 1, maximum = 65535)]
    backlog: Option<u32>,
}

/// A server's TLS: certificate and key files, or a certificate made at start.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct TlsSpec {
    /// PEM certificate chain.
    cert: Option<String>,
    /// PEM private key.
    key: Option<String>,
    /// A self-signed certificate made at start.
    self_signed: Option<bool>,
}

/// The restart policy of a process-isolated server.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct RestartSpec {
    /// `always`, `on-failure` or `never`.
    policy: Option<String>,
    /// Restarts before `failed`.
    #[schema(minimum = 0, maximum = 1_000_000)]
    max_retries: Option<u32>,
    /// First wait before a restart.
    backoff: Option<String>,
    /// Longest wait before a restart.
    max_backoff: Option<String>,
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn document() -> serde_json::Value {
        serde_json::from_str(&GUARDED).expect("the document is JSON")
    }

    #[test]
    fn the_document_is_openapi_3_1() {
        let doc = document();
        assert!(
            doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.1.")),
            "{}",
            doc["openapi"]
        );
        assert_eq!(doc["components"]["securitySchemes"][BEARER]["scheme"], "bearer");
    }

    /// Every route of the router is documented, and nothing else is.
    #[test]
    fn the_document_lists_every_route_of_the_router() {
        let doc = document();
        let mut documented = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for method in item.as_object().expect("a path item").keys() {
                documented.insert((method.to_ascii_uppercase(), path.clone()));
            }
        }
        let routed: BTreeSet<_> = super::super::ROUTES
            .iter()
            .map(|(method, path)| ((*method).to_owned(), (*path).to_owned()))
            .collect();
        assert_eq!(documented, routed);
    }

    /// The list of routes holds every path the router function routes: a `.route(` added to
    /// it without a line in `ROUTES` (and so in the document) fails here.
    #[test]
    fn the_list_of_routes_follows_the_router() {
        let source = include_str!("mod.rs");
        let start = source.find("pub fn router(").expect("the router function");
        let body = &source[start..];
        let body = &body[..body.find("\n}\n").expect("its end")];
        let paths: BTreeSet<&str> = super::super::ROUTES.iter().map(|(_, path)| *path).collect();
        assert_eq!(body.matches(".route(").count(), paths.len(), "{paths:?}");
    }

    #[test]
    fn open_routes_need_no_token_and_the_rest_do() {
        let doc = document();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for (method, operation) in item.as_object().expect("a path item") {
                let open = guard::open_without_token(path);
                assert_eq!(
                    operation.get("security") == Some(&serde_json::json!([])),
                    open,
                    "{method} {path}"
                );
                assert_eq!(
                    operation["responses"].get("401").is_some(),
                    !open || path == "/readyz",
                    "{method} {path}"
                );
                assert!(operation["responses"].get("403").is_some(), "{method} {path}");
            }
        }
    }

    #[test]
    fn without_a_token_nothing_asks_for_one() {
        let doc: serde_json::Value = serde_json::from_str(&OPEN).expect("the document is JSON");
        assert!(doc.get("security").is_none());
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for (method, operation) in item.as_object().expect("a path item") {
                assert!(operation.get("security").is_none(), "{method} {path}");
                assert!(operation["responses"].get("401").is_none(), "{method} {path}");
            }
        }
        let guarded = document();
        assert_eq!(
            doc["paths"].as_object().map(|p| p.len()),
            guarded["paths"].as_object().map(|p| p.len())
        );
    }

    #[test]
    fn errors_carry_the_envelope_and_streams_their_media_types() {
        let doc = document();
        let answer = |path: &str, status: &str| doc["paths"][path]["get"]["responses"][status]["content"].clone();
        assert_eq!(
            answer("/api/v1/servers/{name}", "404")["application/json"]["schema"]["$ref"],
            "#/components/schemas/ErrorBody"
        );
        assert!(answer("/api/v1/events", "200").get("text/event-stream").is_some());
        assert!(
            answer("/api/v1/servers/{name}/logs", "200")
                .get("text/event-stream")
                .is_some()
        );
        assert!(answer("/metrics", "200").get("text/plain").is_some());
        let etag = &doc["paths"]["/api/v1/config"]["get"]["responses"]["200"]["headers"]["ETag"];
        assert!(etag.is_object(), "{etag}");
        let put = &doc["paths"]["/api/v1/config"]["put"];
        let if_match = put["parameters"]
            .as_array()
            .expect("parameters")
            .iter()
            .any(|p| p["name"] == "If-Match");
        assert!(if_match);
        assert!(put["requestBody"]["content"].get("application/toml").is_some());
    }
}
