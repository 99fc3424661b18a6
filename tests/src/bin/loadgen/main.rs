//! `loadgen`: drives a server on loopback — a SuperSocket host or the bare tokio `baseline` —
//! and reports what it measured as one JSON line on stdout. Every mode is bounded in time (at
//! most 10 minutes) and in connections (at most 50,000) and talks only to 127.0.0.0/8.
//!
//! - `echo`: closed loop; each connection keeps W messages of S bytes in flight; messages/s,
//!   MB/s, round-trip latency percentiles (HDR histogram), errors.
//! - `stream`: each connection sends S-byte chunks continuously, as fast as the server takes
//!   them, and reads the echo as it comes; the same report (latency of each chunk's echo).
//! - `line`: the closed loop with `ECHO <S bytes of text>` lines (a `command` server answers
//!   the text; `--echo` for an echo server, which answers the line).
//! - `command`: the closed loop with `PING` answered `PONG` (`--echo`: answered `PING`).
//! - `idle`: opens N connections from several 127.x source addresses, lets each exchange
//!   `--talk` bytes (0: none) and then stay quiet for `--quiet`, reports the server's resident
//!   memory per connection, checks each one still answers an echo, closes them all and reports
//!   the resident memory `--quiet` after they left.
//! - `start-time`, `stop-time`: from a start request to serving; a stop with N sessions open.
//! - `dispatch`, `chat`: instances reaching each other (see `cluster`).
//! - `soak`: mixed traffic with every message checked while faults hit the host, then its
//!   SIGTERM; counts what was lost (see `soak`). Exits 1 if anything was.
//! - `events`: N clients follow the host's event stream; every frame checked, each `stats`
//!   frame's delay from the sample it describes to its reading, and the host's CPU meanwhile.
//!
//! The target is `--port P`, or `--admin URL` plus a server name looked up in the admin API.

mod changes;
mod closed_loop;
mod cluster;
mod common;
mod events;
mod idle;
mod lifecycle;
mod soak;

use std::time::Duration;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "loadgen", about = "Load generator for a SuperSocket host on loopback")]
struct Cli {
    /// Admin API of the host, to find servers' ports and drive them.
    #[arg(long, global = true)]
    admin: Option<String>,
    /// The port to drive, instead of looking a server up.
    #[arg(long, global = true)]
    port: Option<u16>,
    /// How long to measure.
    #[arg(long, default_value = "5s", value_parser = bounded_duration, global = true)]
    duration: Duration,
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// Closed-loop echo.
    Echo {
        /// The echo server (with --admin).
        #[arg(long)]
        server: Option<String>,
        /// Connections.
        #[arg(long, default_value_t = 100, value_parser = count)]
        connections: usize,
        /// Bytes per message.
        #[arg(long, default_value_t = 64)]
        size: usize,
        /// Messages each connection keeps in flight.
        #[arg(long, default_value_t = 1)]
        window: usize,
    },
    /// Continuous streaming of an echo: only the socket pushes back.
    Stream {
        /// The echo server (with --admin).
        #[arg(long)]
        server: Option<String>,
        /// Connections.
        #[arg(long, default_value_t = 10, value_parser = count)]
        connections: usize,
        /// Bytes per chunk written (and per latency sample).
        #[arg(long, default_value_t = 16 * 1024)]
        size: usize,
    },
    /// Closed-loop `ECHO <text>` lines.
    Line {
        /// The command server (with --admin).
        #[arg(long)]
        server: Option<String>,
        /// Connections.
        #[arg(long, default_value_t = 50, value_parser = count)]
        connections: usize,
        /// Bytes of text per line.
        #[arg(long, default_value_t = 64)]
        size: usize,
        /// Lines each connection keeps in flight.
        #[arg(long, default_value_t = 16)]
        window: usize,
        /// The server echoes (the baseline): expect the whole line back.
        #[arg(long)]
        echo: bool,
    },
    /// Closed-loop `PING` requests.
    Command {
        /// The command server (with --admin).
        #[arg(long)]
        server: Option<String>,
        /// Connections.
        #[arg(long, default_value_t = 50, value_parser = count)]
        connections: usize,
        /// Requests each connection keeps in flight.
        #[arg(long, default_value_t = 16)]
        window: usize,
        /// The server echoes (the baseline): expect `PING` back instead of `PONG`.
        #[arg(long)]
        echo: bool,
    },
    /// Idle connections held open; the server's memory per connection.
    Idle {
        /// The echo server (with --admin).
        #[arg(long)]
        server: Option<String>,
        /// Connections to hold.
        #[arg(long, default_value_t = 15_000, value_parser = count)]
        connections: usize,
        /// Source addresses 127.0.0.1 .. 127.0.0.N the connections are spread over.
        #[arg(long, default_value_t = 4)]
        sources: u8,
        /// The server's process, whose resident memory is measured.
        #[arg(long)]
        pid: u32,
        /// Bytes each connection sends and reads back before it goes quiet (0: it never talks).
        #[arg(long, default_value_t = 0)]
        talk: usize,
        /// How long the connections stay quiet before the memory is measured, and how long
        /// after they all left it is measured again.
        #[arg(long, default_value = "5s", value_parser = bounded_duration)]
        quiet: Duration,
    },
    /// Time from `POST /api/v1/servers` to the new echo server answering, over add/remove
    /// cycles.
    AddTime {
        /// Isolation of the servers added.
        #[arg(long, default_value = "none")]
        isolation: String,
        /// Cycles.
        #[arg(long, default_value_t = 20, value_parser = count)]
        cycles: usize,
    },
    /// Time of `PUT /api/v1/servers/{name}` changing a limit, with sessions open over every
    /// server of the host (all of them must stay open).
    TuneTime {
        /// The server whose `max_connections` changes.
        #[arg(long)]
        server: String,
        /// Echo sessions held open, spread over the host's servers.
        #[arg(long, default_value_t = 10_000, value_parser = count)]
        sessions: usize,
        /// Changes.
        #[arg(long, default_value_t = 20, value_parser = count)]
        cycles: usize,
    },
    /// Time from `POST .../start` to the first echo answered, over stop/start cycles.
    StartTime {
        /// The echo server to cycle.
        #[arg(long)]
        server: String,
        /// Cycles.
        #[arg(long, default_value_t = 20, value_parser = count)]
        cycles: usize,
    },
    /// Time of `POST .../stop` with many sessions open (they close when the server does).
    StopTime {
        /// The echo server to stop.
        #[arg(long)]
        server: String,
        /// Sessions open at the stop.
        #[arg(long, default_value_t = 10_000, value_parser = count)]
        sessions: usize,
    },
    /// Lines from sessions of one instance to sessions of another.
    Dispatch {
        /// The `command` instance senders connect to.
        #[arg(long, default_value = "ServerA")]
        from: String,
        /// The `command` instance receivers connect to.
        #[arg(long, default_value = "ServerB")]
        to: String,
        /// Sender/receiver pairs.
        #[arg(long, default_value_t = 8, value_parser = count)]
        pairs: usize,
        /// Requests each sender keeps in flight.
        #[arg(long, default_value_t = 32)]
        window: usize,
        /// Bytes of text per line.
        #[arg(long, default_value_t = 32)]
        size: usize,
        /// Baseline: ECHO on the receiving instance instead of DISPATCH across instances.
        #[arg(long)]
        direct: bool,
    },
    /// Room messages through a pomelo chat cluster.
    Chat {
        /// The gate instance.
        #[arg(long, default_value = "gate-server-1")]
        gate: String,
        /// Users.
        #[arg(long, default_value_t = 60, value_parser = count)]
        users: usize,
        /// Rooms.
        #[arg(long, default_value_t = 6)]
        rooms: usize,
        /// Messages each user keeps in flight.
        #[arg(long, default_value_t = 4)]
        window: usize,
        /// Baseline: BROADCAST in this `command` instance to groups of the same size.
        #[arg(long)]
        broadcast: Option<String>,
    },
    /// Chaos soak: checked traffic of every kind while faults hit the host, then SIGTERM.
    Soak(soak::Options),
    /// Clients following `GET /api/v1/events`: every frame checked, `stats` frames timed.
    Events {
        /// Event streams (0: none, only the CPU of `--cpu-pid` is measured).
        #[arg(long, default_value_t = 10, value_parser = count_or_none)]
        clients: usize,
        /// Servers every `stats` frame must list.
        #[arg(long)]
        servers: Option<usize>,
        /// A process (the host) whose CPU use over the run is reported.
        #[arg(long)]
        cpu_pid: Option<u32>,
    },
}

impl Cli {
    fn admin(&self) -> Result<&str, String> {
        let admin = self.admin.as_deref().ok_or("this mode needs --admin")?;
        if !admin.starts_with("http://127.") {
            return Err(format!("loadgen drives loopback hosts only, not {admin}"));
        }
        Ok(admin)
    }

    /// `--port`, else the first port of `server` in the admin API.
    async fn target(&self, server: &Option<String>) -> Result<u16, String> {
        match (self.port, server) {
            (Some(port), _) => Ok(port),
            (None, Some(server)) => common::port(self.admin()?, server).await,
            (None, None) => Err("give --port, or --admin and --server".into()),
        }
    }
}

/// Most connections, sessions or cycles one run may ask for.
const MAX_COUNT: usize = 50_000;
/// Longest run.
const MAX_DURATION: Duration = Duration::from_secs(600);

/// A count of connections, sessions or cycles: 1 to [`MAX_COUNT`].
fn count(text: &str) -> Result<usize, String> {
    let n: usize = text.parse().map_err(|_| format!("{text:?} is not a count"))?;
    if (1..=MAX_COUNT).contains(&n) {
        Ok(n)
    } else {
        Err(format!("{n} is outside 1..={MAX_COUNT}"))
    }
}

/// A count that may be 0: 0 to [`MAX_COUNT`].
fn count_or_none(text: &str) -> Result<usize, String> {
    match text {
        "0" => Ok(0),
        _ => count(text),
    }
}

/// A duration of at most [`MAX_DURATION`].
fn bounded_duration(text: &str) -> Result<Duration, String> {
    let duration = supersocket_proto::parse_duration(text).map_err(|e| e.to_string())?;
    if duration > MAX_DURATION {
        return Err(format!("{text} is longer than {}s", MAX_DURATION.as_secs()));
    }
    Ok(duration)
}

/// `size` bytes of a pattern that shows misplaced bytes.
fn pattern(size: usize) -> Vec<u8> {
    (0..size).map(|i| (i % 251) as u8).collect()
}

#[tokio::main]
async fn main() -> Result<(), String> {
    let cli = Cli::parse();
    let duration = cli.duration;
    let result = match &cli.mode {
        Mode::Echo {
            server,
            connections,
            size,
            window,
        } => {
            let load = closed_loop::Load {
                request: pattern(*size),
                reply: pattern(*size),
                connections: *connections,
                window: Some(*window),
            };
            load.run("echo", cli.target(server).await?, duration).await?
        }
        Mode::Stream {
            server,
            connections,
            size,
        } => {
            let load = closed_loop::Load {
                request: pattern(*size),
                reply: pattern(*size),
                connections: *connections,
                window: None,
            };
            load.run("stream", cli.target(server).await?, duration).await?
        }
        Mode::Line {
            server,
            connections,
            size,
            window,
            echo,
        } => {
            let text: Vec<u8> = (0..*size).map(|i| b'a' + (i % 26) as u8).collect();
            let request = [b"ECHO ", &text[..], b"\r\n"].concat();
            let reply = if *echo {
                request.clone()
            } else {
                [&text[..], b"\r\n"].concat()
            };
            let load = closed_loop::Load {
                request,
                reply,
                connections: *connections,
                window: Some(*window),
            };
            load.run("line", cli.target(server).await?, duration).await?
        }
        Mode::Command {
            server,
            connections,
            window,
            echo,
        } => {
            let reply: &[u8] = if *echo { b"PING\r\n" } else { b"PONG\r\n" };
            let load = closed_loop::Load {
                request: b"PING\r\n".to_vec(),
                reply: reply.to_vec(),
                connections: *connections,
                window: Some(*window),
            };
            load.run("command", cli.target(server).await?, duration).await?
        }
        Mode::Idle {
            server,
            connections,
            sources,
            pid,
            talk,
            quiet,
        } => {
            let plan = idle::Plan {
                connections: *connections,
                sources: *sources,
                talk: *talk,
                quiet: *quiet,
            };
            idle::hold(cli.target(server).await?, &plan, *pid).await?
        }
        Mode::AddTime { isolation, cycles } => changes::add_time(cli.admin()?, isolation, *cycles).await?,
        Mode::TuneTime {
            server,
            sessions,
            cycles,
        } => changes::tune_time(cli.admin()?, server, *sessions, *cycles).await?,
        Mode::StartTime { server, cycles } => lifecycle::start_time(cli.admin()?, server, *cycles).await?,
        Mode::StopTime { server, sessions } => lifecycle::stop_time(cli.admin()?, server, *sessions).await?,
        Mode::Dispatch {
            from,
            to,
            pairs,
            window,
            size,
            direct,
        } => {
            let from = common::port(cli.admin()?, from).await?;
            let to_port = common::port(cli.admin()?, to).await?;
            cluster::dispatch(from, (to, to_port), *pairs, *window, *size, *direct, duration).await?
        }
        Mode::Chat {
            gate,
            users,
            rooms,
            window,
            broadcast,
        } => match broadcast {
            Some(server) => {
                let port = common::port(cli.admin()?, server).await?;
                cluster::broadcast_baseline(port, *users, *rooms, *window, duration).await?
            }
            None => {
                cluster::chat(
                    common::port(cli.admin()?, gate).await?,
                    *users,
                    *rooms,
                    *window,
                    duration,
                )
                .await?
            }
        },
        Mode::Events {
            clients,
            servers,
            cpu_pid,
        } => {
            let plan = events::Plan {
                clients: *clients,
                servers: *servers,
                cpu_pid: *cpu_pid,
            };
            events::follow(cli.admin()?, &plan, duration).await?
        }
        Mode::Soak(options) => {
            let (report, passed) = soak::run(cli.admin()?, duration, options).await?;
            println!("{report}");
            if !passed {
                std::process::exit(1);
            }
            return Ok(());
        }
    };
    println!("{result}");
    Ok(())
}
