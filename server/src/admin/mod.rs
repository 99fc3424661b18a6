//! The embedded admin API (SPEC §6): axum routes over the host, served on TCP or a unix socket.

mod error;
mod routes;

use axum::Router;
use axum::routing::get;

pub use error::ApiError;

use crate::config::AdminAddr;
use crate::host::Host;

/// The admin API's router over `host`.
pub fn router(host: Host) -> Router {
    let api = Router::new()
        .route("/host", get(routes::host_info))
        .route("/servers", get(routes::list_servers))
        .route("/servers/{name}", get(routes::get_server));
    Router::new()
        .route("/livez", get(routes::livez))
        .route("/healthz", get(routes::livez))
        .route("/readyz", get(routes::readyz))
        .nest(supersocket_proto::API_PREFIX, api)
        .fallback(routes::not_found)
        .with_state(host)
}

/// A bound admin listener.
pub enum AdminListener {
    /// TCP.
    Tcp(tokio::net::TcpListener),
    /// A unix socket, and its path (removed when the host exits).
    Unix(tokio::net::UnixListener, std::path::PathBuf),
}

impl AdminListener {
    /// Binds the admin address.
    pub async fn bind(addr: &AdminAddr) -> std::io::Result<Self> {
        match addr {
            AdminAddr::Tcp(addr) => Ok(Self::Tcp(tokio::net::TcpListener::bind(addr).await?)),
            AdminAddr::Unix(path) => {
                // A socket file left by a previous run would make bind fail.
                if std::fs::symlink_metadata(path)
                    .is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()))
                {
                    std::fs::remove_file(path)?;
                }
                let listener = tokio::net::UnixListener::bind(path)?;
                std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
                Ok(Self::Unix(listener, path.clone()))
            }
        }
    }

    /// The URL clients use: `http://IP:PORT` or `unix:/path`.
    pub fn url(&self) -> String {
        match self {
            Self::Tcp(listener) => match listener.local_addr() {
                Ok(addr) => format!("http://{addr}"),
                Err(_) => "http://?".into(),
            },
            Self::Unix(_, path) => format!("unix:{}", path.display()),
        }
    }

    /// Serves `router` until the process exits.
    pub async fn serve(self, router: Router) -> std::io::Result<()> {
        match self {
            Self::Tcp(listener) => axum::serve(listener, router).await,
            Self::Unix(listener, _) => axum::serve(listener, router).await,
        }
    }
}
