//! Config files: `Config::parse_bytes` (what `Config::load` does with the bytes it read)
//! on any bytes.
//!
//! Asserts: no panic, no unbounded allocation; a rejected file has at least one error,
//! each naming the file and, when it has a place, a line and column inside the text; an
//! accepted one has actors with valid, unique names whose lines are inside the text.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use resurgam_shared::config::{Config, Environment, valid_actor_name};

#[global_allocator]
static ALLOC: resurgam_fuzz::Bounded = resurgam_fuzz::Bounded;

const PATH: &str = "/etc/resurgam/fuzz.toml";

fuzz_target!(|data: &[u8]| {
    let env = Environment {
        state_directory: Some("/var/lib/resurgam".into()),
        runtime_directory: None,
    };
    let path = Path::new(PATH);
    // Lines of the text: a place is at most one past the last line (an error at the end).
    let lines = data.iter().filter(|&&b| b == b'\n').count() + 1;
    match Config::parse_bytes(data.to_vec(), path, &env) {
        Ok(config) => {
            assert_eq!(config.path, path);
            let mut names = std::collections::HashSet::new();
            for actor in &config.actors {
                assert!(valid_actor_name(&actor.name), "{:?}", actor.name);
                assert!(
                    names.insert(actor.name.as_str()),
                    "duplicate {:?}",
                    actor.name
                );
                assert!((1..=lines).contains(&actor.line));
                assert!((1..=lines).contains(&actor.kind_line));
                assert!(config.actor(&actor.name).is_some());
            }
        }
        Err(errors) => {
            assert!(!errors.0.is_empty(), "rejected without an error");
            for e in &errors.0 {
                assert_eq!(e.file, path);
                assert!(!e.message.is_empty());
                if let Some(line) = e.line {
                    assert!((1..=lines).contains(&line), "line {line} of {lines}: {e}");
                }
                if let Some(column) = e.column {
                    assert!(
                        column >= 1 && column <= data.len() + 1,
                        "column {column}: {e}"
                    );
                }
            }
            let _ = errors.to_string();
        }
    }
});
