//! Server types: the [`Service`] trait a type implements (a pipeline filter and handlers of
//! session events) and the context its factory gets.

use std::future::Future;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use tokio_util::codec::Decoder;

use crate::config::ServerConfig;
use crate::context::{InstanceContext, Session};
use crate::filter::FilterError;
use crate::session::CloseReason;

/// A server type's behaviour: how bytes become packages, and what happens on each event.
///
/// Handlers are `async`; replies they queue with [`Session::reply`] are written together once
/// every package of a read is handled.
pub trait Service: Send + Sync + 'static {
    /// The pipeline filter that cuts the byte stream into packages.
    type Filter: Decoder<Item: Send, Error = FilterError> + Send + 'static;

    /// A fresh filter for a new session; packages longer than `max_package_length` must fail.
    fn filter(&self, max_package_length: usize) -> Self::Filter;

    /// Whether an instance of type `writer_type` may write into the sessions of this type
    /// (`DISPATCH` and the like; the writer's own rules apply too). Every type may by default;
    /// a type whose sessions speak a protocol no other instance must inject into refuses
    /// (`ftp` refuses every one).
    fn accepts_writes_from(writer_type: &str) -> bool
    where
        Self: Sized,
    {
        let _ = writer_type;
        true
    }

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

    /// The run begins to stop: its listeners are closed and its sessions about to drain.
    /// Release here what must not wait for the sessions (an FTP server's data listeners).
    fn stopping(&self, instance: &InstanceContext) {
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

    pub fn name(&self) -> &str {
        &self.config.name
    }

    pub fn config(&self) -> &ServerConfig {
        self.config
    }

    /// The type-specific `options` table, deserialized.
    pub fn options<T: DeserializeOwned>(&self) -> Result<T, String> {
        serde_json::from_value(self.config.options.clone()).map_err(|e| format!("invalid options: {e}"))
    }
}
