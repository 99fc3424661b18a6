//! The host: the registry of instances built from one config, their coordinated start at boot
//! and stop at shutdown, reload, and the host-wide facts the admin API reports. The builder
//! chooses where each isolation level runs (the launchers) and registers the built-in types.
//! `writes` changes the config through the admin API; `live` keeps the live view (events and
//! history).

mod live;
mod writes;

use std::collections::HashMap;
use std::fmt::Display;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use supersocket_proto::{HostInfo, Readiness, ReadyCheck, ReloadReport, ServerState};
use tokio::task::JoinSet;

pub use writes::{ChangeError, Changed, Edit};

use crate::config::{AdminAddr, Config, ConfigError, ConfigErrors, ConfigSource, Document, ServerConfig};
use crate::dispatch::{Directory, HostHandle, Route, RouteFn};
use crate::instance::{HostLife, Instance, InstanceEnv, Launchers, StateHook, finish_detached};
use crate::isolation::spawn::Processes;
use crate::isolation::supervisor::AgentLaunch;
use crate::isolation::view::Views;
use crate::runtime::LocalLaunch;
use crate::runtime::types::ServerTypes;
use crate::service::{Service, ServiceContext};
use crate::services::{
    COMMAND_TYPE, ChatService, CommandService, ConnectorService, EchoService, FtpService, GateService,
};
use crate::timefmt::rfc3339;

/// Bound on waiting for the agents to acknowledge a change before it is reported done.
const SETTLE_BOUND: Duration = Duration::from_secs(2);

/// Builds a host: the built-in server types plus the ones the user registers.
#[derive(Clone)]
pub struct HostBuilder {
    types: ServerTypes,
    routes: HashMap<String, RouteFn>,
    token_override: Option<String>,
    admin_override: Option<AdminAddr>,
}

impl Default for HostBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl HostBuilder {
    /// A builder that knows the built-in types of SPEC §5.
    pub fn new() -> Self {
        let mut types = ServerTypes::default();
        types.register("echo", |_: &_| Ok::<_, String>(EchoService));
        types.register(COMMAND_TYPE, CommandService::from_config);
        types.register("gate", |_: &_| Ok::<_, String>(GateService));
        types.register("connector", |_: &_| Ok::<_, String>(ConnectorService::default()));
        types.register("chat", |_: &_| Ok::<_, String>(ChatService::default()));
        types.register("ftp", FtpService::from_config);
        Self {
            types,
            routes: HashMap::new(),
            token_override: None,
            admin_override: None,
        }
    }

    /// Registers a server type; `factory` makes the service of each instance of that type from
    /// its config (it also runs on `--check`, so it must not touch the outside world).
    pub fn server_type<F, S, E>(mut self, name: &str, factory: F) -> Self
    where
        F: Fn(&ServiceContext<'_>) -> Result<S, E> + Send + Sync + 'static,
        S: Service,
        E: Display,
    {
        self.types.register(name, factory);
        self
    }

    /// Replaces the dispatcher's route for one server type: `route(key, running)` picks the
    /// index of the instance (among the running ones of the type, in config order) a key goes
    /// to. The default is `crc32(key) % running.len()`.
    pub fn route<F>(mut self, server_type: &str, route: F) -> Self
    where
        F: Fn(&str, &[Arc<Instance>]) -> Option<usize> + Send + Sync + 'static,
    {
        self.routes.insert(server_type.to_owned(), Arc::new(route));
        self
    }

    /// The server types and custom routes, for an agent process building its own directory.
    pub(crate) fn into_parts(self) -> (ServerTypes, HashMap<String, RouteFn>) {
        (self.types, self.routes)
    }

    /// The types known so far (used to validate configs).
    pub fn types(&self) -> &ServerTypes {
        &self.types
    }

    /// An admin address that wins over the config's (the daemon passes `--admin`).
    pub fn admin_listen_override(mut self, admin: Option<AdminAddr>) -> Self {
        self.admin_override = admin;
        self
    }

    /// An admin token that wins over the config's, now and after every reload (the daemon
    /// passes `$SUPERSOCKET_TOKEN`).
    pub fn admin_token_override(mut self, token: Option<String>) -> Self {
        self.token_override = token.filter(|t| !t.is_empty());
        self
    }

    /// The host for `config`; no instance is started yet.
    pub fn build(self, mut config: Config) -> Host {
        if self.token_override.is_some() {
            config.admin.token.clone_from(&self.token_override);
        }
        let directory = Arc::new(Directory::new(self.routes, self.types.writers()));
        let views = Arc::new(Views::new(Arc::downgrade(&directory)));
        let life = HostLife::default();
        let local: Arc<LocalLaunch> = Arc::new(LocalLaunch::new(
            self.types.clone(),
            HostHandle(Arc::downgrade(&directory)),
        ));
        let agents = AgentLaunch::new(
            Arc::downgrade(&directory),
            views.clone(),
            Arc::new(Processes),
            life.clone(),
        );
        let live = Arc::new(crate::events::Live::default());
        let states = StateHook::new({
            let live = live.clone();
            move |event| live.state(event)
        });
        let env = InstanceEnv {
            launchers: Launchers {
                none: Some(local.clone()),
                runtime: Some(local),
                process: Some(Arc::new(agents)),
            },
            topology: directory.topology(),
            life,
            states,
        };
        let instances = config
            .servers
            .iter()
            .map(|server| Arc::new(Instance::new(server.clone(), env.clone())))
            .collect();
        directory.replace(instances);
        let document = Document::open(&config.source).unwrap_or_else(|e| {
            // Changes through the API then ask for a reload first (the file differs from this).
            tracing::warn!("cannot read the config file again: {e}");
            Document::unreadable(&config.source)
        });
        let host = Host {
            inner: Arc::new(HostInner {
                types: self.types,
                token_override: self.token_override,
                admin_override: self.admin_override,
                env,
                views,
                persisted: std::sync::atomic::AtomicBool::new(document.is_persisted()),
                writes: tokio::sync::Mutex::new(document),
                config: RwLock::new(Current { config, generation: 0 }),
                etag_key: std::hash::RandomState::new(),
                live,
                directory,
                started_at: SystemTime::now(),
                started: Instant::now(),
            }),
        };
        host.keep_live_view();
        host
    }
}

/// Why a reload changed nothing, or not everything.
#[derive(Debug)]
pub enum ReloadError {
    /// The file is invalid; nothing changed.
    Invalid(ConfigErrors),
    /// The file has no servers; nothing changed (ask with `allow_empty` to remove them all).
    Empty,
    /// The host is shutting down; nothing changed.
    ShuttingDown,
    /// Some changes could not be applied: those instances keep their old config (and serve,
    /// if they did). The rest was applied.
    Unapplied {
        /// What was applied.
        report: ReloadReport,
        /// One line per change not applied, naming the server and the cause.
        failures: Vec<String>,
    },
}

/// A running host; cheap to clone.
#[derive(Clone)]
pub struct Host {
    inner: Arc<HostInner>,
}

struct HostInner {
    /// The server types, for checking configs a reload reads.
    types: ServerTypes,
    /// Admin token that wins over the config's.
    token_override: Option<String>,
    /// Admin address that wins over the config's.
    admin_override: Option<AdminAddr>,
    /// What instances are made with (for instances a reload adds).
    env: InstanceEnv,
    /// What the agents know of the instances.
    views: Arc<Views>,
    /// The config file as last read or written; its lock serialises reloads and changes, and a
    /// shutdown after them.
    writes: tokio::sync::Mutex<Document>,
    config: RwLock<Current>,
    /// Makes the `ETag` of a config: unguessable, and different in each run of the host.
    etag_key: std::hash::RandomState,
    /// Whether the config is in a file (else the embedded default, not written yet).
    persisted: std::sync::atomic::AtomicBool,
    /// Events and history for the live view.
    live: Arc<crate::events::Live>,
    /// Every instance, by name and type.
    directory: Arc<Directory>,
    started_at: SystemTime,
    started: Instant,
}

impl Host {
    /// Every instance, in config order.
    pub fn instances(&self) -> Vec<Arc<Instance>> {
        self.inner.directory.instances()
    }

    /// One instance by name.
    pub fn instance(&self, name: &str) -> Option<Arc<Instance>> {
        self.inner.directory.instance(name)
    }

    /// The instance of `server_type` the dispatcher picks for `key`.
    pub fn route(&self, server_type: &str, key: &str) -> Option<Route> {
        self.inner.directory.route(server_type, key)
    }

    /// The way handlers reach the other instances, for code outside any instance.
    pub fn handle(&self) -> HostHandle {
        HostHandle(Arc::downgrade(&self.inner.directory))
    }

    fn current(&self) -> std::sync::RwLockReadGuard<'_, Current> {
        self.inner.config.read().unwrap_or_else(|e| e.into_inner())
    }

    fn config(&self) -> Config {
        self.current().config.clone()
    }

    /// The stop bound of the config.
    pub fn shutdown_timeout(&self) -> Duration {
        self.current().config.shutdown_timeout
    }

    /// The admin API's settings as the config says now (its tokens change with a reload).
    pub fn admin_config(&self) -> crate::config::AdminConfig {
        self.current().config.admin.clone()
    }

    /// Waits (briefly) until every agent knows the instances as they are now: an operation is
    /// reported done only once the agents route by its result.
    pub async fn settle(&self) {
        self.inner.views.settle(SETTLE_BOUND).await;
    }

    /// Re-reads the config file and applies the difference: servers added are created (and
    /// started if autostart), removed ones stopped and dropped, changed ones restarted with
    /// their new settings (or updated while they run, when every change is live), unchanged ones
    /// left alone with their sessions. An invalid file, or one with no servers (unless
    /// `allow_empty`), changes nothing. A change that cannot be applied (a new port in use)
    /// leaves that instance with its old config and is reported. Runs to its end even if the
    /// caller stops waiting.
    pub async fn reload(&self, allow_empty: bool) -> Result<ReloadReport, ReloadError> {
        let host = self.clone();
        finish_detached(async move { host.reload_attached(allow_empty).await }).await
    }

    async fn reload_attached(&self, allow_empty: bool) -> Result<ReloadReport, ReloadError> {
        // One reload at a time, each reading the file when its turn comes: the last one asked
        // applies the file as it is last.
        let mut document = self.inner.writes.lock().await;
        let shutting_down = &self.inner.env.life.shutting_down;
        if shutting_down.is_cancelled() {
            return Err(ReloadError::ShuttingDown);
        }
        let source = document.source_read();
        let types = self.inner.types.clone();
        // Reading the file and checking its TLS files and type options touch the disk. A read
        // that blocks (a FIFO) is abandoned at shutdown.
        let loaded = tokio::task::spawn_blocking(move || read(&source, &types));
        let (next, text) = tokio::select! {
            loaded = loaded => match loaded {
                Ok(loaded) => loaded.map_err(ReloadError::Invalid)?,
                Err(_) => return Err(ReloadError::ShuttingDown),
            },
            () = shutting_down.cancelled() => return Err(ReloadError::ShuttingDown),
        };
        if next.servers.is_empty() && !allow_empty {
            return Err(ReloadError::Empty);
        }
        let next = self.with_overrides(next);
        self.check_exposure(&next).map_err(ReloadError::Invalid)?;
        if let Some(text) = text {
            document.reread(text);
        }
        let plan = self.plan(&next).await;
        self.apply(next, plan, None).await
    }

    /// Whether `next` leaves the admin API open to other machines without a token: at the
    /// address it names (from the next start) or at the one bound now (until then).
    fn check_exposure(&self, next: &Config) -> Result<(), ConfigErrors> {
        next.check_exposure()?;
        let bound = self.current().config.admin.listen.clone();
        if bound.is_local() || next.admin.requires_token() {
            return Ok(());
        }
        Err(ConfigErrors(vec![ConfigError {
            file: next.source.display_name(),
            line: None,
            server: None,
            key: Some("admin.token".into()),
            message: format!(
                "the admin API listens on {bound}, reachable from other machines, until the next start; a config without `admin.token` or `admin.tokens` would leave it open"
            ),
        }]))
    }

    /// The command line's and the environment's settings, which win over any config's.
    fn with_overrides(&self, mut next: Config) -> Config {
        if self.inner.token_override.is_some() {
            next.admin.token.clone_from(&self.inner.token_override);
        }
        if let Some(admin) = &self.inner.admin_override {
            next.admin.listen = admin.clone();
        }
        if next.admin.listen != self.current().config.admin.listen {
            tracing::warn!(
                "admin.listen changed to {}; it takes effect at the next start",
                next.admin.listen
            );
        }
        next
    }

    /// Makes `next` the config by carrying out `plan`: stops (for at most `timeout`, else the
    /// new config's `shutdown_timeout`) what it removes, restarts or updates what changed,
    /// starts what it adds. Changes `plan` found impossible, and those that fail now, leave
    /// their instances as they were and are reported.
    async fn apply(&self, next: Config, plan: Plan, timeout: Option<Duration>) -> Result<ReloadReport, ReloadError> {
        let timeout = timeout.unwrap_or(next.shutdown_timeout);
        let Plan {
            mut report,
            instances,
            changed,
            added,
            removed,
            mut failures,
            freed: _,
        } = plan;
        self.inner.directory.replace(instances);
        {
            let mut current = self.inner.config.write().unwrap_or_else(|e| e.into_inner());
            if current.config != next {
                current.generation += 1;
            }
            current.config = next;
        }

        // The removed ones stop first: what they hold may be what the others bind.
        let stops = removed
            .into_iter()
            .map(|instance| async move { instance.stop(timeout).await });
        wait_for_all(stops.collect()).await;
        let mut work = JoinSet::new();
        for (instance, config, live) in changed {
            work.spawn(async move {
                let applied = if live {
                    instance.update(config).await
                } else {
                    instance.reconfigure(config, timeout).await
                };
                applied.map_err(|e| (instance.name().to_owned(), format!("{e}; its old config is kept")))
            });
        }
        for instance in added.into_iter().filter(|i| i.config().autostart) {
            work.spawn(async move {
                let started = instance.start().await;
                started.map_err(|e| (instance.name().to_owned(), e.to_string()))
            });
        }
        while let Some(done) = work.join_next().await {
            failures.extend(done.ok().and_then(Result::err));
        }
        self.settle().await;
        tracing::info!(
            added = ?report.added, removed = ?report.removed, changed = ?report.changed, updated = ?report.updated,
            unchanged = report.unchanged.len(), failed = failures.len(), "config applied"
        );
        self.config_event(&report);
        if failures.is_empty() {
            return Ok(report);
        }
        // A changed server that kept its old config is not reported as changed.
        let applied = |name: &String| !failures.iter().any(|(failed, _)| failed == name);
        report.changed.retain(applied);
        report.updated.retain(applied);
        let failures = failures
            .iter()
            .map(|(name, cause)| format!("{name}: {cause}"))
            .collect();
        Err(ReloadError::Unapplied { report, failures })
    }

    /// What a reload to `next` does to each instance. A changed instance whose new listeners
    /// cannot be bound now keeps its old config (and its sessions), reported as a failure.
    async fn plan(&self, next: &Config) -> Plan {
        let current = self.instances();
        let removed: Vec<Arc<Instance>> = current
            .iter()
            .filter(|i| next.server(i.name()).is_none())
            .cloned()
            .collect();
        let mut plan = Plan {
            report: ReloadReport {
                removed: removed.iter().map(|i| i.name().to_owned()).collect(),
                ..ReloadReport::default()
            },
            // What the removed ones hold is free for the rest: they stop first.
            freed: removed.iter().flat_map(|i| i.held()).collect(),
            removed,
            ..Plan::default()
        };
        for server in &next.servers {
            let Some(instance) = current.iter().find(|i| i.name() == server.name) else {
                plan.report.added.push(server.name.clone());
                let instance = Arc::new(Instance::new(server.clone(), self.inner.env.clone()));
                plan.added.push(instance.clone());
                plan.instances.push(instance);
                continue;
            };
            plan.instances.push(instance.clone());
            if *instance.config() == *server {
                plan.report.unchanged.push(server.name.clone());
                continue;
            }
            let live = crate::config::changes(&instance.config(), server)
                .iter()
                .all(|c| c.live);
            match probe(instance, server, &plan.freed).await {
                Ok(()) => {
                    let names = if live {
                        &mut plan.report.updated
                    } else {
                        &mut plan.report.changed
                    };
                    names.push(server.name.clone());
                    plan.changed.push((instance.clone(), server.clone(), live));
                }
                Err(e) => plan
                    .failures
                    .push((server.name.clone(), format!("{e}; its old config is kept"))),
            }
        }
        plan
    }

    /// Starts every autostart instance, side by side; one that fails stays `failed` and does not
    /// stop the others. Returns once the agents know the outcome.
    pub async fn start_autostart(&self) {
        let starts = self
            .instances()
            .into_iter()
            .filter(|i| i.config().autostart)
            .map(start_recorded);
        wait_for_all(starts.collect()).await;
        self.settle().await;
    }

    /// Graceful shutdown: readiness fails at once, no instance starts any more, then every
    /// instance stops side by side; a stop still draining when the shutdown timeout has passed
    /// (one asked with a longer timeout of its own) closes its sessions then.
    pub async fn shutdown(&self) {
        let life = &self.inner.env.life;
        life.shutting_down.cancel();
        let timeout = self.shutdown_timeout();
        let hurry = life.hurry.clone();
        tokio::spawn(async move {
            tokio::time::sleep(timeout).await;
            hurry.cancel();
        });
        // A reload or change applying its changes finishes first (its stops hurry too).
        let _serialised = self.inner.writes.lock().await;
        let stops = self
            .instances()
            .into_iter()
            .map(|instance| async move { instance.stop(timeout).await });
        wait_for_all(stops.collect()).await;
        // Event and log streams end once their readers have the last states.
        self.inner.live.close();
    }

    /// Whether a shutdown has begun.
    pub fn is_stopping(&self) -> bool {
        self.inner.env.life.shutting_down.is_cancelled()
    }

    /// Readiness: every autostart instance running (and answering) and the host not shutting
    /// down.
    pub fn readiness(&self, verbose: bool) -> Readiness {
        let stopping = self.is_stopping();
        let mut checks = vec![ReadyCheck {
            name: "host".into(),
            ok: !stopping,
            state: if stopping { "stopping" } else { "running" }.into(),
            detail: verbose.then(|| if stopping { "shutting down" } else { "serving" }.into()),
        }];
        for instance in self.instances().iter().filter(|i| i.config().autostart) {
            let info = instance.info();
            let trouble = instance.trouble();
            let ok = info.state == ServerState::Running && trouble.is_none();
            let detail = verbose.then(|| match (&info.last_error, ok, trouble) {
                (_, true, _) => format!("running for {}s", info.uptime_secs),
                (_, false, Some(trouble)) => trouble,
                (Some(error), false, None) => error.clone(),
                (None, false, None) => format!("autostart server is {}", info.state),
            });
            checks.push(ReadyCheck {
                name: info.name,
                ok,
                state: info.state.to_string(),
                detail,
            });
        }
        Readiness {
            ready: checks.iter().all(|c| c.ok),
            checks,
        }
    }

    /// The host facts of `GET /api/v1/host`.
    pub fn info(&self) -> HostInfo {
        let persisted = self.inner.persisted.load(std::sync::atomic::Ordering::Acquire);
        let config = &self.current().config;
        let usage = self.inner.live.usages.of(std::process::id());
        HostInfo {
            version: env!("CARGO_PKG_VERSION").into(),
            pid: std::process::id(),
            started_at: rfc3339(self.inner.started_at),
            uptime_secs: self.inner.started.elapsed().as_secs(),
            config_path: match &config.source {
                ConfigSource::File(path) => Some(path.display().to_string()),
                ConfigSource::Embedded => None,
            },
            persisted,
            state: if self.is_stopping() { "stopping" } else { "running" }.into(),
            rss_bytes: usage.map(|u| u.rss_bytes),
            cpu_percent: usage.and_then(|u| u.cpu_percent),
        }
    }
}

/// The config in force, and how many times it changed.
struct Current {
    config: Config,
    /// Bumped at every change of `config`; the `ETag` is made from it.
    generation: u64,
}

/// Reads a config source: the config, and the file's text (`None` for the embedded default).
fn read(source: &ConfigSource, types: &ServerTypes) -> Result<(Config, Option<String>), ConfigErrors> {
    match source {
        ConfigSource::File(path) => Config::read(path, types).map(|(config, text)| (config, Some(text))),
        ConfigSource::Embedded => Ok((Config::embedded(types)?, None)),
    }
}

/// What a reload does.
#[derive(Default)]
struct Plan {
    report: ReloadReport,
    /// The instances after it, in the new config order.
    instances: Vec<Arc<Instance>>,
    /// Changed instances, their new configs, and whether every change is live.
    changed: Vec<(Arc<Instance>, ServerConfig, bool)>,
    added: Vec<Arc<Instance>>,
    removed: Vec<Arc<Instance>>,
    /// The addresses the removed instances hold.
    freed: Vec<SocketAddr>,
    /// Changes found impossible before anything was stopped: the server and why.
    failures: Vec<(String, String)>,
}

/// Checks that the new listeners of an instance could be bound, beside those it holds and
/// those `freed` (held by instances removed before it starts).
async fn probe(instance: &Instance, next: &ServerConfig, freed: &[SocketAddr]) -> Result<(), String> {
    let mut held = instance.held();
    held.extend_from_slice(freed);
    let next = next.clone();
    tokio::task::spawn_blocking(move || crate::runtime::listener::probe(&next, &held))
        .await
        .map_err(|_| "the check was cut short".to_owned())?
}

/// Starts an instance; a failure needs no handling here, it is recorded in the instance
/// (`failed`, `last_error`) and logged.
async fn start_recorded(instance: Arc<Instance>) {
    let _ = instance.start().await;
}

/// Waits for every task of `set`; one that panicked (its panic is logged) does not stop the
/// wait for the others.
async fn wait_for_all(mut set: JoinSet<()>) {
    while set.join_next().await.is_some() {}
}
