//! The process's allocator: a start-up arena in `.bss` first, mimalloc for the rest.
//!
//! A `peercache fetch` that the daemon answers lives for about a millisecond, and mimalloc's
//! first allocations were a fifth of it (docs/performance-startup.md): the bitmaps of its 1 GiB
//! arena and a 64 KiB page per size class are touched, each a page fault, for a process that
//! allocates a few hundred KB in all. musl's own allocator was tried in its place and maps and
//! unmaps small groups all the time, which cost as much. A bump arena costs nothing of the
//! kind: its memory is a zeroed static, so the kernel maps it with the binary, and a page
//! faults in only when an allocation first reaches it; allocations sit next to each other, so
//! a short command touches as few pages as it can.
//!
//! The arena serves every allocation until it is full or [`close_arena`] is called; then
//! mimalloc serves new ones. `serve` closes it as it starts: a long-lived process frees and
//! reuses its memory, which a bump arena cannot do (it takes back only the newest block). A
//! block is freed by the allocator whose memory it is in, whenever that is; one the arena
//! gave out stays valid for the life of the process.

use std::alloc::{GlobalAlloc, Layout};
use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// Bytes the start-up arena holds; a command that needs more gets the rest from mimalloc.
/// `.bss`: it costs no file size and no memory until written. (Transparent huge pages could
/// make a first touch zero 2 MiB; the kernel here, like most, gives them only to regions that
/// ask with `madvise`, and the arena does not ask.)
pub const START_ARENA_BYTES: usize = 4 << 20;

/// A bump arena over `N` bytes of its own: allocations only move a mark forwards; freeing or
/// growing the newest block moves the mark back or on; anything else is left where it is.
pub struct Arena<const N: usize> {
    memory: UnsafeCell<Aligned<N>>,
    /// Offset of the first free byte.
    next: AtomicUsize,
    /// Whether new blocks may still be taken from the arena.
    open: AtomicBool,
}

/// The arena's bytes, page-aligned so that a block's alignment is worked out from its offset.
#[repr(C, align(4096))]
struct Aligned<const N: usize>([u8; N]);

// SAFETY: the bytes are handed out in disjoint blocks by atomic updates of `next`; each block
// is only touched by whoever holds it, and its hand-over is the caller's synchronisation.
unsafe impl<const N: usize> Sync for Arena<N> {}

impl<const N: usize> Arena<N> {
    /// The largest alignment the arena serves (its own); stricter requests go elsewhere.
    const MAX_ALIGN: usize = 4096;

    /// An empty, open arena (a `static` of it lives in `.bss`).
    pub const fn new() -> Arena<N> {
        Arena {
            memory: UnsafeCell::new(Aligned([0; N])),
            next: AtomicUsize::new(0),
            open: AtomicBool::new(true),
        }
    }

    fn base(&self) -> *mut u8 {
        self.memory.get().cast::<u8>()
    }

    /// Whether `ptr` points into the arena's bytes.
    pub fn owns(&self, ptr: *const u8) -> bool {
        let base = self.base() as usize;
        (base..base + N).contains(&(ptr as usize))
    }

    /// Bytes handed out so far (freed newest blocks not counted).
    pub fn used(&self) -> usize {
        self.next.load(Ordering::Relaxed)
    }

    /// No new blocks from now on; the ones handed out stay valid.
    pub fn close(&self) {
        self.open.store(false, Ordering::Release);
    }

    /// A block for `layout`, or `None` when the arena is closed or has no room for it.
    pub fn alloc(&self, layout: Layout) -> Option<*mut u8> {
        if layout.align() > Self::MAX_ALIGN || !self.open.load(Ordering::Acquire) {
            return None;
        }
        let mut next = self.next.load(Ordering::Acquire);
        loop {
            // The base is MAX_ALIGN-aligned, so aligning the offset aligns the address.
            let start = next.checked_next_multiple_of(layout.align())?;
            let end = start.checked_add(layout.size()).filter(|end| *end <= N)?;
            match self
                .next
                .compare_exchange_weak(next, end, Ordering::AcqRel, Ordering::Acquire)
            {
                // SAFETY: start + size ≤ N, so the pointer stays within the arena's bytes.
                Ok(_) => return Some(unsafe { self.base().add(start) }),
                Err(now) => next = now,
            }
        }
    }

    /// Frees the block at `ptr` of `size` bytes: the newest block's bytes are taken back,
    /// any other's stay used until the process ends.
    ///
    /// # Safety
    /// `ptr` and `size` must be a live block of this arena's.
    pub unsafe fn free(&self, ptr: *mut u8, size: usize) {
        let start = ptr as usize - self.base() as usize;
        // Only succeeds when nothing was handed out after this block.
        let _ =
            self.next
                .compare_exchange(start + size, start, Ordering::AcqRel, Ordering::Relaxed);
    }

    /// Grows or shrinks the block at `ptr` from `size` to `new_size` bytes where it is, which
    /// works for the newest block while the arena is open and has room (and for any shrink).
    ///
    /// # Safety
    /// `ptr` and `size` must be a live block of this arena's.
    pub unsafe fn resize_in_place(&self, ptr: *mut u8, size: usize, new_size: usize) -> bool {
        if new_size <= size {
            // SAFETY: the caller's block; freeing its tail is freeing a block of that tail.
            unsafe { self.free(ptr.add(new_size), size - new_size) };
            return true;
        }
        if !self.open.load(Ordering::Acquire) {
            return false;
        }
        let start = ptr as usize - self.base() as usize;
        match start.checked_add(new_size) {
            Some(end) if end <= N => self
                .next
                .compare_exchange(start + size, end, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok(),
            _ => false,
        }
    }
}

impl<const N: usize> Default for Arena<N> {
    fn default() -> Self {
        Self::new()
    }
}

/// The start-up arena of this process.
static START_ARENA: Arena<START_ARENA_BYTES> = Arena::new();

/// From now on new blocks come from mimalloc; called by commands that run for long.
pub fn close_arena() {
    START_ARENA.close();
}

/// The global allocator of the `peercache` binary: the start-up arena, then mimalloc.
pub struct ProcessAllocator;

// SAFETY: every block comes from the arena or from mimalloc, and is freed or resized by the
// one that owns its address; both are thread-safe.
unsafe impl GlobalAlloc for ProcessAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        match START_ARENA.alloc(layout) {
            Some(ptr) => ptr,
            // SAFETY: forwarded as received.
            None => unsafe { mimalloc::MiMalloc.alloc(layout) },
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        match START_ARENA.alloc(layout) {
            Some(ptr) => {
                // A freed newest block's bytes are handed out again, so they may not be zero.
                // SAFETY: a block of `layout.size()` bytes just handed out.
                unsafe { ptr.write_bytes(0, layout.size()) };
                ptr
            }
            // SAFETY: forwarded as received.
            None => unsafe { mimalloc::MiMalloc.alloc_zeroed(layout) },
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if START_ARENA.owns(ptr) {
            // SAFETY: GlobalAlloc's contract: a live block of this size, and ours.
            unsafe { START_ARENA.free(ptr, layout.size()) }
        } else {
            // SAFETY: not the arena's, so mimalloc's.
            unsafe { mimalloc::MiMalloc.dealloc(ptr, layout) }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if !START_ARENA.owns(ptr) {
            // SAFETY: not the arena's, so mimalloc's.
            return unsafe { mimalloc::MiMalloc.realloc(ptr, layout, new_size) };
        }
        // SAFETY: GlobalAlloc's contract: a live block of ours of `layout.size()` bytes.
        if unsafe { START_ARENA.resize_in_place(ptr, layout.size(), new_size) } {
            return ptr;
        }
        // SAFETY: realloc's contract makes `new_size` valid with the block's alignment.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        // SAFETY: a non-zero size, as realloc's contract says.
        let moved = unsafe { self.alloc(new_layout) };
        if !moved.is_null() {
            // SAFETY: both blocks are live and distinct; the copy is the smaller of the two.
            unsafe {
                std::ptr::copy_nonoverlapping(ptr, moved, layout.size().min(new_size));
                START_ARENA.free(ptr, layout.size());
            }
        }
        moved
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(size: usize, align: usize) -> Layout {
        Layout::from_size_align(size, align).unwrap()
    }

    #[test]
    fn blocks_are_aligned_disjoint_and_within_the_arena() {
        let arena: Box<Arena<4096>> = Box::default();
        let a = arena.alloc(layout(3, 1)).unwrap();
        let b = arena.alloc(layout(8, 8)).unwrap();
        let c = arena.alloc(layout(100, 64)).unwrap();
        assert_eq!(b as usize % 8, 0);
        assert_eq!(c as usize % 64, 0);
        assert!(a as usize + 3 <= b as usize && b as usize + 8 <= c as usize);
        assert!(arena.owns(a) && arena.owns(c));
        assert!(!arena.owns(std::ptr::null()));
        assert_eq!(arena.used(), c as usize - a as usize + 100);
    }

    #[test]
    fn a_full_or_closed_arena_refuses_and_keeps_its_blocks() {
        let arena: Box<Arena<4096>> = Box::default();
        let first = arena.alloc(layout(4000, 1)).unwrap();
        assert!(
            arena.alloc(layout(200, 1)).is_none(),
            "no room for 200 more bytes"
        );
        assert!(
            arena.alloc(layout(8, 8192)).is_none(),
            "alignment beyond the arena's own"
        );
        assert!(
            arena.alloc(layout(isize::MAX as usize - 64, 1)).is_none(),
            "no overflow"
        );
        assert!(
            arena.alloc(layout(96, 1)).is_some(),
            "the last 96 bytes fit"
        );
        arena.close();
        assert!(arena.alloc(layout(0, 1)).is_none());
        // SAFETY: `first` is a live block of 4000 bytes of this arena's.
        unsafe { first.write_bytes(7, 4000) };
        assert!(arena.owns(first));
    }

    #[test]
    fn the_newest_block_is_taken_back_and_grown_in_place_others_are_not() {
        let arena: Box<Arena<4096>> = Box::default();
        let a = arena.alloc(layout(16, 8)).unwrap();
        let b = arena.alloc(layout(16, 8)).unwrap();
        // SAFETY: live blocks of this arena's, with their sizes.
        unsafe {
            assert!(!arena.resize_in_place(a, 16, 32), "a is not the newest");
            assert!(arena.resize_in_place(b, 16, 1000), "b is");
            assert_eq!(arena.used(), 16 + 1000);
            assert!(!arena.resize_in_place(b, 1000, 5000), "beyond the arena");
            arena.free(a, 16);
            assert_eq!(arena.used(), 16 + 1000, "a's bytes stay used");
            arena.free(b, 1000);
            assert_eq!(arena.used(), 16, "b's are taken back");
            assert_eq!(
                arena.alloc(layout(16, 8)).unwrap(),
                b,
                "and handed out again"
            );
        }
    }

    #[test]
    fn threads_get_disjoint_blocks() {
        let arena: &'static Arena<65536> = Box::leak(Box::default());
        let handles: Vec<_> = (0..4u8)
            .map(|tag| {
                std::thread::spawn(move || {
                    let mut blocks = Vec::new();
                    for _ in 0..200 {
                        let block = arena.alloc(layout(24, 8)).unwrap();
                        // SAFETY: a live 24-byte block this thread alone holds.
                        unsafe { block.write_bytes(tag, 24) };
                        blocks.push(block as usize);
                    }
                    blocks
                })
            })
            .collect();
        let mut all: Vec<usize> = Vec::new();
        for (tag, handle) in handles.into_iter().enumerate() {
            for block in handle.join().unwrap() {
                // SAFETY: still live: nothing frees these blocks.
                let bytes = unsafe { std::slice::from_raw_parts(block as *const u8, 24) };
                assert!(
                    bytes.iter().all(|b| usize::from(*b) == tag),
                    "a block was shared"
                );
                all.push(block);
            }
        }
        all.sort_unstable();
        assert!(all.windows(2).all(|w| w[1] - w[0] >= 24));
    }

    #[test]
    fn the_process_allocator_moves_a_block_that_outgrows_the_arena_to_mimalloc() {
        // The test binary's allocator is the system's; drive ProcessAllocator directly.
        let allocator = ProcessAllocator;
        let small = layout(64, 8);
        // SAFETY: GlobalAlloc used by its contract: sizes non-zero, blocks freed once.
        unsafe {
            let block = allocator.alloc(small);
            assert!(!block.is_null());
            block.write_bytes(9, 64);
            assert!(
                START_ARENA.owns(block),
                "an open arena with room serves first"
            );
            // A freed newest block's bytes come back dirty; alloc_zeroed must clear them.
            let dirty = allocator.alloc(layout(256, 16));
            dirty.write_bytes(0xff, 256);
            allocator.dealloc(dirty, layout(256, 16));
            let zeroed = allocator.alloc_zeroed(layout(256, 16));
            assert_eq!(
                zeroed, dirty,
                "the newest block's bytes are handed out again"
            );
            assert!(
                std::slice::from_raw_parts(zeroed, 256)
                    .iter()
                    .all(|b| *b == 0)
            );
            allocator.dealloc(zeroed, layout(256, 16));
            let grown = allocator.realloc(block, small, 1 << 23);
            assert!(!grown.is_null());
            assert!(!START_ARENA.owns(grown), "8 MiB cannot fit the 4 MiB arena");
            assert!(
                std::slice::from_raw_parts(grown, 64)
                    .iter()
                    .all(|b| *b == 9)
            );
            allocator.dealloc(grown, layout(1 << 23, 8));
        }
    }
}
