//! When and how a failed task is retried: [`RetryPolicy`] (Celery's
//! `max_retries`, `default_retry_delay`, `retry_backoff`, `retry_backoff_max`,
//! `retry_jitter`, `autoretry_for`).

use std::any::TypeId;
use std::fmt;
use std::time::Duration;

use crate::TaskError;

/// An error type named by path in `autoretry_for = [...]`, matched by type
/// identity ([`TypeId`]) against the error a task failed with
/// ([`TaskError::source_is`]), never by its name.
#[derive(Clone, Copy)]
pub struct ErrorType {
    id: fn() -> TypeId,
    name: fn() -> &'static str,
}

impl ErrorType {
    /// The error type `T` (usable in `const` context).
    pub const fn of<T: std::error::Error + 'static>() -> Self {
        Self {
            id: TypeId::of::<T>,
            name: std::any::type_name::<T>,
        }
    }

    /// The type's [`TypeId`].
    pub fn type_id(&self) -> TypeId {
        (self.id)()
    }

    /// The type's full name (`std::io::error::Error`), for messages only.
    pub fn name(&self) -> &'static str {
        (self.name)()
    }
}

impl PartialEq for ErrorType {
    fn eq(&self, other: &Self) -> bool {
        self.type_id() == other.type_id()
    }
}

impl Eq for ErrorType {}

impl fmt::Debug for ErrorType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A task's retry settings, declared with `#[task(...)]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct RetryPolicy {
    /// Retries allowed after the first run (`None`: unlimited). Celery's default is 3.
    pub max_retries: Option<u32>,
    /// Delay before a retry when backoff is off and the error names none.
    pub default_delay: Duration,
    /// Exponential backoff factor: retry `n` (0-based) waits `backoff × 2^n`,
    /// capped at `backoff_max`. `None`: every retry waits `default_delay`.
    pub backoff: Option<Duration>,
    /// The cap on backoff delays.
    pub backoff_max: Duration,
    /// Full jitter: the delay is drawn uniformly from `[0, computed delay]`
    /// so that failing tasks do not retry in lockstep.
    pub jitter: bool,
    /// Exception names (`TaskError::exc_type`) that retry automatically: the
    /// string entries of `autoretry_for`, e.g. `"TimeoutError"` for
    /// `TaskError::new("TimeoutError", ..)`.
    pub autoretry_for: &'static [&'static str],
    /// Error types that retry automatically: the path entries of
    /// `autoretry_for`, matched by type identity with the error the body
    /// returned (or converted with `?`), not by name.
    pub autoretry_types: &'static [ErrorType],
}

impl RetryPolicy {
    /// Celery's defaults: 3 retries, 180 s apart, no backoff, jitter on, no
    /// automatic retries (only explicit `TaskError::retry`).
    pub const DEFAULT: RetryPolicy = RetryPolicy {
        max_retries: Some(3),
        default_delay: Duration::from_secs(180),
        backoff: None,
        backoff_max: Duration::from_secs(600),
        jitter: true,
        autoretry_for: &[],
        autoretry_types: &[],
    };

    /// Sets [`RetryPolicy::max_retries`] (`None`: unlimited; usable in `const` context).
    pub const fn with_max_retries(mut self, max_retries: Option<u32>) -> Self {
        self.max_retries = max_retries;
        self
    }

    /// Sets [`RetryPolicy::default_delay`] in milliseconds (usable in `const` context).
    pub const fn with_default_delay_ms(mut self, millis: u64) -> Self {
        self.default_delay = Duration::from_millis(millis);
        self
    }

    /// Sets [`RetryPolicy::backoff`] in milliseconds (`None`: no backoff;
    /// usable in `const` context).
    pub const fn with_backoff_ms(mut self, millis: Option<u64>) -> Self {
        self.backoff = match millis {
            Some(millis) => Some(Duration::from_millis(millis)),
            None => None,
        };
        self
    }

    /// Sets [`RetryPolicy::backoff_max`] in milliseconds (usable in `const` context).
    pub const fn with_backoff_max_ms(mut self, millis: u64) -> Self {
        self.backoff_max = Duration::from_millis(millis);
        self
    }

    /// Sets [`RetryPolicy::jitter`] (usable in `const` context).
    pub const fn with_jitter(mut self, jitter: bool) -> Self {
        self.jitter = jitter;
        self
    }

    /// Sets [`RetryPolicy::autoretry_for`] (usable in `const` context).
    pub const fn with_autoretry_for(mut self, autoretry_for: &'static [&'static str]) -> Self {
        self.autoretry_for = autoretry_for;
        self
    }

    /// Sets [`RetryPolicy::autoretry_types`] (usable in `const` context).
    pub const fn with_autoretry_types(mut self, autoretry_types: &'static [ErrorType]) -> Self {
        self.autoretry_types = autoretry_types;
        self
    }

    /// Whether `error` retries automatically: its `exc_type` is one of
    /// [`RetryPolicy::autoretry_for`], or the error it was converted from is
    /// of one of the types in [`RetryPolicy::autoretry_types`].
    pub fn retries_automatically(&self, error: &TaskError) -> bool {
        self.autoretry_for.contains(&error.exc_type())
            || error.source_type_id().is_some_and(|id| {
                self.autoretry_types
                    .iter()
                    .any(|retried| retried.type_id() == id)
            })
    }

    /// Whether a task already retried `retries` times may retry again.
    pub fn allows_retry(&self, retries: u32) -> bool {
        self.max_retries.is_none_or(|max| retries < max)
    }

    /// The delay before retry number `retries` (0 for the first retry),
    /// given `unit_random` drawn uniformly from `[0, 1)` for the jitter
    /// (clamped to `[0, 1]`; not a number counts as 1, the whole delay).
    pub fn delay(&self, retries: u32, unit_random: f64) -> Duration {
        let delay = match self.backoff {
            Some(factor) => {
                let exponent = retries.min(63);
                factor
                    .checked_mul(1u32.checked_shl(exponent.min(31)).unwrap_or(u32::MAX))
                    .unwrap_or(self.backoff_max)
                    .min(self.backoff_max)
            }
            None => self.default_delay,
        };
        if self.jitter {
            // `mul_f64` panics on NaN.
            let draw = if unit_random.is_nan() {
                1.0
            } else {
                unit_random.clamp(0.0, 1.0)
            };
            delay.mul_f64(draw)
        } else {
            delay
        }
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self::DEFAULT
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_and_jitter_stays_within_it() {
        let policy = RetryPolicy {
            backoff: Some(Duration::from_secs(1)),
            backoff_max: Duration::from_secs(10),
            jitter: false,
            ..RetryPolicy::DEFAULT
        };
        let delays: Vec<u64> = (0..6).map(|n| policy.delay(n, 0.5).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 10, 10]);
        assert_eq!(policy.delay(1000, 0.5), Duration::from_secs(10));
        let jittered = RetryPolicy {
            jitter: true,
            ..policy
        };
        assert_eq!(jittered.delay(3, 0.25), Duration::from_secs(2));
        assert_eq!(jittered.delay(3, 0.0), Duration::ZERO);
    }

    /// Full jitter draws the delay from `[0, capped delay]`: the draw is a
    /// parameter, so both ends and the cap are pinned exactly.
    #[test]
    fn full_jitter_spans_zero_to_the_capped_delay() {
        let secs = Duration::from_secs;
        let policy = RetryPolicy {
            backoff: Some(secs(1)),
            backoff_max: secs(10),
            jitter: true,
            ..RetryPolicy::DEFAULT
        };
        // Draw 0: no wait at all, whatever the retry.
        for retries in [0, 3, 1000, u32::MAX] {
            assert_eq!(
                policy.delay(retries, 0.0),
                Duration::ZERO,
                "retry {retries}"
            );
        }
        // Draw 1: the whole backoff below the cap (1 s × 2^2)...
        assert_eq!(policy.delay(2, 1.0), secs(4));
        assert_eq!(policy.delay(2, 0.5), secs(2));
        // ... and the cap above it (16 s, 2^40 s, 2^(2^32) s uncapped).
        for retries in [4, 40, 1000, u32::MAX] {
            assert_eq!(policy.delay(retries, 1.0), secs(10), "retry {retries}");
            assert_eq!(policy.delay(retries, 0.5), secs(5), "retry {retries}");
        }
        // A draw outside [0, 1] (or not a number) never leaves the range.
        assert_eq!(policy.delay(4, 7.0), secs(10));
        assert_eq!(policy.delay(4, -1.0), Duration::ZERO);
        assert_eq!(policy.delay(4, f64::INFINITY), secs(10));
        assert_eq!(policy.delay(4, f64::NAN), secs(10));
        // Jitter off: the draw is ignored.
        let exact = RetryPolicy {
            jitter: false,
            ..policy
        };
        for draw in [0.0, 0.3, 1.0] {
            assert_eq!(exact.delay(2, draw), secs(4));
            assert_eq!(exact.delay(u32::MAX, draw), secs(10));
        }
        // Without backoff the default delay is the top of the jitter range.
        assert_eq!(RetryPolicy::DEFAULT.delay(1000, 1.0), secs(180));
        assert_eq!(RetryPolicy::DEFAULT.delay(0, 0.0), Duration::ZERO);
    }

    #[test]
    fn retry_budget_and_automatic_retries() {
        let policy = RetryPolicy {
            autoretry_for: &["IoError"],
            ..RetryPolicy::DEFAULT
        };
        assert!(policy.allows_retry(2));
        assert!(!policy.allows_retry(3));
        assert!(RetryPolicy {
            max_retries: None,
            ..policy
        }
        .allows_retry(u32::MAX));
        assert!(policy.retries_automatically(&TaskError::new("IoError", "x")));
        assert!(!policy.retries_automatically(&TaskError::new("ValueError", "x")));
        assert_eq!(RetryPolicy::DEFAULT.delay(0, 0.9), Duration::from_secs(162));
    }
}

/// How the retry a task asks for differs from the run that asks (Celery's
/// `self.retry(args=, kwargs=, countdown=, eta=, max_retries=, queue=)`),
/// given to [`TaskError::retry_with`]. What is not set stays as it was.
///
/// ```
/// use std::time::Duration;
/// use serde_json::json;
/// use task_core::{Retry, TaskError};
///
/// // Again in 5 s on the `slow` queue, with keyword arguments instead of
/// // positional ones, at most 10 times in all.
/// let err = TaskError::msg("busy").retry_with(
///     Retry::new()
///         .args([])
///         .kwargs(json!({"page": 2}).as_object().cloned().unwrap_or_default())
///         .countdown(Duration::from_secs(5))
///         .queue("slow")
///         .max_retries(10),
/// );
/// assert!(err.retry_request().is_some());
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Retry {
    args: Option<Vec<serde_json::Value>>,
    kwargs: Option<serde_json::Map<String, serde_json::Value>>,
    countdown: Option<Duration>,
    eta: Option<chrono::DateTime<chrono::Utc>>,
    max_retries: Option<u32>,
    queue: Option<String>,
}

impl Retry {
    /// A retry like the run that asks for it.
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs again with these positional arguments.
    pub fn args(mut self, args: impl IntoIterator<Item = serde_json::Value>) -> Self {
        self.args = Some(args.into_iter().collect());
        self
    }

    /// Runs again with these keyword arguments.
    pub fn kwargs(mut self, kwargs: serde_json::Map<String, serde_json::Value>) -> Self {
        self.kwargs = Some(kwargs);
        self
    }

    /// Runs again after `countdown` (instead of the retry policy's delay).
    pub fn countdown(mut self, countdown: Duration) -> Self {
        self.countdown = Some(countdown);
        self
    }

    /// Runs again at `eta` (instead of the retry policy's delay).
    pub fn eta(mut self, eta: chrono::DateTime<chrono::Utc>) -> Self {
        self.eta = Some(eta);
        self
    }

    /// Allows this many retries in all for this decision (instead of the
    /// task's `max_retries`).
    pub fn max_retries(mut self, max_retries: u32) -> Self {
        self.max_retries = Some(max_retries);
        self
    }

    /// Runs again from this queue.
    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.queue = Some(queue.into());
        self
    }

    /// The positional arguments of the next run, if changed.
    pub fn new_args(&self) -> Option<&[serde_json::Value]> {
        self.args.as_deref()
    }

    /// The keyword arguments of the next run, if changed.
    pub fn new_kwargs(&self) -> Option<&serde_json::Map<String, serde_json::Value>> {
        self.kwargs.as_ref()
    }

    /// The queue of the next run, if changed.
    pub fn new_queue(&self) -> Option<&str> {
        self.queue.as_deref()
    }

    /// The wait before the next run, if set: the countdown, else the time
    /// until the ETA (none if it passed).
    pub fn wait(&self) -> Option<Duration> {
        self.countdown.or_else(|| {
            let eta = self.eta?;
            Some((eta - crate::clock::now()).to_std().unwrap_or_default())
        })
    }

    /// The `max_retries` of this decision, if changed.
    pub fn max_retries_now(&self) -> Option<u32> {
        self.max_retries
    }

    /// Whether the message must be rewritten (new arguments).
    pub fn changes_arguments(&self) -> bool {
        self.args.is_some() || self.kwargs.is_some()
    }
}
