//! What every mode shares: finding and reaching servers on loopback, running a load for a
//! while, and latency histograms.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

/// Bound on connecting and on any one wait.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// The first listener port of a server, from the admin API.
pub async fn port(admin: &str, server: &str) -> Result<u16, String> {
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

pub async fn connect(port: u16) -> Result<TcpStream, String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let stream = tokio::time::timeout(IO_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| format!("connect to {addr} timed out"))?
        .map_err(|e| format!("connect to {addr}: {e}"))?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    Ok(stream)
}

pub type Task = tokio::task::JoinHandle<Result<(), String>>;

/// Errors told on stderr; the rest are only counted.
const SHOWN_ERRORS: usize = 5;

/// What a measured run counted.
pub struct Outcome {
    /// What the counter gained while measuring.
    pub total: u64,
    /// How long the measurement took.
    pub seconds: f64,
    /// Tasks that failed (the first few said why on stderr).
    pub errors: usize,
}

/// Lets the load run for `duration` once everything is connected, then stops the tasks and
/// waits for them; counts what `counted` gained meanwhile and the tasks that failed.
pub async fn measure(duration: Duration, stop: Arc<AtomicBool>, counted: Arc<AtomicU64>, tasks: Vec<Task>) -> Outcome {
    let began = Instant::now();
    let start = counted.load(Ordering::Relaxed);
    tokio::time::sleep(duration).await;
    let total = counted.load(Ordering::Relaxed) - start;
    let seconds = began.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let mut errors = 0;
    for task in tasks {
        let result = task.await.unwrap_or_else(|e| Err(format!("a task panicked: {e}")));
        if let Err(e) = result {
            if errors < SHOWN_ERRORS {
                eprintln!("loadgen: {e}");
            }
            errors += 1;
        }
    }
    Outcome { total, seconds, errors }
}

pub fn new_histogram() -> hdrhistogram::Histogram<u64> {
    hdrhistogram::Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}
