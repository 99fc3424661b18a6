//! A server type keeps state per session without a map of its own: `Session::state`.

use std::sync::{Arc, Mutex};

use bytes::BytesMut;
use supersocket::filter::LineFilter;
use supersocket::{CloseReason, HostBuilder, Service, Session};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

mod common;

/// Numbers each session's lines; remembers each session's count when it closes.
struct Numbered {
    closed_with: Arc<Mutex<Vec<u32>>>,
}

impl Service for Numbered {
    type Filter = LineFilter;

    fn filter(&self, max: usize) -> LineFilter {
        LineFilter::new(max)
    }

    async fn received(&self, session: &mut Session<'_>, _line: BytesMut) {
        let count = session.state::<u32>();
        *count += 1;
        let count = *count;
        session.reply_line(count);
    }

    async fn closed(&self, session: &mut Session<'_>, _reason: CloseReason) {
        let count = *session.state::<u32>();
        self.closed_with.lock().unwrap().push(count);
    }
}

#[tokio::test]
async fn each_session_keeps_its_own_state_until_it_closes() {
    let closed_with = Arc::new(Mutex::new(Vec::new()));
    let seen = closed_with.clone();
    let builder = HostBuilder::new().server_type("numbered", move |_: &_| {
        Ok::<_, String>(Numbered {
            closed_with: seen.clone(),
        })
    });
    let host = common::start_host(
        builder,
        r#"
        shutdown_timeout = "100ms"
        [[servers]]
        name = "N"
        type = "numbered"
        listeners = [{ ip = "Loopback", port = 0 }]
        "#,
    )
    .await;
    let port = common::port(&host, "N");
    let mut a = BufReader::new(tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap());
    let mut b = BufReader::new(tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap());
    let mut line = String::new();
    for expected in ["1", "2", "3"] {
        a.get_mut().write_all(b"x\n").await.unwrap();
        line.clear();
        a.read_line(&mut line).await.unwrap();
        assert_eq!(line.trim_end(), expected, "a counts its own lines");
    }
    b.get_mut().write_all(b"y\n").await.unwrap();
    line.clear();
    b.read_line(&mut line).await.unwrap();
    assert_eq!(line.trim_end(), "1", "b has a state of its own");
    drop(a);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while closed_with.lock().unwrap().is_empty() {
        assert!(std::time::Instant::now() < deadline, "the closed handler ran");
        tokio::task::yield_now().await;
    }
    assert_eq!(*closed_with.lock().unwrap(), [3], "the closed handler sees the state");
    host.shutdown().await;
}
