//! The embedded admin API (SPEC §6): axum routes over the host, guarded by Host/Origin checks
//! and the bearer token, served on TCP or a unix socket within limits of its own.

mod changes;
mod dashboard;
mod deadline;
mod error;
mod guard;
mod live;
mod metrics;
mod openapi;
mod routes;
mod serve;

use std::net::SocketAddr;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{delete, get, post};
use supersocket_proto::MAX_ADMIN_BODY;

pub use error::ApiError;
#[cfg(feature = "fuzzing")]
pub(crate) use routes::check_send_body;

use crate::config::{AdminAddr, AdminLimits};
use crate::host::Host;

/// What every handler gets.
#[derive(Clone)]
pub struct AdminState {
    host: Host,
    /// The bound TCP address, for Host checks; `None` on a unix socket.
    own: Option<SocketAddr>,
}

/// Every route of [`router`], method and path. The OpenAPI document describes exactly these
/// (a test holds the document, this list and the router's `.route(` calls together).
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/livez"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("GET", "/api/v1/host"),
    ("GET", "/api/v1/servers"),
    ("POST", "/api/v1/servers"),
    ("GET", "/api/v1/servers/{name}"),
    ("PUT", "/api/v1/servers/{name}"),
    ("DELETE", "/api/v1/servers/{name}"),
    ("POST", "/api/v1/servers/{name}/start"),
    ("POST", "/api/v1/servers/{name}/stop"),
    ("POST", "/api/v1/servers/{name}/restart"),
    ("GET", "/api/v1/servers/{name}/sessions"),
    ("GET", "/api/v1/servers/{name}/history"),
    ("GET", "/api/v1/servers/{name}/logs"),
    ("GET", "/api/v1/events"),
    ("DELETE", "/api/v1/servers/{name}/sessions/{id}"),
    ("POST", "/api/v1/servers/{name}/sessions/{id}/send"),
    ("GET", "/api/v1/route/{type}"),
    ("POST", "/api/v1/reload"),
    ("GET", "/api/v1/config"),
    ("PUT", "/api/v1/config"),
    ("POST", "/api/v1/config/check"),
    ("GET", "/api/v1/openapi.json"),
    ("GET", "/"),
];

/// The admin API's router over `host`, listening at `own` (`None` for a unix socket).
pub fn router(host: Host, own: Option<SocketAddr>) -> Router {
    let state = AdminState { host, own };
    let server = "/servers/{name}";
    let api = Router::new()
        .route("/host", get(routes::host_info))
        .route("/servers", get(routes::list_servers).post(changes::add_server))
        .route(
            server,
            get(routes::get_server)
                .put(changes::replace_server)
                .delete(changes::remove_server),
        )
        .route(&format!("{server}/start"), post(routes::start))
        .route(&format!("{server}/stop"), post(routes::stop))
        .route(&format!("{server}/restart"), post(routes::restart))
        .route(&format!("{server}/sessions"), get(routes::sessions))
        .route(&format!("{server}/history"), get(live::history))
        .route(&format!("{server}/sessions/{{id}}"), delete(routes::kick))
        .route(&format!("{server}/sessions/{{id}}/send"), post(routes::send))
        .route("/route/{type}", get(routes::route))
        .route("/reload", post(routes::reload))
        .route("/config", get(changes::get_config).put(changes::replace_config))
        .route("/config/check", post(changes::check_config))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), deadline::bounded))
        // Streams last as long as their readers.
        .route("/events", get(live::events))
        .route(&format!("{server}/logs"), get(live::logs_of))
        .route("/openapi.json", get(openapi::document));
    Router::new()
        .route("/", get(dashboard::page))
        .route("/livez", get(routes::livez))
        .route("/healthz", get(routes::livez))
        .route("/readyz", get(routes::readyz))
        .route("/metrics", get(routes::metrics))
        .nest(supersocket_proto::API_PREFIX, api)
        .fallback(routes::not_found)
        .method_not_allowed_fallback(routes::method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(state.clone(), guard::guard))
        .layer(DefaultBodyLimit::max(MAX_ADMIN_BODY))
        .layer(axum::middleware::from_fn(error::envelope))
        .with_state(state)
}

/// A bound admin listener.
pub enum AdminListener {
    /// TCP.
    Tcp(tokio::net::TcpListener),
    /// A unix socket, and its path (removed when the host exits).
    Unix(tokio::net::UnixListener, std::path::PathBuf),
}

/// Connections the kernel queues for the admin listener: as many as the instances' listeners
/// queue, so that a flood of connections overflows the queue (and a probe's connection waits
/// for the client's retransmission, a second later) no sooner than on an instance's port.
const BACKLOG: u32 = 1024;

impl AdminListener {
    /// Binds the admin address; a unix socket is created with mode 0600.
    pub async fn bind(addr: &AdminAddr) -> std::io::Result<Self> {
        match addr {
            AdminAddr::Tcp(addr) => {
                let socket = match addr {
                    std::net::SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
                    std::net::SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
                };
                socket.set_reuseaddr(true)?;
                socket.bind(*addr)?;
                Ok(Self::Tcp(socket.listen(BACKLOG)?))
            }
            AdminAddr::Unix(path) => {
                use std::os::unix::fs::{FileTypeExt, PermissionsExt};
                // A socket file left by a previous run would make bind fail.
                if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
                    std::fs::remove_file(path)?;
                }
                // Created unreachable to others from the first instant, then bound.
                let mask = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
                let listener = tokio::net::UnixListener::bind(path);
                nix::sys::stat::umask(mask);
                let listener = listener?;
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
                Ok(Self::Unix(listener, path.clone()))
            }
        }
    }

    /// The bound TCP address (`None` for a unix socket).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        match self {
            Self::Tcp(listener) => listener.local_addr().ok(),
            Self::Unix(..) => None,
        }
    }

    /// The URL clients use: `http://IP:PORT` or `unix:/path`.
    pub fn url(&self) -> String {
        match (self, self.local_addr()) {
            (Self::Tcp(_), Some(addr)) => format!("http://{addr}"),
            (Self::Tcp(_), None) => "http://?".into(),
            (Self::Unix(_, path), _) => format!("unix:{}", path.display()),
        }
    }

    /// Serves `router` within `limits` until `closing` is cancelled, then until every request
    /// in flight is answered.
    pub async fn serve(
        self,
        router: Router,
        limits: AdminLimits,
        closing: tokio_util::sync::CancellationToken,
    ) -> std::io::Result<()> {
        serve::serve(self, router, limits, closing).await
    }
}
