//! `command`: SuperSocket's command-line protocol, `KEY arg arg...` with case-insensitive keys,
//! one line per request and one `\r\n`-terminated line per reply. `DISPATCH` and `BROADCAST`
//! reach sessions of another instance and of this one.

use std::fmt;

use bytes::{Bytes, BytesMut};

use super::{line_bytes, split_command};
use crate::context::Session;
use crate::filter::LineFilter;
use crate::outcome::OpError;
use crate::service::Service;
use crate::session::SessionId;

/// The command-line protocol of SPEC §5.
#[derive(Debug, Clone, Copy, Default)]
pub struct CommandService;

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
            dispatch(session, rest);
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

/// `DISPATCH <server> <session-id> <text>`: delivers `<text>` as one line to that session of
/// that instance (SuperSocket's `IDespatchServer` example, over the wire). The line is on its
/// way when this returns; the answer takes its place among the replies once the outcome is
/// known, so a client may pipeline many without waiting for each round trip.
fn dispatch(session: &mut Session<'_>, args: &str) {
    let mut parts = args.splitn(3, ' ');
    let (Some(server), Some(id), text) = (parts.next(), parts.next(), parts.next().unwrap_or("")) else {
        session.reply_line("ERR usage: DISPATCH <server> <session-id> <text>");
        return;
    };
    let Some(target) = session.host().instance(server) else {
        session.reply_line(format_args!("ERR no server {server}"));
        return;
    };
    let Ok(session_id) = id.parse::<SessionId>() else {
        session.reply_line(DispatchAnswer::new(server, id, Err(OpError::NoSession)));
        return;
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
