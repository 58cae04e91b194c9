//! Integration tests: the real `resurgam` binary, a temporary config and directories per
//! test, driven from the outside through the control socket and the CLI (ARCHITECTURE.md, Testing).

// The harness: a supervisor in a tempdir, clients, status polling, bounded waits, cleanup.
mod util;

// G1 under load: concurrent pipelined clients while workers are SIGKILLed at random.
mod chaos;
// G2: kill -9 during a checkpoint of a large state (and a death mid-write); corrupt newest slot and disk copy.
mod checkpoint;
mod cli;
// G6 for config files: `check` and `run` refuse bad configs with file, line and reason.
mod config;
// Logs: plain one-line events with actor and pid fields, no colour codes in files.
mod logs;
// G4: crash loops end in DEAD (and `restart` revives), poison calls, operator restarts.
mod lifecycle;
// G9: no worker outlives the supervisor; graceful stop and restart on the same dirs.
mod orphans;
// Metrics (Prometheus text, checked by the official client's parser) and the event stream.
mod observe;
// G6/G8 for the control protocol: bad requests, oversized lines, pipelining, the CLI.
mod protocol;
// G5, G9: the shipped systemd unit under a real systemd booted in a namespace.
mod systemd;
// G3/G6 durable call log: supervisor SIGKILLs under load, torn/corrupt tails, full disk.
mod durable;
// G6 for the state and runtime dirs: links, loose modes, other users, a second supervisor.
mod statedir;
// Reload (op and SIGHUP): added/removed/changed actors, untouched ones kept, bad configs refused.
mod reload;
// G5: SIGSTOPped workers are detected as hung and recovered; not with heartbeat_timeout "0s".
mod hang;
// Regressions found in review: each test failed before its fix.
mod regression;
// G7: the control socket's mode and SO_PEERCRED check keep other users out.
mod access;
// Exec actors (docs/exec-protocol.md): Python/raw programs, misbehaviour, DEAD, reload, durable log.
mod exec;
// G1 for exec actors: pipelined appends while programs and workers are SIGKILLed at random.
mod exec_chaos;
// State export/import: a round trip across supervisors, call order, refusals, exactly-once.
mod export;
// G7/G9 for exec actors: no descendant outlives them, scrubbed env and fds, user/group/limits.
mod exec_isolation;
// The Python SDK's unit tests (python/tests), run against the binary under test.
mod python;
// One event loop: the supervisor's thread count does not grow with actors or connections.
mod shell;
// The fork server: forked workers stay the supervisor's children; its crash; upgrades.
mod forkserver;
// G10: keyed calls run once: retries on other connections, after kills, under chaos.
mod idempotency;
// Issue 10: bounded memory per connection, an idle loop that sleeps, progress-based hang detection.
mod bounds;
