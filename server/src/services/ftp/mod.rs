//! `ftp`: SuperSocket's FTP server (SPEC §5) — RFC 959 with FEAT and OPTS (RFC 2389), EPSV
//! (RFC 2428) and SIZE, MDTM, MLSD, MLST and REST (RFC 3659); passive data connections only.
//!
//! `lines` frames commands, `jail` keeps every path inside `root`, `passive` opens data listeners, `transfer` moves the
//! bytes in a task of its own, `listing` formats folders and `reply` writes replies. Every
//! reply goes through the session's outbox, so that the control connection's replies and a
//! transfer's (150 … 226) reach the client in the order they were made.

mod jail;
mod lines;
mod listing;
mod passive;
mod reply;
mod transfer;

use std::collections::HashMap;
use std::io::{Seek, SeekFrom};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use jail::{Jail, JailError, Upload, VirtualPath, is_kind};
use nix::sys::stat::SFlag;
use passive::PortRange;
use serde::Deserialize;
use tokio::net::TcpListener;
use transfer::{Payload, Running, Transfer};

use crate::instance::InstanceContext;
use crate::service::{Service, ServiceContext};
use crate::session::{CloseReason, Session, SessionHandle, SessionId};

/// Failed logins after which the control connection is closed.
const MAX_LOGIN_FAILURES: u32 = 3;
/// A data transfer through which nothing moves for this long ends, when the instance has no
/// idle timeout of its own.
const DEFAULT_DATA_IDLE: Duration = Duration::from_secs(300);

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
    name: String,
    password: String,
}

/// The FTP server of SPEC §5.
pub struct FtpService {
    root: PathBuf,
    /// The open root, from the instance's start on.
    jail: Mutex<Option<Arc<Jail>>>,
    anonymous: bool,
    users: Vec<FtpUser>,
    read_only: bool,
    ports: PortRange,
    passive_address: Option<IpAddr>,
    /// The state of every control connection.
    sessions: Arc<Mutex<HashMap<SessionId, FtpSession>>>,
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
    login: Login,
    failures: u32,
    cwd: VirtualPath,
    /// REST: where the next RETR or STOR begins.
    restart: u64,
    /// RNFR: what the next RNTO renames.
    rename_from: Option<VirtualPath>,
    /// PASV/EPSV: the listener the next transfer's data connection comes to.
    passive: Option<TcpListener>,
    transfer: Option<Running>,
}

/// A reply, or none when the command queued its own.
type Outcome = Option<Bytes>;

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
            sessions: Arc::default(),
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

    fn filter(&self, max_package_length: usize) -> lines::CommandLines {
        lines::CommandLines::new(max_package_length)
    }

    async fn connected(&self, session: &mut Session<'_>) {
        let handle = session.handle();
        let greeting = match self.jail() {
            Ok(_) => reply::line(220, "SuperSocket FTP server ready."),
            Err(e) => {
                tracing::error!(server = %session.instance().name(), "{e}");
                handle.close();
                reply::line(421, "Service not available: the served folder cannot be opened.")
            }
        };
        let _ = handle.send(greeting).await;
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
        if !session.instance().stopping.is_cancelled() {
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
        // At a stop, passive listeners and transfers close with the instance, not only as each
        // control connection finishes draining.
        let sessions = self.sessions.clone();
        let stopping = instance.stopping.clone();
        instance.runtime.spawn(async move {
            stopping.cancelled().await;
            sessions.lock().unwrap_or_else(|e| e.into_inner()).clear();
        });
    }
}

/// One command of one control connection, with what it may need.
struct Command<'a> {
    service: &'a FtpService,
    instance: &'a InstanceContext,
    handle: &'a SessionHandle,
    remote: IpAddr,
    local: IpAddr,
}

/// Runs a filesystem operation off the runtime's threads.
async fn fs<T: Send + 'static>(
    jail: Arc<Jail>,
    operation: impl FnOnce(&Jail) -> Result<T, JailError> + Send + 'static,
) -> Result<T, JailError> {
    tokio::task::spawn_blocking(move || operation(&jail))
        .await
        .unwrap_or_else(|_| Err(JailError::Io("internal error".into())))
}

/// The reply to a refused path or a failed operation.
fn refusal(error: JailError) -> Bytes {
    match error {
        JailError::Outside => reply::line(550, "Permission denied: outside the served folder."),
        JailError::Invalid => reply::line(501, "Invalid path."),
        JailError::Io(reason) => reply::line(550, format_args!("{}.", capitalized(&reason))),
    }
}

fn capitalized(text: &str) -> String {
    let mut chars = text.chars();
    chars
        .next()
        .map_or_else(String::new, |c| c.to_uppercase().chain(chars).collect())
}

/// The verb and argument of a command line: Telnet control bytes before it (as ABOR is sent
/// with) are skipped; the verb is upper-cased. `None` if the line is not UTF-8.
fn parse(line: &[u8]) -> Option<(String, &str)> {
    let start = line.iter().position(|b| b.is_ascii_alphabetic()).unwrap_or(line.len());
    let text = std::str::from_utf8(&line[start..]).ok()?;
    let (verb, arg) = text.split_once(' ').unwrap_or((text, ""));
    Some((verb.to_ascii_uppercase(), arg))
}

/// The commands answered by [`Command::on_path`].
fn needs_path(verb: &str) -> bool {
    matches!(
        verb,
        "SIZE" | "MDTM" | "MLST" | "DELE" | "MKD" | "XMKD" | "RMD" | "XRMD" | "RNFR" | "RNTO"
    )
}

/// FEAT: the extensions this server speaks.
fn features() -> Bytes {
    let features = [
        "EPSV",
        "MDTM",
        "MLST type*;size*;modify*;perm*;",
        "PASV",
        "REST STREAM",
        "SIZE",
        "UTF8",
    ];
    let lines: Vec<String> = features.iter().map(|f| (*f).to_owned()).collect();
    reply::multi(211, "Features:", &lines, "End.")
}

/// LIST and NLST take `ls` options some clients send (`-la`); they are skipped.
fn without_ls_options(arg: &str) -> &str {
    let mut rest = arg.trim_start();
    while rest.starts_with('-') {
        rest = rest.split_once(' ').map_or("", |(_, after)| after.trim_start());
    }
    rest
}

impl Command<'_> {
    async fn execute(&self, state: &mut FtpSession, line: &[u8]) -> Outcome {
        let Some((verb, arg)) = parse(line) else {
            return Some(reply::line(501, "Commands must be UTF-8."));
        };
        // REST and RNFR apply to the command right after them only.
        let restart = std::mem::take(&mut state.restart);
        let rename_from = state.rename_from.take();
        match verb.as_str() {
            "USER" => return Some(self.user(state, arg)),
            "PASS" => return Some(self.pass(state, arg)),
            "QUIT" => {
                let _ = self.handle.send(reply::line(221, "Goodbye.")).await;
                self.handle.close();
                return None;
            }
            "NOOP" => return Some(reply::line(200, "NOOP ok.")),
            "SYST" => return Some(reply::line(215, "UNIX Type: L8")),
            "FEAT" => return Some(features()),
            "OPTS" if arg.eq_ignore_ascii_case("UTF8 ON") => return Some(reply::line(200, "UTF8 is always on.")),
            "OPTS" => return Some(reply::line(501, "Option not understood.")),
            _ if !matches!(state.login, Login::In) => {
                return Some(reply::line(530, "Please log in with USER and PASS."));
            }
            _ => {}
        }
        let jail = match self.service.jail() {
            Ok(jail) => jail,
            Err(_) => return Some(reply::line(421, "The served folder cannot be opened.")),
        };
        if arg.is_empty() && (needs_path(&verb) || matches!(verb.as_str(), "RETR" | "STOR" | "APPE")) {
            return Some(reply::line(501, "A path is required."));
        }
        let writes = matches!(
            verb.as_str(),
            "STOR" | "APPE" | "DELE" | "MKD" | "XMKD" | "RMD" | "XRMD" | "RNFR" | "RNTO"
        );
        if writes && self.service.read_only {
            return Some(reply::line(550, "Permission denied: this server is read-only."));
        }
        match verb.as_str() {
            "PWD" | "XPWD" => Some(reply::line(
                257,
                format_args!("{} is the current directory.", reply::quoted(&state.cwd)),
            )),
            "CWD" | "XCWD" => self.change_dir(state, jail, arg).await,
            "CDUP" | "XCUP" => self.change_dir(state, jail, "..").await,
            "TYPE" => Some(match arg.to_ascii_uppercase().as_str() {
                "A" | "A N" => reply::line(200, "Type set to A."),
                "I" | "L 8" => reply::line(200, "Type set to I."),
                _ => reply::line(504, "Type not supported."),
            }),
            "MODE" if arg.eq_ignore_ascii_case("S") => Some(reply::line(200, "Mode set to S.")),
            "STRU" if arg.eq_ignore_ascii_case("F") => Some(reply::line(200, "Structure set to F.")),
            "MODE" | "STRU" => Some(reply::line(504, "Only stream mode and file structure are supported.")),
            "ALLO" => Some(reply::line(202, "No storage allocation necessary.")),
            "PASV" => Some(self.passive(state, false)),
            "EPSV" if arg.eq_ignore_ascii_case("ALL") => Some(reply::line(200, "EPSV ALL ok.")),
            "EPSV" => Some(self.passive(state, true)),
            "PORT" | "EPRT" => Some(reply::line(502, "Active mode is not supported; use PASV or EPSV.")),
            "REST" => Some(match arg.trim().parse::<u64>() {
                Ok(offset) => {
                    state.restart = offset;
                    reply::line(350, format_args!("Restarting at {offset}. Send STOR or RETR."))
                }
                Err(_) => reply::line(501, "REST needs a byte offset."),
            }),
            "LIST" | "NLST" | "MLSD" => self.listing(state, jail, &verb, arg).await,
            "RETR" => self.retrieve(state, jail, arg, restart).await,
            "STOR" | "APPE" => {
                let mode = match (verb.as_str(), restart) {
                    ("APPE", _) => Upload::Append,
                    (_, 0) => Upload::Replace,
                    _ => Upload::Resume,
                };
                self.store(state, jail, arg, mode, restart).await
            }
            "ABOR" => Some(match state.transfer.take() {
                Some(running) if running.is_under_way() => {
                    running.abort().await;
                    reply::line(226, "Abort successful.")
                }
                _ => reply::line(225, "No transfer to abort."),
            }),
            _ if needs_path(&verb) => Some(match state.cwd.join(arg) {
                Ok(path) => self.on_path(state, jail, &verb, path, rename_from).await,
                Err(e) => refusal(e),
            }),
            _ => Some(reply::line(502, format_args!("{verb} is not implemented."))),
        }
    }

    fn user(&self, state: &mut FtpSession, name: &str) -> Bytes {
        state.login = Login::User(name.to_owned());
        if self.service.anonymous && is_anonymous(name) {
            reply::line(331, "Anonymous login ok, send your e-mail address as password.")
        } else {
            reply::line(331, format_args!("Password required for {name}."))
        }
    }

    fn pass(&self, state: &mut FtpSession, password: &str) -> Bytes {
        match std::mem::take(&mut state.login) {
            Login::User(name) if self.service.admits(&name, password) => {
                state.login = Login::In;
                reply::line(230, "Logged in.")
            }
            Login::User(_) => {
                state.failures += 1;
                if state.failures >= MAX_LOGIN_FAILURES {
                    self.handle.close();
                }
                reply::line(530, "Login incorrect.")
            }
            Login::In => {
                state.login = Login::In;
                reply::line(230, "Already logged in.")
            }
            Login::Out => reply::line(503, "Log in with USER first."),
        }
    }

    async fn change_dir(&self, state: &mut FtpSession, jail: Arc<Jail>, arg: &str) -> Outcome {
        let path = match state.cwd.join(arg) {
            Ok(path) => path,
            Err(e) => return Some(refusal(e)),
        };
        let target = path.clone();
        Some(match fs(jail, move |jail| jail.is_dir(&target)).await {
            Ok(()) => {
                state.cwd = path;
                reply::line(250, format_args!("Directory changed to {}.", state.cwd))
            }
            Err(e) => refusal(e),
        })
    }

    /// PASV or EPSV: a listener for the next transfer.
    fn passive(&self, state: &mut FtpSession, extended: bool) -> Bytes {
        state.passive = None;
        let announced = match self.service.passive_address.unwrap_or(self.local) {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(IpAddr::V6(v6)),
            v4 => v4,
        };
        if !extended && !announced.is_ipv4() {
            return reply::line(425, "PASV needs IPv4; use EPSV.");
        }
        let Some(listener) = self.service.ports.bind(self.local) else {
            return reply::line(425, "No passive port available.");
        };
        let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
        state.passive = Some(listener);
        match announced {
            IpAddr::V4(ip) if !extended => reply::line(
                227,
                format_args!("Entering Passive Mode ({}).", passive::pasv_address(ip, port)),
            ),
            _ => reply::line(229, format_args!("Entering Extended Passive Mode (|||{port}|).")),
        }
    }

    /// Queues the 150 reply and starts a transfer over the passive listener.
    async fn start_transfer(&self, state: &mut FtpSession, listener: TcpListener, payload: Payload, what: String) {
        let opening = reply::line(150, format_args!("Opening BINARY mode data connection for {what}."));
        let _ = self.handle.send(opening).await;
        let transfer = Transfer {
            listener,
            peer: self.remote,
            payload,
            control: self.handle.clone(),
            idle: self.instance.config().idle_timeout.unwrap_or(DEFAULT_DATA_IDLE),
        };
        state.transfer = Some(transfer.spawn(self.instance));
    }

    /// The passive listener for a transfer command, if PASV/EPSV came first and no transfer
    /// is under way.
    fn data_listener(&self, state: &mut FtpSession) -> Result<TcpListener, Bytes> {
        if state.transfer.as_ref().is_some_and(Running::is_under_way) {
            return Err(reply::line(425, "A transfer is already under way."));
        }
        state
            .passive
            .take()
            .ok_or_else(|| reply::line(425, "Use PASV or EPSV first."))
    }

    async fn listing(&self, state: &mut FtpSession, jail: Arc<Jail>, verb: &str, arg: &str) -> Outcome {
        let path = match state.cwd.join(without_ls_options(arg)) {
            Ok(path) => path,
            Err(e) => return Some(refusal(e)),
        };
        let listener = match self.data_listener(state) {
            Ok(listener) => listener,
            Err(reply) => return Some(reply),
        };
        let (verb_owned, read_only) = (verb.to_owned(), self.service.read_only);
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let listed = fs(jail, move |jail| {
            let entries = jail.list(&path)?;
            Ok(match verb_owned.as_str() {
                "NLST" => listing::names(&entries),
                "MLSD" => listing::machine(&entries, read_only),
                _ => listing::list(&entries, now),
            })
        })
        .await;
        match listed {
            Ok(listing) => {
                self.start_transfer(state, listener, Payload::Listing(listing), "the listing".into())
                    .await;
                None
            }
            Err(e) => Some(refusal(e)),
        }
    }

    async fn retrieve(&self, state: &mut FtpSession, jail: Arc<Jail>, arg: &str, restart: u64) -> Outcome {
        let path = match state.cwd.join(arg) {
            Ok(path) if path.name().is_some() => path,
            Ok(_) => return Some(reply::line(550, "Not a plain file.")),
            Err(e) => return Some(refusal(e)),
        };
        let listener = match self.data_listener(state) {
            Ok(listener) => listener,
            Err(reply) => return Some(reply),
        };
        let what = format!("{} ", path.name().unwrap_or_default());
        let opened = fs(jail, move |jail| {
            let mut file = jail.open_read(&path)?;
            let size = file.metadata().map(|m| m.len()).unwrap_or(0);
            file.seek(SeekFrom::Start(restart.min(size)))
                .map_err(|e| JailError::Io(e.to_string()))?;
            Ok((file, size))
        })
        .await;
        match opened {
            Ok((file, size)) => {
                let what = format!("{what}({} bytes)", size.saturating_sub(restart));
                self.start_transfer(state, listener, Payload::Download(file), what)
                    .await;
                None
            }
            Err(e) => Some(refusal(e)),
        }
    }

    async fn store(&self, state: &mut FtpSession, jail: Arc<Jail>, arg: &str, mode: Upload, restart: u64) -> Outcome {
        let path = match state.cwd.join(arg) {
            Ok(path) => path,
            Err(e) => return Some(refusal(e)),
        };
        let listener = match self.data_listener(state) {
            Ok(listener) => listener,
            Err(reply) => return Some(reply),
        };
        let what = path.name().unwrap_or_default().to_owned();
        let opened = fs(jail, move |jail| {
            let mut file = jail.open_write(&path, mode)?;
            if mode == Upload::Resume {
                file.seek(SeekFrom::Start(restart))
                    .map_err(|e| JailError::Io(e.to_string()))?;
            }
            Ok(file)
        })
        .await;
        match opened {
            Ok(file) => {
                self.start_transfer(state, listener, Payload::Upload(file), what).await;
                None
            }
            Err(e) => Some(refusal(e)),
        }
    }

    /// The commands that act on one path and answer on the control connection.
    async fn on_path(
        &self,
        state: &mut FtpSession,
        jail: Arc<Jail>,
        verb: &str,
        path: VirtualPath,
        rename_from: Option<VirtualPath>,
    ) -> Bytes {
        let read_only = self.service.read_only;
        let renamed = path.clone();
        let verb_owned = verb.to_owned();
        let result = fs(jail, move |jail| {
            Ok(match verb_owned.as_str() {
                "SIZE" => {
                    let stat = jail.stat(&path)?;
                    if !is_kind(&stat, SFlag::S_IFREG) {
                        return Err(JailError::Io("not a plain file".into()));
                    }
                    reply::line(213, stat.st_size)
                }
                "MDTM" => reply::line(213, listing::timestamp(&jail.stat(&path)?)),
                "MLST" => {
                    let facts = listing::facts(&jail.stat(&path)?, read_only);
                    reply::multi(250, &format!("Listing {path}"), &[format!("{facts} {path}")], "End.")
                }
                "DELE" => {
                    jail.delete(&path)?;
                    reply::line(250, "File deleted.")
                }
                "MKD" | "XMKD" => {
                    jail.mkdir(&path)?;
                    reply::line(257, format_args!("{} created.", reply::quoted(&path)))
                }
                "RMD" | "XRMD" => {
                    jail.rmdir(&path)?;
                    reply::line(250, "Directory removed.")
                }
                "RNFR" => {
                    jail.stat(&path)?;
                    reply::line(350, "Ready for the destination name.")
                }
                "RNTO" => match &rename_from {
                    Some(from) => {
                        jail.rename(from, &path)?;
                        reply::line(250, "Renamed.")
                    }
                    None => reply::line(503, "Use RNFR first."),
                },
                _ => reply::line(502, "Not implemented."),
            })
        })
        .await;
        match result {
            Ok(reply) => {
                if verb == "RNFR" {
                    state.rename_from = Some(renamed);
                }
                reply
            }
            Err(e) => refusal(e),
        }
    }
}
