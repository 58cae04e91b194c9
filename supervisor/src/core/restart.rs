//! Restart intensity (at most N restarts within a window, as in Erlang/OTP) and
//! exponential backoff. Pure: the clock is passed in.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use resurgam_shared::config::Policy;

/// Why a worker is not restarted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GiveUp {
    pub restarts: usize,
    pub window: Duration,
}

/// Restart bookkeeping of one actor.
#[derive(Debug, Default, Clone)]
pub struct RestartTracker {
    recent: VecDeque<Instant>,
    /// Consecutive quick failures (reset once a worker stays up `min_uptime`).
    level: u32,
}

impl RestartTracker {
    /// Records a death at `now` of a worker that had been serving since `alive_since`
    /// (None if it never became ready). Returns the delay before the next start, or
    /// why there is none.
    pub fn on_death(
        &mut self,
        policy: &Policy,
        now: Instant,
        alive_since: Option<Instant>,
    ) -> Result<Duration, GiveUp> {
        if alive_since.is_some_and(|t| now.saturating_duration_since(t) >= policy.min_uptime) {
            self.level = 0;
        }
        while let Some(&t) = self.recent.front() {
            if now.saturating_duration_since(t) > policy.restart_window {
                self.recent.pop_front();
            } else {
                break;
            }
        }
        self.recent.push_back(now);
        if policy.max_restarts >= 0 && self.recent.len() as u64 > policy.max_restarts as u64 {
            return Err(GiveUp {
                restarts: self.recent.len() - 1,
                window: policy.restart_window,
            });
        }
        let delay = if self.level == 0 {
            Duration::ZERO
        } else {
            let shift = (self.level - 1).min(30);
            policy
                .backoff_initial
                .saturating_mul(1u32 << shift)
                .min(policy.backoff_max)
        };
        self.level = self.level.saturating_add(1);
        Ok(delay)
    }

    /// Forgets all history (operator `restart` of a DEAD actor).
    pub fn reset(&mut self) {
        self.recent.clear();
        self.level = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(max_restarts: i64) -> Policy {
        Policy {
            max_restarts,
            restart_window: Duration::from_secs(10),
            backoff_initial: Duration::from_millis(10),
            backoff_max: Duration::from_millis(50),
            min_uptime: Duration::from_secs(1),
            ..Policy::default()
        }
    }

    #[test]
    fn first_restart_is_immediate_then_backoff_doubles_to_the_cap() {
        let p = policy(-1);
        let mut t = RestartTracker::default();
        let now = Instant::now();
        let delays: Vec<_> = (0..6)
            .map(|i| {
                t.on_death(&p, now + Duration::from_millis(i), None)
                    .unwrap()
            })
            .collect();
        let ms: Vec<u128> = delays.iter().map(|d| d.as_millis()).collect();
        assert_eq!(ms, vec![0, 10, 20, 40, 50, 50]);
    }

    #[test]
    fn uptime_resets_backoff() {
        let p = policy(-1);
        let mut t = RestartTracker::default();
        let now = Instant::now();
        t.on_death(&p, now, None).unwrap();
        t.on_death(&p, now, None).unwrap();
        let later = now + Duration::from_secs(5);
        let d = t
            .on_death(&p, later, Some(later - Duration::from_secs(2)))
            .unwrap();
        assert_eq!(d, Duration::ZERO);
    }

    #[test]
    fn intensity_limit_gives_up_within_the_window_only() {
        let p = policy(2);
        let mut t = RestartTracker::default();
        let now = Instant::now();
        assert!(t.on_death(&p, now, None).is_ok());
        assert!(t.on_death(&p, now + Duration::from_secs(1), None).is_ok());
        let e = t
            .on_death(&p, now + Duration::from_secs(2), None)
            .unwrap_err();
        assert_eq!(e.restarts, 2);
        // Outside the window the old deaths no longer count.
        let mut t = RestartTracker::default();
        assert!(t.on_death(&p, now, None).is_ok());
        assert!(t.on_death(&p, now + Duration::from_secs(1), None).is_ok());
        assert!(t.on_death(&p, now + Duration::from_secs(20), None).is_ok());
    }

    #[test]
    fn zero_restarts_means_the_first_death_is_final() {
        let mut t = RestartTracker::default();
        assert!(t.on_death(&policy(0), Instant::now(), None).is_err());
    }
}
