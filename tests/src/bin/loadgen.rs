//! `loadgen`: drives a running SuperSocket host on loopback and reports throughput.
//!
//! Every mode is bounded in time and in connections, talks only to 127.0.0.1, and prints one
//! JSON line of results on stdout.
//!
//! - `echo`: closed-loop echo with C connections, each keeping W messages of S bytes in
//!   flight; messages/s, MB/s and round-trip latency percentiles (HDR histogram).
//! - `start-time`: stops and starts an echo instance N times and measures from the start
//!   request to the first echo answered.
//! - `dispatch`: senders on one `command` instance `DISPATCH` lines to receivers on another;
//!   counts lines delivered per second. `--direct` measures the baseline instead: the same
//!   lines as `ECHO` requests answered by the receiving instance itself.
//! - `chat`: users enter rooms of a pomelo chat cluster through its gate and `SAY` lines;
//!   counts `MSG` deliveries per second (the fan-out rate). `--broadcast` measures the baseline
//!   instead: the same fan-out as `BROADCAST` inside one `command` instance.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

#[derive(Parser)]
#[command(name = "loadgen", about = "Load generator for a SuperSocket host on loopback")]
struct Cli {
    /// Admin API of the host, to find the servers' ports.
    #[arg(long)]
    admin: String,
    /// How long to measure.
    #[arg(long, default_value = "5s", value_parser = supersocket_proto::parse_duration)]
    duration: Duration,
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// Closed-loop echo: each connection keeps `window` messages of `size` bytes in flight.
    Echo {
        /// The echo server.
        #[arg(long)]
        server: String,
        /// Connections.
        #[arg(long, default_value_t = 100)]
        connections: usize,
        /// Bytes per message.
        #[arg(long, default_value_t = 64)]
        size: usize,
        /// Messages each connection keeps in flight.
        #[arg(long, default_value_t = 1)]
        window: usize,
    },
    /// Time from `POST .../start` to the first echo answered, over stop/start cycles.
    StartTime {
        /// The echo server to cycle.
        #[arg(long)]
        server: String,
        /// Cycles.
        #[arg(long, default_value_t = 20)]
        cycles: usize,
    },
    /// Lines from sessions of one instance to sessions of another.
    Dispatch {
        /// The `command` instance senders connect to.
        #[arg(long, default_value = "ServerA")]
        from: String,
        /// The `command` instance receivers connect to.
        #[arg(long, default_value = "ServerB")]
        to: String,
        /// Sender/receiver pairs.
        #[arg(long, default_value_t = 8)]
        pairs: usize,
        /// Requests each sender keeps in flight.
        #[arg(long, default_value_t = 32)]
        window: usize,
        /// Bytes of text per line.
        #[arg(long, default_value_t = 32)]
        size: usize,
        /// Baseline: ECHO on the receiving instance instead of DISPATCH across instances.
        #[arg(long)]
        direct: bool,
    },
    /// Room messages through a pomelo chat cluster.
    Chat {
        /// The gate instance.
        #[arg(long, default_value = "gate-server-1")]
        gate: String,
        /// Users.
        #[arg(long, default_value_t = 60)]
        users: usize,
        /// Rooms.
        #[arg(long, default_value_t = 6)]
        rooms: usize,
        /// Messages each user keeps in flight.
        #[arg(long, default_value_t = 4)]
        window: usize,
        /// Baseline: BROADCAST in this `command` instance to groups of the same size.
        #[arg(long)]
        broadcast: Option<String>,
    },
}

/// Bound on connecting and on any one wait.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

#[tokio::main]
async fn main() -> Result<(), String> {
    let cli = Cli::parse();
    if !cli.admin.starts_with("http://127.") {
        return Err(format!("loadgen drives loopback hosts only, not {}", cli.admin));
    }
    let result = match cli.mode {
        Mode::Echo {
            server,
            connections,
            size,
            window,
        } => {
            echo(
                port(&cli.admin, &server).await?,
                connections,
                size,
                window,
                cli.duration,
            )
            .await?
        }
        Mode::StartTime { server, cycles } => start_time(&cli.admin, &server, cycles).await?,
        Mode::Dispatch {
            from,
            to,
            pairs,
            window,
            size,
            direct,
        } => {
            let from = port(&cli.admin, &from).await?;
            let to_port = port(&cli.admin, &to).await?;
            dispatch(from, (&to, to_port), pairs, window, size, direct, cli.duration).await?
        }
        Mode::Chat {
            gate,
            users,
            rooms,
            window,
            broadcast,
        } => match broadcast {
            Some(server) => {
                broadcast_baseline(port(&cli.admin, &server).await?, users, rooms, window, cli.duration).await?
            }
            None => chat(port(&cli.admin, &gate).await?, users, rooms, window, cli.duration).await?,
        },
    };
    println!("{result}");
    Ok(())
}

/// The first listener port of a server, from the admin API.
async fn port(admin: &str, server: &str) -> Result<u16, String> {
    let url = format!("{admin}/api/v1/servers/{server}");
    let info: serde_json::Value = reqwest::get(&url)
        .await
        .map_err(|e| format!("{url}: {e}"))?
        .json()
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    info["listeners"][0]["port"]
        .as_u64()
        .map(|p| p as u16)
        .ok_or_else(|| format!("{server} has no listener: {info}"))
}

async fn connect(port: u16) -> Result<TcpStream, String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let stream = tokio::time::timeout(IO_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| format!("connect to {addr} timed out"))?
        .map_err(|e| format!("connect to {addr}: {e}"))?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    Ok(stream)
}

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

/// Adds every line arriving on `stream` to `count`, until `stop`.
async fn count_lines(stream: TcpStream, count: Arc<AtomicU64>, stop: Arc<AtomicBool>) -> Result<(), String> {
    let mut lines = BufReader::new(stream).lines();
    while !stop.load(Ordering::Relaxed) {
        match tokio::time::timeout(Duration::from_millis(100), lines.next_line()).await {
            Ok(Ok(Some(_))) => {
                count.fetch_add(1, Ordering::Relaxed);
            }
            Ok(_) => return Err("the host closed a receiver".to_owned()),
            Err(_) => continue,
        }
    }
    Ok(())
}

type Task = tokio::task::JoinHandle<Result<(), String>>;

/// Lets the load run for `duration` once everything is connected, then stops the tasks and
/// waits for them; returns what `counted` gained meanwhile and the seconds that took.
async fn measure(
    duration: Duration,
    stop: Arc<AtomicBool>,
    counted: Arc<AtomicU64>,
    tasks: Vec<Task>,
) -> Result<(u64, f64), String> {
    let began = Instant::now();
    let start = counted.load(Ordering::Relaxed);
    tokio::time::sleep(duration).await;
    let total = counted.load(Ordering::Relaxed) - start;
    let seconds = began.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.map_err(|e| e.to_string())??;
    }
    Ok((total, seconds))
}

async fn dispatch(
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
    let (total, seconds) = measure(duration, stop, delivered, tasks).await?;
    let mode = if direct {
        "echo-in-instance"
    } else {
        "dispatch-across-instances"
    };
    Ok(format!(
        r#"{{"mode":"{mode}","pairs":{pairs},"window":{window},"size":{size},"lines":{total},"seconds":{seconds:.2},"lines_per_sec":{:.0}}}"#,
        total as f64 / seconds
    ))
}

/// Closed-loop echo over `connections`, each with `window` messages of `size` bytes in
/// flight; reports messages/s, MB/s and latency percentiles of the round trips.
async fn echo(port: u16, connections: usize, size: usize, window: usize, duration: Duration) -> Result<String, String> {
    use tokio::io::AsyncReadExt;
    let stop = Arc::new(AtomicBool::new(false));
    let echoed = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    let histograms = Arc::new(std::sync::Mutex::new(new_histogram()));
    for c in 0..connections {
        let stream = connect(port).await?;
        let (stop, echoed, histograms) = (stop.clone(), echoed.clone(), histograms.clone());
        tasks.push(tokio::spawn(async move {
            let (mut reader, mut writer) = stream.into_split();
            let message: Vec<u8> = (0..size).map(|i| (i + c) as u8).collect();
            let mut back = vec![0u8; size];
            let mut histogram = new_histogram();
            let mut sent_at = std::collections::VecDeque::with_capacity(window);
            for _ in 0..window {
                sent_at.push_back(Instant::now());
                writer.write_all(&message).await.map_err(|e| e.to_string())?;
            }
            while let Some(sent) = sent_at.pop_front() {
                tokio::time::timeout(IO_TIMEOUT, reader.read_exact(&mut back))
                    .await
                    .map_err(|_| "an echo did not come back".to_owned())?
                    .map_err(|e| e.to_string())?;
                if back != message {
                    return Err("the echo differs from the message".into());
                }
                let _ = histogram.record(sent.elapsed().as_micros() as u64);
                echoed.fetch_add(1, Ordering::Relaxed);
                if !stop.load(Ordering::Relaxed) {
                    sent_at.push_back(Instant::now());
                    writer.write_all(&message).await.map_err(|e| e.to_string())?;
                }
            }
            histograms.lock().unwrap().add(&histogram).map_err(|e| e.to_string())?;
            Ok(())
        }));
    }
    let (total, seconds) = measure(duration, stop, echoed, tasks).await?;
    let h = histograms.lock().unwrap();
    let rate = total as f64 / seconds;
    Ok(format!(
        r#"{{"mode":"echo","connections":{connections},"size":{size},"window":{window},"messages":{total},"seconds":{seconds:.2},"messages_per_sec":{rate:.0},"mb_per_sec":{:.1},"p50_us":{},"p99_us":{},"p999_us":{}}}"#,
        rate * size as f64 / 1e6,
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.99),
        h.value_at_quantile(0.999)
    ))
}

fn new_histogram() -> hdrhistogram::Histogram<u64> {
    hdrhistogram::Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

/// Stops and starts `server` `cycles` times; each time measures from the start request to the
/// first echo answered on its port.
async fn start_time(admin: &str, server: &str, cycles: usize) -> Result<String, String> {
    use tokio::io::AsyncReadExt;
    let http = reqwest::Client::new();
    let mut samples = Vec::with_capacity(cycles);
    let post = |action: &str| http.post(format!("{admin}/api/v1/servers/{server}/{action}")).send();
    for _ in 0..cycles {
        post("stop?timeout=1s").await.map_err(|e| e.to_string())?;
        let began = Instant::now();
        let started: serde_json::Value = post("start")
            .await
            .map_err(|e| e.to_string())?
            .json()
            .await
            .map_err(|e| e.to_string())?;
        let port = started["listeners"][0]["port"]
            .as_u64()
            .ok_or_else(|| format!("{server} did not start: {started}"))? as u16;
        loop {
            if let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)).await {
                let mut back = [0u8; 4];
                if stream.write_all(b"ping").await.is_ok() && stream.read_exact(&mut back).await.is_ok() {
                    break;
                }
            }
            if began.elapsed() > IO_TIMEOUT {
                return Err(format!("{server} did not serve within {IO_TIMEOUT:?}"));
            }
        }
        samples.push(began.elapsed());
    }
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    Ok(format!(
        r#"{{"mode":"start-time","server":"{server}","cycles":{cycles},"p50_ms":{:.2},"max_ms":{:.2}}}"#,
        ms(samples[samples.len() / 2]),
        ms(samples[samples.len() - 1])
    ))
}

async fn chat(gate: u16, users: usize, rooms: usize, window: usize, duration: Duration) -> Result<String, String> {
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
    let (total, seconds) = measure(duration, stop, delivered, tasks).await?;
    Ok(format!(
        r#"{{"mode":"chat-cluster","users":{users},"rooms":{rooms},"window":{window},"deliveries":{total},"seconds":{seconds:.2},"deliveries_per_sec":{:.0}}}"#,
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
async fn broadcast_baseline(
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
    let (total, seconds) = measure(duration, stop, delivered, tasks).await?;
    Ok(format!(
        r#"{{"mode":"broadcast-in-instance","members":{members},"window":{window},"deliveries":{total},"seconds":{seconds:.2},"deliveries_per_sec":{:.0}}}"#,
        total as f64 / seconds
    ))
}
