//! What processes use: the resident memory and the CPU of the host and of its agents, read
//! from `/proc` once a second (CPU as the share of one core over the last second, as `top` and
//! `pm2 list` show it, so a busy process with many threads may pass 100).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

/// One process's usage as last sampled.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Usage {
    pub rss_bytes: u64,
    /// `None` until two samples are a second apart.
    pub cpu_percent: Option<f64>,
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    usage: Usage,
    /// User and system CPU time, in clock ticks, and when it was read.
    ticks: u64,
    at: Instant,
}

/// The last sample of each process followed.
#[derive(Default)]
pub struct Usages {
    samples: Mutex<HashMap<u32, Sample>>,
}

impl Usages {
    /// Samples `pids` and forgets every other process.
    pub fn sample(&self, pids: &[u32]) {
        let per_second = clock_ticks_per_second();
        let page = page_size();
        let mut samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        samples.retain(|pid, _| pids.contains(pid));
        for &pid in pids {
            let Some((ticks, rss_pages)) = read_stat(pid) else {
                samples.remove(&pid);
                continue;
            };
            let at = Instant::now();
            let cpu_percent = samples.get(&pid).and_then(|before| {
                let elapsed = at.duration_since(before.at).as_secs_f64();
                let used = ticks.saturating_sub(before.ticks) as f64 / per_second;
                (elapsed > 0.0).then(|| (used / elapsed * 1000.0).round() / 10.0)
            });
            let usage = Usage {
                rss_bytes: rss_pages * page,
                cpu_percent,
            };
            samples.insert(pid, Sample { usage, ticks, at });
        }
    }

    /// The last usage sampled of `pid`.
    pub fn of(&self, pid: u32) -> Option<Usage> {
        let samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        samples.get(&pid).map(|sample| sample.usage)
    }
}

/// User plus system CPU ticks and resident pages of `pid`, from `/proc/PID/stat`.
fn read_stat(pid: u32) -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&stat)
}

fn parse_stat(stat: &str) -> Option<(u64, u64)> {
    // The command name, in parentheses, may hold spaces and parentheses: fields follow the last.
    let fields: Vec<&str> = stat.get(stat.rfind(')')? + 1..)?.split_whitespace().collect();
    // Counted from field 3 (the state): utime is field 14, stime 15, rss 24.
    let number = |field: usize| fields.get(field - 3)?.parse::<u64>().ok();
    Some((number(14)? + number(15)?, number(24)?))
}

fn clock_ticks_per_second() -> f64 {
    use nix::unistd::{SysconfVar, sysconf};
    sysconf(SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .map_or(100.0, |ticks| ticks as f64)
}

fn page_size() -> u64 {
    use nix::unistd::{SysconfVar, sysconf};
    sysconf(SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .map_or(4096, |size| size as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_follow_the_last_parenthesis() {
        let stat =
            "42 (a (b) c) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 4 0 100 1000000 300 18446744073709551615";
        assert_eq!(parse_stat(stat), Some((300, 300)));
        assert_eq!(parse_stat("42 (x) S 1"), None);
    }

    #[test]
    fn this_process_is_sampled_and_others_forgotten() {
        let usages = Usages::default();
        let me = std::process::id();
        usages.sample(&[me]);
        let first = usages.of(me).unwrap();
        assert!(first.rss_bytes > 1024 * 1024, "{first:?}");
        assert_eq!(first.cpu_percent, None);
        usages.sample(&[me]);
        assert!(usages.of(me).unwrap().cpu_percent.is_some());
        usages.sample(&[]);
        assert_eq!(usages.of(me), None);
    }
}
