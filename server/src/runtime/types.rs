//! The catalog of server types a host knows, and their services with the types erased so that
//! instances of any type can be held side by side.

use std::collections::BTreeMap;
use std::fmt::Display;
use std::sync::Arc;

use super::driver::{Connection, SessionSetup};
use crate::config::{ServerConfig, TypeCatalog};
use crate::context::InstanceContext;
use crate::dispatch::WritersFn;
use crate::outcome::BoxFuture;
use crate::service::{Service, ServiceContext};

/// A service with its type erased.
pub(crate) trait ErasedService: Send + Sync + 'static {
    /// Runs one connection to its end.
    fn serve(self: Arc<Self>, connection: Connection, setup: SessionSetup) -> BoxFuture<'static, ()>;
    /// Answers a call from another instance.
    fn call(
        self: Arc<Self>,
        instance: Arc<InstanceContext>,
        request: serde_json::Value,
    ) -> BoxFuture<'static, Result<serde_json::Value, String>>;
    fn started(&self, instance: &Arc<InstanceContext>);
    fn stopping(&self, instance: &InstanceContext);
}

struct Erased<S>(S);

/// An owned handle on an erased service that derefs to the service, for a session to keep.
struct ErasedRef<S>(Arc<Erased<S>>);

impl<S> std::ops::Deref for ErasedRef<S> {
    type Target = S;

    fn deref(&self) -> &S {
        &self.0.0
    }
}

impl<S: Service> ErasedService for Erased<S> {
    fn serve(self: Arc<Self>, connection: Connection, setup: SessionSetup) -> BoxFuture<'static, ()> {
        super::driver::serve(ErasedRef(self), connection, setup)
    }

    fn call(
        self: Arc<Self>,
        instance: Arc<InstanceContext>,
        request: serde_json::Value,
    ) -> BoxFuture<'static, Result<serde_json::Value, String>> {
        Box::pin(async move { self.0.call(&instance, request).await })
    }

    fn started(&self, instance: &Arc<InstanceContext>) {
        self.0.started(instance);
    }

    fn stopping(&self, instance: &InstanceContext) {
        self.0.stopping(instance);
    }
}

/// Makes the service of an instance from its config.
trait MakeService: Send + Sync {
    fn make(&self, context: &ServiceContext<'_>) -> Result<Arc<dyn ErasedService>, String>;
}

impl<F, S, E> MakeService for F
where
    F: Fn(&ServiceContext<'_>) -> Result<S, E> + Send + Sync,
    S: Service,
    E: Display,
{
    fn make(&self, context: &ServiceContext<'_>) -> Result<Arc<dyn ErasedService>, String> {
        match self(context) {
            Ok(service) => Ok(Arc::new(Erased(service))),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// The server types a host knows: the built-in ones and those registered by the user.
#[derive(Clone, Default)]
pub struct ServerTypes {
    factories: BTreeMap<String, Arc<dyn MakeService>>,
    /// Each type's [`Service::accepts_writes_from`].
    writers: BTreeMap<String, WritersFn>,
}

impl ServerTypes {
    /// Registers (or replaces) a server type.
    pub fn register<F, S, E>(&mut self, name: &str, factory: F)
    where
        F: Fn(&ServiceContext<'_>) -> Result<S, E> + Send + Sync + 'static,
        S: Service,
        E: Display,
    {
        self.factories.insert(name.to_owned(), Arc::new(factory));
        self.writers.insert(name.to_owned(), S::accepts_writes_from);
    }

    /// Who may write into each type's sessions, for the instances' directory.
    pub(crate) fn writers(&self) -> std::collections::HashMap<String, WritersFn> {
        self.writers.iter().map(|(name, f)| (name.clone(), *f)).collect()
    }

    /// The names of every known type.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.factories.keys().map(String::as_str)
    }

    /// Makes the service of an instance.
    pub(crate) fn make(&self, config: &ServerConfig) -> Result<Arc<dyn ErasedService>, String> {
        let factory = self
            .factories
            .get(&config.server_type)
            .ok_or_else(|| format!("unknown server type {:?}", config.server_type))?;
        factory.make(&ServiceContext::new(config))
    }
}

impl TypeCatalog for ServerTypes {
    fn contains(&self, name: &str) -> bool {
        self.factories.contains_key(name)
    }

    fn check_options(&self, server: &ServerConfig) -> Result<(), String> {
        self.make(server).map(drop)
    }
}
