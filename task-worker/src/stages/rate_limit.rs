//! [`RateLimited`]: runs of a rate-limited task type are spaced out.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use task_core::pipeline::{Job, Outcome, Stage, Step, TaskSettings};
use task_core::RateLimit;

use crate::rate_limiter::{RateLimiter, Turn};

/// A rate-limited task whose turn is less than this far away waits in the
/// worker (unacknowledged, its concurrency slot given back); a later one is
/// handed back to the broker's delay levels until its turn, so that waiting
/// deliveries do not fill the prefetch window that other task types need.
pub(crate) const RATE_LIMIT_HORIZON: Duration = Duration::from_secs(1);

/// Spaces the runs of each rate-limited task type on this worker, at the
/// rate its [`TaskSettings`] give now (declared, or changed while running).
#[derive(Debug)]
pub(crate) struct RateLimited {
    settings: Arc<TaskSettings>,
    limiters: RwLock<HashMap<&'static str, Arc<RateLimiter>>>,
}

impl RateLimited {
    /// Starts from `limiters` (those of the declared rates), following the
    /// changes made to `settings`.
    pub(crate) fn new(
        settings: Arc<TaskSettings>,
        limiters: HashMap<&'static str, Arc<RateLimiter>>,
    ) -> Self {
        Self {
            settings,
            limiters: RwLock::new(limiters),
        }
    }

    /// The limiter of `task` at `rate`: a new one when the rate changed.
    fn limiter(&self, task: &'static str, rate: RateLimit) -> Arc<RateLimiter> {
        if let Some(limiter) = self
            .limiters
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(task)
            .filter(|limiter| limiter.rate() == rate)
        {
            return Arc::clone(limiter);
        }
        let mut limiters = self
            .limiters
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let limiter = limiters
            .entry(task)
            .or_insert_with(|| Arc::new(RateLimiter::new(rate)));
        if limiter.rate() != rate {
            *limiter = Arc::new(RateLimiter::new(rate));
        }
        Arc::clone(limiter)
    }
}

impl Stage for RateLimited {
    fn before<'a>(&'a self, job: &'a mut Job<'_>) -> Step<'a> {
        let Some(rate) = self.settings.rate_limit(job.task) else {
            return Step::Next;
        };
        match self
            .limiter(job.task.name, rate)
            .reserve(RATE_LIMIT_HORIZON)
        {
            Turn::At(turn) if turn <= tokio::time::Instant::now() => Step::Next,
            Turn::At(turn) => Step::Wait(Box::pin(async move {
                if task_core::metrics::enabled() {
                    metrics::counter!(crate::metrics::RATE_LIMIT_WAITS, "task" => job.task.name)
                        .increment(1);
                }
                match job.slot.as_deref_mut() {
                    Some(slot) => slot.wait_until(turn).await,
                    None => tokio::time::sleep_until(turn).await,
                }
                None
            })),
            Turn::Park(wait) => {
                if task_core::metrics::enabled() {
                    metrics::counter!(crate::metrics::RATE_LIMIT_WAITS, "task" => job.task.name)
                        .increment(1);
                }
                if let Some(slot) = job.slot.as_deref_mut() {
                    slot.release();
                }
                Step::Stop(Outcome::Deferred { wait })
            }
        }
    }
}
