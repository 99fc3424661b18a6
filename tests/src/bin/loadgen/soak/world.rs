//! What every soak task shares: the admin API, the phase of the run, the log of faults, the
//! count of requests in flight, and reaching a server by name with a bounded back-off.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU8, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::net::TcpStream;

use crate::common;

/// Where the run is. Tasks look at it at least every [`CHECK`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Traffic flows and faults are injected.
    Run,
    /// No new message is sent; answers and deliveries still arrive and are recorded;
    /// connections stay open until the host closes them (its SIGTERM).
    Drain,
    /// Tasks hand in what they recorded.
    Finish,
}

/// How often a waiting task looks at the phase.
pub const CHECK: Duration = Duration::from_millis(100);

/// Most connections one run opens (every reconnect counts).
const CONNECTION_BUDGET: i64 = 50_000;

/// A fault the soak injected, for the report and to explain the losses that follow it.
#[derive(Debug, Clone)]
pub struct FaultEvent {
    pub at: Instant,
    pub kind: &'static str,
    /// The instance (or "host").
    pub target: String,
    pub detail: String,
}

pub struct World {
    pub admin: Admin,
    /// Time zero of the run; reports give times in seconds since.
    pub epoch: Instant,
    /// An answer not here after this long is a stall.
    pub reply_timeout: Duration,
    /// An answer later than this counts as slow.
    pub slow: Duration,
    /// Isolation level of each instance at the start, for the report.
    isolation: BTreeMap<String, String>,
    phase: AtomicU8,
    /// Requests sent whose outcome is not known yet; the drain waits for it to reach 0.
    in_flight: AtomicI64,
    /// Source of unique labels for connections (senders' and receivers' names in messages).
    labels: AtomicU32,
    connections_left: AtomicI64,
    faults: Mutex<Vec<FaultEvent>>,
}

impl World {
    pub fn new(admin: Admin, reply_timeout: Duration, isolation: BTreeMap<String, String>) -> Self {
        Self {
            admin,
            epoch: Instant::now(),
            reply_timeout,
            slow: Duration::from_secs(1),
            isolation,
            phase: AtomicU8::new(Phase::Run as u8),
            in_flight: AtomicI64::new(0),
            labels: AtomicU32::new(0),
            connections_left: AtomicI64::new(CONNECTION_BUDGET),
            faults: Mutex::new(Vec::new()),
        }
    }

    pub fn phase(&self) -> Phase {
        match self.phase.load(Ordering::SeqCst) {
            0 => Phase::Run,
            1 => Phase::Drain,
            _ => Phase::Finish,
        }
    }

    pub fn running(&self) -> bool {
        self.phase() == Phase::Run
    }

    pub fn set_phase(&self, phase: Phase) {
        self.phase.store(phase as u8, Ordering::SeqCst);
    }

    /// `n` more requests whose outcome is awaited.
    pub fn begin(&self, n: usize) {
        self.in_flight.fetch_add(n as i64, Ordering::SeqCst);
    }

    /// `n` requests got their outcome (or never will).
    pub fn end(&self, n: usize) {
        self.in_flight.fetch_sub(n as i64, Ordering::SeqCst);
    }

    pub fn in_flight(&self) -> i64 {
        self.in_flight.load(Ordering::SeqCst)
    }

    pub fn label(&self) -> u32 {
        self.labels.fetch_add(1, Ordering::Relaxed)
    }

    /// Seconds since the start of the run.
    pub fn secs(&self, at: Instant) -> f64 {
        at.saturating_duration_since(self.epoch).as_secs_f64()
    }

    /// `Name (isolation)`.
    pub fn describe(&self, name: &str) -> String {
        match self.isolation.get(name) {
            Some(level) => format!("{name} ({level})"),
            None => name.to_owned(),
        }
    }

    pub fn record_fault(&self, kind: &'static str, target: &str, detail: String) {
        let event = FaultEvent {
            at: Instant::now(),
            kind,
            target: target.to_owned(),
            detail,
        };
        eprintln!(
            "soak: {:7.2}s fault {kind} {}{}{}",
            self.secs(event.at),
            self.describe(target),
            if event.detail.is_empty() { "" } else { ": " },
            event.detail
        );
        self.faults.lock().unwrap_or_else(|e| e.into_inner()).push(event);
    }

    /// The faults of the few seconds before `at`, to explain what happened then.
    pub fn faults_before(&self, at: Instant) -> String {
        let faults = self.faults.lock().unwrap_or_else(|e| e.into_inner());
        let recent: Vec<String> = faults
            .iter()
            .filter(|f| f.at <= at && at.duration_since(f.at) < Duration::from_secs(5))
            .rev()
            .take(3)
            .map(|f| format!("{} {} at {:.2}s", f.kind, self.describe(&f.target), self.secs(f.at)))
            .collect();
        if recent.is_empty() {
            "no fault in the 5 s before".to_owned()
        } else {
            format!("after {}", recent.join(", "))
        }
    }

    /// Connects to the first listener of a running server, looked up in the admin API.
    pub async fn connect(&self, name: &str) -> Result<TcpStream, String> {
        let info = self.admin.get(&format!("/api/v1/servers/{name}")).await?;
        if info["state"] != "running" {
            return Err(format!("{name} is {}", info["state"]));
        }
        let port = info["listeners"][0]["port"]
            .as_u64()
            .ok_or_else(|| format!("{name} has no listener"))?;
        self.connect_addr(SocketAddr::from(([127, 0, 0, 1], port as u16))).await
    }

    /// Connects to a loopback address, within the run's connection budget.
    pub async fn connect_addr(&self, addr: SocketAddr) -> Result<TcpStream, String> {
        if !addr.ip().is_loopback() {
            return Err(format!("the soak stays on loopback, not {addr}"));
        }
        if self.connections_left.fetch_sub(1, Ordering::Relaxed) <= 0 {
            return Err(format!("the run's {CONNECTION_BUDGET} connections are used up"));
        }
        common::connect(addr.port()).await
    }
}

/// Waits between reconnects: 50 ms doubling to 1 s, back to 50 ms after a good connection.
pub struct Backoff {
    delay: Duration,
}

const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

impl Backoff {
    pub fn new() -> Self {
        Self { delay: BACKOFF_MIN }
    }

    pub fn reset(&mut self) {
        self.delay = BACKOFF_MIN;
    }

    /// Waits the current delay, or less if the run leaves [`Phase::Run`].
    pub async fn wait(&mut self, world: &World) {
        let until = Instant::now() + self.delay;
        while world.running() {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            tokio::time::sleep(left.min(CHECK)).await;
        }
        self.delay = (self.delay * 2).min(BACKOFF_MAX);
    }
}

/// The admin API of the host under test.
pub struct Admin {
    base: String,
    http: reqwest::Client,
}

impl Admin {
    pub fn new(base: &str) -> Result<Self, String> {
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(15))
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Self {
            base: base.trim_end_matches('/').to_owned(),
            http,
        })
    }

    /// `GET path`; a status other than 200 is an error.
    pub async fn get(&self, path: &str) -> Result<Value, String> {
        let (status, body) = self.send(self.http.get(format!("{}{path}", self.base))).await?;
        if status != 200 {
            return Err(format!("GET {path}: {status} {body}"));
        }
        Ok(body)
    }

    /// `POST path`: the status and the JSON body (null if there is none).
    pub async fn post(&self, path: &str) -> Result<(u16, Value), String> {
        self.send(self.http.post(format!("{}{path}", self.base))).await
    }

    /// `POST path` with a JSON body.
    pub async fn post_json(&self, path: &str, body: &Value) -> Result<(u16, Value), String> {
        self.send(self.http.post(format!("{}{path}", self.base)).json(body))
            .await
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Result<(u16, Value), String> {
        let response = request.send().await.map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        let text = response.text().await.map_err(|e| e.to_string())?;
        Ok((status, serde_json::from_str(&text).unwrap_or(Value::String(text))))
    }

    pub async fn servers(&self) -> Result<Vec<Value>, String> {
        match self.get("/api/v1/servers").await? {
            Value::Array(servers) => Ok(servers),
            other => Err(format!("GET /api/v1/servers answered {other}")),
        }
    }
}

/// How one connection of a traffic task ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The host closed it (or it failed).
    Closed,
    /// The client gave up on it: a stall, or bytes it could not make sense of.
    Dropped,
    /// The run is over.
    Finish,
}

/// What a [`Reconnect`] counted.
#[derive(Debug, Default, Clone, Copy)]
pub struct Connections {
    pub opened: u64,
    pub failed: u64,
    /// Closed by the host while traffic was running.
    pub closed_by_host: u64,
}

/// Connections to one server, again and again with a back-off, until the run leaves
/// [`Phase::Run`] (a connection open then stays open until the host closes it or the run
/// finishes):
///
/// ```ignore
/// let mut connections = Reconnect::new(server);
/// while let Some(stream) = connections.next(world).await {
///     let end = use_it(stream).await;
///     if !connections.ended(world, end) { break }
/// }
/// ```
pub struct Reconnect<'a> {
    server: &'a str,
    backoff: Backoff,
    pub counts: Connections,
    /// Wait before the next attempt (not before the first).
    pause: bool,
}

impl<'a> Reconnect<'a> {
    pub fn new(server: &'a str) -> Self {
        Self {
            server,
            backoff: Backoff::new(),
            counts: Connections::default(),
            pause: false,
        }
    }

    /// The next connection, or `None` once the run left [`Phase::Run`].
    pub async fn next(&mut self, world: &World) -> Option<TcpStream> {
        loop {
            if std::mem::replace(&mut self.pause, true) {
                self.backoff.wait(world).await;
            }
            if !world.running() {
                return None;
            }
            match world.connect(self.server).await {
                Ok(stream) => {
                    self.counts.opened += 1;
                    self.backoff.reset();
                    return Some(stream);
                }
                Err(_) => self.counts.failed += 1,
            }
        }
    }

    /// Counts how a connection ended; `false` once the run is over.
    pub fn ended(&mut self, world: &World, end: End) -> bool {
        match end {
            End::Finish => false,
            End::Closed if world.running() => {
                self.counts.closed_by_host += 1;
                true
            }
            _ => true,
        }
    }
}
