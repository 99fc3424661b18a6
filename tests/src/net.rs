//! Plain TCP clients for the tests: line requests with replies, raw echo, and closing checks.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Bound on any single wait of a test client.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Connects to `127.0.0.1:port`.
pub async fn connect(port: u16) -> TcpStream {
    connect_addr(SocketAddr::from(([127, 0, 0, 1], port))).await
}

/// Connects to `addr`.
pub async fn connect_addr(addr: SocketAddr) -> TcpStream {
    tokio::time::timeout(IO_TIMEOUT, TcpStream::connect(addr))
        .await
        .unwrap_or_else(|_| panic!("connect to {addr} timed out"))
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"))
}

/// A line-protocol client over any stream.
pub struct LineClient<S> {
    stream: BufReader<S>,
}

impl LineClient<TcpStream> {
    /// Connects to a line server on `127.0.0.1:port`.
    pub async fn connect(port: u16) -> Self {
        Self::new(connect(port).await)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> LineClient<S> {
    /// Wraps a connected stream.
    pub fn new(stream: S) -> Self {
        Self {
            stream: BufReader::new(stream),
        }
    }

    /// Sends `line` and `\r\n`.
    pub async fn send(&mut self, line: &str) {
        let stream = self.stream.get_mut();
        stream
            .write_all(format!("{line}\r\n").as_bytes())
            .await
            .expect("send line");
        stream.flush().await.expect("flush line");
    }

    /// Reads one reply line; panics on timeout or end of stream. The `\r\n` is removed.
    pub async fn recv(&mut self) -> String {
        self.try_recv()
            .await
            .expect("the server closed the connection instead of replying")
    }

    /// Reads one reply line, or `None` at end of stream.
    pub async fn try_recv(&mut self) -> Option<String> {
        let mut line = String::new();
        let read = tokio::time::timeout(IO_TIMEOUT, self.stream.read_line(&mut line))
            .await
            .expect("reply timed out");
        match read {
            Ok(0) | Err(_) => None,
            Ok(_) => {
                assert!(line.ends_with("\r\n"), "reply {line:?} does not end with \\r\\n");
                line.truncate(line.len() - 2);
                Some(line)
            }
        }
    }

    /// Sends a request line and reads the reply line.
    pub async fn request(&mut self, line: &str) -> String {
        self.send(line).await;
        self.recv().await
    }

    /// The underlying stream.
    pub fn stream(&mut self) -> &mut S {
        self.stream.get_mut()
    }

    /// True if the server closes the connection within `timeout` (after any pending bytes).
    pub async fn closes_within(&mut self, timeout: Duration) -> bool {
        closes_within(&mut self.stream, timeout).await
    }
}

/// Sends `data` and reads back exactly as many bytes.
pub async fn echo_roundtrip<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S, data: &[u8]) -> Vec<u8> {
    stream.write_all(data).await.expect("send echo data");
    stream.flush().await.expect("flush echo data");
    let mut back = vec![0u8; data.len()];
    tokio::time::timeout(IO_TIMEOUT, stream.read_exact(&mut back))
        .await
        .expect("echo timed out")
        .expect("read echo");
    back
}

/// True if the peer closes (end of stream or reset) within `timeout`; bytes read are dropped.
pub async fn closes_within<S: AsyncRead + Unpin>(stream: &mut S, timeout: Duration) -> bool {
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}
