//! Identity and resource limits of an actor's code, and the system calls a worker makes
//! between `fork` and `exec` of an exec actor's program.
//!
//! Everything here that runs in a forked child ([`in_child`]) makes raw system calls on
//! values prepared before the fork ([`Prepared`]): no allocation, no lock, nothing that
//! is not async-signal-safe.

use std::io;

use resurgam_shared::ipc::{Privileges, Rlimit};

/// At most one of each resource.
const MAX_LIMITS: usize = 5;

/// Privileges in a form the forked child can apply without allocating.
#[derive(Clone, Copy)]
pub struct Prepared {
    identity: Option<(libc::uid_t, libc::gid_t)>,
    limits: [(libc::__rlimit_resource_t, libc::rlim_t); MAX_LIMITS],
    count: usize,
}

impl Prepared {
    pub fn new(p: &Privileges) -> Prepared {
        let mut limits = [(0, 0); MAX_LIMITS];
        let mut count = 0;
        for l in p.limits.iter().take(MAX_LIMITS) {
            limits[count] = resource(*l);
            count += 1;
        }
        Prepared {
            identity: p.identity,
            limits,
            count,
        }
    }

    /// Applies the limits, then the identity, to this process.
    pub fn apply(&self) -> io::Result<()> {
        for &(res, value) in &self.limits[..self.count] {
            let lim = libc::rlimit {
                rlim_cur: value,
                rlim_max: value,
            };
            // SAFETY: setrlimit reads the struct we pass; it changes only this process.
            if unsafe { libc::setrlimit(res, &lim) } != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        if let Some((uid, gid)) = self.identity {
            let groups = [gid];
            // SAFETY: setgroups reads `groups` (one valid gid); setgid/setuid take plain
            // integers. Order matters: groups and gid while still privileged, uid last.
            unsafe {
                if libc::setgroups(1, groups.as_ptr()) != 0 {
                    return Err(io::Error::last_os_error());
                }
                if libc::setgid(gid) != 0 {
                    return Err(io::Error::last_os_error());
                }
                if libc::setuid(uid) != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
        }
        Ok(())
    }
}

fn resource(l: Rlimit) -> (libc::__rlimit_resource_t, libc::rlim_t) {
    match l {
        Rlimit::AddressSpace(v) => (libc::RLIMIT_AS, v),
        Rlimit::OpenFiles(v) => (libc::RLIMIT_NOFILE, v),
        Rlimit::Core(v) => (libc::RLIMIT_CORE, v),
        Rlimit::Processes(v) => (libc::RLIMIT_NPROC, v),
        Rlimit::CpuSeconds(v) => (libc::RLIMIT_CPU, v),
    }
}

/// In the forked child of an exec actor's program, before `exec`: puts the protocol
/// socket at `target` (without close-on-exec; every other fd of the worker has it),
/// applies limits and identity, then asks to be killed with the worker
/// (`PR_SET_PDEATHSIG`, set after the identity change, which would clear it) and checks
/// the worker is still its parent.
pub fn in_child(
    fd: libc::c_int,
    target: libc::c_int,
    prepared: &Prepared,
    parent: libc::pid_t,
) -> io::Result<()> {
    // SAFETY: raw system calls on integers and on `prepared` (plain data, copied into the
    // child by fork); none allocates or takes a lock, so they are safe between fork and
    // exec of a multi-threaded process.
    unsafe {
        if fd != target && libc::dup2(fd, target) < 0 {
            return Err(io::Error::last_os_error());
        }
        if libc::fcntl(target, libc::F_SETFD, 0) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    prepared.apply()?;
    // SAFETY: prctl with integer arguments; getppid takes none.
    unsafe {
        if libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        ) != 0
        {
            return Err(io::Error::last_os_error());
        }
        if libc::getppid() != parent {
            return Err(io::Error::from_raw_os_error(libc::ESRCH));
        }
    }
    Ok(())
}
