//! Small over-aligned blocks, carved from regions of their own.
//!
//! tokio aligns a task's cell and a socket's I/O registration to 128 bytes (against false
//! sharing between cores), and every session has one of each. glibc's `memalign` cuts such a
//! block out of a larger free chunk and leaves the pieces before and after it free: up to 160
//! bytes per block that later small allocations rarely fill, a fifth of an idle session's memory
//! (docs/BENCHMARKS.md). Here a block aligned to 32, 64 or 128 bytes and no larger than 1 KiB
//! comes from a 64 KiB region mapped for its size class (a multiple of 128 bytes), with no header
//! per block. A region whose blocks are all free goes back to the operating system, except one
//! per class, kept for the next block; blocks come from the regions listed first, and a full
//! region that has a block back goes last, so blocks pack into few regions. Everything else
//! goes to the system's allocator.
//!
//! One lock per size class: these blocks are taken when a task is spawned or a socket is
//! registered, not for each package. Nothing here may be called between a fork and an exec
//! (the agents' spawn allocates nothing there).

use std::alloc::{GlobalAlloc, Layout, System};
use std::ptr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

/// The size and alignment of a region; its first block holds its [`Region`] record.
const REGION: usize = 64 * 1024;
/// The step between size classes, and the largest alignment served here.
const UNIT: usize = 128;
/// Size classes: 128, 256, … 1,024 bytes.
const CLASSES: usize = 8;
/// Empty regions a class keeps mapped, so a block freed and asked for again maps nothing.
const KEEP_EMPTY: usize = 1;

/// The host's global allocator: the system's, with small over-aligned blocks from slabs.
///
/// `supersocketd` uses it; a host binary built with [`HostBuilder`](crate::HostBuilder) can
/// too:
///
/// ```
/// #[global_allocator]
/// static ALLOCATOR: supersocket::memory::HostAllocator = supersocket::memory::HostAllocator;
/// ```
pub struct HostAllocator;

// SAFETY: blocks from a class are distinct, aligned to `UNIT` (regions are aligned to `REGION`,
// blocks start at multiples of their class's size), as large as the layout asks, and go back
// only to the class they came from (a layout always maps to the same class).
unsafe impl GlobalAlloc for HostAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        match class_of(layout) {
            Some(class) => take(class),
            // SAFETY: the caller's layout, passed on.
            None => unsafe { System.alloc(layout) },
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        match class_of(layout) {
            Some(class) => {
                let block = take(class);
                if !block.is_null() {
                    // SAFETY: the block has room for `layout.size()` bytes.
                    unsafe { ptr::write_bytes(block, 0, layout.size()) };
                }
                block
            }
            // SAFETY: the caller's layout, passed on.
            None => unsafe { System.alloc_zeroed(layout) },
        }
    }

    unsafe fn dealloc(&self, block: *mut u8, layout: Layout) {
        match class_of(layout) {
            // SAFETY: the caller gives back a block this allocator handed out for `layout`,
            // so from this class.
            Some(class) => unsafe { give_back(class, block) },
            // SAFETY: as above, from the system's allocator.
            None => unsafe { System.dealloc(block, layout) },
        }
    }

    unsafe fn realloc(&self, block: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller promises `new_size`, rounded up to the alignment, does not overflow.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        match (class_of(layout), class_of(new_layout)) {
            // SAFETY: the caller's block and layout, passed on.
            (None, None) => unsafe { System.realloc(block, layout, new_size) },
            (Some(old), Some(new)) if old == new => block,
            _ => {
                // SAFETY: a new block for the new layout; the old one holds `layout.size()`
                // bytes and is given back after the copy.
                unsafe {
                    let moved = self.alloc(new_layout);
                    if !moved.is_null() {
                        ptr::copy_nonoverlapping(block, moved, layout.size().min(new_size));
                        self.dealloc(block, layout);
                    }
                    moved
                }
            }
        }
    }
}

/// The class of a layout served here: alignments above malloc's own 16 bytes, up to `UNIT`,
/// and sizes up to the largest class.
fn class_of(layout: Layout) -> Option<usize> {
    if layout.align() <= 16 || layout.align() > UNIT {
        return None;
    }
    let units = layout.size().div_ceil(UNIT).max(1);
    (units <= CLASSES).then(|| units - 1)
}

fn block_size(class: usize) -> usize {
    (class + 1) * UNIT
}

/// A region's record, in the place of its first block.
struct Region {
    /// Freed blocks, each holding the address of the next.
    free: *mut u8,
    /// Where the blocks never handed out begin (an offset in the region).
    fresh: usize,
    /// Blocks handed out and not given back.
    used: usize,
    /// Neighbours in its class's list of regions with room.
    prev: *mut Region,
    next: *mut Region,
    /// Whether it is in that list.
    listed: bool,
}

/// A size class: its regions that have room for a block, the one blocks come from first.
/// A full region that has a block back goes last, so blocks pack into few regions and the
/// others can empty and go back.
struct Class {
    /// The first region with room (full regions are in no list; their blocks know them by
    /// address).
    room: *mut Region,
    /// The last region with room.
    last: *mut Region,
    /// Regions with no block handed out.
    empty: usize,
}

// SAFETY: the regions a class points to are only touched under its lock.
unsafe impl Send for Class {}

static CLASS: [Mutex<Class>; CLASSES] = [const {
    Mutex::new(Class {
        room: ptr::null_mut(),
        last: ptr::null_mut(),
        empty: 0,
    })
}; CLASSES];

/// Regions mapped now, of every class.
static MAPPED: AtomicUsize = AtomicUsize::new(0);

fn lock(class: usize) -> MutexGuard<'static, Class> {
    // Nothing under the lock panics; a poisoned lock still holds consistent lists.
    CLASS[class].lock().unwrap_or_else(PoisonError::into_inner)
}

/// A block of `class`, or null when no region can be mapped.
fn take(class: usize) -> *mut u8 {
    let size = block_size(class);
    let mut list = lock(class);
    if list.room.is_null() {
        let region = map_region(size);
        if region.is_null() {
            return ptr::null_mut();
        }
        list.empty += 1;
        // SAFETY: a new region, in no list.
        unsafe { link(&mut list, region, true) };
    }
    let region = list.room;
    // SAFETY: a listed region is mapped, and only touched under its class's lock.
    unsafe {
        let record = &mut *region;
        let block = if record.free.is_null() {
            let block = region.cast::<u8>().add(record.fresh);
            record.fresh += size;
            block
        } else {
            let block = record.free;
            record.free = block.cast::<*mut u8>().read();
            block
        };
        if record.used == 0 {
            list.empty -= 1;
        }
        record.used += 1;
        if record.free.is_null() && record.fresh + size > REGION {
            unlink(&mut list, region);
        }
        block
    }
}

/// Gives `block` back to its region; unmaps the region when it is empty and the class keeps
/// enough empty ones.
///
/// # Safety
/// `block` came from [`take`] of the same `class` and is not used any more.
unsafe fn give_back(class: usize, block: *mut u8) {
    let region = (block as usize & !(REGION - 1)) as *mut Region;
    let mut list = lock(class);
    // SAFETY: the block's region is mapped while any of its blocks is handed out, and only
    // touched under its class's lock.
    unsafe {
        let record = &mut *region;
        block.cast::<*mut u8>().write(record.free);
        record.free = block;
        record.used -= 1;
        if !record.listed {
            link(&mut list, region, false);
        }
        if record.used == 0 {
            if list.empty < KEEP_EMPTY {
                list.empty += 1;
            } else {
                unlink(&mut list, region);
                unmap_region(region);
            }
        }
    }
}

/// Puts `region` first in its class's list, or last.
///
/// # Safety
/// `region` is mapped and in no list; the caller holds the class's lock.
unsafe fn link(list: &mut Class, region: *mut Region, first: bool) {
    let (prev, next) = match first {
        true => (ptr::null_mut(), list.room),
        false => (list.last, ptr::null_mut()),
    };
    // SAFETY: the regions of the list are mapped; the lock is held.
    unsafe {
        (*region).prev = prev;
        (*region).next = next;
        (*region).listed = true;
        match prev.is_null() {
            true => list.room = region,
            false => (*prev).next = region,
        }
        match next.is_null() {
            true => list.last = region,
            false => (*next).prev = region,
        }
    }
}

/// Takes `region` out of its class's list.
///
/// # Safety
/// `region` is in the list of the class whose lock the caller holds.
unsafe fn unlink(list: &mut Class, region: *mut Region) {
    // SAFETY: the regions of the list are mapped; the lock is held.
    unsafe {
        let Region { prev, next, .. } = *region;
        match prev.is_null() {
            true => list.room = next,
            false => (*prev).next = next,
        }
        match next.is_null() {
            true => list.last = prev,
            false => (*next).prev = prev,
        }
        (*region).listed = false;
    }
}

/// Maps a region aligned to its size, its record written for blocks of `size`; null when the
/// system has no memory for it.
fn map_region(size: usize) -> *mut Region {
    // Twice the size, then the ends trimmed: mmap aligns to a page only.
    // SAFETY: a new private anonymous mapping; nothing else refers to it.
    unsafe {
        let raw = libc::mmap(
            ptr::null_mut(),
            2 * REGION,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        if raw == libc::MAP_FAILED {
            return ptr::null_mut();
        }
        let start = raw as usize;
        let aligned = start.next_multiple_of(REGION);
        if aligned > start {
            libc::munmap(raw, aligned - start);
        }
        let tail = aligned + REGION;
        if start + 2 * REGION > tail {
            libc::munmap(tail as *mut libc::c_void, start + 2 * REGION - tail);
        }
        let region = aligned as *mut Region;
        region.write(Region {
            free: ptr::null_mut(),
            fresh: size,
            used: 0,
            prev: ptr::null_mut(),
            next: ptr::null_mut(),
            listed: false,
        });
        MAPPED.fetch_add(1, Ordering::Relaxed);
        region
    }
}

/// # Safety
/// `region` came from [`map_region`], is in no list, and none of its blocks is handed out.
unsafe fn unmap_region(region: *mut Region) {
    // SAFETY: as the caller promises, nothing refers to the region any more.
    unsafe { libc::munmap(region.cast(), REGION) };
    MAPPED.fetch_sub(1, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(size: usize, align: usize) -> Layout {
        Layout::from_size_align(size, align).unwrap()
    }

    #[test]
    fn only_small_over_aligned_layouts_are_served_from_regions() {
        assert_eq!(class_of(layout(48, 16)), None);
        assert_eq!(class_of(layout(128, 256)), None);
        assert_eq!(class_of(layout(1025, 128)), None);
        assert_eq!(class_of(layout(1, 32)), Some(0));
        assert_eq!(class_of(layout(128, 128)), Some(0));
        assert_eq!(class_of(layout(256, 128)), Some(1));
        assert_eq!(class_of(layout(1024, 64)), Some(7));
    }

    /// Every block: aligned, whole (a pattern written into each survives the others), from
    /// threads at once; moved by realloc with its bytes; and the regions go back when the
    /// blocks do. (One test: the regions are the process's.)
    #[test]
    fn blocks_are_distinct_aligned_and_their_regions_go_back() {
        let threads: Vec<_> = (0..4u8)
            .map(|thread| {
                std::thread::spawn(move || {
                    let mut blocks = Vec::new();
                    for round in 0..3 {
                        for i in 0..3_000usize {
                            let size = 1 + (i * 37) % 1024;
                            let layout = layout(size, [32, 64, 128][i % 3]);
                            // SAFETY: a non-zero size; written within it.
                            let block = unsafe { HostAllocator.alloc(layout) };
                            assert!(!block.is_null());
                            assert_eq!(block as usize % layout.align(), 0);
                            let mark = thread ^ (i as u8) ^ round;
                            unsafe { ptr::write_bytes(block, mark, size) };
                            blocks.push((block, layout, mark));
                        }
                        // Give back every other block, so regions have holes to fill.
                        let mut kept = Vec::new();
                        for (n, (block, layout, mark)) in blocks.drain(..).enumerate() {
                            let bytes = unsafe { std::slice::from_raw_parts(block, layout.size()) };
                            assert!(bytes.iter().all(|&b| b == mark), "a block was overwritten");
                            match n % 2 {
                                0 => unsafe { HostAllocator.dealloc(block, layout) },
                                _ => kept.push((block, layout, mark)),
                            }
                        }
                        blocks = kept;
                    }
                    for (block, layout, mark) in blocks {
                        // Grown across classes, then out of the regions: the bytes move along.
                        let grown = unsafe { HostAllocator.realloc(block, layout, 2000) };
                        let bytes = unsafe { std::slice::from_raw_parts(grown, layout.size()) };
                        assert!(bytes.iter().all(|&b| b == mark), "realloc lost bytes");
                        unsafe { HostAllocator.dealloc(grown, Layout::from_size_align(2000, layout.align()).unwrap()) };
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        let mapped = MAPPED.load(Ordering::Relaxed);
        assert!(
            mapped <= CLASSES * KEEP_EMPTY,
            "{mapped} regions still mapped with no block out"
        );
    }
}
