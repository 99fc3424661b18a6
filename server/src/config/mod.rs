//! The host's configuration (SPEC §3): schema types, loading from TOML or JSON, and validation
//! whose every error names the file, the server, the key and the line.
//!
//! Layout: `node` reads either format into one tree with lines; `schema` walks that tree into the
//! types below, collecting every problem; `validate` checks what spans servers (unique names,
//! overlapping ports, TLS files, known types); `default.toml` is the embedded default.

mod diff;
mod document;
mod error;
pub mod export;
mod merge;
mod node;
mod persist;
mod schema;
pub mod tls;
mod validate;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use diff::{Change, changes};
pub use document::{DEFAULT_FILE, Document, EditError, parse_body};
pub use error::{ConfigError, ConfigErrors};
pub use supersocket_proto::Isolation;
pub use supersocket_proto::{format_duration, parse_duration};

/// The embedded default config, used when no file is found.
pub const EMBEDDED_DEFAULT: &str = include_str!("default.toml");

/// Name shown for the embedded default in messages.
pub const EMBEDDED_NAME: &str = "<embedded default>";

/// Where a config came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigSource {
    /// A file on disk.
    File(PathBuf),
    /// The embedded default of SPEC §2.
    Embedded,
}

impl ConfigSource {
    /// The name used in messages.
    pub fn display_name(&self) -> String {
        match self {
            Self::File(path) => path.display().to_string(),
            Self::Embedded => EMBEDDED_NAME.to_owned(),
        }
    }

    /// The folder relative paths in the config are resolved against.
    pub fn base_dir(&self) -> PathBuf {
        match self {
            Self::File(path) => path.parent().map(Path::to_path_buf).unwrap_or_default(),
            Self::Embedded => PathBuf::from("."),
        }
    }
}

/// The whole host configuration, validated, with replicas expanded.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Where it was read from.
    pub source: ConfigSource,
    /// The root `isolation`: each server's unless it sets its own.
    pub isolation: Isolation,
    /// Bound on draining sessions at stop and at shutdown.
    pub shutdown_timeout: Duration,
    /// The admin API.
    pub admin: AdminConfig,
    /// Every server instance, in config order.
    pub servers: Vec<ServerConfig>,
}

/// The most worker threads an agent runs when its config does not say: one per core up to
/// this, so that a host of many agents on a large machine does not run thousands of threads.
pub const AGENT_THREADS: usize = 4;

/// Where and how the admin API listens. Its `Debug` shows no secret.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminConfig {
    /// TCP address or unix socket path.
    pub listen: AdminAddr,
    /// The bearer token of the `admin` role (`token` or `token_file`).
    pub token: Option<String>,
    /// Named tokens, each with its role (`tokens`). With any token set, every route but the
    /// probes' requires one.
    pub tokens: Vec<NamedToken>,
    /// Its own limits, apart from the instances'.
    pub limits: AdminLimits,
}

impl std::fmt::Debug for AdminConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminConfig")
            .field("listen", &self.listen)
            .field("token", &self.token.as_ref().map(|_| "***"))
            .field("tokens", &self.tokens)
            .field("limits", &self.limits)
            .finish()
    }
}

impl AdminConfig {
    /// Whether the API asks for a token.
    pub fn requires_token(&self) -> bool {
        self.token.is_some() || !self.tokens.is_empty()
    }
}

/// A bearer token with a name (for the log) and a role. Its `Debug` shows no secret.
#[derive(Clone, PartialEq, Eq)]
pub struct NamedToken {
    pub name: String,
    pub token: String,
    pub role: Role,
}

impl std::fmt::Debug for NamedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NamedToken")
            .field("name", &self.name)
            .field("token", &"***")
            .field("role", &self.role)
            .finish()
    }
}

/// What a token may do: each role may do what the one before it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Read only: `GET`.
    Read,
    /// Also start, stop, restart, send, kick and reload.
    Operate,
    /// Everything.
    Admin,
}

impl Role {
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "read" => Some(Self::Read),
            "operate" => Some(Self::Operate),
            "admin" => Some(Self::Admin),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Operate => "operate",
            Self::Admin => "admin",
        }
    }
}

/// What the admin listener allows a peer, so that no client of it can take what the instances
/// or other clients need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdminLimits {
    /// Open connections; when all are taken, the quietest makes room for a new one (or, when
    /// every one has a request in flight, the new one is closed as soon as it is accepted).
    pub max_connections: usize,
    /// From a request's first byte to the end of its headers, and for its body.
    pub header_timeout: Duration,
    /// A connection with no request in flight is closed after this long.
    pub idle_timeout: Duration,
}

impl Default for AdminLimits {
    fn default() -> Self {
        Self {
            max_connections: 256,
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
        }
    }
}

/// The admin API's listening address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminAddr {
    /// `IP:PORT`.
    Tcp(SocketAddr),
    /// `unix:/path`.
    Unix(PathBuf),
}

impl AdminAddr {
    /// Parses `IP:PORT`, `[IPv6]:PORT`, `localhost:PORT` or `unix:/path`.
    pub fn parse(text: &str) -> Result<Self, String> {
        if let Some(path) = text.strip_prefix("unix:") {
            if path.is_empty() {
                return Err("`unix:` needs a socket path, e.g. \"unix:/run/supersocket.sock\"".into());
            }
            return Ok(Self::Unix(PathBuf::from(path)));
        }
        if let Some(port) = text.strip_prefix("localhost:") {
            let port = port.parse().map_err(|_| format!("{text:?} has no valid port"))?;
            return Ok(Self::Tcp(SocketAddr::new(IpAddr::from([127, 0, 0, 1]), port)));
        }
        text.parse()
            .map(Self::Tcp)
            .map_err(|_| format!("{text:?} is not an address like \"127.0.0.1:2020\" or \"unix:/path\""))
    }

    /// Loopback TCP and unix sockets are reachable only from this machine.
    pub fn is_local(&self) -> bool {
        match self {
            Self::Tcp(addr) => addr.ip().is_loopback(),
            Self::Unix(_) => true,
        }
    }
}

impl std::fmt::Display for AdminAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Tcp(addr) => write!(f, "{addr}"),
            Self::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// One server instance.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ServerConfig {
    /// Unique name (`[A-Za-z0-9_.-]+`); replicas are `name-1..N`.
    pub name: String,
    /// Built-in or registered server type.
    pub server_type: String,
    /// Started when the host boots.
    pub autostart: bool,
    /// Where it runs.
    pub isolation: Isolation,
    /// Worker threads of its own runtime: under isolation `runtime` 1 if unset; in an agent
    /// (isolation `process`) its share of the cores (divided among the agents that leave it unset), at most
    /// [`AGENT_THREADS`], if unset.
    pub threads: Option<usize>,
    /// Addresses to listen on (may be empty for a backend-only instance).
    pub listeners: Vec<ListenerConfig>,
    /// How many following ports to try when a port is busy.
    pub port_fallback: u16,
    /// Open sessions beyond this are accepted and closed at once (`rejected`).
    pub max_connections: usize,
    /// Longest package in bytes; a longer one closes the session (`protocol_error`).
    pub max_package_length: usize,
    /// No bytes either way for this long closes the session; `None` = off.
    pub idle_timeout: Option<Duration>,
    /// Outbound messages queued per session before it counts as a slow reader.
    pub send_queue: usize,
    /// Bytes queued per session before it counts as a slow reader (one bigger message passes
    /// an empty queue).
    pub send_queue_bytes: usize,
    /// TLS on every listener of the server.
    pub tls: Option<TlsConfig>,
    /// Restart policy of the agent (process isolation).
    pub restart: RestartConfig,
    /// Host name clients should use to reach it (gate answers).
    pub advertise: Option<String>,
    /// Type-specific settings, as JSON.
    pub options: serde_json::Value,
    /// Free-form `key = "value"` pairs that select servers (`--label team=chat`).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Folder that relative paths in `options` are resolved against.
    pub base_dir: PathBuf,
}

impl Default for ServerConfig {
    /// The defaults of SPEC §3, with no name, type or listeners.
    fn default() -> Self {
        Self {
            name: String::new(),
            server_type: String::new(),
            autostart: true,
            isolation: Isolation::None,
            threads: None,
            listeners: Vec::new(),
            port_fallback: 0,
            max_connections: 10_000,
            max_package_length: 1024 * 1024,
            idle_timeout: Some(Duration::from_secs(300)),
            send_queue: 256,
            send_queue_bytes: 1024 * 1024,
            tls: None,
            restart: RestartConfig::default(),
            advertise: None,
            options: serde_json::Value::Object(Default::default()),
            labels: BTreeMap::new(),
            base_dir: PathBuf::new(),
        }
    }
}

/// One listening address of a server.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ListenerConfig {
    /// Address to bind.
    pub ip: IpAddr,
    /// Port to bind; 0 picks a free one.
    pub port: u16,
    /// Listen backlog.
    pub backlog: u32,
    /// The name of a socket systemd passed (socket activation) that this listener serves
    /// instead of binding one; `ip` and `port` are then that socket's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fd_name: Option<String>,
}

/// TLS material of a server.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum TlsConfig {
    /// PEM certificate chain and private key files.
    Files {
        /// Certificate chain (PEM).
        cert: PathBuf,
        /// Private key (PEM: PKCS#8, PKCS#1 or SEC1).
        key: PathBuf,
    },
    /// A certificate for localhost made at start.
    SelfSigned,
}

/// When the supervisor restarts an agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum RestartPolicy {
    /// Whenever it exits.
    Always,
    /// When it exits with an error or a signal.
    OnFailure,
    /// Never.
    Never,
}

/// Supervision of an agent process (process isolation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RestartConfig {
    /// When to restart.
    pub policy: RestartPolicy,
    /// Unstable starts before the state is `failed`.
    pub max_retries: u32,
    /// First back-off delay.
    pub backoff: Duration,
    /// Longest back-off delay.
    pub max_backoff: Duration,
}

impl Default for RestartConfig {
    fn default() -> Self {
        Self {
            policy: RestartPolicy::OnFailure,
            max_retries: 5,
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(30),
        }
    }
}

/// Decides whether a server type name is known (built-in or registered).
pub trait TypeCatalog {
    /// Whether `name` is a known server type.
    fn contains(&self, name: &str) -> bool;
    /// Checks the type-specific `options` of a server of that type.
    fn check_options(&self, server: &ServerConfig) -> Result<(), String>;
}

impl Config {
    /// Reads and validates a config file (`.json` as JSON, anything else as TOML).
    pub fn load(path: &Path, types: &dyn TypeCatalog) -> Result<Self, ConfigErrors> {
        Self::read(path, types).map(|(config, _)| config)
    }

    /// Reads and validates a config file; also gives the text read.
    pub fn read(path: &Path, types: &dyn TypeCatalog) -> Result<(Self, String), ConfigErrors> {
        let source = ConfigSource::File(path.to_path_buf());
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![ConfigError {
                file: source.display_name(),
                line: None,
                server: None,
                key: None,
                message: format!("cannot read the config file: {e}"),
            }])
        })?;
        let json = path.extension().is_some_and(|ext| ext.eq_ignore_ascii_case("json"));
        let config = Self::parse(&text, json, source, types)?;
        Ok((config, text))
    }

    /// The embedded default config of SPEC §2.
    pub fn embedded(types: &dyn TypeCatalog) -> Result<Self, ConfigErrors> {
        Self::parse(EMBEDDED_DEFAULT, false, ConfigSource::Embedded, types)
    }

    /// Parses and validates config text.
    pub fn parse(text: &str, json: bool, source: ConfigSource, types: &dyn TypeCatalog) -> Result<Self, ConfigErrors> {
        let file = source.display_name();
        let tree = if json {
            node::from_json(text)
        } else {
            node::from_toml(text)
        };
        let tree = tree.map_err(|e| {
            ConfigErrors(vec![ConfigError {
                file: file.clone(),
                line: e.line,
                server: None,
                key: None,
                message: e.message,
            }])
        })?;
        let (config, mut errors) = schema::read(&tree, source);
        errors.extend(validate::check(&config, types));
        if errors.is_empty() {
            Ok(config.into_config())
        } else {
            errors.iter_mut().for_each(|e| e.file.clone_from(&file));
            // Top to bottom, as a reader fixes them; errors without a line last.
            errors.sort_by_key(|e| e.line.unwrap_or(usize::MAX));
            Err(ConfigErrors(errors))
        }
    }

    /// Refuses an admin API reachable from other machines with no token (SPEC §6), and a
    /// single token (perhaps from the environment) that is not visible ASCII or that is the
    /// secret of a named token, which it would make `admin`.
    pub fn check_exposure(&self) -> Result<(), ConfigErrors> {
        let error = |key: &str, message: String| {
            Err(ConfigErrors(vec![ConfigError {
                file: self.source.display_name(),
                line: None,
                server: None,
                key: Some(key.into()),
                message,
            }]))
        };
        // The single token may come from the environment, after the file was read.
        if let Some(token) = &self.admin.token {
            if !schema::visible_ascii(token) {
                return error(
                    "admin.token",
                    "the admin token (or SUPERSOCKET_TOKEN) has a space, a control or a non-ASCII character".into(),
                );
            }
            if let Some(named) = self.admin.tokens.iter().find(|named| &named.token == token) {
                return error(
                    "admin.token",
                    format!(
                        "the admin token (or SUPERSOCKET_TOKEN) is the same secret as token {:?}, which would make it admin",
                        named.name
                    ),
                );
            }
        }
        if self.admin.listen.is_local() || self.admin.requires_token() {
            return Ok(());
        }
        error(
            "admin.listen",
            format!(
                "admin address {} is reachable from other machines; set `admin.token` (or SUPERSOCKET_TOKEN) or listen on loopback",
                self.admin.listen
            ),
        )
    }

    /// A server by name.
    pub fn server(&self, name: &str) -> Option<&ServerConfig> {
        self.servers.iter().find(|s| s.name == name)
    }
}

/// Reads `text` as TOML and as JSON, and checks what must hold whatever it is: a config, or
/// errors that name what is wrong; never a panic. For the property tests and the fuzz targets.
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) fn check_reading(text: &str) {
    let types = crate::host::HostBuilder::new();
    for json in [false, true] {
        let source = ConfigSource::File("fuzz.toml".into());
        if let Err(errors) = Config::parse(text, json, source, types.types()) {
            assert!(!errors.0.is_empty(), "an error names what is wrong");
        }
    }
}

#[cfg(test)]
mod properties {
    //! The reader on any text: a config or a list of errors, never a panic.

    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn any_text(text in "\\PC{0,200}") {
            check_reading(&text);
        }

        /// The embedded default with a stretch replaced by other text: mostly near-valid configs.
        #[test]
        fn a_config_with_a_stretch_replaced(start in any::<usize>(), length in 0usize..40, insert in "[\\[\\]{}=\",. a-z0-9_\n-]{0,40}") {
            let text = EMBEDDED_DEFAULT;
            let start = start % text.len();
            let end = (start + length).min(text.len());
            if text.is_char_boundary(start) && text.is_char_boundary(end) {
                check_reading(&format!("{}{insert}{}", &text[..start], &text[end..]));
            }
        }
    }
}
