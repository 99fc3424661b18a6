//! Binding an instance's listeners: backlog, port 0, `port_fallback`, IPv6 sockets bound
//! v6-only (so `Any` and `IPv6Any` can share a port), and all-or-nothing.
//!
//! A process being spawned holds a copy of every descriptor of the host from its fork until
//! its exec has closed them, the listeners of instances just stopped included; binding their
//! ports again meanwhile would fail. So binding waits for spawns under way ([`spawning`]), and
//! a spawn counts as under way until the new program runs: only then has the kernel released
//! the copies (it finishes closing them as the exec returns, after the exec already looks done
//! to the parent).

use std::io::ErrorKind;
use std::net::{SocketAddr, TcpListener};
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

/// For each listener `wanted`, the index of one in `held` at the same address (ip and port;
/// each held one given once), or `None` where it must be bound anew.
pub(crate) fn match_held(held: &[ListenerConfig], wanted: &[ListenerConfig]) -> Vec<Option<usize>> {
    let mut taken = vec![false; held.len()];
    wanted
        .iter()
        .map(|wanted| {
            let found = (0..held.len()).find(|&i| !taken[i] && (held[i].ip, held[i].port) == (wanted.ip, wanted.port));
            if let Some(i) = found {
                taken[i] = true;
            }
            found
        })
        .collect()
}

/// Checks that the listeners of `next` that `current` does not already hold could be bound
/// now, without keeping them: a reload uses it before it stops what serves.
pub(crate) fn probe(next: &ServerConfig, current: &[SocketAddr]) -> Result<(), String> {
    let _binding = Binding::begin();
    for listener in &next.listeners {
        let held = current.contains(&SocketAddr::new(listener.ip, listener.port));
        if listener.port != 0 && !held {
            bind_one(listener, next.port_fallback, &next.name)?;
        }
    }
    Ok(())
}

fn bind_one(listener: &ListenerConfig, fallback: u16, server: &str) -> Result<TcpListener, String> {
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
    socket.listen(backlog.min(i32::MAX as u32) as i32)?;
    Ok(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listener(port: u16) -> ListenerConfig {
        ListenerConfig {
            ip: [127, 0, 0, 1].into(),
            port,
            backlog: 16,
        }
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
