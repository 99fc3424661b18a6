//! A journal: a bounded ring that a writer appends to and any number of readers follow at
//! their own pace. Appending never waits for a reader; a reader that falls so far behind that
//! the ring has dropped what it has not read yet is told so. A closed journal takes nothing
//! more and tells its readers there is nothing more to wait for. The live events and each
//! instance's log lines are journals.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::Notify;

/// What a journal holds: anything that can say how many bytes it keeps.
pub trait Item: Clone {
    /// The bytes it holds, for the journal's byte bound.
    fn bytes(&self) -> usize;
}

/// One item and its id (growing by one from 1).
#[derive(Debug, Clone, PartialEq)]
pub struct Entry<T> {
    pub id: u64,
    pub item: T,
}

/// A reader asked for items the ring no longer holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Behind {
    /// The oldest id still kept.
    pub oldest: u64,
}

struct Ring<T> {
    entries: VecDeque<Entry<T>>,
    bytes: usize,
    /// The id the next item gets.
    next: u64,
}

/// The journal, keeping at most `max_items` items and `max_bytes` bytes of them (the oldest go
/// first beyond either bound; the newest is always kept).
pub struct Journal<T> {
    ring: Mutex<Ring<T>>,
    appended: Notify,
    closed: AtomicBool,
    max_items: usize,
    max_bytes: usize,
}

impl<T: Item> Journal<T> {
    pub fn new(max_items: usize, max_bytes: usize) -> Self {
        Self {
            ring: Mutex::new(Ring {
                entries: VecDeque::new(),
                bytes: 0,
                next: 1,
            }),
            appended: Notify::new(),
            closed: AtomicBool::new(false),
            max_items,
            max_bytes,
        }
    }

    fn ring(&self) -> std::sync::MutexGuard<'_, Ring<T>> {
        self.ring.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends an item and wakes the readers (nothing, once closed).
    pub fn push(&self, item: T) {
        if self.closed.load(Ordering::Acquire) {
            return;
        }
        {
            let mut ring = self.ring();
            let id = ring.next;
            ring.next += 1;
            ring.bytes += item.bytes();
            ring.entries.push_back(Entry { id, item });
            while ring.entries.len() > self.max_items || (ring.bytes > self.max_bytes && ring.entries.len() > 1) {
                if let Some(dropped) = ring.entries.pop_front() {
                    ring.bytes -= dropped.item.bytes();
                }
            }
        }
        self.appended.notify_waiters();
    }

    /// The id of the newest item (0 before the first).
    pub fn last_id(&self) -> u64 {
        self.ring().next - 1
    }

    /// The newest `n` items, oldest first.
    pub fn last(&self, n: usize) -> Vec<Entry<T>> {
        let ring = self.ring();
        let skip = ring.entries.len().saturating_sub(n);
        ring.entries.iter().skip(skip).cloned().collect()
    }

    /// The items after `after`, oldest first; `Behind` if some of them are gone.
    pub fn after(&self, after: u64) -> Result<Vec<Entry<T>>, Behind> {
        let ring = self.ring();
        let oldest = ring.entries.front().map_or(ring.next, |e| e.id);
        if after + 1 < oldest {
            return Err(Behind { oldest });
        }
        Ok(ring.entries.iter().filter(|e| e.id > after).cloned().collect())
    }

    /// Takes nothing more; readers waiting learn that nothing more comes.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.appended.notify_waiters();
    }

    /// The items after `after`, waiting for one if there is none yet; none once the journal
    /// is closed and they are all read.
    pub async fn next_after(&self, after: u64) -> Result<Vec<Entry<T>>, Behind> {
        loop {
            // Registered before looking, so that an item appended in between wakes it.
            let appended = self.appended.notified();
            tokio::pin!(appended);
            appended.as_mut().enable();
            let entries = self.after(after)?;
            if !entries.is_empty() || self.closed.load(Ordering::Acquire) {
                return Ok(entries);
            }
            appended.await;
        }
    }
}

impl<T> AsRef<Journal<T>> for Journal<T> {
    fn as_ref(&self) -> &Self {
        self
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    impl Item for &'static str {
        fn bytes(&self) -> usize {
            self.len()
        }
    }

    #[test]
    fn readers_get_what_follows_their_id_until_it_is_dropped() {
        let journal = Journal::new(4, 1024);
        journal.push("a");
        journal.push("b");
        let after_first = journal.after(1).unwrap();
        assert_eq!(after_first.iter().map(|e| e.item).collect::<Vec<_>>(), ["b"]);
        for _ in 0..4 {
            journal.push("x");
        }
        assert_eq!(journal.after(1), Err(Behind { oldest: 3 }));
        assert_eq!(journal.after(journal.last_id()).unwrap().len(), 0);
        assert_eq!(journal.last(2).iter().map(|e| e.id).collect::<Vec<_>>(), [5, 6]);
    }

    #[test]
    fn the_byte_bound_drops_the_oldest_but_keeps_the_newest() {
        let journal = Journal::new(100, 5);
        journal.push("abc");
        journal.push("def");
        assert_eq!(journal.last(10).iter().map(|e| e.item).collect::<Vec<_>>(), ["def"]);
        journal.push("much longer than the bound");
        assert_eq!(journal.last(10).len(), 1);
    }

    #[tokio::test]
    async fn a_waiting_reader_wakes_on_the_next_item() {
        let journal = Arc::new(Journal::new(4, 1024));
        let reader = tokio::spawn({
            let journal = journal.clone();
            async move { journal.next_after(0).await.unwrap() }
        });
        tokio::task::yield_now().await;
        journal.push("config");
        let entries = reader.await.unwrap();
        assert_eq!((entries[0].id, entries[0].item), (1, "config"));
    }

    #[tokio::test]
    async fn a_closed_journal_ends_its_readers() {
        let journal = Arc::new(Journal::new(4, 1024));
        journal.push("last");
        let reader = tokio::spawn({
            let journal = journal.clone();
            async move { journal.next_after(1).await.unwrap() }
        });
        tokio::task::yield_now().await;
        journal.close();
        assert!(reader.await.unwrap().is_empty());
        journal.push("late");
        assert_eq!(journal.last_id(), 1);
        assert_eq!(
            journal.next_after(0).await.unwrap().len(),
            1,
            "what was kept is still read"
        );
    }
}
