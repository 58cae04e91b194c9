//! Integration tests: the real `resurgam` binary, a temporary config and directories per
//! test, driven from the outside through the control socket and the CLI (DESIGN §7).

// The harness: a supervisor in a tempdir, clients, status polling, bounded waits, cleanup.
mod util;

// G1 under load: concurrent pipelined clients while workers are SIGKILLed at random.
mod chaos;
// G2: kill -9 during a checkpoint of a large state; corrupt newest slot and disk copy.
mod checkpoint;
// G6 for config files: `check` and `run` refuse bad configs with file, line and reason.
mod config;
// DESIGN §6 logs: plain one-line events with actor and pid fields, no colour codes in files.
mod logs;
// G4: crash loops end in DEAD (and `restart` revives), poison calls, operator restarts.
mod lifecycle;
// G9: no worker outlives the supervisor; graceful stop and restart on the same dirs.
mod orphans;
// G6/G8 for the control protocol: bad requests, oversized lines, pipelining, the CLI.
mod protocol;
