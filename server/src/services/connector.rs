//! `connector` (pomelo's frontend): clients connect here, `ENTER <uid> <room>` a room and `SAY`
//! to it. Each room lives on the `chat` instance the dispatcher picks for the room's name. The
//! connector knows which of its sessions are in which room and tells a chat instance when it
//! asks, so rooms survive the chat instances changing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use serde_json::{Value, json};

use super::chat::{CHAT_TYPE, ChatRequest, ConnectorRequest, DUPLICATE_UID, Member};
use super::split_command;
use crate::context::{InstanceContext, Session};
use crate::dispatch::{HostHandle, Route};
use crate::filter::LineFilter;
use crate::outcome::{OpError, Pending};
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
        let enter = ChatRequest::Enter {
            room: room.to_owned(),
            member: member(session, uid),
        };
        match call_chat(session.host(), room, request_of(&enter)).await {
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

    /// `SAY <text>`: the line goes to the room's chat instance now, and the session goes on
    /// reading; an error answers it later, in its place among the replies. A speaker's lines
    /// keep their order: calls to one chat instance start in the order they are made, and a
    /// line whose room routes elsewhere than the lines still on their way is held until they
    /// have settled.
    fn say(&self, session: &mut Session<'_>, text: &str) {
        let Some(membership) = self.members().get(&session.id()).cloned() else {
            session.reply_line("ERR not in a room; ENTER <uid> <room> first");
            return;
        };
        let say = ChatRequest::Say {
            member: member(session, &membership.uid),
            room: membership.room.clone(),
            text: text.to_owned(),
        };
        let (host, room) = (session.host().clone(), membership.room);
        let flow = session.state::<Arc<Mutex<Flow>>>().clone();
        let route = host.route(CHAT_TYPE, &room);
        let at_once = lock(&flow).next(route.as_ref());
        let call = at_once.then(|| call_on(route, &say));
        let unsettled = Unsettled(flow.clone());
        session.reply_later(async move {
            let call = call.unwrap_or_else(|| {
                // Held: every line before it has settled.
                let route = host.route(CHAT_TYPE, &room);
                lock(&flow).sent(route.as_ref());
                call_on(route, &say)
            });
            let answer = match call.await {
                // The instance stopped before it took the line: route it again.
                Err(OpError::NotRunning) => call_chat(&host, &room, request_of(&say)).await,
                answer => answer,
            };
            drop(unsettled);
            match answer {
                Ok(_) => Bytes::new(),
                Err(e) => Bytes::from(format!("ERR {e}\r\n")),
            }
        });
    }
}

/// A session's `SAY`s whose outcomes are not known yet (the session's own state).
#[derive(Default)]
struct Flow {
    /// Lines whose outcome is not known yet.
    unsettled: usize,
    /// Lines among them not sent yet: each waits for those before it to settle.
    held: usize,
    /// The chat instance the lines sent went to.
    chat: Option<String>,
}

impl Flow {
    /// Counts the next line, whose room routes as `route` now; true if it may be sent at once
    /// (nothing before it is held, and those on their way went to the same instance).
    fn next(&mut self, route: Option<&Route>) -> bool {
        self.unsettled += 1;
        let chat = route.map(|route| route.instance.name());
        let at_once = self.held == 0 && chat.is_some() && (self.chat.is_none() || self.chat.as_deref() == chat);
        if at_once {
            self.chat = chat.map(str::to_owned);
        } else {
            self.held += 1;
        }
        at_once
    }

    /// A held line is sent, as `route`.
    fn sent(&mut self, route: Option<&Route>) {
        self.held -= 1;
        self.chat = route.map(|route| route.instance.name().to_owned());
    }
}

/// A `SAY` whose outcome is not known yet; counts itself off when dropped.
struct Unsettled(Arc<Mutex<Flow>>);

impl Drop for Unsettled {
    fn drop(&mut self) {
        let mut flow = lock(&self.0);
        flow.unsettled -= 1;
        if flow.unsettled == 0 {
            // Nothing on its way, nothing held (one dropped before it was sent included).
            (flow.held, flow.chat) = (0, None);
        }
    }
}

fn lock(flow: &Mutex<Flow>) -> std::sync::MutexGuard<'_, Flow> {
    flow.lock().unwrap_or_else(|e| e.into_inner())
}

/// Sends `say` to the chat instance of `route`.
fn call_on(route: Option<Route>, say: &ChatRequest) -> Pending<Value> {
    match route {
        Some(route) => route.instance.call(request_of(say)),
        None => Pending::ready(Err(OpError::NotRunning)),
    }
}

/// A request to a chat instance, as a call carries it.
fn request_of(request: &ChatRequest) -> Value {
    serde_json::to_value(request).unwrap_or_else(|e| unreachable!("a chat request is plain data: {e}"))
}

fn member(session: &Session<'_>, uid: &str) -> Member {
    Member {
        uid: uid.to_owned(),
        connector: session.instance().name().to_owned(),
        session: session.id().to_string(),
    }
}

/// Calls the chat instance the room routes to; if it stopped on the way, routes once more.
async fn call_chat(host: &HostHandle, room: &str, request: Value) -> Result<Value, OpError> {
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
            self.say(session, rest);
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
        let _ = call_chat(session.host(), &membership.room, request_of(&leave)).await;
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
