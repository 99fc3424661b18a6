//! The host's instances as agents see them, and keeping every running agent told: each agent
//! gets the whole view at its start, then a new one (states always, configs only when they
//! changed) whenever the instances change, and acknowledges it once it routes by it. The host
//! waits for those acknowledgements before it reports an operation done ([`Views::settle`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use supersocket_proto::agent::{Op, Peer, View};
use tokio::sync::watch;
use tokio::time::Instant;

use super::link::Link;
use crate::dispatch::Directory;

/// Bound on an agent's answer to a new view.
const SYNC_DEADLINE: Duration = Duration::from_secs(2);

/// Config versions an agent has been sent, by instance.
pub(crate) type Seen = HashMap<String, u64>;

/// The views of every running agent.
pub(crate) struct Views {
    directory: Weak<Directory>,
    /// The newest view version each running agent acknowledged, by instance.
    acked: Mutex<HashMap<String, watch::Receiver<u64>>>,
}

impl Views {
    pub(crate) fn new(directory: Weak<Directory>) -> Self {
        Self {
            directory,
            acked: Mutex::default(),
        }
    }

    /// The view now, with the configs that `seen` says are new.
    pub(crate) fn view(&self, seen: &mut Seen) -> View {
        let Some(directory) = self.directory.upgrade() else {
            return View {
                version: 0,
                instances: Vec::new(),
            };
        };
        // Read first: a change while the view is made is then sent again.
        let version = directory.version();
        let instances = directory
            .instances()
            .iter()
            .map(|instance| {
                let config_version = instance.config_version();
                let new = seen.insert(instance.name().to_owned(), config_version) != Some(config_version);
                Peer {
                    info: instance.info(),
                    config: new.then(|| serde_json::to_value(&*instance.config()).unwrap_or_default()),
                }
            })
            .collect();
        View { version, instances }
    }

    /// Keeps the agent of `server` told over `link` from the view it started with, until the
    /// link ends.
    pub(crate) fn follow(self: &Arc<Self>, server: &str, link: Link, started_with: u64, mut seen: Seen) {
        let Some(directory) = self.directory.upgrade() else {
            return;
        };
        let mut topology = directory.watch();
        drop(directory);
        let (acked, receiver) = watch::channel(started_with);
        let mine = receiver.clone();
        self.lock().insert(server.to_owned(), receiver);
        let (views, server) = (self.clone(), server.to_owned());
        // Changes since the view it started with are sent at once.
        let mut behind = *topology.borrow_and_update() != started_with;
        tokio::spawn(async move {
            loop {
                if !behind {
                    tokio::select! {
                        changed = topology.changed() => if changed.is_err() { break },
                        () = link.ended() => break,
                    }
                }
                behind = false;
                let view = views.view(&mut seen);
                let version = view.version;
                match link.request(Op::Sync(view), Bytes::new(), SYNC_DEADLINE).await {
                    Ok(_) => {
                        acked.send_replace(version);
                    }
                    // It may not have taken the configs: send them all next time.
                    Err(_) => seen.clear(),
                }
            }
            let mut acked = views.lock();
            // A newer agent of the same instance may have registered meanwhile.
            if acked.get(&server).is_some_and(|r| r.same_channel(&mine)) {
                acked.remove(&server);
            }
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, watch::Receiver<u64>>> {
        self.acked.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until every running agent has acknowledged the host's instances as they are now,
    /// for at most `within` (an agent that does not answer is being noticed by its supervisor).
    pub(crate) async fn settle(&self, within: Duration) {
        let Some(version) = self.directory.upgrade().map(|d| d.version()) else {
            return;
        };
        let agents: Vec<_> = self.lock().values().cloned().collect();
        let deadline = Instant::now() + within;
        for mut acked in agents {
            let caught_up = tokio::time::timeout_at(deadline, acked.wait_for(|v| *v >= version));
            if caught_up.await.is_err() {
                tracing::debug!("an agent did not acknowledge view {version} in time");
            }
        }
    }
}
