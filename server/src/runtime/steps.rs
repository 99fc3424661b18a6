//! The steps of a session's loop (handle a read, deliver the outbox, write replies that
//! settled) run in memory the worker thread lends, as its buffers do: a step's future is large
//! (the service's handler, the writes), and a session that kept room for it would hold that
//! room while idle too. A step takes a block of its size from the thread's spares, or from the
//! allocator, and gives it back when it ends; so steady traffic allocates nothing, and an idle
//! session holds only the wait between steps.

use std::alloc::Layout;
use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::ptr::NonNull;
use std::task::{Context, Poll};

/// Blocks a thread keeps of each size.
const KEPT: usize = 16;

thread_local! {
    static SPARE: RefCell<Spares> = const { RefCell::new(Spares(Vec::new())) };
}

/// Spare blocks by layout (a handful of step types per thread).
struct Spares(Vec<(Layout, Vec<NonNull<u8>>)>);

impl Drop for Spares {
    fn drop(&mut self) {
        for (layout, blocks) in self.0.drain(..) {
            for block in blocks {
                // SAFETY: each block was allocated with this layout (`take` or `Step::new`)
                // and is owned by this list alone.
                unsafe { std::alloc::dealloc(block.as_ptr(), layout) };
            }
        }
    }
}

/// A block for `layout` (not zero-sized): a spare of this thread, or a new one.
fn take(layout: Layout) -> NonNull<u8> {
    let spare = SPARE.with_borrow_mut(|spares| {
        spares
            .0
            .iter_mut()
            .find(|(kept, _)| *kept == layout)
            .and_then(|(_, blocks)| blocks.pop())
    });
    spare.unwrap_or_else(|| {
        // SAFETY: `layout` is not zero-sized (checked by the caller).
        let block = unsafe { std::alloc::alloc(layout) };
        NonNull::new(block).unwrap_or_else(|| std::alloc::handle_alloc_error(layout))
    })
}

/// Keeps `block` for the next step of its size on this thread, or frees it.
fn give(layout: Layout, block: NonNull<u8>) {
    let kept = SPARE
        .try_with(|spare| {
            let mut spares = spare.borrow_mut();
            let index = match spares.0.iter().position(|(kept, _)| *kept == layout) {
                Some(index) => index,
                None => {
                    spares.0.push((layout, Vec::new()));
                    spares.0.len() - 1
                }
            };
            let blocks = &mut spares.0[index].1;
            let keep = blocks.len() < KEPT;
            if keep {
                blocks.push(block);
            }
            keep
        })
        .unwrap_or(false);
    if !kept {
        // SAFETY: `block` was allocated with `layout` and nothing else refers to it.
        unsafe { std::alloc::dealloc(block.as_ptr(), layout) };
    }
}

/// A future placed in a lent block: it never moves while it runs, and its block goes back to
/// the thread that ends it.
pub(crate) struct Step<F: Future> {
    future: NonNull<F>,
}

// SAFETY: a `Step` owns its future as a `Box` would.
unsafe impl<F: Future + Send> Send for Step<F> {}

impl<F: Future> Step<F> {
    pub(crate) fn new(future: F) -> Self {
        let layout = Layout::new::<F>();
        let block = if layout.size() == 0 {
            NonNull::<F>::dangling()
        } else {
            take(layout).cast::<F>()
        };
        // SAFETY: `block` is valid for writes of an `F` and aligned for it (or `F` is
        // zero-sized and needs no memory).
        unsafe { block.as_ptr().write(future) };
        Self { future: block }
    }
}

impl<F: Future> Future for Step<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        // SAFETY: the future lives in its block until the step is dropped and is never moved
        // out of it, so it stays pinned.
        unsafe { Pin::new_unchecked(&mut *self.future.as_ptr()) }.poll(cx)
    }
}

impl<F: Future> Drop for Step<F> {
    fn drop(&mut self) {
        let layout = Layout::new::<F>();
        // SAFETY: the future was written in `new` and is dropped once, here.
        unsafe { std::ptr::drop_in_place(self.future.as_ptr()) };
        if layout.size() != 0 {
            give(layout, self.future.cast());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_step_runs_its_future_and_the_next_of_its_size_reuses_its_block() {
        let payload = [7u8; 300];
        let first = Step::new(async move { payload.iter().map(|&b| u32::from(b)).sum::<u32>() });
        let block = first.future.as_ptr() as usize;
        assert_eq!(first.await, 2100);
        let second = Step::new(async move { payload.len() });
        assert_eq!(
            second.future.as_ptr() as usize,
            block,
            "the same size takes the same block"
        );
        assert_eq!(second.await, 300);
    }

    #[tokio::test]
    async fn a_step_dropped_before_its_end_drops_its_future() {
        let alive = std::sync::Arc::new(());
        let held = alive.clone();
        let step = Step::new(async move {
            let _held = held;
            std::future::pending::<()>().await;
        });
        assert_eq!(std::sync::Arc::strong_count(&alive), 2);
        drop(step);
        assert_eq!(std::sync::Arc::strong_count(&alive), 1);
        assert_eq!(Step::new(async { 5 }).await, 5);
    }
}
