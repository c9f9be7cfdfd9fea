//! [`Outcome`]: how a task message's trip through the pipeline ended, and
//! the result its caller is told.

use std::time::Duration;

use serde_json::value::RawValue;

use crate::broker::Message;
use crate::protocol::result_message::{self, ExceptionInfo, TaskState};
use crate::TaskError;

/// How a task message's trip through the pipeline ended. Settlement turns
/// it into publishes and the ack.
#[derive(Debug)]
#[non_exhaustive]
pub enum Outcome {
    /// The task returned this value (JSON).
    Succeeded {
        /// The encoded return value.
        value: Box<RawValue>,
    },
    /// The task failed for good.
    Failed {
        /// Why.
        error: TaskError,
    },
    /// The task failed and runs again after `delay` (with `retries + 1`).
    Retry {
        /// Why this run failed.
        error: TaskError,
        /// When the next run is due.
        delay: Duration,
    },
    /// The task is not run: its caller is told REVOKED (e.g. it expired).
    Revoked {
        /// Why (`"expired"`).
        reason: String,
    },
    /// The message can never run here: its callers are told FAILURE and it
    /// is moved to the queue's dead-letter queue.
    Rejected(Rejection),
    /// Not due yet (its ETA, or its rate-limit turn): handed back to the
    /// broker, due again after `wait`.
    Deferred {
        /// How long until it is due.
        wait: Duration,
    },
    /// The task replaced itself ([`TaskError::replace`]): the replacement,
    /// published under the task's id, answers the caller; the message is
    /// acked once it is published.
    Replaced {
        /// The replacement (a signature in Celery's dict form).
        signature: Box<serde_json::Value>,
    },
    /// The body asked to end without a result ([`TaskError::ignore`],
    /// Celery's `Ignore`): acked, nothing follows it, and the caller is
    /// told IGNORED.
    TaskIgnored,
    /// The body rejected its message with requeue ([`TaskError::reject`],
    /// Celery's `Reject(requeue=True)`): it goes back to its queue at once,
    /// and the caller is told nothing.
    Requeued {
        /// Why, for the log.
        reason: String,
    },
    /// Nothing to report and nothing to run: acked (unless settled already)
    /// and forgotten.
    Ignored {
        /// Why, for the log.
        reason: String,
    },
}

/// A message that can never run on this worker.
#[derive(Debug)]
pub struct Rejection {
    /// The reason, as recorded with the dead letter.
    pub reason: String,
    /// The failure its callers are told.
    pub failure: TaskError,
    /// `(task_id, reply_to)` of every caller to tell: the task's own, and
    /// e.g. every remaining step of a chain.
    pub notify: Vec<(String, String)>,
    /// The task name, when the rejection is Celery's `NotRegistered` (whose
    /// result has Celery's own shape).
    pub(crate) not_registered: Option<String>,
}

impl Rejection {
    /// A rejection recorded as `reason`, telling `notify` about `failure`.
    pub fn new(reason: String, failure: TaskError, notify: Vec<(String, String)>) -> Self {
        Self {
            reason,
            failure,
            notify,
            not_registered: None,
        }
    }

    /// The FAILURE result for task `task_id`.
    pub fn result_for(&self, task_id: &str) -> Message {
        match &self.not_registered {
            Some(name) => result_message::not_registered(task_id, name),
            None => result_message::failure(task_id, &self.failure),
        }
    }
}

impl Outcome {
    /// The result message the task's caller is told, if any: SUCCESS,
    /// FAILURE, RETRY, REVOKED or IGNORED. (A rejection is told to each of its
    /// [`Rejection::notify`] with [`Rejection::result_for`].)
    pub fn caller_result(&self, task_id: &str) -> Option<Message> {
        match self {
            Outcome::Succeeded { value } => Some(result_message::success(task_id, value)),
            Outcome::Failed { error } => Some(result_message::failure(task_id, error)),
            Outcome::Retry { error, .. } => {
                let info = ExceptionInfo::from(error);
                Some(result_message::exception(
                    task_id,
                    TaskState::Retry,
                    &info,
                    error.traceback(),
                ))
            }
            Outcome::Revoked { reason } => Some(result_message::revoked(task_id, reason)),
            Outcome::TaskIgnored => Some(result_message::ignored(task_id)),
            Outcome::Rejected(_)
            | Outcome::Requeued { .. }
            | Outcome::Deferred { .. }
            | Outcome::Replaced { .. }
            | Outcome::Ignored { .. } => None,
        }
    }

    /// The outcome's name, for logs and metrics: `succeeded`, `failed`,
    /// `retry`, `revoked`, `rejected`, `requeued`, `deferred`, `replaced`,
    /// `ignored`.
    pub fn name(&self) -> &'static str {
        match self {
            Outcome::Succeeded { .. } => "succeeded",
            Outcome::Failed { .. } => "failed",
            Outcome::Retry { .. } => "retry",
            Outcome::Revoked { .. } => "revoked",
            Outcome::Rejected(_) => "rejected",
            Outcome::Deferred { .. } => "deferred",
            Outcome::Replaced { .. } => "replaced",
            Outcome::Ignored { .. } | Outcome::TaskIgnored => "ignored",
            Outcome::Requeued { .. } => "requeued",
        }
    }
}
