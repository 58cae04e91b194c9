//! Transparent huge pages for large buffers: a fresh 64 MiB buffer takes 32 page faults
//! instead of 16,384 (about 70 ms on a small VM), and is freed as fast. Advice only:
//! where the kernel's THP mode is `always` or `never`, nothing changes; with `madvise`
//! (the usual default) only advised memory gets huge pages.

/// Smallest length advised: below two huge pages, too little of a buffer can be aligned
/// to one to be worth a system call.
pub const MIN_ADVISED: usize = 4 << 20;
const HUGE_PAGE: usize = 2 << 20;

/// Asks for huge pages on the whole huge pages inside the `len` bytes at `ptr` (memory
/// of this process, written or not: the advice changes how pages are backed, never their
/// contents). Does nothing below [`MIN_ADVISED`]; a failure is ignored.
pub fn advise(ptr: *const u8, len: usize) {
    if ptr.is_null() || len < MIN_ADVISED {
        return;
    }
    let start = ptr as usize;
    let (first, last) = (
        start.next_multiple_of(HUGE_PAGE),
        start.saturating_add(len) / HUGE_PAGE * HUGE_PAGE,
    );
    if last <= first {
        return;
    }
    // SAFETY: madvise reads no memory and writes none; MADV_HUGEPAGE only changes how
    // the pages of `first..last` are backed, never their contents, and fails harmlessly
    // (ENOMEM) on a range that is not mapped.
    unsafe {
        libc::madvise(
            first as *mut libc::c_void,
            last - first,
            libc::MADV_HUGEPAGE,
        );
    }
}
