//! Binding an instance's listeners: backlog, port 0, `port_fallback`, IPv6 sockets bound
//! v6-only (so `Any` and `IPv6Any` can share a port), sockets systemd passed, and
//! all-or-nothing; and which sockets a
//! live change of the listeners keeps, binds and closes ([`Move`]).
//!
//! A process being spawned holds a copy of every descriptor of the host from its fork until
//! its exec has closed them, the listeners of instances just stopped included; binding their
//! ports again meanwhile would fail. So binding waits for spawns under way ([`spawning`]), and
//! a spawn counts as under way until the new program runs: only then has the kernel released
//! the copies (it finishes closing them as the exec returns, after the exec already looks done
//! to the parent).

use std::io::ErrorKind;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsFd;
use std::sync::{Condvar, Mutex, MutexGuard};

use socket2::{Domain, Protocol, Socket, Type};

use crate::config::{ListenerConfig, ServerConfig};

/// Spawns under way and binds under way exclude each other.
struct Gate {
    state: Mutex<GateState>,
    changed: Condvar,
}

struct GateState {
    spawns: usize,
    binding: bool,
}

static GATE: Gate = Gate {
    state: Mutex::new(GateState {
        spawns: 0,
        binding: false,
    }),
    changed: Condvar::new(),
};

impl Gate {
    fn lock(&self) -> MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until `blocked` is false.
    fn wait_while(&self, blocked: impl Fn(&GateState) -> bool) -> MutexGuard<'_, GateState> {
        let state = self.lock();
        self.changed
            .wait_while(state, |state| blocked(state))
            .unwrap_or_else(|e| e.into_inner())
    }
}

/// A spawn under way: no listener is bound until it is dropped (once the child runs its new
/// program). It may move between threads.
pub(crate) struct Spawning(());

impl Drop for Spawning {
    fn drop(&mut self) {
        GATE.lock().spawns -= 1;
        GATE.changed.notify_all();
    }
}

/// Marks a spawn under way; waits while listeners are being bound (a moment).
pub(crate) fn spawning() -> Spawning {
    GATE.wait_while(|state| state.binding).spawns += 1;
    Spawning(())
}

/// Listeners being bound: no spawn starts meanwhile.
struct Binding(());

impl Binding {
    /// Waits until no spawn is under way. Blocks: call it off the runtime's workers.
    fn begin() -> Self {
        GATE.wait_while(|state| state.binding || state.spawns > 0).binding = true;
        Self(())
    }
}

impl Drop for Binding {
    fn drop(&mut self) {
        GATE.lock().binding = false;
        GATE.changed.notify_all();
    }
}

/// Binds every listener of `server`, or none: on the first failure the ones bound are
/// released and the error names the address, the port(s) and the server. Blocks while a
/// child process is being spawned.
pub(crate) fn bind_all(server: &ServerConfig) -> Result<Vec<TcpListener>, String> {
    let _binding = Binding::begin();
    server
        .listeners
        .iter()
        .map(|listener| bind_one(listener, server.port_fallback, &server.name))
        .collect()
}

/// How a run goes from the listeners it holds to those a new config lists (a live change): a
/// listener listed at an address it already holds (ip and port; each held one kept once) keeps
/// its socket, and takes a changed backlog on it; the others are bound anew; the held ones no
/// longer listed close.
pub(crate) struct Move<'a> {
    next: &'a ServerConfig,
    /// For each listener of `next`, the index of the held one it keeps.
    kept: Vec<Option<usize>>,
    /// The backlog of each held listener.
    backlogs: Vec<u32>,
}

impl<'a> Move<'a> {
    pub(crate) fn new(held: &[ListenerConfig], next: &'a ServerConfig) -> Self {
        let mut taken = vec![false; held.len()];
        let kept = next
            .listeners
            .iter()
            .map(|wanted| {
                let same = |i: &usize| !taken[*i] && (held[*i].ip, held[*i].port) == (wanted.ip, wanted.port);
                let found = (0..held.len()).find(same);
                if let Some(i) = found {
                    taken[i] = true;
                }
                found
            })
            .collect();
        Self {
            next,
            kept,
            backlogs: held.iter().map(|l| l.backlog).collect(),
        }
    }

    /// The listeners to bind anew, as a config [`bind_all`] takes (with the new config's
    /// `port_fallback` and name).
    pub(crate) fn to_bind(&self) -> ServerConfig {
        ServerConfig {
            listeners: self.fresh().cloned().collect(),
            ..self.next.clone()
        }
    }

    /// The listeners to bind anew, in order.
    pub(crate) fn fresh(&self) -> impl Iterator<Item = &'a ListenerConfig> + '_ {
        (self.next.listeners.iter().zip(&self.kept))
            .filter(|(_, kept)| kept.is_none())
            .map(|(wanted, _)| wanted)
    }

    /// Puts `held` (in the order they were held) and `bound` (one for each of
    /// [`fresh`](Self::fresh)) in the new config's order, each with its listener's config, and
    /// gives the kept ones their new backlog; answers them and the held ones no longer listed,
    /// which are to close.
    pub(crate) fn arrange<T: AsFd>(&self, held: Vec<T>, bound: Vec<T>) -> (Vec<(T, &'a ListenerConfig)>, Vec<T>) {
        let mut held: Vec<Option<T>> = held.into_iter().map(Some).collect();
        let mut bound = bound.into_iter();
        let serving = (self.next.listeners.iter().zip(&self.kept))
            .map(|(wanted, kept)| {
                let Some(i) = *kept else {
                    return (bound.next().expect("a socket bound for each fresh listener"), wanted);
                };
                let socket = held[i].take().expect("each held listener kept once");
                if self.backlogs[i] != wanted.backlog
                    && let Err(e) = set_backlog(&socket, wanted.backlog)
                {
                    let (server, ip, port) = (&self.next.name, wanted.ip, wanted.port);
                    tracing::warn!(server, "cannot change the backlog of {ip}:{port}: {e}");
                }
                (socket, wanted)
            })
            .collect();
        (serving, held.into_iter().flatten().collect())
    }
}

/// Gives a listening socket a new backlog (Linux takes a second `listen` on a socket that
/// listens already, and keeps its queue).
fn set_backlog(socket: &impl AsFd, backlog: u32) -> std::io::Result<()> {
    socket2::SockRef::from(socket).listen(backlog_arg(backlog))
}

/// Checks that the listeners of `next` that `current` does not already hold could be bound
/// now, without keeping them: a reload uses it before it stops what serves.
pub(crate) fn probe(next: &ServerConfig, current: &[SocketAddr]) -> Result<(), String> {
    let _binding = Binding::begin();
    for listener in &next.listeners {
        let held = current.contains(&SocketAddr::new(listener.ip, listener.port));
        // A passed socket is there whatever else listens.
        if listener.port != 0 && !held && listener.fd_name.is_none() {
            bind_one(listener, next.port_fallback, &next.name)?;
        }
    }
    Ok(())
}

fn bind_one(listener: &ListenerConfig, fallback: u16, server: &str) -> Result<TcpListener, String> {
    if let Some(name) = &listener.fd_name {
        return crate::systemd::activation::listener(name)
            .map_err(|e| format!("cannot serve the passed socket {name:?} (server {server}): {e}"));
    }
    let ip = listener.ip;
    let last = if listener.port == 0 {
        0
    } else {
        listener.port.saturating_add(fallback)
    };
    for port in listener.port..=last {
        match bind_at(SocketAddr::new(ip, port), listener.backlog) {
            Ok(socket) => {
                if port != listener.port {
                    tracing::warn!(
                        server,
                        "port {} on {ip} is in use; listening on {port} instead",
                        listener.port
                    );
                }
                return Ok(socket);
            }
            Err(e) if e.kind() == ErrorKind::AddrInUse => continue,
            Err(e) => {
                return Err(format!(
                    "cannot listen on {} (server {server}): {e}",
                    SocketAddr::new(ip, port)
                ));
            }
        }
    }
    Err(if last == listener.port {
        format!("port {} on {ip} is in use (server {server})", listener.port)
    } else {
        format!(
            "ports {}-{last} on {ip} are all in use (server {server})",
            listener.port
        )
    })
}

fn bind_at(addr: SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    // Restarting an instance must not wait for TIME_WAIT of its previous sessions.
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(backlog_arg(backlog))?;
    Ok(socket.into())
}

/// A backlog as `listen` takes it.
fn backlog_arg(backlog: u32) -> i32 {
    backlog.min(i32::MAX as u32) as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listener(port: u16) -> ListenerConfig {
        ListenerConfig {
            ip: [127, 0, 0, 1].into(),
            port,
            backlog: 16,
            fd_name: None,
        }
    }

    fn server(listeners: Vec<ListenerConfig>) -> ServerConfig {
        ServerConfig {
            listeners,
            ..ServerConfig::default()
        }
    }

    #[test]
    fn a_move_keeps_what_it_holds_at_the_same_address_once_and_binds_the_rest() {
        let socket = || bind_at("127.0.0.1:0".parse().unwrap(), 16).unwrap();
        let address = |socket: &TcpListener| socket.local_addr().unwrap();
        let held_at = [listener(1), listener(2), listener(2)];
        let held = vec![socket(), socket(), socket()];
        let bound = vec![socket(), socket()];
        let (kept_1, kept_2, gone_2) = (address(&held[0]), address(&held[1]), address(&held[2]));
        let (new_3, new_3_again) = (address(&bound[0]), address(&bound[1]));
        let wider = ListenerConfig {
            backlog: 512,
            ..listener(2)
        };
        let next = server(vec![listener(3), wider.clone(), listener(1), listener(3)]);
        let plan = Move::new(&held_at, &next);
        assert_eq!(plan.to_bind().listeners, [listener(3), listener(3)]);
        let (serving, gone) = plan.arrange(held, bound);
        let serving: Vec<_> = serving
            .iter()
            .map(|(socket, config)| (address(socket), (*config).clone()))
            .collect();
        assert_eq!(
            serving,
            [
                (new_3, listener(3)),
                (kept_2, wider),
                (kept_1, listener(1)),
                (new_3_again, listener(3)),
            ]
        );
        assert_eq!(gone.iter().map(address).collect::<Vec<_>>(), [gone_2]);
    }

    #[test]
    fn a_second_listen_sets_a_new_backlog() {
        let socket = bind_at("127.0.0.1:0".parse().unwrap(), 64).unwrap();
        let addr = socket.local_addr().unwrap();
        set_backlog(&socket, 0).unwrap();
        // A backlog of 0 queues one connection: the next one's SYN is dropped and its connect
        // does not complete (it would retry in a second).
        let queued = std::net::TcpStream::connect(addr).unwrap();
        let late = std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_millis(300));
        assert!(late.is_err(), "the queue took more than the new backlog");
        drop(queued);
    }

    #[test]
    fn a_busy_port_is_named_and_fallback_takes_the_next() {
        let busy = bind_at("127.0.0.1:0".parse().unwrap(), 16).unwrap();
        let port = busy.local_addr().unwrap().port();
        let err = bind_one(&listener(port), 0, "S").unwrap_err();
        assert_eq!(err, format!("port {port} on 127.0.0.1 is in use (server S)"));
        // The next port may be taken by someone else on a busy machine; fallback then goes on.
        let got = bind_one(&listener(port), 5, "S").unwrap();
        let got_port = got.local_addr().unwrap().port();
        assert!(got_port > port && got_port <= port + 5, "{got_port} after {port}");
    }
}
