//! The open sessions of one instance, by id.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use super::{CloseReason, SendError, SessionId, SessionShared};

/// Open sessions of an instance; the session tasks add and remove themselves.
#[derive(Debug, Default)]
pub(crate) struct SessionRegistry {
    sessions: Mutex<HashMap<SessionId, Arc<SessionShared>>>,
}

impl SessionRegistry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SessionId, Arc<SessionShared>>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn insert(&self, session: Arc<SessionShared>) {
        self.lock().insert(session.id, session);
    }

    pub(crate) fn remove(&self, id: SessionId) {
        self.lock().remove(&id);
    }

    pub(crate) fn get(&self, id: SessionId) -> Option<Arc<SessionShared>> {
        self.lock().get(&id).cloned()
    }

    /// Calls `f` on every session, holding the registry's lock (so `f` must be quick).
    pub(crate) fn for_each(&self, mut f: impl FnMut(&SessionShared)) {
        self.lock().values().for_each(|session| f(session));
    }

    /// Up to `limit` sessions, oldest first.
    pub(crate) fn list(&self, limit: usize) -> Vec<Arc<SessionShared>> {
        let mut all: Vec<_> = self.lock().values().cloned().collect();
        all.sort_by_key(|s| s.id);
        all.truncate(limit);
        all
    }

    /// Queues a message for one session (waiting for room, see [`Outbox::push`]).
    ///
    /// [`Outbox::push`]: super::Outbox::push
    pub(crate) async fn send(&self, id: SessionId, message: Bytes) -> Result<(), SendError> {
        let session = self.get(id).ok_or(SendError::NoSession)?;
        session.outbox.push(message).await
    }

    /// Queues a message for every session; returns how many accepted it.
    pub(crate) async fn broadcast(&self, message: &Bytes) -> usize {
        let all: Vec<_> = self.lock().values().cloned().collect();
        let mut accepted = 0;
        for session in all {
            accepted += usize::from(session.outbox.push(message.clone()).await.is_ok());
        }
        accepted
    }

    /// Asks one session to close.
    pub(crate) fn close(&self, id: SessionId, reason: CloseReason) -> bool {
        self.get(id).map(|s| s.outbox.request_close(reason)).is_some()
    }
}
