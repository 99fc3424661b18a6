//! Idle connections: hold many, measure the server's resident memory per connection, then check
//! that every one still answers.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;

use crate::common::IO_TIMEOUT;

/// Resident memory of a process in KiB.
fn rss_kib(pid: u32) -> Result<u64, String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).map_err(|e| format!("process {pid}: {e}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| format!("no VmRSS for {pid}"))
}

/// Descriptors a process holds open.
fn open_fds(pid: u32) -> Result<usize, String> {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_err(|e| format!("process {pid}: {e}"))?;
    Ok(fds.count())
}

/// Opens `connections` to `port` from 127.0.0.1 .. 127.0.0.`sources`, measures `pid`'s RSS
/// before and while they are held, then sends one byte on each and expects it back.
pub async fn hold(port: u16, connections: usize, sources: u8, pid: u32) -> Result<String, String> {
    let server = SocketAddr::from(([127, 0, 0, 1], port));
    let before = rss_kib(pid)?;
    let fds_before = open_fds(pid)?;
    let mut held = Vec::with_capacity(connections);
    for i in 0..connections {
        let source = Ipv4Addr::new(127, 0, 0, 1 + (i % usize::from(sources.max(1))) as u8);
        let socket = TcpSocket::new_v4().map_err(|e| e.to_string())?;
        socket
            .bind(SocketAddr::from((source, 0)))
            .map_err(|e| format!("bind {source}: {e}"))?;
        let stream = tokio::time::timeout(IO_TIMEOUT, socket.connect(server))
            .await
            .map_err(|_| format!("connection {i} timed out"))?
            .map_err(|e| format!("connection {i} from {source}: {e}"))?;
        held.push(stream);
    }
    // Measure once the server has accepted them all: each is a descriptor it holds.
    let deadline = tokio::time::Instant::now() + IO_TIMEOUT;
    while open_fds(pid)? < fds_before + connections {
        if tokio::time::Instant::now() > deadline {
            return Err(format!(
                "the server accepted {} of {connections} connections",
                open_fds(pid)? - fds_before
            ));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let during = rss_kib(pid)?;
    let mut alive = 0;
    for stream in &mut held {
        let mut back = [0u8; 1];
        let echoed = stream.write_all(b"!").await.is_ok()
            && tokio::time::timeout(IO_TIMEOUT, stream.read_exact(&mut back))
                .await
                .is_ok_and(|r| r.is_ok());
        alive += usize::from(echoed && back == *b"!");
    }
    let per_session = (during.saturating_sub(before) * 1024) as f64 / connections as f64;
    Ok(format!(
        r#"{{"mode":"idle","connections":{connections},"sources":{sources},"rss_before_kib":{before},"rss_held_kib":{during},"bytes_per_session":{per_session:.0},"alive":{alive}}}"#
    ))
}
