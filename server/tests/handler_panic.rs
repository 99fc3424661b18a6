//! A panic inside a handler closes that session with `application_error`; the instance keeps
//! serving its other sessions and new ones.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use supersocket::filter::LineFilter;
use supersocket::{CloseReason, HostBuilder, Service, Session};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

mod common;

/// Echoes lines; panics on `BOOM`; records every close reason.
struct Fragile {
    closed: Arc<Mutex<Vec<CloseReason>>>,
}

impl Service for Fragile {
    type Filter = LineFilter;

    fn filter(&self, max: usize) -> LineFilter {
        LineFilter::new(max)
    }

    async fn received(&self, session: &mut Session<'_>, line: BytesMut) {
        assert!(&line[..] != b"BOOM", "handler bug triggered by the peer");
        session.reply(&line);
        session.reply(b"\r\n");
    }

    async fn closed(&self, _session: &mut Session<'_>, reason: CloseReason) {
        self.closed.lock().unwrap().push(reason);
    }
}

async fn line(reader: &mut BufReader<TcpStream>, request: &str) -> String {
    reader
        .get_mut()
        .write_all(format!("{request}\r\n").as_bytes())
        .await
        .unwrap();
    let mut reply = String::new();
    tokio::time::timeout(Duration::from_secs(5), reader.read_line(&mut reply))
        .await
        .unwrap()
        .unwrap();
    reply
}

#[tokio::test]
async fn a_panicking_handler_closes_only_its_session() {
    let closed = Arc::new(Mutex::new(Vec::new()));
    let recorder = closed.clone();
    let builder = HostBuilder::new().server_type("fragile", move |_: &_| {
        Ok::<_, String>(Fragile {
            closed: recorder.clone(),
        })
    });
    let config = r#"
        shutdown_timeout = "200ms"
        [[servers]]
        name = "F"
        type = "fragile"
        listeners = [{ ip = "Loopback", port = 0 }]
    "#;
    let host = common::start_host(builder, config).await;
    let port = common::port(&host, "F");
    let mut calm = BufReader::new(TcpStream::connect(("127.0.0.1", port)).await.unwrap());
    assert_eq!(line(&mut calm, "hello").await, "hello\r\n");

    let mut victim = BufReader::new(TcpStream::connect(("127.0.0.1", port)).await.unwrap());
    assert_eq!(
        line(&mut victim, "BOOM").await,
        "",
        "the panicking session is closed without a reply"
    );

    assert_eq!(line(&mut calm, "still there").await, "still there\r\n");
    let mut fresh = BufReader::new(TcpStream::connect(("127.0.0.1", port)).await.unwrap());
    assert_eq!(line(&mut fresh, "new").await, "new\r\n");
    assert_eq!(*closed.lock().unwrap(), [CloseReason::ApplicationError]);
    assert_eq!(host.instance("F").unwrap().info().sessions, 2);
    host.shutdown().await;
    let reasons = closed.lock().unwrap().clone();
    assert_eq!(reasons[1..], [CloseReason::ServerShutdown, CloseReason::ServerShutdown]);
}
