//! Echo and command traffic: each connection pipelines requests and checks every reply as it
//! comes — an echo must send back exactly the bytes it got, `PING` answers `PONG`, `ADD a b`
//! the sum, `ECHO text` the text.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::time::MissedTickBehavior;

use super::ledger::{PathReport, Trouble};
use super::rng::Rng;
use super::world::{Connections, End, Phase, Reconnect, World};

/// A request's place in a pipeline.
struct Pending {
    seq: u64,
    sent_at: Instant,
    /// Echo: the offset in the stream its last byte has. Command: unused.
    end: u64,
    /// Command: the request and the reply it must get.
    request: String,
    reply: String,
}

/// What a traffic connection sends.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    /// Bytes, to an `echo` instance.
    Echo,
    /// `PING`, `ADD` and `ECHO` lines, to a `command` instance.
    Command,
}

impl Kind {
    /// Its name in examples.
    fn name(self) -> &'static str {
        match self {
            Kind::Echo => "echo",
            Kind::Command => "command",
        }
    }

    /// What its examples call what it sends.
    fn requests(self) -> &'static str {
        match self {
            Kind::Echo => "messages",
            Kind::Command => "requests",
        }
    }
}

/// One traffic connection's settings.
pub struct Load {
    pub kind: Kind,
    pub server: String,
    /// Requests in flight.
    pub window: usize,
    /// Time between sends.
    pub period: Duration,
    pub rng: Rng,
}

/// Echo or command traffic, as `load.kind` says, on one connection slot of an instance, until
/// the run ends.
pub async fn client(world: &World, mut load: Load) -> PathReport {
    let mut report = PathReport::default();
    let server = load.server.clone();
    let mut connections = Reconnect::new(&server);
    while let Some(stream) = connections.next(world).await {
        let end = match load.kind {
            Kind::Echo => echo_connection(world, stream, &mut load, &mut report).await,
            Kind::Command => command_connection(world, stream, &mut load, &mut report).await,
        };
        if !connections.ended(world, end) {
            break;
        }
    }
    count_connections(&mut report, connections.counts);
    report
}

pub fn count_connections(report: &mut PathReport, counts: Connections) {
    report.tally.connections += counts.opened;
    report.tally.connect_failures += counts.failed;
    report.tally.closed_by_host += counts.closed_by_host;
}

fn ticker(period: Duration) -> tokio::time::Interval {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    tick
}

/// How a connection ends at a tick, if it does: the run is finishing, or the requests in flight
/// have waited longer than the reply timeout since the last progress (a stall, with an example).
fn ends_at_tick(
    world: &World,
    load: &Load,
    pending: &VecDeque<Pending>,
    last_progress: Instant,
    report: &mut PathReport,
) -> Option<End> {
    if world.phase() == Phase::Finish {
        return Some(End::Finish);
    }
    if pending.is_empty() || last_progress.elapsed() <= world.reply_timeout {
        return None;
    }
    let since = pending.front().map_or(last_progress, |p| p.sent_at).max(last_progress);
    report.examples.add("stalled", || {
        format!(
            "{} on {}: {} {} unanswered from {:.2}s for {:?}; {}",
            load.kind.name(),
            world.describe(&load.server),
            pending.len(),
            load.kind.requests(),
            world.secs(since),
            world.reply_timeout,
            world.faults_before(since)
        )
    });
    Some(End::Dropped)
}

/// Settles the requests still pending when a connection ends: a host that closed it refused
/// them; one that did not answer in time stalled them. A connection the host closed without
/// ever answering is unserved.
fn settle(world: &World, end: End, served: bool, what: &str, pending: &mut VecDeque<Pending>, report: &mut PathReport) {
    let n = pending.len() as u64;
    match end {
        End::Closed => {
            report.tally.refused += n;
            if n > 0 {
                report.reasons_n("closed before the reply", n);
            }
            if !served && let Some(first) = pending.front() {
                unserved(world, what, first.sent_at, report);
            }
        }
        End::Dropped | End::Finish => report.tally.stalled += n,
    }
    world.end(pending.len());
    pending.clear();
}

/// Counts a connection the host closed without answering anything sent on it.
pub fn unserved(world: &World, what: &str, sent_at: Instant, report: &mut PathReport) {
    report.count(Trouble::UnservedConnection, || {
        format!(
            "{what}: closed by the host without an answer to what was sent at {:.2}s; {}",
            world.secs(sent_at),
            world.faults_before(sent_at)
        )
    });
}

fn delivered(world: &World, p: &Pending, report: &mut PathReport) {
    report.tally.acked += 1;
    report.tally.delivered += 1;
    if p.sent_at.elapsed() > world.slow {
        report.tally.slow += 1;
    }
    world.end(1);
}

async fn echo_connection(world: &World, stream: TcpStream, load: &mut Load, report: &mut PathReport) -> End {
    let label = world.label();
    let (mut reader, mut writer) = stream.into_split();
    let mut expected: VecDeque<u8> = VecDeque::new();
    let mut pending: VecDeque<Pending> = VecDeque::new();
    let (mut written, mut received, mut seq) = (0u64, 0u64, 0u64);
    let mut last_progress = Instant::now();
    let mut tick = ticker(load.period);
    let mut buf = vec![0u8; 16 * 1024];
    let mut served = false;
    let end = loop {
        tokio::select! {
            read = reader.read(&mut buf) => {
                let n = match read {
                    Ok(0) | Err(_) => break End::Closed,
                    Ok(n) => n,
                };
                last_progress = Instant::now();
                served = true;
                let mismatch = buf[..n].iter().enumerate().find_map(|(i, &got)| match expected.pop_front() {
                    Some(want) if want == got => None,
                    want => Some((i, want, got)),
                });
                if let Some((i, want, got)) = mismatch {
                    let at = received + i as u64;
                    let message = pending.front().map_or(u64::MAX, |p| p.seq);
                    report.count(Trouble::Wrong, || {
                        format!(
                            "echo on {}: connection e{label}, message {message}, byte {at} of the stream is {got:#04x}, expected {}; {}",
                            world.describe(&load.server),
                            want.map_or("nothing".to_owned(), |w| format!("{w:#04x}")),
                            world.faults_before(Instant::now())
                        )
                    });
                    pending.pop_front();
                    world.end(1);
                    break End::Dropped;
                }
                received += n as u64;
                while pending.front().is_some_and(|p| p.end <= received) {
                    if let Some(p) = pending.pop_front() {
                        delivered(world, &p, report);
                    }
                }
            }
            _ = tick.tick() => {
                if let Some(end) = ends_at_tick(world, load, &pending, last_progress, report) {
                    break end;
                }
                if world.running() && pending.len() < load.window {
                    let size = 16 + load.rng.below(2048) as usize;
                    let mut message = format!("e{label}:{seq}:").into_bytes();
                    message.extend((0..size).map(|i| ((seq as usize * 7 + i) % 251) as u8));
                    if pending.is_empty() {
                        last_progress = Instant::now();
                    }
                    written += message.len() as u64;
                    expected.extend(&message);
                    pending.push_back(Pending { seq, sent_at: Instant::now(), end: written, request: String::new(), reply: String::new() });
                    seq += 1;
                    report.tally.sent += 1;
                    world.begin(1);
                    if !write(world, &mut writer, &message).await {
                        break End::Closed;
                    }
                }
            }
        }
    };
    let what = format!("echo on {} (connection e{label})", world.describe(&load.server));
    settle(world, end, served, &what, &mut pending, report);
    end
}

async fn write(world: &World, writer: &mut tokio::net::tcp::OwnedWriteHalf, bytes: &[u8]) -> bool {
    matches!(
        tokio::time::timeout(world.reply_timeout, writer.write_all(bytes)).await,
        Ok(Ok(()))
    )
}

async fn command_connection(world: &World, stream: TcpStream, load: &mut Load, report: &mut PathReport) -> End {
    let label = world.label();
    let (reader, mut writer) = stream.into_split();
    let mut lines = BufReader::new(reader).lines();
    let mut pending: VecDeque<Pending> = VecDeque::new();
    let mut seq = 0u64;
    let mut last_progress = Instant::now();
    let mut tick = ticker(load.period);
    let mut served = false;
    let end = loop {
        tokio::select! {
            line = lines.next_line() => {
                let line = match line {
                    Ok(Some(line)) => line,
                    _ => break End::Closed,
                };
                last_progress = Instant::now();
                served = true;
                match pending.pop_front() {
                    Some(p) if p.reply == line => delivered(world, &p, report),
                    Some(p) => {
                        world.end(1);
                        report.tally.acked += 1;
                        report.count(Trouble::Wrong, || format!(
                            "command on {}: connection c{label} sent {:?}, got {line:?} instead of {:?}; {}",
                            world.describe(&load.server), p.request, p.reply, world.faults_before(Instant::now())));
                    }
                    None => {
                        report.count(Trouble::Wrong, || format!(
                            "command on {}: connection c{label} got {line:?} with nothing asked; {}",
                            world.describe(&load.server), world.faults_before(Instant::now())));
                    }
                }
            }
            _ = tick.tick() => {
                if let Some(end) = ends_at_tick(world, load, &pending, last_progress, report) {
                    break end;
                }
                if world.running() && pending.len() < load.window {
                    let (request, reply) = match load.rng.below(3) {
                        0 => ("PING".to_owned(), "PONG".to_owned()),
                        1 => {
                            let a = load.rng.below(2_000_000) as i64 - 1_000_000;
                            let b = load.rng.below(2_000_000) as i64 - 1_000_000;
                            (format!("ADD {a} {b}"), (a + b).to_string())
                        }
                        _ => (format!("ECHO c{label}:{seq}"), format!("c{label}:{seq}")),
                    };
                    if pending.is_empty() {
                        last_progress = Instant::now();
                    }
                    let bytes = format!("{request}\r\n");
                    pending.push_back(Pending { seq, sent_at: Instant::now(), end: 0, request, reply });
                    seq += 1;
                    report.tally.sent += 1;
                    world.begin(1);
                    if !write(world, &mut writer, bytes.as_bytes()).await {
                        break End::Closed;
                    }
                }
            }
        }
    };
    let what = format!("command on {} (connection c{label})", world.describe(&load.server));
    settle(world, end, served, &what, &mut pending, report);
    end
}
