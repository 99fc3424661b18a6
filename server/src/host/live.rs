//! The host's live view (SPEC §11): every second a `stats` event and a history sample per
//! running instance and a sample of what the host and its agents use, every applied config change a `config` event (instances tell their
//! changes of state themselves). A task on the host's runtime takes the samples; it ends with
//! the host.

use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use supersocket_proto::{
    ConfigEvent, HistorySample, Isolation, ReloadReport, ServerInfo, ServerState, ServerStats, StatsEvent,
};

use super::{Host, HostInner};
use crate::events::Live;
use crate::events::logs::logs;
use crate::instance::Instance;
use crate::timefmt::rfc3339;

/// How often `stats` events and history samples are taken.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);

impl Host {
    /// The live view: its journal of events and the instances' history.
    pub(crate) fn live(&self) -> Arc<Live> {
        self.inner.live.clone()
    }

    /// Starts the tasks that keep the live view, on the runtime this is called on (none
    /// outside a runtime: a host built there has no live view).
    pub(super) fn keep_live_view(&self) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(samples(Arc::downgrade(&self.inner)));
    }

    /// Most event and log streams open at once: a quarter of the admin's connections, and
    /// never more than 64 (each holds an admin connection for as long as it runs).
    pub fn max_streams(&self) -> usize {
        (self.current().config.admin.limits.max_connections / 4).clamp(1, 64)
    }

    /// `Server` of `instance`, with what its agent uses under process isolation.
    pub fn server_info(&self, instance: &Instance) -> ServerInfo {
        let mut info = instance.info();
        let usage = match info.isolation {
            Isolation::Process => info.pid.and_then(|pid| self.inner.live.usages.of(pid)),
            _ => None,
        };
        if let Some(usage) = usage {
            info.rss_bytes = Some(usage.rss_bytes);
            info.cpu_percent = usage.cpu_percent;
        }
        info
    }

    /// Tells event clients that a config change was applied.
    pub(super) fn config_event(&self, report: &ReloadReport) {
        let event = ConfigEvent {
            etag: self.etag(),
            report: report.clone(),
        };
        self.inner.live.push("config", &event);
    }
}

/// Once a second: the counters of every running instance as a `stats` event and a history
/// sample each.
async fn samples(host: Weak<HostInner>) {
    let mut ticks = tokio::time::interval(SAMPLE_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        ticks.tick().await;
        let Some(inner) = host.upgrade() else { return };
        let host = Host { inner };
        let now = SystemTime::now();
        let at = now.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let instances = host.instances();
        let live = &host.inner.live;
        let infos: Vec<ServerInfo> = instances.iter().map(|instance| instance.info()).collect();
        let agents = infos.iter().filter(|info| info.isolation == Isolation::Process);
        let pids: Vec<u32> = std::iter::once(std::process::id())
            .chain(agents.filter_map(|info| info.pid))
            .collect();
        live.usages.sample(&pids);
        let mut servers = Vec::new();
        for instance in &instances {
            let info = host.server_info(instance);
            if info.state != ServerState::Running {
                continue;
            }
            live.history.record(
                &info.name,
                HistorySample {
                    at,
                    sessions: info.sessions,
                    bytes_in: info.bytes_in,
                    bytes_out: info.bytes_out,
                    packages: info.total_packages,
                },
            );
            servers.push(ServerStats {
                name: info.name,
                sessions: info.sessions,
                bytes_in: info.bytes_in,
                bytes_out: info.bytes_out,
                packages: info.total_packages,
                rss_bytes: info.rss_bytes,
                cpu_percent: info.cpu_percent,
            });
        }
        let names: Vec<&str> = instances.iter().map(|i| i.name()).collect();
        live.keep_only(&names);
        logs().keep_only(&names);
        live.push(
            "stats",
            &StatsEvent {
                at: rfc3339(now),
                servers,
            },
        );
    }
}
