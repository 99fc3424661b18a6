//! `connector` (pomelo's frontend): clients connect here, `ENTER <uid> <room>` a room and `SAY`
//! to it. Each room lives on the `chat` instance the dispatcher picks for the room's name. The
//! connector knows which of its sessions are in which room and tells a chat instance when it
//! asks, so rooms survive the chat instances changing.

use std::collections::HashMap;
use std::sync::Mutex;

use bytes::BytesMut;
use serde_json::{Value, json};

use super::chat::{CHAT_TYPE, ChatRequest, ConnectorRequest, DUPLICATE_UID, Member, NOT_IN_ROOM};
use super::split_command;
use crate::context::{InstanceContext, Session};
use crate::dispatch::HostHandle;
use crate::filter::LineFilter;
use crate::outcome::OpError;
use crate::service::Service;
use crate::session::{CloseReason, SessionId};

/// A session that entered a room.
#[derive(Debug, Clone)]
struct Membership {
    uid: String,
    room: String,
}

/// The members among this connector's sessions.
#[derive(Default)]
pub struct ConnectorService {
    members: Mutex<HashMap<SessionId, Membership>>,
}

impl ConnectorService {
    fn members(&self) -> std::sync::MutexGuard<'_, HashMap<SessionId, Membership>> {
        self.members.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn enter(&self, session: &mut Session<'_>, args: &str) {
        let mut parts = args.split_whitespace();
        let (Some(uid), Some(room), None) = (parts.next(), parts.next(), parts.next()) else {
            session.reply_line("ERR usage: ENTER <uid> <room>");
            return;
        };
        let current = self.members().get(&session.id()).map(|m| m.room.clone());
        if let Some(current) = current {
            session.reply_line(format_args!("ERR already in room {current}"));
            return;
        }
        let member = member(session, uid);
        let request = ChatRequest::Enter {
            room: room.to_owned(),
            member,
            silent: false,
        };
        match call_chat(session.host(), room, &request).await {
            Ok(answer) => {
                let membership = Membership {
                    uid: uid.to_owned(),
                    room: room.to_owned(),
                };
                self.members().insert(session.id(), membership);
                let uids: Vec<&str> = answer["members"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect();
                session.reply_line(format_args!("OK {}", uids.join(",")));
            }
            Err(OpError::Refused(message)) if message == DUPLICATE_UID => session.reply_line("ERR duplicate uid"),
            Err(e) => session.reply_line(format_args!("ERR {e}")),
        }
    }

    async fn say(&self, session: &mut Session<'_>, text: &str) {
        let Some(membership) = self.members().get(&session.id()).cloned() else {
            session.reply_line("ERR not in a room; ENTER <uid> <room> first");
            return;
        };
        let host = session.host();
        let room = &membership.room;
        let say = ChatRequest::Say {
            room: room.clone(),
            uid: membership.uid.clone(),
            text: text.to_owned(),
        };
        let mut answer = call_chat(host, room, &say).await;
        if matches!(&answer, Err(OpError::Refused(message)) if message == NOT_IN_ROOM) {
            // The room's chat instance gathered its members before this one was recorded.
            let enter = ChatRequest::Enter {
                room: room.clone(),
                member: member(session, &membership.uid),
                silent: true,
            };
            answer = match call_chat(host, room, &enter).await {
                Ok(_) => call_chat(host, room, &say).await,
                Err(e) => Err(e),
            };
        }
        if let Err(e) = answer {
            session.reply_line(format_args!("ERR {e}"));
        }
    }
}

fn member(session: &Session<'_>, uid: &str) -> Member {
    Member {
        uid: uid.to_owned(),
        connector: session.instance().name().to_owned(),
        session: session.id().to_string(),
    }
}

/// Calls the chat instance the room routes to; if it stopped on the way, routes once more.
async fn call_chat(host: &HostHandle, room: &str, request: &ChatRequest) -> Result<Value, OpError> {
    let request = serde_json::to_value(request).map_err(|e| OpError::Refused(e.to_string()))?;
    for _ in 0..2 {
        let Some(route) = host.route(CHAT_TYPE, room) else {
            break;
        };
        match route.instance.call(request.clone()).await {
            Err(OpError::NotRunning) => continue,
            answer => return answer,
        }
    }
    Err(OpError::Refused(format!("no {CHAT_TYPE} server is running")))
}

impl Service for ConnectorService {
    type Filter = LineFilter;

    fn filter(&self, max_package_length: usize) -> LineFilter {
        LineFilter::new(max_package_length)
    }

    async fn received(&self, session: &mut Session<'_>, line: BytesMut) {
        let Some((key, rest)) = split_command(&line) else {
            session.reply_line("ERR invalid UTF-8");
            return;
        };
        if key.eq_ignore_ascii_case("ENTER") {
            self.enter(session, rest).await;
        } else if key.eq_ignore_ascii_case("SAY") {
            self.say(session, rest).await;
        } else if key.eq_ignore_ascii_case("QUIT") {
            session.close();
        } else if !key.is_empty() {
            session.reply_line(format_args!("ERR unknown command {key}"));
        }
    }

    /// Leaving: quit, disconnect, kick or stop all end here; the room's other members are told.
    async fn closed(&self, session: &mut Session<'_>, _reason: CloseReason) {
        let Some(membership) = self.members().remove(&session.id()) else {
            return;
        };
        let leave = ChatRequest::Leave {
            room: membership.room.clone(),
            uid: membership.uid,
            session: session.id().to_string(),
        };
        let _ = call_chat(session.host(), &membership.room, &leave).await;
    }

    /// A chat instance asks which of this connector's sessions are in a room.
    async fn call(&self, instance: &InstanceContext, request: Value) -> Result<Value, String> {
        let ConnectorRequest::Members { room } =
            serde_json::from_value(request).map_err(|e| format!("bad connector request: {e}"))?;
        let members: Vec<Member> = self
            .members()
            .iter()
            .filter(|(_, m)| m.room == room)
            .map(|(id, m)| Member {
                uid: m.uid.clone(),
                connector: instance.name().to_owned(),
                session: id.to_string(),
            })
            .collect();
        Ok(json!({ "members": members }))
    }
}
