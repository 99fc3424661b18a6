//! Buffers owned by the worker thread rather than by sessions: a session borrows one to read
//! into, or to gather its replies in, while it has something to do, and gives it back as soon
//! as it is empty. So an idle session holds no buffer, whether it ever talked or not, and the
//! sessions of a worker take turns with the same few; only the bytes of a package not complete
//! yet stay with a session (given back as an exact copy once it has been quiet a while).

use std::cell::RefCell;

use bytes::BytesMut;

/// Room a borrowed buffer has at least: one read's worth.
pub(crate) const CHUNK: usize = 8 * 1024;
/// Buffers a thread keeps for its sessions.
const KEPT: usize = 16;
/// A buffer that grew past this (a large package or reply went through it) is not kept.
const LARGEST_KEPT: usize = 64 * 1024;

thread_local! {
    static SPARE: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
}

/// An empty buffer with room for [`CHUNK`] bytes: one of this thread's, or a new one.
pub(crate) fn borrow() -> BytesMut {
    let mut buffer = SPARE.with_borrow_mut(Vec::pop).unwrap_or_default();
    // A kept buffer whose bytes no package shares any more takes its whole room back here.
    buffer.reserve(CHUNK);
    buffer
}

/// Gives `buffer` back to this thread if it is empty, leaving it without any allocation.
pub(crate) fn give_back(buffer: &mut BytesMut) {
    if !buffer.is_empty() || buffer.capacity() == 0 {
        return;
    }
    let buffer = std::mem::take(buffer);
    if buffer.capacity() <= LARGEST_KEPT {
        SPARE.with_borrow_mut(|spare| {
            if spare.len() < KEPT {
                spare.push(buffer);
            }
        });
    }
}

/// Leaves in `buffer` only an exact copy of its bytes, and gives the rest back.
pub(crate) fn shrink(buffer: &mut BytesMut) {
    if buffer.is_empty() {
        give_back(buffer);
    } else if buffer.capacity() > buffer.len() {
        let mut kept = BytesMut::from(&buffer[..]);
        std::mem::swap(buffer, &mut kept);
        kept.clear();
        give_back(&mut kept);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_go_round_and_sessions_keep_none() {
        let mut buffer = borrow();
        assert!(buffer.capacity() >= CHUNK);
        buffer.extend_from_slice(b"hello");
        give_back(&mut buffer);
        assert_eq!(buffer.len(), 5, "a buffer with bytes stays");
        let package = buffer.split_to(5);
        give_back(&mut buffer);
        assert_eq!(buffer.capacity(), 0, "an empty one goes back");
        drop(package);
        let again = borrow();
        assert!(again.capacity() >= CHUNK);
        let mut partial = borrow();
        partial.extend_from_slice(b"half a line");
        shrink(&mut partial);
        assert_eq!((&partial[..], partial.capacity()), (&b"half a line"[..], 11));
    }

    #[test]
    fn large_buffers_are_not_kept() {
        let mut large = BytesMut::with_capacity(LARGEST_KEPT * 2);
        give_back(&mut large);
        assert_eq!(large.capacity(), 0);
        let spare = SPARE.with_borrow(|spare| spare.iter().map(BytesMut::capacity).max());
        assert!(spare.is_none_or(|largest| largest <= LARGEST_KEPT));
    }
}
