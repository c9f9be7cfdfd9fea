//! [`TaskSettings`]: per-task settings that can change while a worker runs
//! (rate limits, time limits), as Celery's `rate_limit` and `time_limit`
//! remote-control commands change them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::RwLock;
use std::time::Duration;

use crate::protocol::task_message::TaskRequest;
use crate::registry::TaskRegistration;
use crate::RateLimit;

/// Changes to a task's declared settings, made while the worker runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TaskOverride {
    /// Replaces the declared rate limit (`Some(None)`: no limit).
    pub rate_limit: Option<Option<RateLimit>>,
    /// Replaces the declared hard time limit (`Some(None)`: none).
    pub time_limit: Option<Option<Duration>>,
    /// Replaces the declared soft time limit (`Some(None)`: none).
    pub soft_time_limit: Option<Option<Duration>>,
}

/// The per-task settings of one worker that can change while it runs. A
/// change applies to the runs that start after it. Until the first change
/// reading them costs one atomic load.
#[derive(Debug, Default)]
pub struct TaskSettings {
    changed: AtomicBool,
    overrides: RwLock<HashMap<String, TaskOverride>>,
}

impl TaskSettings {
    /// Sets task `task`'s rate limit (`None`: unlimited), replacing the
    /// declared one.
    pub fn set_rate_limit(&self, task: &str, rate: Option<RateLimit>) {
        self.change(task, |o| o.rate_limit = Some(rate));
    }

    /// Sets task `task`'s hard and soft time limits (`None`: none),
    /// replacing the declared ones. Limits a message carries still win.
    pub fn set_time_limits(&self, task: &str, hard: Option<Duration>, soft: Option<Duration>) {
        self.change(task, |o| {
            o.time_limit = Some(hard);
            o.soft_time_limit = Some(soft);
        });
    }

    /// The changes made to task `task`, if any.
    pub fn override_of(&self, task: &str) -> Option<TaskOverride> {
        if !self.changed.load(Ordering::Acquire) {
            return None;
        }
        self.overrides
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(task)
            .copied()
    }

    /// The rate limit `task` runs under now.
    pub fn rate_limit(&self, task: &TaskRegistration) -> Option<RateLimit> {
        match self.override_of(task.name).and_then(|o| o.rate_limit) {
            Some(rate) => rate,
            None => task.options.rate_limit,
        }
    }

    /// The hard and soft time limits of `request`: the message's, else the
    /// ones set while running, else the task's declared ones.
    pub fn limits(
        &self,
        task: &TaskRegistration,
        request: &TaskRequest,
    ) -> (Option<Duration>, Option<Duration>) {
        let (hard, soft) = task.limits(request);
        let Some(changed) = self.override_of(task.name) else {
            return (hard, soft);
        };
        let (sent_hard, sent_soft) = request.time_limits();
        let sent = |s: Option<f64>| s.is_some_and(|s| s.is_finite() && s > 0.0);
        let pick = |sent: bool, declared: Option<Duration>, set: Option<Option<Duration>>| match (
            sent, set,
        ) {
            (false, Some(set)) => set,
            _ => declared,
        };
        (
            pick(sent(sent_hard), hard, changed.time_limit),
            pick(sent(sent_soft), soft, changed.soft_time_limit),
        )
    }

    fn change(&self, task: &str, edit: impl FnOnce(&mut TaskOverride)) {
        let mut overrides = self
            .overrides
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        edit(overrides.entry(task.to_owned()).or_default());
        self.changed.store(true, Ordering::Release);
    }
}
