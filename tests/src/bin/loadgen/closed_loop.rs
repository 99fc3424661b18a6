//! The loop every request/response mode uses. Per connection, a writer sends the same request
//! over and over — at most `window` unanswered, or, when streaming, as many as the socket takes
//! — and a reader takes whatever arrives, checks it byte for byte against the expected replies
//! and records each reply's round trip when its last byte is back. A connection that fails is
//! counted as an error and the others go on.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::Semaphore;

use crate::common::{IO_TIMEOUT, Task, connect, measure, new_histogram};

/// Bytes the reader asks of the socket at once.
const READ_BUFFER: usize = 64 * 1024;

/// A load of one request repeated on many connections.
pub struct Load {
    /// Bytes of one request.
    pub request: Vec<u8>,
    /// Bytes of the reply each request must get.
    pub reply: Vec<u8>,
    /// Connections.
    pub connections: usize,
    /// Requests each connection keeps in flight; `None` streams (only the socket pushes back).
    pub window: Option<usize>,
}

/// What the connections of a run share.
struct Shared {
    request: Vec<u8>,
    reply: Vec<u8>,
    window: Option<usize>,
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicU64>,
    histogram: Mutex<hdrhistogram::Histogram<u64>>,
}

impl Load {
    /// Runs the load on `port` for `duration`; reports requests/s, MB/s, latencies and errors.
    pub async fn run(self, mode: &str, port: u16, duration: Duration) -> Result<String, String> {
        let shared = Arc::new(Shared {
            request: self.request,
            reply: self.reply,
            window: self.window,
            stop: Arc::new(AtomicBool::new(false)),
            answered: Arc::new(AtomicU64::new(0)),
            histogram: Mutex::new(new_histogram()),
        });
        let mut tasks: Vec<Task> = Vec::new();
        let mut refused = Vec::new();
        for _ in 0..self.connections {
            match connect(port).await {
                Ok(stream) => tasks.push(tokio::spawn(drive(stream, shared.clone()))),
                Err(e) => refused.push(e),
            }
        }
        if tasks.is_empty() {
            return Err(refused.pop().unwrap_or_else(|| "no connections asked for".into()));
        }
        let outcome = measure(duration, shared.stop.clone(), shared.answered.clone(), tasks).await;
        let errors = outcome.errors + refused.len();
        let h = shared.histogram.lock().unwrap();
        let rate = outcome.total as f64 / outcome.seconds;
        let window = self.window.map_or("null".to_owned(), |w| w.to_string());
        Ok(format!(
            r#"{{"mode":"{mode}","connections":{},"size":{},"window":{window},"requests":{},"seconds":{:.2},"requests_per_sec":{rate:.0},"mb_per_sec":{:.1},"p50_us":{},"p99_us":{},"p999_us":{},"errors":{errors}}}"#,
            self.connections,
            shared.request.len(),
            outcome.total,
            outcome.seconds,
            rate * shared.reply.len() as f64 / 1e6,
            h.value_at_quantile(0.5),
            h.value_at_quantile(0.99),
            h.value_at_quantile(0.999)
        ))
    }
}

/// One connection: its writer and reader, until the run stops or one of them fails.
async fn drive(stream: TcpStream, shared: Arc<Shared>) -> Result<(), String> {
    let (reader, writer) = stream.into_split();
    let window = shared.window.map(Semaphore::new);
    let sent_at = Mutex::new(VecDeque::new());
    tokio::try_join!(
        write(writer, &shared, window.as_ref(), &sent_at),
        read(reader, &shared, window.as_ref(), &sent_at),
    )?;
    Ok(())
}

/// Sends the request whenever the window has room, until the run stops; then half-closes.
async fn write(
    mut writer: OwnedWriteHalf,
    shared: &Shared,
    window: Option<&Semaphore>,
    sent_at: &Mutex<VecDeque<Instant>>,
) -> Result<(), String> {
    while !shared.stop.load(Ordering::Relaxed) {
        if let Some(window) = window {
            match tokio::time::timeout(Duration::from_millis(100), window.acquire()).await {
                Ok(place) => place.map_err(|e| e.to_string())?.forget(),
                Err(_) => continue,
            }
        }
        sent_at.lock().unwrap().push_back(Instant::now());
        tokio::time::timeout(IO_TIMEOUT, writer.write_all(&shared.request))
            .await
            .map_err(|_| "a send stalled".to_owned())?
            .map_err(|e| format!("send: {e}"))?;
    }
    // The server answers what is in flight, then closes, which ends the reader.
    let _ = writer.shutdown().await;
    Ok(())
}

/// Reads replies as they come, checks them, records their round trips and frees their places.
async fn read(
    mut reader: OwnedReadHalf,
    shared: &Shared,
    window: Option<&Semaphore>,
    sent_at: &Mutex<VecDeque<Instant>>,
) -> Result<(), String> {
    let reply = &shared.reply[..];
    let mut buffer = vec![0u8; READ_BUFFER];
    let mut histogram = new_histogram();
    // How much of the current reply has arrived.
    let mut within = 0;
    loop {
        let n = tokio::time::timeout(IO_TIMEOUT, reader.read(&mut buffer))
            .await
            .map_err(|_| "a reply did not come back".to_owned())?
            .map_err(|e| format!("receive: {e}"))?;
        if n == 0 {
            let done = shared.stop.load(Ordering::Relaxed) && within == 0 && sent_at.lock().unwrap().is_empty();
            if done {
                break;
            }
            return Err("the server closed the connection".into());
        }
        let mut data = &buffer[..n];
        while !data.is_empty() {
            let expected = &reply[within..];
            let take = expected.len().min(data.len());
            if data[..take] != expected[..take] {
                return Err("a reply differs from what was expected".into());
            }
            data = &data[take..];
            within += take;
            if within == reply.len() {
                within = 0;
                let sent = sent_at.lock().unwrap().pop_front().ok_or("a reply nobody asked for")?;
                let _ = histogram.record(sent.elapsed().as_micros() as u64);
                shared.answered.fetch_add(1, Ordering::Relaxed);
                if let Some(window) = window {
                    window.add_permits(1);
                }
            }
        }
    }
    shared
        .histogram
        .lock()
        .unwrap()
        .add(&histogram)
        .map_err(|e| e.to_string())
}
