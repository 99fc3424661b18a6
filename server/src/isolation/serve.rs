//! Answering the other side's requests on instances of this process. Sends and broadcasts are
//! submitted the moment their frame is read, so they keep the order in which the other side
//! sent them, and calls start in that order; everything that waits (room in a full queue, the
//! rest of a call) waits in a task of its own, so one slow target never holds up the requests
//! behind it.

use std::sync::Arc;

use bytes::Bytes;
use serde_json::Value;
use supersocket_proto::agent::Op;

use super::link::Link;
use crate::instance::Instance;
use crate::outcome::{OpError, Pending};
use crate::session::SessionId;

/// Carries out `op` on `target` (`None`: no such instance here) and replies to request `id`.
/// `Stop`, `Sync` and `Update` are not operations on an instance; the agent answers them itself.
pub(crate) fn serve(link: &Link, id: u64, op: Op, payload: Bytes, target: Option<Arc<Instance>>) {
    let Some(target) = target else {
        return link.reply(id, Err(OpError::NotRunning));
    };
    match op {
        Op::Send { session, .. } => {
            let sent = target.send_to(SessionId::from_wire(session), payload);
            reply_when(link, id, sent.map(|()| Value::Null));
        }
        Op::Multicast { sessions, .. } => {
            let sessions = sessions.into_iter().map(SessionId::from_wire).collect();
            let count = target.multicast(sessions, payload);
            reply_when(link, id, count.map(Value::from));
        }
        Op::Broadcast { .. } => {
            let count = target.broadcast(payload);
            reply_when(link, id, count.map(Value::from));
        }
        Op::Call { request, .. } => reply_when(link, id, target.call(request)),
        Op::Sessions { limit, .. } => {
            let link = link.clone();
            tokio::spawn(async move {
                let list = target.sessions(limit).await;
                link.reply(id, list.map(|list| serde_json::to_value(list).unwrap_or_default()));
            });
        }
        Op::Kick { session, .. } => {
            let link = link.clone();
            tokio::spawn(async move {
                let kicked = target.kick(SessionId::from_wire(session)).await;
                link.reply(id, kicked.map(|()| Value::Null));
            });
        }
        Op::Stop { .. } | Op::Sync(_) | Op::Update { .. } => {
            link.reply(id, Err(OpError::Refused("not an operation on an instance".into())))
        }
    }
}

/// Replies now if the outcome is known, else once it is.
fn reply_when(link: &Link, id: u64, pending: Pending<Value>) {
    match pending.now() {
        Ok(outcome) => link.reply(id, outcome),
        Err(pending) => {
            let link = link.clone();
            tokio::spawn(async move { link.reply(id, pending.await) });
        }
    }
}

/// The instance an operation names.
pub(crate) fn server_of(op: &Op) -> Option<&str> {
    match op {
        Op::Send { server, .. }
        | Op::Multicast { server, .. }
        | Op::Broadcast { server }
        | Op::Call { server, .. }
        | Op::Sessions { server, .. }
        | Op::Kick { server, .. } => Some(server),
        Op::Stop { .. } | Op::Sync(_) | Op::Update { .. } => None,
    }
}
