//! A global allocator that puts large allocations on transparent huge pages.
//!
//! Restoring a large state allocates it afresh: with 4 KiB pages, 64 MiB costs 16,384
//! page faults (about 70 ms on a small VM, more than parsing it), and the next worker
//! death pays again to unmap them. Advised as huge pages, the same 64 MiB takes 32
//! faults. Where the kernel's THP mode is `madvise` (the usual default) only advised
//! memory gets huge pages; with `always` or `never` the advice changes nothing.

use std::alloc::{GlobalAlloc, Layout, System};

use resurgam_shared::hugepages::advise;

/// The system allocator, with `MADV_HUGEPAGE` on every allocation of 4 MiB or more.
///
/// The `resurgam` binary uses it; a binary of your own that embeds the worker
/// (`resurgam::main_with`) can too:
///
/// ```
/// #[global_allocator]
/// static ALLOC: resurgam_worker::HugePageAlloc = resurgam_worker::HugePageAlloc;
/// ```
#[derive(Debug, Default, Clone, Copy)]
pub struct HugePageAlloc;

// SAFETY: every method forwards to `System` with the caller's arguments, so the
// allocator's contract is `System`'s; `advise` only adds advice on the memory returned.
unsafe impl GlobalAlloc for HugePageAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract, passed on as is.
        let ptr = unsafe { System.alloc(layout) };
        advise(ptr, layout.size());
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let ptr = unsafe { System.alloc_zeroed(layout) };
        advise(ptr, layout.size());
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` and `layout` come from this allocator, i.e. from `System`.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller upholds `GlobalAlloc::realloc`'s contract; `ptr` came from
        // `System` (through this allocator).
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        advise(new, new_size);
        new
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use resurgam_shared::hugepages::MIN_ADVISED;

    #[test]
    fn allocations_of_every_size_work_and_keep_their_contents() {
        let a = HugePageAlloc;
        for size in [1, 4096, MIN_ADVISED - 1, MIN_ADVISED, 9 << 20] {
            let layout = Layout::from_size_align(size, 16).unwrap();
            // SAFETY: a non-zero size; the block is freed with the same layout.
            unsafe {
                let p = a.alloc_zeroed(layout);
                assert!(!p.is_null());
                assert!(std::slice::from_raw_parts(p, size).iter().all(|&b| b == 0));
                p.write_bytes(7, size);
                let q = a.realloc(p, layout, size * 2);
                assert!(!q.is_null());
                assert!(std::slice::from_raw_parts(q, size).iter().all(|&b| b == 7));
                a.dealloc(q, Layout::from_size_align(size * 2, 16).unwrap());
            }
        }
    }
}
