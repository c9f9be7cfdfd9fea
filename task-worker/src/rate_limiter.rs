//! Per-task-type rate limiting on one worker: runs of a task are spaced at
//! least `period / count` apart (a token bucket of capacity one, as Celery's).
//! A task waiting for its turn stays unacknowledged: nothing is dropped or
//! acked early.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use task_core::{RateLimit, Registry};
use tokio::time::Instant;

/// Spaces the runs of one task type.
#[derive(Debug)]
pub(crate) struct RateLimiter {
    rate: RateLimit,
    interval: Duration,
    schedule: Mutex<Schedule>,
}

#[derive(Debug, Default)]
struct Schedule {
    /// The earliest start of the next run reserved in this worker.
    next_free: Option<Instant>,
    /// When the next delivery handed back to the broker should return:
    /// parked deliveries come back spaced by the interval, after the runs
    /// reserved already.
    next_return: Option<Instant>,
}

/// When a delivery of a rate-limited task may run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Turn {
    /// Its run is reserved for this instant: wait in the worker.
    At(Instant),
    /// Its turn is beyond the horizon: hand it back to the broker for this
    /// long (nothing is reserved; it asks again when it returns), so that it
    /// does not hold a prefetch slot that other task types need.
    Park(Duration),
}

impl RateLimiter {
    pub(crate) fn new(rate: RateLimit) -> Self {
        Self {
            rate,
            interval: rate.interval(),
            schedule: Mutex::default(),
        }
    }

    /// The rate it keeps.
    pub(crate) fn rate(&self) -> RateLimit {
        self.rate
    }

    /// Reserves the next run if it can start within `horizon`; otherwise
    /// says how long to park the delivery.
    pub(crate) fn reserve(&self, horizon: Duration) -> Turn {
        let mut schedule = self
            .schedule
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        let free = schedule.next_free.map_or(now, |free| free.max(now));
        if free - now <= horizon {
            schedule.next_free = Some(free + self.interval);
            return Turn::At(free);
        }
        let back = schedule.next_return.map_or(free, |back| back.max(free));
        schedule.next_return = Some(back + self.interval);
        Turn::Park(back - now)
    }
}

/// One limiter per rate-limited task in the registry.
pub(crate) fn limiters(registry: &Registry) -> HashMap<&'static str, Arc<RateLimiter>> {
    registry
        .names()
        .into_iter()
        .filter_map(|name| {
            let rate = registry.get(name)?.options.rate_limit?;
            Some((name, Arc::new(RateLimiter::new(rate))))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn runs_are_spaced_by_the_interval() {
        let limiter = RateLimiter::new(RateLimit::new(10, Duration::from_secs(1)));
        let start = Instant::now();
        let mut turns = Vec::new();
        for _ in 0..5 {
            match limiter.reserve(Duration::from_secs(60)) {
                Turn::At(turn) => {
                    tokio::time::sleep_until(turn).await;
                    turns.push(start.elapsed().as_millis());
                }
                Turn::Park(wait) => panic!("parked for {wait:?}"),
            }
        }
        assert_eq!(turns, [0, 100, 200, 300, 400]);
    }

    #[tokio::test(start_paused = true)]
    async fn turns_beyond_the_horizon_are_parked_and_come_back_spaced() {
        let limiter = RateLimiter::new(RateLimit::new(10, Duration::from_secs(1)));
        let horizon = Duration::from_millis(250);
        let start = Instant::now();
        let turns: Vec<Turn> = (0..6).map(|_| limiter.reserve(horizon)).collect();
        // Four runs fit in 250 ms (0, 100, 200, 250 is not: 300 > 250).
        let at = |ms| Turn::At(start + Duration::from_millis(ms));
        assert_eq!(&turns[..3], [at(0), at(100), at(200)]);
        // The rest come back after the reserved runs, one interval apart.
        assert_eq!(
            &turns[3..],
            [
                Turn::Park(Duration::from_millis(300)),
                Turn::Park(Duration::from_millis(400)),
                Turn::Park(Duration::from_millis(500)),
            ]
        );
        // When the first parked one returns, its turn is free.
        tokio::time::advance(Duration::from_millis(300)).await;
        assert_eq!(
            limiter.reserve(horizon),
            Turn::At(start + Duration::from_millis(300))
        );
    }
}
