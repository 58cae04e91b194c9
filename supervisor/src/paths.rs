//! Where an actor's files live. Names are validated by the config ([A-Za-z0-9_-]{1,64}),
//! so joining them can never leave the directory.

use std::path::PathBuf;

use resurgam_shared::config::{Config, DISK_COPY_SUFFIX, MMAP_SUFFIX};

/// The memory-mapped checkpoint file (runtime directory).
pub fn mmap_file(config: &Config, actor: &str) -> PathBuf {
    config
        .supervisor
        .runtime_dir
        .join(format!("{actor}{MMAP_SUFFIX}"))
}

/// The synced disk copy of the checkpoint (state directory).
pub fn disk_copy(config: &Config, actor: &str) -> PathBuf {
    config
        .supervisor
        .state_dir
        .join(format!("{actor}{DISK_COPY_SUFFIX}"))
}
