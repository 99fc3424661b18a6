//! The `supersocketd` program: arguments, logging, config discovery, the admin API, the `ready`
//! line, and signals. A custom host binary calls [`main`] with its own [`HostBuilder`] and gets
//! the same command line, API and life cycle.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, ValueEnum};
use supersocket_proto::ServerState;
use tokio::signal::unix::{SignalKind, signal};

use crate::admin::{self, AdminListener};
use crate::config::{AdminAddr, Config, ConfigErrors, TypeCatalog};
use crate::host::{Host, HostBuilder, ReloadError};

/// Runs one host process with many named socket server instances and an admin API.
#[derive(Debug, Parser)]
#[command(name = "supersocketd", version, about)]
struct Args {
    /// Config file (TOML, or JSON by extension); else ./supersocket.toml, else the embedded default.
    #[arg(long, env = "SUPERSOCKET_CONFIG", value_name = "PATH")]
    config: Option<PathBuf>,
    /// Admin API address, overriding `[admin] listen` (e.g. 127.0.0.1:0, unix:/path).
    #[arg(long, value_name = "ADDR", value_parser = AdminAddr::parse)]
    admin: Option<AdminAddr>,
    /// Validate the config, list every problem, and exit (0 valid, 1 not).
    #[arg(long)]
    check: bool,
    /// Log line format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Log level or filter (e.g. info, debug, supersocket=trace).
    #[arg(long, value_name = "LEVEL", default_value = "info")]
    log_level: String,
    #[command(subcommand)]
    role: Option<Role>,
}

/// What else the binary can be.
#[derive(Debug, clap::Subcommand)]
enum Role {
    /// The agent of one process-isolated instance; started by the host, never by hand.
    #[command(hide = true)]
    Agent {
        /// The instance it runs (shown in `ps`).
        #[arg(long)]
        name: String,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Parses the command line and runs the host until it is shut down.
pub fn main(builder: HostBuilder) -> ExitCode {
    let args = match Args::try_parse() {
        Ok(args) => args,
        Err(e) if !e.use_stderr() => e.exit(),
        Err(e) => {
            // The message part of clap's error (before its usage block), on one line.
            let rendered = e.render().to_string();
            let message = rendered.split("\n\n").next().unwrap_or(&rendered);
            let message = message.strip_prefix("error: ").unwrap_or(message);
            eprintln!(
                "supersocketd: {} (see --help)",
                message.split_whitespace().collect::<Vec<_>>().join(" ")
            );
            return ExitCode::from(2);
        }
    };
    // Before the host opens a descriptor of its own: those from 3 may be systemd's sockets.
    let activation_problems = match (&args.role, args.check) {
        (None, false) => crate::systemd::activation::take_passed(),
        // A check runs outside systemd (ExecStartPre, CI): any socket name is taken as passed.
        (None, true) => {
            crate::systemd::activation::assume_passed();
            Vec::new()
        }
        (Some(_), _) => Vec::new(),
    };
    if let Err(message) = init_logging(&args) {
        eprintln!("supersocketd: {message}");
        return ExitCode::from(2);
    }
    for problem in activation_problems {
        tracing::warn!("{problem}");
    }
    crate::memory::start_trimming();
    if let Some(Role::Agent { name }) = &args.role {
        let (types, routes) = builder.into_parts();
        return crate::isolation::agent::main(types, routes, name);
    }
    let format = match args.log_format {
        LogFormat::Text => "text",
        LogFormat::Json => "json",
    };
    let agent_log = ["--log-format", format, "--log-level", &args.log_level]
        .map(String::from)
        .to_vec();
    let _ = crate::isolation::spawn::AGENT_LOG_ARGS.set(agent_log);
    let config = match load_config(&args, builder.types()) {
        Ok(config) => config,
        Err(errors) => {
            for error in &errors.0 {
                eprintln!("error: {error}");
            }
            return ExitCode::from(1);
        }
    };
    if args.check {
        print_line(&format!(
            "{}: OK ({} servers)",
            config.source.display_name(),
            config.servers.len()
        ));
        return ExitCode::SUCCESS;
    }
    raise_descriptor_limit(config.admin.limits.max_connections);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("supersocketd: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let builder = builder
        .admin_token_override(env_token())
        .admin_listen_override(args.admin.clone());
    let code = runtime.block_on(run(builder, config));
    // Sessions of stopped instances are gone; anything left (a stuck handler) must not delay exit.
    runtime.shutdown_background();
    code
}

fn init_logging(args: &Args) -> Result<(), String> {
    use tracing_subscriber::prelude::*;
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log_level)
        .map_err(|e| format!("invalid --log-level {:?}: {e}", args.log_level))?;
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let writer = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    // An agent's stderr is its instance's log already (the host reads it).
    let capture = args.role.is_none().then_some(crate::events::capture::InstanceLogs);
    let subscriber = tracing_subscriber::registry().with(filter).with(capture);
    match args.log_format {
        LogFormat::Text => subscriber.with(writer).init(),
        LogFormat::Json => subscriber.with(writer.json()).init(),
    }
    std::panic::set_hook(Box::new(|panic| {
        let location = panic
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let payload = panic
            .payload()
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        let thread = std::thread::current();
        tracing::error!(thread = thread.name().unwrap_or("?"), %location, "panic: {payload}");
    }));
    Ok(())
}

/// Sessions are descriptors, so the soft limit on them is raised to the hard one, as servers
/// do. The admin port holds at most `admin_connections` of them (and its listener): the rest
/// stay for the instances. An admin allowed half of them or more is worth a warning.
fn raise_descriptor_limit(admin_connections: usize) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    let limit = if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        hard
    } else {
        soft
    };
    if admin_connections as u64 >= limit / 2 {
        tracing::warn!(
            "admin.max_connections = {admin_connections} may take half of the {limit} descriptors this process may open"
        );
    }
}

/// `$SUPERSOCKET_TOKEN`, which wins over the config's token.
fn env_token() -> Option<String> {
    std::env::var("SUPERSOCKET_TOKEN").ok().filter(|t| !t.is_empty())
}

/// `--config`, else `$SUPERSOCKET_CONFIG` (both through clap), else `./supersocket.toml`, else
/// the embedded default; then the command-line and environment overrides.
fn load_config(args: &Args, types: &dyn TypeCatalog) -> Result<Config, ConfigErrors> {
    let local = PathBuf::from(crate::config::DEFAULT_FILE);
    let mut config = match (&args.config, local.exists()) {
        (Some(path), _) => Config::load(path, types)?,
        (None, true) => Config::load(&local, types)?,
        (None, false) => Config::embedded(types)?,
    };
    if let Some(admin) = &args.admin {
        config.admin.listen = admin.clone();
    }
    if let Some(token) = env_token() {
        config.admin.token = Some(token);
    }
    config.check_exposure()?;
    Ok(config)
}

/// How long the admin API may take, once the host has stopped, to finish the answers in
/// flight.
const ADMIN_DRAIN: std::time::Duration = std::time::Duration::from_secs(5);

async fn run(builder: HostBuilder, config: Config) -> ExitCode {
    let admin_addr = config.admin.listen.clone();
    let listener = match AdminListener::bind(&admin_addr).await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("supersocketd: cannot listen for the admin API on {admin_addr}: {e}");
            return ExitCode::from(1);
        }
    };
    let url = listener.url();
    let unix_path = match &admin_addr {
        AdminAddr::Unix(path) => Some(path.clone()),
        AdminAddr::Tcp(_) => None,
    };
    let limits = config.admin.limits;
    let host = builder.build(config);
    let router = admin::router(host.clone(), listener.local_addr());
    let closing = tokio_util::sync::CancellationToken::new();
    let admin = tokio::spawn(listener.serve(router, limits, closing.clone()));
    let signals = match Signals::new() {
        Ok(signals) => signals,
        Err(e) => {
            eprintln!("supersocketd: cannot install signal handlers: {e}");
            return ExitCode::from(1);
        }
    };
    crate::systemd::notify::keep_watchdog();
    // Signals are answered from now on, the boot included.
    let boot = {
        let host = host.clone();
        async move {
            host.start_autostart().await;
            tracing::info!(admin = %url, "host ready");
            print_line(&format!("supersocketd ready: admin={url}"));
            let running = host
                .instances()
                .iter()
                .filter(|i| i.state() == ServerState::Running)
                .count();
            crate::systemd::notify::ready(&format!("serving: {running} servers running, admin at {url}"));
        }
    };
    signals.serve(&host, boot).await;
    // Requests in flight get their answers (a stop asked during the shutdown included).
    closing.cancel();
    if tokio::time::timeout(ADMIN_DRAIN, admin).await.is_err() {
        tracing::warn!("admin requests still unanswered after {ADMIN_DRAIN:?}; exiting");
    }
    if let Some(path) = unix_path {
        let _ = std::fs::remove_file(path);
    }
    tracing::info!("host stopped");
    ExitCode::SUCCESS
}

/// SIGHUP: reloads the config; what could not be applied is logged.
async fn reload(host: Host) {
    tracing::info!("SIGHUP: reloading the config");
    crate::systemd::notify::reloading();
    let outcome = host.reload(false).await;
    crate::systemd::notify::ready("serving");
    match outcome {
        Ok(_) => {}
        Err(ReloadError::Invalid(errors)) => {
            for error in &errors.0 {
                tracing::error!("reload refused, nothing changed: {error}");
            }
        }
        Err(ReloadError::Empty) => {
            tracing::error!("reload refused, nothing changed: the config has no servers");
        }
        Err(ReloadError::ShuttingDown) => {}
        Err(ReloadError::Unapplied { failures, .. }) => {
            for failure in &failures {
                tracing::error!("reload could not apply a change: {failure}");
            }
        }
    }
}

/// The signals the host answers.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> std::io::Result<Self> {
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    /// Runs `boot`, and meanwhile and after waits for SIGTERM or SIGINT, then shuts the host
    /// down gracefully; a second SIGINT during the shutdown exits at once. A reload runs beside
    /// the signals, never in their way.
    async fn serve(mut self, host: &Host, boot: impl Future<Output = ()>) {
        let mut boot = std::pin::pin!(boot);
        let mut booted = false;
        loop {
            tokio::select! {
                () = &mut boot, if !booted => booted = true,
                _ = self.term.recv() => break,
                _ = self.int.recv() => break,
                _ = self.hup.recv() => drop(tokio::spawn(reload(host.clone()))),
            }
        }
        tracing::info!("shutting down (a second SIGINT exits at once)");
        crate::systemd::notify::stopping();
        let shutdown = host.shutdown();
        tokio::select! {
            () = shutdown => {}
            _ = self.int.recv() => {
                tracing::warn!("second SIGINT: exiting at once");
                std::process::exit(130);
            }
        }
    }
}

/// Prints one line on stdout. A reader that went away (`supersocketd --check | true`, a
/// supervisor that closed the pipe after the ready line) is no failure of the host: the line is
/// dropped and the host goes on, where `println!` would panic.
fn print_line(line: &str) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{line}").and_then(|()| stdout.flush());
}
