//! Per-task-type rate limiting on one worker: runs of a task are spaced at
//! least `period / count` apart (a token bucket of capacity one, as Celery's).
//! A task waiting for its turn stays unacknowledged: nothing is dropped or
//! acked early.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use task_core::{RateLimit, Registry};
use tokio::time::Instant;

/// Spaces the runs of one task type.
#[derive(Debug)]
pub(crate) struct RateLimiter {
    interval: Duration,
    next_free: Mutex<Option<Instant>>,
}

impl RateLimiter {
    pub(crate) fn new(rate: RateLimit) -> Self {
        Self {
            interval: rate.interval(),
            next_free: Mutex::new(None),
        }
    }

    /// Waits until this run may start, reserving its turn first so that
    /// concurrent callers get consecutive turns.
    pub(crate) async fn acquire(&self) {
        let turn = {
            let mut next_free = self
                .next_free
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let now = Instant::now();
            let turn = next_free.map_or(now, |free| free.max(now));
            *next_free = Some(turn + self.interval);
            turn
        };
        tokio::time::sleep_until(turn).await;
    }
}

/// One limiter per rate-limited task in the registry.
pub(crate) fn limiters(registry: &Registry) -> HashMap<&'static str, RateLimiter> {
    registry
        .names()
        .into_iter()
        .filter_map(|name| {
            let rate = registry.get(name)?.options.rate_limit?;
            Some((name, RateLimiter::new(rate)))
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
            limiter.acquire().await;
            turns.push(start.elapsed().as_millis());
        }
        assert_eq!(turns, [0, 100, 200, 300, 400]);
    }
}
