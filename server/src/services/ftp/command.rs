//! One command of an FTP control connection: parsing the line, checking the login and the
//! `read_only` option, and carrying out each verb — on the control connection, or by starting a
//! transfer.

use std::io::{Seek, SeekFrom};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use nix::sys::stat::SFlag;

use super::jail::{Jail, JailError, Upload, VirtualPath, is_kind};
use super::passive::{self, DataPort};
use super::throttle::{self, Admission, UnderWay};
use super::transfer::{Payload, Running, Transfer};
use super::{FtpService, FtpSession, Login, is_anonymous, listing, reply};
use crate::context::{InstanceContext, SessionHandle};

/// Failed logins after which the control connection is closed.
const MAX_LOGIN_FAILURES: u32 = 3;
/// Most characters of a client's argument echoed in a reply.
const MAX_ECHO: usize = 64;
/// A data transfer through which nothing moves for this long ends, when the instance has no
/// idle timeout of its own.
const DEFAULT_DATA_IDLE: Duration = Duration::from_secs(300);

/// A reply, or none when the command queued its own.
type Outcome = Option<Bytes>;

/// One command of one control connection, with what it may need.
pub(super) struct Command<'a> {
    pub service: &'a FtpService,
    pub instance: &'a InstanceContext,
    /// The control connection, where replies go.
    pub handle: &'a SessionHandle,
    /// The client's address: data connections must come from it.
    pub remote: IpAddr,
    /// The address the client reached: passive listeners bind it.
    pub local: IpAddr,
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
        JailError::PastEnd => reply::line(554, "Requested action not taken: invalid REST parameter."),
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
    reply::multi(211, "Features:", &features, "End.")
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
    /// Carries out one command line; returns its reply unless it queued its own.
    pub async fn execute(&self, state: &mut FtpSession, line: &[u8]) -> Outcome {
        let Some((verb, arg)) = parse(line) else {
            return Some(reply::line(501, "Commands must be UTF-8."));
        };
        // REST and RNFR apply to the command right after them only.
        let restart = std::mem::take(&mut state.restart);
        let rename_from = state.rename_from.take();
        match verb.as_str() {
            "USER" => return Some(self.user(state, arg)),
            "PASS" => return Some(self.pass(state, arg).await),
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
            "EPSV" if arg.eq_ignore_ascii_case("ALL") => {
                state.epsv_all = true;
                Some(reply::line(200, "EPSV ALL ok."))
            }
            "PASV" if state.epsv_all => Some(reply::line(503, "EPSV ALL was given: use EPSV.")),
            "EPSV" => Some(self.passive(state, true).await),
            "PASV" => Some(self.passive(state, false).await),
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
            _ => Some(reply::line(
                502,
                format_args!("{} is not implemented.", reply::clip(&verb, MAX_ECHO)),
            )),
        }
    }

    fn user(&self, state: &mut FtpSession, name: &str) -> Bytes {
        state.login = Login::User(name.to_owned());
        if self.service.anonymous && is_anonymous(name) {
            reply::line(331, "Anonymous login ok, send your e-mail address as password.")
        } else {
            reply::line(
                331,
                format_args!("Password required for {}.", reply::clip(name, MAX_ECHO)),
            )
        }
    }

    async fn pass(&self, state: &mut FtpSession, password: &str) -> Bytes {
        match std::mem::take(&mut state.login) {
            Login::User(name) => {
                let throttle = &self.service.throttle;
                let refusal = match throttle.admit(self.remote, &name) {
                    Admission::Refused => {
                        self.handle.close();
                        return reply::banned();
                    }
                    // Not checked, yet it counts as a failure of this connection: no one can
                    // ask at no cost.
                    Admission::Busy => "Too many login attempts for this user; try again later.",
                    Admission::After(wait) => {
                        let attempt = UnderWay::new(throttle, self.remote, &name);
                        tokio::time::sleep(wait).await;
                        let admitted = self.service.admits(&name, password);
                        attempt.settle(admitted);
                        if admitted {
                            state.login = Login::In;
                            return reply::line(230, "Logged in.");
                        }
                        "Login incorrect."
                    }
                };
                state.failures += 1;
                if state.failures >= MAX_LOGIN_FAILURES {
                    self.handle.close();
                }
                reply::line(530, refusal)
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
    async fn passive(&self, state: &mut FtpSession, extended: bool) -> Bytes {
        // Its port may be the only one: free before another is looked for.
        if let Some(previous) = state.passive.take() {
            previous.close().await;
        }
        let announced = match self.service.passive_address.unwrap_or(self.local) {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(IpAddr::V6(v6)),
            v4 => v4,
        };
        if !extended && !announced.is_ipv4() {
            return reply::line(425, "PASV needs IPv4; use EPSV.");
        }
        let (listener, hold) = match self.service.ports.bind(self.local, throttle::client(self.remote)) {
            Ok(bound) => bound,
            Err(refusal) => return reply::line(425, refusal),
        };
        let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
        state.passive = Some(DataPort::open(listener, hold, self.remote));
        match announced {
            IpAddr::V4(ip) if !extended => reply::line(
                227,
                format_args!("Entering Passive Mode ({}).", passive::pasv_address(ip, port)),
            ),
            _ => reply::line(229, format_args!("Entering Extended Passive Mode (|||{port}|).")),
        }
    }

    /// The passive port for a transfer command, if PASV/EPSV came first and no transfer is
    /// under way.
    fn data_port(&self, state: &mut FtpSession) -> Result<DataPort, Bytes> {
        if state.transfer.as_ref().is_some_and(Running::is_under_way) {
            return Err(reply::line(425, "A transfer is already under way."));
        }
        state
            .passive
            .take()
            .ok_or_else(|| reply::line(425, "Use PASV or EPSV first."))
    }

    /// A transfer command: resolves the path, takes the passive listener, prepares what moves
    /// (off the runtime's threads), then queues the 150 reply and starts the transfer. `prepare`
    /// also names what moves, for the 150 reply.
    async fn transfer(
        &self,
        state: &mut FtpSession,
        jail: Arc<Jail>,
        arg: &str,
        prepare: impl FnOnce(&Jail, &VirtualPath) -> Result<(Payload, String), JailError> + Send + 'static,
    ) -> Outcome {
        let path = match state.cwd.join(arg) {
            Ok(path) => path,
            Err(e) => return Some(refusal(e)),
        };
        let data = match self.data_port(state) {
            Ok(data) => data,
            Err(reply) => return Some(reply),
        };
        match fs(jail, move |jail| prepare(jail, &path)).await {
            Ok((payload, what)) => {
                let opening = reply::line(150, format_args!("Opening BINARY mode data connection for {what}."));
                let _ = self.handle.send(opening).await;
                let transfer = Transfer {
                    data,
                    payload,
                    control: self.handle.clone(),
                    idle: self.instance.config().idle_timeout.unwrap_or(DEFAULT_DATA_IDLE),
                };
                state.transfer = Some(transfer.spawn(self.instance));
                None
            }
            Err(e) => Some(refusal(e)),
        }
    }

    /// LIST, NLST, MLSD: the listing is made beforehand and sent over the data connection.
    async fn listing(&self, state: &mut FtpSession, jail: Arc<Jail>, verb: &str, arg: &str) -> Outcome {
        let (verb, read_only) = (verb.to_owned(), self.service.read_only);
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let prepare = move |jail: &Jail, path: &VirtualPath| {
            let entries = jail.list(path)?;
            let listing = match verb.as_str() {
                "NLST" => listing::names(&entries),
                "MLSD" => listing::machine(&entries, read_only),
                _ => listing::list(&entries, now),
            };
            Ok((Payload::Listing(listing), "the listing".to_owned()))
        };
        self.transfer(state, jail, without_ls_options(arg), prepare).await
    }

    /// RETR, from the REST offset; an offset past the end of the file is refused.
    async fn retrieve(&self, state: &mut FtpSession, jail: Arc<Jail>, arg: &str, restart: u64) -> Outcome {
        let prepare = move |jail: &Jail, path: &VirtualPath| {
            let mut file = jail.open_read(path)?;
            let size = file.metadata()?.len();
            if restart > size {
                return Err(JailError::PastEnd);
            }
            file.seek(SeekFrom::Start(restart))?;
            let what = format!("{} ({} bytes)", path.name().unwrap_or("/"), size - restart);
            Ok((Payload::Download(file), what))
        };
        self.transfer(state, jail, arg, prepare).await
    }

    /// STOR (from the REST offset, if one was given) and APPE. After a REST the file must exist
    /// and hold at least that many bytes; this is checked before it is opened, so a refused
    /// upload neither creates the file nor fills it with zeros.
    async fn store(&self, state: &mut FtpSession, jail: Arc<Jail>, arg: &str, mode: Upload, restart: u64) -> Outcome {
        let prepare = move |jail: &Jail, path: &VirtualPath| {
            if restart > 0 && restart > u64::try_from(jail.stat(path)?.st_size).unwrap_or(0) {
                return Err(JailError::PastEnd);
            }
            let mut file = jail.open_write(path, mode)?;
            if mode == Upload::Resume {
                file.seek(SeekFrom::Start(restart))?;
            }
            Ok((Payload::Upload(file), path.name().unwrap_or("/").to_owned()))
        };
        self.transfer(state, jail, arg, prepare).await
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

/// Parses a command line as a client may send it, and checks what must hold: a verb in
/// capitals and its argument, or not UTF-8; never a panic; both short when replies echo them.
/// For the property tests and the fuzz targets.
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) fn check_line(line: &[u8]) {
    if let Some((verb, arg)) = parse(line) {
        assert!(!verb.chars().any(|c| c.is_ascii_lowercase()));
        assert!(arg.len() < line.len() || arg.is_empty());
        assert!(reply::clip(&verb, MAX_ECHO).chars().count() <= MAX_ECHO + 1);
        assert!(reply::clip(arg, MAX_ECHO).chars().count() <= MAX_ECHO + 1);
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Any line: a verb in capitals and its argument, or not UTF-8; never a panic.
        #[test]
        fn any_command_line(line in proptest::collection::vec(any::<u8>(), 0..256)) {
            check_line(&line);
        }

        /// An echoed argument is at most MAX_ECHO characters and an ellipsis.
        #[test]
        fn echoes_are_short(text in "\\PC{0,300}") {
            let clipped = reply::clip(&text, MAX_ECHO);
            prop_assert!(clipped.chars().count() <= MAX_ECHO + 1);
            prop_assert!(text.starts_with(clipped.trim_end_matches('…')));
        }
    }
}
