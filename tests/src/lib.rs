//! Helpers for the end-to-end tests: run the real `supersocketd` (or another host binary) on
//! ephemeral loopback ports, wait for its `ready` line, talk to it over TCP, TLS and HTTP, and
//! kill it when the test ends, whether it passed or not; and a real browser for the dashboard.

pub mod browser;
pub mod net;
pub mod tls;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long a host may take to print its `ready` line.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// Stops `pid` with SIGSTOP and returns once every thread of it has stopped: a stop signal is
/// taken by one thread, which then stops the others, so the process may run on for a moment.
pub async fn freeze(pid: u64) {
    let pid_t = nix::unistd::Pid::from_raw(pid as i32);
    nix::sys::signal::kill(pid_t, nix::sys::signal::Signal::SIGSTOP).expect("stop the process");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !every_thread_stopped(pid) {
        assert!(Instant::now() < deadline, "process {pid} did not stop");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Whether every thread of `pid` is in state `T` (stopped).
fn every_thread_stopped(pid: u64) -> bool {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("the process's threads");
    tasks.flatten().all(|task| {
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        // The state follows the command name, which is in parentheses and may hold spaces.
        stat.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('T'))
    })
}

/// The folder cargo put the workspace's binaries in (`target/debug` for `cargo test`).
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary knows its path");
    // target/debug/deps/<test> -> target/debug
    exe.parent()
        .and_then(Path::parent)
        .expect("test binaries live in target/<profile>/deps")
        .to_path_buf()
}

/// Path of a workspace binary, e.g. `supersocketd` or `supersocket`.
pub fn bin(name: &str) -> PathBuf {
    let path = target_dir().join(name);
    assert!(
        path.exists(),
        "{} is missing: run the tests with `scripts/test` (or `cargo test --workspace`)",
        path.display()
    );
    path
}

/// Path of a workspace example binary.
pub fn example(name: &str) -> PathBuf {
    let path = target_dir().join("examples").join(name);
    assert!(
        path.exists(),
        "{} is missing: run the tests with `scripts/test` (or `cargo test --workspace`)",
        path.display()
    );
    path
}

/// A command running `program` as systemd runs a socket-activated service: `passed` at
/// descriptors 3 and up, and `LISTEN_PID` naming the program's own process (a shell sets it
/// to its pid, then becomes the program).
fn activated(program: &Path, passed: &[(String, std::os::fd::OwnedFd)]) -> Command {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let mut command = Command::new("/bin/sh");
    command
        .arg("-c")
        .arg("LISTEN_PID=$$ exec \"$0\" \"$@\"")
        .arg(program)
        .env("LISTEN_FDS", passed.len().to_string())
        .env(
            "LISTEN_FDNAMES",
            passed
                .iter()
                .map(|(name, _)| name.as_str())
                .collect::<Vec<_>>()
                .join(":"),
        );
    let sources: Vec<i32> = passed.iter().map(|(_, fd)| fd.as_raw_fd()).collect();
    // SAFETY: runs between fork and exec and only calls fcntl and dup2 (async-signal-safe).
    unsafe {
        command.pre_exec(move || {
            // Out of the way first, so that no source is overwritten before it is moved.
            let mut moved = [0i32; 16];
            for (i, &fd) in sources.iter().enumerate().take(16) {
                moved[i] = nix::libc::fcntl(fd, nix::libc::F_DUPFD_CLOEXEC, 1000);
                if moved[i] == -1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            for (i, &fd) in moved.iter().enumerate().take(sources.len().min(16)) {
                // dup2 leaves the new descriptor open across the exec.
                if nix::libc::dup2(fd, 3 + i as i32) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    command
}

/// What a run of the CLI printed, and its exit code.
#[derive(Debug)]
pub struct CtlOutput {
    /// Exit code.
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl CtlOutput {
    /// Standard output as JSON (for `--output json`).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.stdout))
    }
}

/// Runs the real `supersocket` CLI with `--url url` and extra environment variables.
pub fn ctl_at(url: &str, args: &[&str], env: &[(&str, &str)]) -> CtlOutput {
    let output = Command::new(bin("supersocket"))
        .arg("--url")
        .arg(url)
        .args(args)
        .env_remove("SUPERSOCKET_URL")
        .env_remove("SUPERSOCKET_TOKEN")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("run supersocket");
    let out = CtlOutput {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    };
    assert!(!out.stderr.contains("panicked"), "the CLI panicked: {}", out.stderr);
    assert!(out.stderr.lines().count() <= 1, "errors are one line: {}", out.stderr);
    out
}

/// A scratch folder removed when dropped.
pub struct Scratch {
    path: PathBuf,
}

impl Scratch {
    /// A new empty folder under the system's temp dir.
    pub fn new(label: &str) -> Self {
        use std::sync::atomic::{AtomicU32, Ordering};
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("ss-e2e-{label}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create scratch folder");
        Self { path }
    }

    /// The folder.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes a file in the folder and returns its path.
    pub fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let path = self.path.join(name);
        std::fs::write(&path, contents).expect("write scratch file");
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A running host process; killed (SIGKILL) when dropped unless it already exited.
pub struct HostProcess {
    child: Child,
    /// `http://IP:PORT` from the ready line.
    pub admin: String,
    stderr_log: PathBuf,
    http: reqwest::Client,
    /// Keeps the config folder alive as long as the host.
    pub scratch: Scratch,
}

/// How to start a host.
pub struct HostOptions {
    /// Binary to run.
    pub program: PathBuf,
    /// Config text, written to `supersocket.toml` (or `.json`) in a scratch folder; `None` runs
    /// without `--config` in that (empty) folder.
    pub config: Option<String>,
    /// Write the config as JSON instead of TOML.
    pub json: bool,
    /// Extra arguments.
    pub args: Vec<String>,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
    /// Admin address; `None` keeps the config's.
    pub admin: Option<String>,
    /// The folder the host runs in; `None`: a fresh scratch folder.
    pub workdir: Option<PathBuf>,
    /// Listening sockets passed as systemd's socket activation passes them (descriptors from
    /// 3, `LISTEN_FDS`, `LISTEN_FDNAMES`, `LISTEN_PID` of the host), with their names.
    pub passed: Vec<(String, std::os::fd::OwnedFd)>,
}

impl HostOptions {
    /// `supersocketd` with `config`, admin on an ephemeral loopback port.
    pub fn new(config: &str) -> Self {
        Self {
            program: bin("supersocketd"),
            config: Some(config.to_owned()),
            json: false,
            args: Vec::new(),
            env: Vec::new(),
            admin: Some("127.0.0.1:0".into()),
            workdir: None,
            passed: Vec::new(),
        }
    }
}

impl HostProcess {
    /// Starts `supersocketd` with `config` and waits for its ready line.
    pub fn start(config: &str) -> Self {
        Self::start_with(HostOptions::new(config))
    }

    /// Starts a host as described and waits for its ready line.
    pub fn start_with(options: HostOptions) -> Self {
        Self::try_start(options).unwrap_or_else(|e| panic!("host did not become ready: {e}"))
    }

    /// Starts a host; `Err` carries its stderr if it exited or never printed the ready line.
    pub fn try_start(options: HostOptions) -> Result<Self, String> {
        let scratch = Scratch::new("host");
        let mut command = if options.passed.is_empty() {
            Command::new(&options.program)
        } else {
            activated(&options.program, &options.passed)
        };
        command.current_dir(options.workdir.as_deref().unwrap_or(scratch.path()));
        if let Some(config) = &options.config {
            let name = if options.json { "host.json" } else { "host.toml" };
            let path = scratch.write(name, config);
            command.arg("--config").arg(path);
        }
        if let Some(admin) = &options.admin {
            command.arg("--admin").arg(admin);
        }
        let stderr_log = scratch.path().join("stderr.log");
        let stderr = std::fs::File::create(&stderr_log).map_err(|e| e.to_string())?;
        command
            .args(&options.args)
            .env_remove("SUPERSOCKET_CONFIG")
            .env_remove("SUPERSOCKET_TOKEN")
            .envs(options.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr);
        let mut child = command
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", options.program.display()))?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut host = Self {
            child,
            admin: String::new(),
            stderr_log,
            http: reqwest::Client::builder().no_proxy().build().expect("http client"),
            scratch,
        };
        match rx.recv_timeout(READY_TIMEOUT) {
            Ok(line) => match line.strip_prefix("supersocketd ready: admin=") {
                Some(url) => {
                    host.admin = url.to_owned();
                    // Keep draining stdout so the host never blocks on a full pipe.
                    std::thread::spawn(move || rx.into_iter().for_each(drop));
                    Ok(host)
                }
                None => Err(format!(
                    "first stdout line is not the ready line: {line:?}\n{}",
                    host.stderr()
                )),
            },
            Err(_) => Err(format!("no ready line; stderr:\n{}", host.stderr())),
        }
    }

    /// The config file the host was started with.
    pub fn config_path(&self) -> PathBuf {
        let toml = self.scratch.path().join("host.toml");
        if toml.exists() {
            toml
        } else {
            self.scratch.path().join("host.json")
        }
    }

    /// Runs the real `supersocket` CLI against this host.
    pub fn ctl(&self, args: &[&str]) -> CtlOutput {
        ctl_at(&self.admin, args, &[])
    }

    /// The host's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the host logged so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_log).unwrap_or_default()
    }

    /// Sends a signal to the host.
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(self.pid() as i32);
        nix::sys::signal::kill(pid, signal).expect("signal the host");
    }

    /// Waits for the host to exit, at most `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for the host") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Resident set size of the host in KiB (and its peak so far).
    pub fn rss_kib(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("read /proc status");
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    /// `GET` an admin path; returns the status and the JSON body.
    pub async fn get(&self, path: &str) -> (u16, Value) {
        let response = self
            .http
            .get(format!("{}{path}", self.admin))
            .send()
            .await
            .expect("admin API reachable");
        let status = response.status().as_u16();
        (status, response.json().await.expect("JSON body"))
    }

    /// `POST` to an admin path; returns the status and the JSON body.
    pub async fn post(&self, path: &str) -> (u16, Value) {
        let response = self
            .http
            .post(format!("{}{path}", self.admin))
            .send()
            .await
            .expect("admin API reachable");
        let status = response.status().as_u16();
        (status, response.json().await.expect("JSON body"))
    }

    /// An HTTP client for requests the helpers here do not cover.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// `GET /api/v1/servers/{name}`, which must succeed.
    pub async fn server(&self, name: &str) -> Value {
        let (status, body) = self.get(&format!("/api/v1/servers/{name}")).await;
        assert_eq!(status, 200, "GET server {name}: {body}");
        body
    }

    /// The port of listener `index` of a running server.
    pub async fn port(&self, name: &str, index: usize) -> u16 {
        let server = self.server(name).await;
        let port = &server["listeners"][index]["port"];
        port.as_u64()
            .unwrap_or_else(|| panic!("server {name} has no listener {index}: {server}")) as u16
    }

    /// Polls `/readyz` until it answers `status`, for at most [`READY_TIMEOUT`].
    pub async fn wait_ready_state(&self, status: u16) {
        let deadline = Instant::now() + READY_TIMEOUT;
        while self.get("/readyz").await.0 != status {
            assert!(Instant::now() < deadline, "/readyz never answered {status}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Polls until a server of that name exists (after a reload), for at most `timeout`.
    pub async fn wait_for_server(&self, name: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let (status, body) = self.get(&format!("/api/v1/servers/{name}")).await;
            if status == 200 && body["state"] == "running" {
                return body;
            }
            assert!(Instant::now() < deadline, "server {name} did not appear: {body}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Polls `check` on the server's JSON until it holds, for at most `timeout`.
    pub async fn wait_server(&self, name: &str, timeout: Duration, check: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let server = self.server(name).await;
            if check(&server) {
                return server;
            }
            assert!(
                Instant::now() < deadline,
                "server {name} did not reach the expected state: {server}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for HostProcess {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- host stderr ---\n{}", self.stderr());
        }
    }
}
