//! What the soak reads about the host's processes in /proc: resident memory, its agent
//! children, whether and how it exited.

use std::collections::BTreeMap;

/// `VmRSS` of a process, in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// The command line, arguments joined by spaces.
pub fn cmdline(pid: u32) -> Option<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args: Vec<String> = raw
        .split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    Some(args.join(" "))
}

/// The fields of `/proc/PID/stat` after the command name: `[0]` is the state, `[1]` the
/// parent's pid, `[49]` the exit code (field 52).
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// A `supersocketd agent` command line.
pub fn is_agent_cmdline(cmdline: &str) -> bool {
    cmdline.contains("supersocketd") && cmdline.split(' ').any(|a| a == "agent")
}

/// The instance an agent's command line names (`--name NAME`).
pub fn agent_name(cmdline: &str) -> String {
    let mut args = cmdline.split(' ');
    args.by_ref().find(|a| *a == "--name");
    args.next().unwrap_or("?").to_owned()
}

/// Whether `pid` is a live (not zombie) agent process.
pub fn is_live_agent(pid: u32) -> bool {
    let live = stat_fields(pid).is_some_and(|f| f.first().is_some_and(|s| s != "Z" && s != "X"));
    live && cmdline(pid).is_some_and(|c| is_agent_cmdline(&c))
}

/// Whether `pid` is a live agent whose parent is `host`: the only processes the soak signals.
pub fn is_agent_of(pid: u32, host: u32) -> bool {
    let parent = stat_fields(pid).and_then(|f| f.get(1).and_then(|p| p.parse::<u32>().ok()));
    parent == Some(host) && is_live_agent(pid)
}

/// Every live agent process that is a child of `host`, with the instance it runs.
pub fn agent_children(host: u32) -> BTreeMap<u32, String> {
    let mut agents = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return agents;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        if is_agent_of(pid, host)
            && let Some(cmdline) = cmdline(pid)
        {
            agents.insert(pid, agent_name(&cmdline));
        }
    }
    agents
}

/// Where a process is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Life {
    Running,
    /// Exited, not yet reaped: its exit code (or the signal that ended it) can still be read.
    Exited {
        code: Option<i32>,
        signal: Option<i32>,
    },
    /// Exited and reaped by its parent: how is not known here.
    Gone,
}

pub fn life(pid: u32) -> Life {
    let Some(fields) = stat_fields(pid) else {
        return Life::Gone;
    };
    match fields.first().map(String::as_str) {
        Some("Z") | Some("X") => {
            // waitpid's status word: the code in the second byte, the signal in the low bits.
            let status = fields.get(49).and_then(|v| v.parse::<i32>().ok());
            match status {
                Some(s) if s & 0x7f != 0 => Life::Exited {
                    code: None,
                    signal: Some(s & 0x7f),
                },
                Some(s) => Life::Exited {
                    code: Some(s >> 8),
                    signal: None,
                },
                None => Life::Exited {
                    code: None,
                    signal: None,
                },
            }
        }
        _ => Life::Running,
    }
}

#[cfg(test)]
mod tests {
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    use super::*;

    /// A child of this process that looks like an agent in `ps`.
    fn fake_agent(name: &str) -> std::process::Child {
        Command::new("bash")
            .args(["-c", &format!("exec -a 'supersocketd agent --name {name}' sleep 30")])
            .stdin(Stdio::null())
            .spawn()
            .expect("run bash")
    }

    fn wait_for(what: impl Fn() -> bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !what() {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        true
    }

    #[test]
    fn agents_are_found_among_the_children_and_their_end_is_read() {
        let mut agent = fake_agent("Fake");
        let pid = agent.id();
        let me = std::process::id();
        assert!(wait_for(|| agent_children(me).get(&pid).is_some_and(|n| n == "Fake")));
        assert!(is_agent_of(pid, me));
        assert!(!is_agent_of(pid, pid), "only the children of the host count");
        assert_eq!(life(pid), Life::Running);
        agent.kill().unwrap();
        // Not reaped yet: a zombie, whose end can still be read.
        assert!(wait_for(|| life(pid) != Life::Running));
        assert_eq!(
            life(pid),
            Life::Exited {
                code: None,
                signal: Some(9)
            }
        );
        assert!(!is_live_agent(pid));
        agent.wait().unwrap();
        assert_eq!(life(pid), Life::Gone);
    }

    #[test]
    fn an_exit_code_is_read_from_a_zombie() {
        let mut child = Command::new("bash").args(["-c", "exit 3"]).spawn().expect("run bash");
        let pid = child.id();
        assert!(wait_for(|| life(pid) != Life::Running));
        assert_eq!(
            life(pid),
            Life::Exited {
                code: Some(3),
                signal: None
            }
        );
        child.wait().unwrap();
    }

    #[test]
    fn resident_memory_is_read() {
        assert!(rss_kib(std::process::id()).is_some_and(|kib| kib > 0));
    }
}
