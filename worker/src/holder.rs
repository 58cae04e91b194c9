//! The address-space holder of a forked worker: a process that shares the worker's
//! memory (`CLONE_VM`) and only waits to be killed, so that the worker's death is seen
//! without waiting for the kernel to tear its memory down.
//!
//! A killed process's pidfd becomes readable (and SIGCHLD is sent) only at the end of its
//! exit, after the kernel has torn down its address space, and that teardown is most of
//! a worker's exit on a VM: measured on a 2-vCPU KVM guest, a process with almost nothing
//! mapped takes about 150 µs from `kill -9` to a readable pidfd, a 1 KiB worker (about
//! 1,000 mapped pages, mostly the binary's code) 250–300 µs, one holding 64 MiB 7–30 ms.
//! While another process still uses the address space, the worker's exit only drops its
//! reference, and its death is seen in about 75 µs whatever its size. The holder dies
//! with the worker (`PR_SET_PDEATHSIG`; the supervisor also kills the worker's group when
//! it reaps the worker) and frees the memory then, while the replacement restores.
//!
//! The holder never touches the shared memory: it runs on a stack of its own, with every
//! signal blocked, and closes its copies of the worker's descriptors (the supervisor must
//! see the worker's sockets close when the worker dies). It is not in the worker's thread
//! group, so nothing the supervisor sees of the worker changes; it is the worker's child
//! (with no exit signal) in the worker's process group. A worker that will run an exec
//! program (whose only child must be its program) or drop privileges (no process of the
//! supervisor's user may share an actor's memory) releases it at its `Init`: it only dies
//! slower then. Workers started without the fork server have none.

use std::sync::atomic::{AtomicI32, Ordering};

/// The holder's pid (0: none).
static HOLDER: AtomicI32 = AtomicI32::new(0);

/// Starts the holder. Call in a single-threaded worker process, before anything else
/// maps memory it would have to share (nothing breaks if it fails: no holder).
pub fn start() {
    const STACK: usize = 64 * 1024;
    // The holder closes its descriptors with close_range (Linux 5.9), whose failure it
    // could not even report: it would write the worker's errno. Probed here, on an empty
    // range; without it there is no holder.
    // SAFETY: closes no descriptor (none is numbered u32::MAX); reads no memory.
    if unsafe { libc::syscall(libc::SYS_close_range, u32::MAX, u32::MAX, 0u32) } != 0 {
        return;
    }
    // SAFETY: a fresh anonymous mapping, never unmapped: the holder runs on it as long as
    // it lives.
    let stack = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            STACK,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
            -1,
            0,
        )
    };
    if stack == libc::MAP_FAILED {
        return;
    }
    use nix::sys::signal::{SigSet, SigmaskHow, sigprocmask};
    let mut old = SigSet::empty();
    // The holder starts with every signal blocked (it inherits this mask).
    if sigprocmask(
        SigmaskHow::SIG_SETMASK,
        Some(&SigSet::all()),
        Some(&mut old),
    )
    .is_err()
    {
        return;
    }
    let parent = std::process::id() as usize;
    // SAFETY: the child shares this address space but runs only `hold`, on the stack
    // mapped above (its top: stacks grow down), touching no memory of ours.
    let pid = unsafe {
        libc::clone(
            hold,
            stack.cast::<u8>().add(STACK).cast(),
            libc::CLONE_VM,
            parent as *mut libc::c_void,
        )
    };
    let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&old), None);
    if pid > 0 {
        HOLDER.store(pid, Ordering::Relaxed);
    }
}

/// Ends the holder, if there is one, and reaps it.
pub(crate) fn release() {
    let pid = HOLDER.swap(0, Ordering::Relaxed);
    if pid <= 0 {
        return;
    }
    // SAFETY: kill and waitpid on our own child; waitpid writes only `status`.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
        let mut status = 0;
        // A child without an exit signal is waited for with __WCLONE.
        while libc::waitpid(pid, &mut status, libc::__WCLONE) < 0
            && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR)
        {}
    }
}

/// The holder's body: raw system calls only, none of which can fail here (so none
/// writes `errno`, which is the worker's).
extern "C" fn hold(parent: *mut libc::c_void) -> libc::c_int {
    // SAFETY: system calls that read no memory but the static name; this process owns
    // the descriptors it closes (its own copy of the table).
    unsafe {
        libc::prctl(libc::PR_SET_NAME, c"w-holder".as_ptr());
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
        if libc::getppid() as usize != parent as usize {
            libc::syscall(libc::SYS_exit, 0);
        }
        libc::syscall(libc::SYS_close_range, 0u32, u32::MAX, 0u32);
        // ppoll of no descriptors, no timeout: sleeps until a signal (pause(2) is not a
        // system call on every architecture, aarch64 has none).
        loop {
            libc::syscall(
                libc::SYS_ppoll,
                std::ptr::null_mut::<libc::pollfd>(),
                0 as libc::nfds_t,
                std::ptr::null::<libc::timespec>(),
                std::ptr::null::<libc::sigset_t>(),
            );
        }
    }
}
