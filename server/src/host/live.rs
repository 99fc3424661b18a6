//! The host's live view (SPEC §11): every change of an instance's state becomes a `state` event,
//! every second a `stats` event and a history sample per running instance, every applied config
//! change a `config` event. Two tasks on the host's runtime keep it; they end with the host.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use supersocket_proto::{ConfigEvent, HistorySample, ReloadReport, ServerState, ServerStats, StateEvent, StatsEvent};

use super::{Host, HostInner};
use crate::events::Live;
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
        let host = Arc::downgrade(&self.inner);
        let topology = self.inner.env.topology.subscribe();
        runtime.spawn(states(host.clone(), topology));
        runtime.spawn(samples(host));
    }

    /// Tells event clients that a config change was applied.
    pub(super) fn config_event(&self, report: &ReloadReport) {
        let event = ConfigEvent {
            etag: self.etag(),
            report: report.clone(),
        };
        push(&self.inner.live, "config", &event);
    }
}

fn push(live: &Live, kind: &'static str, data: &impl serde::Serialize) {
    if let Ok(json) = serde_json::to_string(data) {
        live.journal.push(kind, json);
    }
}

/// A `state` event for each instance whose state (or error) differs from what was last told,
/// whenever an instance starts, stops or fails.
async fn states(host: Weak<HostInner>, mut topology: tokio::sync::watch::Receiver<u64>) {
    let mut told: HashMap<String, (ServerState, Option<String>)> = HashMap::new();
    loop {
        let Some(inner) = host.upgrade() else { return };
        let host = Host { inner };
        for instance in host.instances() {
            let info = instance.info();
            let now = (info.state, info.last_error.clone());
            if told.get(&info.name) != Some(&now) {
                let event = StateEvent {
                    name: info.name.clone(),
                    state: info.state,
                    last_error: info.last_error,
                };
                push(&host.inner.live, "state", &event);
                told.insert(info.name, now);
            }
        }
        drop(host);
        if topology.changed().await.is_err() {
            return;
        }
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
        let mut servers = Vec::new();
        for instance in &instances {
            let info = instance.info();
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
            });
        }
        let names: Vec<&str> = instances.iter().map(|i| i.name()).collect();
        live.history.keep_only(&names);
        push(
            live,
            "stats",
            &StatsEvent {
                at: rfc3339(now),
                servers,
            },
        );
    }
}
