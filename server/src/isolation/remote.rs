//! Operations on an instance that runs in the process at the other end of a link: the host's
//! way to an instance in its agent, and an agent's way to the host's other instances.

use std::sync::{Mutex, RwLock};
use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;
use supersocket_proto::SessionInfo;
use supersocket_proto::agent::{Counters, Op};

use super::link::Link;
use crate::instance::{Backend, DELIVERY_DEADLINE, REQUEST_DEADLINE};
use crate::outcome::{BoxFuture, OpError, Pending};
use crate::session::SessionId;

/// A link silent for this long is reported as trouble (it reports every `STATS_EVERY`).
pub(crate) const SILENCE_REPORTED: Duration = Duration::from_secs(1);

/// An instance across a link.
pub(crate) struct Remote {
    server: String,
    /// The link, while the process at its end runs.
    link: RwLock<Option<Link>>,
    /// Its counters as last reported.
    counters: Mutex<Counters>,
}

impl Remote {
    pub(crate) fn new(server: &str) -> Self {
        Self {
            server: server.to_owned(),
            link: RwLock::default(),
            counters: Mutex::default(),
        }
    }

    /// Operations go over `link` from now on (`None`: the instance is not running).
    pub(crate) fn attach(&self, link: Option<Link>) {
        *self.link.write().unwrap_or_else(|e| e.into_inner()) = link;
    }

    /// The link to the process that runs it now, if one does.
    pub(crate) fn link(&self) -> Option<Link> {
        self.link.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(crate) fn set_counters(&self, counters: Counters) {
        *self.counters.lock().unwrap_or_else(|e| e.into_inner()) = counters;
    }

    fn request(&self, op: Op, payload: Bytes, deadline: Duration) -> Pending<Value> {
        match &*self.link.read().unwrap_or_else(|e| e.into_inner()) {
            Some(link) => link.request(op, payload, deadline),
            None => Pending::ready(Err(OpError::NotRunning)),
        }
    }
}

/// The count a multicast or broadcast answered.
fn count(answer: Value) -> usize {
    answer.as_u64().unwrap_or(0) as usize
}

impl Backend for Remote {
    fn send_to(&self, session: SessionId, bytes: Bytes) -> Pending<()> {
        let op = Op::Send {
            server: self.server.clone(),
            session: session.to_wire(),
        };
        self.request(op, bytes, DELIVERY_DEADLINE).map(drop)
    }

    fn multicast(&self, sessions: Vec<SessionId>, bytes: Bytes) -> Pending<usize> {
        let op = Op::Multicast {
            server: self.server.clone(),
            sessions: sessions.into_iter().map(SessionId::to_wire).collect(),
        };
        self.request(op, bytes, DELIVERY_DEADLINE).map(count)
    }

    fn broadcast(&self, bytes: Bytes) -> Pending<usize> {
        let op = Op::Broadcast {
            server: self.server.clone(),
        };
        self.request(op, bytes, DELIVERY_DEADLINE).map(count)
    }

    fn call(&self, request: Value) -> Pending<Value> {
        let op = Op::Call {
            server: self.server.clone(),
            request,
        };
        self.request(op, Bytes::new(), REQUEST_DEADLINE)
    }

    fn sessions(&self, limit: usize) -> BoxFuture<'static, Result<Vec<SessionInfo>, OpError>> {
        let op = Op::Sessions {
            server: self.server.clone(),
            limit,
        };
        let list = self.request(op, Bytes::new(), REQUEST_DEADLINE);
        Box::pin(async move {
            serde_json::from_value(list.await?).map_err(|e| OpError::Refused(format!("unreadable session list: {e}")))
        })
    }

    fn kick(&self, session: SessionId) -> BoxFuture<'static, Result<(), OpError>> {
        let op = Op::Kick {
            server: self.server.clone(),
            session: session.to_wire(),
        };
        Box::pin(self.request(op, Bytes::new(), REQUEST_DEADLINE).map(drop))
    }

    fn stats(&self) -> Counters {
        *self.counters.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn trouble(&self) -> Option<String> {
        let link = self.link.read().unwrap_or_else(|e| e.into_inner()).clone()?;
        let silent = link.silent_for();
        (silent >= SILENCE_REPORTED).then(|| format!("its agent has not answered for {:.1} s", silent.as_secs_f64()))
    }
}
