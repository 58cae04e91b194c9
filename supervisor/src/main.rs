//! The shipped `resurgam` binary: the supervisor, its CLI and the built-in actors.

/// Large allocations on huge pages: a restored state of many MiB is faulted in (and
/// freed when its worker dies) in a fraction of the time.
#[global_allocator]
static ALLOC: resurgam::HugePageAlloc = resurgam::HugePageAlloc;

fn main() -> std::process::ExitCode {
    resurgam::main_with(resurgam::Registry::with_builtins())
}
