//! Socket activation: the listening sockets systemd passed (`$LISTEN_FDS` descriptors from 3,
//! for this process when `$LISTEN_PID` names it, named by `$LISTEN_FDNAMES`). They are taken
//! once at start and held for the life of the host; a listener `{ fd_name = "web" }` serves a
//! copy of the one named `web`. So an instance stopped, or the whole host restarted by
//! systemd, never closes the socket itself: connections that arrive meanwhile wait in its
//! backlog, and none is refused.

use std::net::{SocketAddr, TcpListener};
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

/// The first descriptor systemd passes.
const FIRST_FD: i32 = 3;

/// The sockets passed, by name, in order.
static PASSED: OnceLock<Vec<(String, OwnedFd)>> = OnceLock::new();
/// Whether a socket of any name counts as passed (a config check, outside systemd).
static ASSUMED: AtomicBool = AtomicBool::new(false);

/// Counts a socket of any name as passed, listening on the unspecified address: a config
/// checked outside systemd is checked for everything else.
pub fn assume_passed() {
    ASSUMED.store(true, Ordering::Relaxed);
}

/// Takes the sockets passed to this process, if any; call it once, first thing. Descriptors
/// that are not listening TCP sockets are refused with a message for each.
pub fn take_passed() -> Vec<String> {
    let mut problems = Vec::new();
    let passed = read_environment(&mut problems);
    let _ = PASSED.set(passed);
    problems
}

fn read_environment(problems: &mut Vec<String>) -> Vec<(String, OwnedFd)> {
    let for_me = std::env::var("LISTEN_PID").ok().and_then(|pid| pid.parse::<u32>().ok()) == Some(std::process::id());
    let count = std::env::var("LISTEN_FDS").ok().and_then(|n| n.parse::<i32>().ok());
    let (true, Some(count)) = (for_me, count) else {
        return Vec::new();
    };
    let names = std::env::var("LISTEN_FDNAMES").unwrap_or_default();
    let mut names = names.split(':');
    let mut passed = Vec::new();
    for fd in FIRST_FD..FIRST_FD.saturating_add(count.clamp(0, 1024)) {
        let name = names.next().filter(|n| !n.is_empty()).unwrap_or("unknown").to_owned();
        // SAFETY: systemd passed descriptors FIRST_FD.. to this process (LISTEN_PID) and
        // nothing else took them: this runs before the host opens any descriptor of its own.
        let socket = unsafe { OwnedFd::from_raw_fd(fd) };
        // An agent the host starts must not inherit it (the host hands agents what they serve).
        if let Err(e) = nix::fcntl::fcntl(&socket, nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC)) {
            problems.push(format!("passed socket {name:?} (descriptor {fd}): {e}"));
            continue;
        }
        let sock = socket2::SockRef::from(&socket);
        let listening_tcp = sock.r#type().is_ok_and(|t| t == socket2::Type::STREAM)
            && sock.is_listener().unwrap_or(false)
            && sock.local_addr().is_ok_and(|a| a.as_socket().is_some());
        if !listening_tcp {
            problems.push(format!(
                "passed socket {name:?} (descriptor {fd}) is not a listening TCP socket"
            ));
            continue;
        }
        passed.push((name, socket));
    }
    passed
}

fn passed() -> &'static [(String, OwnedFd)] {
    PASSED.get().map_or(&[], Vec::as_slice)
}

/// The names of the sockets passed.
pub fn names() -> Vec<&'static str> {
    passed().iter().map(|(name, _)| name.as_str()).collect()
}

/// The address the socket named `name` listens on.
pub fn local_addr(name: &str) -> Option<SocketAddr> {
    let Some((_, socket)) = passed().iter().find(|(n, _)| n == name) else {
        return ASSUMED
            .load(Ordering::Relaxed)
            .then(|| SocketAddr::from(([0, 0, 0, 0], 0)));
    };
    socket2::SockRef::from(socket).local_addr().ok()?.as_socket()
}

/// A copy of the socket named `name`, non-blocking, for a listener to serve.
pub fn listener(name: &str) -> std::io::Result<TcpListener> {
    let Some((_, socket)) = passed().iter().find(|(n, _)| n == name) else {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("no socket named {name:?} was passed"),
        ));
    };
    let copy = TcpListener::from(socket.try_clone()?);
    copy.set_nonblocking(true)?;
    Ok(copy)
}
