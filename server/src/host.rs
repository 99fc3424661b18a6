//! The host: the registry of instances built from one config, their coordinated start at boot
//! and stop at shutdown, and the host-wide facts the admin API reports.

use std::collections::HashMap;
use std::fmt::Display;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use supersocket_proto::{HostInfo, Readiness, ReadyCheck, ReloadReport, ServerState};

use tokio::task::JoinSet;

use crate::config::{Config, ConfigErrors, ConfigSource};
use crate::dispatch::{Directory, HostHandle, Route, RouteFn};
use crate::instance::Instance;
use crate::service::{ServerTypes, Service, ServiceContext};
use crate::timefmt::rfc3339;

/// Builds a host: the built-in server types plus the ones the user registers.
#[derive(Clone)]
pub struct HostBuilder {
    types: ServerTypes,
    routes: HashMap<String, RouteFn>,
    token_override: Option<String>,
}

impl Default for HostBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl HostBuilder {
    /// A builder that knows the built-in types.
    pub fn new() -> Self {
        Self {
            types: ServerTypes::builtin(),
            routes: HashMap::new(),
            token_override: None,
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
        let directory = Arc::new(Directory::new(self.routes));
        let instances = config
            .servers
            .iter()
            .map(|server| {
                Arc::new(Instance::new(
                    server.clone(),
                    self.types.clone(),
                    Arc::downgrade(&directory),
                ))
            })
            .collect();
        directory.replace(instances);
        Host {
            inner: Arc::new(HostInner {
                types: self.types,
                token_override: self.token_override,
                reload: tokio::sync::Mutex::new(()),
                config: RwLock::new(config),
                directory,
                started_at: SystemTime::now(),
                started: Instant::now(),
                stopping: AtomicBool::new(false),
            }),
        }
    }
}

/// A running host; cheap to clone.
#[derive(Clone)]
pub struct Host {
    inner: Arc<HostInner>,
}

struct HostInner {
    /// The server types, for instances created by a reload.
    types: ServerTypes,
    /// Admin token that wins over the config's.
    token_override: Option<String>,
    /// Serialises reloads.
    reload: tokio::sync::Mutex<()>,
    config: RwLock<Config>,
    /// Every instance, by name and type.
    directory: Arc<Directory>,
    started_at: SystemTime,
    started: Instant,
    /// Set once shutdown begins: readiness fails from then on.
    stopping: AtomicBool,
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

    fn config(&self) -> std::sync::RwLockReadGuard<'_, Config> {
        self.inner.config.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The stop bound of the config.
    pub fn shutdown_timeout(&self) -> Duration {
        self.config().shutdown_timeout
    }

    /// The bearer token the admin API requires, if any.
    pub fn admin_token(&self) -> Option<String> {
        self.config().admin.token.clone()
    }

    /// Re-reads the config file and applies the difference: servers added are created (and
    /// started if autostart), removed ones stopped and dropped, changed ones restarted with
    /// their new settings, unchanged ones left alone with their sessions. An invalid file
    /// changes nothing.
    pub async fn reload(&self) -> Result<ReloadReport, ConfigErrors> {
        let _serialised = self.inner.reload.lock().await;
        let source = self.config().source.clone();
        let mut next = match &source {
            ConfigSource::File(path) => Config::load(path, &self.inner.types)?,
            ConfigSource::Embedded => Config::embedded(&self.inner.types)?,
        };
        if self.inner.token_override.is_some() {
            next.admin.token.clone_from(&self.inner.token_override);
        }
        if next.admin.listen != self.config().admin.listen {
            tracing::warn!(
                "admin.listen changed to {}; it takes effect at the next start",
                next.admin.listen
            );
        }
        let timeout = next.shutdown_timeout;
        let current = self.instances();
        let mut report = ReloadReport::default();
        let mut instances = Vec::with_capacity(next.servers.len());
        let mut changed = Vec::new();
        let mut added = Vec::new();
        for server in &next.servers {
            match current.iter().find(|i| i.name() == server.name) {
                Some(instance) if *instance.config() == *server => {
                    report.unchanged.push(server.name.clone());
                    instances.push(instance.clone());
                }
                Some(instance) => {
                    report.changed.push(server.name.clone());
                    changed.push((instance.clone(), server.clone()));
                    instances.push(instance.clone());
                }
                None => {
                    report.added.push(server.name.clone());
                    let directory = Arc::downgrade(&self.inner.directory);
                    let instance = Arc::new(Instance::new(server.clone(), self.inner.types.clone(), directory));
                    added.push(instance.clone());
                    instances.push(instance);
                }
            }
        }
        let removed: Vec<_> = current
            .into_iter()
            .filter(|i| next.server(i.name()).is_none())
            .collect();
        report.removed = removed.iter().map(|i| i.name().to_owned()).collect();
        self.inner.directory.replace(instances);
        *self.inner.config.write().unwrap_or_else(|e| e.into_inner()) = next;

        let mut work = JoinSet::new();
        for instance in removed {
            work.spawn(async move { instance.stop(timeout).await });
        }
        for (instance, config) in changed {
            work.spawn(async move { instance.reconfigure(config, timeout).await });
        }
        for instance in added.into_iter().filter(|i| i.config().autostart) {
            work.spawn(start_recorded(instance));
        }
        wait_for_all(work).await;
        tracing::info!(
            added = ?report.added, removed = ?report.removed, changed = ?report.changed,
            unchanged = report.unchanged.len(), "config reloaded"
        );
        Ok(report)
    }

    /// Starts every autostart instance, side by side; one that fails stays `failed` and does not
    /// stop the others.
    pub async fn start_autostart(&self) {
        let starts = self
            .instances()
            .into_iter()
            .filter(|i| i.config().autostart)
            .map(start_recorded);
        wait_for_all(starts.collect()).await;
    }

    /// Graceful shutdown: readiness fails at once, then every instance stops side by side
    /// within the shutdown timeout.
    pub async fn shutdown(&self) {
        self.inner.stopping.store(true, Ordering::SeqCst);
        let timeout = self.shutdown_timeout();
        let stops = self
            .instances()
            .into_iter()
            .map(|instance| async move { instance.stop(timeout).await });
        wait_for_all(stops.collect()).await;
    }

    /// Whether a shutdown has begun.
    pub fn is_stopping(&self) -> bool {
        self.inner.stopping.load(Ordering::SeqCst)
    }

    /// Readiness: every autostart instance running and the host not shutting down.
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
            let ok = info.state == ServerState::Running;
            let detail = verbose.then(|| match (&info.last_error, ok) {
                (_, true) => format!("running for {}s", info.uptime_secs),
                (Some(error), false) => error.clone(),
                (None, false) => format!("autostart server is {}", info.state),
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
        let config = self.config();
        HostInfo {
            version: env!("CARGO_PKG_VERSION").into(),
            pid: std::process::id(),
            started_at: rfc3339(self.inner.started_at),
            uptime_secs: self.inner.started.elapsed().as_secs(),
            config_path: match &config.source {
                ConfigSource::File(path) => Some(path.display().to_string()),
                ConfigSource::Embedded => None,
            },
            state: if self.is_stopping() { "stopping" } else { "running" }.into(),
        }
    }
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
