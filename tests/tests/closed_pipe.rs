//! Output into a pipe whose reader has gone (`| head -1`): both binaries stop writing quietly,
//! with no panic and the exit status of what they did (0 here), never killed by SIGPIPE.

use std::io::Read;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use supersocket_tests::{HostProcess, Scratch, bin, ctl_at};

const SERVER: &str = r#"
[[servers]]
name = "Echo"
type = "echo"
listeners = [{ ip = "127.0.0.1", port = 0 }]
"#;

/// Runs `command` with its stdout a pipe whose read end is already closed.
fn into_closed_pipe(command: &mut Command) -> Output {
    let (reader, writer) = std::io::pipe().expect("a pipe");
    drop(reader);
    let output = command
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .expect("the binary runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        stderr.is_empty(),
        "nothing is told of a reader that went away: {stderr}"
    );
    output
}

/// The pipeline a user types. The script fits in a pipe's buffer, so the CLI may be done
/// before `head` quits: the closed pipes below are what make a write fail every time.
#[test]
fn completions_through_head_end_quietly() {
    let scratch = Scratch::new("head");
    let errors = scratch.path().join("stderr");
    let script = format!(
        "set -o pipefail; '{}' completions bash 2>'{}' | head -1",
        bin("supersocket").display(),
        errors.display()
    );
    let output = Command::new("bash").args(["-c", &script]).output().expect("bash runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = std::fs::read_to_string(&errors).unwrap_or_default();
    assert_eq!(stderr, "", "nothing is told of a reader that went away");
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert_eq!(
        output.status.code(),
        Some(0),
        "the pipeline's status, the CLI's included: {stdout}"
    );
}

#[test]
fn the_cli_ends_quietly_on_a_closed_stdout() {
    let output = into_closed_pipe(Command::new(bin("supersocket")).args(["completions", "bash"]));
    assert_eq!(output.status.code(), Some(0));
    let host = HostProcess::start(SERVER);
    for args in [
        &["list"][..],
        &["--output", "json", "list"],
        &["status"],
        &["start", "Echo"],
    ] {
        let output = into_closed_pipe(Command::new(bin("supersocket")).args(["--url", &host.admin]).args(args));
        assert_eq!(output.status.code(), Some(0), "{args:?}");
    }
    // A failure still says so, on stderr, with its status.
    let missing = ctl_at(&host.admin, &["status", "Nobody"], &[]);
    assert_eq!(missing.code, 1, "{missing:?}");
}

#[test]
fn the_host_ends_check_quietly_and_serves_on_after_its_ready_line() {
    let scratch = Scratch::new("closed-pipe");
    let config = scratch.write("host.toml", SERVER);
    let output = into_closed_pipe(
        Command::new(bin("supersocketd"))
            .arg("--check")
            .arg("--config")
            .arg(&config),
    );
    assert_eq!(output.status.code(), Some(0));

    // The ready line goes into a closed pipe; the host serves on (seen over its unix socket).
    let socket = scratch.path().join("admin.sock");
    let (reader, writer) = std::io::pipe().expect("a pipe");
    drop(reader);
    let url = format!("unix:{}", socket.display());
    let mut host = Command::new(bin("supersocketd"))
        .current_dir(scratch.path())
        .arg("--config")
        .arg(&config)
        .args(["--admin", &url])
        .env_remove("SUPERSOCKET_TOKEN")
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(Stdio::piped())
        .spawn()
        .expect("the host runs");
    let deadline = Instant::now() + Duration::from_secs(20);
    let ready = loop {
        let health = ctl_at(&url, &["health"], &[]);
        if health.code == 0 || Instant::now() >= deadline || host.try_wait().ok().flatten().is_some() {
            break health;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let listed = ctl_at(&url, &["list"], &[]);
    let _ = host.kill();
    let _ = host.wait();
    let mut stderr = String::new();
    host.stderr.take().map(|mut e| e.read_to_string(&mut stderr));
    assert_eq!(ready.code, 0, "{ready:?}\n{stderr}");
    assert!(listed.stdout.contains("Echo"), "{listed:?}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}
