//! Life-cycle timings: from `start` to serving, and how long a stop takes with many sessions.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::IO_TIMEOUT;

/// Stops and starts `server` `cycles` times; each time measures from the start request to the
/// first echo answered on its port.
pub async fn start_time(admin: &str, server: &str, cycles: usize) -> Result<String, String> {
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
        until_it_echoes(server, port, began).await?;
        samples.push(began.elapsed());
    }
    let (p50, max) = p50_and_max(samples);
    Ok(format!(
        r#"{{"mode":"start-time","server":"{server}","cycles":{cycles},"p50_ms":{p50:.2},"max_ms":{max:.2}}}"#
    ))
}

/// Connects to an echo server on `port` until one connection echoes, for at most
/// [`IO_TIMEOUT`] since `began`.
pub async fn until_it_echoes(server: &str, port: u16, began: Instant) -> Result<(), String> {
    loop {
        if let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)).await {
            let mut back = [0u8; 4];
            if stream.write_all(b"ping").await.is_ok() && stream.read_exact(&mut back).await.is_ok() {
                return Ok(());
            }
        }
        if began.elapsed() > IO_TIMEOUT {
            return Err(format!("{server} did not serve within {IO_TIMEOUT:?}"));
        }
    }
}

/// The median and the longest of `samples`, in milliseconds.
pub fn p50_and_max(mut samples: Vec<Duration>) -> (f64, f64) {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    (ms(samples[samples.len() / 2]), ms(samples[samples.len() - 1]))
}

/// Opens `sessions` connections to `server` that close as soon as the server closes them, then
/// times `POST .../stop` (listeners closed, every session drained).
pub async fn stop_time(admin: &str, server: &str, sessions: usize) -> Result<String, String> {
    let port = crate::common::port(admin, server).await?;
    let mut clients = Vec::with_capacity(sessions);
    for _ in 0..sessions {
        let mut stream = crate::common::connect(port).await?;
        // A well-behaved client: it closes its side when the server does.
        clients.push(tokio::spawn(async move {
            let mut buf = [0u8; 64];
            while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {}
        }));
    }
    let info = |admin: &str| format!("{admin}/api/v1/servers/{server}");
    let http = reqwest::Client::new();
    // Every session registered before the stop.
    loop {
        let current: serde_json::Value = http
            .get(info(admin))
            .send()
            .await
            .map_err(|e| e.to_string())?
            .json()
            .await
            .map_err(|e| e.to_string())?;
        if current["sessions"].as_u64() == Some(sessions as u64) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let began = Instant::now();
    http.post(format!("{}/stop?timeout=10s", info(admin)))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let took = began.elapsed();
    for client in clients {
        let _ = client.await;
    }
    http.post(format!("{}/start", info(admin)))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    Ok(format!(
        r#"{{"mode":"stop-time","server":"{server}","sessions":{sessions},"stop_ms":{:.1}}}"#,
        took.as_secs_f64() * 1000.0
    ))
}
