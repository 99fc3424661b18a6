//! Server types: the [`Service`] trait a type implements (a pipeline filter and handlers of
//! session events), the context its factory gets, and the catalog of registered types.

use std::collections::BTreeMap;
use std::fmt::Display;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use tokio_util::codec::Decoder;

use crate::config::{ServerConfig, TypeCatalog};
use crate::filter::FilterError;
use crate::instance::InstanceContext;
use crate::session::{CloseReason, Connection, Session, SessionSetup};

/// A server type's behaviour: how bytes become packages, and what happens on each event.
///
/// Handlers are `async`; replies they queue with [`Session::reply`] are written together once
/// every package of a read is handled.
pub trait Service: Send + Sync + 'static {
    /// The pipeline filter that cuts the byte stream into packages.
    type Filter: Decoder<Item: Send, Error = FilterError> + Send + 'static;

    /// A fresh filter for a new session; packages longer than `max_package_length` must fail.
    fn filter(&self, max_package_length: usize) -> Self::Filter;

    /// A session opened.
    fn connected(&self, session: &mut Session<'_>) -> impl Future<Output = ()> + Send {
        let _ = session;
        async {}
    }

    /// A package arrived.
    fn received(
        &self,
        session: &mut Session<'_>,
        package: <Self::Filter as Decoder>::Item,
    ) -> impl Future<Output = ()> + Send;

    /// The session closed; replies queued here are dropped.
    fn closed(&self, session: &mut Session<'_>, reason: CloseReason) -> impl Future<Output = ()> + Send {
        let _ = (session, reason);
        async {}
    }

    /// Another instance called this one ([`Instance::call`](crate::Instance::call)): answer
    /// its request. Messages are JSON so that calls work across isolation levels.
    fn call(
        &self,
        instance: &InstanceContext,
        request: serde_json::Value,
    ) -> impl Future<Output = Result<serde_json::Value, String>> + Send {
        let _ = (instance, request);
        async { Err("this server type takes no calls".to_owned()) }
    }

    /// The instance is running: start background work with [`InstanceContext::spawn`] here.
    fn started(&self, instance: &Arc<InstanceContext>) {
        let _ = instance;
    }
}

/// What a server type's factory knows when it makes the service of one instance.
///
/// A factory also runs when the config is checked, so it must not touch the outside world.
pub struct ServiceContext<'a> {
    config: &'a ServerConfig,
}

impl<'a> ServiceContext<'a> {
    pub(crate) fn new(config: &'a ServerConfig) -> Self {
        Self { config }
    }

    /// The instance's name.
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// The instance's whole config.
    pub fn config(&self) -> &ServerConfig {
        self.config
    }

    /// The type-specific `options` table, deserialized.
    pub fn options<T: DeserializeOwned>(&self) -> Result<T, String> {
        serde_json::from_value(self.config.options.clone()).map_err(|e| format!("invalid options: {e}"))
    }
}

/// A boxed session future.
pub(crate) type SessionFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A boxed answer to a call.
pub(crate) type CallFuture = Pin<Box<dyn Future<Output = Result<serde_json::Value, String>> + Send>>;

/// A service with its types erased, so instances of any type can be held side by side.
pub(crate) trait ErasedService: Send + Sync + 'static {
    /// Runs one connection to its end.
    fn serve(self: Arc<Self>, connection: Connection, setup: SessionSetup) -> SessionFuture;
    /// Answers a call from another instance.
    fn call(self: Arc<Self>, instance: Arc<InstanceContext>, request: serde_json::Value) -> CallFuture;
    /// The instance is running.
    fn started(&self, instance: &Arc<InstanceContext>);
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
    fn serve(self: Arc<Self>, connection: Connection, setup: SessionSetup) -> SessionFuture {
        // No wrapping async block: it would hold the connection and setup a second time in
        // every session's memory.
        Box::pin(crate::session::serve(ErasedRef(self), connection, setup))
    }

    fn call(self: Arc<Self>, instance: Arc<InstanceContext>, request: serde_json::Value) -> CallFuture {
        Box::pin(async move { self.0.call(&instance, request).await })
    }

    fn started(&self, instance: &Arc<InstanceContext>) {
        self.0.started(instance);
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
}

impl ServerTypes {
    /// The built-in types of SPEC §5.
    pub fn builtin() -> Self {
        let mut types = Self::default();
        crate::services::register_builtin(&mut types);
        types
    }

    /// Registers (or replaces) a server type.
    pub fn register<F, S, E>(&mut self, name: &str, factory: F)
    where
        F: Fn(&ServiceContext<'_>) -> Result<S, E> + Send + Sync + 'static,
        S: Service,
        E: Display,
    {
        self.factories.insert(name.to_owned(), Arc::new(factory));
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
