//! The shipped `resurgam` binary: the supervisor, its CLI and the built-in actors.

fn main() -> std::process::ExitCode {
    resurgam::main_with(resurgam::Registry::with_builtins())
}
