//! A data transfer, in a task of its own so that the control connection keeps answering (ABOR,
//! NOOP): accept the data connection, move the bytes through one bounded buffer, then tell the
//! client how it ended on the control connection. The task belongs to the instance: a stop
//! ends it and closes the data connection.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::passive::DataPort;
use super::reply;
use crate::context::{InstanceContext, SessionHandle, Traffic};

/// Bytes moved per read and write. A transfer holds two such buffers: its own, and the file's
/// read-ahead or write-behind.
const CHUNK: usize = 512 * 1024;

/// What moves over the data connection.
pub enum Payload {
    /// A listing made beforehand.
    Listing(Vec<u8>),
    /// A file to send (RETR).
    Download(std::fs::File),
    /// A file to fill (STOR, APPE).
    Upload(std::fs::File),
}

/// A transfer about to start.
pub struct Transfer {
    /// The passive port the client connects to.
    pub data: DataPort,
    /// What to move.
    pub payload: Payload,
    /// The control connection, for the final reply.
    pub control: SessionHandle,
    /// No byte moving for this long aborts the transfer.
    pub idle: Duration,
}

/// A transfer under way, as the control connection sees it. Dropping it aborts the transfer.
pub struct Running {
    abort: CancellationToken,
    /// Cancelled once the transfer's last reply is queued.
    ended: CancellationToken,
}

/// How a transfer failed.
enum Failure {
    /// The data connection broke or went quiet.
    Network,
    /// The file could not be read or written.
    Disk(std::io::Error),
}

impl Transfer {
    /// Starts the transfer on the instance's runtime.
    pub fn spawn(self, instance: &InstanceContext) -> Running {
        let abort = CancellationToken::new();
        let ended = CancellationToken::new();
        let finished = ended.clone();
        let traffic = instance.traffic();
        let cancelled = abort.clone();
        instance.spawn(async move {
            let control = self.control.clone();
            let ending = tokio::select! {
                () = cancelled.cancelled() => reply::line(426, "Connection closed; transfer aborted."),
                ending = self.run(&traffic) => ending,
            };
            // The control connection may be gone already; there is no one else to tell.
            let _ = control.send(ending).await;
            finished.cancel();
        });
        Running { abort, ended }
    }

    async fn run(self, traffic: &Traffic) -> bytes::Bytes {
        let Some(stream) = self.data.connection().await else {
            return reply::line(425, "Can't open data connection.");
        };
        let mut data = DataConnection {
            stream,
            control: &self.control,
            traffic,
            idle: self.idle,
        };
        let moved = match self.payload {
            Payload::Listing(listing) => data.send(&listing).await,
            Payload::Download(file) => download(file, &mut data).await,
            Payload::Upload(file) => upload(file, &mut data).await,
        };
        match moved {
            Ok(()) => {
                let _ = data.stream.shutdown().await;
                reply::line(226, "Transfer complete.")
            }
            Err(Failure::Network) => reply::line(426, "Connection closed; transfer aborted."),
            Err(Failure::Disk(e)) => reply::line(451, format_args!("Local error: {e}.")),
        }
    }
}

/// The data connection of a transfer: each read and write is bounded by the idle time, counted
/// in the instance's bytes, and keeps the quiet control connection from timing out.
struct DataConnection<'a> {
    stream: TcpStream,
    control: &'a SessionHandle,
    traffic: &'a Traffic,
    idle: Duration,
}

impl DataConnection<'_> {
    async fn send(&mut self, bytes: &[u8]) -> Result<(), Failure> {
        with_idle(self.idle, self.stream.write_all(bytes)).await?;
        self.traffic.count_out(bytes.len() as u64);
        self.control.touch();
        Ok(())
    }

    async fn receive(&mut self, buffer: &mut [u8]) -> Result<usize, Failure> {
        let n = with_idle(self.idle, self.stream.read(buffer)).await?;
        self.traffic.count_in(n as u64);
        self.control.touch();
        Ok(n)
    }
}

impl Running {
    /// Whether it has not ended yet (ending, it says so on the control connection).
    pub fn is_under_way(&self) -> bool {
        !self.ended.is_cancelled()
    }

    /// Aborts it and waits until its last reply is queued.
    pub async fn abort(self) {
        self.abort.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.ended.cancelled()).await;
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.abort.cancel();
    }
}

/// Network I/O bounded by the idle time.
async fn with_idle<T>(idle: Duration, io: impl Future<Output = std::io::Result<T>>) -> Result<T, Failure> {
    match tokio::time::timeout(idle, io).await {
        Ok(Ok(value)) => Ok(value),
        _ => Err(Failure::Network),
    }
}

/// A file for async use, buffering no more than one chunk.
fn async_file(file: std::fs::File) -> tokio::fs::File {
    let mut file = tokio::fs::File::from_std(file);
    file.set_max_buf_size(CHUNK);
    file
}

async fn download(file: std::fs::File, data: &mut DataConnection<'_>) -> Result<(), Failure> {
    let mut file = async_file(file);
    let mut buffer = vec![0u8; CHUNK];
    loop {
        let n = file.read(&mut buffer).await.map_err(Failure::Disk)?;
        if n == 0 {
            return Ok(());
        }
        data.send(&buffer[..n]).await?;
    }
}

async fn upload(file: std::fs::File, data: &mut DataConnection<'_>) -> Result<(), Failure> {
    let mut file = async_file(file);
    let mut buffer = vec![0u8; CHUNK];
    loop {
        let n = data.receive(&mut buffer).await?;
        if n == 0 {
            return file.flush().await.map_err(Failure::Disk);
        }
        file.write_all(&buffer[..n]).await.map_err(Failure::Disk)?;
    }
}
