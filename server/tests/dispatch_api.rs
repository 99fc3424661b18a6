//! The dispatch API of the library: a replaced route function, calls between instances and
//! their errors, and lookups by name and type from the host handle.

use std::sync::Arc;

use bytes::BytesMut;
use serde_json::{Value, json};
use supersocket::filter::LineFilter;
use supersocket::{HostBuilder, InstanceContext, OpError, Service, Session};

mod common;

/// Answers calls with its instance's name and the request.
struct Named;

impl Service for Named {
    type Filter = LineFilter;

    fn filter(&self, max: usize) -> LineFilter {
        LineFilter::new(max)
    }

    async fn received(&self, session: &mut Session<'_>, _line: BytesMut) {
        session.reply(b"named\r\n");
    }

    async fn call(&self, instance: &InstanceContext, request: Value) -> Result<Value, String> {
        if request["fail"] == true {
            return Err("asked to fail".into());
        }
        Ok(json!({ "from": instance.name(), "echo": request }))
    }
}

const CONFIG: &str = r#"
shutdown_timeout = "100ms"
[[servers]]
name = "n"
type = "named"
replicas = 3

[[servers]]
name = "plain"
type = "echo"
listeners = [{ ip = "Loopback", port = 0 }]
"#;

#[tokio::test]
async fn a_replaced_route_and_calls_between_instances() {
    // Keys that parse as numbers go to that index; anything else is refused.
    let builder = HostBuilder::new()
        .server_type("named", |_: &_| Ok::<_, String>(Named))
        .route("named", |key: &str, running: &[Arc<supersocket::Instance>]| {
            key.parse().ok().filter(|&i| i < running.len())
        });
    let host = common::start_host(builder, CONFIG).await;
    let handle = host.handle();

    let names: Vec<String> = handle.running("named").iter().map(|i| i.name().to_owned()).collect();
    assert_eq!(names, ["n-1", "n-2", "n-3"]);
    let route = handle.route("named", "2").expect("index 2 exists");
    assert_eq!((route.instance.name(), route.index, route.of), ("n-3", 2, 3));
    assert!(
        handle.route("named", "7").is_none(),
        "the route refuses out-of-range keys"
    );
    assert!(handle.route("named", "x").is_none());
    // Other types keep crc32.
    assert_eq!(handle.route("echo", "abc").unwrap().instance.name(), "plain");

    let answer = route.instance.call(json!({ "ask": 1 })).await.unwrap();
    assert_eq!(answer, json!({ "from": "n-3", "echo": { "ask": 1 } }));
    let failed = route.instance.call(json!({ "fail": true })).await.unwrap_err();
    assert_eq!(failed, OpError::Refused("asked to fail".into()));
    let plain = handle.instance("plain").unwrap();
    assert!(
        matches!(plain.call(json!({})).await, Err(OpError::Refused(_))),
        "echo takes no calls"
    );

    // From outside any instance, through the host: a broadcast reaches a real client.
    let mut client = tokio::net::TcpStream::connect(("127.0.0.1", common::port(&host, "plain")))
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while plain.info().sessions == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the client's session did not register"
        );
        tokio::task::yield_now().await;
    }
    assert_eq!(plain.broadcast(bytes::Bytes::from_static(b"to all")).await, Ok(1));
    let mut got = [0u8; 6];
    tokio::io::AsyncReadExt::read_exact(&mut client, &mut got)
        .await
        .unwrap();
    assert_eq!(&got, b"to all");

    // A stopped instance takes no calls and leaves the running set; the route follows.
    let n2 = handle.instance("n-2").unwrap();
    n2.stop(std::time::Duration::from_millis(100)).await;
    assert_eq!(n2.call(json!({})).await, Err(OpError::NotRunning));
    let names: Vec<String> = handle.running("named").iter().map(|i| i.name().to_owned()).collect();
    assert_eq!(names, ["n-1", "n-3"]);
    assert_eq!(handle.route("named", "1").unwrap().instance.name(), "n-3");
    host.shutdown().await;
}
