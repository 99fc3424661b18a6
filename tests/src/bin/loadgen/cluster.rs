//! Instances reaching each other: DISPATCH across instances against ECHO inside one, and the
//! chat cluster's fan-out against BROADCAST inside one instance.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::common::{IO_TIMEOUT, Outcome, connect, measure};

/// Sends `request` with `window` in flight until `stop`, adding every reply line to
/// `answered`; an `ERR` reply fails.
async fn pipeline(
    stream: TcpStream,
    request: Vec<u8>,
    window: usize,
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicU64>,
) -> Result<(), String> {
    let (reader, mut writer) = stream.into_split();
    let mut reader = BufReader::new(reader);
    let mut line = String::new();
    writer
        .write_all(&request.repeat(window))
        .await
        .map_err(|e| e.to_string())?;
    let mut in_flight = window;
    while in_flight > 0 {
        line.clear();
        match tokio::time::timeout(IO_TIMEOUT, reader.read_line(&mut line)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return Err("a reply did not arrive".to_owned()),
        }
        if line.starts_with("ERR") {
            return Err(format!("the host answered {line:?}"));
        }
        answered.fetch_add(1, Ordering::Relaxed);
        if stop.load(Ordering::Relaxed) {
            in_flight -= 1;
        } else {
            writer.write_all(&request).await.map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}

/// Adds every line arriving on `stream` to `count`, until `stop` and a tenth of a second
/// without lines (so the lines its senders still had in flight arrive before it hangs up).
async fn count_lines(stream: TcpStream, count: Arc<AtomicU64>, stop: Arc<AtomicBool>) -> Result<(), String> {
    let mut lines = BufReader::new(stream).lines();
    loop {
        match tokio::time::timeout(Duration::from_millis(100), lines.next_line()).await {
            Ok(Ok(Some(_))) => {
                count.fetch_add(1, Ordering::Relaxed);
            }
            Ok(_) => return Err("the host closed a receiver".to_owned()),
            Err(_) if stop.load(Ordering::Relaxed) => return Ok(()),
            Err(_) => {}
        }
    }
}

pub async fn dispatch(
    from: u16,
    to: (&str, u16),
    pairs: usize,
    window: usize,
    size: usize,
    direct: bool,
    duration: Duration,
) -> Result<String, String> {
    let stop = Arc::new(AtomicBool::new(false));
    let delivered = Arc::new(AtomicU64::new(0));
    let acknowledged = Arc::new(AtomicU64::new(0));
    let text = "x".repeat(size);
    let mut tasks = Vec::new();
    for _ in 0..pairs {
        let mut receiver = BufReader::new(connect(to.1).await?);
        receiver
            .get_mut()
            .write_all(b"WHOAMI\r\n")
            .await
            .map_err(|e| e.to_string())?;
        let mut id = String::new();
        receiver.read_line(&mut id).await.map_err(|e| e.to_string())?;
        let receiver = receiver.into_inner();
        if direct {
            // Baseline: the receiving instance answers ECHO itself; its replies are the lines.
            let request = format!("ECHO {text}\r\n").into_bytes();
            tasks.push(tokio::spawn(pipeline(
                receiver,
                request,
                window,
                stop.clone(),
                delivered.clone(),
            )));
        } else {
            let request = format!("DISPATCH {} {} {text}\r\n", to.0, id.trim()).into_bytes();
            tasks.push(tokio::spawn(count_lines(receiver, delivered.clone(), stop.clone())));
            let sender = connect(from).await?;
            tasks.push(tokio::spawn(pipeline(
                sender,
                request,
                window,
                stop.clone(),
                acknowledged.clone(),
            )));
        }
    }
    let Outcome { total, seconds, errors } = measure(duration, stop, delivered, tasks).await;
    let mode = if direct {
        "echo-in-instance"
    } else {
        "dispatch-across-instances"
    };
    Ok(format!(
        r#"{{"mode":"{mode}","pairs":{pairs},"window":{window},"size":{size},"lines":{total},"seconds":{seconds:.2},"lines_per_sec":{:.0},"errors":{errors}}}"#,
        total as f64 / seconds
    ))
}

pub async fn chat(gate: u16, users: usize, rooms: usize, window: usize, duration: Duration) -> Result<String, String> {
    let stop = Arc::new(AtomicBool::new(false));
    let delivered = Arc::new(AtomicU64::new(0));
    let mut gate = BufReader::new(connect(gate).await?);
    let mut streams = Vec::new();
    for i in 0..users {
        let uid = format!("bench-{i}");
        gate.get_mut()
            .write_all(format!("QUERY {uid}\r\n").as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut addr = String::new();
        gate.read_line(&mut addr).await.map_err(|e| e.to_string())?;
        let addr: SocketAddr = addr.trim().parse().map_err(|_| format!("gate answered {addr:?}"))?;
        if !addr.ip().is_loopback() {
            return Err(format!("the gate sent us off loopback: {addr}"));
        }
        let mut user = BufReader::new(connect(addr.port()).await?);
        user.get_mut()
            .write_all(format!("ENTER {uid} room-{}\r\n", i % rooms).as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut ok = String::new();
        user.read_line(&mut ok).await.map_err(|e| e.to_string())?;
        if !ok.starts_with("OK") {
            return Err(format!("ENTER answered {ok:?}"));
        }
        streams.push(user.into_inner());
    }
    let tasks = streams
        .into_iter()
        .enumerate()
        .map(|(i, stream)| {
            let fan = FanOut {
                request: format!("SAY hello from bench-{i}\r\n"),
                own: format!(" bench-{i}"),
                window,
            };
            tokio::spawn(fan.run(stream, delivered.clone(), stop.clone()))
        })
        .collect();
    let Outcome { total, seconds, errors } = measure(duration, stop, delivered, tasks).await;
    Ok(format!(
        r#"{{"mode":"chat-cluster","users":{users},"rooms":{rooms},"window":{window},"deliveries":{total},"seconds":{seconds:.2},"deliveries_per_sec":{:.0},"errors":{errors}}}"#,
        total as f64 / seconds
    ))
}

/// One member of a fan-out: keeps `window` of its own requests in flight, sending one more
/// whenever one of its own messages comes back, and counts every message it receives.
struct FanOut {
    /// The request line that sends one message to the whole group.
    request: String,
    /// How this member's own messages end.
    own: String,
    window: usize,
}

impl FanOut {
    async fn run(self, stream: TcpStream, delivered: Arc<AtomicU64>, stop: Arc<AtomicBool>) -> Result<(), String> {
        let (reader, mut writer) = stream.into_split();
        let mut lines = BufReader::new(reader).lines();
        writer
            .write_all(self.request.repeat(self.window).as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut in_flight = self.window;
        while in_flight > 0 {
            let line = tokio::time::timeout(IO_TIMEOUT, lines.next_line())
                .await
                .map_err(|_| "a message did not arrive".to_owned())?
                .map_err(|e| e.to_string())?
                .ok_or("the server closed")?;
            if line.starts_with("ERR") {
                return Err(format!("the host answered {line:?}"));
            }
            // BROADCAST's own answer to the sender is not a delivery.
            if line.starts_with("OK ") {
                continue;
            }
            delivered.fetch_add(1, Ordering::Relaxed);
            if line.ends_with(&self.own) {
                if stop.load(Ordering::Relaxed) {
                    in_flight -= 1;
                } else {
                    writer
                        .write_all(self.request.as_bytes())
                        .await
                        .map_err(|e| e.to_string())?;
                }
            }
        }
        Ok(())
    }
}

/// Baseline of the chat fan-out: `users / rooms` sessions of one `command` instance, each
/// BROADCASTing to all of them — a room's fan-out per message, without crossing instances.
pub async fn broadcast_baseline(
    port: u16,
    users: usize,
    rooms: usize,
    window: usize,
    duration: Duration,
) -> Result<String, String> {
    let members = (users / rooms).max(1);
    let stop = Arc::new(AtomicBool::new(false));
    let delivered = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for i in 0..members {
        let stream = connect(port).await?;
        let fan = FanOut {
            request: format!("BROADCAST hello from-{i}\r\n"),
            own: format!(" from-{i}"),
            window,
        };
        tasks.push(tokio::spawn(fan.run(stream, delivered.clone(), stop.clone())));
    }
    let Outcome { total, seconds, errors } = measure(duration, stop, delivered, tasks).await;
    Ok(format!(
        r#"{{"mode":"broadcast-in-instance","members":{members},"window":{window},"deliveries":{total},"seconds":{seconds:.2},"deliveries_per_sec":{:.0},"errors":{errors}}}"#,
        total as f64 / seconds
    ))
}
