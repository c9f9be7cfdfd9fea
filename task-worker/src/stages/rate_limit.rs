//! [`RateLimited`]: runs of a rate-limited task type are spaced out.

use std::collections::HashMap;
use std::time::Duration;

use task_core::pipeline::{Job, Outcome, Stage, Step};

use crate::rate_limiter::{RateLimiter, Turn};

/// A rate-limited task whose turn is less than this far away waits in the
/// worker (unacknowledged, its concurrency slot given back); a later one is
/// handed back to the broker's delay levels until its turn, so that waiting
/// deliveries do not fill the prefetch window that other task types need.
pub(crate) const RATE_LIMIT_HORIZON: Duration = Duration::from_secs(1);

/// Spaces the runs of each rate-limited task type on this worker.
#[derive(Debug)]
pub(crate) struct RateLimited {
    limiters: HashMap<&'static str, RateLimiter>,
}

impl RateLimited {
    /// The limiters of the rate-limited tasks, by task name.
    pub(crate) fn new(limiters: HashMap<&'static str, RateLimiter>) -> Self {
        Self { limiters }
    }
}

impl Stage for RateLimited {
    fn before<'a>(&'a self, job: &'a mut Job<'_>) -> Step<'a> {
        let Some(limiter) = self.limiters.get(job.task.name) else {
            return Step::Next;
        };
        match limiter.reserve(RATE_LIMIT_HORIZON) {
            Turn::At(turn) if turn <= tokio::time::Instant::now() => Step::Next,
            Turn::At(turn) => Step::Wait(Box::pin(async move {
                match job.slot.as_deref_mut() {
                    Some(slot) => slot.wait_until(turn).await,
                    None => tokio::time::sleep_until(turn).await,
                }
                None
            })),
            Turn::Park(wait) => {
                if let Some(slot) = job.slot.as_deref_mut() {
                    slot.release();
                }
                Step::Stop(Outcome::Deferred { wait })
            }
        }
    }
}
