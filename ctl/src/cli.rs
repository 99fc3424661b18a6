//! The command line of `supersocket` (SPEC §7).

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Controls a SuperSocket host through its admin API.
#[derive(Debug, Parser)]
#[command(name = "supersocket", version, about, propagate_version = true)]
pub struct Cli {
    /// Admin API of the host: http://IP:PORT or unix:/path.
    #[arg(
        long,
        env = "SUPERSOCKET_URL",
        default_value = "http://127.0.0.1:2020",
        global = true
    )]
    pub url: String,
    /// Bearer token of the admin API.
    #[arg(long, env = "SUPERSOCKET_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// Tables for people, or the API's JSON unchanged for scripts.
    #[arg(long, value_enum, default_value_t = Output::Table, global = true)]
    pub output: Output,
    /// Longest wait for one answer of the host (e.g. 500ms, 30s, 2m); give it before the
    /// command (after `stop` the same flag is the drain bound).
    #[arg(long = "timeout", id = "request_timeout", value_name = "DUR", default_value = "60s", value_parser = supersocket_proto::parse_duration)]
    pub request_timeout: std::time::Duration,
    #[command(subcommand)]
    pub command: Command,
}

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Aligned columns.
    Table,
    /// The API's JSON.
    Json,
}

/// What to do.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// List every server instance.
    #[command(visible_alias = "ls")]
    List,
    /// Host summary and servers, or one server in detail.
    Status {
        /// A server to show in detail.
        name: Option<String>,
    },
    /// Start servers.
    Start {
        #[command(flatten)]
        targets: Targets,
        /// Also record `autostart = true` in the config, so they start with the host.
        #[arg(long)]
        save: bool,
    },
    /// Stop servers (sessions drain first).
    Stop {
        #[command(flatten)]
        targets: Targets,
        /// Bound on draining sessions (default: the host's shutdown_timeout).
        #[arg(long = "timeout", id = "drain_timeout", value_name = "DUR", value_parser = supersocket_proto::parse_duration)]
        drain_timeout: Option<std::time::Duration>,
        /// Also record `autostart = false` in the config, so they stay stopped at the next start.
        #[arg(long)]
        save: bool,
    },
    /// Restart servers.
    Restart {
        #[command(flatten)]
        targets: Targets,
    },
    /// List the open sessions of a server.
    Sessions {
        /// The server.
        name: String,
        /// Most sessions to list.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
    },
    /// Send a line of text to one session.
    Send {
        /// The server.
        name: String,
        /// The session id (see `sessions`).
        session: String,
        /// The text; a line end is added.
        text: String,
    },
    /// Close one session.
    Kick {
        /// The server.
        name: String,
        /// The session id.
        session: String,
    },
    /// Which instance of a type the dispatcher picks for a key.
    Route {
        /// The server type.
        server_type: String,
        /// The routing key.
        key: String,
    },
    /// Reload the host's config file.
    Reload,
    /// Add a server from a file of its config (TOML, or JSON for a `.json` file; `-` reads
    /// standard input).
    Add {
        /// The server's config.
        #[arg(short = 'f', long = "file", value_name = "FILE")]
        file: String,
    },
    /// Apply a whole config: shows what it does to each server, then does it.
    Apply {
        /// The config (TOML, or JSON for a `.json` file; `-` reads standard input).
        #[arg(short = 'f', long = "file", value_name = "FILE")]
        file: String,
        /// Only show what it would do.
        #[arg(long)]
        dry_run: bool,
    },
    /// Remove a server (its sessions drain first).
    Remove {
        /// The server.
        name: String,
        /// Bound on draining sessions (default: the host's shutdown_timeout).
        #[arg(long = "timeout", id = "drain_timeout", value_name = "DUR", value_parser = supersocket_proto::parse_duration)]
        drain_timeout: Option<std::time::Duration>,
    },
    /// The host's config: print it, or check a file against it.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// An instance's recent log lines (its agent's stderr included).
    Logs {
        /// The server.
        name: String,
        /// Keep printing new lines as they come.
        #[arg(short, long)]
        follow: bool,
        /// Only lines of the last DUR (e.g. 30s, 10m).
        #[arg(long, value_name = "DUR", value_parser = supersocket_proto::parse_duration)]
        since: Option<std::time::Duration>,
        /// Most lines to print first.
        #[arg(short = 'n', long, default_value_t = 100)]
        lines: usize,
    },
    /// A live table of the instances: states, sessions, rates (lines, when not a terminal).
    Watch {
        /// Stop after this many updates of the counters (one a second).
        #[arg(long, value_name = "N")]
        count: Option<u64>,
    },
    /// Readiness: exit 0 when ready, 1 when not.
    Health {
        /// Poll until ready or until this much time has passed.
        #[arg(long, value_parser = supersocket_proto::parse_duration)]
        wait: Option<std::time::Duration>,
    },
    /// Print a shell completion script.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

/// What `config` does.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the config in force (TOML; secrets as "***").
    Get,
    /// Check a whole config: its errors, or what applying it would do to each server.
    Check {
        /// The config (TOML, or JSON for a `.json` file; `-` reads standard input).
        file: String,
    },
}

/// Servers named, all of them, or those of a type and with labels.
#[derive(Debug, Args)]
#[group(required = true, multiple = true)]
pub struct Targets {
    /// Server names.
    #[arg(conflicts_with_all = ["all", "server_type", "labels"])]
    pub names: Vec<String>,
    /// Every server, in config order.
    #[arg(long, conflicts_with_all = ["server_type", "labels"])]
    pub all: bool,
    /// Every server of this type.
    #[arg(long = "type", id = "server_type", value_name = "TYPE")]
    pub server_type: Option<String>,
    /// Every server with this label (repeat: every one must match).
    #[arg(long = "label", id = "labels", value_name = "KEY=VALUE", value_parser = label)]
    pub labels: Vec<(String, String)>,
}

fn label(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("{text:?} is not KEY=VALUE")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The targets of a `start`, `stop` or `restart` command line.
    fn targets(args: &[&str]) -> Result<Targets, clap::error::ErrorKind> {
        let cli = Cli::try_parse_from(["supersocket"].iter().chain(args)).map_err(|e| e.kind())?;
        match cli.command {
            Command::Start { targets, .. } | Command::Stop { targets, .. } | Command::Restart { targets } => {
                Ok(targets)
            }
            other => panic!("not a start, stop or restart: {other:?}"),
        }
    }

    #[test]
    fn a_label_is_split_at_its_first_equals_sign() {
        assert_eq!(label("team=chat"), Ok(("team".into(), "chat".into())));
        assert_eq!(label("expr=a=b"), Ok(("expr".into(), "a=b".into())));
        assert_eq!(label("empty="), Ok(("empty".into(), String::new())));
        assert_eq!(label("team"), Err("\"team\" is not KEY=VALUE".into()));
        assert!(label("=chat").is_err(), "a label needs a key");
    }

    #[test]
    fn type_and_repeated_labels_select_together() {
        let chosen = targets(&[
            "stop",
            "--type",
            "command",
            "--label",
            "team=chat",
            "--label",
            "tier=edge",
        ])
        .unwrap();
        assert_eq!(chosen.server_type.as_deref(), Some("command"));
        assert_eq!(
            chosen.labels,
            [("team".into(), "chat".into()), ("tier".into(), "edge".into())]
        );
        assert!(chosen.names.is_empty() && !chosen.all);
        assert_eq!(targets(&["restart", "A", "B"]).unwrap().names, ["A", "B"]);
        assert!(targets(&["start", "--all"]).unwrap().all);
    }

    #[test]
    fn names_all_and_selectors_exclude_each_other() {
        use clap::error::ErrorKind::{ArgumentConflict, MissingRequiredArgument};
        for args in [
            &["start", "A", "--all"][..],
            &["start", "A", "--type", "echo"],
            &["stop", "A", "--label", "team=chat"],
            &["restart", "--all", "--type", "echo"],
            &["restart", "--all", "--label", "team=chat"],
        ] {
            assert_eq!(targets(args).err(), Some(ArgumentConflict), "{args:?}");
        }
        assert_eq!(targets(&["start"]).err(), Some(MissingRequiredArgument));
        assert_eq!(
            targets(&["start", "--label", "team"]).err(),
            Some(clap::error::ErrorKind::ValueValidation)
        );
    }
}
