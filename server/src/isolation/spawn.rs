//! Starting agent processes: the same binary as `supersocketd agent --name NAME`, with the
//! control socket at descriptor 3, killed by the kernel if the host dies, and handed its
//! listening sockets with the first frame. Behind [`Spawn`], so that the supervisor's policy
//! can be tested with fake agents.

use std::net::TcpListener;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::process::Stdio;
use std::sync::{Arc, OnceLock};

use supersocket_proto::agent::Init;
use tokio::net::UnixStream;
use tokio::sync::{Notify, watch};

use super::frame;
use crate::events::logs::{MAX_MESSAGE, push_agent_line};
use crate::outcome::BoxFuture;
use crate::runtime::listener;

/// Log settings agents inherit from the host (`--log-format`, `--log-level`).
pub(crate) static AGENT_LOG_ARGS: OnceLock<Vec<String>> = OnceLock::new();

/// Set in every agent's environment; an agent never starts agents of its own.
const AGENT_MARKER: &str = "SUPERSOCKET_AGENT_OF";

/// Starts agents.
pub(crate) trait Spawn: Send + Sync {
    /// Starts the agent of `server`, sends it `init` with `listeners` and then `links` (its
    /// ends of the sockets to other agents), and returns the process and the host's end of its
    /// channel.
    fn spawn<'a>(
        &'a self,
        server: &'a str,
        init: Init,
        listeners: &'a [TcpListener],
        links: Vec<OwnedFd>,
    ) -> BoxFuture<'a, Result<(AgentProcess, UnixStream), String>>;
}

/// How an agent process ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Exit {
    Code(i32),
    Signal(i32),
    /// The host lost track of it.
    Unknown(String),
}

impl Exit {
    /// Exited with code 0.
    pub(crate) fn is_clean(&self) -> bool {
        *self == Self::Code(0)
    }
}

impl std::fmt::Display for Exit {
    /// `exited with code 3`, `killed by signal 9 (SIGKILL)`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Code(code) => write!(f, "exited with code {code}"),
            Self::Signal(signal) => {
                let name = nix::sys::signal::Signal::try_from(*signal).map_or("?", |s| s.as_str());
                write!(f, "killed by signal {signal} ({name})")
            }
            Self::Unknown(why) => write!(f, "ended ({why})"),
        }
    }
}

/// A running agent: its pid, its exit once it comes, and a way to kill it.
pub(crate) struct AgentProcess {
    pid: u32,
    exit: watch::Receiver<Option<Exit>>,
    kill: Arc<Notify>,
}

impl AgentProcess {
    /// A process whose exit `exit` will tell, and that `kill` kills.
    pub(crate) fn new(pid: u32, exit: watch::Receiver<Option<Exit>>, kill: Arc<Notify>) -> Self {
        Self { pid, exit, kill }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    /// Resolves with its exit (borrowing nothing, so it can wait beside other work).
    pub(crate) fn exited(&self) -> impl Future<Output = Exit> + Send + 'static {
        let mut exit = self.exit.clone();
        async move {
            match exit.wait_for(Option::is_some).await {
                Ok(exit) => exit.clone().unwrap_or_else(|| Exit::Unknown("no status".into())),
                Err(_) => Exit::Unknown("its watcher ended".into()),
            }
        }
    }

    /// Kills it (SIGKILL) and waits until it is gone.
    pub(crate) async fn kill(&self) -> Exit {
        self.kill.notify_one();
        self.exited().await
    }
}

impl Drop for AgentProcess {
    /// An agent nobody holds any more is killed (an abandoned start leaves no process behind).
    fn drop(&mut self) {
        self.kill.notify_one();
    }
}

/// Starts real agent processes: this binary, as `agent --name NAME`.
pub(crate) struct Processes;

impl Spawn for Processes {
    fn spawn<'a>(
        &'a self,
        server: &'a str,
        init: Init,
        listeners: &'a [TcpListener],
        links: Vec<OwnedFd>,
    ) -> BoxFuture<'a, Result<(AgentProcess, UnixStream), String>> {
        Box::pin(async move {
            if std::env::var_os(AGENT_MARKER).is_some() {
                return Err("an agent does not start agents".into());
            }
            let listeners: Vec<TcpListener> = listeners
                .iter()
                .map(TcpListener::try_clone)
                .collect::<Result<_, _>>()
                .map_err(|e| format!("cannot share the listeners: {e}"))?;
            // Forked here, on a worker thread of the runtime: the kernel kills the agent when the
            // thread that forked it ends (PR_SET_PDEATHSIG), and a worker lives as long as the host.
            let spawning = listener::spawning();
            let (mut child, host_end) = fork(server)?;
            if let Some(stderr) = child.stderr.take() {
                tokio::spawn(relay_stderr(server.to_owned(), stderr));
            }
            let process = watch(child);
            // Waiting for the agent's first byte and sending the first frame block: off the
            // runtime's workers.
            let host_end = tokio::task::spawn_blocking(move || {
                // The child says it holds no copy of the host's descriptors any more.
                wait_for_first_byte(&host_end)?;
                drop(spawning);
                let listeners = listeners.iter().map(AsFd::as_fd);
                let fds: Vec<_> = listeners.chain(links.iter().map(AsFd::as_fd)).collect();
                frame::send_with_fds(&host_end, &init, &fds).map(|()| host_end)
            })
            .await
            .map_err(|_| "the agent's start was cut short".to_owned())?
            .and_then(|host_end| host_end.set_nonblocking(true).map(|()| host_end))
            .map_err(|e| format!("cannot hand over the listeners: {e}"));
            let stream = match host_end.and_then(|end| UnixStream::from_std(end).map_err(|e| e.to_string())) {
                Ok(stream) => stream,
                Err(error) => {
                    process.kill().await;
                    return Err(error);
                }
            };
            Ok((process, stream))
        })
    }
}

/// Forks and executes the agent with the control socket at descriptor 3.
fn fork(server: &str) -> Result<(tokio::process::Child, StdUnixStream), String> {
    let (host_end, agent_end) = StdUnixStream::pair().map_err(|e| format!("cannot make a control socket: {e}"))?;
    let program = std::env::current_exe().map_err(|e| format!("cannot find this program: {e}"))?;
    let mut command = tokio::process::Command::new(program);
    command
        .args(AGENT_LOG_ARGS.get().into_iter().flatten())
        .arg("agent")
        .arg("--name")
        .arg(server)
        .env(AGENT_MARKER, server)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    // Systemd's notifications and sockets are the host's.
    for variable in crate::systemd::VARIABLES {
        command.env_remove(variable);
    }
    let control = agent_end.as_raw_fd();
    // SAFETY: runs in the child between fork and exec, allocates nothing and only makes
    // async-signal-safe system calls: dup2 puts the control socket at descriptor 3 (without
    // close-on-exec), prctl asks the kernel to kill the child when the host dies (so no agent
    // outlives it), close_range (or close) drops the other descriptors, write tells the host.
    unsafe {
        command.pre_exec(move || {
            // Already at 3, it only needs close-on-exec cleared.
            let placed = if control == 3 {
                nix::libc::fcntl(3, nix::libc::F_SETFD, 0)
            } else {
                nix::libc::dup2(control, 3)
            };
            if placed == -1 {
                return Err(std::io::Error::last_os_error());
            }
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)?;
            // Every other descriptor of the host goes now, not at the exec (whose closing the
            // kernel finishes after the parent already sees the exec done): the host binds no
            // listener until this child has let go of its copies, which the byte below tells.
            // (The error channel of the exec goes too: an agent that cannot be executed shows as
            // one that hung up before it was ready.)
            if nix::libc::syscall(nix::libc::SYS_close_range, 4, u32::MAX, 0) != 0 {
                for fd in 4..1024 {
                    nix::libc::close(fd);
                }
            }
            if nix::libc::write(3, [FIRST_BYTE].as_ptr().cast(), 1) != 1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = command.spawn().map_err(|e| format!("cannot start the agent: {e}"))?;
    drop(agent_end);
    Ok((child, host_end))
}

/// What a child writes on its channel first, once it holds no descriptor of the host's but its
/// channel.
const FIRST_BYTE: u8 = b'!';

/// Waits (bounded) for the child's first byte on its channel (blocking socket): it comes
/// microseconds after the fork.
fn wait_for_first_byte(socket: &StdUnixStream) -> std::io::Result<()> {
    socket.set_read_timeout(Some(std::time::Duration::from_secs(2)))?;
    let mut byte = [0u8];
    std::io::Read::read_exact(&mut &*socket, &mut byte)?;
    socket.set_read_timeout(None)?;
    if byte[0] == FIRST_BYTE {
        Ok(())
    } else {
        Err(std::io::Error::other("the agent began with something else"))
    }
}

/// Watches a child for its exit, and kills it when asked.
/// Copies what the agent of `server` writes to its stderr to the host's, line by line (so that
/// its lines and the host's do not cut into each other), and into the instance's log. A line
/// longer than [`MAX_MESSAGE`] is passed on in pieces of that size.
async fn relay_stderr(server: String, mut stderr: tokio::process::ChildStderr) {
    use std::io::Write;

    use tokio::io::AsyncReadExt;
    let mut pending = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let read = stderr.read(&mut chunk).await.unwrap_or(0);
        if read == 0 {
            break;
        }
        pending.extend_from_slice(&chunk[..read]);
        let mut start = 0;
        while let Some(end) = next_line(&pending[start..]).map(|n| start + n) {
            let line = &pending[start..end];
            let _ = std::io::stderr().lock().write_all(line);
            push_agent_line(&server, String::from_utf8_lossy(line).trim_end());
            start = end;
        }
        pending.drain(..start);
    }
    if !pending.is_empty() {
        let _ = std::io::stderr().lock().write_all(&pending);
        push_agent_line(&server, String::from_utf8_lossy(&pending).trim_end());
    }
}

/// The length of the first line of `bytes` (with its newline), or of its first
/// [`MAX_MESSAGE`] bytes when no newline comes before; `None` while a line is unfinished.
fn next_line(bytes: &[u8]) -> Option<usize> {
    match memchr::memchr(b'\n', &bytes[..bytes.len().min(MAX_MESSAGE)]) {
        Some(at) => Some(at + 1),
        None => (bytes.len() >= MAX_MESSAGE).then_some(MAX_MESSAGE),
    }
}

fn watch(mut child: tokio::process::Child) -> AgentProcess {
    let pid = child.id().unwrap_or(0);
    let (exit, exited) = watch::channel(None);
    let kill = Arc::new(Notify::new());
    let killed = kill.clone();
    tokio::spawn(async move {
        let status = tokio::select! {
            status = child.wait() => status,
            () = killed.notified() => {
                let _ = child.start_kill();
                child.wait().await
            }
        };
        exit.send_replace(Some(match status {
            Ok(status) => {
                use std::os::unix::process::ExitStatusExt;
                match (status.code(), status.signal()) {
                    (Some(code), _) => Exit::Code(code),
                    (None, Some(signal)) => Exit::Signal(signal),
                    _ => Exit::Unknown(status.to_string()),
                }
            }
            Err(e) => Exit::Unknown(format!("cannot wait for it: {e}")),
        }));
    });
    AgentProcess::new(pid, exited, kill)
}
