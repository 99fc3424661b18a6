//! `chat` (pomelo's backend): owns the membership of the rooms routed to it and pushes every
//! room message to the members, through the connectors their sessions live on.
//!
//! Connectors are the source of truth for who is in which room. When a room reaches a chat
//! instance for the first time — a new room, or one that moved here because the running chat
//! instances changed — the instance asks every running connector for the room's members before
//! it handles anything else for the room, so a moved room is complete from its first message.
//! A room that no longer routes here is dropped.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::BytesMut;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{line_bytes, split_command};
use crate::context::{InstanceContext, Session};
use crate::filter::LineFilter;
use crate::outcome::{OpError, Pending};
use crate::service::Service;
use crate::session::SessionId;

/// The server type of the backends.
pub(crate) const CHAT_TYPE: &str = "chat";
/// The server type of the frontends members connect to.
pub(crate) const CONNECTOR_TYPE: &str = "connector";

/// What a connector asks of a chat instance.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub(crate) enum ChatRequest {
    /// A member enters a room; the others are told.
    Enter { room: String, member: Member },
    /// A member says something to its room. A member the room does not know yet (its
    /// connector recorded it after the room gathered its members) joins silently.
    Say { room: String, member: Member, text: String },
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

/// Answer of `Enter` when the uid is already in the room from another session.
pub(crate) const DUPLICATE_UID: &str = "duplicate uid";

/// A room and its members, in the order they entered.
#[derive(Default)]
struct Room {
    /// Set when the room was dropped from this instance (it moved, or emptied): whoever still
    /// holds it takes the room afresh.
    gone: AtomicBool,
    /// `None` until gathered from the connectors.
    members: Arc<tokio::sync::Mutex<Option<Vec<Member>>>>,
}

/// What a request came to, before its lines are delivered.
enum Answer {
    Members(Vec<String>),
    Said,
    Left(bool),
}

/// The rooms routed to this instance. Each room has a lock of its own: a room's messages
/// reach its members in one order, and a slow room holds up no other.
#[derive(Default)]
pub struct ChatService {
    rooms: Arc<Mutex<HashMap<String, Arc<Room>>>>,
}

impl ChatService {
    fn rooms(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Room>>> {
        self.rooms.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn handle(&self, instance: &InstanceContext, request: ChatRequest) -> Result<Value, String> {
        let name = request.room().to_owned();
        let (held, mut guard) = loop {
            let room = self.rooms().entry(name.clone()).or_default().clone();
            let guard = room.members.clone().lock_owned().await;
            if !room.gone.load(Ordering::Acquire) {
                break (room, guard);
            }
        };
        let members = match &mut *guard {
            Some(members) => members,
            missing => missing.insert(gather(instance, &name).await?),
        };
        // Lines are queued for the members under the room's lock, so they keep one order;
        // their delivery is awaited after it.
        let (answer, deliveries) = match request {
            ChatRequest::Enter { room, member } => {
                let mut joined = Vec::new();
                if admit(members, &member)? {
                    joined = push(
                        instance,
                        &members[..members.len() - 1],
                        &format!("JOIN {room} {}", member.uid),
                    );
                }
                (Answer::Members(members.iter().map(|m| m.uid.clone()).collect()), joined)
            }
            ChatRequest::Say { room, member, text } => {
                admit(members, &member)?;
                (
                    Answer::Said,
                    push(instance, members, &format!("MSG {room} {} {text}", member.uid)),
                )
            }
            ChatRequest::Leave { room, uid, session } => {
                let before = members.len();
                members.retain(|m| !(m.uid == uid && m.session == session));
                let left = members.len() < before;
                let told = if left {
                    push(instance, members, &format!("LEAVE {room} {uid}"))
                } else {
                    Vec::new()
                };
                if members.is_empty() {
                    self.forget(&name, &held);
                }
                (Answer::Left(left), told)
            }
        };
        drop(guard);
        let mut delivered = 0;
        for delivery in deliveries {
            delivered += delivery.await.unwrap_or(0);
        }
        Ok(match answer {
            Answer::Members(uids) => json!({ "members": uids }),
            Answer::Said => json!({ "delivered": delivered }),
            Answer::Left(left) => json!({ "left": left }),
        })
    }

    /// Drops `room` from this instance, if it is still the one known by `name`.
    fn forget(&self, name: &str, room: &Arc<Room>) {
        let mut rooms = self.rooms();
        if rooms.get(name).is_some_and(|known| Arc::ptr_eq(known, room)) {
            room.gone.store(true, Ordering::Release);
            rooms.remove(name);
        }
    }
}

impl ChatRequest {
    fn room(&self) -> &str {
        match self {
            Self::Enter { room, .. } | Self::Say { room, .. } | Self::Leave { room, .. } => room,
        }
    }
}

/// Adds `member` to `members` unless it is there already; true if it was added. Another
/// session with the same uid is refused.
fn admit(members: &mut Vec<Member>, member: &Member) -> Result<bool, String> {
    match members.iter().find(|m| m.uid == member.uid) {
        Some(existing) if existing != member => Err(DUPLICATE_UID.into()),
        Some(_) => Ok(false),
        None => {
            members.push(member.clone());
            Ok(true)
        }
    }
}

/// The members of `room` among the sessions of every running connector. A connector that is
/// not running has no members; one that does not answer fails the gathering (a room must not
/// start with members missing).
async fn gather(instance: &InstanceContext, room: &str) -> Result<Vec<Member>, String> {
    let request =
        serde_json::to_value(ConnectorRequest::Members { room: room.to_owned() }).map_err(|e| e.to_string())?;
    let mut members = Vec::new();
    for connector in instance.host().running(CONNECTOR_TYPE) {
        let answer = match connector.call(request.clone()).await {
            Ok(answer) => answer,
            Err(OpError::NotRunning) => continue,
            Err(e) => return Err(format!("cannot gather room {room} from {}: {e}", connector.name())),
        };
        let found: Vec<Member> = serde_json::from_value(answer["members"].clone())
            .map_err(|e| format!("unreadable members from {}: {e}", connector.name()))?;
        members.extend(found);
    }
    Ok(members)
}

/// Queues `line` for every member: one multicast per connector, with its members in the order
/// they entered. The outcomes (how many took it) come later.
fn push(instance: &InstanceContext, members: &[Member], line: &str) -> Vec<Pending<usize>> {
    let bytes = line_bytes(line);
    // Members of a room share a few connectors.
    let mut by_connector: Vec<(&str, Vec<SessionId>)> = Vec::new();
    for member in members {
        let Ok(session) = member.session.parse() else { continue };
        match by_connector.iter_mut().find(|(name, _)| *name == member.connector) {
            Some((_, sessions)) => sessions.push(session),
            None => by_connector.push((&member.connector, vec![session])),
        }
    }
    by_connector
        .into_iter()
        .filter_map(|(name, sessions)| Some(instance.host().instance(name)?.multicast(sessions, bytes.clone())))
        .collect()
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
        if key.eq_ignore_ascii_case("ROOMS") {
            let mut names: Vec<String> = self.rooms().keys().cloned().collect();
            names.sort_unstable();
            session.reply_line(format_args!("OK {}", names.join(",")));
        } else if key.eq_ignore_ascii_case("MEMBERS") {
            let room = self.rooms().get(rest.trim()).cloned();
            let uids = match room {
                Some(room) => room
                    .members
                    .lock()
                    .await
                    .iter()
                    .flatten()
                    .map(|m| m.uid.clone())
                    .collect::<Vec<_>>(),
                None => Vec::new(),
            };
            session.reply_line(format_args!("OK {}", uids.join(",")));
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
                let routes_here = |room: &str| {
                    let route = context.host().route(CHAT_TYPE, room);
                    route.is_some_and(|r| r.instance.name() == context.name())
                };
                rooms.lock().unwrap_or_else(|e| e.into_inner()).retain(|name, room| {
                    let keep = routes_here(name);
                    if !keep {
                        room.gone.store(true, Ordering::Release);
                    }
                    keep
                });
            }
        });
    }
}
