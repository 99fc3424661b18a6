//! Plain TCP clients for the tests: line requests with replies, raw echo, and closing checks;
//! and free ports for the tests that must name their own.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use socket2::{Domain, Socket, Type};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Bound on any single wait of a test client.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Where [`free_consecutive_ports`] searches from: above the well-known and the usual fixed ports.
const LOWEST_FREE_PORT: u16 = 10_000;

/// The first of `count` consecutive ports that are free on 127.0.0.1, for a test that must name
/// its ports (a server's `replicas` on `port`, `port + 1`, ...; a `port_fallback` past a busy
/// port; a fixed passive range). Each port is checked by binding it without `SO_REUSEADDR` and
/// released at once.
///
/// The ports lie below the kernel's ephemeral range (`/proc/sys/net/ipv4/ip_local_port_range`,
/// 32768 if it cannot be read). The kernel hands out ephemeral ports on its own, to every
/// outgoing connection of every process: one found free there can be taken before the test binds
/// it, and while connections linger in TIME_WAIT whole stretches of it are busy. Below it, only
/// an explicit bind takes a port. The search starts at a point taken from the process id, the
/// clock and a count of calls, so test binaries and tests running side by side seldom try the
/// same ports. Where the ephemeral range leaves no room below it, the ports above 10000 are
/// searched instead.
pub fn free_consecutive_ports(count: u16) -> u16 {
    static CALLS: AtomicU64 = AtomicU64::new(0);
    assert!(count > 0, "at least one port");
    let end = match ephemeral_start().checked_sub(count) {
        Some(end) if end > LOWEST_FREE_PORT => end,
        _ => u16::MAX - count + 1,
    };
    // The first ports of all runs that fit: [LOWEST_FREE_PORT, end).
    let span = u64::from(end - LOWEST_FREE_PORT);
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let seed = u64::from(std::process::id()).wrapping_mul(0x9e37_79b9_7f4a_7c15)
        ^ nanos
        ^ CALLS
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_mul(0xbf58_476d_1ce4_e5b9);
    let mut offset = seed % span;
    let mut tried = 0;
    while tried < span {
        let first = LOWEST_FREE_PORT + offset as u16;
        match (0..count).find(|i| !is_free(first + i)) {
            None => return first,
            // No run that holds the busy port can do: go on after it.
            Some(busy) => {
                let skip = u64::from(busy) + 1;
                tried += skip;
                offset = (offset + skip) % span;
            }
        }
    }
    panic!("no {count} consecutive free ports on 127.0.0.1 starting from {LOWEST_FREE_PORT} to {end}");
}

/// The first port of the kernel's ephemeral range.
fn ephemeral_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768)
}

/// Whether `port` can be bound on 127.0.0.1 by a socket without `SO_REUSEADDR`: nothing listens
/// there, nothing is bound there, and no connection on it lingers in TIME_WAIT.
fn is_free(port: u16) -> bool {
    let Ok(socket) = Socket::new(Domain::IPV4, Type::STREAM, None) else {
        return false;
    };
    socket.set_reuse_address(false).is_ok()
        && socket
            .bind(&SocketAddr::from((Ipv4Addr::LOCALHOST, port)).into())
            .is_ok()
}

/// Connects to `127.0.0.1:port`.
pub async fn connect(port: u16) -> TcpStream {
    connect_addr(SocketAddr::from(([127, 0, 0, 1], port))).await
}

/// Connects to `addr`.
pub async fn connect_addr(addr: SocketAddr) -> TcpStream {
    tokio::time::timeout(IO_TIMEOUT, TcpStream::connect(addr))
        .await
        .unwrap_or_else(|_| panic!("connect to {addr} timed out"))
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"))
}

/// A line-protocol client over any stream.
pub struct LineClient<S> {
    stream: BufReader<S>,
}

impl LineClient<TcpStream> {
    /// Connects to a line server on `127.0.0.1:port`.
    pub async fn connect(port: u16) -> Self {
        Self::new(connect(port).await)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> LineClient<S> {
    /// Wraps a connected stream.
    pub fn new(stream: S) -> Self {
        Self {
            stream: BufReader::new(stream),
        }
    }

    /// Sends `line` and `\r\n`.
    pub async fn send(&mut self, line: &str) {
        let stream = self.stream.get_mut();
        stream
            .write_all(format!("{line}\r\n").as_bytes())
            .await
            .expect("send line");
        stream.flush().await.expect("flush line");
    }

    /// Reads one reply line; panics on timeout or end of stream. The `\r\n` is removed.
    pub async fn recv(&mut self) -> String {
        self.try_recv()
            .await
            .expect("the server closed the connection instead of replying")
    }

    /// Reads one reply line, or `None` at end of stream.
    pub async fn try_recv(&mut self) -> Option<String> {
        let mut line = String::new();
        let read = tokio::time::timeout(IO_TIMEOUT, self.stream.read_line(&mut line))
            .await
            .expect("reply timed out");
        match read {
            Ok(0) | Err(_) => None,
            Ok(_) => {
                assert!(line.ends_with("\r\n"), "reply {line:?} does not end with \\r\\n");
                line.truncate(line.len() - 2);
                Some(line)
            }
        }
    }

    /// Sends a request line and reads the reply line.
    pub async fn request(&mut self, line: &str) -> String {
        self.send(line).await;
        self.recv().await
    }

    /// The underlying stream.
    pub fn stream(&mut self) -> &mut S {
        self.stream.get_mut()
    }

    /// True if the server closes the connection within `timeout` (after any pending bytes).
    pub async fn closes_within(&mut self, timeout: Duration) -> bool {
        closes_within(&mut self.stream, timeout).await
    }
}

/// Sends `data` and reads back exactly as many bytes.
pub async fn echo_roundtrip<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S, data: &[u8]) -> Vec<u8> {
    stream.write_all(data).await.expect("send echo data");
    stream.flush().await.expect("flush echo data");
    let mut back = vec![0u8; data.len()];
    tokio::time::timeout(IO_TIMEOUT, stream.read_exact(&mut back))
        .await
        .expect("echo timed out")
        .expect("read echo");
    back
}

/// True if the peer closes (end of stream or reset) within `timeout`; bytes read are dropped.
pub async fn closes_within<S: AsyncRead + Unpin>(stream: &mut S, timeout: Duration) -> bool {
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::net::{TcpListener, TcpStream};

    use super::*;

    #[test]
    fn consecutive_ports_are_free_and_below_the_ephemeral_range() {
        let first = free_consecutive_ports(5);
        assert!(first >= LOWEST_FREE_PORT, "{first}");
        if ephemeral_start() > LOWEST_FREE_PORT + 5 {
            assert!(
                first + 5 <= ephemeral_start(),
                "{first}..{} reach the ephemeral range",
                first + 5
            );
        }
        let held: Vec<_> = (first..first + 5)
            .map(|port| TcpListener::bind(("127.0.0.1", port)).expect("a port found free binds"))
            .collect();
        assert!(
            (first..first + 5).all(|port| !is_free(port)),
            "a listening port is not free"
        );
        drop(held);
        assert!((first..first + 5).all(is_free), "a released port is free again");
    }

    #[test]
    fn a_port_whose_connection_lingers_is_not_free() {
        let port = free_consecutive_ports(1);
        let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
        let mut client = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        drop(listener);
        // The server's side closes first, so its socket on `port` lingers (FIN_WAIT2, TIME_WAIT).
        drop(accepted);
        client.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        assert_eq!(client.read(&mut [0u8; 1]).unwrap(), 0, "the server closed");
        drop(client);
        assert!(
            TcpListener::bind(("127.0.0.1", port)).is_ok(),
            "with SO_REUSEADDR the port binds"
        );
        assert!(!is_free(port), "without SO_REUSEADDR it does not");
    }
}
