//! The open sessions of one run of an instance, by id.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use supersocket_proto::SessionInfo;

use super::{CloseReason, SessionEntry, SessionId};
use crate::outcome::{OpError, Pending};

/// Open sessions of a run; the session tasks add and remove themselves.
#[derive(Debug, Default)]
pub(crate) struct SessionRegistry {
    sessions: Mutex<HashMap<SessionId, Arc<SessionEntry>>>,
}

impl SessionRegistry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SessionId, Arc<SessionEntry>>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn insert(&self, session: Arc<SessionEntry>) {
        self.lock().insert(session.id, session);
    }

    pub(crate) fn remove(&self, id: SessionId) {
        self.lock().remove(&id);
    }

    fn get(&self, id: SessionId) -> Option<Arc<SessionEntry>> {
        self.lock().get(&id).cloned()
    }

    /// Calls `f` on every session, holding the registry's lock (so `f` must be quick).
    pub(crate) fn for_each(&self, mut f: impl FnMut(&SessionEntry)) {
        self.lock().values().for_each(|session| f(session));
    }

    /// Up to `limit` sessions, oldest first.
    pub(crate) fn list(&self, limit: usize) -> Vec<SessionInfo> {
        let mut all: Vec<_> = self.lock().values().cloned().collect();
        all.sort_by_key(|s| s.started());
        all.iter().take(limit).map(|s| s.info()).collect()
    }

    /// Submits a message to one session (see [`SessionEntry::submit`]).
    pub(crate) fn send(&self, id: SessionId, message: Bytes) -> Pending<()> {
        match self.get(id) {
            Some(session) => session.submit(message),
            None => Pending::ready(Err(OpError::NoSession)),
        }
    }

    /// Submits a message to every session; the outcome is how many took it.
    pub(crate) fn broadcast(&self, message: &Bytes) -> Pending<usize> {
        let all: Vec<_> = self.lock().values().cloned().collect();
        submit_to_all(all, message)
    }

    /// Submits a message to each of `ids` that is open; the outcome is how many took it.
    pub(crate) fn multicast(&self, ids: &[SessionId], message: &Bytes) -> Pending<usize> {
        let some: Vec<_> = {
            let sessions = self.lock();
            ids.iter().filter_map(|id| sessions.get(id).cloned()).collect()
        };
        submit_to_all(some, message)
    }

    /// Asks one session to close.
    pub(crate) fn close(&self, id: SessionId, reason: CloseReason) -> Result<(), OpError> {
        let session = self.get(id).ok_or(OpError::NoSession)?;
        session.outbox.close(reason);
        Ok(())
    }
}

/// Submits a message to each of `sessions`; the outcome is how many took it.
fn submit_to_all(sessions: Vec<Arc<SessionEntry>>, message: &Bytes) -> Pending<usize> {
    let mut accepted = 0;
    let mut waiting = Vec::new();
    for session in sessions {
        match session.submit(message.clone()).now() {
            Ok(outcome) => accepted += usize::from(outcome.is_ok()),
            Err(submitted) => waiting.push(submitted),
        }
    }
    if waiting.is_empty() {
        return Pending::ready(Ok(accepted));
    }
    Pending::waiting(async move {
        for submitted in waiting {
            accepted += usize::from(submitted.await.is_ok());
        }
        Ok(accepted)
    })
}
