//! `chat` (pomelo's backend): owns the membership of the rooms routed to it and pushes every
//! room message to the members, through the connectors their sessions live on.
//!
//! Connectors are the source of truth for who is in which room. When a room reaches a chat
//! instance for the first time — a new room, or one that moved here because the running chat
//! instances changed — the instance asks every running connector for the room's members before
//! it handles anything else for the room, so a moved room is complete from its first message.
//! A room that no longer routes here is dropped.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::BytesMut;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::Mutex;

use super::{line_bytes, split_command};
use crate::filter::LineFilter;
use crate::instance::{Instance, InstanceContext};
use crate::service::Service;
use crate::session::Session;

/// The server type of the backends.
pub(crate) const CHAT_TYPE: &str = "chat";
/// The server type of the frontends members connect to.
pub(crate) const CONNECTOR_TYPE: &str = "connector";

/// What a connector asks of a chat instance.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub(crate) enum ChatRequest {
    /// A member enters a room; `silent` tells no one (a member that was missing after a move).
    Enter { room: String, member: Member, silent: bool },
    /// A member says something to its room.
    Say { room: String, uid: String, text: String },
    /// A member leaves.
    Leave { room: String, uid: String, session: String },
}

/// What a chat instance asks of a connector: the members of a room among its sessions.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub(crate) enum ConnectorRequest {
    Members { room: String },
}

/// A room member and where its session lives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Member {
    pub uid: String,
    pub connector: String,
    pub session: String,
}

/// Answer of `Say` when the speaker is not a member here.
pub(crate) const NOT_IN_ROOM: &str = "not in room";
/// Answer of `Enter` when the uid is already in the room from another session.
pub(crate) const DUPLICATE_UID: &str = "duplicate uid";

type Rooms = HashMap<String, Vec<Member>>;

/// Rooms and their members, in the order they entered.
#[derive(Default)]
pub struct ChatService {
    /// One lock for every room: a room's messages reach all members in one order.
    rooms: Arc<Mutex<Rooms>>,
}

impl ChatService {
    async fn handle(&self, instance: &InstanceContext, request: ChatRequest) -> Result<Value, String> {
        let mut rooms = self.rooms.lock().await;
        match request {
            ChatRequest::Enter { room, member, silent } => {
                let members = room_members(&mut rooms, instance, &room).await;
                if let Some(existing) = members.iter().find(|m| m.uid == member.uid) {
                    if *existing != member {
                        return Err(DUPLICATE_UID.into());
                    }
                } else {
                    if !silent {
                        push(instance, members, &format!("JOIN {room} {}", member.uid)).await;
                    }
                    members.push(member);
                }
                Ok(json!({ "members": members.iter().map(|m| m.uid.as_str()).collect::<Vec<_>>() }))
            }
            ChatRequest::Say { room, uid, text } => {
                let members = room_members(&mut rooms, instance, &room).await;
                if !members.iter().any(|m| m.uid == uid) {
                    return Err(NOT_IN_ROOM.into());
                }
                let delivered = push(instance, members, &format!("MSG {room} {uid} {text}")).await;
                Ok(json!({ "delivered": delivered }))
            }
            ChatRequest::Leave { room, uid, session } => {
                let members = room_members(&mut rooms, instance, &room).await;
                let before = members.len();
                members.retain(|m| !(m.uid == uid && m.session == session));
                let left = members.len() < before;
                if left {
                    push(instance, members, &format!("LEAVE {room} {uid}")).await;
                }
                if members.is_empty() {
                    rooms.remove(&room);
                }
                Ok(json!({ "left": left }))
            }
        }
    }
}

/// The members of `room`, gathered from every running connector when the room is new here.
async fn room_members<'r>(rooms: &'r mut Rooms, instance: &InstanceContext, room: &str) -> &'r mut Vec<Member> {
    if !rooms.contains_key(room) {
        let mut members = Vec::new();
        let request = serde_json::to_value(ConnectorRequest::Members { room: room.to_owned() }).unwrap_or_default();
        for connector in instance.host().running(CONNECTOR_TYPE) {
            if let Ok(answer) = connector.call(request.clone()).await {
                members.extend(serde_json::from_value::<Vec<Member>>(answer["members"].clone()).unwrap_or_default());
            }
        }
        rooms.insert(room.to_owned(), members);
    }
    rooms.entry(room.to_owned()).or_default()
}

/// Queues `line` for every member, in the order they entered; returns how many took it.
async fn push(instance: &InstanceContext, members: &[Member], line: &str) -> usize {
    let bytes = line_bytes(line);
    // Members of a room share a few connectors: look each up once.
    let mut connectors: Vec<(&str, Option<Arc<Instance>>)> = Vec::new();
    let mut delivered = 0;
    for member in members {
        let known = connectors
            .iter()
            .find(|(name, _)| *name == member.connector)
            .map(|(_, c)| c.clone());
        let connector = known.unwrap_or_else(|| {
            let connector = instance.host().instance(&member.connector);
            connectors.push((&member.connector, connector.clone()));
            connector
        });
        if let (Some(connector), Ok(session)) = (connector, member.session.parse()) {
            delivered += usize::from(connector.send_to(session, bytes.clone()).await.is_ok());
        }
    }
    delivered
}

impl Service for ChatService {
    type Filter = LineFilter;

    fn filter(&self, max_package_length: usize) -> LineFilter {
        LineFilter::new(max_package_length)
    }

    /// Chat instances usually have no listeners; given one, they answer operators' read-only
    /// questions: `ROOMS` and `MEMBERS <room>`.
    async fn received(&self, session: &mut Session<'_>, line: BytesMut) {
        let Some((key, rest)) = split_command(&line) else {
            session.reply_line("ERR invalid UTF-8");
            return;
        };
        let rooms = self.rooms.lock().await;
        if key.eq_ignore_ascii_case("ROOMS") {
            let mut names: Vec<&str> = rooms.keys().map(String::as_str).collect();
            names.sort_unstable();
            session.reply_line(format_args!("OK {}", names.join(",")));
        } else if key.eq_ignore_ascii_case("MEMBERS") {
            let members = rooms
                .get(rest.trim())
                .map(|m| m.iter().map(|m| m.uid.as_str()).collect::<Vec<_>>());
            session.reply_line(format_args!("OK {}", members.unwrap_or_default().join(",")));
        } else if !key.is_empty() {
            session.reply_line(format_args!("ERR unknown command {key}"));
        }
    }

    async fn call(&self, instance: &InstanceContext, request: Value) -> Result<Value, String> {
        let request = serde_json::from_value(request).map_err(|e| format!("bad chat request: {e}"))?;
        self.handle(instance, request).await
    }

    /// Drops the rooms that no longer route here whenever the running instances change; the
    /// instance they route to now gathers their members afresh.
    fn started(&self, instance: &Arc<InstanceContext>) {
        let Some(mut topology) = instance.host().topology() else {
            return;
        };
        let (rooms, context) = (self.rooms.clone(), instance.clone());
        instance.spawn(async move {
            while topology.changed().await.is_ok() {
                let mut rooms = rooms.lock().await;
                rooms.retain(|room, _| {
                    context
                        .host()
                        .route(CHAT_TYPE, room)
                        .is_some_and(|r| r.instance.name() == context.name())
                });
            }
        });
    }
}
