//! `command`: SuperSocket's command-line protocol, `KEY arg arg...` with case-insensitive keys,
//! one line per request and one `\r\n`-terminated line per reply. `DISPATCH` and `BROADCAST`
//! reach sessions of another instance and of this one.
//!
//! `DISPATCH` writes what any client sends into another instance's sessions, so it reaches
//! only instances of this protocol, those the config lists in `options.dispatch_to`, and
//! never a type that refuses writes (`ftp`); any other target answers as a missing session.

use std::fmt;

use bytes::{Bytes, BytesMut};
use serde::Deserialize;

use super::{line_bytes, split_command};
use crate::Instance;
use crate::context::Session;
use crate::filter::LineFilter;
use crate::outcome::OpError;
use crate::service::{Service, ServiceContext};
use crate::session::SessionId;

/// The type's name.
pub(crate) const COMMAND_TYPE: &str = "command";

/// The command-line protocol of SPEC §5.
#[derive(Debug, Clone, Default)]
pub struct CommandService {
    /// Instances of other types that `DISPATCH` may reach.
    dispatch_to: Vec<String>,
}

/// The `options` of a `command` server.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct CommandOptions {
    dispatch_to: Vec<String>,
}

impl CommandService {
    /// The service of an instance, with its `options`.
    pub fn from_config(context: &ServiceContext<'_>) -> Result<Self, String> {
        let options: CommandOptions = match context.config().options {
            serde_json::Value::Null => CommandOptions::default(),
            _ => context.options()?,
        };
        Ok(Self {
            dispatch_to: options.dispatch_to,
        })
    }

    /// Whether `DISPATCH` may write into the sessions of `target`.
    fn may_dispatch_to(&self, session: &Session<'_>, target: &Instance) -> bool {
        let config = target.config();
        let allowed = config.server_type == COMMAND_TYPE || self.dispatch_to.iter().any(|name| *name == config.name);
        allowed && session.host().accepts_writes(target, COMMAND_TYPE)
    }
}

impl Service for CommandService {
    type Filter = LineFilter;

    fn filter(&self, max_package_length: usize) -> LineFilter {
        LineFilter::new(max_package_length)
    }

    async fn received(&self, session: &mut Session<'_>, line: BytesMut) {
        let Some((key, rest)) = split_command(&line) else {
            session.reply_line("ERR invalid UTF-8");
            return;
        };
        let is = |name: &str| key.eq_ignore_ascii_case(name);
        if key.is_empty() {
            // A bare newline (a user pressing Enter in telnet) gets no answer.
        } else if is("ECHO") {
            session.reply_line(rest);
        } else if is("PING") {
            session.reply_line("PONG");
        } else if is("ADD") {
            reply_fold(session, rest, 0, i64::checked_add);
        } else if is("MULT") {
            reply_fold(session, rest, 1, i64::checked_mul);
        } else if is("WHOAMI") {
            let id = session.id();
            session.reply_line(id);
        } else if is("SERVER") {
            let instance = session.instance();
            session.reply_line(instance.name());
        } else if is("DISPATCH") {
            self.dispatch(session, rest);
        } else if is("BROADCAST") {
            match session.instance().broadcast(line_bytes(rest)).await {
                Ok(count) => session.reply_line(format_args!("OK {count}")),
                Err(e) => session.reply_line(format_args!("ERR {e}")),
            }
        } else if is("QUIT") {
            session.close();
        } else {
            session.reply_line(format_args!("ERR unknown command {key}"));
        }
    }
}

impl CommandService {
    /// `DISPATCH <server> <session-id> <text>`: delivers `<text>` as one line to that session of
    /// that instance (SuperSocket's `IDespatchServer` example, over the wire). The line is on its
    /// way when this returns; the answer takes its place among the replies once the outcome is
    /// known, so a client may pipeline many without waiting for each round trip.
    fn dispatch(&self, session: &mut Session<'_>, args: &str) {
        let mut parts = args.splitn(3, ' ');
        let (Some(server), Some(id), text) = (parts.next(), parts.next(), parts.next().unwrap_or("")) else {
            session.reply_line("ERR usage: DISPATCH <server> <session-id> <text>");
            return;
        };
        let Some(target) = session.host().instance(server) else {
            session.reply_line(format_args!("ERR no server {server}"));
            return;
        };
        let session_id = match id.parse::<SessionId>() {
            Ok(session_id) if self.may_dispatch_to(session, &target) => session_id,
            _ => {
                session.reply_line(DispatchAnswer::new(server, id, Err(OpError::NoSession)));
                return;
            }
        };
        let sent = target.send_to(session_id, line_bytes(text));
        match sent.now() {
            Ok(outcome) => session.reply_line(DispatchAnswer::new(server, id, outcome)),
            Err(sent) => {
                let (server, id) = (server.to_owned(), id.to_owned());
                session.reply_later(async move {
                    let answer = DispatchAnswer::new(&server, &id, sent.await);
                    Bytes::from(format!("{answer}\r\n"))
                });
            }
        }
    }
}

/// The answer to a `DISPATCH`.
struct DispatchAnswer<'a> {
    server: &'a str,
    id: &'a str,
    outcome: Result<(), OpError>,
}

impl<'a> DispatchAnswer<'a> {
    fn new(server: &'a str, id: &'a str, outcome: Result<(), OpError>) -> Self {
        Self { server, id, outcome }
    }
}

impl fmt::Display for DispatchAnswer<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (server, id) = (self.server, self.id);
        match &self.outcome {
            Ok(()) => f.write_str("OK"),
            Err(OpError::NoSession) => write!(f, "ERR no session {id}"),
            Err(OpError::QueueFull) => write!(f, "ERR session {id} is not reading"),
            Err(OpError::NotRunning) => write!(f, "ERR server {server} is not running"),
            Err(OpError::Unanswered) => write!(f, "ERR server {server} did not answer"),
            Err(OpError::Refused(message)) => write!(f, "ERR {message}"),
        }
    }
}

/// Folds the whitespace-separated integers of `args` with `op`, replying with the result or
/// with the first problem.
fn reply_fold(session: &mut Session<'_>, args: &str, start: i64, op: fn(i64, i64) -> Option<i64>) {
    let mut acc = start;
    for arg in args.split_ascii_whitespace() {
        let Ok(n) = arg.parse::<i64>() else {
            session.reply_line(format_args!("ERR not a number: {arg}"));
            return;
        };
        match op(acc, n) {
            Some(next) => acc = next,
            None => {
                session.reply_line("ERR overflow");
                return;
            }
        }
    }
    session.reply_line(acc);
}
