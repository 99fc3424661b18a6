//! `ftp`: SuperSocket's FTP server (SPEC §5) — RFC 959 with FEAT and OPTS (RFC 2389), EPSV
//! (RFC 2428) and SIZE, MDTM, MLSD, MLST and REST (RFC 3659); passive data connections only.
//!
//! `lines` frames commands, `command` carries them out, `throttle` slows password guessing,
//! `jail` keeps every path inside `root`, `passive` opens data listeners, `transfer` moves the
//! bytes in a task of its own, `listing` formats folders and `reply` writes replies. Every
//! reply goes through the session's outbox, so that the control connection's replies and a
//! transfer's (150 … 226) reach the client in the order they were made.

mod command;
mod jail;
mod lines;
mod listing;
mod passive;
mod reply;
mod throttle;
mod transfer;

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::BytesMut;
use command::Command;
#[cfg(feature = "fuzzing")]
pub(crate) use command::check_line;
use jail::{Jail, VirtualPath};
use passive::PortRange;
use serde::Deserialize;
use throttle::Throttle;
use transfer::Running;

use crate::context::{InstanceContext, Session};
use crate::service::{Service, ServiceContext};
use crate::session::{CloseReason, SessionId};

/// The longest command line (a path of the longest a file system takes, and its command).
const MAX_COMMAND_LINE: usize = 8 * 1024;

/// The `options` of an `ftp` server.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FtpOptions {
    /// The folder served (relative: to the config file's folder).
    #[serde(default = "default_root")]
    root: PathBuf,
    /// Whether `anonymous` (and `ftp`) may log in with any password.
    #[serde(default = "default_true")]
    anonymous: bool,
    /// Accounts with a password.
    #[serde(default)]
    users: Vec<FtpUser>,
    /// Refuse every change to the files.
    #[serde(default)]
    read_only: bool,
    /// `"50000-50100"`: the ports of passive data listeners (default: ephemeral).
    passive_ports: Option<String>,
    /// The address announced in PASV replies (default: the control connection's local one).
    passive_address: Option<IpAddr>,
}

fn default_root() -> PathBuf {
    PathBuf::from("ftp-root")
}

fn default_true() -> bool {
    true
}

/// An account of an `ftp` server.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FtpUser {
    /// The name given with USER.
    name: String,
    /// The password PASS must give.
    password: String,
}

/// The FTP server of SPEC §5.
pub struct FtpService {
    /// The folder served, resolved against the config file's folder.
    root: PathBuf,
    /// The open root, from the instance's start on.
    jail: Mutex<Option<Arc<Jail>>>,
    /// `anonymous` and `ftp` may log in.
    anonymous: bool,
    /// Accounts with a password.
    users: Vec<FtpUser>,
    /// Every change is refused.
    read_only: bool,
    /// Where passive listeners bind.
    ports: PortRange,
    /// The address PASV announces instead of the control connection's.
    passive_address: Option<IpAddr>,
    /// Failed logins by client address and user name.
    throttle: Throttle,
    /// The state of every control connection.
    sessions: Mutex<HashMap<SessionId, FtpSession>>,
}

/// Where a control connection is in logging in.
#[derive(Debug, Default)]
enum Login {
    /// Not logged in.
    #[default]
    Out,
    /// USER was given; PASS must follow.
    User(String),
    /// Logged in.
    In,
}

/// The state of one control connection.
#[derive(Default)]
struct FtpSession {
    /// Where it is in logging in.
    login: Login,
    /// Wrong passwords so far.
    failures: u32,
    /// EPSV ALL was given: no other way to open a data connection is accepted (RFC 2428).
    epsv_all: bool,
    /// The working folder.
    cwd: VirtualPath,
    /// REST: where the next RETR or STOR begins.
    restart: u64,
    /// RNFR: what the next RNTO renames.
    rename_from: Option<VirtualPath>,
    /// PASV/EPSV: the listener the next transfer's data connection comes to.
    passive: Option<passive::DataPort>,
    /// The last transfer started (it may have ended), for ABOR.
    transfer: Option<Running>,
}

impl FtpService {
    /// Reads the options of an `ftp` server; touches nothing on disk.
    pub fn from_config(context: &ServiceContext<'_>) -> Result<Self, String> {
        let options: FtpOptions = context.options()?;
        if let Some(user) = options
            .users
            .iter()
            .find(|u| u.name.is_empty() || u.password.is_empty())
        {
            return Err(format!("options.users: {:?} needs a name and a password", user.name));
        }
        Ok(Self {
            root: context.config().base_dir.join(&options.root),
            jail: Mutex::new(None),
            anonymous: options.anonymous,
            users: options.users,
            read_only: options.read_only,
            ports: PortRange::parse(options.passive_ports.as_deref()).map_err(|e| format!("options.{e}"))?,
            passive_address: options.passive_address,
            sessions: Mutex::default(),
            throttle: Throttle::default(),
        })
    }

    fn sessions(&self) -> MutexGuard<'_, HashMap<SessionId, FtpSession>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The open root, opening (and creating) it if that has not succeeded yet.
    fn jail(&self) -> Result<Arc<Jail>, String> {
        let mut jail = self.jail.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(open) = &*jail {
            return Ok(open.clone());
        }
        let open = Arc::new(Jail::open(&self.root)?);
        *jail = Some(open.clone());
        Ok(open)
    }

    /// Whether `name` with `password` may log in.
    fn admits(&self, name: &str, password: &str) -> bool {
        let anonymous = self.anonymous && is_anonymous(name);
        let user = self
            .users
            .iter()
            .any(|u| u.name == name && crate::secret::constant_time_eq(password.as_bytes(), u.password.as_bytes()));
        anonymous || user
    }
}

fn is_anonymous(name: &str) -> bool {
    name.eq_ignore_ascii_case("anonymous") || name.eq_ignore_ascii_case("ftp")
}

impl Service for FtpService {
    type Filter = lines::CommandLines;

    /// Command lines are short: at most `MAX_COMMAND_LINE`, whatever `max_package_length`.
    fn filter(&self, max_package_length: usize) -> lines::CommandLines {
        lines::CommandLines::new(max_package_length.min(MAX_COMMAND_LINE))
    }

    /// A line written into an FTP control connection would be a forged reply.
    fn accepts_writes_from(_writer_type: &str) -> bool {
        false
    }

    async fn connected(&self, session: &mut Session<'_>) {
        let handle = session.handle();
        if self.throttle.refuses(session.remote_addr().ip()) {
            let _ = handle.send(reply::banned()).await;
            handle.close();
            return;
        }
        match self.jail() {
            Ok(_) => {
                let _ = handle.send(reply::line(220, "SuperSocket FTP server ready.")).await;
            }
            Err(e) => {
                tracing::error!(server = %session.instance().name(), "{e}");
                let refusal = reply::line(421, "Service not available: the served folder cannot be opened.");
                let _ = handle.send(refusal).await;
                handle.close();
            }
        }
    }

    async fn received(&self, session: &mut Session<'_>, line: BytesMut) {
        let id = session.id();
        let mut state = self.sessions().remove(&id).unwrap_or_default();
        let handle = session.handle();
        let command = Command {
            service: self,
            instance: session.instance(),
            handle: &handle,
            remote: session.remote_addr().ip(),
            local: session.local_addr().ip(),
        };
        if let Some(reply) = command.execute(&mut state, &line).await {
            let _ = handle.send(reply).await;
        }
        // A stop clears every session's state (passive listeners included); keep it cleared.
        if !session.instance().is_stopping() {
            self.sessions().insert(id, state);
        }
    }

    async fn closed(&self, session: &mut Session<'_>, _reason: CloseReason) {
        // Dropping the state closes its passive listener and aborts its transfer.
        self.sessions().remove(&session.id());
    }

    fn started(&self, instance: &Arc<InstanceContext>) {
        if let Err(e) = self.jail() {
            tracing::error!(server = %instance.name(), "{e}");
        }
    }

    /// Passive listeners and transfers close with the instance, not only as each control
    /// connection finishes draining.
    fn stopping(&self, _: &InstanceContext) {
        self.sessions().clear();
    }
}
