//! The journal of live events: a bounded ring that the host appends to and any number of
//! readers follow at their own pace. Appending never waits for a reader; a reader that falls
//! so far behind that the ring has dropped what it has not read yet is told so, and ends.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

/// Most events kept for readers that reconnect.
const MAX_EVENTS: usize = 1024;
/// Most bytes of event data kept (the oldest go first beyond either bound).
const MAX_BYTES: usize = 2 * 1024 * 1024;

/// One event: its id (growing by one), its kind, and its data (JSON).
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub id: u64,
    pub kind: &'static str,
    pub data: Arc<str>,
}

/// A reader asked for events the ring no longer holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Behind {
    /// The oldest id still kept.
    pub oldest: u64,
}

#[derive(Default)]
struct Ring {
    entries: VecDeque<Entry>,
    bytes: usize,
    /// The id the next event gets (ids start at 1).
    next: u64,
}

/// The journal.
pub struct Journal {
    ring: Mutex<Ring>,
    appended: Notify,
}

impl Default for Journal {
    fn default() -> Self {
        Self {
            ring: Mutex::new(Ring {
                next: 1,
                ..Ring::default()
            }),
            appended: Notify::new(),
        }
    }
}

impl Journal {
    fn ring(&self) -> std::sync::MutexGuard<'_, Ring> {
        self.ring.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends an event and wakes the readers.
    pub fn push(&self, kind: &'static str, data: String) {
        {
            let mut ring = self.ring();
            let id = ring.next;
            ring.next += 1;
            ring.bytes += data.len();
            ring.entries.push_back(Entry {
                id,
                kind,
                data: data.into(),
            });
            while ring.entries.len() > MAX_EVENTS || (ring.bytes > MAX_BYTES && ring.entries.len() > 1) {
                if let Some(dropped) = ring.entries.pop_front() {
                    ring.bytes -= dropped.data.len();
                }
            }
        }
        self.appended.notify_waiters();
    }

    /// The id of the newest event (0 before the first).
    pub fn last_id(&self) -> u64 {
        self.ring().next - 1
    }

    /// The events after `after`, oldest first; `Behind` if some of them are gone.
    pub fn after(&self, after: u64) -> Result<Vec<Entry>, Behind> {
        let ring = self.ring();
        let oldest = ring.entries.front().map_or(ring.next, |e| e.id);
        if after + 1 < oldest {
            return Err(Behind { oldest });
        }
        Ok(ring.entries.iter().filter(|e| e.id > after).cloned().collect())
    }

    /// The events after `after`, waiting for one if there is none yet.
    pub async fn next_after(&self, after: u64) -> Result<Vec<Entry>, Behind> {
        loop {
            // Registered before looking, so that an event appended in between wakes it.
            let appended = self.appended.notified();
            tokio::pin!(appended);
            appended.as_mut().enable();
            let entries = self.after(after)?;
            if !entries.is_empty() {
                return Ok(entries);
            }
            appended.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readers_get_what_follows_their_id_until_it_is_dropped() {
        let journal = Journal::default();
        journal.push("state", "a".into());
        journal.push("state", "b".into());
        let after_first = journal.after(1).unwrap();
        assert_eq!(after_first.iter().map(|e| &*e.data).collect::<Vec<_>>(), ["b"]);
        for _ in 0..MAX_EVENTS {
            journal.push("stats", "x".into());
        }
        assert_eq!(journal.after(1), Err(Behind { oldest: 3 }));
        assert_eq!(journal.after(journal.last_id()).unwrap().len(), 0);
    }

    #[tokio::test]
    async fn a_waiting_reader_wakes_on_the_next_event() {
        let journal = Arc::new(Journal::default());
        let reader = tokio::spawn({
            let journal = journal.clone();
            async move { journal.next_after(0).await.unwrap() }
        });
        tokio::task::yield_now().await;
        journal.push("config", "{}".into());
        let entries = reader.await.unwrap();
        assert_eq!((entries[0].id, entries[0].kind), (1, "config"));
    }
}
