//! Sessions cannot be injected into: session ids are unguessable, `DISPATCH` reaches only
//! `command` instances and those its config lists, and never an FTP control connection; a
//! refused target answers like a missing session. In the host and with every instance in an
//! agent.

use supersocket_tests::HostProcess;
use supersocket_tests::net::{IO_TIMEOUT, LineClient, connect, echo_roundtrip};

const CONFIG: &str = r#"
[[servers]]
name = "Cmd"
type = "command"
listeners = [{ ip = "Loopback", port = 0 }]
options = { dispatch_to = ["Listed", "Ftp"] }

[[servers]]
name = "Other"
type = "command"
listeners = [{ ip = "Loopback", port = 0 }]

[[servers]]
name = "Echo"
type = "echo"
listeners = [{ ip = "Loopback", port = 0 }]

[[servers]]
name = "Listed"
type = "echo"
listeners = [{ ip = "Loopback", port = 0 }]

[[servers]]
name = "Ftp"
type = "ftp"
listeners = [{ ip = "Loopback", port = 0 }]
options = { root = "." }
"#;

/// The id of the only session of `server`, from the API, once the host has taken it.
async fn only_session(host: &HostProcess, server: &str) -> String {
    let deadline = std::time::Instant::now() + IO_TIMEOUT;
    loop {
        let (status, sessions) = host.get(&format!("/api/v1/servers/{server}/sessions")).await;
        assert_eq!(status, 200, "{sessions}");
        match sessions.as_array().map(Vec::len) {
            Some(1) => return sessions[0]["id"].as_str().unwrap().to_owned(),
            Some(0) if std::time::Instant::now() < deadline => continue,
            _ => panic!("{server}: {sessions}"),
        }
    }
}

async fn no_injection(config: &str) {
    let host = HostProcess::start(config);
    let mut cmd = LineClient::connect(host.port("Cmd", 0).await).await;

    // Ids: distinct, and nothing like a counter.
    let mut ids = vec![u64::from_str_radix(&cmd.request("WHOAMI").await, 16).unwrap()];
    let mut others = Vec::new();
    for _ in 0..20 {
        let mut other = LineClient::connect(host.port("Other", 0).await).await;
        ids.push(u64::from_str_radix(&other.request("WHOAMI").await, 16).unwrap());
        others.push(other);
    }
    let mut sorted = ids.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), ids.len(), "{ids:x?}");
    assert!(
        sorted.windows(2).all(|w| w[1] - w[0] > 1 << 32),
        "ids close together: {sorted:x?}"
    );

    // Another command instance: reached.
    let other_id = format!("{:x}", ids[1]);
    assert_eq!(cmd.request(&format!("DISPATCH Other {other_id} hello")).await, "OK");
    assert_eq!(others[0].recv().await, "hello");

    // An echo instance not listed: refused, as a missing session is; nothing arrives.
    let mut echo = connect(host.port("Echo", 0).await).await;
    let echo_id = only_session(&host, "Echo").await;
    assert_eq!(
        cmd.request(&format!("DISPATCH Echo {echo_id} forged")).await,
        format!("ERR no session {echo_id}")
    );
    assert_eq!(
        cmd.request("DISPATCH Echo 123abc forged").await,
        "ERR no session 123abc",
        "a missing session answers the same"
    );
    assert_eq!(
        echo_roundtrip(&mut echo, b"mine\n").await,
        b"mine\n",
        "nothing injected"
    );

    // Listed: reached.
    let mut listed = connect(host.port("Listed", 0).await).await;
    let listed_id = only_session(&host, "Listed").await;
    assert_eq!(cmd.request(&format!("DISPATCH Listed {listed_id} note")).await, "OK");
    let mut line = [0u8; 6];
    tokio::io::AsyncReadExt::read_exact(&mut listed, &mut line)
        .await
        .unwrap();
    assert_eq!(&line, b"note\r\n");

    // FTP refuses every writer, listed or not: no forged reply reaches the client.
    let mut ftp = LineClient::connect(host.port("Ftp", 0).await).await;
    assert!(ftp.recv().await.starts_with("220"));
    let ftp_id = only_session(&host, "Ftp").await;
    assert_eq!(
        cmd.request(&format!("DISPATCH Ftp {ftp_id} 230 User logged in")).await,
        format!("ERR no session {ftp_id}")
    );
    assert!(
        ftp.request("NOOP").await.starts_with("200"),
        "the next line is the server's own"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_cannot_be_injected_in_the_host() {
    no_injection(CONFIG).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_cannot_be_injected_with_every_instance_in_an_agent() {
    no_injection(&format!("isolation = \"process\"\n{CONFIG}")).await;
}
