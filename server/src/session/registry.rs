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

    /// Up to `limit` sessions, oldest first.
    pub(crate) fn list(&self, limit: usize) -> Vec<Arc<SessionShared>> {
        let mut all: Vec<_> = self.lock().values().cloned().collect();
        all.sort_by_key(|s| s.id);
        all.truncate(limit);
        all
    }

    /// Queues a message for one session.
    pub(crate) fn send(&self, id: SessionId, message: Bytes) -> Result<(), SendError> {
        self.get(id).ok_or(SendError::NoSession)?.outbox.push(message)
    }

    /// Queues a message for every session; returns how many accepted it.
    pub(crate) fn broadcast(&self, message: &Bytes) -> usize {
        let all: Vec<_> = self.lock().values().cloned().collect();
        all.iter().filter(|s| s.outbox.push(message.clone()).is_ok()).count()
    }

    /// Asks one session to close.
    pub(crate) fn close(&self, id: SessionId, reason: CloseReason) -> bool {
        self.get(id).map(|s| s.outbox.request_close(reason)).is_some()
    }
}
