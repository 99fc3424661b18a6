//! The library: a user-defined server type (the `kv` example) registered with the host builder
//! runs under the same host, admin API and config checks as the built-in ones.

use std::process::Command;
use std::time::Duration;

use supersocket_tests::net::{LineClient, closes_within, connect};
use supersocket_tests::{HostOptions, HostProcess, Scratch, example};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn call(stream: &mut TcpStream, op: u8, payload: &[u8]) -> (u8, Vec<u8>) {
    let mut frame = vec![op];
    frame.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    frame.extend_from_slice(payload);
    stream.write_all(&frame).await.unwrap();
    let mut header = [0u8; 3];
    stream.read_exact(&mut header).await.unwrap();
    let mut body = vec![0u8; u16::from_be_bytes([header[1], header[2]]) as usize];
    stream.read_exact(&mut body).await.unwrap();
    (header[0], body)
}

const CONFIG: &str = r#"
[[servers]]
name = "Store"
type = "kv"
max_package_length = 64
listeners = [{ ip = "Loopback", port = 0 }]
options = { max_keys = 2 }

[[servers]]
name = "Console"
type = "command"
listeners = [{ ip = "Loopback", port = 0 }]
"#;

#[tokio::test]
async fn the_kv_example_serves_its_binary_protocol_beside_a_builtin_type() {
    let mut options = HostOptions::new(CONFIG);
    options.program = example("kv-server");
    let host = HostProcess::start_with(options);
    let port = host.port("Store", 0).await;
    let mut a = connect(port).await;
    assert_eq!(call(&mut a, b'S', b"colour\0blue").await, (b'K', vec![]));
    assert_eq!(call(&mut a, b'G', b"colour").await, (b'V', b"blue".to_vec()));
    // Another session of the same instance shares the store.
    let mut b = connect(port).await;
    assert_eq!(call(&mut b, b'G', b"colour").await, (b'V', b"blue".to_vec()));
    assert_eq!(call(&mut b, b'S', b"size\0XL").await, (b'K', vec![]));
    assert_eq!(call(&mut b, b'S', b"third\0no room").await, (b'E', b"full".to_vec()));
    assert_eq!(call(&mut b, b'C', b"").await, (b'V', b"2".to_vec()));
    assert_eq!(call(&mut a, b'D', b"size").await, (b'K', vec![]));
    assert_eq!(call(&mut a, b'G', b"size").await, (b'N', vec![]));
    // Two requests in one write, split across the frame boundary by the filter.
    a.write_all(b"G\x00\x06colourC\x00\x00").await.unwrap();
    let mut both = [0u8; 3 + 4 + 3 + 1];
    a.read_exact(&mut both).await.unwrap();
    assert_eq!(&both, b"V\x00\x04blueV\x00\x011");

    // A frame longer than max_package_length closes that session only.
    let mut bad = connect(port).await;
    bad.write_all(&[b'S', 0x01, 0x00]).await.unwrap();
    assert!(closes_within(&mut bad, Duration::from_secs(5)).await);
    assert_eq!(call(&mut a, b'C', b"").await, (b'V', b"1".to_vec()));

    let mut console = LineClient::connect(host.port("Console", 0).await).await;
    assert_eq!(console.request("SERVER").await, "Console");
    let store = host.server("Store").await;
    assert_eq!(store["type"], "kv");
    assert_eq!(store["sessions"], 2);
}

#[test]
fn the_custom_type_checks_its_options_in_check() {
    let scratch = Scratch::new("kv");
    let bad = scratch.write("bad.toml", CONFIG.replace("max_keys = 2", "max_keys = 0, colour = 1"));
    let output = Command::new(example("kv-server"))
        .arg("--check")
        .arg("--config")
        .arg(bad)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("server \"Store\": key `servers[0].options`") && stderr.contains("colour"),
        "{stderr}"
    );
    let good = scratch.write("good.toml", CONFIG);
    let output = Command::new(example("kv-server"))
        .arg("--check")
        .arg("--config")
        .arg(good)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0));
    // The stock host does not know the type.
    let output = Command::new(supersocket_tests::bin("supersocketd"))
        .arg("--check")
        .arg("--config")
        .arg(scratch.path().join("good.toml"))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&output.stderr).contains("unknown server type \"kv\""));
}

#[test]
fn the_shipped_example_configs_are_valid() {
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    for (program, config) in [
        (supersocket_tests::bin("supersocketd"), "pomelo-chat.toml"),
        (example("kv-server"), "kv.toml"),
    ] {
        let output = Command::new(program)
            .arg("--check")
            .arg("--config")
            .arg(examples.join(config))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(0), "{config}: {stderr}");
    }
    let pomelo = Command::new(supersocket_tests::bin("supersocketd"))
        .arg("--check")
        .arg("--config")
        .arg(examples.join("pomelo-chat.toml"))
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&pomelo.stdout).contains("OK (7 servers)"),
        "1 gate, 3 connectors, 3 chats"
    );
}
