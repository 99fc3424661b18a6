//! Passive data connections: a listener per PASV/EPSV on a port of the configured range (or
//! an ephemeral one), accepting on a task of its own the one connection it is for — from the
//! control connection's peer only, within a bound of the PASV, after which its port is free
//! again whatever the control connection does. A client (an address, or an IPv6 /64) holds at
//! most a quarter of a configured range at once, so that one client cannot take it all.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long a client has, from its PASV or EPSV, to open the data connection it asked for.
pub const ACCEPT_TIMEOUT: Duration = Duration::from_secs(10);

/// The ports passive listeners may use.
#[derive(Debug)]
pub struct PortRange {
    /// First and last port, or `None` for ephemeral ports.
    range: Option<(u16, u16)>,
    /// Where the next search starts, so that ports are used round the range.
    next: AtomicU32,
    /// Ports of the range each client holds.
    holders: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

/// A port counted against a client until this drops.
pub struct Hold {
    holders: Option<Arc<Mutex<HashMap<IpAddr, usize>>>>,
    client: IpAddr,
}

impl Drop for Hold {
    fn drop(&mut self) {
        let Some(holders) = &self.holders else {
            return;
        };
        let mut holders = holders.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(held) = holders.get_mut(&self.client) {
            *held -= 1;
            if *held == 0 {
                holders.remove(&self.client);
            }
        }
    }
}

impl PortRange {
    /// Parses `"50000-50100"` (or `None`: ephemeral ports).
    pub fn parse(text: Option<&str>) -> Result<Self, String> {
        let range = match text {
            None => None,
            Some(text) => {
                let bad = || format!("passive_ports {text:?} is not a range like \"50000-50100\"");
                let (first, last) = text.split_once('-').ok_or_else(bad)?;
                let first: u16 = first.trim().parse().map_err(|_| bad())?;
                let last: u16 = last.trim().parse().map_err(|_| bad())?;
                if first == 0 || first > last {
                    return Err(bad());
                }
                Some((first, last))
            }
        };
        Ok(Self {
            range,
            next: AtomicU32::new(0),
            holders: Arc::default(),
        })
    }

    /// Binds a listener on `ip` for `client`: the next free port of the range, or an
    /// ephemeral one. Refused (with the reason) when every port of the range is taken, or
    /// the client holds its share of it already.
    pub fn bind(&self, ip: IpAddr, client: IpAddr) -> Result<(TcpListener, Hold), &'static str> {
        let Some((first, last)) = self.range else {
            let listener = bind(SocketAddr::new(ip, 0)).ok_or("No passive port available.")?;
            return Ok((listener, Hold { holders: None, client }));
        };
        let size = u32::from(last - first) + 1;
        let mut holders = self.holders.lock().unwrap_or_else(|e| e.into_inner());
        if holders.get(&client).copied().unwrap_or(0) >= (size as usize / 4).max(1) {
            return Err("Too many passive ports held by your address.");
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let listener = (0..size)
            .find_map(|i| {
                let port = first + ((start + i) % size) as u16;
                bind(SocketAddr::new(ip, port))
            })
            .ok_or("No passive port available.")?;
        *holders.entry(client).or_default() += 1;
        drop(holders);
        let holders = Some(self.holders.clone());
        Ok((listener, Hold { holders, client }))
    }
}

fn bind(addr: SocketAddr) -> Option<TcpListener> {
    let listener = std::net::TcpListener::bind(addr).ok()?;
    listener.set_nonblocking(true).ok()?;
    TcpListener::from_std(listener).ok()
}

/// A passive listener waiting for its data connection. Its port is free again once the
/// connection came, [`ACCEPT_TIMEOUT`] passed, or this is closed or dropped.
pub struct DataPort {
    connection: oneshot::Receiver<TcpStream>,
    close: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl DataPort {
    /// Accepts on `listener`, on a task of its own, the data connection from `peer`'s address;
    /// `hold` ends with the listener.
    pub fn open(listener: TcpListener, hold: Hold, peer: IpAddr) -> Self {
        let (accepted, connection) = oneshot::channel();
        let close = CancellationToken::new();
        let closed = close.clone();
        let task = tokio::spawn(async move {
            // Dropped last, once the listener is closed.
            let _hold = hold;
            tokio::select! {
                () = closed.cancelled() => {}
                stream = accept(listener, peer) => {
                    if let Some(stream) = stream {
                        let _ = accepted.send(stream);
                    }
                }
            }
        });
        Self {
            connection,
            close,
            task: Some(task),
        }
    }

    /// The data connection, or `None` if it did not come in time.
    pub async fn connection(mut self) -> Option<TcpStream> {
        (&mut self.connection).await.ok()
    }

    /// Closes the listener and returns once its port is free (a drop frees it a moment later).
    pub async fn close(mut self) {
        self.close.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for DataPort {
    fn drop(&mut self) {
        self.close.cancel();
    }
}

/// Accepts the data connection from `peer`'s address, ignoring (closing) any other, within
/// [`ACCEPT_TIMEOUT`].
async fn accept(listener: TcpListener, peer: IpAddr) -> Option<TcpStream> {
    let accept = async {
        loop {
            match listener.accept().await {
                Ok((stream, from)) if from.ip() == peer => return stream,
                // Not logged above debug: anyone can connect to the port, as often as they like.
                Ok((_, from)) => {
                    tracing::debug!(%from, expected = %peer, "data connection from another address refused")
                }
                // Out of descriptors: retry shortly rather than spin.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    };
    let stream = tokio::time::timeout(ACCEPT_TIMEOUT, accept).await.ok()?;
    let _ = stream.set_nodelay(true);
    Some(stream)
}

/// The `h1,h2,h3,h4,p1,p2` of a 227 reply.
pub fn pasv_address(ip: std::net::Ipv4Addr, port: u16) -> String {
    let [a, b, c, d] = ip.octets();
    format!("{a},{b},{c},{d},{},{}", port >> 8, port & 0xff)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_and_refuse_nonsense() {
        assert!(PortRange::parse(Some("50000-50100")).is_ok());
        assert!(PortRange::parse(Some("7-7")).is_ok());
        for bad in ["50100-50000", "0-10", "x-y", "50000", "1-70000"] {
            assert!(PortRange::parse(Some(bad)).is_err(), "{bad}");
        }
        assert_eq!(pasv_address([127, 0, 0, 1].into(), 50_001), "127,0,0,1,195,81");
    }

    #[tokio::test]
    async fn an_exhausted_range_gives_no_listener() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let range = PortRange::parse(Some(&format!("{port}-{port}"))).unwrap();
        let (ip, client) = ([127, 0, 0, 1].into(), [127, 0, 0, 1].into());
        assert_eq!(range.bind(ip, client).err(), Some("No passive port available."));
        drop(taken);
        assert!(range.bind(ip, client).is_ok());
    }

    /// Eight consecutive ports free now, below the ephemeral range.
    fn free_ports() -> u16 {
        (20_000..30_000)
            .step_by(8)
            .find(|&first| (first..first + 8).all(|p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok()))
            .expect("eight free ports")
    }

    #[tokio::test]
    async fn a_client_holds_at_most_a_quarter_of_the_range_until_its_ports_close() {
        let first = free_ports();
        let range = PortRange::parse(Some(&format!("{first}-{}", first + 7))).unwrap();
        let ip: IpAddr = [127, 0, 0, 1].into();
        let (greedy, other): (IpAddr, IpAddr) = ([127, 0, 0, 2].into(), [127, 0, 0, 3].into());
        let held = [range.bind(ip, greedy).unwrap(), range.bind(ip, greedy).unwrap()];
        let refused = range.bind(ip, greedy).err();
        assert_eq!(refused, Some("Too many passive ports held by your address."));
        assert!(range.bind(ip, other).is_ok(), "another client still gets one");
        let [(listener, hold), _] = held;
        let port = DataPort::open(listener, hold, greedy);
        port.close().await;
        assert!(range.bind(ip, greedy).is_ok(), "a closed port is the client's again");
    }
}
