//! The closed loop every request/response mode uses: per connection, a writer keeps `window`
//! requests in flight and a reader checks each reply and records its round trip.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Semaphore;

use crate::common::{IO_TIMEOUT, Task, connect, measure, new_histogram};

/// A closed-loop load.
pub struct Load {
    /// Bytes of one request.
    pub request: Vec<u8>,
    /// Bytes of the reply each request must get.
    pub reply: Vec<u8>,
    /// Connections.
    pub connections: usize,
    /// Requests each connection keeps in flight.
    pub window: usize,
}

impl Load {
    /// Runs the load on `port` for `duration`; reports requests/s, MB/s and latencies.
    pub async fn run(self, mode: &str, port: u16, duration: Duration) -> Result<String, String> {
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(AtomicU64::new(0));
        let histogram = Arc::new(Mutex::new(new_histogram()));
        let request = Arc::new(self.request);
        let reply = Arc::new(self.reply);
        let mut tasks: Vec<Task> = Vec::new();
        for _ in 0..self.connections {
            let (reader, writer) = connect(port).await?.into_split();
            let in_flight = Arc::new(Semaphore::new(self.window));
            let sent_at = Arc::new(Mutex::new(VecDeque::with_capacity(self.window)));
            tasks.push(tokio::spawn(write(
                writer,
                request.clone(),
                in_flight.clone(),
                sent_at.clone(),
                stop.clone(),
            )));
            let reading = Reader {
                reply: reply.clone(),
                in_flight,
                sent_at,
                answered: answered.clone(),
                histogram: histogram.clone(),
            };
            tasks.push(tokio::spawn(reading.run(reader, stop.clone())));
        }
        let (total, seconds) = measure(duration, stop, answered, tasks).await?;
        let h = histogram.lock().unwrap();
        let rate = total as f64 / seconds;
        Ok(format!(
            r#"{{"mode":"{mode}","connections":{},"size":{},"window":{},"requests":{total},"seconds":{seconds:.2},"requests_per_sec":{rate:.0},"mb_per_sec":{:.1},"p50_us":{},"p99_us":{},"p999_us":{}}}"#,
            self.connections,
            request.len(),
            self.window,
            rate * reply.len() as f64 / 1e6,
            h.value_at_quantile(0.5),
            h.value_at_quantile(0.99),
            h.value_at_quantile(0.999)
        ))
    }
}

/// Sends a request whenever one of the window's places is free, until `stop`.
async fn write(
    mut writer: tokio::net::tcp::OwnedWriteHalf,
    request: Arc<Vec<u8>>,
    in_flight: Arc<Semaphore>,
    sent_at: Arc<Mutex<VecDeque<Instant>>>,
    stop: Arc<AtomicBool>,
) -> Result<(), String> {
    while !stop.load(Ordering::Relaxed) {
        let Ok(place) = tokio::time::timeout(Duration::from_millis(100), in_flight.acquire()).await else {
            continue;
        };
        place.map_err(|e| e.to_string())?.forget();
        sent_at.lock().unwrap().push_back(Instant::now());
        writer.write_all(&request).await.map_err(|e| format!("send: {e}"))?;
    }
    // Half-close: the server answers what is in flight, then closes, which ends the reader.
    let _ = writer.shutdown().await;
    Ok(())
}

/// Reads replies, checks them, records their round trips and frees their places.
struct Reader {
    reply: Arc<Vec<u8>>,
    in_flight: Arc<Semaphore>,
    sent_at: Arc<Mutex<VecDeque<Instant>>>,
    answered: Arc<AtomicU64>,
    histogram: Arc<Mutex<hdrhistogram::Histogram<u64>>>,
}

impl Reader {
    async fn run(self, mut reader: tokio::net::tcp::OwnedReadHalf, stop: Arc<AtomicBool>) -> Result<(), String> {
        let mut got = vec![0u8; self.reply.len()];
        let mut histogram = new_histogram();
        loop {
            let read = tokio::time::timeout(IO_TIMEOUT, reader.read_exact(&mut got))
                .await
                .map_err(|_| "a reply did not come back".to_owned())?;
            let pending = self.sent_at.lock().unwrap().len();
            match read {
                // The writer has half-closed and every reply is in: the server closed.
                Err(_) if pending == 0 && stop.load(Ordering::Relaxed) => break,
                Err(e) => return Err(format!("receive: {e}")),
                Ok(_) => {}
            }
            if got != *self.reply {
                return Err("a reply differs from what was expected".into());
            }
            let sent = self
                .sent_at
                .lock()
                .unwrap()
                .pop_front()
                .ok_or("a reply nobody asked for")?;
            let _ = histogram.record(sent.elapsed().as_micros() as u64);
            self.answered.fetch_add(1, Ordering::Relaxed);
            self.in_flight.add_permits(1);
        }
        self.histogram
            .lock()
            .unwrap()
            .add(&histogram)
            .map_err(|e| e.to_string())
    }
}
