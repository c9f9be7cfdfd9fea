//! [`FailedTask`]: what an errback (Celery's `link_error`) is called for,
//! and the message header through which a Rust worker tells it the failure.
//!
//! On the wire an errback gets what Celery gives it: the failed task's id as
//! its first argument, so Python errbacks run unchanged. A Rust worker also
//! puts the failure itself (exception type, message, module, traceback) in
//! the errback message's [`FAILURE_HEADER`], which Python workers ignore; an
//! errback whose first parameter is a `FailedTask` reads both.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{json, Value};

use crate::{TaskContext, TaskError, TaskFailure};

/// The message header in which a Rust worker gives an errback the failure
/// it is called for: `{"task_id", "exc_type", "exc_message",
/// "exc_module", "traceback"}`.
pub(crate) const FAILURE_HEADER: &str = "task_failure";

/// The task an errback runs for. As the first parameter of a `#[task]`, it
/// takes the errback's first argument (the failed task's id, as Celery
/// passes it) and the failure the message carries:
///
/// ```
/// use task_core::{task, FailedTask, TaskError};
///
/// #[task(name = "doc.failed_task.alert")]
/// async fn alert(failed: FailedTask, channel: String) -> Result<(), TaskError> {
///     match failed.failure() {
///         Some(failure) => eprintln!("{channel}: {failure}"),
///         None => eprintln!("{channel}: task {} failed", failed.task_id()),
///     }
///     Ok(())
/// }
/// // some_task.s(..).link_error(alert.partial("ops".to_owned()))
/// ```
///
/// The failure is there when a Rust worker ran the failed task (or a
/// Rust worker or eager app joined the failed chord); Celery's worker sends
/// only the id, and then [`failure`](FailedTask::failure) is `None`. As an
/// argument on the wire (and in Celery's dict form) it is the id alone.
#[derive(Debug, Clone, PartialEq)]
pub struct FailedTask {
    task_id: String,
    failure: Option<TaskFailure>,
}

impl FailedTask {
    /// The failed task `task_id`, its failure unknown.
    pub fn new(task_id: impl Into<String>) -> Self {
        Self {
            task_id: task_id.into(),
            failure: None,
        }
    }

    /// The failed task's id.
    pub fn task_id(&self) -> &str {
        &self.task_id
    }

    /// How it failed, when the worker that ran it said.
    pub fn failure(&self) -> Option<&TaskFailure> {
        self.failure.as_ref()
    }

    /// The failed task `task_id`, with the failure `context`'s message carries
    /// for it (none when it carries none, or one for another task).
    pub(crate) fn from_message(task_id: String, context: Option<&TaskContext>) -> Self {
        let failure = context
            .and_then(|context| context.header(FAILURE_HEADER))
            .and_then(|header| decode_header(&task_id, header));
        Self { task_id, failure }
    }
}

/// The [`FAILURE_HEADER`] value telling an errback that `task_id` failed
/// with `error`.
pub(crate) fn failure_header(task_id: &str, error: &TaskError) -> Value {
    json!({
        "task_id": task_id,
        "exc_type": error.exc_type(),
        "exc_message": error.message(),
        "exc_args": error.exc_args(),
        "exc_module": error.exc_module(),
        "traceback": error.traceback(),
    })
}

/// The failure of `task_id` in a [`FAILURE_HEADER`] value, if it holds one.
fn decode_header(task_id: &str, header: &Value) -> Option<TaskFailure> {
    let text = |key: &str| header.get(key).and_then(Value::as_str).map(str::to_owned);
    if text("task_id").as_deref() != Some(task_id) {
        return None;
    }
    Some(TaskFailure {
        task_id: task_id.to_owned(),
        exc_type: text("exc_type")?,
        message: text("exc_message").unwrap_or_default(),
        exc_args: match header.get("exc_args") {
            Some(Value::Array(args)) => args.clone(),
            _ => text("exc_message").into_iter().map(Value::from).collect(),
        },
        exc_module: text("exc_module"),
        traceback: text("traceback"),
    })
}

impl Serialize for FailedTask {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.task_id)
    }
}

impl<'de> Deserialize<'de> for FailedTask {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Self::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_round_trips_for_its_task_only() {
        let error = TaskError::new("ValueError", "bad input").with_traceback("at step 2");
        let header = failure_header("t-1", &error);
        let failure = decode_header("t-1", &header).expect("a failure");
        assert_eq!(failure.exc_type, "ValueError");
        assert_eq!(failure.message, "bad input");
        assert_eq!(failure.traceback.as_deref(), Some("at step 2"));
        assert_eq!(failure.exc_module.as_deref(), Some(error.exc_module()));
        assert_eq!(decode_header("t-2", &header), None);
    }

    #[test]
    fn on_the_wire_it_is_the_id() {
        let failed = FailedTask::new("t-1");
        assert_eq!(serde_json::to_value(&failed).unwrap(), json!("t-1"));
        let back: FailedTask = serde_json::from_value(json!("t-1")).unwrap();
        assert_eq!(back, failed);
    }
}
