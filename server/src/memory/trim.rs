//! Gives memory that glibc's malloc holds free back to the operating system.
//!
//! glibc's malloc keeps what is freed inside its arenas. After many sessions or admin
//! connections close, their memory is free in pieces between live allocations, and malloc's own
//! trimming (the top of a heap only) returns little of it: the process's RSS stays where the
//! peak left it. `malloc_trim` hands back every whole free page. A thread of its own asks for it
//! once a second when the free bytes in the arenas moved by `STEP` since the last trim;
//! a trim takes well under a millisecond (docs/BENCHMARKS.md has the numbers and the
//! allocators compared). Other C libraries' allocators are left to return memory themselves.

#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub(crate) use glibc::start_trimming;

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub(crate) fn start_trimming() {}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod glibc {
    use std::time::Duration;

    /// How often the free memory is looked at.
    const EVERY: Duration = Duration::from_secs(1);
    /// A change of the free bytes that makes a trim worth it.
    const STEP: usize = 1 << 20;

    /// Starts the thread that trims, for the life of the process.
    pub(crate) fn start_trimming() {
        let started = std::thread::Builder::new().name("memory-trim".into()).spawn(|| {
            let mut mark = 0;
            loop {
                std::thread::sleep(EVERY);
                mark = trim_if_moved(mark);
            }
        });
        if let Err(e) = started {
            tracing::warn!("freed memory will stay with the allocator: {e}");
        }
    }

    /// Trims when the free bytes moved by `STEP` from `mark` (what they were at the last trim)
    /// either way: up when memory was freed; down too, as malloc trims a heap's top by itself
    /// and the pages freed meanwhile below it would be missed. Returns the new mark.
    fn trim_if_moved(mark: usize) -> usize {
        // SAFETY: reads the allocator's counters under its own locks.
        let free = unsafe { libc::mallinfo2() }.fordblks;
        if free.abs_diff(mark) < STEP {
            return mark;
        }
        // SAFETY: releases free pages under the allocator's own locks; a padding of 0 keeps
        // nothing spare at a heap's top.
        unsafe { libc::malloc_trim(0) };
        free
    }
}
