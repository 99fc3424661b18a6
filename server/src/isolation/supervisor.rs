//! The host side of a process instance. It binds the instance's listeners in the host (so ports
//! are decided here and connections wait in the backlog while an agent restarts), starts an
//! agent and hands it the sockets, and supervises it in supervisord's manner:
//!
//! - a start counts once the agent reports ready;
//! - an agent that exits, or sends nothing for [`SILENCE_LIMIT`] (it reports every
//!   [`STATS_EVERY`]: one that does not is frozen), is killed if need be and restarted by
//!   policy: the first time at once, then after a back-off that doubles; the state meanwhile is
//!   `backoff`;
//! - after `max_retries` unstable starts (runs shorter than [`STABLE_AFTER`]) it is `failed`;
//! - a stop asks the agent to drain and kills it at the bound; a stop during a back-off starts
//!   one more agent to serve (and so drain) the connections waiting in the backlog;
//! - a live change reaches the agent that runs at once, and every later one with its start
//!   ([`Handover`]).
//!
//! Starting agents is behind [`Spawn`], so that the policy can be tested with fake agents and
//! a paused clock.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use supersocket_proto::ListenerInfo;
use supersocket_proto::agent::{Counters, Event, Init, Op};
use tokio::sync::{Notify, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::handover::Handover;
use super::link::{Link, Serve};
use super::remote::{Remote, SILENCE_REPORTED};
use super::serve::{serve, server_of};
use super::spawn::{AgentProcess, Exit, Spawn};
use super::view::Views;
use crate::config::RestartPolicy;
use crate::config::ServerConfig;
use crate::dispatch::Directory;
use crate::instance::{Ending, HostLife, Instance, Launch, Run, StartError};
use crate::outcome::BoxFuture;
use crate::runtime::listener::bind_all;
use crate::session::SessionId;

/// How long an agent may take to report ready.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// An agent that ran this long was a stable start: the back-off starts over.
const STABLE_AFTER: Duration = Duration::from_secs(5);
/// Time allowed beyond a stop's drain bound for the agent to answer.
const STOP_MARGIN: Duration = Duration::from_secs(1);
/// How often agents report their counters (their sign of life).
pub(crate) const STATS_EVERY: Duration = Duration::from_millis(200);
/// An agent that sends nothing for this long is frozen: it is killed and restarted by policy.
pub(crate) const SILENCE_LIMIT: Duration = Duration::from_secs(3);

/// Starts supervised agents.
pub(crate) struct AgentLaunch {
    directory: Weak<Directory>,
    views: Arc<Views>,
    spawner: Arc<dyn Spawn>,
    life: HostLife,
}

impl AgentLaunch {
    pub(crate) fn new(directory: Weak<Directory>, views: Arc<Views>, spawner: Arc<dyn Spawn>, life: HostLife) -> Self {
        Self {
            directory,
            views,
            spawner,
            life,
        }
    }
}

impl Launch for AgentLaunch {
    /// Binds the listeners, starts the supervisor, and answers once the first agent is ready,
    /// or once the supervisor gives up.
    fn launch<'a>(&'a self, instance: &'a Arc<Instance>) -> BoxFuture<'a, Result<Box<dyn Run>, StartError>> {
        Box::pin(async move {
            let config = instance.config();
            let listeners = tokio::task::spawn_blocking({
                let config = config.clone();
                move || bind_all(&config)
            })
            .await
            .map_err(|_| StartError("the start was cut short".into()))?
            .map_err(StartError)?;
            instance.hold(listeners.iter().filter_map(|l| l.local_addr().ok()).collect());
            let (first, started) = oneshot::channel();
            let (stop, stop_asked) = watch::channel(None);
            let start_now = Arc::new(Notify::new());
            let remote = Arc::new(Remote::new(instance.name()));
            let handover = Arc::new(Handover::new(config, listeners));
            let supervisor = Supervisor {
                instance: instance.clone(),
                remote: remote.clone(),
                handover: handover.clone(),
                directory: self.directory.clone(),
                views: self.views.clone(),
                spawner: self.spawner.clone(),
                life: self.life.clone(),
                stop: stop_asked,
                start_now: start_now.clone(),
                base: Counters::default(),
            };
            let task = tokio::spawn(supervisor.run(first));
            match started.await {
                Ok(Ok(())) => Ok(Box::new(AgentRun {
                    remote,
                    handover,
                    stop,
                    start_now,
                    supervisor: task,
                }) as Box<dyn Run>),
                Ok(Err(error)) => Err(StartError(error)),
                Err(_) => Err(StartError("the supervisor ended".into())),
            }
        })
    }
}

/// What a stop asks: the drain bound, and the token that cuts it short.
type StopAsk = Option<(Duration, CancellationToken)>;

/// A supervised process instance.
struct AgentRun {
    /// Reaches the agent that runs now, if one does.
    remote: Arc<Remote>,
    handover: Arc<Handover>,
    stop: watch::Sender<StopAsk>,
    /// Ends a back-off at once (an explicit start).
    start_now: Arc<Notify>,
    supervisor: JoinHandle<()>,
}

impl Run for AgentRun {
    fn update(&mut self, config: Arc<ServerConfig>) -> BoxFuture<'_, Result<Vec<SocketAddr>, StartError>> {
        Box::pin(self.handover.change(config, &self.remote))
    }

    fn stop(self: Box<Self>, timeout: Duration, hurry: CancellationToken) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            self.stop.send_replace(Some((timeout, hurry)));
            let _ = self.supervisor.await;
        })
    }

    fn ended(&self) -> bool {
        self.supervisor.is_finished()
    }

    fn start_now(&self) {
        self.start_now.notify_one();
    }
}

struct Supervisor {
    instance: Arc<Instance>,
    /// The instance's backend for the whole run: attached to each agent in turn.
    remote: Arc<Remote>,
    /// What each agent is given.
    handover: Arc<Handover>,
    directory: Weak<Directory>,
    views: Arc<Views>,
    spawner: Arc<dyn Spawn>,
    life: HostLife,
    stop: watch::Receiver<StopAsk>,
    start_now: Arc<Notify>,
    /// Counters of the agents of this run that ended.
    base: Counters,
}

/// One agent process and its channel.
struct Agent {
    process: AgentProcess,
    link: Link,
}

/// How an agent's run ended.
enum Ended {
    Exited(Exit),
    Silent,
    StopAsked(Duration, CancellationToken),
}

/// Agents started so far by this host; each gets its own range of session ids.
static LAUNCHES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl Supervisor {
    async fn run(mut self, first: oneshot::Sender<Result<(), String>>) {
        let mut first = Some(first);
        let mut unstable = 0u32;
        // A stop asked during a back-off, or of a frozen agent: one more agent serves the
        // backlog, then stops.
        let mut stop_when_up: StopAsk = None;
        let mut replaced_to_drain = false;
        loop {
            // A stop asked while an agent starts waits for the start to end (no half-started
            // agent is left behind), then stops that agent like any other.
            let launched = {
                let mut stop = self.stop.clone();
                // One started only to drain the backlog at a stop is not announced as running.
                let launch = self.launch_agent(stop_when_up.is_none());
                tokio::pin!(launch);
                loop {
                    tokio::select! {
                        launched = &mut launch => break launched,
                        _ = stop.changed(), if stop_when_up.is_none() => stop_when_up = stop.borrow().clone(),
                    }
                }
            };
            let error = match launched {
                Ok(agent) => {
                    answer(&mut first, Ok(()));
                    let began = Instant::now();
                    let ended = match stop_when_up.take() {
                        Some((timeout, hurry)) => Ended::StopAsked(timeout, hurry),
                        None => self.watch(&agent).await,
                    };
                    let error = match ended {
                        // A frozen agent cannot drain: it is killed, and one more agent serves
                        // the connections waiting in the backlog (once).
                        Ended::StopAsked(timeout, hurry)
                            if agent.link.silent_for() >= SILENCE_REPORTED && !replaced_to_drain =>
                        {
                            agent.process.kill().await;
                            self.agent_gone(&agent);
                            replaced_to_drain = true;
                            stop_when_up = Some((timeout, hurry));
                            continue;
                        }
                        Ended::StopAsked(timeout, hurry) => {
                            match self.stop_agent(agent, timeout, hurry.clone()).await {
                                // It froze before it took its backlog: one more agent serves it.
                                Stopped::Froze if !replaced_to_drain && !hurry.is_cancelled() => {
                                    replaced_to_drain = true;
                                    stop_when_up = Some((timeout, hurry));
                                    continue;
                                }
                                _ => return,
                            }
                        }
                        Ended::Silent => {
                            agent.process.kill().await;
                            self.agent_gone(&agent);
                            format!("agent did not answer for {} s; killed", SILENCE_LIMIT.as_secs())
                        }
                        Ended::Exited(exit) => {
                            self.agent_gone(&agent);
                            // The policy as it is now: a live change applies to the next decision.
                            let again = match self.handover.config().restart.policy {
                                RestartPolicy::Always => true,
                                RestartPolicy::OnFailure => !exit.is_clean(),
                                RestartPolicy::Never => false,
                            };
                            if !again {
                                let ending = if exit.is_clean() {
                                    Ending::Stopped
                                } else {
                                    Ending::GaveUp
                                };
                                return self.instance.mark_down(ending, Some(format!("agent {exit}")));
                            }
                            format!("agent {exit}")
                        }
                    };
                    tracing::warn!(server = %self.instance.name(), "{error}");
                    if began.elapsed() >= STABLE_AFTER {
                        unstable = 0;
                    }
                    error
                }
                Err(error) => {
                    tracing::warn!(server = %self.instance.name(), "agent did not start: {error}");
                    if stop_when_up.is_some() {
                        return;
                    }
                    error
                }
            };
            let restart = self.handover.config().restart;
            unstable += 1;
            if unstable > restart.max_retries {
                let error = format!("{error}; gave up after {} unstable starts", restart.max_retries);
                self.instance.mark_down(Ending::GaveUp, Some(error.clone()));
                return answer(&mut first, Err(error));
            }
            self.instance.mark_down(Ending::Crashed, Some(error));
            // The first restart is at once; then the delay doubles from `backoff`.
            let delay = match unstable {
                1 => Duration::ZERO,
                n => restart
                    .backoff
                    .saturating_mul(1 << (n - 2).min(16))
                    .min(restart.max_backoff),
            };
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = self.start_now.notified() => {}
                _ = self.stop.changed() => stop_when_up = self.stop.borrow().clone(),
                // A first start that still retries at shutdown gives up: its stop cannot come
                // before it ends.
                () = self.life.shutting_down.cancelled(), if first.is_some() => {
                    let error = "the host is shutting down".to_owned();
                    self.instance.mark_down(Ending::GaveUp, Some(error.clone()));
                    return answer(&mut first, Err(error));
                }
            }
        }
    }

    /// Starts one agent, hands it the config and listeners and waits until it is ready; an
    /// agent that is to serve (`announce`) is paired with the others, reported running, and
    /// kept told of the other instances. A live change waits until it is attached (or gone).
    async fn launch_agent(&self, announce: bool) -> Result<Agent, String> {
        let name = self.instance.name();
        let _turn = self.handover.turn().await;
        let (config, listeners) = self
            .handover
            .for_agent()
            .map_err(|e| format!("cannot share the listeners: {e}"))?;
        let admission = self.views.admission().await;
        let mut seen = Default::default();
        let view = self.views.view(&mut seen);
        let started_with = view.version;
        let (links, ends) = if announce {
            self.views.pair(name)
        } else {
            Default::default()
        };
        let init = Init {
            server: serde_json::to_value(&*config).map_err(|e| e.to_string())?,
            session_ids_from: LAUNCHES.fetch_add(1, std::sync::atomic::Ordering::Relaxed) << 40,
            session_key: SessionId::key(),
            view,
            links,
        };
        let (process, stream) = self.spawner.spawn(name, init, &listeners, ends).await?;
        drop(listeners);
        let (ready, first_word) = oneshot::channel();
        let handler = Arc::new(FromAgent {
            directory: self.directory.clone(),
            remote: self.remote.clone(),
            base: self.base,
            ready: Mutex::new(Some(ready)),
        });
        let link = Link::start(stream, handler);
        if announce {
            self.views.register(name, &link);
        }
        drop(admission);
        let ready = tokio::select! {
            word = first_word => word.unwrap_or_else(|_| Err("the agent hung up before it was ready".into())),
            exit = process.exited() => Err(format!("agent {exit}")),
            () = tokio::time::sleep(START_TIMEOUT) => Err(format!("the agent was not ready within {} s", START_TIMEOUT.as_secs())),
            // A start under way at shutdown may go on (an agent that drains the backlog), but
            // not past the shutdown's bound.
            () = self.life.hurry.cancelled() => Err("the host's shutdown bound passed".into()),
        };
        let listeners = match ready {
            Ok(listeners) => listeners,
            Err(error) => {
                link.close();
                process.kill().await;
                return Err(error);
            }
        };
        if announce {
            self.remote.attach(Some(link.clone()));
            self.instance
                .mark_running(Some(process.pid()), listeners, self.remote.clone());
            self.views
                .follow(self.instance.name(), link.clone(), started_with, seen);
        }
        Ok(Agent { process, link })
    }

    /// Waits until the agent exits, falls silent, or a stop is asked.
    async fn watch(&mut self, agent: &Agent) -> Ended {
        tokio::select! {
            exit = agent.process.exited() => Ended::Exited(exit),
            () = silence(&agent.link) => Ended::Silent,
            _ = self.stop.changed() => match self.stop.borrow().clone() {
                Some((timeout, hurry)) => Ended::StopAsked(timeout, hurry),
                None => Ended::StopAsked(Duration::ZERO, CancellationToken::new()),
            },
        }
    }

    /// Keeps the counters of an agent that ended and detaches it.
    fn agent_gone(&mut self, agent: &Agent) {
        agent.link.close();
        self.remote.attach(None);
        self.base = self.base
            + Counters {
                sessions: 0,
                ..self.remote_counters()
            };
        self.remote.set_counters(self.base);
    }

    fn remote_counters(&self) -> Counters {
        use crate::instance::Backend;
        self.remote.stats()
    }

    /// Asks the agent to drain within `timeout` and kills it at the bound (or at once if it
    /// does not answer any more). Whether it froze before it could take its backlog, which the
    /// host's copies of the listeners then still hold.
    async fn stop_agent(&mut self, agent: Agent, timeout: Duration, hurry: CancellationToken) -> Stopped {
        let mut stopped = Stopped::Drained;
        if agent.link.silent_for() < SILENCE_REPORTED {
            let asked_at = Instant::now();
            let asked = agent.link.request(
                Op::Stop {
                    timeout_ms: timeout.as_millis() as u64,
                },
                Bytes::new(),
                timeout.saturating_add(STOP_MARGIN),
            );
            tokio::pin!(asked);
            loop {
                tokio::select! {
                    _ = &mut asked => break,
                    () = hurry.cancelled() => break,
                    _ = agent.process.exited() => break,
                    // Heard from after the ask: it takes its backlog itself, and the ports close
                    // once its copies do.
                    () = heard_since(&agent.link, asked_at), if self.handover.holds_listeners() => self.handover.let_go_of_listeners(),
                    // One that freezes while it drains is not waited for.
                    () = silence(&agent.link) => {
                        if self.handover.holds_listeners() {
                            stopped = Stopped::Froze;
                        }
                        break;
                    }
                }
            }
        }
        agent.process.kill().await;
        self.agent_gone(&agent);
        stopped
    }
}

/// How a stop of an agent ended.
enum Stopped {
    Drained,
    /// It fell silent before it was heard from again: the host's listeners still hold the
    /// connections that queued meanwhile.
    Froze,
}

/// Resolves once the agent at the other end of `link` was heard from after `since`.
async fn heard_since(link: &Link, since: Instant) {
    let mut every = tokio::time::interval(Duration::from_millis(20));
    loop {
        every.tick().await;
        if link.silent_for() < since.elapsed() {
            return;
        }
    }
}

/// Resolves once the agent at the other end of `link` has sent nothing for [`SILENCE_LIMIT`].
async fn silence(link: &Link) {
    let mut every = tokio::time::interval(SILENCE_LIMIT / 6);
    loop {
        every.tick().await;
        if link.silent_for() >= SILENCE_LIMIT {
            return;
        }
    }
}

fn answer(first: &mut Option<oneshot::Sender<Result<(), String>>>, outcome: Result<(), String>) {
    if let Some(first) = first.take() {
        let _ = first.send(outcome);
    }
}

/// What an agent says first: ready with these listeners, or why it cannot start.
type FirstWord = Result<Vec<ListenerInfo>, String>;

/// Takes what an agent sends: its first word, its counters, and its requests for the host's
/// other instances.
struct FromAgent {
    directory: Weak<Directory>,
    remote: Arc<Remote>,
    /// Counters of the earlier agents of this run.
    base: Counters,
    ready: Mutex<Option<oneshot::Sender<FirstWord>>>,
}

impl FromAgent {
    fn first_word(&self, word: FirstWord) {
        if let Some(ready) = self.ready.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = ready.send(word);
        }
    }
}

impl Serve for FromAgent {
    fn request(&self, link: &Link, id: u64, op: Op, payload: Bytes) {
        let target = server_of(&op).and_then(|name| self.directory.upgrade()?.instance(name));
        serve(link, id, op, payload, target);
    }

    fn event(&self, _: &Link, event: Event) {
        match event {
            Event::Ready { listeners } => self.first_word(Ok(listeners)),
            Event::Failed { error } => self.first_word(Err(error)),
            Event::Stats(counters) => self.remote.set_counters(self.base + counters),
            // What the host tells agents, not what they tell it.
            Event::Link { .. } | Event::Listener { .. } => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;
    use std::os::fd::OwnedFd;

    use supersocket_proto::{Isolation, ServerState};
    use tokio::sync::Notify;

    use super::super::spawn::AgentProcess;
    use super::*;
    use crate::config::{ListenerConfig, RestartConfig, ServerConfig};
    use crate::instance::{InstanceEnv, Launchers, StateHook};

    /// What a fake agent does once started.
    #[derive(Clone, Copy)]
    enum Script {
        /// Never comes up: the spawn fails.
        Fail,
        /// Reports ready, runs this long, then exits with this code.
        Exit(Duration, i32),
        /// Reports ready, then never says anything again.
        Freeze,
    }

    /// Plays agents by script, one script per spawn (the last repeats); notes when each spawn
    /// happened and what it was given: the listeners of its config and the sockets' addresses.
    struct Fake {
        scripts: Vec<Script>,
        spawns: Mutex<Vec<Instant>>,
        given: Mutex<Vec<(Vec<ListenerConfig>, Vec<SocketAddr>)>>,
    }

    impl Serve for Fake {
        fn request(&self, link: &Link, id: u64, _: Op, _: Bytes) {
            link.reply(id, Ok(serde_json::Value::Null));
        }
        fn event(&self, _: &Link, _: Event) {}
    }

    impl Spawn for Fake {
        fn spawn<'a>(
            &'a self,
            _: &'a str,
            init: Init,
            listeners: &'a [TcpListener],
            _: Vec<OwnedFd>,
        ) -> BoxFuture<'a, Result<(AgentProcess, tokio::net::UnixStream), String>> {
            Box::pin(async move {
                let config: ServerConfig = serde_json::from_value(init.server).unwrap();
                let addresses = listeners.iter().map(|l| l.local_addr().unwrap()).collect();
                self.given.lock().unwrap().push((config.listeners, addresses));
                let script = {
                    let mut spawns = self.spawns.lock().unwrap();
                    spawns.push(Instant::now());
                    self.scripts[(spawns.len() - 1).min(self.scripts.len() - 1)]
                };
                if let Script::Fail = script {
                    return Err("no agent here".into());
                }
                let (host, agent) = tokio::net::UnixStream::pair().unwrap();
                let link = Link::start(
                    agent,
                    Arc::new(Fake {
                        scripts: Vec::new(),
                        spawns: Mutex::default(),
                        given: Mutex::default(),
                    }),
                );
                link.event(Event::Ready { listeners: Vec::new() });
                let (exit, exited) = watch::channel(None);
                let kill = Arc::new(Notify::new());
                let killed = kill.clone();
                tokio::spawn(async move {
                    let talk = async {
                        let mut every = tokio::time::interval(STATS_EVERY);
                        loop {
                            every.tick().await;
                            if !matches!(script, Script::Freeze) {
                                link.event(Event::Stats(Counters::default()));
                            }
                        }
                    };
                    let ending = match script {
                        Script::Exit(after, code) => tokio::select! {
                            () = tokio::time::sleep(after) => Exit::Code(code),
                            () = killed.notified() => Exit::Signal(9),
                            () = talk => unreachable!("the reports never end"),
                        },
                        _ => tokio::select! {
                            () = killed.notified() => Exit::Signal(9),
                            () = talk => unreachable!("the reports never end"),
                        },
                    };
                    link.close();
                    exit.send_replace(Some(ending));
                });
                Ok((AgentProcess::new(4242, exited, kill), host))
            })
        }
    }

    /// An instance whose agents `fake` plays, in a directory of its own.
    fn supervised(fake: Arc<Fake>, restart: RestartConfig) -> (Arc<Instance>, Arc<Directory>) {
        supervised_on(fake, restart, Vec::new())
    }

    fn supervised_on(
        fake: Arc<Fake>,
        restart: RestartConfig,
        listeners: Vec<ListenerConfig>,
    ) -> (Arc<Instance>, Arc<Directory>) {
        let directory = Arc::new(Directory::new(Default::default(), Default::default()));
        let views = Arc::new(Views::new(Arc::downgrade(&directory)));
        let life = HostLife::default();
        let launch = AgentLaunch::new(Arc::downgrade(&directory), views, fake, life.clone());
        let env = InstanceEnv {
            launchers: Launchers {
                process: Some(Arc::new(launch)),
                ..Launchers::default()
            },
            topology: directory.topology(),
            life,
            states: StateHook::default(),
        };
        let config = ServerConfig {
            name: "Supervised".into(),
            server_type: "echo".into(),
            isolation: Isolation::Process,
            restart,
            listeners,
            ..ServerConfig::default()
        };
        let instance = Arc::new(Instance::new(config, env));
        directory.replace(vec![instance.clone()]);
        (instance, directory)
    }

    fn fake(scripts: Vec<Script>) -> Arc<Fake> {
        Arc::new(Fake {
            scripts,
            spawns: Mutex::default(),
            given: Mutex::default(),
        })
    }

    /// The pauses between one spawn and the next.
    fn gaps(fake: &Fake) -> Vec<Duration> {
        let spawns = fake.spawns.lock().unwrap();
        spawns.windows(2).map(|w| w[1] - w[0]).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn a_start_that_always_fails_backs_off_then_gives_up() {
        let agents = fake(vec![Script::Fail]);
        let restart = RestartConfig {
            max_retries: 3,
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(150),
            ..RestartConfig::default()
        };
        let (instance, _directory) = supervised(agents.clone(), restart);
        let error = instance.start().await.unwrap_err();
        assert!(error.0.contains("gave up after 3 unstable starts"), "{error}");
        // At once, then the back-off doubles up to its bound.
        let ms = Duration::from_millis;
        assert_eq!(gaps(&agents), [ms(0), ms(100), ms(150)]);
        let info = instance.info();
        assert_eq!((info.state, info.restarts), (ServerState::Failed, 3));
    }

    #[tokio::test(start_paused = true)]
    async fn a_stable_agent_that_crashes_is_restarted_at_once_and_the_count_starts_over() {
        let ms = Duration::from_millis;
        // Two stable runs, then crashes a moment after each start.
        let agents = fake(vec![
            Script::Exit(STABLE_AFTER * 2, 1),
            Script::Exit(STABLE_AFTER * 2, 1),
            Script::Exit(ms(10), 1),
        ]);
        let restart = RestartConfig {
            max_retries: 2,
            backoff: ms(100),
            ..RestartConfig::default()
        };
        let (instance, _directory) = supervised(agents.clone(), restart);
        instance.start().await.unwrap();
        let began = Instant::now();
        while instance.state() != ServerState::Failed {
            assert!(began.elapsed() < Duration::from_secs(60), "it gives up");
            tokio::time::sleep(ms(10)).await;
        }
        // Each stable run lasted its time and its crash was followed at once by the next
        // start (the count of unstable starts began again); the start that crashed at once
        // waited `backoff`; the next crash was the second unstable start in a row: it gave up.
        assert_eq!(gaps(&agents), [STABLE_AFTER * 2, STABLE_AFTER * 2, ms(10) + ms(100)]);
        assert_eq!(instance.info().restarts, 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_agent_is_killed_after_the_silence_limit_and_replaced() {
        let agents = fake(vec![Script::Freeze, Script::Exit(Duration::from_secs(3600), 0)]);
        let (instance, _directory) = supervised(agents.clone(), RestartConfig::default());
        instance.start().await.unwrap();
        let began = Instant::now();
        while agents.spawns.lock().unwrap().len() < 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let noticed = began.elapsed();
        assert!(
            noticed >= SILENCE_LIMIT && noticed <= SILENCE_LIMIT + SILENCE_LIMIT / 6 + Duration::from_millis(50),
            "noticed after {noticed:?}"
        );
        while instance.state() != ServerState::Running {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let info = instance.info();
        assert_eq!(info.restarts, 1);
        assert!(info.last_error.unwrap().contains("did not answer"));
        instance.stop(Duration::from_secs(1)).await;
        assert_eq!(instance.state(), ServerState::Stopped);
    }

    #[tokio::test(start_paused = true)]
    async fn after_a_live_move_of_the_listeners_every_new_agent_is_given_the_new_set() {
        let listener = |ip: [u8; 4]| ListenerConfig {
            ip: ip.into(),
            port: 0,
            backlog: 16,
            fd_name: None,
        };
        // Each agent crashes a minute after its start and is restarted.
        let agents = fake(vec![Script::Exit(Duration::from_secs(60), 1)]);
        let restart = RestartConfig {
            max_retries: 1000,
            ..RestartConfig::default()
        };
        let (instance, _directory) = supervised_on(agents.clone(), restart, vec![listener([127, 0, 0, 1])]);
        instance.start().await.unwrap();
        let moved = ServerConfig {
            listeners: vec![listener([127, 0, 0, 2])],
            ..(*instance.config()).clone()
        };
        instance.update(moved.clone()).await.unwrap();
        let held = instance.held();
        assert_eq!(held.len(), 1);
        assert_eq!(held[0].ip(), std::net::IpAddr::from([127, 0, 0, 2]));
        // Wait for an agent started after the change (whether a crash came during it or not).
        let before = agents.given.lock().unwrap().len();
        while agents.given.lock().unwrap().len() < before + 1 {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let given = agents.given.lock().unwrap();
        assert!(
            given[before..]
                .iter()
                .all(|agent| *agent == (moved.listeners.clone(), held.clone()))
        );
    }
}
