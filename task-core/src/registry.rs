//! The process-wide task registry: every `#[task]` submits a
//! [`TaskRegistration`] through `inventory`, and a worker looks handlers up by
//! name in the [`Registry`] built from them.

use std::collections::HashMap;
use std::sync::OnceLock;

use std::panic::AssertUnwindSafe;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use serde_json::value::RawValue;

use crate::protocol::task_message::TaskRequest;
use crate::{StateType, Task, TaskArgs, TaskContext, TaskError, TaskOptions};

/// What running a task produces: the JSON-encoded return value, or the error.
pub type TaskOutcome = Result<Box<RawValue>, TaskError>;

/// The entry point `#[task]` generates for each task: decodes the arguments,
/// runs the body and encodes its result.
pub type TaskHandler = fn(TaskArgs) -> BoxFuture<'static, TaskOutcome>;

/// One registered task, submitted by `#[task]` next to the function.
#[derive(Debug)]
pub struct TaskRegistration {
    /// The task's registered name.
    pub name: &'static str,
    /// Parameter names, in order.
    pub params: &'static [&'static str],
    /// The task's declared defaults.
    pub options: TaskOptions,
    /// The shared values its `State<T>` parameters take.
    pub states: &'static [StateType],
    /// Runs one call.
    pub handler: TaskHandler,
}

impl TaskRegistration {
    /// The registration of task type `T`, run by `handler`.
    pub const fn of<T: Task>(handler: TaskHandler) -> Self {
        Self {
            name: T::NAME,
            params: T::PARAMS,
            options: T::OPTIONS,
            states: T::STATES,
            handler,
        }
    }

    /// Runs one call: the body inside `context`, under `hard_limit` (past it
    /// an async body is dropped and the call fails with `TimeLimitExceeded`),
    /// with a panic turned into a failure. A blocking body cannot be
    /// interrupted: past the limit its thread runs on, but the call fails.
    pub async fn run(
        &self,
        args: TaskArgs,
        context: TaskContext,
        hard_limit: Option<Duration>,
    ) -> TaskOutcome {
        let body = context.scope(AssertUnwindSafe((self.handler)(args)).catch_unwind());
        let finished = match hard_limit {
            Some(limit) => match tokio::time::timeout(limit, body).await {
                Ok(finished) => finished,
                Err(_) => {
                    return Err(TaskError::new(
                        "TimeLimitExceeded",
                        format!("{} exceeded its time limit of {limit:?}", self.name),
                    ))
                }
            },
            None => body.await,
        };
        finished.unwrap_or_else(|panic| Err(TaskError::from_panic(panic.as_ref())))
    }

    /// The hard and soft time limits of `request`: the message's, else the
    /// task's defaults.
    pub fn limits(&self, request: &TaskRequest) -> (Option<Duration>, Option<Duration>) {
        let seconds = |s: Option<f64>| {
            s.filter(|s| s.is_finite() && *s > 0.0)
                .map(Duration::from_secs_f64)
        };
        let (hard, soft) = request.time_limits();
        (
            seconds(hard).or(self.options.time_limit),
            seconds(soft).or(self.options.soft_time_limit),
        )
    }

    /// Whether a run that failed with `error`, after `retries` retries, is
    /// retried, and after how long: when the error asks for it or its type is
    /// in `autoretry_for`, while retries remain. `unit_random` (uniform in
    /// `[0, 1)`) draws the jitter.
    pub fn retry_delay(
        &self,
        error: &TaskError,
        retries: u32,
        unit_random: f64,
    ) -> Option<Duration> {
        let policy = &self.options.retry;
        let countdown = match error.retry_request() {
            Some(retry) => retry.countdown,
            None if policy.retries_automatically(error) => None,
            None => return None,
        };
        let allowed = match error.retry_changes().and_then(|r| r.max_retries_now()) {
            Some(max) => retries < max,
            None => policy.allows_retry(retries),
        };
        if !allowed {
            return None;
        }
        Some(countdown.unwrap_or_else(|| policy.delay(retries, unit_random)))
    }
}

inventory::collect!(TaskRegistration);

/// The framework's own tasks, known to every registry (like Celery's
/// `celery.*` tasks) but not listed among its names: the chord join, run
/// by a worker stage, never by its handler, `celery.accumulate`, and
/// `celery.backend_cleanup` (which Celery's beat may send).
static BUILTINS: [TaskRegistration; 3] = [
    TaskRegistration {
        name: crate::protocol::chord_join::JOIN_TASK,
        params: &["group_id", "size", "body", "body_queue"],
        options: TaskOptions::DEFAULT,
        states: &[],
        handler: run_in_worker_stage,
    },
    TaskRegistration {
        name: crate::protocol::canvas::ACCUMULATE_TASK,
        params: &["args", "index"],
        options: TaskOptions::DEFAULT,
        states: &[],
        handler: crate::canvas::accumulate,
    },
    TaskRegistration {
        name: crate::backend::BACKEND_CLEANUP_TASK,
        params: &[],
        options: TaskOptions::DEFAULT,
        states: &[],
        handler: crate::backend::backend_cleanup,
    },
];

/// The handler of a builtin task: reached only where no worker stage runs
/// it (eager mode never sends one).
fn run_in_worker_stage(args: TaskArgs) -> BoxFuture<'static, TaskOutcome> {
    drop(args);
    Box::pin(async {
        Err(TaskError::new(
            "NotImplementedError",
            "the framework's own tasks run in a worker's canvas stage, and there is none here",
        ))
    })
}

/// Two tasks were registered under the same name.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "task name `{name}` is registered more than once; give one of them #[task(name = \"...\")]"
)]
pub struct DuplicateTaskName {
    /// The name registered twice.
    pub name: &'static str,
}

/// Every task linked into this binary, by name.
#[derive(Debug, Clone)]
pub struct Registry {
    by_name: HashMap<&'static str, &'static TaskRegistration>,
    /// A task chosen by a name two linked tasks share.
    duplicate: Option<DuplicateTaskName>,
}

impl Default for Registry {
    fn default() -> Self {
        Registry::new()
    }
}

impl Registry {
    /// The registry of this process, built once from every linked `#[task]`.
    ///
    /// Fails if two tasks share a name: a worker must refuse to start rather
    /// than run the wrong function.
    pub fn global() -> Result<&'static Registry, DuplicateTaskName> {
        static GLOBAL: OnceLock<Result<Registry, DuplicateTaskName>> = OnceLock::new();
        GLOBAL
            .get_or_init(|| Registry::from_registrations(inventory::iter::<TaskRegistration>))
            .as_ref()
            .map_err(Clone::clone)
    }

    /// A registry of the chosen tasks only (a worker that runs a subset of
    /// the linked tasks), by their `#[task]` values:
    ///
    /// ```
    /// use task_core::{task, Registry, TaskError};
    ///
    /// #[task(name = "doc.registry.add")]
    /// async fn add(x: i64, y: i64) -> Result<i64, TaskError> { Ok(x + y) }
    /// #[task(name = "doc.registry.mul")]
    /// async fn mul(x: i64, y: i64) -> Result<i64, TaskError> { Ok(x * y) }
    ///
    /// let registry = Registry::new().with(add).with(mul);
    /// assert_eq!(registry.names(), ["doc.registry.add", "doc.registry.mul"]);
    /// ```
    pub fn new() -> Registry {
        Registry {
            by_name: HashMap::new(),
            duplicate: None,
        }
    }

    /// This registry with task `T` (found among the linked `#[task]`s by its
    /// name). A task whose name two linked tasks share is recorded, and reported by [`Registry::check`] (which a worker
    /// calls before it starts) rather than run as the wrong function.
    #[must_use]
    pub fn with<T: Task>(mut self, task: T) -> Registry {
        let _ = task;
        let mut found = inventory::iter::<TaskRegistration>
            .into_iter()
            .filter(|registration| registration.name == T::NAME);
        // `#[task]` always submits its registration next to the type.
        let Some(registration) = found.next() else {
            unreachable!("task `{}` has no registration", T::NAME)
        };
        if found.next().is_some() {
            self.duplicate
                .get_or_insert(DuplicateTaskName { name: T::NAME });
        }
        self.by_name.insert(registration.name, registration);
        self
    }

    /// Whether this registry is fit to run: no task was chosen by a name
    /// that two linked tasks share ([`Registry::with`] records it; a worker
    /// refuses to start with such a registry).
    pub fn check(&self) -> Result<(), DuplicateTaskName> {
        match &self.duplicate {
            Some(duplicate) => Err(duplicate.clone()),
            None => Ok(()),
        }
    }

    /// Builds a registry from explicit registrations.
    pub fn from_registrations(
        registrations: impl IntoIterator<Item = &'static TaskRegistration>,
    ) -> Result<Registry, DuplicateTaskName> {
        let mut by_name = HashMap::new();
        for registration in registrations {
            if by_name.insert(registration.name, registration).is_some() {
                return Err(DuplicateTaskName {
                    name: registration.name,
                });
            }
        }
        Ok(Registry {
            by_name,
            duplicate: None,
        })
    }

    /// The task registered under `name`.
    pub fn get(&self, name: &str) -> Option<&'static TaskRegistration> {
        self.by_name
            .get(name)
            .copied()
            .or_else(|| BUILTINS.iter().find(|builtin| builtin.name == name))
    }

    /// All registered names, sorted.
    pub fn names(&self) -> Vec<&'static str> {
        let mut names: Vec<_> = self.by_name.keys().copied().collect();
        names.sort_unstable();
        names
    }

    /// How many tasks are registered.
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// Whether no task is registered.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task;

    #[task(name = "test.registry.io_retry", autoretry_for = [std::io::Error])]
    async fn io_retry() -> Result<(), TaskError> {
        Ok(())
    }

    #[task(name = "test.registry.blocking_panics")]
    fn blocking_panics() -> Result<(), TaskError> {
        panic!("the blocking body gives up")
    }

    /// A blocking task that panics, then the next closure on the same
    /// blocking thread (the pool has one): it must not see the task's context.
    #[test]
    fn a_blocking_thread_reused_after_a_panic_reports_no_context() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .max_blocking_threads(1)
            .enable_all()
            .build()
            .expect("a runtime");
        runtime.block_on(async {
            let registration = Registry::global()
                .expect("no duplicate task names")
                .get("test.registry.blocking_panics")
                .expect("the task is registered");
            let args = TaskArgs::new(registration.name, Vec::new(), Vec::new());
            let context = TaskContext::new(
                "panicked".into(),
                registration.name.into(),
                "q".into(),
                0,
                None,
            );
            let outcome = registration.run(args, context, None).await;
            let error = outcome.expect_err("the panic is a failure");
            assert!(error.message().contains("gives up"), "{error}");
            let (thread, seen) = tokio::task::spawn_blocking(|| {
                (
                    std::thread::current().id(),
                    crate::current_task().map(|c| c.id().to_owned()),
                )
            })
            .await
            .expect("the probe runs");
            let again = tokio::task::spawn_blocking(|| std::thread::current().id())
                .await
                .expect("the probe runs");
            assert_eq!(thread, again, "one blocking thread, reused");
            assert_eq!(
                seen, None,
                "a reused blocking thread kept a dead task's context"
            );
        });
    }

    fn registration() -> &'static TaskRegistration {
        Registry::global()
            .expect("no duplicate task names")
            .get("test.registry.io_retry")
            .expect("the task is registered")
    }

    #[test]
    fn autoretry_for_a_path_retries_that_type_only() {
        let registration = registration();
        let io: TaskError = std::io::Error::other("disk gone").into();
        assert!(
            registration.retry_delay(&io, 0, 0.5).is_some(),
            "an io::Error is retried"
        );
        let json: TaskError = serde_json::from_str::<u8>("x").unwrap_err().into();
        assert_eq!(json.exc_type(), "Error", "same short name as io::Error");
        assert_eq!(
            registration.retry_delay(&json, 0, 0.5),
            None,
            "a serde_json::Error is not retried"
        );
        let fmt: TaskError = std::fmt::Error.into();
        assert_eq!(registration.retry_delay(&fmt, 0, 0.5), None);
        // A hand-made error named like the type is not the type.
        let named = TaskError::new("Error", "not an io::Error");
        assert_eq!(registration.retry_delay(&named, 0, 0.5), None);
        let generic = TaskError::new(crate::GENERIC_EXCEPTION, "text");
        assert_eq!(registration.retry_delay(&generic, 0, 0.5), None);
    }
}
