//! Issue 10's bounds, from outside: the main loop sleeps while an actor waits out a long
//! restart backoff (no timer outlives its phase); …

use std::time::Duration;

use serde_json::json;

use crate::util::Supervisor;

const WAIT: Duration = Duration::from_secs(30);

/// CPU time (user + system, all threads) a process has used, in clock ticks.
fn cpu_ticks(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/stat: {e}"));
    // Fields after the command name (which may hold spaces), from field 3 on.
    let rest = &stat[stat.rfind(')').expect("comm ends with ')'") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line.
    let field = |n: usize| -> u64 { fields[n - 3].parse().expect("a number") };
    field(14) + field(15)
}

fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions; it only reads a system constant.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(t).ok().filter(|&t| t > 0).unwrap_or(100)
}

/// An actor whose program exits before it is ready dies while STARTING; its second quick
/// death puts it into a restart backoff (60 s) far longer than its `startup_timeout`
/// (200 ms). The supervisor must then sleep: before the fix the start deadline of the
/// dead worker stayed set, was due forever, and the loop spun at 100 % CPU.
#[test]
fn an_idle_supervisor_with_an_actor_in_a_long_backoff_uses_no_cpu() {
    let counter = "[[actor]]\nname = \"c\"\nkind = \"counter\"\n";
    let sup = Supervisor::start(counter);
    sup.write_config(&format!(
        "{counter}\n[[actor]]\nname = \"flaky\"\nkind = \"exec\"\n\
         command = [\"sh\", \"-c\", \"exit 3\"]\nstartup_timeout = \"200ms\"\n\
         backoff_initial = \"60s\"\nbackoff_max = \"60s\"\nmin_uptime = \"1h\"\n"
    ));
    let mut c = sup.client();
    c.reload().expect("reload");
    sup.wait_until("flaky to wait out a backoff", WAIT, || {
        let a = sup.actor("flaky");
        a["state"] == "RESTARTING" && a["restarts"].as_u64().unwrap_or(0) >= 1
    });
    // Let the dead worker's start-up timeout pass, then measure an idle interval.
    std::thread::sleep(Duration::from_millis(500));
    let pid = sup.pid();
    let interval = Duration::from_secs(2);
    let before = cpu_ticks(pid);
    let started = std::time::Instant::now();
    std::thread::sleep(interval);
    let used = cpu_ticks(pid) - before;
    let elapsed_ticks = started.elapsed().as_secs_f64() * clock_ticks_per_second() as f64;
    eprintln!("supervisor used {used} ticks of CPU in {elapsed_ticks:.0} ticks idle");
    assert!(
        (used as f64) < elapsed_ticks * 0.05,
        "the idle supervisor used {used} of {elapsed_ticks:.0} clock ticks (over 5 %)\n{}",
        sup.log_tail(30)
    );
    assert_eq!(
        sup.actor("flaky")["state"],
        "RESTARTING",
        "still in its backoff"
    );
    // And it still serves.
    assert_eq!(c.call("c", "incr", json!(2)).unwrap(), json!(2));
}
