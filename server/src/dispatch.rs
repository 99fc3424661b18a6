//! Instances finding each other: by name (SuperSocket's `GetServerByName`), by type, and the
//! dispatcher that routes a key to one running instance of a type (pomelo's `dispatch`:
//! `crc32(key) % n`), replaceable per type. A topology version lets services notice when the
//! running set changes.

use std::collections::HashMap;
use std::sync::{Arc, RwLock, Weak};

use tokio::sync::watch;

use crate::instance::Instance;

/// Picks the index of the instance a key goes to among the running instances of a type (in
/// config order); `None` refuses the key.
pub type RouteFn = Arc<dyn Fn(&str, &[Arc<Instance>]) -> Option<usize> + Send + Sync>;

/// Whether an instance of the named type may write into the sessions of a type (the type's
/// [`Service::accepts_writes_from`](crate::Service::accepts_writes_from)).
pub(crate) type WritersFn = fn(&str) -> bool;

/// The default route: `crc32(key) % n`, CRC-32/ISO-HDLC (zlib's).
pub fn crc32_index(key: &str, n: usize) -> Option<usize> {
    (n > 0).then(|| crc32fast::hash(key.as_bytes()) as usize % n)
}

/// Where the dispatcher sent a key.
#[derive(Clone)]
pub struct Route {
    /// The instance picked.
    pub instance: Arc<Instance>,
    /// Its index among the running instances of the type.
    pub index: usize,
    /// How many running instances of the type there were.
    pub of: usize,
}

/// The host's instances as the instances themselves see them.
pub(crate) struct Directory {
    /// Every instance, in config order.
    instances: RwLock<Vec<Arc<Instance>>>,
    /// Custom routes by type.
    routes: HashMap<String, RouteFn>,
    /// Who may write into each type's sessions.
    writers: HashMap<String, WritersFn>,
    /// Bumped whenever an instance enters or leaves `running` (the instances bump it), or the
    /// set of instances changes.
    topology: Arc<watch::Sender<u64>>,
}

impl Directory {
    pub(crate) fn new(routes: HashMap<String, RouteFn>, writers: HashMap<String, WritersFn>) -> Self {
        Self {
            instances: RwLock::default(),
            routes,
            writers,
            topology: Arc::new(watch::Sender::new(0)),
        }
    }

    /// The topology version the instances of this directory bump.
    pub(crate) fn topology(&self) -> Arc<watch::Sender<u64>> {
        self.topology.clone()
    }

    pub(crate) fn instances(&self) -> Vec<Arc<Instance>> {
        self.instances.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(crate) fn replace(&self, instances: Vec<Arc<Instance>>) {
        *self.instances.write().unwrap_or_else(|e| e.into_inner()) = instances;
        self.topology_changed();
    }

    pub(crate) fn instance(&self, name: &str) -> Option<Arc<Instance>> {
        self.instances
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|i| i.name() == name)
            .cloned()
    }

    /// The running instances of a type, in config order.
    pub(crate) fn running(&self, server_type: &str) -> Vec<Arc<Instance>> {
        let instances = self.instances.read().unwrap_or_else(|e| e.into_inner());
        instances
            .iter()
            .filter(|i| i.is_running() && i.config().server_type == server_type)
            .cloned()
            .collect()
    }

    /// Routes `key` to one running instance of `server_type`.
    pub(crate) fn route(&self, server_type: &str, key: &str) -> Option<Route> {
        let running = self.running(server_type);
        let index = match self.routes.get(server_type) {
            Some(route) => route(key, &running),
            None => crc32_index(key, running.len()),
        }
        .filter(|&i| i < running.len())?;
        Some(Route {
            instance: running[index].clone(),
            index,
            of: running.len(),
        })
    }

    pub(crate) fn topology_changed(&self) {
        self.topology.send_modify(|version| *version += 1);
    }

    pub(crate) fn watch(&self) -> watch::Receiver<u64> {
        self.topology.subscribe()
    }

    /// The current topology version.
    pub(crate) fn version(&self) -> u64 {
        *self.topology.borrow()
    }
}

/// A handler's way to the other instances of its host.
#[derive(Clone)]
pub struct HostHandle(pub(crate) Weak<Directory>);

impl HostHandle {
    /// An instance by name.
    pub fn instance(&self, name: &str) -> Option<Arc<Instance>> {
        self.0.upgrade()?.instance(name)
    }

    /// Whether `target`'s type lets an instance of `writer_type` write into its sessions (a type
    /// this process does not know lets no one).
    pub fn accepts_writes(&self, target: &Instance, writer_type: &str) -> bool {
        let Some(directory) = self.0.upgrade() else {
            return false;
        };
        directory
            .writers
            .get(&target.config().server_type)
            .is_some_and(|accepts| accepts(writer_type))
    }

    /// The running instances of a type, in config order.
    pub fn running(&self, server_type: &str) -> Vec<Arc<Instance>> {
        self.0.upgrade().map(|d| d.running(server_type)).unwrap_or_default()
    }

    /// The instance of `server_type` the dispatcher picks for `key`.
    pub fn route(&self, server_type: &str, key: &str) -> Option<Route> {
        self.0.upgrade()?.route(server_type, key)
    }

    /// Changes whenever an instance starts or stops running, or a reload changes the
    /// instances: a service that routes keys re-checks its routes then.
    pub fn topology(&self) -> Option<watch::Receiver<u64>> {
        Some(self.0.upgrade()?.watch())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_is_zlibs() {
        assert_eq!(crc32fast::hash(b"abc"), 0x352441c2);
        assert_eq!(crc32_index("abc", 1), Some(0));
        assert_eq!(crc32_index("abc", 5), Some(0x352441c2 % 5));
        assert_eq!(crc32_index("abc", 0), None);
    }
}
