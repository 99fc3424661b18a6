//! The host's agents: what they know of the host's instances, and how they reach each other.
//!
//! - Each agent gets the whole view at its start, then a new one (states always, configs only
//!   when they changed) whenever the instances change, and acknowledges it once it routes by
//!   it. The host waits for those acknowledgements before it reports an operation done
//!   ([`Views::settle`]).
//! - Agents reach each other over socket pairs the host makes: a new agent gets one end of a
//!   pair for every agent already there with its first frame, and each of those gets the other
//!   end ([`Event::Link`]) before it hears that the new one runs. So an agent never switches a
//!   peer from the host's path to its own while messages are under way.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use supersocket_proto::agent::{Event, Op, Peer, View};
use tokio::sync::watch;
use tokio::time::Instant;

use super::link::Link;
use crate::dispatch::Directory;

/// Bound on an agent's answer to a new view.
const SYNC_DEADLINE: Duration = Duration::from_secs(2);

/// Config versions an agent has been sent, by instance.
pub(crate) type Seen = HashMap<String, u64>;

/// The host's agents.
pub(crate) struct Views {
    directory: Weak<Directory>,
    agents: Mutex<HashMap<String, Registered>>,
    /// Held from the pairing of a new agent until it is registered, so that no two agents
    /// miss each other.
    pairing: tokio::sync::Mutex<()>,
}

/// An agent the host has spawned, until its channel ends.
struct Registered {
    link: Link,
    /// The newest view version it acknowledged, once it is kept told.
    acked: Option<watch::Receiver<u64>>,
}

impl Views {
    pub(crate) fn new(directory: Weak<Directory>) -> Self {
        Self {
            directory,
            agents: Mutex::default(),
            pairing: tokio::sync::Mutex::new(()),
        }
    }

    fn agents(&self) -> std::sync::MutexGuard<'_, HashMap<String, Registered>> {
        self.agents.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The view now, with the configs that `seen` says are new.
    pub(crate) fn view(&self, seen: &mut Seen) -> View {
        view_of(&self.directory, seen)
    }

    /// Begins the admission of a new agent: hold the guard until [`register`](Self::register).
    pub(crate) async fn admission(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.pairing.lock().await
    }

    /// Pairs the new agent of `server` with every agent there is: each gets its end of a
    /// socket pair now; the new one's ends are returned, with the instances they reach, to go
    /// with its first frame. A pair that cannot be made is skipped (that peer is reached
    /// through the host).
    pub(crate) fn pair(&self, server: &str) -> (Vec<String>, Vec<OwnedFd>) {
        let (mut names, mut ends) = (Vec::new(), Vec::new());
        for (other, registered) in self.agents().iter().filter(|(name, _)| *name != server) {
            let Ok((theirs, ours)) = StdUnixStream::pair() else {
                continue;
            };
            let event = Event::Link {
                server: server.to_owned(),
            };
            registered.link.event_with_fd(event, theirs.into());
            names.push(other.clone());
            ends.push(ours.into());
        }
        (names, ends)
    }

    /// Registers the agent of `server` (replacing an earlier one) until its channel ends.
    pub(crate) fn register(self: &Arc<Self>, server: &str, link: &Link) {
        let registered = Registered {
            link: link.clone(),
            acked: None,
        };
        self.agents().insert(server.to_owned(), registered);
        let (views, server, link) = (self.clone(), server.to_owned(), link.clone());
        tokio::spawn(async move {
            link.ended().await;
            let mut agents = views.agents();
            // A newer agent of the same instance may have registered meanwhile.
            if agents.get(&server).is_some_and(|r| r.link.same(&link)) {
                agents.remove(&server);
            }
        });
    }

    /// Keeps the agent of `server` told over `link`, from the view it started with, until the
    /// link ends.
    pub(crate) fn follow(&self, server: &str, link: Link, started_with: u64, mut seen: Seen) {
        let Some(directory) = self.directory.upgrade() else {
            return;
        };
        let mut topology = directory.watch();
        drop(directory);
        let (acked, receiver) = watch::channel(started_with);
        if let Some(registered) = self.agents().get_mut(server).filter(|r| r.link.same(&link)) {
            registered.acked = Some(receiver);
        }
        let directory = self.directory.clone();
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
                let view = view_of(&directory, &mut seen);
                let version = view.version;
                match link.request(Op::Sync(view), Bytes::new(), SYNC_DEADLINE).await {
                    Ok(_) => {
                        acked.send_replace(version);
                    }
                    // It may not have taken the configs: send them all next time.
                    Err(_) => seen.clear(),
                }
            }
        });
    }

    /// Waits until every running agent has acknowledged the host's instances as they are now,
    /// for at most `within` (an agent that does not answer is being noticed by its supervisor).
    pub(crate) async fn settle(&self, within: Duration) {
        let Some(version) = self.directory.upgrade().map(|d| d.version()) else {
            return;
        };
        let agents: Vec<_> = self.agents().values().filter_map(|r| r.acked.clone()).collect();
        let deadline = Instant::now() + within;
        for mut acked in agents {
            let caught_up = tokio::time::timeout_at(deadline, acked.wait_for(|v| *v >= version));
            if caught_up.await.is_err() {
                tracing::debug!("an agent did not acknowledge view {version} in time");
            }
        }
    }
}

/// The view of the instances of `directory` now, with the configs that `seen` says are new.
fn view_of(directory: &Weak<Directory>, seen: &mut Seen) -> View {
    let Some(directory) = directory.upgrade() else {
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
