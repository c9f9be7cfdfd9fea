//! Errors a caller sees: publishing, waiting for results and remote failures.

use std::fmt;
use std::time::Duration;

use crate::backend::BackendError;
use crate::broker::BrokerError;

/// A task that ran and failed, as reported by the worker (Celery's FAILURE).
#[derive(Debug, Clone, PartialEq)]
pub struct TaskFailure {
    /// The failed task's id.
    pub task_id: String,
    /// The exception type name (`"TypeError"`, `"ParseIntError"`, `"NotRegistered"`).
    pub exc_type: String,
    /// The error message: the exception's arguments joined as text.
    pub message: String,
    /// The exception's arguments as sent (Celery's `exc_message` list,
    /// e.g. `["Task expected to fail", "test"]`).
    pub exc_args: Vec<serde_json::Value>,
    /// The Python module of the type, as sent (`"builtins"`, `"rust"`, ...).
    pub exc_module: Option<String>,
    /// The remote traceback (a Python traceback, or a Rust error's causes).
    pub traceback: Option<String>,
}

impl fmt::Display for TaskFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "task {} failed with {}: {}",
            self.task_id, self.exc_type, self.message
        )
    }
}

/// Everything that can go wrong when calling a task or waiting for its result.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The broker connection failed, or the broker refused the message.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// The result backend failed, refused, or holds something that is not
    /// a result.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// An argument could not be encoded as JSON.
    #[error("could not encode an argument of `{task}`: {reason}")]
    EncodeArguments {
        /// The task called.
        task: String,
        /// The serializer's explanation.
        reason: String,
    },
    /// `.delay()` or `.apply_async()` was called before any app was connected.
    #[error("no default app: connect one with `App::connect(url)` (or call `app.set_as_default()`) before `.delay()`")]
    NoDefaultApp,
    /// `.get()` waited for its whole timeout.
    #[error("timed out after {waited:?} waiting for the result of task {task_id}")]
    Timeout {
        /// The task waited for.
        task_id: String,
        /// How long `.get()` waited.
        waited: Duration,
    },
    /// The task ran and failed.
    #[error("{0}")]
    TaskFailed(Box<TaskFailure>),
    /// The task was revoked (for example, it expired before it could start).
    #[error("task {task_id} was revoked: {reason}")]
    Revoked {
        /// The revoked task.
        task_id: String,
        /// Why (`"expired"`, ...).
        reason: String,
    },
    /// A worker rejected the task's message (Celery's REJECTED, from a task
    /// raising `Reject`): this run sends no result.
    #[error("task {task_id} was rejected: {reason}")]
    Rejected {
        /// The rejected task.
        task_id: String,
        /// Why, as the worker reported it.
        reason: String,
    },
    /// The task ended without a result (Celery's IGNORED, from a task
    /// raising `Ignore`): there is no value to return.
    #[error("task {task_id} ignored its result (IGNORED): there is no value to return")]
    Ignored {
        /// The task.
        task_id: String,
    },
    /// The result arrived but is not a value of the type asked for.
    #[error("the result of task {task_id} is not a valid `{expected}`: {reason}")]
    DecodeResult {
        /// The task.
        task_id: String,
        /// The Rust type asked for.
        expected: &'static str,
        /// The deserializer's explanation.
        reason: String,
    },
    /// The result can no longer arrive (the result queue's consumer stopped).
    #[error("the result of task {task_id} cannot arrive: {reason}")]
    ResultLost {
        /// The task.
        task_id: String,
        /// What happened.
        reason: String,
    },
    /// The task was sent with `ignore_result`: there is no result to wait for.
    #[error("task {task_id} was sent with ignore_result: it has no result to wait for")]
    ResultIgnored {
        /// The task.
        task_id: String,
    },
}

impl Error {
    /// The remote failure, if this error is one.
    pub fn as_task_failure(&self) -> Option<&TaskFailure> {
        match self {
            Error::TaskFailed(failure) => Some(failure),
            _ => None,
        }
    }
}
