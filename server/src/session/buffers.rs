//! Buffers owned by the worker thread rather than by sessions: a session borrows one to read
//! into, or to gather its replies in, while it has something to do, and gives it back as soon
//! as it is empty. So an idle session holds no buffer, whether it ever talked or not, and the
//! sessions of a worker take turns with the same few; only the bytes of a package not complete
//! yet stay with a session (given back as an exact copy once it has been quiet a while).

use std::cell::RefCell;

use bytes::BytesMut;

/// Room a borrowed buffer has at least: one read's worth.
const CHUNK: usize = 8 * 1024;
/// Buffers a thread keeps for its sessions.
const KEPT: usize = 16;
/// A buffer that grew past this (a large package or reply went through it) is not kept.
const LARGEST_KEPT: usize = 64 * 1024;

thread_local! {
    // Boxed: the box itself is what a session holds while it uses one.
    #[allow(clippy::vec_box)]
    static SPARE: RefCell<Vec<Box<BytesMut>>> = const { RefCell::new(Vec::new()) };
}

/// One of a session's buffers. Boxed, and only there while it holds bytes or a step uses it:
/// a session that holds none keeps 8 bytes, not the 32 of an empty `BytesMut`, for each.
#[derive(Default)]
pub(crate) struct Buffer(Option<Box<BytesMut>>);

impl Buffer {
    /// The bytes, in a buffer borrowed from this thread if the session holds none.
    pub(crate) fn get(&mut self) -> &mut BytesMut {
        self.0.get_or_insert_with(borrow)
    }

    /// The bytes, with room for one more read.
    pub(crate) fn with_room(&mut self) -> &mut BytesMut {
        match self.0 {
            Some(ref mut bytes) => {
                bytes.reserve(CHUNK);
                bytes
            }
            None => self.get(),
        }
    }

    /// Whether the session holds a buffer here.
    pub(crate) fn held(&self) -> bool {
        self.0.is_some()
    }

    /// Whether it holds a buffer with room for more bytes (not one kept at the exact size of
    /// its bytes).
    pub(crate) fn has_room(&self) -> bool {
        self.0.as_ref().is_some_and(|bytes| bytes.capacity() > bytes.len())
    }

    /// Moves the bytes of `other` after its own: the whole buffer when it holds none.
    pub(crate) fn append(&mut self, other: &mut Buffer) {
        if other.is_empty() {
            return;
        }
        match &mut self.0 {
            None => self.0 = other.0.take(),
            Some(bytes) => {
                bytes.extend_from_slice(other.get());
                other.clear();
            }
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |bytes| bytes.len())
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets the bytes; the buffer goes back to this thread.
    pub(crate) fn clear(&mut self) {
        if let Some(bytes) = &mut self.0 {
            bytes.clear();
        }
        self.give_back();
    }

    /// Drops the bytes and the buffer with them (bytes that must not be kept in memory).
    pub(crate) fn discard(&mut self) {
        self.0 = None;
    }

    /// Gives the buffer back to this thread if it is empty.
    pub(crate) fn give_back(&mut self) {
        if self.is_empty()
            && let Some(bytes) = self.0.take()
        {
            keep(bytes);
        }
    }

    /// Keeps only an exact copy of the bytes, and gives the rest back.
    pub(crate) fn shrink(&mut self) {
        match &mut self.0 {
            Some(bytes) if bytes.capacity() > bytes.len() && !bytes.is_empty() => {
                let exact = BytesMut::from(&bytes[..]);
                let mut roomy = std::mem::replace(&mut **bytes, exact);
                roomy.clear();
                keep(Box::new(roomy));
            }
            _ => self.give_back(),
        }
    }
}

/// An empty buffer with room for [`CHUNK`] bytes: one of this thread's, or a new one.
fn borrow() -> Box<BytesMut> {
    let mut bytes = SPARE.with_borrow_mut(Vec::pop).unwrap_or_default();
    // A kept buffer whose bytes no package shares any more takes its whole room back here.
    bytes.reserve(CHUNK);
    bytes
}

/// Keeps an empty buffer for this thread's sessions, unless it grew large or enough are kept.
fn keep(bytes: Box<BytesMut>) {
    if bytes.capacity() <= LARGEST_KEPT {
        SPARE.with_borrow_mut(|spare| {
            if spare.len() < KEPT {
                spare.push(bytes);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_go_round_and_sessions_keep_none() {
        let mut buffer = Buffer::default();
        assert!(buffer.get().capacity() >= CHUNK);
        buffer.get().extend_from_slice(b"hello");
        buffer.give_back();
        assert_eq!(buffer.get().len(), 5, "a buffer with bytes stays");
        let package = buffer.get().split_to(5);
        buffer.give_back();
        assert!(!buffer.held(), "an empty one goes back");
        drop(package);
        assert!(buffer.with_room().capacity() >= CHUNK);
        let mut partial = Buffer::default();
        partial.get().extend_from_slice(b"half a line");
        partial.shrink();
        let kept = partial.get();
        assert_eq!((&kept[..], kept.capacity()), (&b"half a line"[..], 11));
        assert!(!partial.has_room(), "a kept package has no room to grow into");
        let mut read = Buffer::default();
        read.get().extend_from_slice(b" and the rest");
        partial.append(&mut read);
        assert_eq!(&partial.get()[..], b"half a line and the rest");
        assert!(!read.held(), "what was appended goes back");
        let mut empty = Buffer::default();
        empty.append(&mut partial);
        assert!(!partial.held(), "a whole buffer moves");
        assert_eq!(&empty.get()[..], b"half a line and the rest");
        empty.clear();
        assert!(!empty.held(), "a cleared one goes back");
    }

    #[test]
    fn large_buffers_are_not_kept() {
        let mut large = Buffer(Some(Box::new(BytesMut::with_capacity(LARGEST_KEPT * 2))));
        large.give_back();
        assert!(!large.held());
        let spare = SPARE.with_borrow(|spare| spare.iter().map(|bytes| bytes.capacity()).max());
        assert!(spare.is_none_or(|largest| largest <= LARGEST_KEPT));
    }
}
