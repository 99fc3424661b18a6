//! Changes to the config through the admin API (SPEC §10). Each one is made to the config
//! file's document, read back as a whole config, checked (every error, and every listener it
//! would bind), written to disk, and only then applied. They run one at a time, each refused
//! with 412 when its caller saw an older config, and each all or nothing: one that fails while
//! it is applied is undone, the file included.

use std::hash::BuildHasher;
use std::time::Duration;

use serde_json::{Map, Value as Json};
use supersocket_proto::{ConfigCheck, PlanAction, PlanStep, ReloadReport};

use super::{Host, Plan, ReloadError};
use crate::config::{Config, ConfigErrors, Document, EditError, export};
use crate::instance::finish_detached;

/// Why a whole config without servers is refused.
const NO_SERVERS: &str = "the config has no servers (send it with ?allow_empty=true to remove them all)";

/// A change to the config.
#[derive(Debug, Clone)]
pub enum Edit {
    /// `POST /api/v1/servers`: a new server.
    Add(Map<String, Json>),
    /// `PUT /api/v1/servers/{name}`: a server's whole new config.
    Replace(String, Map<String, Json>),
    /// `DELETE /api/v1/servers/{name}`.
    Remove(String),
    /// `PUT /api/v1/config`: a whole config; one without servers only if `allow_empty`.
    Whole {
        config: Map<String, Json>,
        allow_empty: bool,
    },
    /// `start|stop?save=true`: a server's `autostart`.
    Autostart(String, bool),
}

impl Edit {
    fn make(&self, document: &mut Document, current: &Config) -> Result<(), EditError> {
        match self {
            Self::Add(server) => document.add_server(server, current),
            Self::Replace(name, server) => document.replace_server(name, server, current),
            Self::Remove(name) => document.remove_server(name, current),
            Self::Whole { config, .. } => document.replace_all(config, current),
            Self::Autostart(name, on) => document.set_autostart(name, *on, current),
        }
    }
}

/// A change made: what it did, and the `ETag` of the config it made.
#[derive(Debug, Clone)]
pub struct Changed {
    pub report: ReloadReport,
    pub etag: String,
}

/// Why a change was not made. Nothing changed, in the file or in the host.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    #[error("the host is shutting down")]
    ShuttingDown,
    /// `If-Match` names an older config.
    #[error("the config changed since {given}; read it again and redo the change")]
    Stale { given: String },
    /// The change cannot be made to this config.
    #[error(transparent)]
    Edit(EditError),
    /// The config it makes is invalid: every error.
    #[error("the config has {} error(s)", .0.0.len())]
    Invalid(ConfigErrors),
    /// Listeners it needs cannot be bound: one line each.
    #[error("{} listener change(s) cannot be bound", .0.len())]
    Unbindable(Vec<String>),
    /// The file on disk is not the one the host knows.
    #[error("{0}")]
    FileChanged(String),
    /// The file could not be written.
    #[error("the config file cannot be written: {0}")]
    Persist(String),
    /// It failed while it was applied, and was undone: one line per failure.
    #[error("{} change(s) failed; everything was put back as it was", .0.len())]
    Unapplied(Vec<String>),
}

impl Host {
    /// The config as JSON in the file's schema (secrets masked), and its `ETag`.
    pub fn config_json(&self) -> (Json, String) {
        let current = self.current();
        (export::config(&current.config), self.etag_of(current.generation))
    }

    fn etag_of(&self, generation: u64) -> String {
        format!("\"{:016x}\"", self.inner.etag_key.hash_one(generation))
    }

    /// The `ETag` of the config in force.
    pub fn etag(&self) -> String {
        self.etag_of(self.current().generation)
    }

    /// Makes a change (see the module's text). `if_match` is the `If-Match` header; `timeout`
    /// bounds the drain of what the change stops. Once begun, a change runs to its end (or is
    /// undone) even if the caller stops waiting: a client that hangs up never leaves a change
    /// half made.
    pub async fn change(
        &self,
        edit: Edit,
        if_match: Option<&str>,
        timeout: Option<Duration>,
    ) -> Result<Changed, ChangeError> {
        let host = self.clone();
        let if_match = if_match.map(str::to_owned);
        finish_detached(async move { host.change_attached(edit, if_match.as_deref(), timeout).await }).await
    }

    async fn change_attached(
        &self,
        edit: Edit,
        if_match: Option<&str>,
        timeout: Option<Duration>,
    ) -> Result<Changed, ChangeError> {
        let mut document = self.inner.writes.lock().await;
        if self.is_stopping() {
            return Err(ChangeError::ShuttingDown);
        }
        if let Some(given) = if_match
            && !etag_matches(given, &self.etag())
        {
            return Err(ChangeError::Stale {
                given: given.to_owned(),
            });
        }
        document.check_disk().map_err(ChangeError::FileChanged)?;
        let current = self.config();
        let mut draft = document.clone();
        edit.make(&mut draft, &current).map_err(ChangeError::Edit)?;
        let one_server = matches!(edit, Edit::Add(_) | Edit::Replace(..));
        let next = self.read_draft(&draft, one_server).await?;
        if next.servers.is_empty() && matches!(edit, Edit::Whole { allow_empty: false, .. }) {
            return Err(ChangeError::Edit(EditError::Body(NO_SERVERS.into())));
        }
        let plan = self.plan(&next).await;
        let unbindable = unbindable(&plan).await;
        if !unbindable.is_empty() {
            return Err(ChangeError::Unbindable(unbindable));
        }
        let written = persist(draft, document.clone()).await?;
        let previous = std::mem::replace(&mut *document, written);
        self.inner.persisted.store(true, std::sync::atomic::Ordering::Release);
        match self.apply(next, plan, timeout).await {
            // The tag of the config this change made, even if another change follows at once.
            Ok(report) => Ok(Changed {
                report,
                etag: self.etag(),
            }),
            Err(ReloadError::Unapplied { failures, .. }) => {
                tracing::error!(?failures, "a config change failed; putting everything back");
                let plan = self.plan(&current).await;
                let _ = self.apply(current, plan, timeout).await;
                let written = document.clone();
                match persist(previous, written).await {
                    Ok(previous) => *document = previous,
                    Err(e) => tracing::error!("cannot put the config file back: {e}"),
                }
                Err(ChangeError::Unapplied(failures))
            }
            Err(other) => unreachable!("applying a plan fails only with what it could not apply: {other:?}"),
        }
    }

    /// Reads a changed document as a whole config, as the file it will be, with the command
    /// line's overrides. `one_server`: the change was to one server (errors name its keys as
    /// the request gave them).
    async fn read_draft(&self, draft: &Document, one_server: bool) -> Result<Config, ChangeError> {
        let (text, json, source) = (draft.text(), draft.is_json(), draft.source());
        let types = self.inner.types.clone();
        // Type options and TLS files are checked on the disk.
        let parsed = tokio::task::spawn_blocking(move || Config::parse(&text, json, source, &types))
            .await
            .map_err(|_| ChangeError::ShuttingDown)?;
        let next = self.with_overrides(parsed.map_err(|errors| ChangeError::Invalid(as_request(errors, one_server)))?);
        self.check_exposure(&next).map_err(ChangeError::Invalid)?;
        Ok(next)
    }

    /// A dry run of a whole config: whether it would be accepted (one without servers only if
    /// `allow_empty`, as when it is applied), and what it would do to each server.
    pub async fn check(&self, config: Map<String, Json>, allow_empty: bool) -> ConfigCheck {
        let (mut draft, current) = {
            let document = self.inner.writes.lock().await;
            (document.clone(), self.config())
        };
        let invalid = |errors: Vec<String>| ConfigCheck {
            valid: false,
            errors,
            plan: Vec::new(),
        };
        if let Err(e) = draft.replace_all(&config, &current) {
            return invalid(vec![e.to_string()]);
        }
        let next = match self.read_draft(&draft, false).await {
            Ok(next) => next,
            Err(ChangeError::Invalid(errors)) => return invalid(errors.0.iter().map(ToString::to_string).collect()),
            Err(other) => return invalid(vec![other.to_string()]),
        };
        if next.servers.is_empty() && !allow_empty {
            return invalid(vec![NO_SERVERS.into()]);
        }
        let plan = self.plan(&next).await;
        let unbindable = unbindable(&plan).await;
        if !unbindable.is_empty() {
            return invalid(unbindable);
        }
        ConfigCheck {
            valid: true,
            errors: Vec::new(),
            plan: self.steps(&next, &plan),
        }
    }

    /// What `plan` does to each server: those of `next` in its order, then those it removes.
    fn steps(&self, next: &Config, plan: &Plan) -> Vec<PlanStep> {
        let sessions = |name: &str| self.instance(name).map_or(0, |i| i.info().sessions);
        let mut steps: Vec<PlanStep> = next
            .servers
            .iter()
            .map(|server| {
                let name = &server.name;
                let (action, changes) = match self.instance(name) {
                    None => (PlanAction::Add, Vec::new()),
                    Some(instance) => {
                        let changes = crate::config::changes(&instance.config(), server);
                        let action = if changes.is_empty() {
                            PlanAction::Keep
                        } else if changes.iter().all(|c| c.live) {
                            PlanAction::Update
                        } else {
                            PlanAction::Restart
                        };
                        (action, changes.iter().map(|c| c.key.to_owned()).collect())
                    }
                };
                let drains = matches!(action, PlanAction::Restart);
                PlanStep {
                    name: name.clone(),
                    action,
                    sessions: if drains { sessions(name) } else { 0 },
                    changes,
                }
            })
            .collect();
        steps.extend(plan.removed.iter().map(|instance| PlanStep {
            name: instance.name().to_owned(),
            action: PlanAction::Remove,
            sessions: instance.info().sessions,
            changes: Vec::new(),
        }));
        steps
    }
}

/// The listeners `plan` would bind that cannot be bound now, one line each: those of changed
/// servers (found by the plan) and those of added servers that start.
async fn unbindable(plan: &Plan) -> Vec<String> {
    let mut failures: Vec<String> = plan
        .failures
        .iter()
        .map(|(name, cause)| format!("{name}: {cause}"))
        .collect();
    for instance in plan.added.iter().filter(|i| i.config().autostart) {
        if let Err(cause) = super::probe(instance, &instance.config(), &plan.freed).await {
            failures.push(format!("{}: {cause}", instance.name()));
        }
    }
    failures
}

/// Errors of a config made from a request, named as the request gave them: without the lines
/// of a file not written yet, and with a server's keys from the server (`port`, not
/// `servers[3].port`) when the request was one server.
fn as_request(mut errors: ConfigErrors, one_server: bool) -> ConfigErrors {
    for error in &mut errors.0 {
        error.file = "request".into();
        error.line = None;
        if one_server
            && let Some(key) = &error.key
            && let Some(rest) = key.strip_prefix("servers[")
            && let Some((_, own)) = rest.split_once("].")
        {
            error.key = Some(own.to_owned());
        }
    }
    errors
}

/// Writes a document to its file, off the runtime, if the file still holds `previous` (checked
/// again at the last moment: a hand edit made while the change was checked is not lost).
async fn persist(mut document: Document, previous: Document) -> Result<Document, ChangeError> {
    tokio::task::spawn_blocking(move || {
        previous.check_disk().map_err(ChangeError::FileChanged)?;
        document
            .persist()
            .map(|()| document)
            .map_err(|e| ChangeError::Persist(e.to_string()))
    })
    .await
    .map_err(|_| ChangeError::ShuttingDown)?
}

/// Whether an `If-Match` header names `etag`: `*`, or a list of entity tags compared strongly
/// (a weak `W/` tag never matches, as RFC 9110 says).
fn etag_matches(header: &str, etag: &str) -> bool {
    header.split(',').map(str::trim).any(|tag| tag == "*" || tag == etag)
}

#[cfg(test)]
mod tests {
    use super::etag_matches;

    #[test]
    fn if_match_takes_a_star_or_a_list_of_strong_tags() {
        let etag = "\"00ff\"";
        assert!(etag_matches("*", etag));
        assert!(etag_matches("\"00ff\"", etag));
        assert!(etag_matches("\"a\", \"00ff\"", etag));
        assert!(!etag_matches("W/\"00ff\"", etag));
        assert!(!etag_matches("\"00fe\"", etag));
        assert!(!etag_matches("00ff", etag));
    }
}
