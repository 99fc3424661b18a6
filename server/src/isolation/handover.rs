//! What each agent of a process instance's run is given: the config it serves and the host's
//! copies of its listening sockets. The host binds them and keeps them (so connections wait
//! in the backlog while an agent restarts); a live change binds the new ones here, hands them
//! with the new config to the agent that runs, and from then on gives every new agent the new
//! set. A launch and a change take turns, so an agent never starts on what a change is
//! replacing, nor misses a change made while it started.

use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use supersocket_proto::agent::{Event, Op};

use super::link::Link;
use super::remote::Remote;
use crate::config::ServerConfig;
use crate::instance::{REQUEST_DEADLINE, StartError};
use crate::outcome::OpError;
use crate::runtime::listener::{Move, bind_all};

/// The config and listening sockets of a run of a process instance.
pub(crate) struct Handover {
    /// Held by a launch from the moment it takes what its agent serves until that agent is
    /// attached (or gone), and by a change until the agent that runs has taken it.
    turn: tokio::sync::Mutex<()>,
    serving: Mutex<Serving>,
}

struct Serving {
    config: Arc<ServerConfig>,
    /// The host's copies, in the order of `config`'s listeners (none once a stop let go).
    listeners: Vec<TcpListener>,
}

impl Handover {
    pub(crate) fn new(config: Arc<ServerConfig>, listeners: Vec<TcpListener>) -> Self {
        Self {
            turn: tokio::sync::Mutex::new(()),
            serving: Mutex::new(Serving { config, listeners }),
        }
    }

    fn serving(&self) -> MutexGuard<'_, Serving> {
        self.serving.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits for the turn of a launch; it lasts while the guard is held.
    pub(crate) async fn turn(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.turn.lock().await
    }

    /// The config the run serves now.
    pub(crate) fn config(&self) -> Arc<ServerConfig> {
        self.serving().config.clone()
    }

    /// What an agent about to start is given: the config and copies of the sockets.
    pub(crate) fn for_agent(&self) -> std::io::Result<(Arc<ServerConfig>, Vec<TcpListener>)> {
        let serving = self.serving();
        let listeners = serving
            .listeners
            .iter()
            .map(TcpListener::try_clone)
            .collect::<Result<_, _>>()?;
        Ok((serving.config.clone(), listeners))
    }

    pub(crate) fn holds_listeners(&self) -> bool {
        !self.serving().listeners.is_empty()
    }

    /// Closes the host's copies (at a stop, once the agent takes the backlog itself).
    pub(crate) fn let_go_of_listeners(&self) {
        self.serving().listeners.clear();
    }

    /// Takes a config whose every change is live: binds the listeners it adds (all of them,
    /// or nothing changes), hands them and the config to the agent that runs (through
    /// `remote`), then keeps them for later agents and lets go of the host's copies of the
    /// listeners it drops (the agent closes its own once it has taken their backlog). Answers
    /// the addresses held now.
    ///
    /// An agent that refuses the change leaves everything as it was. One that does not answer
    /// (it died, or froze and is being replaced) is taken to have it: the next agent is given it.
    pub(crate) async fn change(
        &self,
        config: Arc<ServerConfig>,
        remote: &Remote,
    ) -> Result<Vec<SocketAddr>, StartError> {
        let _turn = self.turn.lock().await;
        let current = self.config();
        let plan = Move::new(&current.listeners, &config);
        let to_bind = plan.to_bind();
        let bound = tokio::task::spawn_blocking(move || bind_all(&to_bind))
            .await
            .map_err(|_| StartError("the bind was cut short".into()))?
            .map_err(StartError)?;
        if let Some(link) = remote.link() {
            tell(&link, &config, &bound).await?;
        }
        let mut serving = self.serving();
        let (listeners, _gone) = plan.arrange(std::mem::take(&mut serving.listeners), bound);
        serving.listeners = listeners.into_iter().map(|(socket, _)| socket).collect();
        serving.config = config;
        Ok(serving.listeners.iter().filter_map(|l| l.local_addr().ok()).collect())
    }
}

/// Hands the agent at the other end of `link` the sockets `bound` for its new listeners, in
/// order, then asks it to take `config`. An error: it did not take the change, nothing changed.
async fn tell(link: &Link, config: &ServerConfig, bound: &[TcpListener]) -> Result<(), StartError> {
    let copies = bound
        .iter()
        .map(TcpListener::try_clone)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| StartError(format!("cannot hand over a listener: {e}")))?;
    let json = serde_json::to_value(config).map_err(|e| StartError(e.to_string()))?;
    for copy in copies {
        let server = config.name.clone();
        link.event_with_fd(Event::Listener { server }, copy.into());
    }
    match link
        .request(Op::Update { config: json }, Bytes::new(), REQUEST_DEADLINE)
        .await
    {
        Err(OpError::Refused(cause)) => Err(StartError(format!("the agent cannot take the change: {cause}"))),
        // Taken; or not answered, and then its agent is being replaced by one given the change.
        Ok(_) | Err(_) => Ok(()),
    }
}
