//! `gate` (pomelo's entry): `QUERY <uid>` answers `<host>:<port>` of the `connector` instance the
//! dispatcher picks for the uid, so clients spread over the connectors.

use std::net::IpAddr;

use bytes::BytesMut;

use super::split_command;
use crate::context::Session;
use crate::filter::LineFilter;
use crate::service::Service;

/// The server type clients are sent to.
const CONNECTOR_TYPE: &str = "connector";

/// Hands out connectors.
#[derive(Debug, Clone, Copy, Default)]
pub struct GateService;

impl GateService {
    fn query(session: &mut Session<'_>, uid: &str) {
        if uid.is_empty() || uid.contains(' ') {
            session.reply_line("ERR usage: QUERY <uid>");
            return;
        }
        let Some(route) = session.host().route(CONNECTOR_TYPE, uid) else {
            session.reply_line("ERR no connector");
            return;
        };
        let info = route.instance.info();
        let Some(listener) = info.listeners.first() else {
            session.reply_line("ERR no connector");
            return;
        };
        // `advertise`, else the listener's address, else (a wildcard listener) the address this
        // client reached the gate on, which is as reachable as anything we know.
        let host = match (&route.instance.config().advertise, listener.ip.parse::<IpAddr>()) {
            (Some(advertise), _) => advertise.clone(),
            (None, Ok(ip)) if ip.is_unspecified() => session.local_addr().ip().to_string(),
            (None, _) => listener.ip.clone(),
        };
        if host.contains(':') {
            session.reply_line(format_args!("[{host}]:{}", listener.port));
        } else {
            session.reply_line(format_args!("{host}:{}", listener.port));
        }
    }
}

impl Service for GateService {
    type Filter = LineFilter;

    fn filter(&self, max_package_length: usize) -> LineFilter {
        LineFilter::new(max_package_length)
    }

    async fn received(&self, session: &mut Session<'_>, line: BytesMut) {
        let Some((key, rest)) = split_command(&line) else {
            session.reply_line("ERR invalid UTF-8");
            return;
        };
        if key.eq_ignore_ascii_case("QUERY") {
            Self::query(session, rest.trim());
        } else if key.eq_ignore_ascii_case("QUIT") {
            session.close();
        } else if !key.is_empty() {
            session.reply_line(format_args!("ERR unknown command {key}"));
        }
    }
}
