//! What the fuzz targets share: an allocator that turns an unbounded allocation into a
//! crash, and a scratch directory for the parsers that read files.

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Most bytes the Rust code of a target may hold at once. Inputs are small (libFuzzer's
/// default `-max_len` is 4 KiB, and a target's files are at most 1 MiB), so a parser
/// that gets near this trusted a length it read instead of the bytes it has: the run
/// aborts (libFuzzer reports a crash and saves the input) instead of swapping or being
/// killed without a trace.
pub const MAX_LIVE_BYTES: usize = 256 << 20;

/// The system allocator, counting live bytes and aborting past [`MAX_LIVE_BYTES`].
pub struct Bounded;

static LIVE: AtomicUsize = AtomicUsize::new(0);

fn over_limit() -> ! {
    const MSG: &[u8] = b"fuzz: allocation over the limit (MAX_LIVE_BYTES): unbounded allocation\n";
    // SAFETY: write(2) on stderr with a static buffer; no allocation here.
    unsafe {
        libc_write(2, MSG.as_ptr(), MSG.len());
    }
    std::process::abort()
}

unsafe extern "C" {
    #[link_name = "write"]
    fn libc_write(fd: i32, buf: *const u8, count: usize) -> isize;
}

fn grow(by: usize) {
    let before = LIVE.fetch_add(by, Ordering::Relaxed);
    if before.saturating_add(by) > MAX_LIVE_BYTES {
        over_limit();
    }
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged; the
// counting around it touches only an atomic.
unsafe impl GlobalAlloc for Bounded {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        grow(layout.size());
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        grow(layout.size());
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > layout.size() {
            grow(new_size - layout.size());
        } else {
            LIVE.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
        }
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

static DIR: OnceLock<PathBuf> = OnceLock::new();

unsafe extern "C" {
    fn atexit(callback: extern "C" fn()) -> i32;
}

extern "C" fn remove_scratch_dir() {
    if let Some(dir) = DIR.get() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// A directory of this process for the files a target writes: on `/dev/shm` when there
/// is one (no disk I/O per input), else in the temporary directory. Removed when the
/// process exits normally (libFuzzer ends with `exit`); a crash leaves it for a look.
pub fn scratch_dir() -> &'static Path {
    DIR.get_or_init(|| {
        let base = if Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let dir = base.join(format!("resurgam-fuzz-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the scratch directory");
        // SAFETY: registers a plain function with no captured state.
        unsafe {
            atexit(remove_scratch_dir);
        }
        dir
    })
}

/// Removes everything in `dir` (it stays).
pub fn empty_dir(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                let _ = std::fs::remove_dir_all(&p);
            } else {
                let _ = std::fs::remove_file(&p);
            }
        }
    }
}
