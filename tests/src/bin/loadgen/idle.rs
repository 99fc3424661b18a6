//! Idle connections: hold many that have talked (or not) and gone quiet, measure the server's
//! resident memory per connection, check that every one still answers, then measure what the
//! server still holds after they all left.

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

/// The state code of an established connection in /proc/net/tcp.
const ESTABLISHED: &str = "01";

/// The connections `pid` holds on local `port` (the server's side of its sessions), counting
/// only those in `state` if given: the kernel's socket tables, matched by inode with the
/// process's descriptors, so that sessions of earlier runs still closing are told apart.
fn sessions_held(pid: u32, port: u16, state: Option<&str>) -> Result<usize, String> {
    let mut inodes = std::collections::HashSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(st), Some(inode)) = (fields.get(1), fields.get(3), fields.get(9)) else {
                continue;
            };
            let local_port = local.rsplit(':').next().and_then(|p| u16::from_str_radix(p, 16).ok());
            let listening = *st == "0A";
            if local_port == Some(port) && !listening && state.is_none_or(|s| s == *st) {
                inodes.insert(inode.to_string());
            }
        }
    }
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_err(|e| format!("process {pid}: {e}"))?;
    Ok(fds
        .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .filter_map(|target| {
            let target = target.to_string_lossy().into_owned();
            Some(target.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
        })
        .filter(|inode| inodes.contains(inode))
        .count())
}

/// Polls [`sessions_held`] until `done` says so (`Err` with the last count after
/// [`IO_TIMEOUT`]).
async fn wait_for_sessions(
    pid: u32,
    port: u16,
    state: Option<&str>,
    done: impl Fn(usize) -> bool,
) -> Result<(), usize> {
    let deadline = tokio::time::Instant::now() + IO_TIMEOUT;
    loop {
        let held = sessions_held(pid, port, state).unwrap_or(0);
        if done(held) {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            return Err(held);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What [`hold`] does.
pub struct Plan {
    /// Connections to hold.
    pub connections: usize,
    /// They come from 127.0.0.1 .. 127.0.0.`sources`.
    pub sources: u8,
    /// Bytes each sends and reads back before it goes quiet.
    pub talk: usize,
    /// How long they stay quiet before the measure, and how long after they left.
    pub quiet: Duration,
}

/// Opens the plan's connections to `port`, lets each talk and go quiet, measures `pid`'s RSS
/// before and while they are held, sends one byte on each and expects it back, closes them all
/// and measures the RSS `quiet` after the server has let them go.
pub async fn hold(port: u16, plan: &Plan, pid: u32) -> Result<String, String> {
    let connections = plan.connections;
    let server = SocketAddr::from(([127, 0, 0, 1], port));
    // Sessions of earlier runs first close, so that they are not measured.
    wait_for_sessions(pid, port, None, |held| held == 0)
        .await
        .map_err(|held| format!("the server still holds {held} earlier connections"))?;
    let before = rss_kib(pid)?;
    let mut held = Vec::with_capacity(connections);
    let words: Vec<u8> = (0..plan.talk).map(|i| b'a' + (i % 26) as u8).collect();
    let mut back = vec![0u8; plan.talk];
    for i in 0..connections {
        let source = Ipv4Addr::new(127, 0, 0, 1 + (i % usize::from(plan.sources.max(1))) as u8);
        let socket = TcpSocket::new_v4().map_err(|e| e.to_string())?;
        socket
            .bind(SocketAddr::from((source, 0)))
            .map_err(|e| format!("bind {source}: {e}"))?;
        let mut stream = tokio::time::timeout(IO_TIMEOUT, socket.connect(server))
            .await
            .map_err(|_| format!("connection {i} timed out"))?
            .map_err(|e| format!("connection {i} from {source}: {e}"))?;
        if plan.talk > 0 {
            stream
                .write_all(&words)
                .await
                .map_err(|e| format!("connection {i}: {e}"))?;
            tokio::time::timeout(IO_TIMEOUT, stream.read_exact(&mut back))
                .await
                .map_err(|_| format!("connection {i}: no echo in time"))?
                .map_err(|e| format!("connection {i}: {e}"))?;
            if back != words {
                return Err(format!("connection {i}: the echo differs"));
            }
        }
        held.push(stream);
    }
    // Measure once the server has accepted them all and they have been quiet a while.
    wait_for_sessions(pid, port, Some(ESTABLISHED), |held| held >= connections)
        .await
        .map_err(|held| format!("the server accepted {held} of {connections} connections"))?;
    tokio::time::sleep(plan.quiet).await;
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
    drop(held);
    wait_for_sessions(pid, port, None, |held| held == 0)
        .await
        .map_err(|held| format!("the server still holds {held} connections after they closed"))?;
    tokio::time::sleep(plan.quiet).await;
    let after = rss_kib(pid)?;
    let growth = during.saturating_sub(before);
    let per_session = (growth * 1024) as f64 / connections as f64;
    let left_percent = if growth == 0 {
        0.0
    } else {
        after.saturating_sub(before) as f64 * 100.0 / growth as f64
    };
    let talk = plan.talk;
    Ok(format!(
        r#"{{"mode":"idle","connections":{connections},"sources":{},"talk":{talk},"rss_before_kib":{before},"rss_held_kib":{during},"rss_after_kib":{after},"bytes_per_session":{per_session:.0},"left_percent":{left_percent:.1},"alive":{alive}}}"#,
        plan.sources
    ))
}
