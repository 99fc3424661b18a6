//! Property-based fuzzing of the admin API: schemathesis reads the host's own OpenAPI document
//! and sends thousands of generated requests (valid and invalid) to a real `supersocketd` with
//! an echo, a command and a process-isolated command server, once without and once with a
//! token. It must find no 5xx, no answer that breaks the document (status, content type,
//! headers, body), no accepted request that breaks it, and the host must still run afterwards.
//! Destructive routes (DELETE a server, PUT the config) are fuzzed too: the host is a scratch
//! one. The settings are in `tests/api-fuzz/` (see docs/API-FUZZING.md).
//!
//! schemathesis is found at `$SUPERSOCKET_SCHEMATHESIS` (scripts/test installs it there), else
//! as `st` on the PATH.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use supersocket_tests::{HostProcess, Scratch};

/// Cases per operation and phase: about 3,000 requests a run, well under a minute.
const MAX_EXAMPLES: &str = "60";
/// Longest a run may take before it is killed and the test fails.
const RUN_TIMEOUT: Duration = Duration::from_secs(240);

const SERVERS: &str = r#"
[[servers]]
name = "EchoServerA"
type = "echo"
listeners = [{ ip = "127.0.0.1", port = 0 }]

[[servers]]
name = "ServerA"
type = "command"
listeners = [{ ip = "127.0.0.1", port = 0 }]

[[servers]]
name = "ServerB"
type = "command"
isolation = "process"
listeners = [{ ip = "127.0.0.1", port = 0 }]
"#;

const TOKEN: &str = "fuzz-token-2f7c";

/// The schemathesis command line tool.
fn schemathesis() -> PathBuf {
    if let Some(path) = std::env::var_os("SUPERSOCKET_SCHEMATHESIS") {
        return PathBuf::from(path);
    }
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join("st"))
        .find(|path| path.is_file());
    found.unwrap_or_else(|| {
        panic!("schemathesis is missing: run the tests with scripts/test, which installs it (or set SUPERSOCKET_SCHEMATHESIS)")
    })
}

/// The settings: `schemathesis.toml` and the hooks.
fn settings() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("api-fuzz")
}

/// Runs schemathesis against `host`; fails with its output unless it passed.
fn fuzz(host: &HostProcess, token: Option<&str>) {
    let scratch = Scratch::new("api-fuzz");
    let log = scratch.path().join("schemathesis.log");
    let output = std::fs::File::create(&log).expect("a log file");
    let mut command = Command::new(schemathesis());
    command
        .current_dir(scratch.path())
        .env("SCHEMATHESIS_HOOKS", "hooks")
        .env("PYTHONPATH", settings())
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .arg("--config-file")
        .arg(settings().join("schemathesis.toml"))
        .arg("run")
        .arg(format!("{}/api/v1/openapi.json", host.admin))
        .args(["--url", &host.admin])
        .args(["--checks", "all", "--exclude-checks", "positive_data_acceptance"])
        .args(["--max-examples", MAX_EXAMPLES, "--request-timeout", "20"])
        // One worker: Python 3.11's parser is not safe across the threads of several.
        .args(["--workers", "1", "--generation-database", "none", "--no-color"])
        .stdin(Stdio::null())
        .stdout(output.try_clone().expect("the log file"))
        .stderr(output);
    if let Some(token) = token {
        command.args(["--header", &format!("Authorization: Bearer {token}")]);
    }
    let mut child = command.spawn().expect("schemathesis runs");
    let deadline = Instant::now() + RUN_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for schemathesis") {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let report = std::fs::read_to_string(&log).unwrap_or_default();
    match status {
        Some(status) if status.success() => {}
        Some(status) => panic!(
            "schemathesis found problems ({status}):\n{report}\nhost stderr:\n{}",
            host.stderr()
        ),
        None => panic!("schemathesis did not finish within {RUN_TIMEOUT:?}:\n{report}"),
    }
    let summary = report.find("SUMMARY").map_or(report.as_str(), |at| &report[at..]);
    eprintln!(
        "schemathesis, {}:\n{summary}",
        token.map_or("no token", |_| "with a token")
    );
    assert!(summary.contains("passed"), "{report}");
}

/// The host still runs and answers, and nothing in it panicked.
async fn still_healthy(host: &mut HostProcess) {
    assert!(
        host.wait_exit(Duration::ZERO).is_none(),
        "the host exited:\n{}",
        host.stderr()
    );
    let (status, body) = host.get("/livez").await;
    assert_eq!(status, 200, "{body}");
    assert!(!host.stderr().contains("panicked"), "{}", host.stderr());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_holds_to_its_document_without_a_token() {
    let mut host = HostProcess::start(SERVERS);
    tokio::task::block_in_place(|| fuzz(&host, None));
    still_healthy(&mut host).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_holds_to_its_document_with_a_token() {
    let mut host = HostProcess::start(&format!("[admin]\ntoken = \"{TOKEN}\"\n{SERVERS}"));
    tokio::task::block_in_place(|| fuzz(&host, Some(TOKEN)));
    still_healthy(&mut host).await;
}
