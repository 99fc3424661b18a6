//! The host core end to end: many instances of different types from one config, on real TCP
//! and TLS, their listeners and the first slice of the admin API.

use std::time::Duration;

use supersocket_tests::net::{LineClient, connect, connect_addr, echo_roundtrip};
use supersocket_tests::tls::{connect_trusting, fetch_certificate};
use supersocket_tests::{HostOptions, HostProcess, Scratch};

/// A self-signed certificate and key for localhost, as PEM files in `scratch`.
fn cert_files(scratch: &Scratch) -> (String, String) {
    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cert = scratch.write("cert.pem", made.cert.pem());
    let key = scratch.write("key.pem", made.signing_key.serialize_pem());
    (cert.display().to_string(), key.display().to_string())
}

#[tokio::test]
async fn four_instances_of_two_types_serve_tcp_and_tls_side_by_side() {
    let files = Scratch::new("certs");
    let (cert, key) = cert_files(&files);
    let config = format!(
        r#"
        [[servers]]
        name = "Echo"
        type = "echo"
        listeners = [{{ ip = "Loopback", port = 0 }}]

        [[servers]]
        name = "EchoTls"
        type = "echo"
        listeners = [{{ ip = "Loopback", port = 0 }}]
        tls = {{ self_signed = true }}

        [[servers]]
        name = "Cmd"
        type = "command"
        listeners = [{{ ip = "127.0.0.1", port = 0 }}]

        [[servers]]
        name = "CmdTls"
        type = "command"
        listeners = [{{ ip = "Loopback", port = 0 }}]
        tls = {{ cert = "{cert}", key = "{key}" }}
        "#
    );
    let host = HostProcess::start(&config);

    let mut echo = connect(host.port("Echo", 0).await).await;
    assert_eq!(
        echo_roundtrip(&mut echo, b"hello\x00\xffworld").await,
        b"hello\x00\xffworld"
    );

    let tls_port = host.port("EchoTls", 0).await;
    let self_signed = fetch_certificate(tls_port).await;
    let mut echo_tls = connect_trusting(tls_port, &self_signed).await;
    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    assert_eq!(echo_roundtrip(&mut echo_tls, &big).await, big);

    let mut cmd = LineClient::connect(host.port("Cmd", 0).await).await;
    assert_eq!(cmd.request("PING").await, "PONG");
    assert_eq!(cmd.request("add 1 2 39").await, "42");
    assert_eq!(cmd.request("MULT 6 7").await, "42");
    assert_eq!(cmd.request("ECHO  spaced  text ").await, " spaced  text ");
    assert_eq!(cmd.request("SERVER").await, "Cmd");
    assert_eq!(cmd.request("FROB x").await, "ERR unknown command FROB");
    assert_eq!(cmd.request("ADD 1 two").await, "ERR not a number: two");
    assert_eq!(cmd.request("MULT 9223372036854775807 2").await, "ERR overflow");
    let id = cmd.request("WHOAMI").await;
    assert!(!id.is_empty() && !id.contains(' '), "session id {id:?}");

    let cmd_tls_port = host.port("CmdTls", 0).await;
    let file_cert = fetch_certificate(cmd_tls_port).await;
    let mut cmd_tls = LineClient::new(connect_trusting(cmd_tls_port, &file_cert).await);
    assert_eq!(cmd_tls.request("ADD 2 3").await, "5");
    let other_id = cmd_tls.request("WHOAMI").await;
    assert_ne!(id, other_id, "session ids are unique across instances");
    cmd_tls.send("QUIT").await;
    assert!(
        cmd_tls.closes_within(Duration::from_secs(5)).await,
        "QUIT closes the session"
    );

    // The API reports every server with its bound listeners and counters.
    let (status, servers) = host.get("/api/v1/servers").await;
    assert_eq!(status, 200);
    let names: Vec<&str> = servers
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["Echo", "EchoTls", "Cmd", "CmdTls"], "config order");
    let cmd_info = host.server("Cmd").await;
    assert_eq!(cmd_info["type"], "command");
    assert_eq!(cmd_info["state"], "running");
    assert_eq!(cmd_info["isolation"], "none");
    assert_eq!(cmd_info["pid"], host.pid());
    assert_eq!(cmd_info["sessions"], 1);
    assert_eq!(cmd_info["total_packages"], 9, "nine requests were sent");
    assert!(cmd_info["bytes_in"].as_u64().unwrap() > 50);
    assert!(cmd_info["started_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(host.server("EchoTls").await["listeners"][0]["tls"], true);
    assert_eq!(host.server("Echo").await["listeners"][0]["tls"], false);
    // The last echo can reach the client a moment before the session counts it.
    let expected = big.len() as u64;
    host.wait_server("EchoTls", Duration::from_secs(5), |s| s["bytes_out"] == expected)
        .await;
    let (status, missing) = host.get("/api/v1/servers/Nope").await;
    assert_eq!(status, 404);
    assert_eq!(missing["error"]["code"], "not_found");
    let (status, info) = host.get("/api/v1/host").await;
    assert_eq!(status, 200);
    assert_eq!(info["pid"], host.pid());
    assert_eq!(info["state"], "running");
    assert!(info["config_path"].as_str().unwrap().ends_with("host.toml"));
    let (status, ready) = host.get("/readyz").await;
    assert_eq!((status, ready["ready"].as_bool()), (200, Some(true)), "{ready}");
    assert_eq!(host.get("/livez").await.0, 200);
    assert_eq!(host.get("/healthz").await.0, 200);
}

#[tokio::test]
async fn one_server_listens_on_two_ports_and_on_ipv6() {
    let ipv6 = std::net::TcpListener::bind("[::1]:0").is_ok();
    let v6_listener = if ipv6 { r#", { ip = "::1", port = 0 }"# } else { "" };
    let config = format!(
        r#"
        [[servers]]
        name = "Multi"
        type = "echo"
        listeners = [{{ ip = "Loopback", port = 0 }}, {{ ip = "127.0.0.1", port = 0, backlog = 8 }}{v6_listener}]
        "#
    );
    let host = HostProcess::start(&config);
    let info = host.server("Multi").await;
    let listeners = info["listeners"].as_array().unwrap();
    assert_eq!(listeners.len(), if ipv6 { 3 } else { 2 });
    for listener in listeners {
        let ip: std::net::IpAddr = listener["ip"].as_str().unwrap().parse().unwrap();
        let port = listener["port"].as_u64().unwrap() as u16;
        let mut stream = connect_addr((ip, port).into()).await;
        let text = format!("via {ip}:{port}");
        assert_eq!(echo_roundtrip(&mut stream, text.as_bytes()).await, text.as_bytes());
    }
    assert_ne!(listeners[0]["port"], listeners[1]["port"]);
}

#[tokio::test]
async fn the_embedded_default_serves_2012_to_2015_and_ftp_on_demand_from_an_empty_folder() {
    let mut options = HostOptions::new("");
    options.config = None;
    options.admin = None;
    let host = HostProcess::start_with(options);
    assert_eq!(host.admin, "http://127.0.0.1:2020");
    let mut echo = connect(2012).await;
    assert_eq!(echo_roundtrip(&mut echo, b"default").await, b"default");
    let cert = fetch_certificate(2013).await;
    let mut echo_tls = connect_trusting(2013, &cert).await;
    assert_eq!(echo_roundtrip(&mut echo_tls, b"default tls").await, b"default tls");
    let mut a = LineClient::connect(2014).await;
    assert_eq!(a.request("SERVER").await, "ServerA");
    let mut b = LineClient::connect(2015).await;
    assert_eq!(b.request("SERVER").await, "ServerB");
    let (_, info) = host.get("/api/v1/host").await;
    assert_eq!(info["config_path"], serde_json::Value::Null);

    // FTPServer waits for `supersocket start FTPServer`, then serves ./ftp-root.
    assert_eq!(host.server("FTPServer").await["state"], "stopped");
    let start = host.ctl(&["start", "FTPServer"]);
    assert_eq!(start.code, 0, "{}", start.stderr);
    let root = host.scratch.path().join("ftp-root");
    std::fs::write(root.join("welcome.txt"), "hello").expect("ftp-root was created at start");
    let listing = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "10", "ftp://127.0.0.1:2121/"])
        .output()
        .expect("curl runs (scripts/test installs it)");
    let listing = String::from_utf8_lossy(&listing.stdout);
    assert!(listing.contains("welcome.txt"), "{listing}");
    let (_, servers) = host.get("/api/v1/servers").await;
    for server in servers.as_array().unwrap() {
        if server["autostart"] == true {
            assert_eq!(
                server["listeners"][0]["ip"], "127.0.0.1",
                "the default listens on loopback only"
            );
        }
    }
}

#[tokio::test]
async fn a_json_config_runs_like_toml() {
    let config = r#"{ "shutdown_timeout": "2s",
        "servers": [ { "name": "J", "type": "command", "listeners": [ { "ip": "Loopback", "port": 0 } ] } ] }"#;
    let mut options = HostOptions::new(config);
    options.json = true;
    let host = HostProcess::start_with(options);
    let mut client = LineClient::connect(host.port("J", 0).await).await;
    assert_eq!(client.request("ECHO json").await, "json");
}

#[tokio::test]
async fn an_instance_on_a_runtime_of_its_own_serves_like_the_others_and_logs_can_be_json() {
    let mut options = HostOptions::new(
        r#"
        [[servers]]
        name = "Own"
        type = "command"
        isolation = "runtime"
        threads = 2
        listeners = [{ ip = "Loopback", port = 0 }]

        [[servers]]
        name = "Shared"
        type = "echo"
        listeners = [{ ip = "Loopback", port = 0 }]
        "#,
    );
    options.args = vec!["--log-format".into(), "json".into()];
    let host = HostProcess::start_with(options);
    assert_eq!(host.server("Own").await["isolation"], "runtime");
    let mut own = LineClient::connect(host.port("Own", 0).await).await;
    assert_eq!(own.request("MULT 3 4").await, "12");
    let mut shared = connect(host.port("Shared", 0).await).await;
    assert_eq!(echo_roundtrip(&mut shared, b"shared").await, b"shared");
    let logs = host.stderr();
    let first = logs.lines().next().expect("the host logs at start");
    let record: serde_json::Value = serde_json::from_str(first).expect("JSON log lines");
    assert!(record["fields"]["message"].is_string(), "{record}");
    assert!(logs.contains(r#""server":"Own""#), "{logs}");
}
